//! `GET /metrics` for Prometheus.

use crate::app::AppState;
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::{HttpRequest, HttpResponse, get, web};
use prometheus::{Encoder as _, TextEncoder};

fn unauthorised() -> Rejection {
    Issue::new(
        RecCode::Unauthorized,
        IssueType::Login,
        "this endpoint needs the metrics bearer token (telemetry.metrics_token)",
    )
    .into()
}

/// The scrape. Open unless `telemetry.metrics_token` is set; then 401 without it.
#[get("/metrics")]
async fn metrics(req: HttpRequest, gw: web::Data<AppState>) -> Result<HttpResponse, Rejection> {
    if !gw.metrics.allows(&req) {
        return Err(unauthorised());
    }
    // Side by side, so a database that is away costs the scrape one acquire timeout.
    let now = fhir_sdk::time::OffsetDateTime::now_utc();
    let (queue, audit_pending, recipients) = tokio::join!(
        gw.store.delivery_counts(),
        gw.store.audit_pending(),
        crate::operations::recipients(gw.store.as_ref(), &gw.recipients, now)
    );
    let recipients = match recipients {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the recipients' queues could not be read");
            None
        }
    };
    let queue = match queue {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the delivery queue could not be counted");
            None
        }
    };
    let audit_pending = match audit_pending {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: pending audit records could not be counted");
            None
        }
    };
    match gw
        .metrics
        .render(queue.as_deref(), audit_pending, recipients.as_deref())
    {
        Ok(text) => Ok(HttpResponse::Ok()
            .content_type(TextEncoder::new().format_type())
            .body(text)),
        Err(e) => {
            tracing::error!(error = %e, "metrics: encoding failed");
            Err(crate::outcome::server_error())
        }
    }
}

/// Registers `GET /metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(metrics);
}
