//! Signing in and out: a local page for the development clients (`dev_sign_in`), and
//! the OpenID Connect authorisation-code flow with PKCE (NHS CIS2 Authentication in
//! production), roles taken from a configured claim. Each sign-in, refused or not,
//! and each sign-out is audited.

use super::layout::{Section, csrf_field, page};
use super::session::{PendingSignIn, SESSION_COOKIE, SIGN_IN_COOKIE, User, random_token};
use super::{Console, ConsoleError, CsrfForm, html_response, now};
use crate::app::{AppState, AuditContext};
use crate::config::console::{ConsoleRole, OidcSettings};
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A console path to come back to; anything else goes to the overview.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.starts_with("/console/sign-") =>
        {
            n.to_owned()
        }
        _ => "/console".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// The sign-in page: the identity provider's button, and in development the local
/// clients. Its form's CSRF token lives in the sign-in cookie.
async fn sign_in_page(
    req: HttpRequest,
    console: web::Data<Console>,
    query: web::Query<NextQuery>,
) -> HttpResponse {
    let next = safe_next(query.next.as_deref());
    let pending = PendingSignIn {
        csrf: random_token(),
        next: next.clone(),
        ..PendingSignIn::default()
    };
    let body = html! {
        h1 { "Sign in to the thrive-gateway console" }
        p { "The console is for the gateway's operators and information-governance auditors." }
        @if console.oidc.is_some() {
            a class="nhsuk-button" href={ "/console/sign-in/oidc?next=" (super::encode(&next)) } draggable="false" {
                "Sign in with NHS Care Identity"
            }
        }
        @if !console.dev_clients.is_empty() {
            form method="post" action="/console/sign-in/dev" novalidate {
                (csrf_field(&pending.csrf))
                div class="nhsuk-form-group" {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--m" {
                            h2 class="nhsuk-fieldset__heading" { "Development sign-in" }
                        }
                        div class="nhsuk-hint" { "For development only: sign in as one of the configured development clients." }
                        div class="nhsuk-radios" data-module="nhsuk-radios" {
                            @for (i, (id, role)) in console.dev_clients.iter().enumerate() {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id={ "client-" (i) } name="client" type="radio" value=(id) checked[i == 0];
                                    label class="nhsuk-label nhsuk-radios__label" for={ "client-" (i) } {
                                        (id) " (" (role.name()) ")"
                                    }
                                }
                            }
                        }
                    }
                }
                button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Sign in" }
            }
        }
        @if console.oidc.is_none() && console.dev_clients.is_empty() {
            p { "No way to sign in is configured: set console.oidc." }
        }
    };
    let mut res = html_response(StatusCode::OK, page("Sign in", None, Section::None, body));
    let _ = res.add_cookie(&console.sessions.pending_cookie(&req, &pending));
    res
}

#[derive(Debug, Default, Deserialize)]
struct DevForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    client: String,
}

/// Records a sign-in refused, with no principal, and why (never a token or claim).
async fn refuse_sign_in(gw: &AppState, req: &HttpRequest, why: &str, status: RecCode) {
    // Past the failed-authentication limit of the address, refusals are logged, not
    // recorded: nobody can fill the audit trail with them.
    if gw.limits.failure(req.peer_addr().map(|a| a.ip())).is_err() {
        tracing::warn!(
            reason = why,
            "console sign-in refused past the failure limit; not recorded"
        );
        return;
    }
    let ctx = AuditContext {
        action: "console.sign-in",
        principal: None,
        ids: None,
    };
    let rejection: Rejection = Issue::new(status, IssueType::Security, why).into();
    let record = ctx.record(
        "rejected",
        status.status().as_u16(),
        None,
        serde_json::json!({"issues": rejection.summary(), "reason": why}),
    );
    if let Err(e) = gw.store.append_audit(&record).await {
        tracing::error!(error = %e, "could not record a refused console sign-in");
    }
}

