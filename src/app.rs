//! What every request shares: the application state, the request ids, the audit context
//! of a request, and authentication (also as an actix extractor, [`Principal`]).

use crate::audit::checkpoint::{Signer, VerifyingKeys};
use crate::auth::{AuthError, Principal, Role};
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use crate::routing::Routing;
use crate::store::{AuditRecord, Store};
use actix_web::{
    FromRequest, HttpRequest,
    http::header::{self, HeaderMap},
    web,
};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// The shared, read-only parts of the gateway every request uses.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub routing: Arc<Routing>,
    pub auth: crate::auth::Authenticator,
    pub minimum_age_years: u8,
    pub max_body_bytes: usize,
    /// Names the subject of audit records (`keys.pseudonym.audit`).
    pub audit_keys: Arc<crate::pseudonym::PseudonymKeys>,
    /// Checks checkpoint signatures for auditors (`audit.checkpoint`).
    pub checkpoint_keys: Option<VerifyingKeys>,
    /// Signs the chain head before an export, so the export is covered to its end.
    pub checkpoint_signer: Option<Signer>,
    /// Which GP system, if any, takes each referral's milestones back.
    pub gp_callbacks: Arc<crate::delivery::GpCallbacks>,
    /// Counters and histograms for `GET /metrics`, shared with the delivery worker.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-client and per-address request limits.
    pub limits: Arc<crate::rate_limit::RateLimits>,
    /// The providers and GP callbacks an operator may name.
    pub recipients: Arc<crate::operations::Recipients>,
    /// How long `/health/ready` waits for the database (`server.ready_timeout_ms`).
    pub ready_timeout: std::time::Duration,
    /// The gateway's MESH mailbox, whose last contact `/health/ready` reports.
    pub mesh: Option<Arc<crate::mesh::MeshClient>>,
}

/// Fields every audit record of a request shares.
pub struct AuditContext<'a> {
    pub action: &'a str,
    pub principal: Option<&'a Principal>,
    pub ids: Option<&'a RequestIds>,
}

impl AuditContext<'_> {
    pub fn record(
        &self,
        outcome: &str,
        status: u16,
        referral_id: Option<&str>,
        detail: serde_json::Value,
    ) -> AuditRecord {
        AuditRecord {
            http_status: Some(status),
            client_id: self.principal.map(|p| p.client_id.clone()),
            role: self.principal.map(|p| p.role.name().to_owned()),
            referral_id: referral_id.map(str::to_owned),
            request_id: self.ids.map(|i| i.request_id.to_string()),
            correlation_id: self.ids.map(|i| i.correlation_id.to_string()),
            actor_identity: self.ids.and_then(|i| i.identity.clone()),
            detail,
            ..AuditRecord::new(self.action, outcome)
        }
    }
}

impl AppState {
    /// Records a rejection. A failure to record is logged, and the caller still gets
    /// the rejection: the audit trail must not turn a 4xx into a 500.
    pub async fn audit_rejection(&self, ctx: &AuditContext<'_>, rejection: &Rejection) {
        self.audit_rejection_about(ctx, rejection, None).await;
    }

    /// Records a rejection about a person, named by their audit pseudonym. A 503 is
    /// not recorded: the database just said it is unavailable, and trying it again
    /// would only keep the client waiting; the log has the refusal.
    pub(crate) async fn audit_rejection_about(
        &self,
        ctx: &AuditContext<'_>,
        rejection: &Rejection,
        subject: Option<String>,
    ) {
        if rejection.rec() == RecCode::ServiceUnavailable {
            tracing::warn!(
                action = ctx.action,
                "refused while the database is unavailable; not recorded in the audit table"
            );
            return;
        }
        let record = AuditRecord {
            subject,
            ..ctx.record(
                "rejected",
                rejection.rec().status().as_u16(),
                None,
                json!({ "issues": rejection.summary() }),
            )
        };
        if let Err(e) = self.store.append_audit(&record).await {
            tracing::error!(error = %e, action = ctx.action, "could not record a rejection in the audit table");
        }
    }
}

