//! What operators see and steer: why a delivery failed and where it went, and each
//! delivery's attempts, over the operator API and the command line alike.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::FAST_RETRIES;

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
