//! Typed settings, layered exactly as the contract says: `config/default.toml`, then
//! `config/<THRIVE_ENV>.toml`, then each `--config FILE` in order, then `THRIVE__...`
//! environment variables. Later layers win; unknown keys stop the gateway at start.

pub mod console;
mod delivery;
pub mod mesh;
pub mod pace;
pub mod production;

pub use delivery::*;

use crate::domain::{OdsCode, ProviderId};
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Everything the gateway reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub telemetry: TelemetrySettings,
    pub referral: ReferralSettings,
    pub auth: AuthSettings,
    pub mappings: MappingsSettings,
    /// Provider case systems, keyed by the provider id used in the routing mapping.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSettings>,
    /// GP systems that take milestones back, keyed by a local id that shares the
    /// deliveries' recipient column with provider ids (so the two must differ).
    #[serde(default)]
    pub gp_callbacks: BTreeMap<String, GpCallbackSettings>,
    /// The delivery outbox worker.
    pub delivery: DeliverySettings,
    /// Key material, read from files or environment variables.
    #[serde(default)]
    pub keys: KeysSettings,
    /// Local stand-in provider receivers (development and tests only).
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// Reporting and evaluation extracts.
    #[serde(default)]
    pub reporting: ReportingSettings,
    /// The audit trail's signed checkpoints.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Purging personal data once delivery no longer needs it.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// How background tasks are restarted when they fail.
    #[serde(default)]
    pub background: BackgroundSettings,
    /// Development-only conveniences; refused in production.
    #[serde(default)]
    pub dev: DevSettings,
    /// Per-client and per-address request limits.
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    /// The gateway's MESH mailbox, for recipients with `transport = "mesh"`.
    #[serde(default)]
    pub mesh: Option<mesh::MeshSettings>,
    /// The browser console for operators and auditors.
    #[serde(default)]
    pub console: console::ConsoleSettings,
}

/// Rate limits, per process (see `limits`). A zero turns that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Steady requests a second per authenticated client (`sub`).
    pub per_client_per_second: u32,
    /// Requests a client may send at once above its steady rate.
    pub per_client_burst: u32,
    /// Failed authentications a minute per source address before 429 replaces 401.
    pub failed_auth_per_ip_per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            per_client_per_second: 100,
            per_client_burst: 200,
            failed_auth_per_ip_per_minute: 60,
        }
    }
}

/// Keys by purpose. Pseudonym keys are per recipient (provider id, `audit`,
/// `reporting`), each with versions and one active version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSettings {
    #[serde(default)]
    pub pseudonym: BTreeMap<String, crate::pseudonym::PseudonymKeySettings>,
    /// The keys personal data held for delivery is encrypted at rest with; required
    /// whenever the gateway serves or delivers.
    #[serde(default)]
    pub storage: Option<StorageKeySettings>,
}

/// How long personal data held for delivery is kept once it is no longer needed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Run the purge periodically inside `serve`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Days after a referral's last change, once every delivery of it is settled,
    /// before its personal data is purged.
    #[serde(default = "default_retention_days")]
    pub after_days: i64,
    /// How often `serve` runs a purge pass, in seconds.
    #[serde(default = "default_retention_interval")]
    pub interval_seconds: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            after_days: default_retention_days(),
            interval_seconds: default_retention_interval(),
        }
    }
}

/// The supervisor of background tasks (delivery worker, audit sealer, checkpoint
/// signer, retention purge): how fast a failed task is restarted, and when it is
/// reported as unable to stay up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundSettings {
    /// Failures within `restart_window_seconds` after which a task cannot stay up:
    /// `GET /health/live` then answers 503 naming it.
    pub max_restarts: u32,
    /// The window failures are counted in, in seconds.
    pub restart_window_seconds: u64,
    /// Wait before the first restart; doubles with each failure in the window.
    pub initial_backoff_ms: u64,
    /// The longest wait before a restart.
    pub max_backoff_ms: u64,
}

impl Default for BackgroundSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_seconds: 300,
            initial_backoff_ms: 1000,
            max_backoff_ms: 60000,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_retention_days() -> i64 {
    30
}

fn default_retention_interval() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Signs the chain head periodically; without it no checkpoints are written
    /// (the chain itself is always kept).
    #[serde(default)]
    pub checkpoint: Option<CheckpointSettings>,
    /// Milliseconds between the rounds in which `serve` seals pending audit records
    /// into the hash chain: the longest a record waits outside the chain while a
    /// gateway runs. Every read of the trail seals first, whatever this says.
    #[serde(default = "default_seal_interval")]
    pub seal_interval_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint: None,
            seal_interval_ms: default_seal_interval(),
        }
    }
}

