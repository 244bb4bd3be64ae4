//! Duplicates: a repeated X-Request-Id or MessageHeader.id is 409 `duplicate`, and of
//! 20 identical messages arriving at once exactly one is stored.

use crate::helpers::*;
use crate::on_both_databases;

async fn a_repeated_request_id_or_message_header_id_is_a_duplicate(db: Db) {
    let app = TestApp::spawn(db).await;
    let msg = referral();
    let ids = Ids::fresh();
    assert_eq!(app.send_with("gp-a", &msg, &ids).await.status, 200);

    // The same request again.
    let again = app.send_with("gp-a", &msg, &ids).await;
    again.assert_issue(409, "REC_CONFLICT", "");
    assert_eq!(again.issues()[0].1, "duplicate");

    // A different message with the same X-Request-Id.
    let other = referral();
    app.send_with(
        "gp-a",
        &other,
        &Ids {
            correlation: uuid::Uuid::new_v4(),
            ..ids
        },
    )
    .await
    .assert_issue(409, "REC_CONFLICT", "");

    // The same MessageHeader.id under a new X-Request-Id.
    let mut same_header = referral();
    set(
        &mut same_header,
        &format!("{}/id", at::HEADER),
        msg["entry"][0]["resource"]["id"].clone(),
    );
    app.send("gp-a", &same_header)
        .await
        .assert_issue(409, "REC_CONFLICT", "");

    // The same sender ServiceRequest identifier from the same practice.
    let mut same_sr = referral();
    set(
        &mut same_sr,
        &format!("{}/identifier/0/value", at::SERVICE_REQUEST),
        msg["entry"][1]["resource"]["identifier"][0]["value"].clone(),
    );
    app.send("gp-a", &same_sr)
        .await
        .assert_issue(409, "REC_CONFLICT", "");

    assert_eq!(app.referral_count().await, 1);
    // The other practice may use the same identifier value for its own referral.
    let mut elsewhere = referral_from("Y90010");
    set(
        &mut elsewhere,
        &format!("{}/identifier/0/value", at::SERVICE_REQUEST),
        msg["entry"][1]["resource"]["identifier"][0]["value"].clone(),
    );
    assert_eq!(app.send("gp-a", &elsewhere).await.status, 200);
}

async fn twenty_concurrent_copies_store_exactly_one(db: Db) {
    let app = std::sync::Arc::new(TestApp::spawn(db).await);
    let msg = std::sync::Arc::new(referral());
    let ids = Ids::fresh();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, msg) = (app.clone(), msg.clone());
        tasks.push(tokio::spawn(async move {
            app.send_with("gp-a", &msg, &ids).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap();
        if reply.status == 409 {
            assert_eq!(reply.issues()[0].1, "duplicate");
        }
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.referral_count().await, 1);
    let audit = app.audit().await;
    assert_eq!(audit.iter().filter(|a| a.outcome == "accepted").count(), 1);
    assert_eq!(
        audit.iter().filter(|a| a.http_status == Some(409)).count(),
        19
    );
}

on_both_databases!(
    a_repeated_request_id_or_message_header_id_is_a_duplicate,
    twenty_concurrent_copies_store_exactly_one,
);
