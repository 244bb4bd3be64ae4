//! The provider interface (`/provider/v1`, provider role): status events about the
//! referrals delivered to that provider. Every call is audited.

use crate::auth::{Principal, Role};
use crate::events::{self, EventBody, Milestone};
use crate::intake::{Gateway, RequestIds, process::AuditContext};
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::store::{EventRecord, EventRecorded, EventRow, MilestoneDelivery};
use actix_web::{HttpRequest, HttpResponse, post, web};
use fhir_sdk::time::OffsetDateTime;

fn provider_only(gw: &Gateway, req: &HttpRequest) -> Result<(Principal, String), Rejection> {
    let principal = crate::intake::authenticate(gw, req)?;
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
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    receive(&gw, &req, Ok((referral_id.into_inner(), body.to_vec()))).await
}

/// A FHIR `Task` update in place of the JSON event: `basedOn` the gateway's
/// ServiceRequest, `businessStatus` the event, `executionPeriod.start` when, and
/// `statusReason` and `input` (`start_date`, `hours_per_week`) where the event needs
/// them. The same rules apply.
#[post("/provider/v1/fhir/Task")]
async fn post_task(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, Rejection> {
    let event = task_to_event(&body).and_then(|(referral_id, event)| {
        let event = serde_json::to_vec(&event).map_err(|_| server_error())?;
        Ok((referral_id, event))
    });
    receive(&gw, &req, event).await
}

/// Both forms of a status event end here: the caller must be a provider, and the
/// event (or why it could not be read) is recorded and audited the same way.
async fn receive(
    gw: &Gateway,
    req: &HttpRequest,
    event: Result<(String, Vec<u8>), Rejection>,
) -> Result<HttpResponse, Rejection> {
    let (principal, provider) = provider_only(gw, req)?;
    let ids = RequestIds::from_headers(req.headers());
    let ctx = AuditContext {
        action: "referral.event",
        principal: Some(&principal),
        ids: ids.as_ref().ok(),
    };
    let result = match event {
        Ok((referral_id, body)) => {
            record(gw, &provider, &referral_id, ids.clone(), &body, &ctx).await
        }
        Err(r) => Err(r),
    };
    if let Err(r) = &result {
        gw.audit_rejection(&ctx, r).await;
    }
    result
}

/// Reads a Task into the referral it is about and the JSON event it stands for.
fn task_to_event(body: &[u8]) -> Result<(String, serde_json::Value), Rejection> {
    let bad = |what: &str, at: &str| -> Rejection {
        Issue::new(RecCode::BadRequest, IssueType::Structure, what.to_owned())
            .at(at.to_owned())
            .into()
    };
    let task: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| bad("the body must be a FHIR Task (JSON)", "Task"))?;
    serde_json::from_value::<fhir_sdk::r4b::resources::Task>(task.clone())
        .map_err(|_| bad("the body is not a valid FHIR R4 Task", "Task"))?;
    let referral = task["basedOn"][0]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("ServiceRequest/"))
        .ok_or_else(|| {
            bad(
                "Task.basedOn must reference ServiceRequest/<referral id>",
                "Task.basedOn",
            )
        })?;
    let event = task["businessStatus"]["coding"][0]["code"]
        .as_str()
        .ok_or_else(|| {
            bad(
                "Task.businessStatus needs the event code",
                "Task.businessStatus",
            )
        })?;
    let occurred_at = task["executionPeriod"]["start"]
        .as_str()
        .or_else(|| task["lastModified"].as_str())
        .ok_or_else(|| {
            bad(
                "Task.executionPeriod.start (when it happened) is required",
                "Task.executionPeriod",
            )
        })?;
    let mut out = serde_json::json!({"event": event, "occurred_at": occurred_at});
    if let Some(reason) = task["statusReason"]["coding"][0]["code"]
        .as_str()
        .or_else(|| task["statusReason"]["text"].as_str())
    {
        out["reason"] = serde_json::json!(reason);
    }
    for input in task["input"].as_array().into_iter().flatten() {
        match input["type"]["text"].as_str() {
            Some("start_date") => out["start_date"] = input["valueDate"].clone(),
            Some("hours_per_week") => {
                out["hours_per_week"] = input["valueDecimal"]
                    .as_f64()
                    .or_else(|| input["valueInteger"].as_f64())
                    .map_or(serde_json::Value::Null, serde_json::Value::from)
            }
            _ => {}
        }
    }
    Ok((referral.to_owned(), out))
}

