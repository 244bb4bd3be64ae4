//! Delivery: every accepted referral reaches its provider once, minimised, and what
//! cannot be delivered is parked where an operator can see and replay it.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step, TLS, start_hanging_up};
use fhir_sdk::time::OffsetDateTime;
use thrive_gateway::store::DeliveryFilter;
use thrive_gateway::store::Store;

async fn accept(app: &TestApp, msg: &serde_json::Value) -> (String, Ids) {
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", msg, &ids).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    (
        reply.json()["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        ids,
    )
}

async fn state_of(app: &TestApp, referral: &str) -> Vec<(String, String)> {
    app.store
        .deliveries_for(referral)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.kind.to_string(), d.state.to_string()))
        .collect()
}

async fn a_referral_is_delivered_once_minimised_with_stable_ids(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let (id, ids) = accept(&app, &referral()).await;
    assert_eq!(app.deliver().await, 1);
    assert_eq!(app.deliver().await, 0, "nothing is sent twice");

    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    let delivery = &app.store.deliveries_for(&id).await.unwrap()[0];
    assert_eq!(delivery.state.as_str(), "delivered");
    assert_eq!(
        seen[0].request_id, delivery.request_id,
        "X-Request-Id is the delivery's"
    );
    assert_eq!(seen[0].correlation_id, ids.correlation.to_string());
    let body = &seen[0].body;
    assert_eq!(body["referral"]["id"], id.as_str());
    let data = &body["data"];
    assert!(
        data.is_object() && !data.as_object().unwrap().is_empty(),
        "{body}"
    );
    let text = body.to_string();
    for never in [
        "9990000018",
        "1973-04-12",
        "knee pain",
        "239873007",
        "1 Example Street",
    ] {
        assert!(
            !text.contains(never),
            "the provider must not receive {never}"
        );
    }
    assert!(
        text.contains("v1:"),
        "the NHS number travels as a pseudonym: {text}"
    );

    let audit = app.audit().await;
    let sent = audit
        .iter()
        .find(|a| a.action == "delivery.referral")
        .expect("attempt audited");
    assert_eq!(sent.outcome, "delivered");
    assert_eq!(
        sent.request_id.as_deref(),
        Some(delivery.request_id.as_str())
    );
    assert!(
        sent.detail.contains("mapping_version"),
        "receipt recorded: {}",
        sent.detail
    );
    assert!(!sent.detail.contains("9990000018"));
}

async fn transient_failures_are_retried_with_the_same_request_id(db: Db) {
    let provider = FakeProvider::start(vec![
        Step::status(500),
        Step {
            status: 429,
            retry_after: None,
            delay_ms: 0,
        },
        Step::status(200),
    ])
    .await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let (id, _) = accept(&app, &referral()).await;
    for _ in 0..3 {
        app.deliver().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.request_id == seen[0].request_id));
    let d = &app.store.deliveries_for(&id).await.unwrap()[0];
    assert_eq!((d.state.as_str(), d.attempts), ("delivered", 3));
}

async fn retry_after_is_honoured(db: Db) {
    let provider = FakeProvider::start(vec![Step {
        status: 429,
        retry_after: Some(120),
        delay_ms: 0,
    }])
    .await;
    // Retry-After is honoured up to delivery.max_backoff_ms, here ten minutes.
    let app = TestApp::spawn_with(
        db,
        &provider.config(
            "\n[delivery]\nenabled = false\ninitial_backoff_ms = 1\nmax_backoff_ms = 600000\n",
        ),
    )
    .await;
    accept(&app, &referral()).await;
    let before = OffsetDateTime::now_utc();
    app.deliver().await;
    let view = &app
        .store
        .list_deliveries(&DeliveryFilter::default(), 10)
        .await
        .unwrap()[0];
    assert_eq!(view.state.as_str(), "queued");
    assert_eq!(view.last_status, Some(429));
    assert!(
        view.next_attempt_at >= before + fhir_sdk::time::Duration::seconds(119),
        "{view:?}"
    );
    assert_eq!(app.deliver().await, 0, "not due yet");
}

/// Delivery settings for the worker running in the background, as `serve` runs it.
fn background_worker(max_backoff_ms: u64) -> String {
    format!(
        "\n[delivery]\nenabled = true\npoll_interval_ms = 20\ninitial_backoff_ms = 1\nmax_backoff_ms = {max_backoff_ms}\n"
    )
}

