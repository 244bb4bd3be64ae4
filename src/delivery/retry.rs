//! How an attempt ended: the provider's answer (or its absence) classified as
//! delivered, retried after a backoff, or parked, and why, in words and as a class.

use super::{Answer, Deliverer};
use crate::config::DeliverySettings;
use crate::store::DeliveryOutcome;
use fhir_sdk::time::{Duration, OffsetDateTime};

impl Deliverer {
    /// The outcome of an answer (or of none), and why: the reason names the host and
    /// the status or failure; only the stored error adds the start of the answer.
    pub(super) fn classify(
        &self,
        answer: Answer,
        host: &str,
        attempt: i32,
        now: OffsetDateTime,
        age: Duration,
    ) -> (DeliveryOutcome, Why) {
        let (status, retry_after, class, reason, excerpt) = match answer {
            Answer::Status {
                status,
                retry_after,
                excerpt,
                reference,
            } => {
                if (200..300).contains(&status) || status == 409 {
                    let outcome = DeliveryOutcome::Delivered {
                        status,
                        receipt: None,
                    };
                    return (
                        outcome,
                        Why {
                            reference,
                            ..Why::fine()
                        },
                    );
                }
                let class = match status {
                    429 => "http-429",
                    400..=499 => "http-4xx",
                    500..=599 => "http-5xx",
                    _ => "http-other",
                };
                let reason = format!("{host} answered {status}");
                let transient = matches!(status, 408 | 425 | 429) || status >= 500;
                if !transient {
                    let outcome = DeliveryOutcome::Dead {
                        status: Some(status),
                        error: format!("{reason}: {excerpt}"),
                    };
                    return (outcome, Why::new(class, reason));
                }
                (Some(status), retry_after, class, reason, Some(excerpt))
            }
            Answer::Failed { class, error } => (None, None, class.label(), error, None),
        };
        let with_excerpt = |reason: &str| match &excerpt {
            Some(e) => format!("{reason}: {e}"),
            None => reason.to_owned(),
        };
        if attempt >= self.settings.max_attempts {
            let reason = format!("gave up after {attempt} attempts; last: {reason}");
            let outcome = DeliveryOutcome::Dead {
                status,
                error: with_excerpt(&reason),
            };
            return (outcome, Why::new(class, reason));
        }
        // Saturating: whatever a provider or the configuration says, the worker never
        // panics on the arithmetic (a panic would stop every delivery, and the same
        // delivery would stop the worker again after a restart).
        let wait = backoff(&self.settings, attempt, retry_after);
        let next = now.saturating_add(wait);
        if age.saturating_add(wait) > seconds(self.settings.max_age_seconds) {
            let reason = format!("would pass delivery.max_age_seconds; last: {reason}");
            let outcome = DeliveryOutcome::Dead {
                status,
                error: with_excerpt(&reason),
            };
            return (outcome, Why::new(class, reason));
        }
        let outcome = DeliveryOutcome::Retry {
            next_attempt_at: next,
            status,
            error: with_excerpt(&reason),
        };
        (outcome, Why::new(class, reason))
    }
}

/// Why an attempt ended as it did, for the log, the audit record and the metrics.
#[derive(Debug, Clone)]
pub(super) struct Why {
    /// A fixed word, the metrics' `reason` label: `none`, `http-5xx`, `timeout`, ...
    pub(super) class: &'static str,
    /// In the gateway's words, naming the host: never a payload.
    pub(super) reason: Option<String>,
    /// The transport's id for what was sent (MESH's message id), kept with the attempt.
    pub(super) reference: Option<String>,
}

impl Why {
    pub(super) fn new(class: &'static str, reason: String) -> Self {
        Self {
            class,
            reason: Some(reason),
            reference: None,
        }
    }

    /// Delivered: nothing to explain.
    pub(super) fn fine() -> Self {
        Self {
            class: "none",
            reason: None,
            reference: None,
        }
    }
}

pub(super) fn stopped(reason: &str) -> (DeliveryOutcome, Why) {
    let outcome = DeliveryOutcome::Stopped {
        reason: reason.to_owned(),
    };
    (outcome, Why::new("stopped", reason.to_owned()))
}

/// Not sendable at all: the gateway's configuration or the stored delivery is wrong.
pub(super) fn dead(error: String) -> (DeliveryOutcome, Why) {
    let why = Why::new("undeliverable", error.clone());
    let outcome = DeliveryOutcome::Dead {
        status: None,
        error,
    };
    (outcome, why)
}

/// A whole number of seconds from the configuration as a [`Duration`], saturating
/// rather than wrapping for values past `i64::MAX`.
pub(super) fn seconds(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Exponential backoff with jitter: half the step fixed, half random, so retries
/// from many deliveries spread out; never sooner than the provider's `Retry-After`,
/// but never later than `delivery.max_backoff_ms` either: a provider asking for a
/// wait of years (or one that overflows the clock) is tried again at the cap.
pub fn backoff(
    settings: &DeliverySettings,
    attempt: i32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let step = settings
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(settings.max_backoff_ms);
    let mut bytes = [0u8; 8];
    let random = if getrandom::fill(&mut bytes).is_ok() {
        u64::from_le_bytes(bytes)
    } else {
        0
    };
    let half = step / 2;
    let jittered = half.saturating_add(if half > 0 { random % (half + 1) } else { 0 });
    let millis = |ms: u64| Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX));
    let wait = millis(jittered);
    match retry_after {
        Some(r) if r > wait => r.min(millis(settings.max_backoff_ms)),
        _ => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            enabled: true,
            poll_interval_ms: 10,
            lease_seconds: 30,
            batch_size: 4,
            max_attempts: 5,
            max_age_seconds: 3600,
            initial_backoff_ms: 1000,
            max_backoff_ms: 8000,
            max_worker_failures: 3,
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_caps_and_honours_retry_after() {
        let s = settings();
        for (attempt, low, high) in [
            (1, 500, 1000),
            (2, 1000, 2000),
            (3, 2000, 4000),
            (9, 4000, 8000),
        ] {
            for _ in 0..50 {
                let w = backoff(&s, attempt, None).whole_milliseconds();
                assert!((low..=high).contains(&w), "attempt {attempt}: {w}");
            }
        }
        let long = Duration::seconds(6);
        assert_eq!(backoff(&s, 1, Some(long)), long);
    }

    #[test]
    fn retry_after_and_backoff_are_capped_and_never_overflow() {
        let s = settings();
        let cap = Duration::milliseconds(8000);
        for huge in [
            Duration::seconds(120),
            Duration::seconds(1_000_000_000_000),
            Duration::seconds(i64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(backoff(&s, 1, Some(huge)), cap);
        }
        assert!(backoff(&s, i32::MAX, None) <= cap);
        assert!(backoff(&s, i32::MIN, None) <= cap);
        let s = DeliverySettings {
            initial_backoff_ms: u64::MAX,
            max_backoff_ms: u64::MAX,
            ..settings()
        };
        let w = backoff(&s, 40, Some(Duration::MAX));
        let now = OffsetDateTime::now_utc();
        assert!(now.saturating_add(w) > now, "saturates: {w}");
        assert!(seconds(u64::MAX) > Duration::ZERO);
    }
}
