//! Recording attempts' outcomes: those that end together share one transaction.

use super::{Deliverer, backoff};
use crate::store::{
    AuditRecord, ClaimedDelivery, DeliveryKind, DeliveryOutcome, Finish, ReferralId, StoreError,
};
use fhir_sdk::time::OffsetDateTime;
use futures_util::FutureExt;
use serde_json::json;

/// What the worker records about a delivery it holds the lease of.
pub(super) struct Leased {
    pub(super) id: String,
    pub(super) referral_id: ReferralId,
    pub(super) provider: String,
    pub(super) kind: DeliveryKind,
    pub(super) request_id: String,
    pub(super) correlation_id: Option<String>,
    pub(super) worker_failures: i32,
}

impl From<&ClaimedDelivery> for Leased {
    fn from(d: &ClaimedDelivery) -> Self {
        Self {
            id: d.id.clone(),
            referral_id: d.referral_id.clone(),
            provider: d.provider.clone(),
            kind: d.kind,
            request_id: d.request_id.clone(),
            correlation_id: Some(d.correlation_id.clone()),
            worker_failures: d.worker_failures,
        }
    }
}

/// An attempt that ended, with what is to be recorded and logged of it.
pub(super) struct Decided<'a> {
    pub(super) leased: Leased,
    pub(super) outcome: DeliveryOutcome,
    pub(super) audit: AuditRecord,
    /// The recipient's host, or `-`.
    pub(super) target: &'a str,
    pub(super) attempt: i32,
    pub(super) reason_class: &'static str,
    pub(super) reason: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) duration_ms: u64,
}

impl Decided<'_> {
    fn finish(&self) -> Finish<'_> {
        Finish {
            id: &self.leased.id,
            outcome: &self.outcome,
            audit: &self.audit,
        }
    }
}

