//! Retention: personal data held for delivery is purged once settled and old enough;
//! everything else about the referral keeps working, and each purge is audited by count.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};
use serde_json::{Value, json};
use thrive_gateway::config::RetentionSettings;

const LONG_AGO: &str = "2020-01-01T00:00:00Z";

async fn accept(app: &TestApp, msg: &Value) -> String {
    let reply = app.send("gp-a", msg).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Makes a referral and its deliveries look last changed long ago, as a clock would.
pub async fn age(db: Db, app: &TestApp, id: &str) {
    for table in ["referrals", "deliveries"] {
        let key = if table == "referrals" {
            "id"
        } else {
            "referral_id"
        };
        execute_sql(
            db,
            &app.database_url,
            &format!("UPDATE {table} SET updated_at = '{LONG_AGO}' WHERE {key} = '{id}'"),
        )
        .await;
    }
}

/// `(message, nhs_number, purged)` as stored.
async fn stored(db: Db, app: &TestApp, id: &str) -> (String, String, bool) {
    let rows = query_text(
        db,
        &app.database_url,
        &format!(
            "SELECT message, nhs_number, CASE WHEN purged_at IS NULL THEN 'no' ELSE 'yes' END \
             FROM referrals WHERE id = '{id}'"
        ),
    )
    .await;
    let row = &rows[0];
    let text = |i: usize| row[i].clone().unwrap_or_default();
    (text(0), text(1), text(2) == "yes")
}

async fn assert_kept(db: Db, app: &TestApp, id: &str, why: &str) {
    let (message, nhs, purged) = stored(db, app, id).await;
    assert!(!purged, "{why}");
    assert!(
        message.starts_with("enc:") && nhs.starts_with("enc:"),
        "{why}"
    );
}

async fn assert_purged(db: Db, app: &TestApp, id: &str) {
    let (message, nhs, purged) = stored(db, app, id).await;
    assert!(purged, "purged_at set");
    assert_eq!((message.as_str(), nhs.as_str()), ("", ""), "nothing left");
}

pub async fn purge(app: &TestApp) -> u64 {
    let settings = RetentionSettings {
        enabled: true,
        after_days: 30,
        interval_seconds: 3600,
    };
    thrive_gateway::retention::run_once(app.store.as_ref(), &settings, "test")
        .await
        .unwrap()
        .referrals
}

fn purge_records(audit: &[thrive_gateway::store::AuditRow]) -> Vec<Value> {
    audit
        .iter()
        .filter(|a| a.action == "retention.purge")
        .map(|a| {
            assert_eq!(a.outcome, "purged");
            serde_json::from_str(&a.detail).unwrap()
        })
        .collect()
}

async fn post(app: &TestApp, client: &str, path: &str, body: Option<&Value>) -> Reply {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(token(client))
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string());
    if let Some(body) = body {
        req = req.json(body);
    }
    Reply::from(req.send().await.unwrap()).await
}

