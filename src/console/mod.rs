//! The browser console (`/console`) for operators and information-governance
//! auditors: server-rendered pages in the NHS design system, working without
//! JavaScript. Every action calls the same functions as the operator and auditor APIs
//! and is audited in the same way, under the same action names.

mod audit;
mod chart;
mod deliveries;
mod layout;
mod overview;
mod report;
mod session;
mod sign_in;

use crate::app::{AppState, AuditContext};
use crate::config::console::{ConsoleRole, ConsoleSettings, OidcSettings};
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use crate::store::StoreError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use layout::{Section, page};
use maud::{Markup, html};
pub use session::{SessionKeyError, Sessions, User};

/// What the console's handlers share beyond the gateway's state.
#[derive(Debug, Clone)]
pub struct Console {
    sessions: Sessions,
    /// Development clients offered on the local sign-in page (`dev_sign_in`).
    dev_clients: Vec<(String, ConsoleRole)>,
    oidc: Option<OidcSettings>,
    http: reqwest::Client,
    /// The issuer's discovery document and when it was read.
    discovery: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

impl Console {
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, SessionKeyError> {
        let console: &ConsoleSettings = &settings.console;
        let dev_clients = if console.dev_sign_in {
            settings
                .auth
                .clients
                .iter()
                .filter_map(|(id, c)| match c {
                    crate::config::ClientSettings::Operator {} => {
                        Some((id.clone(), ConsoleRole::Operator))
                    }
                    crate::config::ClientSettings::Auditor {} => {
                        Some((id.clone(), ConsoleRole::Auditor))
                    }
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        if console.session_key_file.is_none() {
            tracing::warn!(
                "console.session_key_file is not set: console sessions are sealed with a key \
                 of this process, and end when it stops"
            );
        }
        Ok(Self {
            sessions: Sessions::from_settings(console)?,
            dev_clients,
            oidc: console.oidc.clone(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            discovery: Default::default(),
        })
    }
}

/// Why a console request was not served, as an NHS-styled page.
#[derive(Debug)]
pub enum ConsoleError {
    /// No session, or it timed out: sign in, then come back to `next`.
    SignIn {
        next: String,
    },
    Forbidden(String),
    /// A form without this session's CSRF token.
    Csrf,
    NotFound(String),
    /// The action cannot be done in the state the thing is in.
    Conflict(String),
    Unavailable,
    Internal,
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::SignIn { .. } => f.write_str("sign-in needed"),
            ConsoleError::Forbidden(why)
            | ConsoleError::NotFound(why)
            | ConsoleError::Conflict(why) => f.write_str(why),
            ConsoleError::Csrf => f.write_str("the form's CSRF token is missing or wrong"),
            ConsoleError::Unavailable => f.write_str("the database is unavailable"),
            ConsoleError::Internal => f.write_str("internal error"),
        }
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "console: the database is unavailable; answering 503");
            ConsoleError::Unavailable
        } else {
            tracing::error!(error = %e, "console: a database operation failed; answering 500");
            ConsoleError::Internal
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn { .. } => StatusCode::SEE_OTHER,
            ConsoleError::Forbidden(_) | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, text) = match self {
            ConsoleError::SignIn { next } => {
                let to = format!("/console/sign-in?next={}", encode(next));
                return HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, to))
                    .finish();
            }
            ConsoleError::Forbidden(why) => ("You cannot open this page", why.clone()),
            ConsoleError::Csrf => (
                "This form could not be accepted",
                "The form was not sent from this console session, or the session has \
                 changed since it was shown. Nothing was done. Go back, reload the page and \
                 try again."
                    .to_owned(),
            ),
            ConsoleError::NotFound(why) => ("Page not found", why.clone()),
            ConsoleError::Conflict(why) => ("This cannot be done", why.clone()),
            ConsoleError::Unavailable => (
                "Sorry, the database is unavailable",
                "The gateway cannot reach its database just now. Try again in a few minutes."
                    .to_owned(),
            ),
            ConsoleError::Internal => (
                "Sorry, there is a problem with the service",
                "Try again later. The gateway's log has the details.".to_owned(),
            ),
        };
        let body = html! {
            h1 { (title) }
            p { (text) }
            p { a href="/console" { "Go to the console overview" } }
        };
        html_response(self.status_code(), page(title, None, Section::None, body))
    }
}

