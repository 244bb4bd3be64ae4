//! Crash safety: the gateway is killed (SIGKILL) while referrals are being accepted and
//! delivered (over HTTPS, and over MESH), then restarted. Every referral that got a 200
//! reaches the provider, once by its de-duplication key (over MESH: one message per
//! local id), nothing that was stored is half-stored, and every accept's audit record
//! is in an unbroken chain.
#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/mesh_sandbox.rs"]
#[allow(dead_code)]
mod mesh_sandbox;
#[path = "api/provider.rs"]
#[allow(dead_code)]
mod provider;

use helpers::*;
use provider::FakeProvider;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use thrive_gateway::store::DeliveryFilter;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(config: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("THRIVE_ENV")
        .env("THRIVE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(base: &str) {
    let client = bounded_client(2);
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not become ready");
}

/// Ends the test binary, naming the step it was in, if the test outlives `limit`:
/// a step that never returns then fails here, not at CI's own time limit. Dropping
/// it (the test ended, or panicked) lets it go.
struct Watchdog {
    step: std::sync::Arc<std::sync::Mutex<&'static str>>,
    _alive: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(test: &'static str, limit: Duration) -> Self {
        let step = std::sync::Arc::new(std::sync::Mutex::new("starting"));
        let (alive, ended) = std::sync::mpsc::channel::<()>();
        let seen = step.clone();
        std::thread::spawn(move || {
            if ended.recv_timeout(limit) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let step = *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Straight to stderr: the test harness keeps a test's own output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{test}: still {step} after {} s; stopping the test binary",
                limit.as_secs()
            );
            std::process::exit(1);
        });
        Self {
            step,
            _alive: alive,
        }
    }

    fn step(&self, step: &'static str) {
        *self
            .step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = step;
    }
}

/// Where the gateway delivers: a provider over HTTPS, or both providers' MESH mailbox.
enum Provider {
    Https(FakeProvider),
    Mesh(mesh_sandbox::MeshSandbox),
}

impl Provider {
    fn config(&self) -> String {
        match self {
            Provider::Https(p) => format!(
                "[providers.bchft]\nendpoint = \"{u}\"\n[providers.prospects]\nendpoint = \"{u}\"\n",
                u = p.url
            ),
            Provider::Mesh(sandbox) => {
                let route = |id: &str| {
                    format!(
                        "[providers.{id}]\ntransport = \"mesh\"\n[providers.{id}.mesh]\nto = \"{}\"\nworkflow_id = \"TEST_WORKFLOW\"\n",
                        mesh_sandbox::PROVIDER
                    )
                };
                format!(
                    "{}{}{}",
                    sandbox.config(mesh_sandbox::GATEWAY, "password", 20_000_000),
                    route("bchft"),
                    route("prospects")
                )
            }
        }
    }

    /// Each delivery's de-duplication key as the provider received it, by referral.
    async fn received(&self) -> HashMap<String, Vec<String>> {
        let mut by_referral: HashMap<String, Vec<String>> = HashMap::new();
        let seen: Vec<(serde_json::Value, String)> = match self {
            Provider::Https(p) => p
                .seen()
                .into_iter()
                .map(|s| (s.body, s.request_id))
                .collect(),
            Provider::Mesh(sandbox) => sandbox
                .inbox_of(mesh_sandbox::PROVIDER)
                .await
                .into_iter()
                .map(|m| {
                    (
                        serde_json::from_slice(&m.body).unwrap(),
                        m.local_id.unwrap_or_default(),
                    )
                })
                .collect(),
        };
        for (body, key) in seen {
            let referral = body["referral"]["id"].as_str().unwrap().to_owned();
            by_referral.entry(referral).or_default().push(key);
        }
        by_referral
    }
}