/// Waits (up to 20 s) until `check` holds, failing the test with `what` otherwise.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn an_absurd_retry_after_is_capped_and_the_worker_keeps_delivering(db: Db) {
    const HOUR_MS: u64 = 3_600_000;
    // 1e12 seconds is some 31,700 years: past what any clock holds.
    let provider = FakeProvider::start(vec![Step {
        status: 503,
        retry_after: Some(1_000_000_000_000),
        delay_ms: 0,
    }])
    .await;
    let app = TestApp::spawn_with(db, &provider.config(&background_worker(HOUR_MS))).await;
    let before = OffsetDateTime::now_utc();
    let (first, _) = accept(&app, &referral()).await;
    let attempted = || async { app.store.deliveries_for(&first).await.unwrap()[0].attempts == 1 };
    wait_until("the first attempt is recorded", attempted).await;
    let after = OffsetDateTime::now_utc();
    let view = app
        .store
        .list_deliveries(&DeliveryFilter::default(), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.referral_id == first)
        .unwrap();
    assert_eq!(view.state.as_str(), "queued", "{view:?}");
    assert_eq!(view.last_status, Some(503));
    let cap = fhir_sdk::time::Duration::milliseconds(HOUR_MS as i64);
    assert!(
        view.next_attempt_at <= after + cap && view.next_attempt_at >= before + cap,
        "rescheduled at delivery.max_backoff_ms: {view:?}"
    );

    // The same worker goes on: the next referral is delivered.
    let (second, _) = accept(&app, &referral()).await;
    let delivered =
        || async { state_of(&app, &second).await == [("referral".into(), "delivered".into())] };
    wait_until("the next referral is delivered", delivered).await;
    assert_eq!(provider.seen().len(), 2);
    assert_eq!(
        state_of(&app, &first).await,
        vec![("referral".into(), "queued".into())],
        "the first waits for its retry"
    );
    assert_eq!(app.get("operator", "/health/live").await.status, 200);
}

async fn a_refusal_is_a_dead_letter_that_an_operator_can_replay(db: Db) {
    let provider = FakeProvider::start(vec![Step::status(400)]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    let dead = app
        .store
        .list_deliveries(&DeliveryFilter::dead(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_status, Some(400));
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("answer"),
        "provider's answer kept"
    );
    assert_eq!(
        app.deliver().await,
        0,
        "dead letters are not retried by themselves"
    );

    let audit = audit_record("delivery.replay");
    assert!(
        app.store
            .replay_delivery(&dead[0].id, OffsetDateTime::now_utc(), &audit)
            .await
            .unwrap()
    );
    assert!(
        !app.store
            .replay_delivery(&dead[0].id, OffsetDateTime::now_utc(), &audit)
            .await
            .unwrap(),
        "only dead letters replay"
    );
    app.deliver().await;
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "delivered".into())]
    );
    assert_eq!(provider.seen().len(), 2);
}

async fn an_unreachable_or_slow_provider_is_retried_then_parked(db: Db) {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = format!(
        "[providers.bchft]\nendpoint = \"http://127.0.0.1:{port}/x\"\n[providers.prospects]\nendpoint = \"http://127.0.0.1:{port}/x\"\n{FAST_RETRIES}"
    );
    let app = TestApp::spawn_with(db, &config).await;
    let (id, _) = accept(&app, &referral()).await;
    for _ in 0..3 {
        app.deliver().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let d = &app
        .store
        .list_deliveries(&DeliveryFilter::dead(), 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 1, "parked after max_attempts");
    assert_eq!(d[0].attempts, 3);
    assert!(
        d[0].last_error
            .as_deref()
            .unwrap_or_default()
            .contains("connect")
    );
    assert_eq!(d[0].referral_id, id);

    let slow = FakeProvider::start(vec![Step {
        status: 200,
        retry_after: None,
        delay_ms: 3000,
    }])
    .await;
    let app = TestApp::spawn_with(db, &slow.config(FAST_RETRIES)).await;
    accept(&app, &referral()).await;
    app.deliver().await;
    let view = &app
        .store
        .list_deliveries(&DeliveryFilter::default(), 10)
        .await
        .unwrap()[0];
    assert_eq!(view.state.as_str(), "queued");
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{view:?}"
    );
}

async fn consent_is_checked_again_and_withdrawal_reaches_the_provider(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    // Delivered, then withdrawn: the provider gets a withdrawal notice.
    let original = referral();
    let (id, _) = accept(&app, &original).await;
    app.deliver().await;
    assert_eq!(app.send("gp-a", &withdrawal(&original)).await.status, 200);
    app.deliver().await;
    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body["notice"], "withdrawal");
    assert_eq!(seen[1].body["referral"]["id"], id.as_str());
    assert!(
        seen[1].body.get("data").is_none(),
        "a notice carries no personal data"
    );
    assert_ne!(seen[1].request_id, seen[0].request_id);

    // Consent that stops covering the disclosure before the attempt: never sent.
    let (late, _) = accept(&app, &referral()).await;
    let expired = r#"{"given_at":null,"valid_from":null,"valid_until":"2020-01-01T00:00:00Z","recipient":"prospects"}"#;
    execute_sql(
        db,
        &app.database_url,
        &format!("UPDATE referrals SET consent = '{expired}' WHERE id = '{late}'"),
    )
    .await;
    app.deliver().await;
    assert_eq!(provider.seen().len(), 2, "nothing more was sent");
    assert_eq!(
        state_of(&app, &late).await,
        vec![("referral".into(), "cancelled".into())]
    );
}

