//! Builds the running gateway: settings in, a bound server out. Tests start it on
//! port 0 and read the bound address back.

use crate::app::{AppState, CORRELATION_ID, REQUEST_ID};
use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{RetentionSettings, Settings};
use crate::delivery::{Deliverer, DeliverySetupError, GpCallbacks};
use crate::http::sandbox::Sandbox;
use crate::mapping::Datasets;
use crate::metrics::{Metrics, UNMATCHED};
use crate::routing::{MappingError, Routing};
use crate::store::{self, Store, StoreError, crypto::StorageKeyError, crypto::StorageKeys};
use crate::supervisor::Supervisor;
use actix_web::{
    App, HttpMessage, HttpServer,
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    http::header::HeaderName,
    middleware::Next,
    web,
};
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    StorageKeys(#[from] StorageKeyError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("mappings: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Mappings(Vec<MappingError>),
    #[error(transparent)]
    Delivery(#[from] DeliverySetupError),
    #[error("sandbox.client_jwks_file: {0}")]
    Sandbox(String),
    #[error("console: {0}")]
    Console(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("keys.pseudonym.audit: {0}")]
    AuditKeys(String),
    #[error(transparent)]
    Checkpoint(#[from] crate::audit::checkpoint::CheckpointError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
}

/// A gateway bound to its address, ready to run.
pub struct Application {
    /// As resolved: `sandbox:` endpoints at the address bound.
    settings: Settings,
    address: SocketAddr,
    server: Server,
    gateway: AppState,
    deliverer: Option<Deliverer>,
    run_worker: bool,
    /// Signs audit checkpoints in the background, at this interval.
    signer: Option<(crate::audit::checkpoint::Signer, std::time::Duration)>,
    /// The periodic purge, when `retention.enabled`.
    retention: Option<(Arc<dyn Store>, RetentionSettings)>,
    /// How often pending audit records are sealed into the chain.
    seal_every: std::time::Duration,
    /// Runs and restarts the background tasks; `/health/live` asks it.
    supervisor: Supervisor,
    /// Reads the gateway's MESH inbox, when `[mesh]` is configured.
    mesh_inbox: Option<crate::mesh_inbox::MeshInbox>,
}

/// The audit pseudonym key: every audit record names its subject with it.
pub fn audit_keys(settings: &Settings) -> Result<crate::pseudonym::PseudonymKeys, StartupError> {
    let Some(k) = settings.keys.pseudonym.get("audit") else {
        return Err(StartupError::AuditKeys(
            "not configured: audit records name their subject by the audit pseudonym".into(),
        ));
    };
    crate::pseudonym::PseudonymKeys::load("audit", k)
        .map_err(|e| StartupError::AuditKeys(e.to_string()))
}

impl Application {
    /// Loads the storage keys (refusing to start without them), connects the store
    /// (applying migrations), loads keys and mappings, and binds.
    pub async fn build(settings: &Settings, production: bool) -> Result<Self, StartupError> {
        let auth = Authenticator::from_settings(&settings.auth, production).await?;
        let storage_keys = Arc::new(StorageKeys::load(settings.keys.storage.as_ref())?);
        let routing = Routing::load(&settings.mappings.dir).map_err(StartupError::Mappings)?;
        let datasets = Arc::new(
            Datasets::load(&settings.mappings.dir, &routing).map_err(StartupError::Mappings)?,
        );
        // Bound first: `sandbox:<id>` endpoints resolve against the address bound.
        let listener = std::net::TcpListener::bind(&settings.server.bind).map_err(|source| {
            StartupError::Bind {
                bind: settings.server.bind.clone(),
                source,
            }
        })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            bind: settings.server.bind.clone(),
            source,
        })?;
        let settings = &own_sandbox(settings, address);
        let store = store::connect_with_keys(&settings.database, storage_keys).await?;
        let metrics = Arc::new(Metrics::new(settings.telemetry.metrics_token.as_ref())?);
        // Built whenever providers are configured (tests drive it by hand); run in the
        // background when delivery.enabled.
        let deliverer = if settings.delivery.enabled
            || !settings.providers.is_empty()
            || !settings.gp_callbacks.is_empty()
        {
            Some(Deliverer::new(
                settings,
                store.clone(),
                &routing,
                datasets,
                metrics.clone(),
            )?)
        } else {
            None
        };
        // One client for the mailbox, shared by the worker's sends, the inbox and
        // `/health/ready`, so that health reports the last contact of any of them.
        let mesh = match (
            deliverer.as_ref().and_then(Deliverer::mesh_client),
            &settings.mesh,
        ) {
            (Some(client), _) => Some(client),
            (None, Some(config)) => Some(Arc::new(
                crate::mesh::MeshClient::new(config)
                    .map_err(|e| StartupError::Delivery(e.into()))?,
            )),
            (None, None) => None,
        };
        let audit_keys = audit_keys(settings)?;
        let (checkpoint_keys, signer) = match &settings.audit.checkpoint {
            Some(c) => (
                Some(crate::audit::checkpoint::VerifyingKeys::from_settings(c)?),
                match &c.private_key_file {
                    Some(_) => Some((
                        crate::audit::checkpoint::Signer::from_settings(c)?,
                        std::time::Duration::from_secs(c.interval_seconds.max(1)),
                    )),
                    None => None,
                },
            ),
            None => (None, None),
        };
        let store_for_retention = store.clone();
        let supervisor = Supervisor::new(settings.background.clone(), metrics.clone());
        let gateway = AppState {
            store,
            routing: Arc::new(routing),
            auth,
            minimum_age_years: settings.referral.minimum_age_years,
            max_body_bytes: settings.server.max_body_bytes,
            audit_keys: Arc::new(audit_keys),
            checkpoint_keys,
            checkpoint_signer: signer.as_ref().map(|(s, _)| s.clone()),
            gp_callbacks: Arc::new(GpCallbacks::new(&settings.gp_callbacks)),
            metrics,
            limits: Arc::new(crate::rate_limit::RateLimits::from_settings(
                &settings.rate_limit,
            )),
            recipients: Arc::new(crate::operations::Recipients::of(settings)),
            ready_timeout: std::time::Duration::from_millis(settings.server.ready_timeout_ms),
            mesh: mesh.clone(),
        };
        let mesh_inbox = mesh.and_then(|client| {
            crate::mesh_inbox::MeshInbox::new(settings, gateway.clone(), client)
        });
        let data = web::Data::new(gateway.clone());
        let tasks = web::Data::new(supervisor.clone());
        let limits = web::Data::new(crate::limits::Limits::from_settings(&settings.server));
        let console = if settings.console.enabled {
            Some(web::Data::new(
                crate::console::Console::from_settings(settings)
                    .map_err(|e| StartupError::Console(e.to_string()))?,
            ))
        } else {
            None
        };
        let sandbox = if settings.sandbox.enabled {
            let jwks = match &settings.sandbox.client_jwks_file {
                Some(file) => Some(std::fs::read_to_string(file).map_err(|e| {
                    StartupError::Sandbox(format!("cannot read {}: {e}", file.display()))
                })?),
                None => None,
            };
            Some(web::Data::new(
                Sandbox::new(jwks.as_deref()).map_err(StartupError::Sandbox)?,
            ))
        } else {
            None
        };
        let mut server = HttpServer::new(move || {
            let mut app = App::new()
                .app_data(data.clone())
                .app_data(crate::params::extractors::query_config())
                .app_data(crate::params::extractors::path_config())
                .app_data(crate::params::extractors::json_config())
                .app_data(tasks.clone())
                .app_data(limits.clone())
                // Inside the request context, so that what it counts and logs is the
                // answer the client gets.
                .wrap(actix_web::middleware::from_fn(crate::limits::guard))
                .wrap(actix_web::middleware::from_fn(request_context))
                .configure(crate::http::configure);
            if let Some(console) = &console {
                app = app
                    .app_data(console.clone())
                    .configure(crate::console::configure);
            }
            if let Some(sandbox) = &sandbox {
                app = app
                    .app_data(sandbox.clone())
                    .configure(crate::http::sandbox::configure);
            }
            app.default_service(web::to(crate::http::not_found))
        })
        .shutdown_timeout(30)
        .client_request_timeout(ms(settings.server.client_request_timeout_ms))
        .keep_alive(match settings.server.keep_alive_ms {
            0 => actix_web::http::KeepAlive::Disabled,
            keep => actix_web::http::KeepAlive::Timeout(ms(keep)),
        })
        .client_disconnect_timeout(ms(settings.server.client_disconnect_timeout_ms))
        .tls_handshake_timeout(ms(settings.server.tls_handshake_timeout_ms))
        .max_connections(settings.server.max_connections)
        .max_connection_rate(settings.server.max_connection_rate);
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        let server = match &settings.server.tls {
            Some(tls) => {
                let config = crate::tls::server_config(
                    &tls.cert_file,
                    &tls.key_file,
                    tls.client_ca_file.as_deref(),
                )?;
                server.listen_rustls_0_23(listener, config)
            }
            None => server.listen(listener),
        }
        .map_err(|source| StartupError::Bind {
            bind: settings.server.bind.clone(),
            source,
        })?
        .run();
        Ok(Self {
            settings: settings.clone(),
            address,
            server,
            gateway,
            deliverer,
            run_worker: settings.delivery.enabled,
            signer,
            retention: settings
                .retention
                .enabled
                .then(|| (store_for_retention, settings.retention.clone())),
            seal_every: std::time::Duration::from_millis(settings.audit.seal_interval_ms.max(1)),
            supervisor,
            mesh_inbox,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The start-up summary (see [`crate::summary`]), with the recipients paused now.
    pub async fn summary(&self, environment: Option<&str>, layers: &[String]) -> String {
        let paused: Vec<String> = match self.gateway.store.recipient_controls().await {
            Ok(controls) => controls
                .into_iter()
                .filter(|c| c.paused_at.is_some())
                .map(|c| c.recipient)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read which recipients are paused");
                Vec::new()
            }
        };
        crate::summary::render(&self.settings, environment, layers, self.address, &paused)
    }

    /// The shared state, for tests and tools that inspect the store directly.
    pub fn gateway(&self) -> &AppState {
        &self.gateway
    }

    /// The outbox worker, when providers are configured.
    pub fn deliverer(&self) -> Option<&Deliverer> {
        self.deliverer.as_ref()
    }

    /// The reader of the gateway's MESH inbox (tests drive it).
    pub fn mesh_inbox(&self) -> Option<&crate::mesh_inbox::MeshInbox> {
        self.mesh_inbox.as_ref()
    }

    /// The supervisor of the background tasks (tests add tasks to it).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Runs until stopped (SIGINT/SIGTERM): in-flight requests finish, then the
    /// delivery worker finishes its attempts and gives back its leases, the
    /// retention task stops, and the sealer seals what is still pending. The
    /// background tasks run under the [`Supervisor`], which restarts one that fails.
    pub async fn run(self) -> std::io::Result<()> {
        let tasks = self.supervisor;
        if let (Some(d), true) = (self.deliverer, self.run_worker) {
            tasks.spawn("delivery", move |stop| {
                let d = d.clone();
                async move {
                    d.run(stop).await;
                    Ok(())
                }
            });
        }
        if let Some((signer, every)) = self.signer {
            let store = self.gateway.store.clone();
            tasks.spawn("audit-checkpoints", move |stop| {
                let (signer, store) = (signer.clone(), store.clone());
                async move {
                    signer.run(store, every, stop).await;
                    Ok(())
                }
            });
        }
        if let Some((store, settings)) = self.retention {
            tasks.spawn("retention", move |stop| {
                let (store, settings) = (store.clone(), settings.clone());
                async move {
                    crate::retention::run(store, settings, stop).await;
                    Ok(())
                }
            });
        }
        if let Some(inbox) = self.mesh_inbox {
            // MESH may be away for a while: deliveries wait and retry, so a failed
            // handshake is a warning, not a reason to stay down.
            if let Some(mesh) = &self.gateway.mesh {
                match mesh.handshake().await {
                    Ok(()) => tracing::info!(mailbox = %mesh.mailbox(), "MESH handshake ok"),
                    Err(e) => {
                        tracing::warn!(mailbox = %mesh.mailbox(), error = %e, "MESH handshake failed")
                    }
                }
            }
            tasks.spawn("mesh-inbox", move |stop| {
                let inbox = inbox.clone();
                async move {
                    inbox.run(stop).await;
                    Ok(())
                }
            });
        }
        let (store, every) = (self.gateway.store.clone(), self.seal_every);
        tasks.spawn("audit-sealer", move |stop| {
            let store = store.clone();
            async move {
                crate::audit::seal_periodically(store, every, stop).await;
                Ok(())
            }
        });
        let result = self.server.await;
        tasks.shutdown().await;
        // What the last requests and attempts wrote, sealed before the process ends.
        if let Err(e) = self.gateway.store.seal_audit().await {
            tracing::error!(error = %e, "sealing audit records at shutdown failed; they stay pending");
        }
        result
    }
}

/// `settings` with `sandbox:<id>` endpoints resolved to this gateway's receivers at
/// `address`, warning of sandbox URLs written out with another port.
fn own_sandbox(settings: &Settings, address: SocketAddr) -> Settings {
    let scheme = if settings.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if address.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        address.ip()
    };
    let base = format!("{scheme}://{}", SocketAddr::new(host, address.port()));
    for key in settings.sandbox_port_mismatches(address.port()) {
        tracing::warn!(
            key,
            bound = %address,
            "{key} points at a sandbox receiver on a port this gateway did not bind; \
             write it as sandbox:<provider> to follow server.bind"
        );
    }
    settings.with_sandbox_at(&base)
}

fn ms(millis: u64) -> std::time::Duration {
    std::time::Duration::from_millis(millis)
}

/// One span per request with its request id; echoes `X-Request-Id` and
/// `X-Correlation-Id` on every response, errors included; counts and times every
/// request for `/metrics` by its route pattern (never the concrete path).
async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let header = |name: &str| req.headers().get(name).cloned();
    let request_id = header(REQUEST_ID);
    let correlation_id = header(CORRELATION_ID);
    // Only a well-formed UUID goes into the log; anything else could be arbitrary text.
    let log_id = request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
        .unwrap_or_else(uuid::Uuid::new_v4);
    let span = tracing::info_span!(
        "request",
        request_id = %log_id,
        method = %req.method(),
        route = tracing::field::Empty,
    );
    req.extensions_mut().insert(log_id);
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|gw| gw.metrics.clone());
    let method = req.method().clone();
    // The pattern the path matches, read before the handler runs too, so that a
    // request failing without a response is still counted under its route.
    let before = req.match_pattern();
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let _enter = span.enter();
    let elapsed = started.elapsed().as_secs_f64();
    let (route, status) = match &result {
        Ok(res) => (res.request().match_pattern(), res.status()),
        Err(e) => (before, e.as_response_error().status_code()),
    };
    let route = route.unwrap_or_else(|| UNMATCHED.to_owned());
    if let Some(metrics) = &metrics {
        metrics.request(&route, method.as_str(), status.as_u16(), elapsed);
    }
    match result {
        Ok(res) => {
            let mut res = res;
            span.record("route", route.as_str());
            for (name, value) in [(REQUEST_ID, request_id), (CORRELATION_ID, correlation_id)] {
                if let Some(value) = value.filter(|v| v.to_str().is_ok_and(|s| s.len() <= 128)) {
                    res.headers_mut()
                        .insert(HeaderName::from_static(name), value);
                }
            }
            tracing::info!(
                status = res.status().as_u16(),
                latency_ms = elapsed * 1000.0,
                "request finished"
            );
            Ok(res)
        }
        Err(e) => {
            tracing::warn!(latency_ms = elapsed * 1000.0, "request failed");
            Err(e)
        }
    }
}
