//! Provider clients: HTTPS (rustls) POSTs of one delivery, with the headers the
//! provider de-duplicates and correlates on, and the provider's chosen authentication.

use crate::config::mesh::{MeshRoute, Transport};
use crate::config::{OAuthSettings, ProviderAuth, ProviderFormat, ProviderSettings};
use crate::mesh::{MeshClient, MeshError, Outgoing};
use fhir_sdk::time::Duration;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

/// What came back from one attempt.
#[derive(Debug)]
pub enum Answer {
    /// The provider answered with a status.
    Status {
        status: u16,
        /// `Retry-After`, in seconds, when given (as the provider said it: the worker
        /// caps it at `delivery.max_backoff_ms`).
        retry_after: Option<Duration>,
        /// The start of the provider's answer, printable characters only, kept with
        /// a dead letter so an operator can see why.
        excerpt: String,
        /// The transport's own id for what was sent (MESH's message id).
        reference: Option<String>,
    },
    /// No answer: timeout, refused or reset connection, TLS failure, token endpoint
    /// failure. `error` names the host that failed.
    Failed { class: FailureClass, error: String },
}

/// Why an attempt got no answer, in a word fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Timeout,
    /// Nothing listens at the address.
    Refused,
    /// Any other failure to connect (no route, DNS, reset).
    Connect,
    /// The TLS handshake failed: certificate not trusted, expired, wrong name.
    Tls,
    /// The token endpoint failed or refused the client assertion.
    Token,
    /// The connection broke while the answer was read.
    Read,
    /// The gateway could not build or send the request (its own fault).
    Other,
}

impl FailureClass {
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "connection-refused",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Token => "token-endpoint",
            Self::Read => "read",
            Self::Other => "other",
        }
    }
}

/// One provider's endpoint and HTTP client.
#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    endpoint: String,
    /// `host:port` of the endpoint, named in logs and errors.
    host: String,
    format: ProviderFormat,
    oauth: Option<Arc<OAuth>>,
    /// With `transport = "mesh"`: the gateway's mailbox and the recipient's route.
    mesh: Option<(Arc<MeshClient>, MeshRoute)>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Signed-JWT client credentials, with the access token cached until shortly before
/// it expires.
struct OAuth {
    settings: OAuthSettings,
    /// `host:port` of the token endpoint.
    host: String,
    key: EncodingKey,
    cached: Mutex<Option<(String, Instant)>>,
}

const EXCERPT_CHARS: usize = 300;
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest an access token is cached, whatever its `expires_in` says.
const MAX_TOKEN_CACHE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl ProviderClient {
    /// A client for one recipient; `mesh` is the gateway's mailbox, when configured.
    pub fn new(
        settings: &ProviderSettings,
        mesh: Option<&Arc<MeshClient>>,
    ) -> Result<Self, String> {
        let mesh = match (settings.transport, &settings.mesh, mesh) {
            (Transport::Https, _, _) => None,
            (Transport::Mesh, Some(route), Some(client)) => Some((client.clone(), route.clone())),
            (Transport::Mesh, _, _) => {
                return Err("transport = \"mesh\" needs [mesh] and a mesh table".into());
            }
        };
        let http = crate::tls::outbound_client(settings.timeout_ms, settings.tls.as_ref())?;
        let oauth = match (settings.auth, &settings.oauth) {
            (ProviderAuth::None, _) => None,
            (ProviderAuth::SignedJwt, None) => {
                return Err("auth = \"signed-jwt\" needs an oauth table".into());
            }
            (ProviderAuth::SignedJwt, Some(o)) => {
                let pem = std::fs::read(&o.key_file)
                    .map_err(|e| format!("cannot read {}: {e}", o.key_file.display()))?;
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|_| {
                    format!("{} is not an RSA private key (PEM)", o.key_file.display())
                })?;
                Some(Arc::new(OAuth {
                    host: host_of(&o.token_url)?,
                    settings: o.clone(),
                    key,
                    cached: Mutex::new(None),
                }))
            }
        };
        let host = match &mesh {
            Some((_, route)) => format!("mesh:{}", route.to),
            None => host_of(&settings.endpoint)?,
        };
        Ok(Self {
            http,
            host,
            mesh,
            endpoint: settings.endpoint.clone(),
            format: settings.format,
            oauth,
        })
    }

    /// `host:port` deliveries go to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The body format this provider takes.
    pub fn format(&self) -> ProviderFormat {
        self.format
    }

    /// POSTs one delivery. `request_id` is the delivery's, the same on every retry.
    /// Over MESH, a message MESH may already hold is first looked up by its
    /// `mex-LocalID` (the request id), and not sent again.
    pub async fn send(
        &self,
        request_id: &str,
        correlation_id: &str,
        body: &serde_json::Value,
    ) -> Answer {
        if let Some((mesh, route)) = &self.mesh {
            return self.send_mesh(mesh, route, request_id, body).await;
        }
        let content_type = match self.format {
            ProviderFormat::Json => "application/json",
            ProviderFormat::Fhir => "application/fhir+json",
        };
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("X-Request-Id", request_id)
            .header("X-Correlation-Id", correlation_id)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string());
        if let Some(oauth) = &self.oauth {
            match oauth.token(&self.http).await {
                Ok(token) => request = request.bearer_auth(token),
                Err(error) => {
                    return Answer::Failed {
                        class: FailureClass::Token,
                        error,
                    };
                }
            }
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(&self.host, &e),
        };
        let status = response.status().as_u16();
        if status == 401
            && let Some(oauth) = &self.oauth
        {
            // The provider no longer accepts the cached token: fetch a new one next time.
            *oauth.cached.lock().await = None;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .map(Duration::seconds);
        let excerpt = match response.text().await {
            Ok(text) => text
                .chars()
                .filter(|c| !c.is_control())
                .take(EXCERPT_CHARS)
                .collect(),
            Err(e) => return failed(&self.host, &e),
        };
        Answer::Status {
            status,
            retry_after,
            excerpt,
            reference: None,
        }
    }
}