async fn two_gateways_on_one_database_deliver_each_referral_exactly_once(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let first = TestApp::spawn_with(db, &provider.config("")).await;
    let second = first.second(&provider.config("")).await;
    let mut referrals = Vec::new();
    for i in 0..16 {
        let app = if i % 2 == 0 { &first } else { &second };
        referrals.push(accept(app, &referral()).await.0);
    }
    let drain = |app: &TestApp| {
        let d = app.deliverer.clone().unwrap();
        async move {
            for _ in 0..20 {
                if d.run_once().await.unwrap() == 0 {
                    break;
                }
            }
        }
    };
    tokio::join!(drain(&first), drain(&second), drain(&first), drain(&second));
    let seen = provider.seen();
    let mut ids: Vec<&str> = seen.iter().map(|s| s.request_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(seen.len(), 16, "each referral sent once");
    assert_eq!(ids.len(), 16);
    for r in &referrals {
        assert_eq!(
            state_of(&first, r).await,
            vec![("referral".into(), "delivered".into())]
        );
    }
}

async fn the_sandbox_receives_like_a_provider(db: Db) {
    let sandbox = TestApp::spawn_with(db, "[sandbox]\nenabled = true\n").await;
    let url = format!("{}/sandbox/prospects/referrals", sandbox.base);
    let app = TestApp::spawn_with(
        db,
        &format!(
            "[providers.bchft]\nendpoint = \"{url}\"\n[providers.prospects]\nendpoint = \"{url}\"\n"
        ),
    )
    .await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    let received: serde_json::Value = app
        .client
        .get(format!("{}/sandbox/prospects/received", sandbox.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(received.as_array().unwrap().len(), 1);
    assert_eq!(received[0]["body"]["referral"]["id"], id.as_str());
    assert_eq!(received[0]["times"], 1);
}

async fn the_sandbox_checks_signed_jwt_client_credentials(db: Db) {
    let sandbox = TestApp::spawn_with(
        db,
        &format!("[sandbox]\nenabled = true\nclient_jwks_file = \"{KEYS}/test-jwks.json\"\n"),
    )
    .await;
    let gateway = |key: &str, auth: &str| {
        let url = format!("{}/sandbox/prospects/referrals", sandbox.base);
        let token = format!("{}/sandbox/prospects/token", sandbox.base);
        format!(
            "[providers.bchft]\nendpoint = \"{url}\"\n[providers.prospects]\nendpoint = \"{url}\"\nauth = \"{auth}\"\n[providers.prospects.oauth]\ntoken_url = \"{token}\"\nclient_id = \"gw\"\nkey_file = \"{KEYS}/{key}\"\nkey_id = \"test-1\"\n{FAST_RETRIES}"
        )
    };
    let received = || async {
        sandbox
            .client
            .get(format!("{}/sandbox/prospects/received", sandbox.base))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    // The right key: a token, then the delivery.
    let app = TestApp::spawn_with(db, &gateway("test-issuer.pem", "signed-jwt")).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "delivered".into())]
    );
    assert_eq!(received().await, 1);
    // A forged assertion gets no token, so nothing is sent.
    let forged = TestApp::spawn_with(db, &gateway("forger.pem", "signed-jwt")).await;
    let (id, _) = accept(&forged, &referral()).await;
    forged.deliver().await;
    assert_eq!(
        state_of(&forged, &id).await,
        vec![("referral".into(), "queued".into())]
    );
    // No credentials at all: the receiver answers 401, a dead letter.
    let bare = TestApp::spawn_with(db, &gateway("test-issuer.pem", "none")).await;
    let (id, _) = accept(&bare, &referral()).await;
    bare.deliver().await;
    assert_eq!(
        state_of(&bare, &id).await,
        vec![("referral".into(), "dead".into())]
    );
    assert_eq!(received().await, 1);
}

on_both_databases!(
    a_referral_is_delivered_once_minimised_with_stable_ids,
    transient_failures_are_retried_with_the_same_request_id,
    retry_after_is_honoured,
    an_absurd_retry_after_is_capped_and_the_worker_keeps_delivering,
    a_refusal_is_a_dead_letter_that_an_operator_can_replay,
    an_unreachable_or_slow_provider_is_retried_then_parked,
    consent_is_checked_again_and_withdrawal_reaches_the_provider,
    two_gateways_on_one_database_deliver_each_referral_exactly_once,
    the_sandbox_receives_like_a_provider,
    the_sandbox_checks_signed_jwt_client_credentials,
);

async fn operators_list_and_replay_dead_letters_over_http(db: Db) {
    let provider = FakeProvider::start(vec![Step::status(422)]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let (referral_id, _) = accept(&app, &referral()).await;
    app.deliver().await;

    let list = app
        .get("operator", "/operator/v1/deliveries?dead=true")
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let rows = list.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["referral_id"], referral_id.as_str());
    assert_eq!(rows[0]["last_status"], 422);
    let delivery_id = rows[0]["id"].as_str().unwrap().to_owned();

    for client in ["gp-a", "auditor", "bchft"] {
        assert_eq!(
            app.get(client, "/operator/v1/deliveries").await.status,
            403,
            "{client}"
        );
    }
    let replay = |client: &str| {
        app.client
            .post(app.url(&format!("/operator/v1/deliveries/{delivery_id}/replay")))
            .bearer_auth(token(client))
            .send()
    };
    assert_eq!(replay("gp-a").await.unwrap().status(), 403);
    assert_eq!(replay("operator").await.unwrap().status(), 202);
    assert_eq!(
        replay("operator").await.unwrap().status(),
        404,
        "no longer a dead letter"
    );
    app.deliver().await;
    assert_eq!(
        state_of(&app, &referral_id).await,
        vec![("referral".into(), "delivered".into())]
    );
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.action == "operator.deliveries.replay"
                && a.client_id.as_deref() == Some("operator"))
    );
    assert!(audit.iter().any(|a| a.action == "operator.deliveries.list"));
}

