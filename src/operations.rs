//! Operator interface: the delivery queue and its dead letters, over HTTP
//! (`/operator/v1`, operator role) and the command line. Every call is audited.
//!
//! A dead letter is either replayed (queued again) or resolved: an operator decides it
//! will not be sent, so it is never replayed and no longer holds back the retention
//! purge of the referral's personal data.

use crate::auth::Role;
use crate::intake::{Gateway, process::AuditContext};
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use crate::store::{AuditRecord, DeliveryView, Store, StoreError};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use fhir_sdk::time::OffsetDateTime;
use serde::Deserialize;

/// Lists deliveries, newest first (dead letters only when asked).
pub async fn list(
    store: &dyn Store,
    dead_only: bool,
    limit: i64,
) -> Result<Vec<DeliveryView>, StoreError> {
    store.list_deliveries(dead_only, limit).await
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
async fn refusal(store: &dyn Store, id: &str) -> Result<DeadLetterAction, StoreError> {
    Ok(match store.delivery(id).await? {
        Some(d) if d.state == "dead" && d.resolved_at.is_some() => DeadLetterAction::Resolved,
        _ => DeadLetterAction::NotDeadLetter,
    })
}

/// Puts a dead letter back in the queue. Its consent and referral state are checked
/// again by the worker before it is sent. A resolved dead letter is not replayed.
/// The record names the delivery's referral (and so its subject) and recipient.
async fn about_delivery(
    store: &dyn Store,
    id: &str,
    mut audit: AuditRecord,
) -> Result<AuditRecord, StoreError> {
    if let Some(d) = store.delivery(id).await? {
        audit.referral_id = Some(d.referral_id.clone());
        audit.recipient = Some(d.provider.clone());
    }
    Ok(audit)
}

pub async fn replay(
    store: &dyn Store,
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
    store: &dyn Store,
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

/// Authenticates an operator; a refusal is recorded before it is returned.
async fn operator_only(
    gw: &Gateway,
    req: &HttpRequest,
    action: &str,
) -> Result<crate::auth::Principal, Rejection> {
    crate::intake::authenticate_role(
        gw,
        req,
        action,
        Role::Operator,
        "only operators may manage deliveries",
    )
    .await
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    dead: bool,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

#[get("/operator/v1/deliveries")]
async fn list_deliveries(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let principal = operator_only(&gw, &req, "operator.deliveries.list").await?;
    let rows = list(gw.store.as_ref(), query.dead, query.limit.clamp(1, 1000)).await?;
    let ctx = AuditContext {
        action: "operator.deliveries.list",
        principal: Some(&principal),
        ids: None,
    };
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"dead_only": query.dead, "count": rows.len()}),
    );
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok().json(rows))
}

/// What one dead-letter action is: its audit action, its answer and its verb.
struct DeadLetterVerb {
    /// Queue it again (replay) rather than mark it resolved.
    replay: bool,
    action: &'static str,
    status: u16,
    /// The refusal's "cannot be ..." for a letter already resolved.
    refused: &'static str,
}

/// Replay and resolve over HTTP: one path for both, differing only in the store call
/// and the answer.
async fn dead_letter(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    verb: DeadLetterVerb,
    done: serde_json::Value,
) -> Result<HttpResponse, Rejection> {
    let principal = operator_only(gw, req, verb.action).await?;
    let ctx = AuditContext {
        action: verb.action,
        principal: Some(&principal),
        ids: None,
    };
    let record = ctx.record(
        "accepted",
        verb.status,
        None,
        serde_json::json!({"delivery_id": id}),
    );
    let store = gw.store.as_ref();
    let result = if verb.replay {
        replay(store, id, record).await
    } else {
        resolve(store, id, record).await
    };
    match result? {
        DeadLetterAction::Done => {
            let status = actix_web::http::StatusCode::from_u16(verb.status)
                .unwrap_or(actix_web::http::StatusCode::OK);
            Ok(HttpResponse::build(status).json(done))
        }
        refused => {
            let rejection = dead_letter_refusal(refused, verb.refused);
            gw.audit_rejection(&ctx, &rejection).await;
            Err(rejection)
        }
    }
}

#[post("/operator/v1/deliveries/{id}/replay")]
async fn replay_delivery(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let verb = DeadLetterVerb {
        replay: true,
        action: "operator.deliveries.replay",
        status: 202,
        refused: "replayed",
    };
    let done = serde_json::json!({"delivery_id": id.as_str(), "state": "queued"});
    dead_letter(&gw, &req, &id, verb, done).await
}

/// 404 for an id that is no dead letter; 409 for a dead letter already resolved.
fn dead_letter_refusal(refused: DeadLetterAction, verb: &str) -> Rejection {
    match refused {
        DeadLetterAction::Resolved => Issue::new(
            RecCode::Conflict,
            IssueType::Conflict,
            format!("this dead letter was resolved by an operator and cannot be {verb}"),
        )
        .into(),
        _ => Issue::new(
            RecCode::NotFound,
            IssueType::NotFound,
            "no dead letter has this id",
        )
        .into(),
    }
}

#[post("/operator/v1/deliveries/{id}/resolve")]
async fn resolve_delivery(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let verb = DeadLetterVerb {
        replay: false,
        action: "operator.deliveries.resolve",
        status: 200,
        refused: "resolved again",
    };
    let done = serde_json::json!({"delivery_id": id.as_str(), "state": "dead", "resolved": true});
    dead_letter(&gw, &req, &id, verb, done).await
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    from: String,
    to: String,
    #[serde(default = "default_group")]
    group_by: String,
}

fn default_group() -> String {
    "provider".into()
}

/// Programme statistics (auditor or operator role), small numbers suppressed.
#[get("/reports/v1/programme")]
async fn programme_report(
    req: HttpRequest,
    query: web::Query<ReportQuery>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let principal = crate::intake::authenticate(&gw, &req)?;
    let ctx = AuditContext {
        action: "report.programme",
        principal: Some(&principal),
        ids: None,
    };
    let result = async {
        if !matches!(principal.role, Role::Auditor | Role::Operator) {
            return Err(Rejection::from(Issue::new(
                RecCode::Forbidden,
                IssueType::Forbidden,
                "only auditors and operators read programme statistics",
            )));
        }
        let bad = |e: String| Rejection::from(Issue::new(RecCode::BadRequest, IssueType::Value, e));
        let from = crate::reports::bound(&query.from).map_err(bad)?;
        let to = crate::reports::bound(&query.to).map_err(bad)?;
        let group_by: crate::reports::GroupBy = query.group_by.parse().map_err(bad)?;
        let rows = gw.store.report_rows(from, to, false).await?;
        Ok(crate::reports::programme(&rows, group_by))
    }
    .await;
    match result {
        Ok(rows) => {
            let record = ctx.record(
                "allowed",
                200,
                None,
                serde_json::json!({"from": query.from, "to": query.to, "group_by": query.group_by}),
            );
            gw.store.append_audit(&record).await?;
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "from": query.from,
                "to": query.to,
                "group_by": query.group_by,
                "suppression": "counts of 1 to 4 are shown as <5; all other counts are rounded to the nearest 5",
                "rows": rows,
            })))
        }
        Err(r) => {
            gw.audit_rejection(&ctx, &r).await;
            Err(r)
        }
    }
}

/// Registers the operator and reporting routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list_deliveries)
        .service(replay_delivery)
        .service(resolve_delivery)
        .service(programme_report);
}
