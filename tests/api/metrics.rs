//! `GET /metrics`: what an operator's Prometheus sees. Requests by route pattern,
//! referrals by outcome, delivery attempts by recipient, kind and result, the queue
//! read from the database; no concrete paths, ids or patient data in any of it.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};
use serde_json::json;
use thrive_gateway::store::DeliveryFilter;

/// One scrape, read whole, with its samples.
pub struct Scrape {
    pub status: u16,
    content_type: String,
    pub text: String,
}

impl Scrape {
    /// The value of the series `name` with exactly these labels (any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| {
                let (n, found) = parse_series(series);
                n == name && found == wanted
            })
            .map(|(_, v)| v.parse().expect("a number"))
    }

    /// Like [`Scrape::value`], failing the test when the series is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }

    /// Every value the label `label` takes in the output.
    fn label_values(&self, label: &str) -> Vec<String> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .flat_map(|(series, _)| parse_series(series).1)
            .filter(|(k, _)| k == label)
            .map(|(_, v)| v)
            .collect()
    }

    fn assert_nothing_identifying(&self, also: &[&str]) {
        for never in FIXTURE_PATIENT_DATA.iter().chain(also) {
            assert!(
                !self.text.contains(never),
                "the metrics hold {never}:\n{}",
                self.text
            );
        }
    }
}

/// `name{k="v",...}` into the name and its sorted labels.
fn parse_series(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let inner = rest.strip_suffix('}').expect("closing brace");
    let mut labels: Vec<(String, String)> = inner
        .split("\",")
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once("=\"").expect("label=\"value\"");
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect();
    labels.sort();
    (name, labels)
}

async fn scrape_with(app: &TestApp, authorization: Option<&str>) -> Scrape {
    let mut req = app.client.get(app.url("/metrics"));
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let res = req.send().await.expect("scrape sent");
    Scrape {
        status: res.status().as_u16(),
        content_type: res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        text: res.text().await.expect("body"),
    }
}

pub async fn scrape(app: &TestApp) -> Scrape {
    let s = scrape_with(app, None).await;
    assert_eq!(s.status, 200, "{}", s.text);
    s
}

const PROCESS: &str = "/fhir/r4/$process-message";
const READ: &str = "/fhir/r4/ServiceRequest/{id}";

fn requests<'a>(route: &'a str, method: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
    [("route", route), ("method", method), ("status", status)]
}

/// The fixture with an NHS number that fails Modulus 11: a 422.
fn bad_nhs_number() -> serde_json::Value {
    let mut v = referral();
    set(
        &mut v,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("9990000019"),
    );
    v
}