on_both_databases!(operators_list_and_replay_dead_letters_over_http);

async fn signed_jwt_client_credentials_are_used_and_cached(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let oauth = format!(
        "auth = \"signed-jwt\"\n[providers.prospects.oauth]\ntoken_url = \"{}\"\nclient_id = \"thrive-gateway-client\"\nkey_file = \"{KEYS}/test-issuer.pem\"\nkey_id = \"test-1\"\n",
        provider.token_url()
    );
    let config = format!(
        "[providers.bchft]\nendpoint = \"{url}\"\n[providers.prospects]\nendpoint = \"{url}\"\n{oauth}",
        url = provider.url
    );
    let app = TestApp::spawn_with(db, &config).await;
    accept(&app, &referral()).await;
    accept(&app, &referral()).await;
    app.deliver().await;

    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.authorization == "Bearer tok-1"),
        "{seen:?}"
    );
    let tokens = provider.token_requests();
    assert_eq!(tokens.len(), 1, "the access token is cached");
    let form = &tokens[0];
    assert!(form.contains("grant_type=client_credentials"));
    assert!(form.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));
    let assertion = form.split("client_assertion=").nth(1).unwrap();
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS512);
    assert_eq!(header.kid.as_deref(), Some("test-1"));
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&std::fs::read_to_string(format!("{KEYS}/test-jwks.json")).unwrap())
            .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS512);
    validation.set_audience(&[provider.token_url()]);
    validation.set_issuer(&["thrive-gateway-client"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "thrive-gateway-client");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let lifetime = claims["exp"].as_i64().unwrap() - OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (0..=300).contains(&lifetime),
        "exp at most five minutes ahead: {lifetime}"
    );
}

on_both_databases!(signed_jwt_client_credentials_are_used_and_cached);

async fn a_provider_hanging_up_mid_answer_or_a_failing_token_endpoint_means_retry(db: Db) {
    // The connection closes half-way through a 200: not delivered, tried again.
    let (url, count) = start_hanging_up().await;
    let app = TestApp::spawn_with(
        db,
        &format!("[providers.bchft]\nendpoint = \"{url}\"\n[providers.prospects]\nendpoint = \"{url}\"\n{FAST_RETRIES}"),
    )
    .await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    let d = &app.store.deliveries_for(&id).await.unwrap()[0];
    assert_eq!((d.state.as_str(), d.attempts), ("queued", 1));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The token endpoint fails: nothing reaches the provider, the delivery waits.
    let provider = FakeProvider::start(vec![]).await;
    provider.fail_tokens(true);
    let config = format!(
        "[providers.bchft]\nendpoint = \"{url}\"\n[providers.prospects]\nendpoint = \"{url}\"\nauth = \"signed-jwt\"\n[providers.prospects.oauth]\ntoken_url = \"{token}\"\nclient_id = \"c\"\nkey_file = \"{KEYS}/test-issuer.pem\"\nkey_id = \"test-1\"\n{FAST_RETRIES}",
        url = provider.url,
        token = provider.token_url()
    );
    let app = TestApp::spawn_with(db, &config).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    assert!(provider.seen().is_empty(), "{:?}", provider.seen());
    let view = &app
        .store
        .list_deliveries(&DeliveryFilter::default(), 10)
        .await
        .unwrap()[0];
    assert_eq!(view.state.as_str(), "queued");
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or_default()
            .contains(&format!(
                "token endpoint {} answered 500",
                provider
                    .url
                    .trim_start_matches("http://")
                    .trim_end_matches("/referrals")
            )),
        "{view:?}"
    );
    // Once it recovers, the delivery goes.
    provider.fail_tokens(false);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.deliver().await;
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "delivered".into())]
    );
    assert_eq!(provider.seen().len(), 1);
}