async fn only_settled_referrals_older_than_the_period_are_purged(db: Db) {
    // Delivered, delivered, refused (a dead letter); then whatever comes is accepted.
    let provider = FakeProvider::start(vec![
        Step::status(200),
        Step::status(200),
        Step::status(400),
    ])
    .await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let old = accept(&app, &referral()).await;
    app.deliver().await;
    let young = accept(&app, &referral()).await;
    app.deliver().await;
    let dead = accept(&app, &referral()).await;
    app.deliver().await;
    let queued = accept(&app, &referral()).await;
    for id in [&old, &dead, &queued] {
        age(db, &app, id).await;
    }

    assert_eq!(purge(&app).await, 1);
    assert_purged(db, &app, &old).await;
    assert_kept(db, &app, &young, "younger than the period").await;
    assert_kept(db, &app, &queued, "its delivery is still queued").await;
    assert_kept(db, &app, &dead, "an unresolved dead letter holds it back").await;
    let row = app.store.referral(&old).await.unwrap().unwrap();
    assert!(row.purged_at.is_some() && row.nhs_number.is_empty());
    assert_eq!(purge(&app).await, 0, "nothing purged twice");
    assert_eq!(
        purge_records(&app.audit().await),
        vec![json!({"referrals": 1, "after_days": 30})],
        "one record for the pass that purged, counts only"
    );

    // The operator resolves the dead letter; then it goes too, with its error excerpt.
    let letter = app.store.deliveries_for(&dead).await.unwrap()[0].id.clone();
    let resolve = format!("/operator/v1/deliveries/{letter}/resolve");
    for client in ["gp-a", "auditor", "prospects"] {
        assert_eq!(
            post(&app, client, &resolve, None).await.status,
            403,
            "{client}"
        );
    }
    let resolved = post(&app, "operator", &resolve, None).await;
    assert_eq!(resolved.status, 200, "{}", resolved.text);
    post(&app, "operator", &resolve, None)
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    let replay = post(
        &app,
        "operator",
        &format!("/operator/v1/deliveries/{letter}/replay"),
        None,
    )
    .await;
    replay.assert_issue(409, "REC_CONFLICT", "");
    assert!(replay.text.contains("resolved"), "{}", replay.text);
    app.deliver().await;
    let view = app.store.delivery(&letter).await.unwrap().unwrap();
    assert_eq!(
        view.state.as_str(),
        "dead",
        "a resolved letter is never sent"
    );
    assert!(view.resolved_at.is_some() && view.last_error.is_some());
    let sent_for_dead = provider
        .seen()
        .iter()
        .filter(|s| s.body["referral"]["id"] == dead.as_str())
        .count();
    assert_eq!(sent_for_dead, 1, "only the refused attempt");

    assert_eq!(purge(&app).await, 1);
    assert_purged(db, &app, &dead).await;
    let view = app.store.delivery(&letter).await.unwrap().unwrap();
    assert_eq!(
        view.last_error, None,
        "the provider's answer went with the data"
    );
    assert_eq!(purge_records(&app.audit().await).len(), 2);
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.action == "operator.deliveries.resolve"
                && a.client_id.as_deref() == Some("operator")
                && a.outcome == "accepted")
    );
}

