//! What operators see and steer: why a delivery failed and where it went, and each
//! delivery's attempts, over the operator API and the command line alike.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};
use fhir_sdk::time::{OffsetDateTime, macros::datetime};
use std::sync::Arc;

/// A port nothing listens on: every connection is refused at once.
const DOWN: &str = "http://127.0.0.1:1/referrals";

async fn accept(app: &TestApp) -> String {
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The command line against `app`'s database, as an operator on the host runs it.
fn command(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("THRIVE_ENV", "development")
        .env("THRIVE__DATABASE__URL", &app.database_url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn a_provider_down_is_explained_in_the_list_and_in_each_attempt(db: Db) {
    let config = format!(
        "[providers.bchft]\nendpoint = \"{DOWN}\"\n[providers.prospects]\nendpoint = \"{DOWN}\"\n{FAST_RETRIES}"
    );
    let app = TestApp::spawn_with(db, &config).await;
    let referral_id = accept(&app).await;
    let stored = app.store.referral(&referral_id).await.unwrap().unwrap();
    app.deliver().await;

    // The operator API lists it with its reference, state and the reason, naming the host.
    let path = format!(
        "/operator/v1/deliveries?recipient={}&state=queued&since=2000-01-01",
        stored.provider
    );
    let list = app.get("operator", &path).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let rows = list.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["reference"], stored.reference.as_str());
    assert_eq!(rows[0]["attempts"], 1);
    let error = rows[0]["last_error"].as_str().unwrap();
    assert!(error.contains("127.0.0.1:1: connection refused"), "{error}");
    let delivery_id = rows[0]["id"].as_str().unwrap().to_owned();

    // Filters narrow; values that mean nothing are named, never ignored.
    for narrower in ["state=delivered", "since=2100-01-01", "dead=true"] {
        let none = app
            .get("operator", &format!("/operator/v1/deliveries?{narrower}"))
            .await;
        assert_eq!(none.status, 200, "{narrower}: {}", none.text);
        assert_eq!(none.json().as_array().unwrap().len(), 0, "{narrower}");
    }
    for (bad, at) in [
        ("state=lost", "state"),
        ("recipient=nobody", "recipient"),
        ("since=yesterday", "since"),
    ] {
        let refused = app
            .get("operator", &format!("/operator/v1/deliveries?{bad}"))
            .await;
        refused.assert_issue(400, "REC_BAD_REQUEST", at);
    }

    // A second attempt, then the delivery's story: each attempt with its reason.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    app.deliver().await;
    let show = app
        .get(
            "operator",
            &format!("/operator/v1/deliveries/{delivery_id}"),
        )
        .await;
    assert_eq!(show.status, 200, "{}", show.text);
    let detail = show.json();
    assert_eq!(detail["reference"], stored.reference.as_str());
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{detail}");
    for a in attempts {
        assert_eq!(a["outcome"], "retry");
        assert_eq!(a["reason_class"], "connection-refused");
        assert_eq!(a["target"], "127.0.0.1:1");
        assert!(a["duration_ms"].is_u64(), "{a}");
        assert!(a["seq"].as_i64().unwrap() > 0, "{a}");
    }
    assert!(attempts[0]["seq"].as_i64() < attempts[1]["seq"].as_i64());
    let unknown = app
        .get(
            "operator",
            "/operator/v1/deliveries/5d0c5f3e-0000-4000-8000-000000000000",
        )
        .await;
    unknown.assert_issue(404, "REC_NOT_FOUND", "id");
    assert_eq!(
        app.get("gp-a", &format!("/operator/v1/deliveries/{delivery_id}"))
            .await
            .status,
        403
    );

    // The command line shows the same, as a table an operator reads at a glance.
    let (code, out, err) = command(
        &app,
        &[
            "deliveries",
            "list",
            "--recipient",
            &stored.provider,
            "--state",
            "queued",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for column in [
        "id",
        "referral",
        "recipient",
        "kind",
        "state",
        "attempts",
        "age",
        "next",
        "last error",
    ] {
        assert!(lines[0].contains(column), "{out}");
    }
    for value in [
        &delivery_id,
        &stored.reference,
        &stored.provider,
        "referral",
        "queued",
        "127.0.0.1:1: connection refused",
    ] {
        assert!(lines[1].contains(value), "{value}: {out}");
    }
    let (code, out, _) = command(&app, &["deliveries", "list", "--state", "dead"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    let (code, _, err) = command(&app, &["deliveries", "list", "--state", "lost"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = command(&app, &["deliveries", "list", "--recipient", "nobody"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--recipient: no provider or GP callback is called nobody"),
        "{err}"
    );
    let (code, _, err) = command(&app, &["deliveries", "list", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = command(&app, &["deliveries", "show", &delivery_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&stored.reference), "{out}");
    let attempt_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("connection refused"))
        .collect();
    // The last error, and one line per attempt.
    assert_eq!(attempt_lines.len(), 3, "{out}");
    assert!(
        attempt_lines[1].contains("retry") && attempt_lines[1].contains("127.0.0.1:1"),
        "{out}"
    );
    let (code, _, err) = command(&app, &["deliveries", "show", "no-such-delivery"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("deliveries show: no delivery has id no-such-delivery"),
        "{err}"
    );

    // Nothing about the person reaches an operator.
    for shown in [&list.text, &show.text, &out] {
        for never in FIXTURE_PATIENT_DATA {
            assert!(
                !shown.contains(never),
                "an operator view holds patient data"
            );
        }
    }
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "operator.deliveries.show"
        && a.client_id.as_deref() == Some("operator")
        && a.referral_id.as_deref() == Some(referral_id.as_str())));
}

on_both_databases!(a_provider_down_is_explained_in_the_list_and_in_each_attempt);

fn operator_post(app: &TestApp, client: &str, path: &str) -> reqwest::RequestBuilder {
    app.client.post(app.url(path)).bearer_auth(token(client))
}

async fn a_paused_recipient_queues_until_resumed_then_gets_each_referral_once(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let config = provider.config(FAST_RETRIES);
    let app = TestApp::spawn_with(db, &config).await;
    let referral_id = accept(&app).await;
    let recipient = app
        .store
        .referral(&referral_id)
        .await
        .unwrap()
        .unwrap()
        .provider;
    let pause = format!("/operator/v1/recipients/{recipient}/pause");

    // Only operators pause, and only recipients the gateway has.
    let refused = operator_post(&app, "gp-a", &pause).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let unknown = Reply::from(
        operator_post(&app, "operator", "/operator/v1/recipients/nobody/pause")
            .send()
            .await
            .unwrap(),
    )
    .await;
    unknown.assert_issue(404, "REC_NOT_FOUND", "recipient");
    for changed in [true, false] {
        let paused = Reply::from(
            operator_post(&app, "operator", &pause)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(paused.status, 200, "{}", paused.text);
        assert_eq!(
            paused.json()["changed"],
            changed,
            "pausing twice is no error"
        );
    }

    // Paused: still accepted and queued, nothing sent, by this gateway or another.
    let second_id = accept(&app).await;
    assert_eq!(app.deliver().await, 0);
    let other = app.second(&config).await;
    assert_eq!(
        other.deliver().await,
        0,
        "the pause holds for every gateway"
    );
    assert!(provider.seen().is_empty());
    let recipients = app.get("operator", "/operator/v1/recipients").await;
    assert_eq!(recipients.status, 200, "{}", recipients.text);
    let row = recipients
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == recipient.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (row["paused"].clone(), row["queued"].clone()),
        (true.into(), 2.into()),
        "{row}"
    );
    assert_eq!(row["paused_by"], "operator");
    let (code, out, err) = command(&app, &["deliveries", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains(&format!("paused (nothing is sent to them): {recipient}")),
        "{out}"
    );
    let (code, _, err) = command(&app, &["deliveries", "pause", "nobody"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deliveries pause: no provider or GP callback is called nobody"),
        "{err}"
    );

    // Resumed from the command line: each referral goes, once.
    let (code, out, err) = command(&app, &["deliveries", "resume", &recipient]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{recipient}: sending"));
    assert_eq!(app.deliver().await, 2);
    assert_eq!(other.deliver().await, 0);
    assert_eq!(app.deliver().await, 0);
    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    for id in [&referral_id, &second_id] {
        let delivered = app.store.deliveries_for(id).await.unwrap();
        assert_eq!(delivered[0].state.as_str(), "delivered");
    }

    let audit = app.audit().await;
    let pauses: Vec<(&str, &str, Option<&str>)> = audit
        .iter()
        .filter(|a| {
            a.action.starts_with("operator.recipients.p")
                || a.action == "operator.recipients.resume"
        })
        .map(|a| {
            (
                a.action.as_str(),
                a.outcome.as_str(),
                a.client_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        pauses,
        [
            ("operator.recipients.pause", "rejected", Some("gp-a")),
            ("operator.recipients.pause", "rejected", Some("operator")),
            ("operator.recipients.pause", "accepted", Some("operator")),
            ("operator.recipients.pause", "unchanged", Some("operator")),
            (
                "operator.recipients.resume",
                "accepted",
                Some("command-line")
            ),
        ],
        "every pause and resume is audited, refused or not"
    );
}

on_both_databases!(a_paused_recipient_queues_until_resumed_then_gets_each_referral_once);

async fn quiet_hours_hold_deliveries_until_they_end_in_uk_local_time(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let quiet = "quiet_hours = [\"22:00-06:00\"]";
    let config = format!(
        "[providers.bchft]\nendpoint = \"{url}\"\n{quiet}\n[providers.prospects]\nendpoint = \"{url}\"\n{quiet}\n{FAST_RETRIES}",
        url = provider.url
    );
    let app = TestApp::spawn_with(db, &config).await;
    let worker = app.deliverer.clone().unwrap();
    let at = |t: OffsetDateTime| worker.clone().with_clock(Arc::new(move || t));
    accept(&app).await;

    // 21:30 UTC on a summer evening is 22:30 BST: quiet.
    assert_eq!(
        at(datetime!(2026-07-01 21:30 UTC))
            .run_once()
            .await
            .unwrap(),
        0
    );
    // The same time of day in winter is 21:30 GMT: not yet quiet...
    // ...but 05:59 GMT is, and 06:00 is not.
    assert_eq!(
        at(datetime!(2026-12-02 05:59 UTC))
            .run_once()
            .await
            .unwrap(),
        0
    );
    assert!(provider.seen().is_empty());
    assert_eq!(
        at(datetime!(2026-12-02 06:00 UTC))
            .run_once()
            .await
            .unwrap(),
        1
    );
    accept(&app).await;
    assert_eq!(
        at(datetime!(2026-12-01 21:30 UTC))
            .run_once()
            .await
            .unwrap(),
        1
    );
    assert_eq!(provider.seen().len(), 2);
}

on_both_databases!(quiet_hours_hold_deliveries_until_they_end_in_uk_local_time);

/// Two gateways on one database send to one provider: together they keep to its
/// rate and to how many it takes at once.
async fn rate_and_concurrency_limits_hold_across_two_gateways(db: Db) {
    let provider = FakeProvider::start(vec![
        Step {
            delay_ms: 150,
            ..Step::status(201)
        };
        8
    ])
    .await;
    let limits = "max_per_second = 4\nmax_in_flight = 2";
    let config = format!(
        "[providers.bchft]\nendpoint = \"{url}\"\n{limits}\n[providers.prospects]\nendpoint = \"{url}\"\n{limits}\n{FAST_RETRIES}",
        url = provider.url
    );
    let app = TestApp::spawn_with(db, &config).await;
    let other = app.second(&config).await;
    for _ in 0..8 {
        accept(&app).await;
    }
    let drain = |gw: &TestApp| {
        let worker = gw.deliverer.clone().unwrap();
        async move {
            for _ in 0..400 {
                worker.run_once().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    let until_sent = async {
        while provider.seen().len() < 8 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = futures_util::future::join(drain(&app), drain(&other)) => {}
        _ = until_sent => {}
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 8, "every referral is sent");
    assert!(
        provider.most_in_flight() <= 2,
        "at most 2 at once: {}",
        provider.most_in_flight()
    );
    // 4 a second: starts are slotted 250 ms apart, so no second holds more than five
    // of them, however late a busy machine sends each after its slot.
    let mut at: Vec<_> = seen.iter().map(|s| s.at).collect();
    at.sort();
    for six in at.windows(6) {
        let span = six[5] - six[0];
        assert!(
            span > std::time::Duration::from_secs(1),
            "six starts within {span:?}"
        );
    }
}

on_both_databases!(rate_and_concurrency_limits_hold_across_two_gateways);

/// One referral's whole story by any of its business keys: accepted, delivered, a
/// status event, cancelled and the notice sent, then purged; each step with its seq.
async fn a_referral_s_timeline_is_found_by_any_of_its_keys(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let original = referral();
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", &original, &ids).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = app.store.referral(&id).await.unwrap().unwrap();
    app.deliver().await;
    let event = serde_json::json!({"event": "accepted", "occurred_at": just_now()});
    let posted = crate::events::post(
        &app,
        &stored.provider,
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &event,
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.text);
    assert_eq!(app.send("gp-a", &cancellation(&original)).await.status, 200);
    app.deliver().await;
    crate::retention::age(db, &app, &id).await;
    assert_eq!(crate::retention::purge(&app).await, 1);

    let sender_identifier = original["entry"][1]["resource"]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_reference = app
        .get(
            "operator",
            &format!("/operator/v1/referrals/{}", stored.reference),
        )
        .await;
    assert_eq!(by_reference.status, 200, "{}", by_reference.text);
    let found = by_reference.json();
    assert_eq!(found["count"], 1);
    let story = &found["referrals"][0];
    assert_eq!(story["id"], id.as_str());
    assert_eq!(story["status"], "cancelled");
    assert_eq!(story["milestone"], "accepted");
    let steps: Vec<(String, String)> = story["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .filter(|(action, _)| !action.starts_with("operator.") && action != "referral.read")
        .collect();
    let expected = [
        ("referral.new", "accepted"),
        ("delivery.referral", "delivered"),
        ("referral.event", "accepted"),
        ("referral.cancel", "accepted"),
        ("delivery.cancellation", "delivered"),
        ("retention.purge", "purged"),
    ];
    assert_eq!(
        steps,
        expected.map(|(a, o)| (a.to_owned(), o.to_owned())),
        "{story}"
    );
    let seqs: Vec<i64> = story["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let first = &story["timeline"][0];
    assert_eq!(
        first["detail"]["route"]["provider"],
        stored.provider.as_str()
    );
    assert_eq!(first["actor"], "gp-a");
    let delivered = &story["timeline"][1];
    assert!(
        delivered["detail"]["target"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // The same story by the gateway id, the correlation id and the sender's identifier.
    for key in [id.clone(), ids.correlation.to_string(), sender_identifier] {
        let again = app
            .get("operator", &format!("/operator/v1/referrals/{key}"))
            .await;
        assert_eq!(again.status, 200, "{key}: {}", again.text);
        assert_eq!(again.json()["referrals"][0]["id"], id.as_str(), "{key}");
    }
    // A key two referrals share lists both; one that names none is 404.
    let shared = Ids {
        request: uuid::Uuid::new_v4(),
        ..ids
    };
    assert_eq!(
        app.send_with("gp-a", &referral(), &shared).await.status,
        200
    );
    let both = app
        .get(
            "operator",
            &format!("/operator/v1/referrals/{}", ids.correlation),
        )
        .await;
    assert_eq!(both.json()["count"], 2, "{}", both.text);
    app.get("operator", "/operator/v1/referrals/TIW-NOSUCH")
        .await
        .assert_issue(404, "REC_NOT_FOUND", "key");
    assert_eq!(
        app.get(
            "auditor",
            &format!("/operator/v1/referrals/{}", stored.reference)
        )
        .await
        .status,
        403
    );

    // Auditors reach every referral about the person by NHS number, sent in the body.
    let nhs_number = original["entry"][2]["resource"]["identifier"][0]["value"].clone();
    let by_person = |client: &str| {
        app.client
            .post(app.url("/audit/v1/referrals"))
            .bearer_auth(token(client))
            .json(&serde_json::json!({ "nhs_number": nhs_number }))
            .send()
    };
    assert_eq!(by_person("operator").await.unwrap().status(), 403);
    let person = Reply::from(by_person("auditor").await.unwrap()).await;
    assert_eq!(person.status, 200, "{}", person.text);
    assert_eq!(person.json()["count"], 2);

    // The command line tells the same story.
    let (code, out, err) = command(&app, &["referrals", "show", &stored.reference]);
    assert_eq!(code, 0, "{err}");
    for (action, _) in expected {
        assert!(out.contains(action), "{action}: {out}");
    }
    assert!(out.contains(&stored.reference));
    let (code, out, _) = command(&app, &["referrals", "show", &ids.correlation.to_string()]);
    assert_eq!(code, 0);
    assert!(out.starts_with("2 referrals match"), "{out}");
    let (code, _, err) = command(&app, &["referrals", "show", "TIW-NOSUCH"]);
    assert_eq!(code, 1, "{err}");

    for shown in [&by_reference.text, &person.text, &out] {
        for never in FIXTURE_PATIENT_DATA {
            assert!(!shown.contains(never), "a timeline holds patient data");
        }
    }
}

on_both_databases!(a_referral_s_timeline_is_found_by_any_of_its_keys);