on_both_databases!(a_provider_hanging_up_mid_answer_or_a_failing_token_endpoint_means_retry);

fn tls_config(url: &str, ca: &str, client: Option<&str>) -> String {
    let identity = client
        .map(|c| {
            format!("client_cert_file = \"{TLS}/{c}.pem\"\nclient_key_file = \"{TLS}/{c}.key\"\n")
        })
        .unwrap_or_default();
    let mut out = String::new();
    for p in ["bchft", "prospects"] {
        out.push_str(&format!(
            "[providers.{p}]\nendpoint = \"{url}\"\n[providers.{p}.tls]\nca_file = \"{TLS}/{ca}.pem\"\n{identity}"
        ));
    }
    out.push_str(FAST_RETRIES);
    out
}

async fn mutual_tls_to_providers_and_the_wrong_ca_is_refused(db: Db) {
    // The provider requires a client certificate from the test CA.
    let provider = FakeProvider::start_tls(vec![], "server", Some("ca")).await;
    let app = TestApp::spawn_with(db, &tls_config(&provider.url, "ca", Some("client"))).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    let view = app
        .store
        .list_deliveries(&DeliveryFilter::default(), 1)
        .await
        .unwrap();
    assert_eq!(view[0].state.as_str(), "delivered", "{view:?}");
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "delivered".into())]
    );
    assert_eq!(provider.seen().len(), 1);

    // A provider whose certificate another CA issued is not trusted: nothing is sent.
    let impostor = FakeProvider::start_tls(vec![], "other-server", None).await;
    let app = TestApp::spawn_with(db, &tls_config(&impostor.url, "ca", Some("client"))).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    assert!(impostor.seen().is_empty());
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "queued".into())]
    );
    // The operator is told why: a TLS failure naming the host and the check.
    let view = &app
        .store
        .list_deliveries(&DeliveryFilter::default(), 1)
        .await
        .unwrap()[0];
    let error = view.last_error.as_deref().unwrap_or_default();
    let host = impostor
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/referrals");
    assert!(
        error.starts_with(&format!("{host}: TLS failure: ")) && error.contains("certificate"),
        "{error}"
    );

    // Without the client certificate the provider refuses the connection.
    let app = TestApp::spawn_with(db, &tls_config(&provider.url, "ca", None)).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "queued".into())]
    );
    // A certificate from another CA is refused too.
    let app = TestApp::spawn_with(db, &tls_config(&provider.url, "ca", Some("other-client"))).await;
    let (id, _) = accept(&app, &referral()).await;
    app.deliver().await;
    assert_eq!(
        state_of(&app, &id).await,
        vec![("referral".into(), "queued".into())]
    );
    assert_eq!(
        provider.seen().len(),
        1,
        "only the first, authenticated delivery arrived"
    );
}

on_both_databases!(mutual_tls_to_providers_and_the_wrong_ca_is_refused);

