//! Log lines carry request ids, routes and statuses, and never patient data, whatever
//! happens to the referral. Its own test binary, because it owns the global subscriber.
#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_data_reaches_the_logs() {
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
