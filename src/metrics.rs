//! Metrics: `GET /metrics` in the Prometheus text format, for a scrape on a private
//! network.
//!
//! Every label value is bounded and names no one: route *patterns* (never concrete
//! paths), HTTP methods and statuses, fixed outcome words, and configured recipient
//! ids. Counters and histograms live in one [`Metrics`] per gateway (shared by the
//! request middleware, the intake handler and the delivery worker); the queue gauges
//! are read from the database at each scrape, so every replica on a shared database
//! reports the same queue.

use crate::outcome::{IssueType, RecCode, Rejection};
use actix_web::{HttpRequest, http::header};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::MetricFamily,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The route label of a request no route matched (a 404 on an unknown path).
pub const UNMATCHED: &str = "(unmatched)";

/// How a `$process-message` request ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralOutcome {
    /// A new referral was stored.
    Accepted,
    /// A cancellation was applied.
    Cancelled,
    /// A consent withdrawal was applied.
    Withdrawn,
    /// Already accepted (same request id, MessageHeader id or sender identifier).
    Duplicate,
    /// Refused: authentication, headers, structure, business rules, consent, routing.
    Rejected,
    /// The gateway failed (500).
    Error,
}

impl ReferralOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Cancelled => "cancelled",
            Self::Withdrawn => "withdrawn",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Error => "error",
        }
    }

    /// The outcome of a refused message.
    pub fn of_rejection(rejection: &Rejection) -> Self {
        match rejection.rec() {
            RecCode::ServerError | RecCode::ServiceUnavailable => Self::Error,
            RecCode::Conflict
                if rejection
                    .issues
                    .iter()
                    .any(|i| i.code == IssueType::Duplicate) =>
            {
                Self::Duplicate
            }
            _ => Self::Rejected,
        }
    }
}

/// The gateway's counters and histograms, and who may read them.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    referrals: IntCounterVec,
    delivery_attempts: IntCounterVec,
    /// Attempts in a row that did not deliver, per recipient, in this process.
    recipient_failures: IntGaugeVec,
    /// 1 while a supervised background task runs, 0 while it waits to be restarted.
    task_up: IntGaugeVec,
    task_restarts: IntCounterVec,
    /// SHA-256 of `telemetry.metrics_token`, when set.
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("token", &self.token.map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry; `token`, when given, is required to read it.
    pub fn new(token: Option<&SecretString>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "thrive_http_requests_total",
                "HTTP requests answered, by route pattern, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "thrive_http_request_duration_seconds",
                "Time from request to response, by route pattern.",
            ),
            &["route"],
        )?;
        let referrals = IntCounterVec::new(
            Opts::new(
                "thrive_referrals_total",
                "Referral messages ($process-message), by outcome.",
            ),
            &["outcome"],
        )?;
        let delivery_attempts = IntCounterVec::new(
            Opts::new(
                "thrive_delivery_attempts_total",
                "Delivery attempts, by recipient (provider or GP callback id), kind, result \
                 and reason class (none, http-4xx, http-429, http-5xx, timeout, \
                 connection-refused, connect, tls, token-endpoint, read, stopped, \
                 undeliverable, worker-error, other).",
            ),
            &["recipient", "kind", "result", "reason"],
        )?;
        let recipient_failures = IntGaugeVec::new(
            Opts::new(
                "thrive_recipient_consecutive_failures",
                "Delivery attempts in a row to a recipient that did not deliver (retried or \
                 dead-lettered), counted by this gateway process; 0 after a delivery.",
            ),
            &["recipient"],
        )?;
        let task_up = IntGaugeVec::new(
            Opts::new(
                "thrive_background_task_up",
                "1 while a background task (delivery, audit-sealer, audit-checkpoints, \
                 retention) runs, 0 while it waits to be restarted.",
            ),
            &["task"],
        )?;
        let task_restarts = IntCounterVec::new(
            Opts::new(
                "thrive_background_task_restarts_total",
                "Restarts of a background task after it panicked, returned an error or ended.",
            ),
            &["task"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(task_up.clone()))?;
        registry.register(Box::new(task_restarts.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(referrals.clone()))?;
        registry.register(Box::new(delivery_attempts.clone()))?;
        registry.register(Box::new(recipient_failures.clone()))?;
        // Listed from the start at 0, so that "no referral accepted today" is a value
        // an alert can see, not a series that is missing.
        let _ = referrals.get_metric_with_label_values(&[ReferralOutcome::Accepted.label()]);
        Ok(Self {
            recipient_failures,
            registry,
            http_requests,
            http_duration,
            referrals,
            delivery_attempts,
            task_up,
            task_restarts,
            token: token.map(|t| digest(t.expose_secret())),
        })
    }

    /// One answered request. `route` is the matched pattern or [`UNMATCHED`].
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        if let Ok(c) =
            self.http_requests
                .get_metric_with_label_values(&[route, method_label(method), &status])
        {
            c.inc();
        }
        if let Ok(h) = self.http_duration.get_metric_with_label_values(&[route]) {
            h.observe(seconds);
        }
    }

    /// One `$process-message` request decided.
    pub fn referral(&self, outcome: ReferralOutcome) {
        if let Ok(c) = self
            .referrals
            .get_metric_with_label_values(&[outcome.label()])
        {
            c.inc();
        }
    }

    /// One delivery attempt. `recipient` and `kind` must be bounded values (configured
    /// ids, known kinds): the caller maps anything else to a placeholder.
    pub fn delivery_attempt(&self, recipient: &str, kind: &str, result: &str, reason: &str) {
        if let Ok(c) = self
            .delivery_attempts
            .get_metric_with_label_values(&[recipient, kind, result, reason])
        {
            c.inc();
        }
    }

    /// An attempt to `recipient` (a configured id) delivered or failed.
    pub fn recipient_attempt(&self, recipient: &str, delivered: bool) {
        if let Ok(g) = self
            .recipient_failures
            .get_metric_with_label_values(&[recipient])
        {
            if delivered {
                g.set(0);
            } else {
                g.inc();
            }
        }
    }

    /// A supervised background task started (`up`) or stopped. `task` is a fixed
    /// name given in the code.
    pub fn background_task(&self, task: &str, up: bool) {
        if let Ok(g) = self.task_up.get_metric_with_label_values(&[task]) {
            g.set(i64::from(up));
        }
        // Listed from the start with 0 restarts, so a rate over it is defined.
        let _ = self.task_restarts.get_metric_with_label_values(&[task]);
    }

    /// A supervised background task is started again after a failure.
    pub fn background_task_restarted(&self, task: &str) {
        if let Ok(c) = self.task_restarts.get_metric_with_label_values(&[task]) {
            c.inc();
        }
    }

    /// True when the request may read the metrics: no token is configured, or the
    /// request carries `Authorization: Bearer <token>` (compared in constant time).
    pub fn allows(&self, req: &HttpRequest) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match presented {
            // Both sides hashed first, so the comparison takes the same time whatever
            // the length or content of what was presented.
            Some(token) => bool::from(digest(token).ct_eq(expected)),
            None => false,
        }
    }

    /// Everything in the text format, with the queue gauges from `queue` (deliveries
    /// by state) and the audit records waiting to be sealed (`audit_pending`) when
    /// the database answered.
    pub fn render(
        &self,
        queue: Option<&[(String, i64)]>,
        audit_pending: Option<i64>,
        recipients: Option<&[crate::operations::RecipientView]>,
    ) -> Result<String, prometheus::Error> {
        use prometheus::core::Collector;
        let mut families = self.registry.gather();
        if let Some(queue) = queue {
            families.extend(queue_gauges(queue)?);
        }
        if let Some(recipients) = recipients.filter(|r| !r.is_empty()) {
            families.extend(recipient_gauges(recipients)?);
        }
        if let Some(pending) = audit_pending {
            let gauge = IntGauge::new(
                "thrive_audit_pending_records",
                "Audit records written but not yet sealed into the hash chain, from the \
                 database at scrape time; growing means sealing fails (see the log).",
            )?;
            gauge.set(pending);
            families.extend(gauge.collect());
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = String::new();
        TextEncoder::new().encode_utf8(&families, &mut text)?;
        Ok(text)
    }
}

