//! Operating the delivery queue and its dead letters, for the operator API
//! ([`crate::http`]) and the command line alike. Every call is audited.
//!
//! A dead letter is either replayed (queued again) or resolved: an operator decides it
//! will not be sent, so it is never replayed and no longer holds back the retention
//! purge of the referral's personal data.

use crate::config::Settings;
use crate::store::AuditRecord;
use crate::store::{
    AuditFilter, AuditRow, AuditStore, DeliveryFilter, DeliveryState, DeliveryView, OutboxStore,
    ReferralStore, ReferralSummary, StoreError,
};
use fhir_sdk::time::OffsetDateTime;
use serde::Serialize;
use std::collections::BTreeSet;

/// Lists deliveries, newest first, as `filter` narrows them.
pub async fn list(
    store: &dyn OutboxStore,
    filter: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<DeliveryView>, StoreError> {
    store.list_deliveries(filter, limit).await
}

/// The providers and GP callbacks deliveries go to: the only recipient ids an
/// operator may name.
#[derive(Debug, Clone, Default)]
pub struct Recipients(BTreeSet<String>);

impl Recipients {
    pub fn of(settings: &Settings) -> Self {
        Self(
            settings
                .providers
                .keys()
                .chain(settings.gp_callbacks.keys())
                .cloned()
                .collect(),
        )
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// `a, b, c`, for a refusal that names what would have been accepted.
    pub fn listed(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// One attempt at a delivery, from its audit record: metadata, never a payload.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// The audit record's place in the hash chain.
    pub seq: Option<i64>,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `delivered`, `retry`, `dead-letter`, `stopped`, `worker-error` (`; lease lost`
    /// when its outcome could not be kept).
    pub outcome: String,
    pub http_status: Option<i32>,
    pub duration_ms: Option<u64>,
    /// The `reason` label of `thrive_delivery_attempts_total`.
    pub reason_class: Option<String>,
    pub reason: Option<String>,
    /// `host:port` it went to.
    pub target: Option<String>,
}

impl AttemptView {
    fn of(row: &AuditRow) -> Self {
        let detail: serde_json::Value = serde_json::from_str(&row.detail).unwrap_or_default();
        let text = |k: &str| detail[k].as_str().map(str::to_owned);
        Self {
            seq: row.seq,
            at: row.recorded_at,
            outcome: row.outcome.clone(),
            http_status: row.http_status,
            duration_ms: detail["duration_ms"].as_u64(),
            reason_class: text("reason_class"),
            reason: text("reason"),
            target: text("target"),
        }
    }
}

/// A delivery with every attempt at it, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub attempts: Vec<AttemptView>,
}

/// The attempts at one delivery are the audit records of its referral that carry
/// its request id: the trail is the one account of what was sent.
pub async fn show<S: OutboxStore + AuditStore + ?Sized>(
    store: &S,
    id: &str,
) -> Result<Option<DeliveryDetail>, StoreError> {
    let Some(delivery) = store.delivery(id).await? else {
        return Ok(None);
    };
    let filter = AuditFilter {
        referral_id: Some(delivery.referral_id.to_string()),
        ..AuditFilter::default()
    };
    let mut attempts = Vec::new();
    let mut after = 0;
    loop {
        let rows = store.audit_query(&filter, after, 1000).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq.unwrap_or(i64::MAX);
        attempts.extend(
            rows.iter()
                .filter(|r| r.action.starts_with("delivery."))
                .filter(|r| r.request_id.as_deref() == Some(delivery.request_id.as_str()))
                .map(AttemptView::of),
        );
        if rows.len() < 1000 {
            break;
        }
    }
    Ok(Some(DeliveryDetail { delivery, attempts }))
}

/// What became of a replay or resolve request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterAction {
    /// Done (queued again, or marked resolved).
    Done,
    /// No dead letter has this id.
    NotDeadLetter,
    /// The dead letter was already resolved: it is never replayed or resolved again.
    Resolved,
}

/// Why `id` was not acted on: resolved already, or not a dead letter at all.
async fn refusal(store: &dyn OutboxStore, id: &str) -> Result<DeadLetterAction, StoreError> {
    Ok(match store.delivery(id).await? {
        Some(d) if d.state == DeliveryState::Dead && d.resolved_at.is_some() => {
            DeadLetterAction::Resolved
        }
        _ => DeadLetterAction::NotDeadLetter,
    })
}

/// Puts a dead letter back in the queue. Its consent and referral state are checked
/// again by the worker before it is sent. A resolved dead letter is not replayed.
/// The record names the delivery's referral (and so its subject) and recipient.
async fn about_delivery(
    store: &dyn OutboxStore,
    id: &str,
    mut audit: AuditRecord,
) -> Result<AuditRecord, StoreError> {
    if let Some(d) = store.delivery(id).await? {
        audit.referral_id = Some(d.referral_id.to_string());
        audit.recipient = Some(d.provider.clone());
    }
    Ok(audit)
}

pub async fn replay(
    store: &dyn OutboxStore,
    id: &str,
    audit: AuditRecord,
) -> Result<DeadLetterAction, StoreError> {
    let audit = about_delivery(store, id, audit).await?;
    if store
        .replay_delivery(id, OffsetDateTime::now_utc(), &audit)
        .await?
    {
        Ok(DeadLetterAction::Done)
    } else {
        refusal(store, id).await
    }
}

/// Marks a dead letter resolved: never replayed, and no longer holding back the purge.
pub async fn resolve(
    store: &dyn OutboxStore,
    id: &str,
    audit: AuditRecord,
) -> Result<DeadLetterAction, StoreError> {
    let audit = about_delivery(store, id, audit).await?;
    if store
        .resolve_delivery(id, OffsetDateTime::now_utc(), &audit)
        .await?
    {
        Ok(DeadLetterAction::Done)
    } else {
        refusal(store, id).await
    }
}

/// Replays (`replay`) or resolves a dead letter, as the operator API and the console
/// both ask with one verb.
pub async fn act_on_dead_letter(
    store: &dyn OutboxStore,
    replay: bool,
    id: &str,
    audit: AuditRecord,
) -> Result<DeadLetterAction, StoreError> {
    if replay {
        self::replay(store, id, audit).await
    } else {
        resolve(store, id, audit).await
    }
}

/// One recipient as operators see it: paused or not, and its queue.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    pub recipient: String,
    pub paused: bool,
    #[serde(with = "fhir_sdk::time::serde::rfc3339::option")]
    pub paused_at: Option<OffsetDateTime>,
    pub paused_by: Option<String>,
    pub queued: i64,
    /// Seconds the oldest queued delivery has waited.
    pub oldest_queued_seconds: Option<i64>,
}

/// Every configured recipient with its pause and queue.
pub async fn recipients(
    store: &dyn OutboxStore,
    known: &Recipients,
    now: OffsetDateTime,
) -> Result<Vec<RecipientView>, StoreError> {
    let controls = store.recipient_controls().await?;
    let queues = store.queue_by_recipient().await?;
    Ok(known
        .iter()
        .map(|id| {
            let control = controls.iter().find(|c| c.recipient == id);
            let queue = queues.iter().find(|q| q.recipient == id);
            RecipientView {
                recipient: id.to_owned(),
                paused: control.is_some_and(|c| c.paused_at.is_some()),
                paused_at: control.and_then(|c| c.paused_at),
                paused_by: control.and_then(|c| c.paused_by.clone()),
                queued: queue.map_or(0, |q| q.queued),
                oldest_queued_seconds: queue
                    .and_then(|q| q.oldest)
                    .map(|t| (now - t).whole_seconds().max(0)),
            }
        })
        .collect())
}

/// Pauses or resumes a configured recipient: while paused, referrals are still
/// accepted and queued, and nothing is sent to it. `None` for a recipient that is not
/// configured; otherwise whether it changed (pausing twice is no error).
pub async fn pause(
    store: &dyn OutboxStore,
    known: &Recipients,
    recipient: &str,
    paused: bool,
    mut audit: AuditRecord,
) -> Result<Option<bool>, StoreError> {
    if !known.contains(recipient) {
        return Ok(None);
    }
    audit.recipient = Some(recipient.to_owned());
    let by = audit.client_id.clone().unwrap_or_default();
    let changed = store
        .set_paused(recipient, paused, OffsetDateTime::now_utc(), &by, &audit)
        .await?;
    if changed {
        let verb = if paused { "paused" } else { "resumed" };
        tracing::warn!(
            recipient,
            by,
            "deliveries to {recipient} {verb} by an operator"
        );
    }
    Ok(Some(changed))
}

/// One step of a referral's story: one audit record, as metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The audit record's place in the hash chain.
    pub seq: Option<i64>,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `referral.new`, `referral.cancel`, `delivery.referral`, `referral.event`,
    /// `delivery.milestone`, `retention.purge`, `operator.deliveries.replay`, ...
    pub action: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    /// Who acted: the client id (a GP system, provider, operator or the gateway).
    pub actor: Option<String>,
    pub recipient: Option<String>,
    /// What the step decided and why, from the record: the route and its rule, the new
    /// status, the milestone, an attempt's reason, target and duration. Never a payload.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// What of an audit record's detail a timeline shows: decisions and reasons only.
const STEP_DETAIL: [&str; 11] = [
    "route",
    "new_status",
    "event",
    "reason",
    "reason_class",
    "attempt",
    "target",
    "duration_ms",
    "delivery_id",
    "referrals",
    "after_days",
];

impl Step {
    fn of(row: &AuditRow) -> Self {
        let detail: serde_json::Value = serde_json::from_str(&row.detail).unwrap_or_default();
        let detail = STEP_DETAIL
            .iter()
            .filter_map(|k| {
                let v = detail.get(*k)?;
                (!v.is_null()).then(|| ((*k).to_owned(), v.clone()))
            })
            .collect();
        Self {
            seq: row.seq,
            at: row.recorded_at,
            action: row.action.clone(),
            outcome: row.outcome.clone(),
            http_status: row.http_status,
            actor: row.client_id.clone(),
            recipient: row.recipient.clone(),
            detail,
        }
    }
}

/// A referral with its whole story, oldest step first.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    #[serde(flatten)]
    pub referral: ReferralSummary,
    pub timeline: Vec<Step>,
}

