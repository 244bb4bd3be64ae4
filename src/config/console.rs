//! The browser console (`/console`): who may sign in, and how sessions are kept.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[console]`. Off unless enabled; production also needs `session_key_file` and
/// `oidc`, and refuses `dev_sign_in`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    pub enabled: bool,
    /// A session unused this long must sign in again.
    pub idle_timeout_minutes: u64,
    /// A session ends this long after sign-in, however busy.
    pub session_lifetime_hours: u64,
    /// At least 32 random bytes that seal session cookies. Every replica needs the
    /// same file; without one, each process makes its own and sessions end with it.
    pub session_key_file: Option<PathBuf>,
    /// Leave `Secure` off the console's cookies on plain HTTP to localhost, so a
    /// browser keeps them in development. Everywhere else they are always `Secure`,
    /// whatever a request's headers say. Refused in production.
    pub plain_http_localhost: bool,
    /// A local sign-in page for the development clients (`auth.clients` with the
    /// operator or auditor role). Refused in production.
    pub dev_sign_in: bool,
    /// OpenID Connect sign-in (NHS CIS2 Authentication in production).
    pub oidc: Option<OidcSettings>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            idle_timeout_minutes: 30,
            session_lifetime_hours: 12,
            session_key_file: None,
            plain_http_localhost: false,
            dev_sign_in: false,
            oidc: None,
        }
    }
}

impl ConsoleSettings {
    /// An enabled console needs a way to sign in, and OIDC roles to map.
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        match &self.oidc {
            None if !self.dev_sign_in => Err(
                "console.enabled but no way to sign in: set console.oidc (or, in development, \
                 console.dev_sign_in)"
                    .into(),
            ),
            Some(oidc) if oidc.roles.is_empty() => Err(
                "console.oidc.roles is empty: map at least one claim value to operator or auditor"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// What a console user may do; a user may hold both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    Operator,
    Auditor,
}

impl ConsoleRole {
    pub fn name(self) -> &'static str {
        match self {
            ConsoleRole::Operator => "operator",
            ConsoleRole::Auditor => "auditor",
        }
    }
}

/// `[console.oidc]`: the authorisation-code flow with PKCE against one issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The issuer URL; its `/.well-known/openid-configuration` is read at sign-in.
    pub issuer: String,
    pub client_id: String,
    /// Sent to the token endpoint (`client_secret_post`) when set.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// This gateway's `/console/auth/callback` as the issuer knows it; by default
    /// worked out from the address the browser used.
    #[serde(default)]
    pub redirect_url: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim holding the user's roles (a string or a list of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim value to console role: `"<value>" = "operator" | "auditor"`.
    pub roles: BTreeMap<String, ConsoleRole>,
    /// The claim shown as the user's name (falls back to `sub`).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_name_claim() -> String {
    "name".into()
}
