//! Hostile or merely unlucky input: answered, audited, never a panic or a quoted value.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::json;

/// Clinical systems write "no end date" as the last day there is.
async fn a_consent_that_never_ends_is_answered_and_audited(db: Db) {
    let app = TestApp::spawn(db).await;
    for end in ["9999-12-31", "9999-12", "9999"] {
        let mut message = referral();
        set(
            &mut message,
            &format!("{}/provision/period/end", at::CONSENT),
            json!(end),
        );
        let reply = app.send("gp-a", &message).await;
        assert_eq!(reply.status, 200, "{end}: {}", reply.text);
        let id = reply.json()["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            app.audit().await.iter().any(|r| r.action == "referral.new"
                && r.outcome == "accepted"
                && r.referral_id.as_deref() == Some(id.as_str())),
            "{end}: the accept is recorded"
        );
    }
}

/// One answer for one message: a key given twice is refused, with where.
async fn a_key_given_twice_is_refused_with_its_path(db: Db) {
    let app = TestApp::spawn(db).await;
    let text = referral().to_string().replacen(
        "\"value\":\"9990000018\"",
        "\"value\":\"9990000018\",\"value\":\"9434765919\"",
        1,
    );
    assert!(
        text.contains("9434765919"),
        "the fixture's NHS number was found"
    );
    let reply = Reply::from(
        app.client
            .post(app.url("/fhir/r4/$process-message"))
            .bearer_auth(token("gp-a"))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
            .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
            .body(text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Bundle.entry[2].resource.identifier[0].value",
    );
    for number in ["9990000018", "9434765919"] {
        assert!(!reply.text.contains(number), "the answer quotes {number}");
    }
    assert_eq!(app.referral_count().await, 0);
    assert!(
        app.audit()
            .await
            .iter()
            .any(|r| r.action == "referral.message" && r.outcome == "rejected")
    );
}

/// A reference to an entry of no R4 type is refused without naming the sender's text.
async fn diagnostics_never_quote_the_sender(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    message["entry"][2]["resource"]["resourceType"] = json!("Zzyzxqwerty");
    let reply = app.send("gp-a", &message).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(!reply.text.contains("Zzyzxqwerty"), "{}", reply.text);
}

on_both_databases!(
    a_consent_that_never_ends_is_answered_and_audited,
    a_key_given_twice_is_refused_with_its_path,
    diagnostics_never_quote_the_sender,
);

/// A client past its rate, and an address past its failed authentications, get 429
/// with Retry-After and an OperationOutcome.
async fn rate_limits_answer_429(db: Db) {
    let app = TestApp::spawn_with(
        db,
        "[rate_limit]\nper_client_per_second = 1\nper_client_burst = 2\nfailed_auth_per_ip_per_minute = 2\n",
    )
    .await;
    let statuses = {
        let mut s = Vec::new();
        for _ in 0..3 {
            s.push(
                app.get("gp-a", "/fhir/r4/ServiceRequest?identifier=x")
                    .await,
            );
        }
        s
    };
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    let third = &statuses[2];
    // 429 has no REC code of its own in the NHS list: the 400 family, its own status.
    third.assert_issue(429, "REC_BAD_REQUEST", "");
    assert!(third.headers.contains_key("retry-after"));
    assert_eq!(third.issues()[0].1, "throttled");
    // Another client is not held back by the first.
    assert_eq!(
        app.get("gp-b", "/fhir/r4/ServiceRequest?identifier=x")
            .await
            .status,
        200
    );

    // Bad tokens from one address: 401 twice, then 429.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let res = app
            .client
            .get(app.url("/fhir/r4/ServiceRequest?identifier=x"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        answers.push(res.status().as_u16());
    }
    assert_eq!(answers, [401, 401, 429]);
}

on_both_databases!(rate_limits_answer_429);

/// An offset no clock uses is refused where it stands, in the message and in events.
async fn an_offset_beyond_fourteen_hours_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    set(
        &mut message,
        &format!("{}/authoredOn", at::SERVICE_REQUEST),
        json!("2026-11-20T10:10:00+25:00"),
    );
    app.send("gp-a", &message).await.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Bundle.entry[1].resource.authoredOn",
    );
    assert_eq!(app.referral_count().await, 0);
}

on_both_databases!(an_offset_beyond_fourteen_hours_is_refused);

/// Ids and codes are held to FHIR's forms and a length no real one reaches.
async fn ids_and_codes_are_held_to_their_forms(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    set(
        &mut message,
        &format!("{}/id", at::CONSENT),
        json!("not an id!"),
    );
    app.send("gp-a", &message).await.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Bundle.entry[5].resource.id",
    );
    let mut message = referral();
    set(
        &mut message,
        &format!("{}/identifier/0/value", at::SERVICE_REQUEST),
        json!("X".repeat(5_000)),
    );
    let reply = app.send("gp-a", &message).await;
    reply.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Bundle.entry[1].resource.identifier[0].value",
    );
    assert!(reply.text.len() < 5_000, "the value is not echoed");
    assert_eq!(app.referral_count().await, 0);
}

on_both_databases!(ids_and_codes_are_held_to_their_forms);
