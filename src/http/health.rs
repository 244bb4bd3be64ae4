//! Health for orchestrators: live while every background task stays up, ready while
//! the database answers (with MESH's last known state, when configured).

use crate::app::AppState;
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::{HttpResponse, Responder, ResponseError, get, web};

/// Live while every background task stays up; 503 naming any that cannot (failed
/// `background.max_restarts` times within `background.restart_window_seconds`), so
/// an orchestrator replaces the process.
#[get("/health/live")]
async fn live(tasks: Option<web::Data<crate::supervisor::Supervisor>>) -> impl Responder {
    let status = tasks.map(|t| t.status()).unwrap_or_default();
    let failing: Vec<&str> = status
        .iter()
        .filter(|s| s.failing)
        .map(|s| s.task.as_str())
        .collect();
    if failing.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"status": "live", "tasks": status}))
    } else {
        tracing::warn!(tasks = ?failing, "liveness check: background tasks cannot stay up");
        // Like every error, an OperationOutcome: one issue per task that cannot stay up.
        Rejection {
            issues: failing
                .iter()
                .map(|task| {
                    Issue::new(
                        RecCode::ServiceUnavailable,
                        IssueType::Transient,
                        format!("not live: background task `{task}` cannot stay up"),
                    )
                })
                .collect(),
        }
        .error_response()
    }
}

/// MESH as the gateway last found it (the start-up handshake, then every send and
/// inbox poll), without calling it: `ok`, `failing` with the problem, or `unknown`
/// before the first contact. MESH being away does not make the gateway unready: it
/// still takes referrals, and deliveries over MESH wait and retry.
fn mesh_state(mesh: &crate::mesh::MeshClient) -> serde_json::Value {
    let rfc3339 = &fhir_sdk::time::format_description::well_known::Rfc3339;
    match mesh.last_contact() {
        None => serde_json::json!({"mailbox": mesh.mailbox(), "state": "unknown"}),
        Some(c) => serde_json::json!({
            "mailbox": mesh.mailbox(),
            "state": if c.ok { "ok" } else { "failing" },
            "last_contact": c.at.format(rfc3339).unwrap_or_default(),
            "problem": c.problem,
        }),
    }
}

/// Ready when the database answers within `server.ready_timeout_ms`. Otherwise 503
/// (with `Retry-After`) naming the dependency that failed and how: `unreachable` (no
/// connection could be had), `timeout` (no answer in time) or `error` (it answered
/// with an error); the detail is in the log, never in the answer, which anyone may read.
#[get("/health/ready")]
async fn ready(gw: web::Data<AppState>) -> impl Responder {
    let started = std::time::Instant::now();
    let failure = match tokio::time::timeout(gw.ready_timeout, gw.store.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) if e.is_unavailable() => {
            tracing::warn!(error = %e, "readiness check: the database is unreachable");
            Some((
                "unreachable",
                "no connection to the database could be had (see the log)".to_owned(),
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: the database answered with an error");
            Some((
                "error",
                "the database answered the check with an error (see the log)".to_owned(),
            ))
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = gw.ready_timeout.as_millis() as u64,
                "readiness check: the database did not answer in time"
            );
            Some((
                "timeout",
                format!(
                    "the database did not answer within {} ms",
                    gw.ready_timeout.as_millis()
                ),
            ))
        }
    };
    let checked_ms = started.elapsed().as_millis() as u64;
    match failure {
        None => {
            let mut body = serde_json::json!({
                "status": "ready",
                "database": "ok",
                "checked_ms": checked_ms,
            });
            if let Some(mesh) = &gw.mesh {
                body["mesh"] = mesh_state(mesh);
            }
            HttpResponse::Ok().json(body)
        }
        // Like every error, an OperationOutcome (with Retry-After): the dependency
        // that failed, how, and why.
        Some((database, reason)) => Rejection::one(Issue::new(
            RecCode::ServiceUnavailable,
            IssueType::Transient,
            format!("not ready: database {database}: {reason} (checked in {checked_ms} ms)"),
        ))
        .error_response(),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(live).service(ready);
}