/// Per configured recipient, from the database at scrape time: queued deliveries, the
/// oldest one's age, and whether an operator paused it.
fn recipient_gauges(
    recipients: &[crate::operations::RecipientView],
) -> Result<Vec<MetricFamily>, prometheus::Error> {
    use prometheus::core::Collector;
    let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["recipient"]);
    let queued = gauge(
        "thrive_recipient_queued",
        "Deliveries waiting for a recipient (retries included), from the database at scrape time.",
    )?;
    let oldest = gauge(
        "thrive_recipient_oldest_queued_seconds",
        "Age of the oldest delivery waiting for a recipient (0 when none waits), from the \
         database at scrape time.",
    )?;
    let paused = gauge(
        "thrive_recipient_paused",
        "1 while an operator has paused deliveries to a recipient.",
    )?;
    for r in recipients {
        let id = r.recipient.as_str();
        queued.get_metric_with_label_values(&[id])?.set(r.queued);
        oldest
            .get_metric_with_label_values(&[id])?
            .set(r.oldest_queued_seconds.unwrap_or(0));
        paused
            .get_metric_with_label_values(&[id])?
            .set(i64::from(r.paused));
    }
    let mut families = queued.collect();
    families.extend(oldest.collect());
    families.extend(paused.collect());
    Ok(families)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Methods the gateway serves by name; any other (clients may send anything) is `OTHER`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// `thrive_delivery_queue_depth{state}` (queued, dead) and `thrive_dead_letters`, built
