//! A GP system finds its referral by identifier, and suppliers dry-run a message
//! through `$validate`: both answer in FHIR that an independent validator accepts.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::Value;

const REFERENCE_SYSTEM: &str = "https://thrive-gateway.nhs.uk/Id/referral-reference";

fn query(token: &str) -> String {
    let encoded: String = url_encode(token);
    format!("/fhir/r4/ServiceRequest?identifier={encoded}")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn matches(reply: &Reply, what: &str) -> Vec<String> {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text);
    let bundle = reply.json();
    crate::fhir_schema::assert_valid_r4(&bundle, what);
    assert_eq!(bundle["type"], "searchset");
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn a_gp_system_finds_its_referral_by_identifier(db: Db) {
    let app = TestApp::spawn(db).await;
    let message = referral();
    let reply = app.send("gp-a", &message).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answer = reply.json();
    let id = answer["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reference = answer["entry"][2]["resource"]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let sender = &message["entry"][1]["resource"]["identifier"][0];
    let (system, value) = (
        sender["system"].as_str().unwrap(),
        sender["value"].as_str().unwrap(),
    );

    for (what, token) in [
        ("by reference", format!("{REFERENCE_SYSTEM}|{reference}")),
        ("by the sender's identifier", format!("{system}|{value}")),
        ("by a bare value", value.to_owned()),
    ] {
        assert_eq!(
            matches(&app.get("gp-a", &query(&token)).await, what),
            std::slice::from_ref(&id),
            "{what}"
        );
    }
    // Another practice's system finds nothing; an unknown identifier finds nothing.
    assert!(
        matches(
            &app.get("gp-b", &query(&format!("{REFERENCE_SYSTEM}|{reference}")))
                .await,
            "other practice"
        )
        .is_empty()
    );
    assert!(
        matches(
            &app.get("gp-a", &query(&format!("{system}|nope"))).await,
            "unknown"
        )
        .is_empty()
    );

    // Bad searches name the parameter; providers are refused.
    let missing = app.get("gp-a", "/fhir/r4/ServiceRequest").await;
    missing.assert_issue(400, "REC_BAD_REQUEST", "identifier");
    crate::fhir_schema::assert_operation_outcome(&missing.json(), "a search without identifier");
    app.get("gp-a", &query(&format!("{system}|")))
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "identifier");
    app.get("prospects", &query(value))
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");

    let searches: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.search")
        .collect();
    assert_eq!(
        searches.iter().filter(|r| r.outcome == "allowed").count(),
        5
    );
    assert_eq!(
        searches.iter().filter(|r| r.outcome == "rejected").count(),
        3
    );
}

async fn post_validate(app: &TestApp, body: &Value) -> Reply {
    let ids = Ids::fresh();
    let req = app
        .client
        .post(app.url("/fhir/r4/Bundle/$validate"))
        .bearer_auth(token("gp-a"))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", ids.request.to_string())
        .header("X-Correlation-Id", ids.correlation.to_string())
        .body(body.to_string());
    Reply::from(req.send().await.unwrap()).await
}

async fn validate_says_what_process_message_would_and_changes_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let message = referral();
    let dry = post_validate(&app, &message).await;
    assert_eq!(dry.status, 200, "{}", dry.text);
    let outcome = dry.json();
    crate::fhir_schema::assert_valid_r4(&outcome, "a $validate answer");
    assert_eq!(outcome["issue"][0]["severity"], "information");
    assert!(
        dry.text.contains("prospects"),
        "names the route: {}",
        dry.text
    );
    assert_eq!(app.referral_count().await, 0, "a dry run stores nothing");

    // The same message is still new to $process-message.
    assert_eq!(app.send("gp-a", &message).await.status, 200);

    // A message with problems gets exactly the answer $process-message gives.
    let mut bad = referral();
    set(
        &mut bad,
        &format!("{}/identifier/0/value", at::PATIENT),
        serde_json::json!("9990000019"),
    );
    set(
        &mut bad,
        &format!("{}/status", at::SERVICE_REQUEST),
        serde_json::json!("draft"),
    );
    let dry = post_validate(&app, &bad).await;
    let real = app.send("gp-a", &bad).await;
    assert_eq!(dry.status, 422);
    assert_eq!(dry.status, real.status);
    assert_eq!(dry.issues(), real.issues());
    crate::fhir_schema::assert_operation_outcome(&dry.json(), "a $validate refusal");

    // An update is checked against the referral it names, and changes nothing.
    assert_eq!(
        post_validate(&app, &cancellation(&message)).await.status,
        200
    );
    let stranger = cancellation(&referral());
    post_validate(&app, &stranger)
        .await
        .assert_issue(404, "REC_NOT_FOUND", "ServiceRequest");
    assert_eq!(app.referral_count().await, 1);

    let validations: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.validate")
        .map(|r| r.outcome)
        .collect();
    assert_eq!(validations, ["valid", "rejected", "valid", "rejected"]);
}

on_both_databases!(
    a_gp_system_finds_its_referral_by_identifier,
    validate_says_what_process_message_would_and_changes_nothing,
);
