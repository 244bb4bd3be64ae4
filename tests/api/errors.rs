//! Refusals of bad parameters on the operator, report and audit APIs: each is an
//! OperationOutcome naming the parameter at fault, quoting no value, and recorded in
//! the audit trail as refused (the provider API's are in `events.rs`); and actix's
//! own refusals, which are OperationOutcomes too.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::Value;

/// The expressions of a refusal's issues, after checking it is an OperationOutcome
/// with this status, served as FHIR, that quotes none of `values`.
fn refused_at(reply: &Reply, status: u16, values: &[&str]) -> Vec<String> {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(
        reply.headers["content-type"], "application/fhir+json",
        "{}",
        reply.text
    );
    for value in values {
        assert!(
            !reply.text.contains(value),
            "quotes {value}: {}",
            reply.text
        );
    }
    reply.issues().into_iter().map(|(_, _, at)| at).collect()
}

/// The last audit record of `action`: its outcome, status and issue summaries.
async fn last_record(app: &TestApp, action: &str) -> (String, Option<i32>, Value) {
    let record = app
        .audit()
        .await
        .into_iter()
        .rfind(|r| r.action == action)
        .unwrap_or_else(|| panic!("no {action} record"));
    let detail: Value = serde_json::from_str(&record.detail).unwrap();
    (record.outcome, record.http_status, detail["issues"].clone())
}

async fn operator_parameters_are_refused_by_name_and_recorded(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = app
        .get(
            "operator",
            "/operator/v1/deliveries?limit=lots&dead=perhaps&after=2026-01-01",
        )
        .await;
    assert_eq!(
        refused_at(&reply, 400, &["lots", "perhaps", "2026-01-01"]),
        ["after", "dead", "limit"]
    );
    let (outcome, status, issues) = last_record(&app, "operator.deliveries.list").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));
    assert!(issues.to_string().contains("@limit"), "{issues}");
    assert!(!issues.to_string().contains("lots"), "{issues}");
    // Zero or fewer is no page size; more than 1000 lists 1000, as before.
    let reply = app.get("operator", "/operator/v1/deliveries?limit=0").await;
    assert_eq!(refused_at(&reply, 400, &[]), ["limit"]);
    let reply = app
        .get("operator", "/operator/v1/deliveries?limit=5000&dead=true")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let replay = |path: String| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(app.url(&path))
                .bearer_auth(token("operator"))
                .send()
                .await
                .unwrap();
            Reply::from(res).await
        }
    };
    let reply = replay("/operator/v1/deliveries/not-a-delivery/replay".into()).await;
    assert_eq!(refused_at(&reply, 404, &["not-a-delivery"]), ["id"]);
    let (outcome, status, _) = last_record(&app, "operator.deliveries.replay").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(404)));
    let unknown = uuid::Uuid::new_v4();
    let reply = replay(format!(
        "/operator/v1/deliveries/{unknown}/resolve?force=true"
    ))
    .await;
    assert_eq!(refused_at(&reply, 400, &[]), ["force"]);
    let (outcome, status, _) = last_record(&app, "operator.deliveries.resolve").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));
}

async fn report_parameters_are_refused_by_name_and_recorded(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = app
        .get(
            "auditor",
            "/reports/v1/programme?to=yesterday&group_by=colour",
        )
        .await;
    assert_eq!(
        refused_at(&reply, 400, &["yesterday", "colour"]),
        ["from", "to", "group_by"]
    );
    let (outcome, status, issues) = last_record(&app, "report.programme").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));
    assert!(
        issues.to_string().contains("REC_BAD_REQUEST:required@from"),
        "{issues}"
    );
    let reply = app
        .get(
            "operator",
            "/reports/v1/programme?from=2026-01-01&to=2027-01-01&format=csv",
        )
        .await;
    assert_eq!(refused_at(&reply, 400, &["csv"]), ["format"]);
    // Roles are checked first: a GP system learns nothing about the parameters.
    let reply = app.get("gp-a", "/reports/v1/programme?colour=blue").await;
    assert_eq!(reply.status, 403, "{}", reply.text);
}

async fn audit_parameters_are_refused_by_name_and_recorded(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = app
        .get(
            "auditor",
            "/audit/v1/records?limit=ten&after=-1&from=9990000018&9990000018=x",
        )
        .await;
    assert_eq!(
        refused_at(&reply, 400, &["ten", "9990000018"]),
        ["", "from", "after", "limit"],
        "a parameter name that could be a value is not echoed"
    );
    let (outcome, status, issues) = last_record(&app, "audit.list").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));
    assert!(issues.to_string().contains("@after"), "{issues}");

    let reply = app.get("auditor", "/audit/v1/records/first").await;
    assert_eq!(refused_at(&reply, 404, &["first"]), ["seq"]);
    let (outcome, status, _) = last_record(&app, "audit.read").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(404)));

    let reply = app
        .get("auditor", "/audit/v1/export?from=2026-01-01&format=xml")
        .await;
    assert_eq!(refused_at(&reply, 400, &["xml"]), ["to", "format"]);
    let (outcome, _, _) = last_record(&app, "audit.export").await;
    assert_eq!(outcome, "rejected");

    let res = app
        .client
        .post(app.url("/audit/v1/subjects"))
        .bearer_auth(token("auditor"))
        .json(&serde_json::json!({"nhs": "9990000018"}))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(res).await;
    assert_eq!(
        refused_at(&reply, 400, &["9990000018"]),
        ["nhs", "nhs_number"]
    );
    let (outcome, status, _) = last_record(&app, "audit.subjects").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));

    let reply = app.get("auditor", "/audit/v1/verify?deep=yes").await;
    assert_eq!(refused_at(&reply, 400, &["yes"]), ["deep"]);
    let (outcome, status, _) = last_record(&app, "audit.verify").await;
    assert_eq!((outcome.as_str(), status), ("rejected", Some(400)));
}

on_both_databases!(
    operator_parameters_are_refused_by_name_and_recorded,
    report_parameters_are_refused_by_name_and_recorded,
    audit_parameters_are_refused_by_name_and_recorded,
);

async fn actix_s_own_refusals_are_outcomes_too(db: Db) {
    let app = TestApp::spawn(db).await;
    let outcome = |reply: &Reply, status: u16| {
        assert_eq!(reply.status, status, "{}", reply.text);
        assert_eq!(
            reply.headers["content-type"], "application/fhir+json",
            "{}",
            reply.text
        );
        assert_eq!(reply.json()["resourceType"], "OperationOutcome");
    };
    // A method the endpoint does not take.
    let res = app
        .client
        .delete(app.url("/operator/v1/deliveries"))
        .bearer_auth(token("operator"))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(res).await;
    outcome(&reply, 404);
    // A body past what the endpoint reads, refused before the handler runs.
    let referral = uuid::Uuid::new_v4();
    let res = app
        .client
        .post(app.url(&format!("/provider/v1/referrals/{referral}/events")))
        .bearer_auth(token("prospects"))
        .header("Content-Type", "application/json")
        .body(format!("{{\"event\": \"{}\"}}", "a".repeat(300 * 1024)))
        .send()
        .await
        .unwrap();
    outcome(&Reply::from(res).await, 413);
    // An id that is not even text.
    let reply = app.get("auditor", "/audit/v1/records/%FF%FE").await;
    outcome(&reply, 404);
    assert_eq!(reply.issues()[0].2, "seq");
}

on_both_databases!(actix_s_own_refusals_are_outcomes_too);