async fn sign_in_dev(
    req: HttpRequest,
    gw: web::Data<AppState>,
    console: web::Data<Console>,
    form: Option<web::Form<DevForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    let pending = console.sessions.pending(&req);
    let csrf_ok = pending
        .as_ref()
        .is_some_and(|p| super::session::tokens_match(&p.csrf, &form.csrf));
    if !csrf_ok {
        refuse_sign_in(
            &gw,
            &req,
            "the sign-in form's CSRF token is missing or wrong",
            RecCode::Forbidden,
        )
        .await;
        return Err(ConsoleError::Csrf);
    }
    let Some((id, role)) = console
        .dev_clients
        .iter()
        .find(|(id, _)| *id == form.client)
    else {
        refuse_sign_in(
            &gw,
            &req,
            "no development client has this id",
            RecCode::Forbidden,
        )
        .await;
        return Err(ConsoleError::Forbidden(
            "That is not one of the development clients.".into(),
        ));
    };
    let user = User::new(id.clone(), id.clone(), vec![*role], now());
    let next = pending.map(|p| p.next).unwrap_or_else(|| "/console".into());
    signed_in(&req, &gw, &console, user, "development", &next, false).await
}

/// Records the sign-in and hands the browser its session. After an identity
/// provider's redirect the page continues by a meta refresh rather than a redirect, so
/// that the next request is same-site and carries the `SameSite=Strict` cookie.
async fn signed_in(
    req: &HttpRequest,
    gw: &AppState,
    console: &Console,
    user: User,
    method: &str,
    next: &str,
    from_provider: bool,
) -> Result<HttpResponse, ConsoleError> {
    let principal = user.principal(user.first_role());
    let ctx = AuditContext {
        action: "console.sign-in",
        principal: Some(&principal),
        ids: None,
    };
    let roles: Vec<&str> = user.roles.iter().map(|r| r.name()).collect();
    let record = ctx.record(
        "allowed",
        200,
        None,
        serde_json::json!({"method": method, "roles": roles}),
    );
    gw.store.append_audit(&record).await?;
    let next = safe_next(Some(next));
    let mut res = if from_provider {
        let body = html! {
            h1 { "You are signed in" }
            p { a href=(next) { "Continue to the console" } }
        };
        let mut res = html_response(StatusCode::OK, page("Signed in", None, Section::None, body));
        res.headers_mut().insert(
            header::REFRESH,
            header::HeaderValue::from_str(&format!("0; url={next}"))
                .unwrap_or(header::HeaderValue::from_static("0; url=/console")),
        );
        res
    } else {
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, next))
            .finish()
    };
    res.add_cookie(&console.sessions.session_cookie(req, &user))
        .map_err(|_| ConsoleError::Internal)?;
    res.add_cookie(&console.sessions.removal(req, SIGN_IN_COOKIE))
        .map_err(|_| ConsoleError::Internal)?;
    Ok(res)
}

async fn sign_out(
    req: HttpRequest,
    gw: web::Data<AppState>,
    console: web::Data<Console>,
    user: User,
    form: Option<web::Form<CsrfForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let principal = user.principal(user.first_role());
    let sent = form.map(|f| f.into_inner().csrf).unwrap_or_default();
    super::check_csrf(&gw, &user, &principal, &sent, "console.sign-out").await?;
    let ctx = AuditContext {
        action: "console.sign-out",
        principal: Some(&principal),
        ids: None,
    };
    gw.store
        .append_audit(&ctx.record("allowed", 200, None, serde_json::json!({})))
        .await?;
    req.extensions_mut().remove::<User>();
    let mut res = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/sign-in"))
        .finish();
    res.add_cookie(&console.sessions.removal(&req, SESSION_COOKIE))
        .map_err(|_| ConsoleError::Internal)?;
    Ok(res)
}

use actix_web::HttpMessage;