/// An HTML answer.
pub fn html_response(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// Every console page's security headers, and the session kept alive: a valid session
/// cookie is re-sealed with this request's time unless the handler changed it.
async fn frame(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let console = req.app_data::<web::Data<Console>>().cloned();
    if let Some(console) = &console
        && let Some(user) = console.sessions.user(req.request(), now())
    {
        req.extensions_mut().insert(user);
    }
    let mut res = next.call(req).await?;
    // Assets may be cached: never a cookie on them.
    let asset = res.request().path().starts_with("/console/assets/");
    let refreshed = match &console {
        Some(console) if !asset && !sets_session(&res) => {
            let user = res.request().extensions().get::<User>().cloned();
            user.map(|u| console.sessions.session_cookie(res.request(), &u))
        }
        _ => None,
    };
    if let Some(cookie) = refreshed {
        res.response_mut().add_cookie(&cookie)?;
    }
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'; object-src 'none'",
        ),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    Ok(res)
}

/// Whether the handler set or removed the session cookie itself (sign-in, sign-out).
fn sets_session<B>(res: &ServiceResponse<B>) -> bool {
    res.response()
        .cookies()
        .any(|c| c.name() == session::SESSION_COOKIE)
}

pub(crate) fn now() -> i64 {
    fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A handler's signed-in user: any role.
impl FromRequest for User {
    type Error = ConsoleError;
    type Future = std::future::Ready<Result<Self, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<User>()
                .cloned()
                .ok_or_else(|| ConsoleError::SignIn { next: next_of(req) }),
        )
    }
}

/// Where a sign-in should come back to: this page, when it is a GET.
fn next_of(req: &HttpRequest) -> String {
    if req.method() == actix_web::http::Method::GET {
        match req.query_string() {
            "" => req.path().to_owned(),
            q => format!("{}?{q}", req.path()),
        }
    } else {
        "/console".to_owned()
    }
}

/// Refuses a user without `role`; the refusal is recorded under `action`, as the API
/// records a token of the wrong role.
pub(crate) async fn require(
    gw: &AppState,
    user: &User,
    role: ConsoleRole,
    action: &str,
) -> Result<crate::auth::Principal, ConsoleError> {
    if user.has(role) {
        return Ok(user.principal(role));
    }
    let shown = user.roles.first().copied().unwrap_or(ConsoleRole::Operator);
    let principal = user.principal(shown);
    // The record says what the API's refusal says; the page says it as a sentence.
    let (why, shown) = match role {
        ConsoleRole::Operator => (
            "only operators may manage deliveries",
            "Only operators may manage deliveries.",
        ),
        ConsoleRole::Auditor => (
            "only auditors may read the audit trail",
            "Only auditors may read the audit trail.",
        ),
    };
    let ctx = AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let rejection: Rejection = Issue::new(RecCode::Forbidden, IssueType::Forbidden, why).into();
    gw.audit_rejection(&ctx, &rejection).await;
    Err(ConsoleError::Forbidden(shown.to_owned()))
}

/// Refuses a form whose CSRF token is not this session's; the refusal is recorded
/// under the form's `action`.
pub(crate) async fn check_csrf(
    gw: &AppState,
    user: &User,
    principal: &crate::auth::Principal,
    sent: &str,
    action: &str,
) -> Result<(), ConsoleError> {
    if user.csrf_matches(sent) {
        return Ok(());
    }
    let ctx = AuditContext {
        action,
        principal: Some(principal),
        ids: None,
    };
    let rejection: Rejection = Issue::new(
        RecCode::Forbidden,
        IssueType::Forbidden,
        "the form's CSRF token is missing or not this session's",
    )
    .into();
    gw.audit_rejection(&ctx, &rejection).await;
    Err(ConsoleError::Csrf)
}

/// What every form that changes something goes through: the role (a refusal recorded
/// under `action`), then the session's CSRF token (likewise).
pub(crate) async fn form_action(
    gw: &AppState,
    user: &User,
    role: ConsoleRole,
    action: &str,
    sent: &str,
) -> Result<crate::auth::Principal, ConsoleError> {
    let principal = require(gw, user, role, action).await?;
    check_csrf(gw, user, &principal, sent, action).await?;
    Ok(principal)
}

