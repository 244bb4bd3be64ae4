//! Milestones back to the GP system: where a referral's `MessageHeader.source.endpoint`
//! maps to a configured GP callback, each status event reaches that GP system as a
//! BaRS `servicerequest-response` message, through the same outbox as deliveries.

use crate::events::post;
use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};
use serde_json::{Value, json};

/// The fixture referral's `MessageHeader.source.endpoint`.
const FIXTURE_SOURCE: &str = "https://fhir.nhs.uk/Id/ods-organization-code|Y90001";
const CALLBACK: &str = "emis-test";

/// A referral from Y90001 (routed to prospects), accepted and delivered, with a GP
/// callback for `source` (the trailing `/` shows one is ignored) answering from
/// `gp_script`.
struct Setup {
    app: TestApp,
    gp: FakeProvider,
    provider: FakeProvider,
    referral: String,
    /// The original request.
    message: Value,
    ids: Ids,
}

async fn delivered(db: Db, source: &str, gp_script: Vec<Step>) -> Setup {
    let provider = FakeProvider::start(vec![]).await;
    let gp = FakeProvider::start(gp_script).await;
    let config = provider.config(&format!(
        "{FAST_RETRIES}\n[gp_callbacks.{CALLBACK}]\nsource_endpoint = \"{source}/\"\nendpoint = \"{}\"\ntimeout_ms = 1000\n",
        gp.url
    ));
    let app = TestApp::spawn_with(db, &config).await;
    let message = referral();
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", &message, &ids).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let referral = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.deliver().await, 1);
    assert_eq!(provider.seen().len(), 1, "the provider has the referral");
    Setup {
        app,
        gp,
        provider,
        referral,
        message,
        ids,
    }
}

async fn event(app: &TestApp, referral: &str, body: Value) -> String {
    let request_id = uuid::Uuid::new_v4().to_string();
    let reply = post(app, "prospects", referral, &request_id, &body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    request_id
}

fn happened(name: &str) -> Value {
    json!({"event": name, "occurred_at": just_now()})
}

/// Runs the worker until nothing more is due.
async fn drain(app: &TestApp) {
    for _ in 0..10 {
        if app.deliver().await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `(kind, provider, state, request id)` of every delivery of the referral.
async fn deliveries(app: &TestApp, referral: &str) -> Vec<(String, String, String, String)> {
    app.store
        .deliveries_for(referral)
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            (
                d.kind.to_string(),
                d.provider,
                d.state.to_string(),
                d.request_id,
            )
        })
        .collect()
}

/// The resource of the pushed message's entry of this type.
fn resource<'a>(message: &'a Value, kind: &str) -> &'a Value {
    message["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {message}"))
}

fn milestone_of(message: &Value) -> &str {
    resource(message, "ServiceRequest")["contained"][0]["businessStatus"]["coding"][0]["code"]
        .as_str()
        .unwrap()
}

