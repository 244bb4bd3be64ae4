//! Sandbox providers: local receivers that take deliveries the way a provider's case
//! system would (de-duplicating on `X-Request-Id`) and show what they received, so a
//! fresh checkout can follow a referral from GP system to provider. Development only:
//! the gateway refuses to enable them in production.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Serialize;
use std::{collections::HashMap, sync::Mutex};

/// One delivery as the sandbox received it.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub request_id: String,
    pub correlation_id: Option<String>,
    pub body: serde_json::Value,
    /// How many times this request id arrived.
    pub times: u32,
}

/// What every sandbox provider has received, in arrival order.
#[derive(Debug, Default)]
pub struct Sandbox {
    received: Mutex<HashMap<String, Vec<Received>>>,
}

#[post("/sandbox/{provider}/referrals")]
async fn receive(
    req: HttpRequest,
    provider: web::Path<String>,
    body: web::Json<serde_json::Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(request_id) = header("x-request-id") else {
        return HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "X-Request-Id is required"}));
    };
    let Ok(mut all) = sandbox.received.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let list = all.entry(provider.into_inner()).or_default();
    match list.iter_mut().find(|r| r.request_id == request_id) {
        Some(existing) => existing.times += 1,
        None => list.push(Received {
            request_id,
            correlation_id: header("x-correlation-id"),
            body: body.into_inner(),
            times: 1,
        }),
    }
    HttpResponse::Accepted().json(serde_json::json!({"received": true}))
}

#[get("/sandbox/{provider}/received")]
async fn received(provider: web::Path<String>, sandbox: web::Data<Sandbox>) -> HttpResponse {
    let Ok(all) = sandbox.received.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let list = all.get(provider.as_str()).cloned().unwrap_or_default();
    HttpResponse::Ok().json(list)
}

/// Registers the sandbox receivers.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(receive).service(received);
}
