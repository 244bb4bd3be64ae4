//! Console sessions: an encrypted, authenticated cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` except on plain-HTTP localhost) holding who signed in, their roles and the
//! session's CSRF token. It ends after `idle_timeout_minutes` unused, after
//! `session_lifetime_hours` whatever happens, and at sign-out.

use crate::auth::{Principal, Role};
use crate::config::console::{ConsoleRole, ConsoleSettings};
use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, CookieJar, Key, SameSite, time::Duration as CookieDuration};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const SESSION_COOKIE: &str = "thrive_console";
/// Carries a sign-in in progress: the sign-in form's CSRF token, and the OIDC state,
/// nonce and PKCE verifier. `SameSite=Lax`, because the identity provider sends the
/// browser back with a cross-site navigation.
pub const SIGN_IN_COOKIE: &str = "thrive_console_sign_in";

/// A signed-in console user, as their session cookie holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// The identity provider's `sub`, or the development client id.
    pub sub: String,
    pub name: String,
    pub roles: Vec<ConsoleRole>,
    /// Every form that changes something must carry this.
    pub csrf: String,
    /// Unix seconds.
    signed_in: i64,
    seen: i64,
}

impl User {
    pub fn new(sub: String, name: String, roles: Vec<ConsoleRole>, now: i64) -> Self {
        Self {
            sub,
            name,
            roles,
            csrf: random_token(),
            signed_in: now,
            seen: now,
        }
    }

    /// The role a record names for what any role may do (sign-in, the overview):
    /// operator when the user holds it. Every session holds at least one role.
    pub fn first_role(&self) -> ConsoleRole {
        self.roles.first().copied().unwrap_or(ConsoleRole::Auditor)
    }

    pub fn has(&self, role: ConsoleRole) -> bool {
        self.roles.contains(&role)
    }

    pub fn roles_shown(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Who the audit trail records for an action taken in `role`: the same client id
    /// and role an API call would carry.
    pub fn principal(&self, role: ConsoleRole) -> Principal {
        Principal {
            client_id: self.sub.clone(),
            role: match role {
                ConsoleRole::Operator => Role::Operator,
                ConsoleRole::Auditor => Role::Auditor,
            },
        }
    }

    /// Whether `sent` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, sent: &str) -> bool {
        tokens_match(&self.csrf, sent)
    }
}

/// Constant-time comparison of two tokens; an empty one never matches.
pub fn tokens_match(expected: &str, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(sent.as_bytes()))
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A sign-in in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PendingSignIn {
    pub csrf: String,
    /// Where to go once signed in (a console path).
    pub next: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub verifier: Option<String>,
}

/// Seals and opens the console's cookies.
#[derive(Clone)]
pub struct Sessions {
    key: Key,
    idle: Duration,
    lifetime: Duration,
    /// `console.plain_http_localhost`.
    plain_http_localhost: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("console.session_key_file {path}: {reason}")]
    File { path: String, reason: String },
}

impl Sessions {
    pub fn from_settings(settings: &ConsoleSettings) -> Result<Self, SessionKeyError> {
        let key = match &settings.session_key_file {
            Some(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| SessionKeyError::File {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                if bytes.len() < 32 {
                    return Err(SessionKeyError::File {
                        path: shown,
                        reason: format!(
                            "holds {} bytes; at least 32 random bytes are needed",
                            bytes.len()
                        ),
                    });
                }
                Key::derive_from(&bytes)
            }
            None => Key::generate(),
        };
        Ok(Self {
            key,
            idle: Duration::from_secs(settings.idle_timeout_minutes.max(1) * 60),
            lifetime: Duration::from_secs(settings.session_lifetime_hours.max(1) * 3600),
            plain_http_localhost: settings.plain_http_localhost,
        })
    }

    fn seal(&self, name: &'static str, value: String) -> String {
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key).add(Cookie::new(name, value));
        jar.get(name)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    fn open(&self, req: &HttpRequest, name: &'static str) -> Option<String> {
        let sealed = req.cookie(name)?;
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(name, sealed.value().to_owned()));
        jar.private(&self.key)
            .get(name)
            .map(|c| c.value().to_owned())
    }

    /// The request's signed-in user, when the session is valid and not timed out; the
    /// user is returned with `seen` moved to `now`.
    pub fn user(&self, req: &HttpRequest, now: i64) -> Option<User> {
        let mut user: User = serde_json::from_str(&self.open(req, SESSION_COOKIE)?).ok()?;
        let idle = i64::try_from(self.idle.as_secs()).unwrap_or(i64::MAX);
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        if now - user.seen > idle || now - user.signed_in > lifetime || now < user.signed_in {
            return None;
        }
        user.seen = now;
        Some(user)
    }

