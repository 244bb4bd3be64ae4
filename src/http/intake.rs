//! The FHIR face GP systems see: `$process-message`, `$validate`, reading and searching
//! referrals, and the published definitions. Handlers only translate between HTTP and
//! the decision, which lives in [`crate::intake`].

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::app::{AppState, AuditContext, RequestIds, authenticate, forbidden};
use crate::auth::{Principal, Role};
use crate::fhir::{definitions, messages};
use crate::metrics::ReferralOutcome;
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::{HttpRequest, HttpResponse, Responder, get, http::header, post, web};
use fhir_sdk::time::OffsetDateTime;
use futures_util::StreamExt;
use uuid::Uuid;

/// `application/fhir+json` or `application/json`, with any parameters.
fn is_fhir_json(req: &HttpRequest) -> bool {
    let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/fhir+json" || essence == "application/json"
}

/// Reads the body up to the configured limit; a larger body is refused without being
/// held in memory, and one that misses its deadline ([`crate::limits`]) gets 408.
async fn read_body(payload: &mut web::Payload, limit: usize) -> Result<web::BytesMut, Rejection> {
    let too_large = || {
        Rejection::one(Issue::new(
            RecCode::PayloadTooLarge,
            IssueType::TooLong,
            format!("the body is larger than the {limit} bytes the gateway accepts"),
        ))
    };
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::limits::is_body_timeout(&e) {
                crate::limits::too_slow()
            } else {
                Rejection::one(Issue::new(
                    RecCode::BadRequest,
                    IssueType::Structure,
                    "the request body could not be read",
                ))
            }
        })?;
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn fhir_json(status: actix_web::http::StatusCode, body: &serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/fhir+json")
        .json(body)
}

#[post("/fhir/r4/$process-message")]
async fn process_message(
    req: HttpRequest,
    mut payload: web::Payload,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let result = receive_message(&req, &mut payload, &gw).await;
    gw.metrics.referral(match &result {
        Ok(outcome) => outcome.decision,
        Err(rejection) => ReferralOutcome::of_rejection(rejection),
    });
    Ok(fhir_json(actix_web::http::StatusCode::OK, &{
        let o = result?;
        messages::accepted(&o.referral, &o.bundle_id, &o.source_endpoint)
    }))
}

/// One `$process-message` request from its headers to the gateway's decision.
async fn receive_message(
    req: &HttpRequest,
    payload: &mut web::Payload,
    gw: &AppState,
) -> Result<crate::intake::Outcome, Rejection> {
    let (principal, ids, body) = read_message(req, payload, gw, "referral.message").await?;
    gw.process(&principal, &ids, &body, OffsetDateTime::now_utc())
        .await
}

/// The caller, request ids and body of a message request, each checked (and a refusal
/// recorded under `action`) before the message is read.
async fn read_message(
    req: &HttpRequest,
    payload: &mut web::Payload,
    gw: &AppState,
    action: &str,
) -> Result<(Principal, RequestIds, web::BytesMut), Rejection> {
    let ids = RequestIds::from_headers(req.headers());
    let principal = match authenticate(gw, req) {
        Ok(p) => p,
        Err(r) => {
            let ctx = AuditContext {
                action,
                principal: None,
                ids: ids.as_ref().ok(),
            };
            gw.audit_rejection(&ctx, &r).await;
            return Err(r);
        }
    };
    let early = async {
        if !is_fhir_json(req) {
            return Err(Rejection::one(Issue::new(
                RecCode::UnsupportedMediaType,
                IssueType::NotSupported,
                "Content-Type must be application/fhir+json (or application/json)",
            )));
        }
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > gw.max_body_bytes
        {
            return Err(Rejection::one(Issue::new(
                RecCode::PayloadTooLarge,
                IssueType::TooLong,
                format!(
                    "the body is larger than the {} bytes the gateway accepts",
                    gw.max_body_bytes
                ),
            )));
        }
        let ids = ids.clone()?;
        let body = read_body(payload, gw.max_body_bytes).await?;
        Ok((ids, body))
    };
    match early.await {
        Ok((ids, body)) => Ok((principal, ids, body)),
        Err(r) => {
            let ctx = AuditContext {
                action,
                principal: Some(&principal),
                ids: None,
            };
            gw.audit_rejection(&ctx, &r).await;
            Err(r)
        }
    }
}

/// FHIR's `$validate` on a message Bundle: the answer `$process-message` would give,
/// with nothing stored or sent. A message it would accept gets 200 and an
/// informational OperationOutcome naming the route.
#[post("/fhir/r4/Bundle/$validate")]
async fn validate_message(
    req: HttpRequest,
    mut payload: web::Payload,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let (principal, ids, body) = read_message(&req, &mut payload, &gw, "referral.validate").await?;
    let dry = gw
        .dry_run(&principal, &ids, &body, OffsetDateTime::now_utc())
        .await?;
    let route = match (&dry.programme, &dry.provider) {
        (Some(programme), Some(provider)) => {
            format!(" for programme {programme}, routed to provider {provider}")
        }
        _ => String::new(),
    };
    Ok(fhir_json(
        actix_web::http::StatusCode::OK,
        &serde_json::json!({
            "resourceType": "OperationOutcome",
            "id": Uuid::new_v4().to_string(),
            "issue": [{
                "severity": "information",
                "code": "informational",
                "diagnostics": format!(
                    "valid: $process-message would accept this `{}` message{route}; nothing was stored or sent",
                    dry.action
                ),
            }],
        }),
    ))
}