/// What an issuer publishes at `/.well-known/openid-configuration`.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// How long the issuer's discovery document is kept before it is read again.
const DISCOVERY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The issuer's discovery document, read at most every [`DISCOVERY_TTL`], so sign-in
/// pages cannot be used to make the gateway call the issuer at will.
async fn discover(console: &Console, oidc: &OidcSettings) -> Result<Discovery, String> {
    let cached = console
        .discovery
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .filter(|(at, _)| at.elapsed() < DISCOVERY_TTL);
    let text = match cached {
        Some((_, text)) => text,
        None => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                oidc.issuer.trim_end_matches('/')
            );
            let text = console
                .http
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("could not read the issuer's discovery document: {e}"))?
                .text()
                .await
                .map_err(|e| format!("could not read the issuer's discovery document: {e}"))?;
            if let Ok(mut cache) = console.discovery.lock() {
                *cache = Some((std::time::Instant::now(), text.clone()));
            }
            text
        }
    };
    let found: Discovery = serde_json::from_str(&text)
        .map_err(|e| format!("the issuer's discovery document is not valid: {e}"))?;
    if found.issuer.trim_end_matches('/') != oidc.issuer.trim_end_matches('/') {
        return Err("the discovery document names another issuer".into());
    }
    Ok(found)
}

fn unavailable_provider(why: &str) -> ConsoleError {
    tracing::error!(
        reason = why,
        "console sign-in: identity provider unavailable"
    );
    ConsoleError::Unavailable
}

/// Where the issuer sends the browser back: as configured, or this gateway's callback
/// at the address the browser used.
fn redirect_url(req: &HttpRequest, oidc: &OidcSettings) -> String {
    oidc.redirect_url.clone().unwrap_or_else(|| {
        let info = req.connection_info();
        format!("{}://{}/console/auth/callback", info.scheme(), info.host())
    })
}

/// Starts the authorisation-code flow: state, nonce and PKCE verifier in the sign-in
/// cookie, the browser sent to the issuer with the S256 challenge.
async fn oidc_start(
    req: HttpRequest,
    console: web::Data<Console>,
    query: web::Query<NextQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let Some(oidc) = &console.oidc else {
        return Err(ConsoleError::NotFound(
            "Sign-in through an identity provider is not configured.".into(),
        ));
    };
    let found = discover(&console, oidc)
        .await
        .map_err(|e| unavailable_provider(&e))?;
    let pending = PendingSignIn {
        csrf: random_token(),
        next: safe_next(query.next.as_deref()),
        state: Some(random_token()),
        nonce: Some(random_token()),
        verifier: Some(random_token()),
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(
        pending.verifier.as_deref().unwrap_or_default(),
    ));
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.client_id)
        .append_pair("redirect_uri", &redirect_url(&req, oidc))
        .append_pair("scope", &oidc.scopes.join(" "))
        .append_pair("state", pending.state.as_deref().unwrap_or_default())
        .append_pair("nonce", pending.nonce.as_deref().unwrap_or_default())
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let separator = if found.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut res = HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("{}{separator}{query}", found.authorization_endpoint),
        ))
        .finish();
    res.add_cookie(&console.sessions.pending_cookie(&req, &pending))
        .map_err(|_| ConsoleError::Internal)?;
    Ok(res)
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    id_token: String,
}