fn default_seal_interval() -> u64 {
    250
}

/// The key checkpoints are signed with (Ed25519, PEM) and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// The `kid` of the checkpoint JWS.
    pub key_id: String,
    /// PKCS#8 private key; only the gateway that signs needs it.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The public key auditors verify with.
    pub public_key_file: PathBuf,
    /// Seconds between checkpoints written by `serve` (when the chain has grown).
    #[serde(default = "default_checkpoint_interval")]
    pub interval_seconds: u64,
}

fn default_checkpoint_interval() -> u64 {
    300
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingSettings {
    /// The National Data Opt-out list: one NHS number a line (`#` comments allowed).
    /// Read afresh by every extract, so an operator refreshes it by replacing the file.
    #[serde(default)]
    pub opt_out_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Serve `/sandbox/<provider>/referrals` receivers inside the gateway.
    #[serde(default)]
    pub enabled: bool,
    /// When set, the receivers require a bearer token from their own token endpoint
    /// (`/sandbox/<provider>/token`), issued only for a client assertion signed by a
    /// key in this JWKS: the signed-JWT pattern a real provider would check.
    #[serde(default)]
    pub client_jwks_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on, `host:port`; port 0 picks a free port.
    pub bind: String,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// HTTP worker threads; defaults to the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// How long a new connection has to send its first request head; then 408 and
    /// the connection is closed.
    #[serde(default = "default_client_request_timeout")]
    pub client_request_timeout_ms: u64,
    /// How long an idle keep-alive connection is kept open between requests.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_ms: u64,
    /// How long a closing connection may take to shut down before it is dropped.
    #[serde(default = "default_client_disconnect_timeout")]
    pub client_disconnect_timeout_ms: u64,
    /// How long a TLS handshake may take (HTTPS only).
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// Concurrent connections per worker; beyond it new connections wait in the
    /// listen backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TLS handshakes in progress per worker (HTTPS only).
    #[serde(default = "default_max_connection_rate")]
    pub max_connection_rate: usize,
    /// How long a request body may take to arrive, from the first read of it; then 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// The slowest a body may arrive, on average since its first read, once the first
    /// second has passed; a slower one gets 408.
    #[serde(default = "default_body_min_rate")]
    pub body_min_bytes_per_second: u64,
    /// Largest total size of the request headers (names and values); larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How long `/health/ready` waits for the database before answering 503.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_ms: u64,
    /// The longest the gateway works on one request once its head has arrived, body
    /// included; then 503 with `Retry-After`, and anything half done is rolled back.
    /// A database that stops answering mid-statement is cut off here.
    #[serde(default = "default_handler_timeout")]
    pub handler_timeout_ms: u64,
}

fn default_handler_timeout() -> u64 {
    30_000
}

fn default_client_request_timeout() -> u64 {
    5_000
}

fn default_keep_alive() -> u64 {
    5_000
}

fn default_client_disconnect_timeout() -> u64 {
    1_000
}

fn default_tls_handshake_timeout() -> u64 {
    3_000
}

fn default_max_connections() -> usize {
    1_024
}

fn default_max_connection_rate() -> usize {
    256
}

fn default_body_timeout() -> u64 {
    10_000
}

fn default_body_min_rate() -> u64 {
    1_024
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_ready_timeout() -> u64 {
    1_000
}

/// The gateway's own certificate, and the CA whose client certificates it requires
/// when set (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` or `postgres://user:password@host/db`. Secret because a
    /// PostgreSQL URL may hold a password.
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a writer waits for SQLite's lock before failing.
    pub sqlite_busy_timeout_ms: u64,
    /// How long a request waits for a database connection (or for a new one to be
    /// made) before it is answered 503: a database that is away fails fast.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout_ms: u64,
    /// SQLite: how many accepts may wait for the group-commit writer; past it an
    /// accept is answered 503 at once, so the wait never grows without bound.
    #[serde(default = "default_max_waiting_accepts")]
    pub max_waiting_accepts: usize,
}

fn default_acquire_timeout() -> u64 {
    1_000
}

fn default_max_waiting_accepts() -> usize {
    256
}

impl DatabaseSettings {
    /// Which engine the URL selects.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let url = self.url.expose_secret();
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(ConfigError::Invalid(
                "database.url must start with sqlite:// or postgres://".into(),
            ))
        }
    }
}