async fn the_fhir_format_sends_a_message_bundle_of_mapped_elements_only(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let config = format!(
        "[providers.bchft]\nendpoint = \"{url}\"\nformat = \"fhir\"\n[providers.prospects]\nendpoint = \"{url}\"\nformat = \"fhir\"\n",
        url = provider.url
    );
    let app = TestApp::spawn_with(db, &config).await;
    let original = referral();
    let (id, _) = accept(&app, &original).await;
    app.deliver().await;
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    let bundle = &seen[0].body;
    serde_json::from_value::<fhir_sdk::r4b::resources::Bundle>(bundle.clone())
        .expect("an R4 Bundle");
    crate::fhir_schema::assert_valid_r4(bundle, "the provider's FHIR message");
    assert_eq!(bundle["type"], "message");
    // BaRS: the message names its receiving provider.
    let destination = &bundle["entry"][0]["resource"]["destination"][0];
    assert_eq!(destination["endpoint"], provider.url.as_str());
    assert!(destination["receiver"]["display"].is_string());
    let resources: Vec<&serde_json::Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let types: Vec<&str> = resources
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "MessageHeader",
            "ServiceRequest",
            "Patient",
            "QuestionnaireResponse"
        ]
    );
    assert_eq!(resources[1]["id"], id.as_str());
    let patient = resources[2];
    assert_eq!(
        patient.as_object().unwrap().len(),
        3,
        "only id and the pseudonym identifier: {patient}"
    );
    assert!(
        patient["identifier"][0]["value"]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    let items: Vec<&str> = resources[3]["item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["linkId"].as_str().unwrap())
        .collect();
    assert!(
        items.contains(&"patient_pseudonym") && items.contains(&"postcode_district"),
        "{items:?}"
    );
    let text = bundle.to_string();
    for never in [
        "9990000018",
        "1973-04-12",
        "knee pain",
        "239873007",
        "1 Example Street",
    ] {
        assert!(
            !text.contains(never),
            "the provider must not receive {never}"
        );
    }

    // A notice in the same format: the referral revoked, nothing personal.
    assert_eq!(app.send("gp-a", &cancellation(&original)).await.status, 200);
    app.deliver().await;
    let notice = &provider.seen()[1].body;
    serde_json::from_value::<fhir_sdk::r4b::resources::Bundle>(notice.clone())
        .expect("an R4 Bundle");
    assert_eq!(notice["entry"][1]["resource"]["status"], "revoked");
    assert_eq!(notice["entry"].as_array().unwrap().len(), 2);
}

on_both_databases!(the_fhir_format_sends_a_message_bundle_of_mapped_elements_only);

/// Makes the delivery point at a referral that is not there (a hand-made repair gone
/// wrong), so the worker can no longer read it with its referral.
async fn lose_the_referral_of(db: Db, url: &str, delivery: &str) {
    let repoint = format!("UPDATE deliveries SET referral_id = 'gone' WHERE id = '{delivery}'");
    match db {
        Db::Sqlite => execute_sql(db, url, &format!("PRAGMA foreign_keys = OFF; {repoint}")).await,
        Db::Postgres => {
            execute_sql(
                db,
                url,
                "ALTER TABLE deliveries DROP CONSTRAINT deliveries_referral_id_fkey",
            )
            .await;
            execute_sql(db, url, &repoint).await;
        }
    }
}

async fn a_delivery_the_worker_keeps_failing_on_is_parked_and_the_rest_delivered(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let (poisoned, _) = accept(&app, &referral()).await;
    let delivery = app.store.deliveries_for(&poisoned).await.unwrap()[0]
        .id
        .clone();
    lose_the_referral_of(db, &app.database_url, &delivery).await;
    let (first, _) = accept(&app, &referral()).await;
    let (second, _) = accept(&app, &referral()).await;

    // delivery.max_worker_failures is 3: three passes, and every pass goes through.
    for _ in 0..3 {
        app.deliver().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for id in [&first, &second] {
        assert_eq!(
            state_of(&app, id).await,
            vec![("referral".into(), "delivered".into())]
        );
    }
    assert_eq!(provider.seen().len(), 2);
    let dead = app
        .store
        .list_deliveries(&DeliveryFilter::dead(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, delivery);
    assert_eq!((dead[0].worker_failures, dead[0].attempts), (3, 0));
    let reason = dead[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("failed on it 3 times in a row"), "{reason}");
    assert_eq!(app.deliver().await, 0, "a parked delivery is not retried");

    // Operators see it, with its reason, over HTTP and on the command line.
    let list = app
        .get("operator", "/operator/v1/deliveries?dead=true")
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let rows = list.json();
    assert_eq!(rows[0]["id"], delivery.as_str());
    assert_eq!(rows[0]["worker_failures"], 3);
    assert_eq!(rows[0]["last_error"], reason.as_str());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("THRIVE_ENV")
        .env("THRIVE__DATABASE__URL", &app.database_url)
        .args(["deliveries", "list", "--dead"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&delivery) && stdout.contains(&reason),
        "{stdout}"
    );

    // Each failure is recorded, none with patient data.
    let audit = app.audit().await;
    let failures: Vec<&str> = audit
        .iter()
        .filter(|a| a.request_id == dead.first().map(|d| d.request_id.clone()))
        .filter(|a| a.action == "delivery.referral")
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(failures, ["worker-error", "worker-error", "dead-letter"]);
    for record in &audit {
        for never in FIXTURE_PATIENT_DATA {
            assert!(!record.detail.contains(never), "{}", record.detail);
        }
    }
}

on_both_databases!(a_delivery_the_worker_keeps_failing_on_is_parked_and_the_rest_delivered);

/// The gateway's store, but recording the outcome of one delivery panics: a bug
/// that only that delivery's data sets off.
#[derive(Debug)]
struct PanicsOn {
    inner: std::sync::Arc<dyn Store>,
    delivery: String,
}

mod panics_on {
    use super::PanicsOn;
    use fhir_sdk::time::OffsetDateTime;
    use thrive_gateway::audit::checkpoint::CheckpointRow;
    use thrive_gateway::store::*;

    #[async_trait::async_trait]
    impl Store for PanicsOn {
        async fn migrate(&self) -> Result<(), StoreError> {
            self.inner.migrate().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
    }

    #[async_trait::async_trait]
    impl MeshStore for PanicsOn {
        async fn mesh_message_seen(&self, message_id: &str) -> Result<bool, StoreError> {
            self.inner.mesh_message_seen(message_id).await
        }
        async fn record_mesh_message(
            &self,
            m: &MeshInbound,
            audit: Option<&AuditRecord>,
        ) -> Result<bool, StoreError> {
            self.inner.record_mesh_message(m, audit).await
        }
        async fn mesh_messages(&self, limit: i64) -> Result<Vec<MeshInbound>, StoreError> {
            self.inner.mesh_messages(limit).await
        }
        async fn delivery_by_request_id(
            &self,
            request_id: &str,
        ) -> Result<Option<DeliveryView>, StoreError> {
            self.inner.delivery_by_request_id(request_id).await
        }
        async fn mark_undelivered(
            &self,
            id: &str,
            reason: &str,
            now: OffsetDateTime,
            audit: &AuditRecord,
        ) -> Result<bool, StoreError> {
            self.inner.mark_undelivered(id, reason, now, audit).await
        }
    }

    #[async_trait::async_trait]
    impl ReferralStore for PanicsOn {
        async fn find_referrals(&self, key: &str) -> Result<Vec<ReferralSummary>, StoreError> {
            self.inner.find_referrals(key).await
        }
        async fn referrals_about(
            &self,
            subjects: &[String],
        ) -> Result<Vec<ReferralSummary>, StoreError> {
            self.inner.referrals_about(subjects).await
        }
        async fn insert_referral(&self, r: &NewReferralRecord) -> Result<Inserted, StoreError> {
            self.inner.insert_referral(r).await
        }
        async fn referral(&self, id: &str) -> Result<Option<ReferralRow>, StoreError> {
            self.inner.referral(id).await
        }
        async fn referral_by_sender_identifier(
            &self,
            practice_ods: &str,
            system: &str,
            value: &str,
        ) -> Result<Option<ReferralRow>, StoreError> {
            self.inner
                .referral_by_sender_identifier(practice_ods, system, value)
                .await
        }
        async fn referrals_by_identifier(
            &self,
            by_reference: bool,
            system: Option<&str>,
            value: &str,
        ) -> Result<Vec<ReferralRow>, StoreError> {
            self.inner
                .referrals_by_identifier(by_reference, system, value)
                .await
        }
        async fn apply_update(&self, u: &UpdateRecord) -> Result<Updated, StoreError> {
            self.inner.apply_update(u).await
        }
        async fn deliveries_for(&self, referral_id: &str) -> Result<Vec<DeliveryRow>, StoreError> {
            self.inner.deliveries_for(referral_id).await
        }
        async fn purge_settled(
            &self,
            cutoff: OffsetDateTime,
            now: OffsetDateTime,
            audit: &AuditRecord,
        ) -> Result<u64, StoreError> {
            self.inner.purge_settled(cutoff, now, audit).await
        }
        async fn count_referrals(&self) -> Result<i64, StoreError> {
            self.inner.count_referrals().await
        }
        async fn seal_plaintext(&self) -> Result<u64, StoreError> {
            self.inner.seal_plaintext().await
        }
    }

    #[async_trait::async_trait]
    impl AuditStore for PanicsOn {
        async fn append_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
            self.inner.append_audit(a).await
        }
        async fn seal_audit(&self) -> Result<u64, StoreError> {
            self.inner.seal_audit().await
        }
        async fn audit_pending(&self) -> Result<i64, StoreError> {
            self.inner.audit_pending().await
        }
        async fn audit_after(
            &self,
            after_id: i64,
            limit: i64,
        ) -> Result<Vec<AuditRow>, StoreError> {
            self.inner.audit_after(after_id, limit).await
        }
        async fn audit_chain(
            &self,
            after_seq: i64,
            limit: i64,
        ) -> Result<Vec<AuditRow>, StoreError> {
            self.inner.audit_chain(after_seq, limit).await
        }
        async fn audit_unchained(&self) -> Result<(u64, Option<i64>), StoreError> {
            self.inner.audit_unchained().await
        }
        async fn audit_seq_of_hash(&self, hash: &str) -> Result<Option<i64>, StoreError> {
            self.inner.audit_seq_of_hash(hash).await
        }
        async fn audit_head(&self) -> Result<(i64, String), StoreError> {
            self.inner.audit_head().await
        }
        async fn audit_query(
            &self,
            filter: &AuditFilter,
            after_seq: i64,
            limit: i64,
        ) -> Result<Vec<AuditRow>, StoreError> {
            self.inner.audit_query(filter, after_seq, limit).await
        }
        async fn audit_counts(
            &self,
            action: &str,
            since: fhir_sdk::time::OffsetDateTime,
        ) -> Result<Vec<thrive_gateway::store::AuditCount>, StoreError> {
            self.inner.audit_counts(action, since).await
        }
        async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
            self.inner.audit_checkpoints().await
        }
        async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
            self.inner.insert_checkpoint(c).await
        }
    }

    #[async_trait::async_trait]
    impl OutboxStore for PanicsOn {
        async fn claim_deliveries(
            &self,
            owner: &str,
            now: OffsetDateTime,
            lease_until: OffsetDateTime,
            limit: i64,
        ) -> Result<Vec<Claim>, StoreError> {
            self.inner
                .claim_deliveries(owner, now, lease_until, limit)
                .await
        }
        async fn claim_for_recipient(
            &self,
            owner: &str,
            now: OffsetDateTime,
            lease_until: OffsetDateTime,
            claim: RecipientClaim<'_>,
        ) -> Result<Vec<Claim>, StoreError> {
            self.inner
                .claim_for_recipient(owner, now, lease_until, claim)
                .await
        }
        async fn set_paused(
            &self,
            recipient: &str,
            paused: bool,
            now: OffsetDateTime,
            by: &str,
            audit: &AuditRecord,
        ) -> Result<bool, StoreError> {
            self.inner
                .set_paused(recipient, paused, now, by, audit)
                .await
        }
        async fn recipient_controls(&self) -> Result<Vec<RecipientControl>, StoreError> {
            self.inner.recipient_controls().await
        }
        async fn queue_by_recipient(&self) -> Result<Vec<RecipientQueue>, StoreError> {
            self.inner.queue_by_recipient().await
        }
        async fn finish_deliveries(
            &self,
            owner: &str,
            now: OffsetDateTime,
            finishes: &[Finish<'_>],
        ) -> Result<Vec<bool>, StoreError> {
            if finishes.iter().any(|f| {
                f.id == self.delivery && !matches!(f.outcome, DeliveryOutcome::WorkerFailed { .. })
            }) {
                panic!("the injected bug");
            }
            self.inner.finish_deliveries(owner, now, finishes).await
        }
        async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
            self.inner.release_leases(owner).await
        }
        async fn list_deliveries(
            &self,
            filter: &DeliveryFilter,
            limit: i64,
        ) -> Result<Vec<DeliveryView>, StoreError> {
            self.inner.list_deliveries(filter, limit).await
        }
        async fn replay_delivery(
            &self,
            id: &str,
            now: OffsetDateTime,
            audit: &AuditRecord,
        ) -> Result<bool, StoreError> {
            self.inner.replay_delivery(id, now, audit).await
        }
        async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
            self.inner.delivery(id).await
        }
        async fn resolve_delivery(
            &self,
            id: &str,
            now: OffsetDateTime,
            audit: &AuditRecord,
        ) -> Result<bool, StoreError> {
            self.inner.resolve_delivery(id, now, audit).await
        }
        async fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
            self.inner.delivery_counts().await
        }
    }

    #[async_trait::async_trait]
    impl EventStore for PanicsOn {
        async fn record_event(&self, e: &EventRecord) -> Result<EventRecorded, StoreError> {
            self.inner.record_event(e).await
        }
        async fn events_for(&self, referral_id: &str) -> Result<Vec<EventRow>, StoreError> {
            self.inner.events_for(referral_id).await
        }
        async fn event(&self, id: &str) -> Result<Option<EventRow>, StoreError> {
            self.inner.event(id).await
        }
    }

    #[async_trait::async_trait]
    impl ReportStore for PanicsOn {
        async fn report_rows(
            &self,
            from: OffsetDateTime,
            to: OffsetDateTime,
            identified: bool,
        ) -> Result<Vec<ReportRow>, StoreError> {
            self.inner.report_rows(from, to, identified).await
        }
    }
}

