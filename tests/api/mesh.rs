//! MESH as a delivery transport, against NHS England's own MESH sandbox (PyPI
//! `mesh-sandbox`, in the virtual environment `.ci/run` makes at
//! `target/mesh-sandbox`, or the `uvicorn` named by `THRIVE_MESH_SANDBOX`).

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::FAST_RETRIES;
use thrive_gateway::config::mesh::MeshSettings;
use thrive_gateway::mesh::{MeshClient, Outgoing};
use thrive_gateway::store::DeliveryFilter;

/// The sandbox's own mailboxes (every password "password") and shared key.
const GATEWAY: &str = "X26ABC1";
const PROVIDER: &str = "X26ABC2";
const SHARED_KEY: &str = "TestKey";

/// A running sandbox on a free port, stopped when dropped.
pub struct MeshSandbox {
    pub url: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
    /// One sandbox at a time: each is a Python server, slow to start on two cores.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Drop for MeshSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MeshSandbox {
    pub async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let uvicorn = std::env::var("THRIVE_MESH_SANDBOX").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/mesh-sandbox/bin/uvicorn"
            )
            .to_owned()
        });
        assert!(
            std::path::Path::new(&uvicorn).exists(),
            "no MESH sandbox at {uvicorn}: run `python3 -m venv target/mesh-sandbox && \
             target/mesh-sandbox/bin/pip install mesh-sandbox` (as .ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(&uvicorn)
            .args(["mesh_sandbox.api:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .env("AUTH_MODE", "full")
            .env("STORE_MODE", "file")
            .env("MAILBOXES_DATA_DIR", dir.path().join("mailboxes"))
            .env("SHARED_KEY", SHARED_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Dropped (and so stopped) however this ends.
        let sandbox = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
            _turn: turn,
        };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            let ping = format!("{}/messageexchange/_ping", sandbox.url);
            if let Ok(r) = client.get(ping).send().await
                && r.status().is_success()
            {
                return sandbox;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the MESH sandbox did not start");
    }

    fn secret(&self, name: &str, value: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path
    }

    /// `[mesh]` for `mailbox` with this password, as TOML.
    pub fn config(&self, mailbox: &str, password: &str, max_chunk_bytes: usize) -> String {
        format!(
            "[mesh]\nurl = \"{url}\"\nmailbox = \"{mailbox}\"\npassword = {{ file = \"{p}\" }}\n\
             shared_key = {{ file = \"{k}\" }}\nmax_chunk_bytes = {max_chunk_bytes}\ntimeout_ms = 5000\n",
            url = self.url,
            p = self
                .secret(&format!("{mailbox}-password"), password)
                .display(),
            k = self.secret("shared-key", SHARED_KEY).display(),
        )
    }

    /// A client of `mailbox`, as the provider's own system would use it.
    pub fn client(&self, mailbox: &str) -> MeshClient {
        let toml = self.config(mailbox, "password", 20_000_000);
        let table: toml::Table = toml.parse().unwrap();
        let settings: MeshSettings = table["mesh"].clone().try_into().unwrap();
        MeshClient::new(&settings).unwrap()
    }
}

/// Both providers over MESH to `to`, from the gateway's mailbox.
fn mesh_providers(sandbox: &MeshSandbox, to: &str, password: &str, chunk: usize) -> String {
    let provider = |id: &str| {
        format!(
            "[providers.{id}]\ntransport = \"mesh\"\ntimeout_ms = 5000\n[providers.{id}.mesh]\nto = \"{to}\"\nworkflow_id = \"TEST_WORKFLOW\"\n"
        )
    };
    format!(
        "{}{}{}{FAST_RETRIES}",
        sandbox.config(GATEWAY, password, chunk),
        provider("bchft"),
        provider("prospects")
    )
}

async fn accept(app: &TestApp) -> String {
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What reached the provider's inbox: one message per referral, as sent.
async fn received(sandbox: &MeshSandbox) -> Vec<(serde_json::Value, usize)> {
    let provider = sandbox.client(PROVIDER);
    let mut all = Vec::new();
    for id in provider.inbox().await.unwrap() {
        let (bytes, chunks) = provider.download(&id).await.unwrap();
        all.push((serde_json::from_slice(&bytes).unwrap(), chunks));
    }
    all
}

async fn a_referral_reaches_the_provider_s_mailbox_minimised_and_chunked_when_large(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let app = TestApp::spawn_with(
        db,
        &mesh_providers(&sandbox, PROVIDER, "password", 20_000_000),
    )
    .await;
    let id = accept(&app).await;
    let stored = app.store.referral(&id).await.unwrap().unwrap();
    assert_eq!(app.deliver().await, 1);
    let d = &app.store.deliveries_for(&id).await.unwrap()[0];
    assert_eq!(d.state.as_str(), "delivered");

    let got = received(&sandbox).await;
    assert_eq!(got.len(), 1);
    let (body, chunks) = &got[0];
    assert_eq!(*chunks, 1);
    assert_eq!(body["notice"], "referral");
    assert_eq!(body["referral"]["reference"], stored.reference.as_str());
    let record = app
        .audit()
        .await
        .into_iter()
        .rfind(|a| a.action == "delivery.referral")
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&record.detail).unwrap();
    // Exactly the fields the provider's dataset names, the NHS number never.
    let mut sent: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut allowed: Vec<&str> = detail["receipt"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    sent.sort_unstable();
    allowed.sort_unstable();
    assert_eq!(sent, allowed);
    assert!(!body.to_string().contains(FIXTURE_PATIENT_DATA[0]));
    assert!(detail["mesh_message_id"].is_string(), "{detail}");
    assert_eq!(detail["target"], format!("mesh:{PROVIDER}"));

    // A large payload is sent in chunks and arrives whole.
    let small = TestApp::spawn_with(db, &mesh_providers(&sandbox, PROVIDER, "password", 64)).await;
    accept(&small).await;
    assert_eq!(small.deliver().await, 1);
    let got = received(&sandbox).await;
    let chunked: Vec<_> = got.iter().filter(|(_, chunks)| *chunks > 1).collect();
    assert_eq!(chunked.len(), 1, "{got:?}");
    assert_eq!(chunked[0].0["notice"], "referral");
    assert_eq!(
        chunked[0].0["data"].as_object().map(|d| d.keys().count()),
        body["data"].as_object().map(|d| d.keys().count())
    );
}

on_both_databases!(a_referral_reaches_the_provider_s_mailbox_minimised_and_chunked_when_large);

async fn a_wrong_password_or_an_unknown_mailbox_is_a_dead_letter_saying_so(db: Db) {
    let sandbox = MeshSandbox::start().await;
    for (to, password, status) in [
        (PROVIDER, "not-the-password", 403),
        ("X26NOPE", "password", 417),
    ] {
        let app =
            TestApp::spawn_with(db, &mesh_providers(&sandbox, to, password, 20_000_000)).await;
        accept(&app).await;
        app.deliver().await;
        let dead = app
            .store
            .list_deliveries(&DeliveryFilter::dead(), 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{to}");
        let error = dead[0].last_error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with(&format!("mesh:{to} answered {status}")),
            "{error}"
        );
    }
    assert!(received(&sandbox).await.is_empty());
}

on_both_databases!(a_wrong_password_or_an_unknown_mailbox_is_a_dead_letter_saying_so);

/// An attempt whose send reached MESH but whose answer was lost: the next attempt
/// finds the message by its local id and does not send it again.
async fn a_message_mesh_already_holds_is_not_sent_again(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let app = TestApp::spawn_with(
        db,
        &mesh_providers(&sandbox, PROVIDER, "password", 20_000_000),
    )
    .await;
    let id = accept(&app).await;
    let delivery = &app.store.deliveries_for(&id).await.unwrap()[0];
    // The first attempt's send, whose answer never came back.
    let gateway = sandbox.client(GATEWAY);
    gateway
        .send_message(Outgoing {
            to: PROVIDER,
            workflow_id: "TEST_WORKFLOW",
            local_id: &delivery.request_id,
            subject: "thrive-gateway delivery",
            body: b"{\"notice\": \"referral\"}",
        })
        .await
        .unwrap();
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "UPDATE deliveries SET attempts = 1 WHERE id = '{}'",
            delivery.id
        ),
    )
    .await;
    assert_eq!(app.deliver().await, 1);
    assert_eq!(
        app.store.deliveries_for(&id).await.unwrap()[0]
            .state
            .as_str(),
        "delivered"
    );
    assert_eq!(received(&sandbox).await.len(), 1, "sent once");
}

on_both_databases!(a_message_mesh_already_holds_is_not_sent_again);
