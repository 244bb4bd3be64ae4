//! Retention: the personal data held only for delivery (the identified referral message
//! and the NHS number) is purged `retention.after_days` after the referral's last
//! change, once every delivery of it is delivered, cancelled, or a dead letter an
//! operator resolved. The referral row itself (ids, state, routing, milestone, events)
//! stays, so status events, `GET /fhir/r4/ServiceRequest/{id}`, programme statistics
//! and the audit trail keep working. Each pass that purges anything leaves one audit
//! record with the count, never what was purged.
//!
//! `thrive-gateway retention run` runs one pass; `serve` runs one every
//! `retention.interval_seconds` while `retention.enabled`.

use crate::config::RetentionSettings;
use crate::store::{AuditRecord, ReferralStore, StoreError};
use fhir_sdk::time::{Duration, OffsetDateTime};
use std::sync::Arc;

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Referrals whose personal data was purged.
    pub referrals: u64,
    /// The period applied, in days.
    pub after_days: i64,
}

/// Runs one purge pass as `client` (`retention` for the periodic task,
/// `command-line` for the command).
pub async fn run_once(
    store: &dyn ReferralStore,
    settings: &RetentionSettings,
    client: &str,
) -> Result<Purged, StoreError> {
    let now = OffsetDateTime::now_utc();
    // A retention longer than the calendar keeps everything.
    let cutoff = settings
        .after_days
        .checked_mul(86_400)
        .and_then(|s| now.checked_sub(Duration::seconds(s)))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let audit = AuditRecord {
        at: now,
        client_id: Some(client.to_owned()),
        // The store adds `referrals`, the count, when anything was purged.
        detail: serde_json::json!({"after_days": settings.after_days}),
        ..AuditRecord::new("retention.purge", "purged")
    };
    let referrals = store.purge_settled(cutoff, now, &audit).await?;
    Ok(Purged {
        referrals,
        after_days: settings.after_days,
    })
}

/// Purges once at start and then every `interval_seconds`, until `stop` turns true.
pub async fn run(
    store: Arc<dyn ReferralStore>,
    settings: RetentionSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_secs(settings.interval_seconds);
    loop {
        if *stop.borrow() {
            break;
        }
        match run_once(store.as_ref(), &settings, "retention").await {
            Ok(p) if p.referrals > 0 => {
                tracing::info!(
                    referrals = p.referrals,
                    after_days = p.after_days,
                    "retention purge"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention purge failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!("retention task stopped");
}