/// The issuer's answer: the state checked, the code exchanged with the PKCE verifier,
/// the ID token's signature, issuer, audience, expiry and nonce checked, and the roles
/// read from the configured claim.
async fn oidc_callback(
    req: HttpRequest,
    gw: web::Data<AppState>,
    console: web::Data<Console>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let Some(oidc) = &console.oidc else {
        return Err(ConsoleError::NotFound(
            "Sign-in through an identity provider is not configured.".into(),
        ));
    };
    let pending = console.sessions.pending(&req);
    let state_ok = match (&pending, &query.state) {
        (Some(p), Some(sent)) => p
            .state
            .as_deref()
            .is_some_and(|s| super::session::tokens_match(s, sent)),
        _ => false,
    };
    if !state_ok {
        refuse_sign_in(
            &gw,
            &req,
            "the sign-in answer's state is not this browser's",
            RecCode::Forbidden,
        )
        .await;
        return Err(ConsoleError::Forbidden(
            "This sign-in was not started in this browser, or took too long. Start again.".into(),
        ));
    }
    let Some(pending) = pending else {
        return Err(ConsoleError::Internal);
    };
    if let Some(error) = &query.error {
        // An OAuth error code is a short word; anything else is not repeated.
        let code =
            if error.len() <= 40 && error.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                error.as_str()
            } else {
                "(not an OAuth error code)"
            };
        let why = format!("the identity provider refused the sign-in: {code}");
        refuse_sign_in(&gw, &req, &why, RecCode::Forbidden).await;
        return Err(ConsoleError::Forbidden(
            "The identity provider did not sign you in.".into(),
        ));
    }
    let code = query.code.clone().unwrap_or_default();
    let found = discover(&console, oidc)
        .await
        .map_err(|e| unavailable_provider(&e))?;
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code),
        ("redirect_uri", redirect_url(&req, oidc)),
        ("client_id", oidc.client_id.clone()),
        (
            "code_verifier",
            pending.verifier.clone().unwrap_or_default(),
        ),
    ];
    if let Some(secret) = &oidc.client_secret {
        use secrecy::ExposeSecret;
        form.push(("client_secret", secret.expose_secret().to_owned()));
    }
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let answer = console
        .http
        .post(&found.token_endpoint)
        .header(
            header::CONTENT_TYPE.as_str(),
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| unavailable_provider(&format!("token endpoint: {e}")))?;
    if !answer.status().is_success() {
        let why = format!(
            "the token endpoint refused the code: HTTP {}",
            answer.status().as_u16()
        );
        refuse_sign_in(&gw, &req, &why, RecCode::Forbidden).await;
        return Err(ConsoleError::Forbidden(
            "The identity provider did not confirm this sign-in. Start again.".into(),
        ));
    }
    let token: TokenAnswer = answer
        .json()
        .await
        .map_err(|e| unavailable_provider(&format!("token answer: {e}")))?;
    let jwks: jsonwebtoken::jwk::JwkSet = console
        .http
        .get(&found.jwks_uri)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| unavailable_provider(&format!("JWKS: {e}")))?
        .json()
        .await
        .map_err(|e| unavailable_provider(&format!("JWKS: {e}")))?;
    let claims = match verify_id_token(&token.id_token, &jwks, &found.issuer, oidc, &pending) {
        Ok(c) => c,
        Err(why) => {
            refuse_sign_in(
                &gw,
                &req,
                &format!("ID token refused: {why}"),
                RecCode::Unauthorized,
            )
            .await;
            return Err(ConsoleError::Forbidden(
                "The identity provider's answer could not be verified. Start again.".into(),
            ));
        }
    };
    let Some(sub) = claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
    else {
        refuse_sign_in(&gw, &req, "the ID token has no sub", RecCode::Unauthorized).await;
        return Err(ConsoleError::Forbidden(
            "The identity provider's answer could not be verified. Start again.".into(),
        ));
    };
    let roles = roles_of(&claims, oidc);
    if roles.is_empty() {
        refuse_sign_in(
            &gw,
            &req,
            "the user holds no role mapped to operator or auditor",
            RecCode::Forbidden,
        )
        .await;
        return Err(ConsoleError::Forbidden(
            "Your account has no role for this console. Ask for the operator or auditor role."
                .into(),
        ));
    }
    let name = claims[oidc.name_claim.as_str()]
        .as_str()
        .unwrap_or(&sub)
        .to_owned();
    let user = User::new(sub, name, roles, now());
    signed_in(&req, &gw, &console, user, "oidc", &pending.next, true).await
}