async fn killed_mid_flight(test: &'static str, db: Db, provider: Provider) {
    let dog = Watchdog::start(test, Duration::from_secs(300));
    dog.step("creating the database");
    let (url, _dir) = fresh_database(db).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crash.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "{url}"
[auth.issuers.test]
issuer = "{TEST_ISSUER}"
jwks_file = "{KEYS}/test-jwks.json"
[auth.clients.gp-a]
role = "gp-system"
practices = ["Y90001", "Y90010"]
[delivery]
enabled = true
poll_interval_ms = 20
lease_seconds = 2
initial_backoff_ms = 10
max_backoff_ms = 50
{p}
{keys}
{storage}
"#,
            p = provider.config(),
            keys = pseudonym_keys_toml(),
            storage = storage_keys_toml(),
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    dog.step("starting the gateway");
    let mut gateway = start(&config, port);
    wait_ready(&base).await;

    // Send referrals from several tasks, in bursts of six so that SQLite's writer
    // commits several in one group; kill the gateway while they are in flight.
    dog.step("sending referrals");
    let client = bounded_client(30);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (client, base, answered) = (client.clone(), base.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i / 6 * 120)).await;
            let msg = referral();
            let res = client
                .post(format!("{base}/fhir/r4/$process-message"))
                .bearer_auth(token("gp-a"))
                .header("Content-Type", "application/fhir+json")
                .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                .body(msg.to_string())
                .send()
                .await;
            match res {
                Ok(r) if r.status() == 200 => {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    body["entry"][1]["resource"]["id"]
                        .as_str()
                        .map(str::to_owned)
                }
                _ => None,
            }
        }));
    }
    // Kill once some referrals are through and more are on the way, however slow the
    // machine is.
    for _ in 0..600 {
        if answered.load(std::sync::atomic::Ordering::SeqCst) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let mut accepted = HashSet::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            accepted.insert(id);
        }
    }
    assert!(
        !accepted.is_empty(),
        "some referrals were accepted before the kill"
    );

    // Restart, on a port of its own (the old one may have been taken meanwhile), and let
    // the worker finish.
    dog.step("restarting the gateway");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut gateway = start(&config, port);
    wait_ready(&base).await;
    dog.step("waiting for every delivery");
    let settings = test_settings(&url, "");
    let keys =
        thrive_gateway::store::crypto::StorageKeys::load(settings.keys.storage.as_ref()).unwrap();
    let store = thrive_gateway::store::connect_with_keys(&settings.database, keys.into())
        .await
        .unwrap();
    let mut done = false;
    for _ in 0..200 {
        let queued = store
            .list_deliveries(&DeliveryFilter::default(), 1000)
            .await
            .unwrap();
        if queued.iter().all(|d| d.state.as_str() == "delivered") {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    assert!(
        done,
        "every stored referral was delivered after the restart"
    );

    // Every referral that got a 200 is stored whole and delivered.
    dog.step("checking what the provider received");
    let received = provider.received().await;
    let request_ids_by_referral: HashMap<String, HashSet<String>> = received
        .iter()
        .map(|(r, keys)| (r.clone(), keys.iter().cloned().collect()))
        .collect();
    if matches!(provider, Provider::Mesh(_)) {
        // MESH does not de-duplicate: the gateway must have sent each message once.
        for (referral, keys) in &received {
            assert_eq!(keys.len(), 1, "referral {referral} sent once over MESH");
        }
    }
    for id in &accepted {
        let row = store
            .referral(id)
            .await
            .unwrap()
            .expect("a 200 means stored");
        let deliveries = store.deliveries_for(&row.id).await.unwrap();
        assert_eq!(deliveries.len(), 1);
        let keys = request_ids_by_referral.get(id).expect("delivered");
        assert_eq!(keys.len(), 1, "one de-duplication key per referral");
        assert!(keys.contains(&deliveries[0].request_id));
    }
    // Nothing stored is half-stored: each referral has its delivery and its message.
    let all = store
        .list_deliveries(&DeliveryFilter::default(), 1000)
        .await
        .unwrap();
    assert_eq!(all.len() as i64, store.count_referrals().await.unwrap());
    assert_eq!(
        request_ids_by_referral.len(),
        all.len(),
        "nothing stored was left undelivered"
    );

    dog.step("checking the audit trail");
    // Every accept's audit record outlived the kills (written pending with the
    // referral, sealed after), and the chain is whole.
    let trail = store.audit_after(0, 100_000).await.unwrap();
    assert_eq!(store.audit_pending().await.unwrap(), 0);
    for id in &accepted {
        assert!(
            trail.iter().any(|r| r.action == "referral.new"
                && r.outcome == "accepted"
                && r.referral_id.as_deref() == Some(id.as_str())
                && r.seq.is_some()),
            "an accepted referral's audit record is in the chain"
        );
    }
    let verified = thrive_gateway::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(verified.problem, None);
    assert_eq!(verified.records, trail.len() as u64);
    dog.step("cleaning up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let provider = Provider::Https(FakeProvider::start(vec![]).await);
    killed_mid_flight("sqlite", Db::Sqlite, provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let provider = Provider::Https(FakeProvider::start(vec![]).await);
    killed_mid_flight("postgres", Db::Postgres, provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_over_mesh() {
    let provider = Provider::Mesh(mesh_sandbox::MeshSandbox::start().await);
    killed_mid_flight("sqlite_over_mesh", Db::Sqlite, provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_mesh() {
    let provider = Provider::Mesh(mesh_sandbox::MeshSandbox::start().await);
    killed_mid_flight("postgres_over_mesh", Db::Postgres, provider).await;
}
