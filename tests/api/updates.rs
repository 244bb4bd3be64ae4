//! Cancellation and consent withdrawal (`reason` `update`).

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::json;

async fn accepted(app: &TestApp, msg: &serde_json::Value) -> String {
    let reply = app.send("gp-a", msg).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn a_cancellation_stops_delivery_and_a_second_one_conflicts(db: Db) {
    let app = TestApp::spawn(db).await;
    let original = referral();
    let id = accepted(&app, &original).await;

    let reply = app.send("gp-a", &cancellation(&original)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["entry"][1]["resource"]["id"], id.as_str());
    assert_eq!(body["entry"][1]["resource"]["status"], "revoked");
    assert_eq!(body["entry"][2]["resource"]["status"], "cancelled");

    let read = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await
        .json();
    assert_eq!(read["status"], "revoked");
    assert_eq!(read["extension"][0]["valueCode"], "cancelled");
    let deliveries = app.store.deliveries_for(&id).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].state.as_str(),
        "cancelled",
        "the queued delivery never goes"
    );

    app.send("gp-a", &cancellation(&original))
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    app.send("gp-a", &withdrawal(&original))
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "referral.cancel"
        && a.outcome == "accepted"
        && a.referral_id.as_deref() == Some(id.as_str())));
}

async fn a_consent_withdrawal_stops_delivery(db: Db) {
    let app = TestApp::spawn(db).await;
    let original = referral();
    let id = accepted(&app, &original).await;
    let reply = app.send("gp-a", &withdrawal(&original)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let row = app.store.referral(&id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "consent-withdrawn");
    assert_eq!(
        app.store.deliveries_for(&id).await.unwrap()[0]
            .state
            .as_str(),
        "cancelled"
    );
}

async fn the_referral_can_be_named_by_the_gateway_id(db: Db) {
    let app = TestApp::spawn(db).await;
    let original = referral();
    let id = accepted(&app, &original).await;
    let mut cancel = cancellation(&original);
    set(
        &mut cancel,
        &format!("{}/id", at::SERVICE_REQUEST),
        json!(id),
    );
    set(
        &mut cancel,
        &format!("{}/identifier", at::SERVICE_REQUEST),
        json!([]),
    );
    // The header's focus follows the ServiceRequest by fullUrl, which is unchanged.
    let reply = app.send("gp-a", &cancel).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        app.store
            .referral(&id)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "cancelled"
    );
}

async fn updates_for_unknown_or_foreign_referrals_are_not_found(db: Db) {
    let app = TestApp::spawn(db).await;
    // Never sent.
    app.send("gp-a", &cancellation(&referral()))
        .await
        .assert_issue(404, "REC_NOT_FOUND", "");
    // Sent by another practice: not visible from this one.
    let theirs = referral_from("Y90020");
    let reply = app.send("gp-b", &theirs).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut mine = cancellation(&theirs);
    set(
        &mut mine,
        &format!("{}/identifier/0/value", at::PRACTICE),
        json!("Y90001"),
    );
    app.send("gp-a", &mine)
        .await
        .assert_issue(404, "REC_NOT_FOUND", "");
    // Another patient's NHS number on a real referral: refused.
    let original = referral();
    accepted(&app, &original).await;
    let mut wrong = cancellation(&original);
    set(
        &mut wrong,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("9990000026"),
    );
    app.send("gp-a", &wrong).await.assert_issue(
        422,
        "REC_UNPROCESSABLE_ENTITY",
        "Patient.identifier",
    );
    // An update that neither cancels nor withdraws.
    let mut nothing = cancellation(&original);
    set(
        &mut nothing,
        &format!("{}/status", at::SERVICE_REQUEST),
        json!("active"),
    );
    app.send("gp-a", &nothing)
        .await
        .assert_issue(422, "REC_UNPROCESSABLE_ENTITY", "status");
}

on_both_databases!(
    a_cancellation_stops_delivery_and_a_second_one_conflicts,
    a_consent_withdrawal_stops_delivery,
    the_referral_can_be_named_by_the_gateway_id,
    updates_for_unknown_or_foreign_referrals_are_not_found,
);