async fn requests_referrals_and_deliveries_are_counted_by_route_pattern(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;

    let empty = scrape(&app).await;
    assert!(
        empty.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        empty.content_type
    );
    assert_eq!(
        empty.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        0.0
    );
    assert_eq!(empty.get("thrive_dead_letters", &[]), 0.0);

    let accepted = app.send("gp-a", &referral()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let id = accepted.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rejected = app.send("gp-a", &bad_nhs_number()).await;
    assert_eq!(rejected.status, 422, "{}", rejected.text);

    let before = scrape(&app).await;
    assert_eq!(
        before.get("thrive_referrals_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(
        before.get("thrive_referrals_total", &[("outcome", "rejected")]),
        1.0
    );
    assert_eq!(
        before.get(
            "thrive_http_requests_total",
            &requests(PROCESS, "POST", "200")
        ),
        1.0
    );
    assert_eq!(
        before.get(
            "thrive_http_requests_total",
            &requests(PROCESS, "POST", "422")
        ),
        1.0
    );
    assert_eq!(
        before.get(
            "thrive_http_request_duration_seconds_count",
            &[("route", PROCESS)]
        ),
        2.0,
        "both messages timed"
    );
    assert_eq!(
        before.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        1.0,
        "the accepted referral waits for its delivery"
    );

    // A concrete referral path, an unknown referral, and a path nothing serves.
    assert_eq!(
        app.get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
            .await
            .status,
        200
    );
    let stranger = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        app.get("gp-a", &format!("/fhir/r4/ServiceRequest/{stranger}"))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get("gp-a", "/no/such/place/9990000018").await.status,
        404
    );

    assert_eq!(app.deliver().await, 1);
    let recipient = app.store.referral(&id).await.unwrap().unwrap().provider;

    let after = scrape(&app).await;
    assert_eq!(
        after.get("thrive_http_requests_total", &requests(READ, "GET", "200")),
        1.0
    );
    assert_eq!(
        after.get("thrive_http_requests_total", &requests(READ, "GET", "404")),
        1.0
    );
    assert_eq!(
        after.get(
            "thrive_http_requests_total",
            &requests("(unmatched)", "GET", "404")
        ),
        1.0
    );
    assert_eq!(
        after.get(
            "thrive_http_requests_total",
            &requests("/metrics", "GET", "200")
        ),
        2.0,
        "earlier scrapes are counted too"
    );
    assert_eq!(
        after.get(
            "thrive_delivery_attempts_total",
            &[
                ("recipient", recipient.as_str()),
                ("kind", "referral"),
                ("result", "delivered"),
                ("reason", "none")
            ]
        ),
        1.0
    );
    assert_eq!(
        after.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        0.0,
        "delivered: the queue is empty"
    );
    assert_eq!(after.get("thrive_dead_letters", &[]), 0.0);

    // Routes are patterns the gateway defines, never what a client sent.
    let routes = after.label_values("route");
    assert!(
        routes
            .iter()
            .all(|r| ["(unmatched)", PROCESS, READ, "/metrics"].contains(&r.as_str())),
        "{routes:?}"
    );
    after.assert_nothing_identifying(&[&id, &stranger, "/no/such/place", "9990000019"]);
}

async fn a_refusal_by_the_provider_shows_as_a_dead_letter(db: Db) {
    let provider = FakeProvider::start(vec![Step::status(400)]).await;
    let app = TestApp::spawn_with(db, &provider.config(FAST_RETRIES)).await;
    let accepted = app.send("gp-a", &referral()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let id = accepted.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recipient = app.store.referral(&id).await.unwrap().unwrap().provider;
    app.deliver().await;

    let dead = scrape(&app).await;
    assert_eq!(
        dead.get(
            "thrive_delivery_attempts_total",
            &[
                ("recipient", recipient.as_str()),
                ("kind", "referral"),
                ("result", "dead-letter"),
                ("reason", "http-4xx")
            ]
        ),
        1.0
    );
    assert_eq!(dead.get("thrive_dead_letters", &[]), 1.0);
    assert_eq!(
        dead.get("thrive_delivery_queue_depth", &[("state", "dead")]),
        1.0
    );
    assert_eq!(
        dead.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        0.0
    );
    dead.assert_nothing_identifying(&[&id]);

    // An operator replays it: it leaves the dead letters and waits in the queue again.
    let delivery = &app
        .store
        .list_deliveries(&DeliveryFilter::dead(), 10)
        .await
        .unwrap()[0];
    let replay = app
        .client
        .post(app.url(&format!("/operator/v1/deliveries/{}/replay", delivery.id)))
        .bearer_auth(token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let replayed = scrape(&app).await;
    assert_eq!(replayed.get("thrive_dead_letters", &[]), 0.0);
    assert_eq!(
        replayed.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        1.0
    );
}

async fn every_kind_of_referral_message_is_counted_by_outcome(db: Db) {
    let app = TestApp::spawn(db).await;
    let first = referral();
    let ids = Ids::fresh();
    assert_eq!(app.send_with("gp-a", &first, &ids).await.status, 200);
    assert_eq!(app.send_with("gp-a", &first, &ids).await.status, 409);
    assert_eq!(app.send("gp-a", &cancellation(&first)).await.status, 200);
    let second = referral();
    assert_eq!(app.send("gp-a", &second).await.status, 200);
    assert_eq!(app.send("gp-a", &withdrawal(&second)).await.status, 200);
    assert_eq!(
        app.send("gp-a", &withdrawal(&second)).await.status,
        409,
        "already withdrawn: a conflict, not a duplicate"
    );
    assert_eq!(app.send("gp-b", &referral()).await.status, 403);
    let unauthenticated = app
        .client
        .post(app.url(PROCESS))
        .header("Content-Type", "application/fhir+json")
        .body(referral().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let s = scrape(&app).await;
    for (outcome, n) in [
        ("accepted", 2.0),
        ("duplicate", 1.0),
        ("cancelled", 1.0),
        ("withdrawn", 1.0),
        ("rejected", 3.0),
    ] {
        assert_eq!(
            s.get("thrive_referrals_total", &[("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        s.value("thrive_referrals_total", &[("outcome", "error")]),
        None,
        "no failures, so no series"
    );
    assert_eq!(
        s.get(
            "thrive_http_requests_total",
            &requests(PROCESS, "POST", "401")
        ),
        1.0
    );
    assert_eq!(
        s.get("thrive_delivery_queue_depth", &[("state", "queued")]),
        0.0,
        "both referrals were stopped before delivery"
    );
    s.assert_nothing_identifying(&[]);
}

const METRICS_TOKEN: &str = "scrape-me-4b1d2f8e";

async fn the_metrics_token_is_required_when_configured(db: Db) {
    let app = TestApp::spawn_with(
        db,
        &format!("[telemetry]\nmetrics_token = \"{METRICS_TOKEN}\"\n"),
    )
    .await;
    let gp_token = format!("Bearer {}", token("gp-a"));
    for wrong in [
        None,
        Some("Bearer not-the-token"),
        Some(&format!("Bearer {METRICS_TOKEN}x")),
        Some(&format!("Basic {METRICS_TOKEN}")),
        Some(gp_token.as_str()),
    ] {
        let s = scrape_with(&app, wrong).await;
        assert_eq!(s.status, 401, "{wrong:?}: {}", s.text);
        assert!(!s.text.contains("thrive_"), "nothing is shown: {}", s.text);
    }
    let ok = scrape_with(&app, Some(&format!("Bearer {METRICS_TOKEN}"))).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        ok.get(
            "thrive_http_requests_total",
            &requests("/metrics", "GET", "401")
        ),
        5.0,
        "refused scrapes are counted"
    );
    assert!(!ok.text.contains(METRICS_TOKEN));
    assert_eq!(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health checks stay open"
    );

    let open = TestApp::spawn(db).await;
    assert_eq!(
        scrape_with(&open, None).await.status,
        200,
        "open by default"
    );
}

on_both_databases!(
    requests_referrals_and_deliveries_are_counted_by_route_pattern,
    a_refusal_by_the_provider_shows_as_a_dead_letter,
    every_kind_of_referral_message_is_counted_by_outcome,
    the_metrics_token_is_required_when_configured,
);

/// The shipped alert rules pass their own tests in `promtool`, and every series they
/// name is one a running gateway exposes.
async fn the_shipped_alert_rules_test_clean_against_the_series_exposed(db: Db) {
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        vec!["check", "rules", "config/prometheus/alerts.yml"],
        vec!["test", "rules", "tests/prometheus/alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .current_dir(root)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool ({e}): install Debian's prometheus package, as .ci/run does")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A gateway whose provider is down, with a delivery waiting: every series is there.
    let config = "[providers.bchft]\nendpoint = \"http://127.0.0.1:1/r\"\n\
                  [providers.prospects]\nendpoint = \"http://127.0.0.1:1/r\"\n";
    let app = TestApp::spawn_with(db, &format!("{config}{FAST_RETRIES}")).await;
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    app.deliver().await;
    let text = scrape(&app).await.text;
    let rules = std::fs::read_to_string(format!("{root}/config/prometheus/alerts.yml")).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("thrive_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the rules use {name}, which the gateway does not expose:\n{text}"
        );
    }
    for line in [
        r#"thrive_recipient_queued{recipient="bchft"}"#,
        r#"thrive_recipient_paused{recipient="prospects"} 0"#,
        r#"thrive_referrals_total{outcome="accepted"} 1"#,
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("thrive_recipient_consecutive_failures{") && l.ends_with(" 1")),
        "{text}"
    );
}

on_both_databases!(the_shipped_alert_rules_test_clean_against_the_series_exposed);