/// The ID token's claims once its signature, `iss`, `aud`, `exp` and `nonce` pass.
fn verify_id_token(
    token: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
    issuer: &str,
    oidc: &OidcSettings,
    pending: &PendingSignIn,
) -> Result<serde_json::Value, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let head = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if !matches!(
        head.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
    ) {
        return Err(format!("{:?} signatures are not accepted", head.alg));
    }
    // Without a kid, only an issuer with one key says which key it is.
    let jwk = match (&head.kid, jwks.keys.as_slice()) {
        (Some(kid), _) => jwks.find(kid),
        (None, [only]) => Some(only),
        (None, _) => None,
    }
    .ok_or("no key of the issuer's matches the token's kid")?;
    if let Some(alg) = jwk.common.key_algorithm
        && format!("{alg:?}") != format!("{:?}", head.alg)
    {
        return Err("the token's algorithm is not its key's".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(head.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[&oidc.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| e.to_string())?;
    let nonce_ok = match (data.claims["nonce"].as_str(), pending.nonce.as_deref()) {
        (Some(sent), Some(ours)) => super::session::tokens_match(ours, sent),
        _ => false,
    };
    if !nonce_ok {
        return Err("the nonce is not this sign-in's".into());
    }
    Ok(data.claims)
}

/// The console roles the claim's values map to, in a fixed order. `roles_claim` is a
/// claim holding a string (space-separated values) or a list of strings, or
/// `claim.field` for a list of objects, as NHS CIS2's `nhsid_nrbac_roles.role_code`.
fn roles_of(claims: &serde_json::Value, oidc: &OidcSettings) -> Vec<ConsoleRole> {
    let (name, field) = match oidc.roles_claim.split_once('.') {
        Some((name, field)) => (name, Some(field)),
        None => (oidc.roles_claim.as_str(), None),
    };
    let values: Vec<&str> = match (&claims[name], field) {
        (serde_json::Value::String(s), None) => s.split_whitespace().collect(),
        (serde_json::Value::Array(a), None) => a.iter().filter_map(|v| v.as_str()).collect(),
        (serde_json::Value::Array(a), Some(field)) => {
            a.iter().filter_map(|v| v[field].as_str()).collect()
        }
        _ => Vec::new(),
    };
    let mut roles: Vec<ConsoleRole> = values
        .iter()
        .filter_map(|v| oidc.roles.get(*v).copied())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sign-in", web::get().to(sign_in_page))
        .route("/sign-in/dev", web::post().to(sign_in_dev))
        .route("/sign-in/oidc", web::get().to(oidc_start))
        .route("/auth/callback", web::get().to(oidc_callback))
        .route("/sign-out", web::post().to(sign_out));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oidc(roles_claim: &str) -> OidcSettings {
        OidcSettings {
            issuer: "https://issuer.example".into(),
            client_id: "thrive".into(),
            client_secret: None,
            redirect_url: None,
            scopes: vec!["openid".into()],
            roles_claim: roles_claim.into(),
            roles: [
                ("R8008".to_owned(), ConsoleRole::Operator),
                ("R8010".to_owned(), ConsoleRole::Auditor),
            ]
            .into(),
            name_claim: "name".into(),
        }
    }

    #[test]
    fn roles_come_from_strings_lists_or_a_field_of_each_listed_object() {
        let both = vec![ConsoleRole::Operator, ConsoleRole::Auditor];
        let claims = json!({
            "roles": "R8010 R9999 R8008",
            "groups": ["R8008", "R8010", "R8008"],
            "nhsid_nrbac_roles": [{"role_code": "R8010"}, {"role_code": "R8008"}, {"org_code": "X"}],
        });
        assert_eq!(roles_of(&claims, &oidc("roles")), both);
        assert_eq!(roles_of(&claims, &oidc("groups")), both);
        assert_eq!(
            roles_of(&claims, &oidc("nhsid_nrbac_roles.role_code")),
            both
        );
        assert!(roles_of(&claims, &oidc("missing")).is_empty());
        assert!(roles_of(&json!({"roles": ["R9999"]}), &oidc("roles")).is_empty());
    }

    #[test]
    fn only_console_paths_are_returned_to_after_sign_in() {
        assert_eq!(
            safe_next(Some("/console/audit?from=2026-01-01")),
            "/console/audit?from=2026-01-01"
        );
        for elsewhere in [
            "https://evil.example/console",
            "//evil.example/console",
            "/console\\..",
            "/fhir/r4/metadata",
            "/console/sign-out",
        ] {
            assert_eq!(safe_next(Some(elsewhere)), "/console", "{elsewhere}");
        }
        assert_eq!(safe_next(None), "/console");
    }
}
