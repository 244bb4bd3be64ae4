//! The operator API (`/operator/v1`, operator role): the delivery queue and its dead
//! letters. Every call, allowed or refused, is audited.

use crate::app::{AppState, AuditContext};
use crate::auth::Role;
use crate::operations::{self, DeadLetterAction};
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use crate::params::{self, Query};
use crate::store::{DeliveryFilter, ShownState};
use actix_web::{HttpRequest, HttpResponse, get, post, web};

/// The problems of a request that takes no query parameters: each one it has.
fn no_query(req: &HttpRequest) -> Vec<Issue> {
    Query::none(req.query_string())
        .err()
        .map(|r| r.issues)
        .unwrap_or_default()
}

/// Refuses with every problem found, recorded first; passes when there is none.
async fn refuse_any(
    gw: &AppState,
    ctx: &AuditContext<'_>,
    issues: Vec<Issue>,
) -> Result<(), Rejection> {
    match Rejection::from_issues(issues) {
        Some(r) => {
            gw.audit_rejection(ctx, &r).await;
            Err(r)
        }
        None => Ok(()),
    }
}

/// Authenticates an operator; a refusal is recorded before it is returned.
async fn operator_only(
    gw: &AppState,
    req: &HttpRequest,
    action: &str,
) -> Result<crate::auth::Principal, Rejection> {
    crate::app::authenticate_role(
        gw,
        req,
        action,
        Role::Operator,
        "only operators may manage deliveries",
    )
    .await
}

/// `?dead=true|false&recipient=ID&state=queued|delivered|dead|cancelled|resolved&since=
/// DATE&limit=1..1000` (a larger limit lists 1000), read after the caller is
/// authenticated so a bad one is refused and recorded like any other refusal.
#[get("/operator/v1/deliveries")]
async fn list_deliveries(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = operator_only(&gw, &req, "operator.deliveries.list").await?;
    let ctx = AuditContext {
        action: "operator.deliveries.list",
        principal: Some(&principal),
        ids: None,
    };
    let mut query = Query::parse(
        req.query_string(),
        &["dead", "recipient", "state", "since", "limit"],
    );
    let dead = query
        .get("dead", "true or false", params::boolean)
        .unwrap_or(false);
    let known = format!("a provider or GP callback id: {}", gw.recipients.listed());
    let recipient = query.get("recipient", &known, |r| {
        gw.recipients.contains(r).then(|| r.to_owned())
    });
    let state = query.get(
        "state",
        "queued, delivered, dead, cancelled or resolved",
        ShownState::parse,
    );
    let since = query.get("since", "a date (YYYY-MM-DD) or RFC 3339 date-time", |s| {
        crate::reports::bound(s).ok()
    });
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
    let filter = DeliveryFilter {
        dead_only: dead,
        recipient,
        state,
        since,
    };
    let rows = operations::list(gw.store.as_ref(), &filter, limit).await?;
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({
            "dead_only": dead,
            "recipient": filter.recipient,
            "state": filter.state.map(ShownState::as_str),
            "count": rows.len(),
        }),
    );
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok().json(rows))
}

/// One delivery and every attempt at it (time, duration, outcome, reason, target, and
/// the audit record's `seq`); 404 for an id that is no delivery.
#[get("/operator/v1/deliveries/{id}")]
async fn show_delivery(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let action = "operator.deliveries.show";
    let principal = operator_only(&gw, &req, action).await?;
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let mut issues = no_query(&req);
    let detail = if uuid::Uuid::parse_str(&id).is_ok() {
        operations::show(gw.store.as_ref(), &id).await?
    } else {
        None
    };
    if issues.is_empty() && detail.is_none() {
        issues.extend(params::not_found("id", "no delivery has this id").issues);
    }
    refuse_any(&gw, &ctx, issues).await?;
    let Some(detail) = detail else {
        return Err(params::not_found("id", "no delivery has this id"));
    };
    let mut record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"delivery_id": id.as_str()}),
    );
    record.referral_id = Some(detail.delivery.referral_id.to_string());
    record.recipient = Some(detail.delivery.provider.clone());
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok().json(detail))
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
    gw: &AppState,
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
    let mut issues = no_query(req);
    if uuid::Uuid::parse_str(id).is_err() {
        issues.extend(params::not_found("id", "no dead letter has this id").issues);
    }
    refuse_any(gw, &ctx, issues).await?;
    let record = ctx.record(
        "accepted",
        verb.status,
        None,
        serde_json::json!({"delivery_id": id}),
    );
    match operations::act_on_dead_letter(gw.store.as_ref(), verb.replay, id, record).await? {
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
    gw: web::Data<AppState>,
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
    gw: web::Data<AppState>,
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

/// Each provider and GP callback: paused or not, queued deliveries, oldest age.
#[get("/operator/v1/recipients")]
async fn list_recipients(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let action = "operator.recipients.list";
    let principal = operator_only(&gw, &req, action).await?;
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    if let Err(r) = Query::none(req.query_string()) {
        gw.audit_rejection(&ctx, &r).await;
        return Err(r);
    }
    let rows = operations::recipients(
        gw.store.as_ref(),
        &gw.recipients,
        fhir_sdk::time::OffsetDateTime::now_utc(),
    )
    .await?;
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"count": rows.len()}),
    );
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok().json(rows))
}

