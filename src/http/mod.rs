//! Every HTTP face of the gateway, one file each: what GP systems (intake), providers,
//! operators, commissioners (reports) and auditors call, health and metrics, and the
//! development sandbox. Handlers translate between HTTP and the modules that decide;
//! authentication is [`crate::app`]'s.

pub mod audit;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod operator;
pub mod provider;
pub mod reports;
pub mod sandbox;

use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::{HttpResponse, web};

/// Registers every route but the sandbox's (see [`sandbox::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(intake::configure)
        .configure(health::configure)
        .configure(operator::configure)
        .configure(reports::configure)
        .configure(provider::configure)
        .configure(audit::configure)
        .configure(metrics::configure);
}

/// Anything not routed: a FHIR 404, so clients always get an OperationOutcome.
pub async fn not_found() -> Result<HttpResponse, Rejection> {
    Err(Issue::new(
        RecCode::NotFound,
        IssueType::NotSupported,
        "no such endpoint",
    )
    .into())
}
