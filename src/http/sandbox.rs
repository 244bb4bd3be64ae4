//! Sandbox providers: local receivers that take deliveries the way a provider's case
//! system would (de-duplicating on `X-Request-Id`, and, when configured, requiring a
//! bearer token got with a signed client assertion) and show what they received, so a
//! fresh checkout can follow a referral from GP system to provider. Development only:
//! the gateway refuses to enable them in production.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// One delivery as the sandbox received it.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub request_id: String,
    pub correlation_id: Option<String>,
    pub body: serde_json::Value,
    /// How many times this request id arrived.
    pub times: u32,
}

/// What every sandbox provider has received, in arrival order, and the tokens issued.
#[derive(Default)]
pub struct Sandbox {
    received: Mutex<HashMap<String, Vec<Received>>>,
    /// Client keys a token request's assertion must be signed with; `None`: no auth.
    client_keys: Option<Vec<DecodingKey>>,
    tokens: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("requires_token", &self.client_keys.is_some())
            .finish()
    }
}

impl Sandbox {
    /// A sandbox that checks signed-JWT client credentials against `jwks` when given.
    pub fn new(jwks: Option<&str>) -> Result<Self, String> {
        let client_keys = match jwks {
            None => None,
            Some(text) => {
                let set: JwkSet = serde_json::from_str(text).map_err(|e| e.to_string())?;
                Some(
                    set.keys
                        .iter()
                        .map(|k| DecodingKey::from_jwk(k).map_err(|e| e.to_string()))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        Ok(Self {
            client_keys,
            ..Self::default()
        })
    }

    fn authorised(&self, req: &HttpRequest) -> bool {
        if self.client_keys.is_none() {
            return true;
        }
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (bearer, self.tokens.lock()) {
            (Some(t), Ok(tokens)) => tokens.contains(t),
            _ => false,
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_assertion_type: String,
    client_assertion: String,
}

#[post("/sandbox/{provider}/token")]
async fn issue_token(
    provider: web::Path<String>,
    form: web::Form<TokenRequest>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let refuse = |why: &str| {
        HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "invalid_client", "error_description": why}))
    };
    let Some(keys) = &sandbox.client_keys else {
        return HttpResponse::NotFound().finish();
    };
    if form.grant_type != "client_credentials"
        || form.client_assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse("client_credentials with a jwt-bearer client assertion is required");
    }
    let mut validation = Validation::new(jsonwebtoken::Algorithm::RS512);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = keys.iter().find_map(|k| {
        jsonwebtoken::decode::<serde_json::Value>(&form.client_assertion, k, &validation)
            .ok()
            .map(|d| d.claims)
    });
    let Some(claims) = claims else {
        return refuse("the client assertion is not signed by a known key");
    };
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
    let expected_aud = format!("/sandbox/{provider}/token");
    let checks = [
        claims["iss"] == claims["sub"],
        claims["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with(&expected_aud)),
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        claims["exp"]
            .as_i64()
            .is_some_and(|e| e <= now.saturating_add(330)),
    ];
    if checks.contains(&false) {
        return refuse(
            "the client assertion must have iss = sub, aud = this URL, a jti, and exp at most 5 minutes ahead",
        );
    }
    let issued = uuid::Uuid::new_v4().to_string();
    if let Ok(mut tokens) = sandbox.tokens.lock() {
        tokens.insert(issued.clone());
    }
    HttpResponse::Ok().json(
        serde_json::json!({"access_token": issued, "expires_in": 600, "token_type": "bearer"}),
    )
}

#[post("/sandbox/{provider}/referrals")]
async fn receive(
    req: HttpRequest,
    provider: web::Path<String>,
    body: web::Json<serde_json::Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    if !sandbox.authorised(&req) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "a bearer token from the sandbox token endpoint is required"}));
    }
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
    cfg.service(issue_token).service(receive).service(received);
}