/// The messages read from the gateway's MESH inbox, newest first (`?limit=`, at most
/// 1000, 100 by default), and what became of each.
#[get("/operator/v1/mesh/messages")]
async fn mesh_messages(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let action = "operator.mesh.list";
    let principal = operator_only(&gw, &req, action).await?;
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let mut query = Query::parse(req.query_string(), &["limit"]);
    let limit = query.get("limit", "a whole number from 1 to 1000", |v| {
        v.parse::<i64>().ok().filter(|n| (1..=1000).contains(n))
    });
    if let Err(r) = query.finish() {
        gw.audit_rejection(&ctx, &r).await;
        return Err(r);
    }
    let rows = gw.store.mesh_messages(limit.unwrap_or(100)).await?;
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"count": rows.len()}),
    );
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"count": rows.len(), "messages": rows})))
}

/// Pause or resume: 200 with `changed` false when it already was so; 404 for a
/// recipient that is not configured.
async fn pause_recipient(
    gw: &AppState,
    req: &HttpRequest,
    recipient: &str,
    paused: bool,
) -> Result<HttpResponse, Rejection> {
    let action = if paused {
        "operator.recipients.pause"
    } else {
        "operator.recipients.resume"
    };
    let principal = operator_only(gw, req, action).await?;
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let mut issues = no_query(req);
    if !gw.recipients.contains(recipient) {
        let known = format!(
            "no provider or GP callback has this id (configured: {})",
            gw.recipients.listed()
        );
        issues.extend(params::not_found("recipient", &known).issues);
    }
    refuse_any(gw, &ctx, issues).await?;
    let record = ctx.record(
        "accepted",
        200,
        None,
        serde_json::json!({"recipient": recipient}),
    );
    let changed = operations::pause(gw.store.as_ref(), &gw.recipients, recipient, paused, record)
        .await?
        .unwrap_or(false);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "recipient": recipient,
        "paused": paused,
        "changed": changed,
    })))
}

#[post("/operator/v1/recipients/{id}/pause")]
async fn pause(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    pause_recipient(&gw, &req, &id, true).await
}

#[post("/operator/v1/recipients/{id}/resume")]
async fn resume(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    pause_recipient(&gw, &req, &id, false).await
}

/// One referral's whole story, by a business key: its reference (`TIW-…`), gateway
/// id, correlation id or the sender's ServiceRequest identifier value. Every referral
/// the key names is listed (it never picks one); 404 when it names none. Metadata only.
#[get("/operator/v1/referrals/{key}")]
async fn referral_timeline(
    req: HttpRequest,
    key: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let action = "operator.referrals.show";
    let principal = operator_only(&gw, &req, action).await?;
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let mut issues = no_query(&req);
    let found = if issues.is_empty() {
        gw.store.find_referrals(key.trim()).await?
    } else {
        Vec::new()
    };
    if issues.is_empty() && found.is_empty() {
        issues.extend(
            params::not_found(
                "key",
                "no referral has this reference, id, correlation id or sender identifier",
            )
            .issues,
        );
    }
    refuse_any(&gw, &ctx, issues).await?;
    let ids: Vec<String> = found.iter().map(|r| r.id.to_string()).collect();
    let mut record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"count": ids.len(), "referrals": ids}),
    );
    if let [only] = ids.as_slice() {
        record.referral_id = Some(only.clone());
    }
    gw.store.append_audit(&record).await?;
    let timelines = operations::timelines(gw.store.as_ref(), found).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "count": timelines.len(),
        "referrals": timelines,
    })))
}

/// Registers the operator routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list_deliveries)
        .service(show_delivery)
        .service(list_recipients)
        .service(mesh_messages)
        .service(referral_timeline)
        .service(pause)
        .service(resume)
        .service(replay_delivery)
        .service(resolve_delivery);
}
