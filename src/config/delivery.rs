//! Where deliveries go and how: providers, GP callbacks, their transport and the worker.

use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// How to reach one provider's case system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The URL deliveries are POSTed to (not used with `transport = "mesh"`).
    #[serde(default)]
    pub endpoint: String,
    /// `json`: the mapped dataset as a JSON document.
    #[serde(default)]
    pub format: ProviderFormat,
    /// How the gateway authenticates to the provider.
    #[serde(default)]
    pub auth: ProviderAuth,
    /// OAuth2 client credentials with a signed JWT client assertion, for
    /// `auth = "signed-jwt"`.
    #[serde(default)]
    pub oauth: Option<OAuthSettings>,
    /// The CA to trust for this provider and the client certificate to present
    /// (mutual TLS); combinable with any `auth`.
    #[serde(default)]
    pub tls: Option<ProviderTlsSettings>,
    /// Per-request timeout, in milliseconds.
    #[serde(default = "default_provider_timeout")]
    pub timeout_ms: u64,
    /// `https` (POST to `endpoint`) or `mesh` (to the mailbox `mesh.to`).
    #[serde(default)]
    pub transport: super::mesh::Transport,
    /// For `transport = "mesh"`: the recipient's mailbox and workflow.
    #[serde(default)]
    pub mesh: Option<super::mesh::MeshRoute>,
    /// Deliveries started per second at most, across every gateway on the database.
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Deliveries in flight at once at most, across every gateway on the database.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Windows of UK local time (`"22:00-06:00"`) when nothing is sent: deliveries
    /// wait in the queue and go after.
    #[serde(default)]
    pub quiet_hours: Vec<crate::config::pace::QuietWindow>,
}

impl ProviderSettings {
    pub fn pace(&self) -> crate::config::pace::Pace {
        crate::config::pace::Pace {
            max_per_second: self.max_per_second,
            max_in_flight: self.max_in_flight,
            quiet_hours: self.quiet_hours.clone(),
        }
    }
}

fn default_provider_timeout() -> u64 {
    10_000
}

/// Where one GP system takes milestones back: the referrals whose
/// `MessageHeader.source.endpoint` is `source_endpoint` have each status event POSTed
/// to `endpoint` as a BaRS `servicerequest-response` message (always FHIR).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpCallbackSettings {
    /// The GP system's `MessageHeader.source.endpoint`, matched exactly (one
    /// trailing `/` ignored).
    pub source_endpoint: String,
    /// The URL milestones are POSTed to (not used with `transport = "mesh"`).
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub auth: ProviderAuth,
    #[serde(default)]
    pub oauth: Option<OAuthSettings>,
    #[serde(default)]
    pub tls: Option<ProviderTlsSettings>,
    #[serde(default = "default_provider_timeout")]
    pub timeout_ms: u64,
    /// `https` (POST to `endpoint`) or `mesh` (to the mailbox `mesh.to`).
    #[serde(default)]
    pub transport: super::mesh::Transport,
    /// For `transport = "mesh"`: the recipient's mailbox and workflow.
    #[serde(default)]
    pub mesh: Option<super::mesh::MeshRoute>,
    /// Deliveries started per second at most, across every gateway on the database.
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Deliveries in flight at once at most, across every gateway on the database.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Windows of UK local time (`"22:00-06:00"`) when nothing is sent: deliveries
    /// wait in the queue and go after.
    #[serde(default)]
    pub quiet_hours: Vec<crate::config::pace::QuietWindow>,
}

impl GpCallbackSettings {
    /// The same client settings a FHIR provider has, so one HTTP client type serves
    /// both.
    pub fn client(&self) -> ProviderSettings {
        ProviderSettings {
            endpoint: self.endpoint.clone(),
            format: ProviderFormat::Fhir,
            auth: self.auth,
            oauth: self.oauth.clone(),
            tls: self.tls.clone(),
            timeout_ms: self.timeout_ms,
            transport: self.transport,
            mesh: self.mesh.clone(),
            max_per_second: self.max_per_second,
            max_in_flight: self.max_in_flight,
            quiet_hours: self.quiet_hours.clone(),
        }
    }
}

/// How a provider endpoint names the gateway's own sandbox receiver: `sandbox:<id>`,
/// resolved against the address the gateway actually bound.
pub const SANDBOX_SCHEME: &str = "sandbox:";

/// `endpoint` with a `sandbox:<id>` name resolved to the receiver under `base`
/// (`http://127.0.0.1:8080`): `path` is `referrals` for an endpoint and `token` for a
/// token URL. Any other endpoint is returned as it is.
pub fn resolve_sandbox(endpoint: &str, base: &str, path: &str) -> String {
    match endpoint.strip_prefix(SANDBOX_SCHEME) {
        Some(id) => format!("{base}/sandbox/{id}/{path}"),
        None => endpoint.to_owned(),
    }
}