/// FHIR search by identifier: `identifier=system|value` (or a bare value) finds a
/// referral by the gateway's reference or by the practice's own ServiceRequest
/// identifier, among the practices the caller may see.
#[get("/fhir/r4/ServiceRequest")]
async fn search_service_requests(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = authenticate(&gw, &req)?;
    let ids = RequestIds::from_headers(req.headers()).ok();
    let ctx = AuditContext {
        action: "referral.search",
        principal: Some(&principal),
        ids: ids.as_ref(),
    };
    let result = async {
        if matches!(principal.role, Role::Provider { .. }) {
            return Err(forbidden(
                "providers read referrals through the provider interface",
            ));
        }
        let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|_| {
                Rejection::one(
                    Issue::new(
                        RecCode::BadRequest,
                        IssueType::Structure,
                        "the query string could not be read",
                    )
                    .at("identifier"),
                )
            })?
            .into_inner();
        let mut identifiers = params.iter().filter(|(k, _)| k == "identifier");
        let (Some((_, token)), None) = (identifiers.next(), identifiers.next()) else {
            return Err(Issue::new(
                RecCode::BadRequest,
                IssueType::Required,
                "search by exactly one `identifier` parameter (system|value)",
            )
            .at("identifier")
            .into());
        };
        let (system, value) = match token.split_once('|') {
            Some((s, v)) => (Some(s).filter(|s| !s.is_empty()), v),
            None => (None, token.as_str()),
        };
        if value.is_empty() {
            return Err(Issue::new(
                RecCode::BadRequest,
                IssueType::Value,
                "the identifier parameter needs a value after `|`",
            )
            .at("identifier")
            .into());
        }
        let by_reference = system.is_none_or(|s| s == messages::REFERENCE_SYSTEM);
        let rows = gw
            .store
            .referrals_by_identifier(by_reference, system, value)
            .await?;
        let mut found = Vec::new();
        for row in rows {
            let visible = match &principal.role {
                Role::GpSystem { practices } => {
                    practices.iter().any(|p| p.as_str() == row.practice_ods)
                }
                Role::Auditor | Role::Operator => true,
                Role::Provider { .. } => false,
            };
            if visible {
                let events = gw.store.events_for(&row.id).await?;
                found.push((row, events));
            }
        }
        Ok(found)
    }
    .await;
    match result {
        Ok(found) => {
            let record = ctx.record(
                "allowed",
                200,
                None,
                serde_json::json!({ "matches": found.len() }),
            );
            gw.store.append_audit(&record).await?;
            Ok(fhir_json(
                actix_web::http::StatusCode::OK,
                &messages::searchset(&found),
            ))
        }
        Err(r) => {
            gw.audit_rejection(&ctx, &r).await;
            Err(r)
        }
    }
}

#[get("/fhir/r4/ServiceRequest/{id}")]
async fn read_service_request(
    req: HttpRequest,
    path: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = authenticate(&gw, &req)?;
    // The ids are optional on a read; when sent they go into the record.
    let ids = RequestIds::from_headers(req.headers()).ok();
    let ctx = AuditContext {
        action: "referral.read",
        principal: Some(&principal),
        ids: ids.as_ref(),
    };
    let id = path.into_inner();
    let not_found = || -> Rejection {
        Issue::new(
            RecCode::NotFound,
            IssueType::NotFound,
            "no referral has this id",
        )
        .at("id")
        .into()
    };
    let result = async {
        if matches!(principal.role, Role::Provider { .. }) {
            return Err(forbidden(
                "providers read referrals through the provider interface",
            ));
        }
        if Uuid::parse_str(&id).is_err() {
            return Err(not_found());
        }
        let row = gw.store.referral(&id).await?.ok_or_else(not_found)?;
        let allowed = match &principal.role {
            Role::GpSystem { practices } => {
                practices.iter().any(|p| p.as_str() == row.practice_ods)
            }
            Role::Auditor | Role::Operator => true,
            Role::Provider { .. } => false,
        };
        if !allowed {
            return Err(forbidden(
                "only the referring practice's systems may read this referral",
            ));
        }
        let events = gw.store.events_for(&row.id).await?;
        Ok((row, events))
    }
    .await;
    match result {
        Ok((row, events)) => {
            let record = ctx.record("allowed", 200, Some(&row.id), serde_json::json!({}));
            gw.store.append_audit(&record).await?;
            Ok(fhir_json(
                actix_web::http::StatusCode::OK,
                &messages::service_request(&row, &events),
            ))
        }
        Err(r) => {
            gw.audit_rejection(&ctx, &r).await;
            Err(r)
        }
    }
}

#[get("/fhir/r4/metadata")]
async fn metadata() -> impl Responder {
    fhir_json(
        actix_web::http::StatusCode::OK,
        definitions::capability_statement(),
    )
}

#[get("/fhir/r4/MessageDefinition")]
async fn message_definition(gw: web::Data<AppState>) -> impl Responder {
    fhir_json(
        actix_web::http::StatusCode::OK,
        &definitions::message_definition_bundle(&gw.routing, gw.minimum_age_years),
    )
}

/// Registers every intake route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(process_message)
        .service(validate_message)
        .service(search_service_requests)
        .service(read_service_request)
        .service(metadata)
        .service(message_definition);
}