/// A form that only carries its CSRF token. Handlers take forms as `Option`: a body
/// that cannot be read as the form (another encoding, too large) has no token, and
/// is refused and recorded like any form without one.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// The vendored NHS design system and the console's own small files.
async fn asset(path: web::Path<String>) -> HttpResponse {
    let (body, kind): (&'static [u8], &str) = match path.as_str() {
        "nhsuk-frontend.min.css" => (
            include_bytes!("assets/nhsuk-frontend.min.css"),
            "text/css; charset=utf-8",
        ),
        "nhsuk-frontend.min.js" => (
            include_bytes!("assets/nhsuk-frontend.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (include_bytes!("console.css"), "text/css; charset=utf-8"),
        "console.js" => (
            include_bytes!("console.js"),
            "text/javascript; charset=utf-8",
        ),
        "images/favicon.svg" => (include_bytes!("assets/images/favicon.svg"), "image/svg+xml"),
        "images/favicon.ico" => (include_bytes!("assets/images/favicon.ico"), "image/x-icon"),
        "images/nhsuk-icon-arrow-down.svg" => (
            include_bytes!("assets/images/nhsuk-icon-arrow-down.svg"),
            "image/svg+xml",
        ),
        "images/nhsuk-icon-arrow-up.svg" => (
            include_bytes!("assets/images/nhsuk-icon-arrow-up.svg"),
            "image/svg+xml",
        ),
        "images/nhsuk-icon-arrow-up-down.svg" => (
            include_bytes!("assets/images/nhsuk-icon-arrow-up-down.svg"),
            "image/svg+xml",
        ),
        "images/nhsuk-icon-cross.svg" => (
            include_bytes!("assets/images/nhsuk-icon-cross.svg"),
            "image/svg+xml",
        ),
        _ => return ConsoleError::NotFound("No such file.".into()).error_response(),
    };
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

async fn not_found() -> Result<HttpResponse, ConsoleError> {
    Err(ConsoleError::NotFound(
        "There is no console page at this address.".into(),
    ))
}

/// `s` as one query-string value.
pub(crate) fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Registers `/console` with its frame (headers and session).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(actix_web::middleware::from_fn(frame))
            .route("/assets/{file:.+}", web::get().to(asset))
            .configure(sign_in::configure)
            .configure(overview::configure)
            .configure(deliveries::configure)
            .configure(audit::configure)
            .configure(report::configure)
            .default_service(web::to(not_found)),
    );
}

/// Records a refusal the page shows (a bad filter, an unknown id), as the API records
/// the same refusal: under the same action, with the same code.
pub(crate) async fn record_refusal(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
    code: RecCode,
    at: &str,
    text: &str,
) {
    let ctx = AuditContext {
        action,
        principal: Some(principal),
        ids: None,
    };
    let kind = match code {
        RecCode::NotFound => IssueType::NotFound,
        RecCode::Conflict => IssueType::Conflict,
        _ => IssueType::Value,
    };
    let rejection: Rejection = Issue::new(code, kind, text).at(at).into();
    gw.audit_rejection(&ctx, &rejection).await;
}

/// Records a form's or filter's refusal with every problem, each at its field, as the
/// API records bad query parameters (400).
pub(crate) async fn record_field_errors(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
    errors: &[layout::FieldError],
) {
    let ctx = AuditContext {
        action,
        principal: Some(principal),
        ids: None,
    };
    let issues = errors
        .iter()
        .map(|e| Issue::new(RecCode::BadRequest, IssueType::Value, e.message.clone()).at(e.field))
        .collect();
    if let Some(rejection) = Rejection::from_issues(issues) {
        gw.audit_rejection(&ctx, &rejection).await;
    }
}

/// Records an allowed or accepted console action, as its API call would be recorded.
pub(crate) async fn record_allowed(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
    status: u16,
    detail: serde_json::Value,
    about: impl FnOnce(&mut crate::store::AuditRecord),
) -> Result<(), ConsoleError> {
    let ctx = AuditContext {
        action,
        principal: Some(principal),
        ids: None,
    };
    let mut record = ctx.record("allowed", status, None, detail);
    about(&mut record);
    Ok(gw.store.append_audit(&record).await?)
}