async fn each_milestone_reaches_the_gp_system_as_a_bars_response(db: Db) {
    let s = delivered(db, FIXTURE_SOURCE, vec![]).await;
    let accepted = happened("accepted");
    let event_request = event(&s.app, &s.referral, accepted.clone()).await;
    assert_eq!(s.app.deliver().await, 1);

    let seen = s.gp.seen();
    assert_eq!(seen.len(), 1, "one push");
    let push = &seen[0];
    let message = &push.body;
    serde_json::from_value::<fhir_sdk::r4b::resources::Bundle>(message.clone())
        .unwrap_or_else(|e| panic!("an R4 Bundle ({e}): {message}"));
    crate::fhir_schema::assert_valid_r4(message, "a milestone push");
    assert_eq!(message["type"], "message");
    let header = resource(message, "MessageHeader");
    assert_eq!(
        header["eventCoding"],
        json!({"system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-response"})
    );
    assert_eq!(header["response"]["identifier"], s.message["id"]);
    assert_eq!(header["response"]["code"], "ok");
    assert_eq!(
        header["focus"][0]["reference"],
        format!("urn:uuid:{}", s.referral)
    );
    assert!(
        message["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fullUrl"] == header["focus"][0]["reference"]),
        "the focus resolves in the message"
    );
    assert_eq!(header["destination"][0]["endpoint"], FIXTURE_SOURCE);
    let sr = resource(message, "ServiceRequest");
    assert_eq!(sr["id"], s.referral.as_str());
    let task = &sr["contained"][0];
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(task["status"], "accepted");
    assert_eq!(milestone_of(message), "accepted");
    assert_eq!(task["executionPeriod"]["start"], accepted["occurred_at"]);
    let reference = sr["identifier"][0]["value"].as_str().unwrap();
    let encounter = resource(message, "Encounter");
    assert_eq!(encounter["status"], "planned");
    assert_eq!(encounter["identifier"][0]["value"], reference);

    assert_eq!(push.correlation_id, s.ids.correlation.to_string());
    let all = deliveries(&s.app, &s.referral).await;
    let referral_delivery = all.iter().find(|d| d.0 == "referral").unwrap();
    let milestone = all.iter().find(|d| d.0 == "milestone").unwrap();
    assert_eq!(
        (milestone.1.as_str(), milestone.2.as_str()),
        (CALLBACK, "delivered")
    );
    assert_eq!(push.request_id, milestone.3);
    assert_ne!(push.request_id, event_request);
    assert_ne!(push.request_id, referral_delivery.3);
    uuid::Uuid::parse_str(&push.request_id).expect("X-Request-Id is a UUID");

    let text = message.to_string();
    for never in FIXTURE_PATIENT_DATA {
        assert!(!text.contains(never), "the push must not carry {never}");
    }
    assert_eq!(s.provider.seen().len(), 1, "the provider gets no milestone");
    let audit = s.app.audit().await;
    let attempt = audit
        .iter()
        .find(|a| a.action == "delivery.milestone")
        .expect("the push is audited");
    assert_eq!(attempt.outcome, "delivered");
    assert_eq!(
        attempt.request_id.as_deref(),
        Some(push.request_id.as_str())
    );
    let detail: Value = serde_json::from_str(&attempt.detail).unwrap();
    assert_eq!(
        (detail["recipient"].as_str(), detail["event"].as_str()),
        (Some(CALLBACK), Some("accepted"))
    );
}

async fn milestones_arrive_in_order_each_with_its_own_request_id(db: Db) {
    // The GP system is busy for the first push: the second must wait for it.
    let s = delivered(db, FIXTURE_SOURCE, vec![Step::status(503)]).await;
    event(&s.app, &s.referral, happened("accepted")).await;
    event(&s.app, &s.referral, happened("contacted")).await;
    drain(&s.app).await;
    let seen = s.gp.seen();
    let order: Vec<&str> = seen.iter().map(|p| milestone_of(&p.body)).collect();
    assert_eq!(order, ["accepted", "accepted", "contacted"]);
    assert_eq!(seen[0].request_id, seen[1].request_id, "a retry");
    assert_ne!(seen[1].request_id, seen[2].request_id, "another milestone");
    let numbers: Vec<&str> = seen
        .iter()
        .map(|p| {
            resource(&p.body, "ServiceRequest")["contained"][0]["id"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        ["milestone-1", "milestone-1", "milestone-2"],
        "numbered as in the history"
    );
    assert!(
        seen.iter()
            .all(|p| p.correlation_id == s.ids.correlation.to_string())
    );
    assert_eq!(
        resource(&seen[2].body, "Encounter")["status"],
        "in-progress"
    );
}

async fn a_repeated_event_is_pushed_once(db: Db) {
    let s = delivered(db, FIXTURE_SOURCE, vec![]).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let first = post(
        &s.app,
        "prospects",
        &s.referral,
        &request_id,
        &happened("accepted"),
    )
    .await;
    let again = post(
        &s.app,
        "prospects",
        &s.referral,
        &request_id,
        &happened("accepted"),
    )
    .await;
    assert_eq!((first.status, again.status), (201, 200));
    drain(&s.app).await;
    assert_eq!(s.gp.seen().len(), 1);
    let milestones = deliveries(&s.app, &s.referral)
        .await
        .into_iter()
        .filter(|d| d.0 == "milestone")
        .count();
    assert_eq!(milestones, 1);
}

async fn without_a_matching_callback_nothing_is_queued_or_sent(db: Db) {
    let s = delivered(db, "https://another-gp-system.example/fhir", vec![]).await;
    event(&s.app, &s.referral, happened("accepted")).await;
    assert_eq!(s.app.deliver().await, 0, "nothing is due");
    assert!(s.gp.seen().is_empty());
    let listed = s.app.get("operator", "/operator/v1/deliveries").await;
    assert_eq!(listed.status, 200);
    let kinds: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["referral"]);
    // The GP still sees the milestone when it reads the referral.
    let read = s
        .app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{}", s.referral))
        .await;
    assert!(read.text.contains("\"accepted\""), "{}", read.text);
    crate::fhir_schema::assert_valid_r4(&read.json(), "a referral read with its milestones");
}

async fn a_busy_gp_system_is_retried_with_the_same_request_id(db: Db) {
    let s = delivered(
        db,
        FIXTURE_SOURCE,
        vec![Step::status(503), Step::status(200)],
    )
    .await;
    event(&s.app, &s.referral, happened("accepted")).await;
    drain(&s.app).await;
    let seen = s.gp.seen();
    assert_eq!(seen.len(), 2, "503, then 200");
    assert_eq!(seen[0].request_id, seen[1].request_id);
    let d = s
        .app
        .store
        .deliveries_for(&s.referral)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.kind.as_str() == "milestone")
        .unwrap();
    assert_eq!((d.state.as_str(), d.attempts), ("delivered", 2));
}