async fn after_purge_the_referral_its_events_statistics_and_audit_still_work(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let original = referral();
    let id = accept(&app, &original).await;
    app.deliver().await;
    age(db, &app, &id).await;
    assert_eq!(purge(&app).await, 1);

    let read = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json()["id"], id.as_str());
    let event = post(
        &app,
        "prospects",
        &format!("/provider/v1/referrals/{id}/events"),
        Some(&json!({"event": "accepted", "occurred_at": just_now()})),
    )
    .await;
    assert_eq!(event.status, 201, "{}", event.text);
    let read = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await;
    assert!(read.text.contains("\"accepted\""), "{}", read.text);

    let today = fhir_sdk::time::OffsetDateTime::now_utc().date();
    let stats = app
        .get(
            "auditor",
            &format!(
                "/reports/v1/programme?from={}&to={}",
                today - fhir_sdk::time::Duration::days(1),
                today + fhir_sdk::time::Duration::days(1)
            ),
        )
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert!(
        stats.text.contains("\"received\":\"<5\""),
        "counted: {}",
        stats.text
    );

    // The GP can still cancel it; the provider is told, with ids only.
    assert_eq!(app.send("gp-a", &cancellation(&original)).await.status, 200);
    app.deliver().await;
    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body["notice"], "cancellation");

    let audit = app.audit().await;
    for action in [
        "referral.new",
        "delivery.referral",
        "retention.purge",
        "referral.cancel",
    ] {
        assert!(audit.iter().any(|a| a.action == action), "{action} kept");
    }
    for record in &audit {
        for secret in FIXTURE_PATIENT_DATA {
            assert!(
                !record.detail.contains(secret),
                "no patient data in the audit"
            );
        }
    }
    let verified = thrive_gateway::audit::verify(app.store.as_ref(), None)
        .await
        .unwrap();
    assert!(verified.problem.is_none(), "the chain verifies after purge");
    let raw = query_text(
        db,
        &app.database_url,
        &format!("SELECT message, nhs_number FROM referrals WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(raw[0], vec![Some(String::new()), Some(String::new())]);
}

async fn the_command_line_purges_resolves_and_prints_counts(db: Db) {
    let provider = FakeProvider::start(vec![Step::status(422)]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let dead = accept(&app, &referral()).await;
    app.deliver().await;
    let delivered = accept(&app, &referral()).await;
    app.deliver().await;
    for id in [&dead, &delivered] {
        age(db, &app, id).await;
    }
    let gateway = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("THRIVE_ENV")
            .env("THRIVE__DATABASE__URL", &app.database_url)
            .args(args)
            .output()
            .unwrap()
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let run = gateway(&["retention", "run"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run)
            .contains("purged the personal data of 1 referrals settled more than 30 days ago"),
        "{}",
        text(&run)
    );
    assert_purged(db, &app, &delivered).await;
    assert_kept(db, &app, &dead, "its dead letter is unresolved").await;

    let letter = app.store.deliveries_for(&dead).await.unwrap()[0].id.clone();
    let resolve = gateway(&["deliveries", "resolve", &letter]);
    assert!(resolve.status.success(), "{}", text(&resolve));
    assert!(text(&resolve).contains("resolved"));
    let replay = gateway(&["deliveries", "replay", &letter]);
    assert!(!replay.status.success());
    assert!(text(&replay).contains("resolved"), "{}", text(&replay));
    let list = gateway(&["deliveries", "list", "--dead"]);
    assert!(text(&list).contains("resolved"), "{}", text(&list));

    let run = gateway(&["retention", "run"]);
    assert!(text(&run).contains("of 1 referrals"), "{}", text(&run));
    assert_purged(db, &app, &dead).await;
    let run = gateway(&["retention", "run"]);
    assert!(text(&run).contains("of 0 referrals"), "{}", text(&run));
    let records = purge_records(&app.audit().await);
    assert_eq!(
        records.len(),
        2,
        "a pass that purged nothing leaves no record"
    );
    assert!(
        records
            .iter()
            .all(|r| r["referrals"] == 1 && r["after_days"] == 30)
    );

    let zero = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("THRIVE_ENV")
        .env("THRIVE__DATABASE__URL", &app.database_url)
        .env("THRIVE__RETENTION__AFTER_DAYS", "0")
        .args(["retention", "run"])
        .output()
        .unwrap();
    assert_eq!(zero.status.code(), Some(2), "a period of 0 is refused");
    assert!(
        text(&zero).contains("retention.after_days"),
        "{}",
        text(&zero)
    );
}

async fn serve_purges_periodically(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(
        db,
        &provider.config("[retention]\nenabled = true\ninterval_seconds = 1\n"),
    )
    .await;
    let id = accept(&app, &referral()).await;
    app.deliver().await;
    age(db, &app, &id).await;
    for _ in 0..100 {
        if stored(db, &app, &id).await.2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_purged(db, &app, &id).await;
    let records = purge_records(&app.audit().await);
    assert_eq!(records, vec![json!({"referrals": 1, "after_days": 30})]);
}

async fn two_gateways_purging_at_once_purge_each_referral_once(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let first = TestApp::spawn_with(db, &provider.config("")).await;
    let second = first.second(&provider.config("")).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(accept(&first, &referral()).await);
    }
    while first.deliver().await > 0 {}
    for id in &ids {
        age(db, &first, id).await;
    }
    let (a, b, c, d) = tokio::join!(purge(&first), purge(&second), purge(&first), purge(&second));
    assert_eq!(a + b + c + d, 6, "each referral purged once");
    for id in &ids {
        assert_purged(db, &first, id).await;
    }
    let counted: u64 = purge_records(&first.audit().await)
        .iter()
        .map(|r| r["referrals"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 6, "the audit counts each purge once");
}

on_both_databases!(
    only_settled_referrals_older_than_the_period_are_purged,
    after_purge_the_referral_its_events_statistics_and_audit_still_work,
    the_command_line_purges_resolves_and_prints_counts,
    serve_purges_periodically,
    two_gateways_purging_at_once_purge_each_referral_once,
);
