//! Log lines carry request ids, routes and statuses, and never patient data, whatever
//! happens to the referral. Its own test binary, because it owns the global subscriber.
#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "api/mesh_sandbox.rs"]
#[allow(dead_code)]
mod mesh_sandbox;

use helpers::*;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every test's log lines, as JSON: the subscriber is global, so installed once.
fn captured() -> &'static Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        use tracing_subscriber::prelude::*;
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("debug"))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || writer.clone()),
            )
            .init();
        captured
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_data_reaches_the_logs() {
    let captured = captured();

    let app = TestApp::spawn(Db::Sqlite).await;
    let ok = referral();
    let ids = Ids::fresh();
    assert_eq!(app.send_with("gp-a", &ok, &ids).await.status, 200);
    assert_eq!(app.send_with("gp-a", &ok, &ids).await.status, 409);
    let mut bad = referral();
    set(
        &mut bad,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("9990000019"),
    );
    set(&mut bad, &format!("{}/gender", at::PATIENT), json!(12));
    assert_eq!(app.send("gp-a", &bad).await.status, 400);
    assert_eq!(app.send("gp-b", &referral()).await.status, 403);
    assert_eq!(app.send("gp-a", &cancellation(&ok)).await.status, 200);
    assert_eq!(app.send("gp-a", &withdrawal(&ok)).await.status, 409);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&ids.request.to_string()),
        "requests are logged with their id"
    );
    assert!(logs.contains("referral accepted"));
    for secret in FIXTURE_PATIENT_DATA
        .iter()
        .chain(["9990000019", "Oldbury", "B69 4AA"].iter())
    {
        assert!(!logs.contains(secret), "a log line holds patient data");
    }
}

/// A provider that is down: each failed attempt is a WARN line naming the recipient,
/// the host it went to and why, and the dead letter it ends as is one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_attempt_is_a_warning_with_recipient_host_and_reason() {
    for db in [Db::Sqlite, Db::Postgres] {
        failed_attempts_are_warnings(db).await;
    }
}

async fn failed_attempts_are_warnings(db: Db) {
    let captured = captured();
    let before = captured.0.lock().unwrap().len();
    let down = "http://127.0.0.1:1/referrals";
    let app = TestApp::spawn_with(
        db,
        &format!(
            "[providers.bchft]\nendpoint = \"{down}\"\n[providers.prospects]\nendpoint = \"{down}\"\n\
             [delivery]\nenabled = false\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\nmax_attempts = 2\n"
        ),
    )
    .await;
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recipient = app.store.referral(&id).await.unwrap().unwrap().provider;
    app.deliver().await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    app.deliver().await;

    let logs = String::from_utf8(captured.0.lock().unwrap()[before..].to_vec()).unwrap();
    let warnings: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "WARN" && l["fields"]["target_host"] == "127.0.0.1:1")
        .collect();
    let messages: Vec<&str> = warnings
        .iter()
        .map(|w| w["fields"]["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        [
            "delivery attempt failed; it will be retried",
            "delivery parked as a dead letter"
        ],
        "{logs}"
    );
    for w in &warnings {
        assert_eq!(w["fields"]["recipient"], recipient.as_str(), "{w}");
        assert_eq!(w["fields"]["reason_class"], "connection-refused", "{w}");
        let reason = w["fields"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("127.0.0.1:1: connection refused"), "{w}");
    }
}

/// A wrong MESH password: MESH answers 403, and the dead letter it makes is a WARN
/// naming the mailbox and the cause, with no secret in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_mesh_password_is_a_warning_naming_the_cause() {
    let captured = captured();
    let before = captured.0.lock().unwrap().len();
    let sandbox = mesh_sandbox::MeshSandbox::start().await;
    let route = |id: &str| {
        format!(
            "[providers.{id}]\ntransport = \"mesh\"\n[providers.{id}.mesh]\nto = \"{}\"\nworkflow_id = \"TEST_WORKFLOW\"\n",
            mesh_sandbox::PROVIDER
        )
    };
    let app = TestApp::spawn_with(
        Db::Sqlite,
        &format!(
            "{}{}{}[delivery]\nenabled = false\n",
            sandbox.config(mesh_sandbox::GATEWAY, "not-the-password", 20_000_000),
            route("bchft"),
            route("prospects")
        ),
    )
    .await;
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    app.deliver().await;

    let logs = String::from_utf8(captured.0.lock().unwrap()[before..].to_vec()).unwrap();
    let target = format!("mesh:{}", mesh_sandbox::PROVIDER);
    let warning = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["level"] == "WARN" && l["fields"]["target_host"] == target.as_str())
        .unwrap_or_else(|| panic!("no WARN naming {target}: {logs}"));
    assert_eq!(
        warning["fields"]["message"], "delivery parked as a dead letter",
        "{warning}"
    );
    let reason = warning["fields"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("answered 403"), "{warning}");
    assert!(!logs.contains("not-the-password"));
}