/// fresh at each scrape so that a scrape the database could not answer shows them
/// missing rather than stale.
fn queue_gauges(counts: &[(String, i64)]) -> Result<Vec<MetricFamily>, prometheus::Error> {
    use prometheus::core::Collector;
    let count = |state: &str| {
        counts
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| *n)
            .sum::<i64>()
    };
    let depth = IntGaugeVec::new(
        Opts::new(
            "thrive_delivery_queue_depth",
            "Deliveries waiting to be sent (queued, retries included) or parked (dead), \
             from the database at scrape time.",
        ),
        &["state"],
    )?;
    for state in ["queued", "dead"] {
        depth
            .get_metric_with_label_values(&[state])?
            .set(count(state));
    }
    let dead = IntGauge::new(
        "thrive_dead_letters",
        "Dead letters waiting for an operator (deliveries replay), from the database at scrape time.",
    )?;
    dead.set(count("dead"));
    let mut families = depth.collect();
    families.extend(dead.collect());
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Issue;
    use actix_web::test::TestRequest;

    fn scrape(m: &Metrics) -> String {
        m.render(
            Some(&[("queued".into(), 2), ("delivered".into(), 5)]),
            Some(3),
            None,
        )
        .expect("renders")
    }

    #[test]
    fn counters_render_with_their_labels_and_the_queue_gauges() {
        let m = Metrics::new(None).expect("registry");
        m.request("/fhir/r4/ServiceRequest/{id}", "GET", 404, 0.003);
        m.request(UNMATCHED, "BREW", 404, 0.001);
        m.referral(ReferralOutcome::Accepted);
        m.delivery_attempt("bchft", "referral", "delivered", "none");
        m.background_task("delivery", true);
        m.background_task("retention", true);
        m.background_task("retention", false);
        m.background_task_restarted("retention");
        let text = scrape(&m);
        for line in [
            r#"thrive_http_requests_total{method="GET",route="/fhir/r4/ServiceRequest/{id}",status="404"} 1"#,
            r#"thrive_http_requests_total{method="OTHER",route="(unmatched)",status="404"} 1"#,
            r#"thrive_http_request_duration_seconds_count{route="/fhir/r4/ServiceRequest/{id}"} 1"#,
            r#"thrive_referrals_total{outcome="accepted"} 1"#,
            r#"thrive_delivery_attempts_total{kind="referral",reason="none",recipient="bchft",result="delivered"} 1"#,
            r#"thrive_delivery_queue_depth{state="queued"} 2"#,
            r#"thrive_delivery_queue_depth{state="dead"} 0"#,
            "thrive_dead_letters 0",
            "thrive_audit_pending_records 3",
            r#"thrive_background_task_up{task="delivery"} 1"#,
            r#"thrive_background_task_up{task="retention"} 0"#,
            r#"thrive_background_task_restarts_total{task="delivery"} 0"#,
            r#"thrive_background_task_restarts_total{task="retention"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("BREW"), "unknown methods are not labels");
        assert!(
            !text.contains(r#"state="delivered""#),
            "only queued and dead are gauged"
        );
    }

    #[test]
    fn without_the_database_the_gauges_are_missing_not_stale() {
        let m = Metrics::new(None).expect("registry");
        assert!(scrape(&m).contains("thrive_dead_letters 0"));
        let text = m.render(None, None, None).expect("renders");
        assert!(!text.contains("thrive_dead_letters"), "{text}");
        assert!(!text.contains("thrive_audit_pending_records"), "{text}");
        assert!(!text.contains("thrive_delivery_queue_depth"), "{text}");
    }

    #[test]
    fn rejections_are_told_apart() {
        let duplicate =
            Rejection::one(Issue::new(RecCode::Conflict, IssueType::Duplicate, "again"));
        let conflict = Rejection::one(Issue::new(
            RecCode::Conflict,
            IssueType::Conflict,
            "already cancelled",
        ));
        let bad = Rejection::one(Issue::business(IssueType::Value, "Patient", "bad"));
        assert_eq!(
            ReferralOutcome::of_rejection(&duplicate),
            ReferralOutcome::Duplicate
        );
        assert_eq!(
            ReferralOutcome::of_rejection(&conflict),
            ReferralOutcome::Rejected
        );
        assert_eq!(
            ReferralOutcome::of_rejection(&bad),
            ReferralOutcome::Rejected
        );
        assert_eq!(
            ReferralOutcome::of_rejection(&crate::outcome::server_error()),
            ReferralOutcome::Error
        );
    }

    #[test]
    fn the_token_is_a_bearer_token_compared_whole() {
        let open = Metrics::new(None).expect("registry");
        assert!(open.allows(&TestRequest::default().to_http_request()));

        let token = SecretString::from("s3cret-metrics-token");
        let m = Metrics::new(Some(&token)).expect("registry");
        let with = |value: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request()
        };
        assert!(!m.allows(&TestRequest::default().to_http_request()));
        assert!(m.allows(&with("Bearer s3cret-metrics-token")));
        assert!(m.allows(&with("bearer s3cret-metrics-token")));
        for wrong in [
            "Bearer s3cret-metrics-toke",
            "Bearer s3cret-metrics-token2",
            "Basic s3cret-metrics-token",
            "s3cret-metrics-token",
            "Bearer ",
        ] {
            assert!(!m.allows(&with(wrong)), "{wrong}");
        }
        assert!(!format!("{m:?}").contains("s3cret"));
    }
}