/// The BaRS request headers: both ids (UUIDs) and, when sent, the NHS identity
/// headers, summarised for the audit record.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: Uuid,
    pub correlation_id: Uuid,
    pub identity: Option<String>,
}

/// Header names in the lower case HTTP/2 and actix use; clients may send any case.
pub const REQUEST_ID: &str = "x-request-id";
pub const CORRELATION_ID: &str = "x-correlation-id";

impl RequestIds {
    /// Both headers are required UUIDs; each problem is reported.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Rejection> {
        let mut issues = Vec::new();
        let mut read = |name: &str, shown: &str| -> Option<Uuid> {
            let parsed = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| Uuid::parse_str(v.trim()));
            match parsed {
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => {
                    issues.push(Issue::structure(
                        IssueType::Value,
                        shown,
                        format!("the {shown} header must be a UUID"),
                    ));
                    None
                }
                None => {
                    issues.push(Issue::structure(
                        IssueType::Required,
                        shown,
                        format!("the {shown} header is required (a UUID)"),
                    ));
                    None
                }
            }
        };
        let request_id = read(REQUEST_ID, "X-Request-Id");
        let correlation_id = read(CORRELATION_ID, "X-Correlation-Id");
        match (request_id, correlation_id) {
            (Some(request_id), Some(correlation_id)) => Ok(Self {
                request_id,
                correlation_id,
                identity: crate::audit::identity::from_headers(headers),
            }),
            _ => Err(Rejection { issues }),
        }
    }
}

fn unauthorised(e: AuthError) -> Rejection {
    Issue::new(RecCode::Unauthorized, IssueType::Login, e.to_string()).into()
}

pub(crate) fn forbidden(what: &str) -> Rejection {
    Issue::new(RecCode::Forbidden, IssueType::Forbidden, what).into()
}

/// The calling client, from the request's bearer token; 401 otherwise. Every HTTP
/// interface authenticates through here.
pub(crate) fn authenticate(gw: &AppState, req: &HttpRequest) -> Result<Principal, Rejection> {
    let mut headers = req.headers().get_all(header::AUTHORIZATION);
    let header = headers.next().map(|v| v.to_str().unwrap_or_default());
    let result = if headers.next().is_some() {
        // Which one would count is ambiguous: neither does.
        Err(AuthError::Ambiguous)
    } else {
        gw.auth.authenticate(header)
    };
    match result {
        Ok(principal) => {
            gw.limits.client(&principal.client_id)?;
            Ok(principal)
        }
        Err(e) => {
            gw.limits.failure(req.peer_addr().map(|a| a.ip()))?;
            Err(unauthorised(e))
        }
    }
}

/// Authenticates a caller that must hold `role`; a refusal (no or bad token, another
/// role) is recorded under `action` before it is returned, with the request ids when
/// they were sent. `why` is the 403's sentence.
pub(crate) async fn authenticate_role(
    gw: &AppState,
    req: &HttpRequest,
    action: &str,
    role: Role,
    why: &str,
) -> Result<Principal, Rejection> {
    let ids = RequestIds::from_headers(req.headers()).ok();
    let (principal, rejection) = match authenticate(gw, req) {
        Ok(p) if p.role == role => return Ok(p),
        Ok(p) => (Some(p), forbidden(why)),
        Err(rejection) => (None, rejection),
    };
    let ctx = AuditContext {
        action,
        principal: principal.as_ref(),
        ids: ids.as_ref(),
    };
    gw.audit_rejection(&ctx, &rejection).await;
    Err(rejection)
}

/// Authentication as an extractor: a handler that takes a [`Principal`] runs only for
/// a caller with a valid token (401 otherwise, or 429 past the rate limits).
impl FromRequest for Principal {
    type Error = Rejection;
    type Future = std::future::Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(match req.app_data::<web::Data<AppState>>() {
            Some(gw) => authenticate(gw, req),
            None => Err(crate::outcome::server_error()),
        })
    }
}