impl ProviderClient {
    async fn send_mesh(
        &self,
        mesh: &MeshClient,
        route: &MeshRoute,
        local_id: &str,
        body: &serde_json::Value,
    ) -> Answer {
        let sent = |id: String| Answer::Status {
            status: 202,
            retry_after: None,
            excerpt: String::new(),
            reference: Some(id),
        };
        // An earlier attempt may have reached MESH without its answer reaching us: a
        // timeout or reset, or the process killed before it stored the outcome (which
        // leaves no trace of the attempt here). So every send asks MESH first.
        match mesh.track(local_id).await {
            Ok(Some(id)) => return sent(id),
            Ok(None) => {}
            Err(e) => return self.mesh_failure(e),
        }
        let payload = body.to_string();
        let outgoing = Outgoing {
            to: &route.to,
            workflow_id: &route.workflow_id,
            local_id,
            subject: "thrive-gateway delivery",
            body: payload.as_bytes(),
        };
        match mesh.send_message(outgoing).await {
            Ok(id) => sent(id),
            Err(e) => self.mesh_failure(e),
        }
    }

    fn mesh_failure(&self, e: MeshError) -> Answer {
        match e {
            MeshError::Status { status, excerpt } => Answer::Status {
                status,
                retry_after: None,
                excerpt,
                reference: None,
            },
            MeshError::Failed(why) => Answer::Failed {
                class: FailureClass::Connect,
                error: format!("{}: {why}", self.host),
            },
        }
    }
}

impl OAuth {
    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn token(&self, http: &reqwest::Client) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion()?;
        let form = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
            "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer", assertion
        );
        let response = http
            .post(&self.settings.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| format!("token endpoint {}: {}", self.host, describe(&e).1))?;
        if !response.status().is_success() {
            return Err(format!(
                "token endpoint {} answered {}",
                self.host,
                response.status().as_u16()
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let token: TokenResponse = response.json().await.map_err(|_| {
            format!(
                "token endpoint {}: the answer is not a token response",
                self.host
            )
        })?;
        let lifetime = std::time::Duration::from_secs(token.expires_in.unwrap_or(300));
        // Checked: an `expires_in` past what the clock can hold must not panic the
        // worker; such a token is kept for a day at most.
        let now = Instant::now();
        let keep = lifetime.saturating_sub(TOKEN_MARGIN).min(MAX_TOKEN_CACHE);
        let until = now.checked_add(keep).unwrap_or(now);
        *cached = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    /// The client assertion: RS512 with `kid`, `iss` = `sub` = client id, `aud` = the
    /// token URL, a unique `jti`, and `exp` five minutes ahead.
    fn assertion(&self) -> Result<String, String> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            jti: String,
            iat: u64,
            exp: u64,
        }
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = Header::new(Algorithm::RS512);
        header.kid = Some(self.settings.key_id.clone());
        jsonwebtoken::encode(
            &header,
            &Claims {
                iss: &self.settings.client_id,
                sub: &self.settings.client_id,
                aud: &self.settings.token_url,
                jti: uuid::Uuid::new_v4().to_string(),
                iat: now,
                exp: now.saturating_add(300),
            },
            &self.key,
        )
        .map_err(|_| "could not sign the client assertion".to_owned())
    }
}

/// `host:port` of a configured URL, checked at start.
fn host_of(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url} names no host"))?;
    Ok(match parsed.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

fn failed(host: &str, e: &reqwest::Error) -> Answer {
    let (class, what) = describe(e);
    Answer::Failed {
        class,
        error: format!("{host}: {what}"),
    }
}

/// What went wrong, from the error and its causes: the I/O error kind and any TLS
/// error underneath (rustls says which certificate check failed; no message content).
fn describe(e: &reqwest::Error) -> (FailureClass, String) {
    tracing::debug!(error = %e, "provider request failed");
    let mut refused = false;
    let mut tls: Option<String> = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            tls = Some(t.to_string());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            // io::Error's source() skips the error it wraps: step into it instead.
            if let Some(inner) = io.get_ref() {
                cause = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cause = c.source();
    }
    if let Some(why) = tls {
        (FailureClass::Tls, format!("TLS failure: {why}"))
    } else if e.is_timeout() {
        (FailureClass::Timeout, "timed out".into())
    } else if refused {
        (FailureClass::Refused, "connection refused".into())
    } else if e.is_connect() {
        (FailureClass::Connect, "could not connect".into())
    } else if e.is_body() || e.is_decode() {
        (
            FailureClass::Read,
            "the connection failed while reading the answer".into(),
        )
    } else {
        (FailureClass::Other, "the request failed".into())
    }
}