/// How one claimed delivery's attempt ended.
pub(super) enum Attempted<'a> {
    Decided(Box<Decided<'a>>),
    /// The worker failed on it (fixed words, no stored value).
    Failed(Leased, &'static str),
    /// Its row is gone: nothing to record.
    Gone,
}

/// Why outcomes could not be recorded.
enum NotRecorded {
    /// The database cannot be reached: the leases run out and the deliveries are
    /// tried again, none of it counted against them.
    Unreachable(StoreError),
    /// Anything else (fixed words): counted against the delivery when it was alone.
    Failed(&'static str),
}

/// Keeps the first error of several.
pub(super) fn keep_first(first: &mut Result<(), StoreError>, next: Result<(), StoreError>) {
    if first.is_ok() {
        *first = next;
    }
}

impl Deliverer {
    /// Records attempts that ended together in one transaction. Should that fail for
    /// any reason but an unreachable database, each is recorded on its own, so one
    /// delivery the worker cannot record is counted against that delivery alone.
    pub(super) async fn record(&self, ended: Vec<Attempted<'_>>) -> Result<(), StoreError> {
        let mut result = Ok(());
        let mut decided = Vec::with_capacity(ended.len());
        for a in ended {
            match a {
                Attempted::Decided(x) => decided.push(*x),
                Attempted::Failed(d, what) => {
                    keep_first(&mut result, self.worker_failed(&d, what).await);
                }
                Attempted::Gone => {}
            }
        }
        let finishes: Vec<Finish<'_>> = decided.iter().map(Decided::finish).collect();
        let together = match finishes.len() {
            0 => return result,
            1 => None,
            _ => Some(self.finish_guarded(&finishes).await),
        };
        match together {
            Some(Ok(held)) => {
                for (x, held) in decided.iter().zip(held) {
                    keep_first(&mut result, self.recorded(x, held).await);
                }
            }
            Some(Err(NotRecorded::Unreachable(e))) => return Err(e),
            Some(Err(NotRecorded::Failed(_))) | None => {
                if together.is_some() {
                    tracing::warn!(
                        deliveries = decided.len(),
                        "outcomes could not be recorded together; recording each on its own"
                    );
                }
                for x in &decided {
                    let alone = match self.finish_guarded(&[x.finish()]).await {
                        Ok(held) => {
                            self.recorded(x, held.first().copied().unwrap_or(false))
                                .await
                        }
                        Err(NotRecorded::Unreachable(e)) => Err(e),
                        Err(NotRecorded::Failed(what)) => {
                            tracing::error!(delivery_id = %x.leased.id, what, "delivery worker failed on this delivery");
                            self.worker_failed(&x.leased, what).await
                        }
                    };
                    keep_first(&mut result, alone);
                }
            }
        }
        result
    }

    /// Records `finishes` in one transaction, a panic or error of the worker's own
    /// caught.
    async fn finish_guarded(&self, finishes: &[Finish<'_>]) -> Result<Vec<bool>, NotRecorded> {
        let finish = self
            .store
            .finish_deliveries(&self.owner, OffsetDateTime::now_utc(), finishes);
        match std::panic::AssertUnwindSafe(finish).catch_unwind().await {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(e)) if e.is_unreachable() => Err(NotRecorded::Unreachable(e)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "delivery outcomes could not be recorded");
                Err(NotRecorded::Failed(e.kind()))
            }
            Err(panic) => {
                tracing::error!(
                    message = %crate::supervisor::panic_message(panic.as_ref()),
                    "delivery worker panicked recording outcomes"
                );
                Err(NotRecorded::Failed("it panicked"))
            }
        }
    }

    /// Logs an attempt whose outcome was recorded (`held`), or, when its lease ran out
    /// first, says so in the audit trail: the attempt happened (the data may have gone
    /// out) even though its outcome could not be kept.
    async fn recorded(&self, x: &Decided<'_>, held: bool) -> Result<(), StoreError> {
        let d = &x.leased;
        let (target, attempt, reason_class) = (x.target, x.attempt, x.reason_class);
        if !held {
            tracing::warn!(delivery_id = %d.id, "delivery lease expired before the outcome was recorded; another worker will retry");
            let lost = AuditRecord {
                outcome: format!("{}; lease lost", x.audit.outcome),
                ..x.audit.clone()
            };
            return self.store.append_audit(&lost).await;
        }
        let reason = x.reason.as_deref().unwrap_or("-");
        match &x.outcome {
            DeliveryOutcome::Retry {
                next_attempt_at, ..
            } => {
                tracing::warn!(delivery_id = %d.id, recipient = %d.provider, kind = %d.kind, target_host = target, attempt, reason_class, reason, next_attempt_at = %next_attempt_at, "delivery attempt failed; it will be retried");
            }
            DeliveryOutcome::Dead { .. } => {
                tracing::warn!(delivery_id = %d.id, recipient = %d.provider, kind = %d.kind, target_host = target, attempt, reason_class, reason, "delivery parked as a dead letter");
            }
            _ => {
                tracing::info!(delivery_id = %d.id, referral_id = %d.referral_id, recipient = %d.provider, kind = %d.kind, target_host = target, attempt, result = %x.audit.outcome, status = x.status, duration_ms = x.duration_ms, "delivery attempt");
            }
        }
        Ok(())
    }

    /// Counts one failure of the worker on `d` (`what` in fixed words: no stored
    /// value) and records it with its audit record: retried after a backoff, or
    /// parked once it reached `delivery.max_worker_failures` in a row.
    pub(super) async fn worker_failed(&self, d: &Leased, what: &str) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let failures = d.worker_failures.saturating_add(1);
        let max = self.settings.max_worker_failures;
        let parked = failures >= max;
        let error = if parked {
            format!("the delivery worker failed on it {failures} times in a row (last: {what})")
        } else {
            format!(
                "the delivery worker failed on it ({failures} of {max} in a row: {what}); tried again later"
            )
        };
        let outcome = DeliveryOutcome::WorkerFailed {
            failures,
            next_attempt_at: now.saturating_add(backoff(&self.settings, failures, None)),
            parked,
            error: error.clone(),
        };
        let result = if parked {
            "dead-letter"
        } else {
            "worker-error"
        };
        let (recipient, kind) = self.labels(&d.provider, d.kind);
        self.metrics
            .delivery_attempt(recipient, kind, result, "worker-error");
        let audit = AuditRecord {
            at: now,
            referral_id: Some(d.referral_id.to_string()),
            request_id: Some(d.request_id.clone()),
            correlation_id: d.correlation_id.clone(),
            recipient: Some(d.provider.clone()),
            detail: json!({
                "recipient": d.provider,
                "reason": error,
                "worker_failures": failures,
            }),
            ..AuditRecord::new(format!("delivery.{}", d.kind), result)
        };
        let finish = Finish {
            id: &d.id,
            outcome: &outcome,
            audit: &audit,
        };
        let held = self
            .store
            .finish_deliveries(&self.owner, now, &[finish])
            .await?
            .first()
            .copied()
            .unwrap_or(false);
        if !held {
            tracing::warn!(delivery_id = %d.id, "delivery lease expired before the worker's failure was recorded; another worker will take it");
        } else if parked {
            tracing::error!(delivery_id = %d.id, referral_id = %d.referral_id, provider = %d.provider, kind = %d.kind, failures, "delivery parked as a dead letter: the worker kept failing on it");
        } else {
            tracing::warn!(delivery_id = %d.id, failures, max, "delivery put back in the queue after the worker failed on it");
        }
        Ok(())
    }
}