/// Every referral `key` names (id, reference, correlation id or a sender's
/// identifier), each with its timeline; empty when none. Never picks one of several.
pub async fn timelines<S: ReferralStore + AuditStore + ?Sized>(
    store: &S,
    referrals: Vec<ReferralSummary>,
) -> Result<Vec<Timeline>, StoreError> {
    let mut found = Vec::with_capacity(referrals.len());
    for referral in referrals {
        let filter = AuditFilter {
            referral_id: Some(referral.id.to_string()),
            ..AuditFilter::default()
        };
        let mut timeline = Vec::new();
        let mut after = 0;
        loop {
            let rows = store.audit_query(&filter, after, 1000).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq.unwrap_or(i64::MAX);
            timeline.extend(rows.iter().map(Step::of));
            if rows.len() < 1000 {
                break;
            }
        }
        // A purge is recorded once for all the referrals it purged, at the instant it
        // set on each of them: that record is this referral's retention step.
        if let Some(purged) = referral.purged_at {
            let margin = fhir_sdk::time::Duration::MILLISECOND;
            let filter = AuditFilter {
                action: Some("retention.purge".into()),
                from: Some(purged - margin),
                to: Some(purged + margin),
                ..AuditFilter::default()
            };
            let purges = store.audit_query(&filter, 0, 10).await?;
            if let Some(purge) = purges
                .iter()
                .min_by_key(|r| (r.recorded_at - purged).unsigned_abs())
            {
                timeline.push(Step::of(purge));
            }
        }
        timeline.sort_by_key(|s| s.seq);
        found.push(Timeline { referral, timeline });
    }
    Ok(found)
}