/// The two supported storage engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `thrive_gateway=debug,info`.
    pub filter: String,
    /// When set, `GET /metrics` requires `Authorization: Bearer <this token>`; without
    /// it the endpoint is open, for a scrape on a private network (like `/health/*`).
    #[serde(default)]
    pub metrics_token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralSettings {
    /// Youngest age, in whole years at the referral date, the programmes accept.
    pub minimum_age_years: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The `aud` every inbound token must carry.
    pub audience: String,
    /// Signature algorithms accepted; only asymmetric ones are allowed.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_seconds: u64,
    /// Longest token lifetime accepted (`exp - iat`), in seconds.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_seconds: u64,
    /// Clients (`sub`) whose tokens are single-use: a `jti` is required and a second
    /// use refused (remembered per process until the token expires).
    #[serde(default)]
    pub single_use_token_clients: Vec<String>,
    /// Trusted token issuers, by a local name.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerSettings>,
    /// Known clients, keyed by the token's `sub`.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientSettings>,
}

fn default_max_token_lifetime() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The exact `iss` value of this issuer's tokens.
    pub issuer: String,
    /// A JWKS document on disk.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched at start (HTTPS).
    #[serde(default)]
    pub jwks_url: Option<String>,
}

/// A client and what its role lets it do.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientSettings {
    /// A GP clinical system, allowed to refer for the listed practices only.
    GpSystem { practices: Vec<OdsCode> },
    /// A provider case system.
    Provider { provider: ProviderId },
    /// An information-governance auditor.
    Auditor {},
    /// An operator of the gateway.
    Operator {},
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingsSettings {
    /// Folder holding `routing.toml` and the dataset files.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSettings {
    /// Private key `dev-token` signs with. Never set in production.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// Lifetime of minted development tokens, in seconds.
    #[serde(default = "default_dev_token_ttl")]
    pub token_ttl_seconds: u64,
}

fn default_dev_token_ttl() -> u64 {
    3600
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    PublishedKey(#[from] crate::config::production::PublishedKey),
    #[error("configuration: {0}")]
    Production(crate::config::production::Refusal),
}

impl From<crate::config::production::Refusal> for ConfigError {
    fn from(r: crate::config::production::Refusal) -> Self {
        match r {
            crate::config::production::Refusal::PublishedKey(p) => ConfigError::PublishedKey(p),
            other => ConfigError::Production(other),
        }
    }
}

/// Where the layers come from; `THRIVE_ENV` and `--config` in the binary.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Folder holding `default.toml` and `<env>.toml`.
    pub config_dir: PathBuf,
    /// The `THRIVE_ENV` value, e.g. `development` or `production`.
    pub environment: Option<String>,
    /// Files given with `--config`, applied in order.
    pub files: Vec<PathBuf>,
    /// Read `THRIVE__...` variables (tests turn this off).
    pub use_environment: bool,
}

impl Sources {
    /// The layers the binary uses: `config/`, `THRIVE_ENV`, the given files, environment.
    pub fn from_process(files: Vec<PathBuf>) -> Self {
        Self {
            config_dir: PathBuf::from("config"),
            environment: std::env::var("THRIVE_ENV").ok().filter(|s| !s.is_empty()),
            files,
            use_environment: true,
        }
    }

    /// The layers that exist, in the order applied: files, then the names (never the
    /// values) of the `THRIVE__` variables set.
    pub fn layers(&self) -> Vec<String> {
        let mut layers = vec![self.config_dir.join("default.toml").display().to_string()];
        if let Some(env) = &self.environment {
            let file = self.config_dir.join(format!("{env}.toml"));
            if file.exists() {
                layers.push(file.display().to_string());
            }
        }
        layers.extend(self.files.iter().map(|f| f.display().to_string()));
        if self.use_environment {
            let mut names: Vec<String> = std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .filter(|k| k.starts_with("THRIVE__"))
                .collect();
            names.sort();
            layers.extend(names);
        }
        layers
    }

    pub fn is_production(&self) -> bool {
        self.environment.as_deref() == Some("production")
    }
}