async fn a_delivery_the_worker_panics_on_is_parked_and_the_rest_delivered(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let config = provider.config(FAST_RETRIES);
    let app = TestApp::spawn_with(db, &config).await;
    let (poisoned, _) = accept(&app, &referral()).await;
    let delivery = app.store.deliveries_for(&poisoned).await.unwrap()[0]
        .id
        .clone();
    let (other, _) = accept(&app, &referral()).await;
    // A worker like the gateway's, on a store that panics on that delivery.
    let settings = test_settings(&app.database_url, &config);
    let routing = &app.gateway.routing;
    let datasets =
        thrive_gateway::mapping::Datasets::load(&settings.mappings.dir, routing).unwrap();
    let worker = thrive_gateway::delivery::Deliverer::new(
        &settings,
        std::sync::Arc::new(PanicsOn {
            inner: app.store.clone(),
            delivery: delivery.clone(),
        }),
        routing,
        std::sync::Arc::new(datasets),
        app.gateway.metrics.clone(),
    )
    .unwrap();
    for _ in 0..3 {
        worker.run_once().await.expect("the pass goes through");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        state_of(&app, &other).await,
        vec![("referral".into(), "delivered".into())]
    );
    let view = app.store.delivery(&delivery).await.unwrap().unwrap();
    assert_eq!((view.state.as_str(), view.worker_failures), ("dead", 3));
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("3 times in a row (last: it panicked)"),
        "{view:?}"
    );
    assert_eq!(worker.run_once().await.unwrap(), 0);
    // The provider got it each time, under one X-Request-Id, and the other once.
    let seen = provider.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen.iter()
            .filter(|s| s.request_id == view.request_id)
            .count(),
        3
    );
}

on_both_databases!(a_delivery_the_worker_panics_on_is_parked_and_the_rest_delivered);
