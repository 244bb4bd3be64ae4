//! The whole referral flow with canary patient data: a distinctive NHS number, name,
//! date of birth, phone, email, address and note. None of them may appear in the log
//! output, an error body, the metrics, the audit trail or an audit export; in the provider's payload
//! they appear only where the provider's dataset mapping names them. Its own test
//! binary, because it owns the global log subscriber. Runs on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/provider.rs"]
#[allow(dead_code)]
mod provider;

use helpers::*;
use provider::{FakeProvider, Step};
use serde_json::{Value, json};
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

const NHS_NUMBER: &str = "7182936453";
const NHS_NUMBER_SPACED: &str = "718 293 6453";
const GIVEN: &str = "Canarius";
const FAMILY: &str = "Quillfeather-Zebedee";
const BIRTH_DATE: &str = "1969-02-03";
const PHONE: &str = "07700 900777";
const EMAIL: &str = "canarius.quill@example.org";
const ADDRESS_LINE: &str = "17 Canarywharf Lane";
const TOWN: &str = "Cradley Heathfield";
const POSTCODE: &str = "B64 7QZ";
const NOTE: &str = "Canary note: left the foundry after a fall";

/// Values the prospects dataset sends (named by its mapping): given and family name
/// (`copy`) and the phone (`first_of` phone, email) for contacting the person.
const MAPPED: [&str; 3] = [GIVEN, FAMILY, PHONE];
/// Values no mapping sends as they are.
const NEVER_SENT: [&str; 7] = [
    NHS_NUMBER,
    BIRTH_DATE,
    EMAIL,
    ADDRESS_LINE,
    TOWN,
    POSTCODE,
    NOTE,
];

/// A number that fails the check, sent in a refused message.
const BAD_NHS_NUMBER: &str = "7182936454";

fn all_canaries() -> Vec<&'static str> {
    let mut v = vec![NHS_NUMBER, NHS_NUMBER_SPACED, BAD_NHS_NUMBER];
    v.extend(MAPPED);
    v.extend(NEVER_SENT);
    v
}

fn canary_referral() -> Value {
    let mut r = referral();
    let p = at::PATIENT;
    set(
        &mut r,
        &format!("{p}/identifier/0/value"),
        json!(NHS_NUMBER_SPACED),
    );
    set(&mut r, &format!("{p}/name/0/given"), json!([GIVEN]));
    set(&mut r, &format!("{p}/name/0/family"), json!(FAMILY));
    set(&mut r, &format!("{p}/birthDate"), json!(BIRTH_DATE));
    set(&mut r, &format!("{p}/telecom/0/value"), json!(PHONE));
    set(&mut r, &format!("{p}/telecom/1/value"), json!(EMAIL));
    set(
        &mut r,
        &format!("{p}/address/0/line"),
        json!([ADDRESS_LINE]),
    );
    set(&mut r, &format!("{p}/address/0/city"), json!(TOWN));
    set(
        &mut r,
        &format!("{p}/address/0/postalCode"),
        json!(POSTCODE),
    );
    set(
        &mut r,
        &format!("{}/note/0/text", at::SERVICE_REQUEST),
        json!(NOTE),
    );
    r
}

fn assert_clean(what: &str, text: &str) {
    for canary in all_canaries() {
        assert!(!text.contains(canary), "{what} holds a canary value");
    }
}

/// Runs the flow on one database; returns every answer body the callers saw.
async fn flow(db: Db) -> Vec<String> {
    let provider = FakeProvider::start(vec![Step::status(200)]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let mut bodies = Vec::new();

    // Accepted, and the same message again (duplicate).
    let ok = canary_referral();
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", &ok, &ids).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    bodies.push(reply.text);
    let reply = app.send_with("gp-a", &ok, &ids).await;
    assert_eq!(reply.status, 409);
    bodies.push(reply.text);

    // Refused in every way that reads the message: bad NHS number, bad type, another
    // practice's system, no consent.
    let mut bad = canary_referral();
    set(
        &mut bad,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("7182936454"),
    );
    set(&mut bad, &format!("{}/birthDate", at::PATIENT), json!(12));
    set(
        &mut bad,
        &format!("{}/telecom/0/value", at::PATIENT),
        json!({"x": PHONE}),
    );
    let reply = app.send("gp-a", &bad).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    bodies.push(reply.text);
    let reply = app.send("gp-b", &canary_referral()).await;
    assert_eq!(reply.status, 403);
    bodies.push(reply.text);
    let mut no_consent = canary_referral();
    set(
        &mut no_consent,
        &format!("{}/status", at::CONSENT),
        json!("rejected"),
    );
    let reply = app.send("gp-a", &no_consent).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    bodies.push(reply.text);

    // Delivered: the payload holds exactly the mapped canaries.
    assert_eq!(app.deliver().await, 1);
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    let payload = seen[0].body.to_string();
    for mapped in MAPPED {
        assert!(
            payload.contains(mapped),
            "the mapping names {mapped:?}, so it is sent"
        );
    }
    for never in NEVER_SENT {
        assert!(
            !payload.contains(never),
            "no mapping names this value, yet it was sent"
        );
    }
    assert!(payload.contains("B64"), "the postcode district is mapped");

    // Read back by the GP, a status event, a cancellation.
    let reply = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await;
    assert_eq!(reply.status, 200);
    bodies.push(reply.text);
    let reply = app
        .client
        .post(app.url(&format!("/provider/v1/referrals/{id}/events")))
        .bearer_auth(token("prospects"))
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .json(&json!({"event": "accepted", "occurred_at": just_now()}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    bodies.push(reply.text().await.unwrap());
    let reply = app.send("gp-a", &cancellation(&ok)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    bodies.push(reply.text);

    // An auditor's subject access request, and both exports.
    let reply = app
        .client
        .post(app.url("/audit/v1/subjects"))
        .bearer_auth(token("auditor"))
        .json(&json!({"nhs_number": NHS_NUMBER}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let subjects = reply.text().await.unwrap();
    assert!(
        subjects.contains(&id),
        "the subject access request finds the referral"
    );
    bodies.push(subjects);
    for format in ["fhir", "csv"] {
        let reply = app
            .get(
                "auditor",
                &format!("/audit/v1/export?from=2000-01-01&to=2100-01-01&format={format}"),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_clean(&format!("the {format} audit export"), &reply.text);
    }
    let records = app.audit().await;
    assert!(records.len() >= 10);
    assert_clean("the audit trail", &format!("{records:?}"));

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("thrive_referrals_total"),
        "the flow was counted"
    );
    assert_clean("the metrics", &metrics);
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_patient_data_appears_nowhere_but_where_a_mapping_sends_it() {
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

    for db in [Db::Sqlite, Db::Postgres] {
        for body in flow(db).await {
            assert_clean("an answer to a caller", &body);
        }
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("referral accepted"), "the flow was logged");
    assert_clean("the log output", &logs);
}