impl Settings {
    /// Reads and merges every layer, then checks what types alone cannot.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment =
            Figment::new().merge(Toml::file_exact(sources.config_dir.join("default.toml")));
        if let Some(env) = &sources.environment {
            let file = sources.config_dir.join(format!("{env}.toml"));
            if file.exists() {
                figment = figment.merge(Toml::file_exact(file));
            }
        }
        for file in &sources.files {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "--config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        if sources.use_environment {
            figment = figment.merge(Env::prefixed("THRIVE__").split("__"));
        }
        let settings = Self::from_figment(figment)?;
        if sources.is_production() {
            crate::config::production::refuse(&settings)?;
        }
        Ok(settings)
    }

    /// Extracts settings from an already-built figment (tests layer their own values).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.database.backend()?;
        self.console.check().map_err(ConfigError::Invalid)?;
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be above 0".into(),
            ));
        }
        for (key, value) in [
            (
                "server.client_request_timeout_ms",
                self.server.client_request_timeout_ms,
            ),
            ("server.body_timeout_ms", self.server.body_timeout_ms),
            ("server.ready_timeout_ms", self.server.ready_timeout_ms),
            ("server.handler_timeout_ms", self.server.handler_timeout_ms),
            (
                "server.tls_handshake_timeout_ms",
                self.server.tls_handshake_timeout_ms,
            ),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.max_connection_rate",
                self.server.max_connection_rate as u64,
            ),
            (
                "server.max_header_bytes",
                self.server.max_header_bytes as u64,
            ),
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be above 0: without it a client or a database that stops \
                     answering would hold the gateway indefinitely"
                )));
            }
        }
        if self.server.handler_timeout_ms <= self.server.body_timeout_ms {
            return Err(ConfigError::Invalid(
                "server.handler_timeout_ms must be above server.body_timeout_ms: a request's \
                 body is read inside its handler's time"
                    .into(),
            ));
        }
        for (id, provider) in &self.providers {
            ProviderId::parse(id)
                .map_err(|e| ConfigError::Invalid(format!("providers.{id}: {e}")))?;
            check_client(&format!("providers.{id}"), provider, self)?;
        }
        let mut sources: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, callback) in &self.gp_callbacks {
            let at = format!("gp_callbacks.{id}");
            ProviderId::parse(id).map_err(|e| ConfigError::Invalid(format!("{at}: {e}")))?;
            if self.providers.contains_key(id) {
                return Err(ConfigError::Invalid(format!(
                    "{at}: `{id}` is also a provider id; GP callbacks and providers need different ids"
                )));
            }
            check_client(&at, &callback.client(), self)?;
            let source = normalise_endpoint(&callback.source_endpoint);
            if source.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{at}.source_endpoint must not be empty"
                )));
            }
            if let Some(other) = sources.insert(source, id) {
                return Err(ConfigError::Invalid(format!(
                    "gp_callbacks.{other} and {at} have the same source_endpoint"
                )));
            }
        }
        if self.telemetry.metrics_token.as_ref().is_some_and(|t| {
            let t = t.expose_secret();
            t.is_empty() || !t.chars().all(|c| c.is_ascii_graphic())
        }) {
            return Err(ConfigError::Invalid(
                "telemetry.metrics_token must be printable ASCII without spaces, and not empty \
                 (leave it out for an open endpoint)"
                    .into(),
            ));
        }
        if self.delivery.max_attempts < 1
            || self.delivery.batch_size < 1
            || self.delivery.max_worker_failures < 1
        {
            return Err(ConfigError::Invalid(
                "delivery.max_attempts, delivery.batch_size and delivery.max_worker_failures \
                 must be at least 1"
                    .into(),
            ));
        }
        if self.delivery.max_backoff_ms < self.delivery.initial_backoff_ms {
            return Err(ConfigError::Invalid(
                "delivery.max_backoff_ms must be at least delivery.initial_backoff_ms".into(),
            ));
        }
        let b = &self.background;
        if b.max_restarts < 1 || b.restart_window_seconds < 1 {
            return Err(ConfigError::Invalid(
                "background.max_restarts and background.restart_window_seconds must be at least 1"
                    .into(),
            ));
        }
        if b.max_backoff_ms < b.initial_backoff_ms {
            return Err(ConfigError::Invalid(
                "background.max_backoff_ms must be at least background.initial_backoff_ms".into(),
            ));
        }
        if self.retention.after_days < 1 || self.retention.interval_seconds < 1 {
            return Err(ConfigError::Invalid(
                "retention.after_days and retention.interval_seconds must be at least 1".into(),
            ));
        }
        for (name, issuer) in &self.auth.issuers {
            if issuer.jwks_file.is_none() && issuer.jwks_url.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "auth.issuers.{name} needs jwks_file or jwks_url"
                )));
            }
        }
        Ok(())
    }
}

/// Loads the shipped defaults only, from a given config folder: a starting point for
/// tests and tools that then override single keys.
pub fn defaults_figment(config_dir: &Path) -> Figment {
    Figment::new().merge(Toml::file_exact(config_dir.join("default.toml")))
}

/// The storage keys as configured: `[keys.storage]` with `active` and
/// `[keys.storage.versions.<vN>]` tables of `file` or `env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageKeySettings {
    /// The version new values are sealed with; every configured version still opens.
    pub active: String,
    pub versions: std::collections::BTreeMap<String, crate::pseudonym::KeySource>,
}
