//! Operator interface: the delivery queue and its dead letters, over HTTP
//! (`/operator/v1`, operator role) and the command line. Every call is audited.
//!
//! A dead letter is either replayed (queued again) or resolved: an operator decides it
//! will not be sent, so it is never replayed and no longer holds back the retention
//! purge of the referral's personal data.

use crate::auth::Role;
use crate::intake::{Gateway, process::AuditContext};
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::params::{self, DATE_OR_INSTANT, Query};
use crate::store::{AuditRecord, DeliveryView, Store, StoreError};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use fhir_sdk::time::OffsetDateTime;

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

/// `?dead=true|false&limit=1..1000` (a larger limit lists 1000), read after the caller
/// is authenticated so a bad one is refused and recorded like any other refusal.
#[get("/operator/v1/deliveries")]
async fn list_deliveries(
    req: HttpRequest,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let principal = operator_only(&gw, &req, "operator.deliveries.list").await?;
    let ctx = AuditContext {
        action: "operator.deliveries.list",
        principal: Some(&principal),
        ids: None,
    };
    let mut query = Query::parse(req.query_string(), &["dead", "limit"]);
    let dead = query
        .get("dead", "true or false", params::boolean)
        .unwrap_or(false);
    let limit = query
        .get(
            "limit",
            "a whole number of at least 1 (at most 1000 are listed)",
            params::page_size(1000),
        )
        .unwrap_or(100);
    if let Err(r) = query.finish() {
        gw.audit_rejection(&ctx, &r).await;
        return Err(r);
    }
    let rows = list(gw.store.as_ref(), dead, limit).await?;
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"dead_only": dead, "count": rows.len()}),
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
    // No query parameters; the id is a delivery's (a UUID), or there is nothing there.
    let mut issues = Query::none(req.query_string())
        .err()
        .map(|r| r.issues)
        .unwrap_or_default();
    if uuid::Uuid::parse_str(id).is_err() {
        issues.extend(params::not_found("id", "no dead letter has this id").issues);
    }
    if let Some(r) = Rejection::from_issues(issues) {
        gw.audit_rejection(&ctx, &r).await;
        return Err(r);
    }
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
        .at("id")
        .into(),
        _ => params::not_found("id", "no dead letter has this id"),
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

/// The report's parameters as asked, echoed in its answer and its audit record.
struct ReportQuery {
    from: String,
    to: String,
    group_by: String,
}

/// Programme statistics (auditor or operator role), small numbers suppressed:
/// `?from=&to=` (required) `&group_by=`, read after the role is checked.
#[get("/reports/v1/programme")]
async fn programme_report(
    req: HttpRequest,
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
        let mut query = Query::parse(req.query_string(), &["from", "to", "group_by"]);
        let from = query.required("from", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let to = query.required("to", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let group_by = query
            .get("group_by", "provider, locality, programme or month", |v| {
                v.parse::<crate::reports::GroupBy>().ok()
            })
            .unwrap_or(crate::reports::GroupBy::Provider);
        let shown = ReportQuery {
            from: query.text("from").unwrap_or_default().to_owned(),
            to: query.text("to").unwrap_or_default().to_owned(),
            group_by: query.text("group_by").unwrap_or("provider").to_owned(),
        };
        query.finish()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(server_error());
        };
        let rows = gw.store.report_rows(from, to, false).await?;
        Ok((crate::reports::programme(&rows, group_by), shown))
    }
    .await;
    match result {
        Ok((rows, query)) => {
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