async fn a_refused_push_is_a_dead_letter_operators_can_replay(db: Db) {
    let s = delivered(db, FIXTURE_SOURCE, vec![Step::status(400)]).await;
    event(&s.app, &s.referral, happened("accepted")).await;
    drain(&s.app).await;
    assert_eq!(s.gp.seen().len(), 1, "a 400 is not retried");

    let dead = s
        .app
        .get("operator", "/operator/v1/deliveries?dead=true")
        .await;
    assert_eq!(dead.status, 200);
    let dead = dead.json();
    let letters = dead.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{dead}");
    let letter = &letters[0];
    assert_eq!(
        (&letter["kind"], &letter["provider"], &letter["last_status"]),
        (&json!("milestone"), &json!(CALLBACK), &json!(400))
    );

    let id = letter["id"].as_str().unwrap();
    let replay = s
        .app
        .client
        .post(s.app.url(&format!("/operator/v1/deliveries/{id}/replay")))
        .bearer_auth(token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 202);
    drain(&s.app).await;
    let seen = s.gp.seen();
    assert_eq!(seen.len(), 2, "sent again after the replay");
    assert_eq!(seen[0].request_id, seen[1].request_id);
    assert_eq!(milestone_of(&seen[1].body), "accepted");
    let states: Vec<String> = deliveries(&s.app, &s.referral)
        .await
        .into_iter()
        .filter(|d| d.0 == "milestone")
        .map(|d| d.2)
        .collect();
    assert_eq!(states, ["delivered"]);
}

async fn a_decline_cancels_the_encounter_with_the_bars_reason(db: Db) {
    let s = delivered(db, FIXTURE_SOURCE, vec![]).await;
    let mut declined = happened("declined");
    declined["reason"] = json!("failed-contact");
    event(&s.app, &s.referral, declined).await;
    drain(&s.app).await;
    let seen = s.gp.seen();
    assert_eq!(seen.len(), 1);
    let encounter = resource(&seen[0].body, "Encounter");
    assert_eq!(encounter["status"], "cancelled");
    assert_eq!(
        encounter["reasonCode"][0]["coding"][0],
        json!({"system": "https://fhir.nhs.uk/CodeSystem/rejected-reasons-bars", "code": "FC"})
    );
    let task = &resource(&seen[0].body, "ServiceRequest")["contained"][0];
    assert_eq!(task["status"], "rejected");
}

async fn the_gp_hears_how_a_cancelled_referral_closed(db: Db) {
    let s = delivered(db, FIXTURE_SOURCE, vec![]).await;
    event(&s.app, &s.referral, happened("accepted")).await;
    let cancel = s.app.send("gp-a", &cancellation(&s.message)).await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let mut closed = happened("closed");
    closed["reason"] = json!("completed");
    event(&s.app, &s.referral, closed).await;
    drain(&s.app).await;
    let seen = s.gp.seen();
    let order: Vec<&str> = seen.iter().map(|p| milestone_of(&p.body)).collect();
    assert_eq!(
        order,
        ["accepted", "closed"],
        "not stopped by the cancellation"
    );
    assert_eq!(resource(&seen[1].body, "Encounter")["status"], "finished");
    assert_eq!(
        resource(&seen[1].body, "ServiceRequest")["status"],
        "revoked"
    );
}

on_both_databases!(
    each_milestone_reaches_the_gp_system_as_a_bars_response,
    milestones_arrive_in_order_each_with_its_own_request_id,
    a_repeated_event_is_pushed_once,
    without_a_matching_callback_nothing_is_queued_or_sent,
    a_busy_gp_system_is_retried_with_the_same_request_id,
    a_refused_push_is_a_dead_letter_operators_can_replay,
    a_decline_cancels_the_encounter_with_the_bars_reason,
    the_gp_hears_how_a_cancelled_referral_closed,
);
