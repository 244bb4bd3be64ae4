//! The provider interface (`/provider/v1`, provider role): status events about the
//! referrals delivered to that provider, as JSON or as FHIR Tasks, and those Tasks read
//! back. Every call by a provider is audited.

use crate::app::{AppState, AuditContext, RequestIds};
use crate::auth::{Principal, Role};
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::params::Query;
use crate::provider_events::{Body, Paths, Recorded, read_task, record};
use crate::store::{EventRow, ReferralRow};
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, post, web};
use serde_json::Value;

fn provider_only(gw: &AppState, req: &HttpRequest) -> Result<(Principal, String), Rejection> {
    let principal = crate::app::authenticate(gw, req)?;
    match &principal.role {
        Role::Provider { provider } => {
            let id = provider.to_string();
            Ok((principal, id))
        }
        _ => Err(Issue::new(
            RecCode::Forbidden,
            IssueType::Forbidden,
            "only providers send status events",
        )
        .into()),
    }
}

fn event_json(row: &EventRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.id,
        "referral_id": row.referral_id,
        "event": row.event,
        "occurred_at": row.occurred_at.format(&fhir_sdk::time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "reason": row.reason,
        "detail": serde_json::from_str::<serde_json::Value>(&row.detail).unwrap_or_default(),
    })
}

#[post("/provider/v1/referrals/{referral_id}/events")]
async fn post_event(
    req: HttpRequest,
    referral_id: web::Path<String>,
    body: web::Bytes,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let event = Ok((
        referral_id.into_inner(),
        Body::Json(body.to_vec()),
        Paths::json(),
    ));
    let recorded = receive(&gw, &req, Query::none, event).await?;
    let status = if recorded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(event_json(&recorded.row)))
}

/// A FHIR `Task` update in place of the JSON event: `basedOn` (or `focus`) the
/// gateway's ServiceRequest, `businessStatus` the event, `executionPeriod.start` (or
/// `lastModified`) when, and `statusReason` and `input` (`start_date`,
/// `hours_per_week`) where the event needs them. The same rules apply; refusals name
/// the Task element at fault. A new event answers 201 with the Task as recorded and
/// its `Location` (`GET /provider/v1/fhir/Task/{id}`); the same request again, 200.
#[post("/provider/v1/fhir/Task")]
async fn post_task(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let event =
        read_task(&body).map(|(referral, event, paths)| (referral, Body::Read(event), paths));
    let recorded = receive(&gw, &req, fhir_query, event).await?;
    let status = if recorded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .content_type("application/fhir+json")
        .insert_header((
            actix_web::http::header::LOCATION,
            task_location(&recorded.row.id),
        ))
        .json(task_resource(&recorded.referral, &recorded.row)))
}

/// The FHIR Task endpoints take FHIR's general parameters `_format` (JSON only) and
/// `_pretty` (ignored), which FHIR clients may add, and nothing else.
fn fhir_query(query_string: &str) -> Result<(), Rejection> {
    let mut query = Query::parse(query_string, &["_format", "_pretty"]);
    query.get(
        "_format",
        "json or application/fhir+json: the gateway answers in JSON",
        |v| {
            matches!(
                v,
                "json" | "application/json" | "application/fhir+json" | "application/fhir json"
            )
            .then_some(())
        },
    );
    query.get("_pretty", "true or false", crate::params::boolean);
    query.finish()
}

/// Where a recorded event is read as a Task: relative to this gateway, as the
/// provider reached it (a `Location` from request headers could be forged).
fn task_location(id: &str) -> String {
    format!("/provider/v1/fhir/Task/{id}")
}

/// A recorded event as a FHIR Task.
fn task_resource(referral: &ReferralRow, row: &EventRow) -> Value {
    crate::fhir::messages::event_task(referral, row)
}

/// A Task this provider posted (or any of its status events, read as a Task).
/// Another provider's event, or none, is 404 alike.
#[get("/provider/v1/fhir/Task/{id}")]
async fn get_task(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let (principal, provider) = provider_only(&gw, &req)?;
    let ids = RequestIds::from_headers(req.headers()).ok();
    let ctx = AuditContext {
        action: "referral.event.read",
        principal: Some(&principal),
        ids: ids.as_ref(),
    };
    let result = async {
        let not_found = || -> Rejection {
            Issue::new(
                RecCode::NotFound,
                IssueType::NotFound,
                "this provider has no Task with this id",
            )
            .at("id")
            .into()
        };
        fhir_query(req.query_string())?;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(not_found());
        }
        let row = gw
            .store
            .event(&id)
            .await?
            .filter(|e| e.provider == provider)
            .ok_or_else(not_found)?;
        let referral = gw
            .store
            .referral(&row.referral_id)
            .await?
            .ok_or_else(server_error)?;
        Ok((row, referral))
    }
    .await;
    let (row, referral) = match result {
        Ok(found) => found,
        Err(r) => {
            gw.audit_rejection(&ctx, &r).await;
            return Err(r);
        }
    };
    let record = ctx.record(
        "allowed",
        200,
        Some(&row.referral_id),
        serde_json::json!({"event_id": row.id}),
    );
    gw.store.append_audit(&record).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+json")
        .json(task_resource(&referral, &row)))
}

/// Both forms of a status event end here: the caller must be a provider, and the
/// event (or why it could not be read) is recorded and audited the same way.
async fn receive(
    gw: &AppState,
    req: &HttpRequest,
    query: fn(&str) -> Result<(), Rejection>,
    event: Result<(String, Body, Paths), Rejection>,
) -> Result<Recorded, Rejection> {
    let (principal, provider) = provider_only(gw, req)?;
    let ids = RequestIds::from_headers(req.headers());
    let ctx = AuditContext {
        action: "referral.event",
        principal: Some(&principal),
        ids: ids.as_ref().ok(),
    };
    let result = match query(req.query_string()).and(event) {
        Ok((referral_id, body, paths)) => {
            record(gw, &provider, &referral_id, ids.clone(), body, &paths, &ctx).await
        }
        Err(r) => Err(r),
    };
    if let Err(r) = &result {
        gw.audit_rejection(&ctx, r).await;
    }
    result
}

/// Registers the provider routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(post_event).service(post_task).service(get_task);
}