    pub fn session_cookie(&self, req: &HttpRequest, user: &User) -> Cookie<'static> {
        let value = serde_json::to_string(user).unwrap_or_default();
        self.cookie(
            req,
            SESSION_COOKIE,
            self.seal(SESSION_COOKIE, value),
            SameSite::Strict,
        )
    }

    pub fn pending(&self, req: &HttpRequest) -> Option<PendingSignIn> {
        serde_json::from_str(&self.open(req, SIGN_IN_COOKIE)?).ok()
    }

    pub fn pending_cookie(&self, req: &HttpRequest, pending: &PendingSignIn) -> Cookie<'static> {
        let value = serde_json::to_string(pending).unwrap_or_default();
        let mut c = self.cookie(
            req,
            SIGN_IN_COOKIE,
            self.seal(SIGN_IN_COOKIE, value),
            SameSite::Lax,
        );
        c.set_max_age(CookieDuration::minutes(10));
        c
    }

    /// A cookie that removes `name` from the browser.
    pub fn removal(&self, req: &HttpRequest, name: &'static str) -> Cookie<'static> {
        let mut c = self.cookie(req, name, String::new(), SameSite::Strict);
        c.make_removal();
        c
    }

    fn cookie(
        &self,
        req: &HttpRequest,
        name: &'static str,
        value: String,
        same_site: SameSite,
    ) -> Cookie<'static> {
        Cookie::build(name, value)
            .path("/console")
            .http_only(true)
            .same_site(same_site)
            .secure(!(self.plain_http_localhost && plain_http_to_localhost(req)))
            .finish()
    }
}

/// Plain HTTP to this machine, as the connection itself shows: the listener has no
/// TLS, the peer is a loopback address and the browser asked for a loopback name.
/// Forwarding headers are not read, so no request can talk its way out of `Secure`.
fn plain_http_to_localhost(req: &HttpRequest) -> bool {
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let hostname = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    !req.app_config().secure()
        && req.peer_addr().is_some_and(|a| a.ip().is_loopback())
        && matches!(hostname, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn sessions() -> Sessions {
        Sessions::from_settings(&ConsoleSettings::default()).expect("a generated key")
    }

    /// A request carrying `user`'s session cookie as `sessions` seals it.
    fn carrying(sessions: &Sessions, user: &User) -> HttpRequest {
        let plain = TestRequest::default().to_http_request();
        let cookie = sessions.session_cookie(&plain, user);
        TestRequest::default().cookie(cookie).to_http_request()
    }

    #[test]
    fn a_session_ends_when_idle_and_at_its_lifetime_however_busy() {
        let sessions = sessions();
        let start = 1_000_000;
        let user = User::new(
            "operator".into(),
            "operator".into(),
            vec![ConsoleRole::Operator],
            start,
        );
        let req = carrying(&sessions, &user);
        assert!(sessions.user(&req, start + 29 * 60).is_some());
        assert!(
            sessions.user(&req, start + 31 * 60).is_none(),
            "30 minutes idle ends it"
        );

        // Used every 20 minutes, it still ends 12 hours after sign-in.
        let mut user = user;
        let mut now = start;
        while now + 20 * 60 <= start + 12 * 3600 {
            now += 20 * 60;
            user = sessions
                .user(&carrying(&sessions, &user), now)
                .expect("a session in use stays");
        }
        now += 20 * 60;
        assert!(sessions.user(&carrying(&sessions, &user), now).is_none());
    }

    #[test]
    fn a_cookie_sealed_elsewhere_or_altered_is_no_session() {
        let ours = sessions();
        let user = User::new(
            "auditor".into(),
            "auditor".into(),
            vec![ConsoleRole::Auditor],
            5,
        );
        let other = carrying(&sessions(), &user);
        assert!(ours.user(&other, 5).is_none(), "another key's cookie");
        let plain = TestRequest::default().to_http_request();
        let sealed = ours.session_cookie(&plain, &user).value().to_owned();
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let cookie = Cookie::new(SESSION_COOKIE, String::from_utf8(altered).expect("base64"));
        let req = TestRequest::default().cookie(cookie).to_http_request();
        assert!(ours.user(&req, 5).is_none(), "an altered cookie");
        let json = Cookie::new(SESSION_COOKIE, serde_json::to_string(&user).expect("json"));
        let req = TestRequest::default().cookie(json).to_http_request();
        assert!(ours.user(&req, 5).is_none(), "a cookie written by hand");
    }

    #[test]
    fn only_the_session_s_own_token_matches() {
        let user = User::new(
            "operator".into(),
            "operator".into(),
            vec![ConsoleRole::Operator],
            0,
        );
        assert!(user.csrf_matches(&user.csrf.clone()));
        assert!(!user.csrf_matches(""));
        assert!(!user.csrf_matches(&random_token()));
        assert!(!tokens_match("", ""));
    }
}