async fn record(
    gw: &Gateway,
    provider: &str,
    referral_id: &str,
    ids: Result<RequestIds, Rejection>,
    body: &[u8],
    ctx: &AuditContext<'_>,
) -> Result<HttpResponse, Rejection> {
    let ids = ids?;
    let not_found = || -> Rejection {
        Issue::new(
            RecCode::NotFound,
            IssueType::NotFound,
            "no referral has this id",
        )
        .into()
    };
    if uuid::Uuid::parse_str(referral_id).is_err() {
        return Err(not_found());
    }
    let referral = gw
        .store
        .referral(referral_id)
        .await?
        .ok_or_else(not_found)?;
    let delivered = gw
        .store
        .deliveries_for(referral_id)
        .await?
        .iter()
        .any(|d| d.kind == "referral" && d.state == "delivered" && d.provider == provider);
    if referral.provider != provider || !delivered {
        return Err(Issue::new(
            RecCode::Forbidden,
            IssueType::Forbidden,
            "this referral has not been delivered to this provider",
        )
        .into());
    }
    // The same request again: the same answer, nothing recorded twice.
    let request_id = ids.request_id.to_string();
    let existing = gw.store.events_for(referral_id).await?;
    if let Some(row) = existing.iter().find(|e| e.request_id == request_id) {
        return Ok(HttpResponse::Ok().json(event_json(row)));
    }
    let body: EventBody = serde_json::from_slice(body).map_err(|_| {
        Rejection::one(Issue::new(
            RecCode::BadRequest,
            IssueType::Structure,
            "the body must be JSON: {\"event\", \"occurred_at\", and \"reason\", \"start_date\", \"hours_per_week\" where the event needs them}",
        ))
    })?;
    let now = OffsetDateTime::now_utc();
    let event = events::parse(body, now).map_err(|problems| Rejection {
        issues: problems
            .into_iter()
            .map(|p| Issue::new(RecCode::UnprocessableEntity, IssueType::Value, p))
            .collect(),
    })?;
    let from: Milestone = referral.milestone.parse().map_err(|_| server_error())?;
    if let Some(why) = from.refuse(event.event) {
        return Err(Issue::new(RecCode::Conflict, IssueType::Conflict, why).into());
    }
    let record = EventRecord {
        id: uuid::Uuid::new_v4().to_string(),
        referral_id: referral_id.to_owned(),
        provider: provider.to_owned(),
        from: from.as_str().to_owned(),
        event: event.event.as_str().to_owned(),
        occurred_at: event.occurred_at,
        reason: event.reason.clone(),
        detail: event.detail.clone(),
        request_id: request_id.clone(),
        now,
        gp_push: gw
            .gp_callbacks
            .recipient(&referral.source_endpoint)
            .map(|recipient| MilestoneDelivery {
                id: uuid::Uuid::new_v4().to_string(),
                recipient: recipient.to_owned(),
                request_id: uuid::Uuid::new_v4().to_string(),
            }),
        audit: ctx.record(
            "accepted",
            201,
            Some(referral_id),
            serde_json::json!({"event": event.event.as_str(), "from": from.as_str(), "recipient": provider}),
        ),
    };
    match gw.store.record_event(&record).await? {
        EventRecorded::Recorded => {
            tracing::info!(referral_id, event = event.event.as_str(), "status event recorded");
            let row = EventRow {
                id: record.id,
                referral_id: record.referral_id,
                provider: record.provider,
                event: record.event,
                occurred_at: record.occurred_at,
                reason: record.reason,
                detail: record.detail.to_string(),
                request_id: record.request_id,
                recorded_at: record.now,
            };
            Ok(HttpResponse::Created().json(event_json(&row)))
        }
        EventRecorded::Duplicate => {
            let rows = gw.store.events_for(referral_id).await?;
            let row = rows.iter().find(|e| e.request_id == request_id).ok_or_else(server_error)?;
            Ok(HttpResponse::Ok().json(event_json(row)))
        }
        EventRecorded::Moved => Err(Issue::new(
            RecCode::Conflict,
            IssueType::Conflict,
            "another status event for this referral was recorded at the same moment; read the referral and send again",
        )
        .into()),
    }
}

/// Registers the provider routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(post_event).service(post_task);
}