/// A source endpoint as compared: without one trailing `/`.
pub fn normalise_endpoint(endpoint: &str) -> &str {
    endpoint.strip_suffix('/').unwrap_or(endpoint)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFormat {
    /// The mapped dataset as a JSON document.
    #[default]
    Json,
    /// A FHIR R4 message Bundle holding only the mapped elements.
    Fhir,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderAuth {
    /// No credentials (sandbox receivers, or a provider reached over a private link).
    #[default]
    None,
    /// A bearer token from the provider's token endpoint, obtained with a client
    /// assertion signed RS512 (the NHS signed-JWT pattern); see `oauth`.
    SignedJwt,
}

/// TLS towards one provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTlsSettings {
    /// Trust only this CA (PEM) for the provider's certificate, instead of the
    /// platform's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// The provider's token endpoint and the gateway's client registration there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    pub token_url: String,
    /// `iss` and `sub` of the client assertion.
    pub client_id: String,
    /// RSA private key (PEM) the assertion is signed with.
    pub key_file: PathBuf,
    /// The `kid` the provider knows the public key by.
    pub key_id: String,
}

/// The outbox worker's pace and patience.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Run the worker inside `serve`.
    pub enabled: bool,
    /// How often an idle worker looks for due deliveries, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claimed delivery stays with its worker before others may take it.
    pub lease_seconds: u64,
    /// Deliveries claimed and sent at once by one worker.
    pub batch_size: i64,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: i32,
    /// Age after which a delivery still failing becomes a dead letter, in seconds.
    pub max_age_seconds: u64,
    /// First retry delay; doubles per attempt, with jitter, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// The longest wait before a retry, whatever the doubling or a provider's
    /// `Retry-After` asks for.
    pub max_backoff_ms: u64,
    /// Times in a row the worker itself may fail on one delivery (a panic or an
    /// error of its own, not a recipient's answer) before it is parked as a dead
    /// letter, so it cannot hold up the rest of the queue.
    #[serde(default = "default_max_worker_failures")]
    pub max_worker_failures: i32,
}

fn default_max_worker_failures() -> i32 {
    3
}

impl super::Settings {
    /// The same settings with every `sandbox:<id>` endpoint and token URL resolved to
    /// the gateway's own receivers at `base` (`http://host:port`, as bound).
    pub fn with_sandbox_at(&self, base: &str) -> Self {
        let mut resolved = self.clone();
        for p in resolved.providers.values_mut() {
            p.endpoint = resolve_sandbox(&p.endpoint, base, "referrals");
            if let Some(o) = &mut p.oauth {
                o.token_url = resolve_sandbox(&o.token_url, base, "token");
            }
        }
        for c in resolved.gp_callbacks.values_mut() {
            c.endpoint = resolve_sandbox(&c.endpoint, base, "referrals");
            if let Some(o) = &mut c.oauth {
                o.token_url = resolve_sandbox(&o.token_url, base, "token");
            }
        }
        resolved
    }

    /// Endpoints written out as this machine's sandbox receivers on a port other
    /// than the one bound: likely a port changed in one place and not the other.
    pub fn sandbox_port_mismatches(&self, bound_port: u16) -> Vec<String> {
        let urls = self
            .providers
            .iter()
            .map(|(id, p)| (format!("providers.{id}"), &p.endpoint, &p.oauth))
            .chain(
                self.gp_callbacks
                    .iter()
                    .map(|(id, c)| (format!("gp_callbacks.{id}"), &c.endpoint, &c.oauth)),
            );
        let mut found = Vec::new();
        for (at, endpoint, oauth) in urls {
            let token = oauth.as_ref().map(|o| &o.token_url);
            for (key, url) in [("endpoint", Some(endpoint)), ("oauth.token_url", token)] {
                let Some(parsed) = url.and_then(|u| reqwest::Url::parse(u).ok()) else {
                    continue;
                };
                let local = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if local
                    && parsed.path().starts_with("/sandbox/")
                    && parsed.port_or_known_default() != Some(bound_port)
                {
                    found.push(format!("{at}.{key}"));
                }
            }
        }
        found
    }
}

/// What every outbound client needs: an http(s) endpoint, a client certificate with
/// its key, and an oauth table for signed-JWT authentication. `at` names the table.
pub(super) fn check_client(
    at: &str,
    client: &ProviderSettings,
    settings: &super::Settings,
) -> Result<(), ConfigError> {
    let sandbox = settings.sandbox.enabled;
    if client.transport == super::mesh::Transport::Mesh {
        if client.mesh.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{at}: transport = \"mesh\" needs a [{at}.mesh] table with `to` and `workflow_id`"
            )));
        }
        if settings.mesh.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{at}: transport = \"mesh\" needs the gateway's mailbox in a [mesh] table"
            )));
        }
        return Ok(());
    }
    if let Some(id) = client.endpoint.strip_prefix(SANDBOX_SCHEME) {
        if !sandbox {
            return Err(ConfigError::Invalid(format!(
                "{at}.endpoint names the gateway's sandbox, but sandbox.enabled is false"
            )));
        }
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ConfigError::Invalid(format!(
                "{at}.endpoint: `sandbox:` must be followed by a provider id, as in sandbox:bchft"
            )));
        }
    } else if !(client.endpoint.starts_with("https://") || client.endpoint.starts_with("http://")) {
        return Err(ConfigError::Invalid(format!(
            "{at}.endpoint must be an http(s) URL or sandbox:<provider>"
        )));
    }
    if let Some(tls) = &client.tls
        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
    {
        return Err(ConfigError::Invalid(format!(
            "{at}.tls: client_cert_file and client_key_file go together"
        )));
    }
    if let Some(rate) = client.max_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(ConfigError::Invalid(format!(
            "{at}.max_per_second must be a number above 0 (leave it out for no limit)"
        )));
    }
    if client.max_in_flight == Some(0) {
        return Err(ConfigError::Invalid(format!(
            "{at}.max_in_flight must be at least 1 (leave it out for no limit)"
        )));
    }
    if client.auth == ProviderAuth::SignedJwt && client.oauth.is_none() {
        return Err(ConfigError::Invalid(format!(
            "{at}: auth = \"signed-jwt\" needs a [{at}.oauth] table"
        )));
    }
    Ok(())
}
