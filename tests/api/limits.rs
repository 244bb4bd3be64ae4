//! Never hang, fail fast and say so: a database that goes away is answered 503 within
//! about a second, and the gateway recovers on its own; a failure after a referral was
//! stored does not tell the sender it was not; a client that stalls is cut off at its
//! deadline without holding up the next one; a database that stops answering is cut
//! off at the request deadline; and every such refusal, actix's own
//! included, is an OperationOutcome.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous against the configured second: timing on a loaded machine varies, and
/// what matters is that nobody waits the ten seconds and more of before.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A stand-in for the network path to PostgreSQL that the test can cut and mend: a
/// TCP proxy to the real server. Stopping it closes the listening port (new connections
/// are refused) and every connection through it, as a database restart does.
struct Proxy {
    address: SocketAddr,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
    /// While set, the proxy keeps every connection open and passes nothing on: a
    /// network path that drops packets rather than refusing them.
    silent: Arc<AtomicBool>,
}

/// Copies `from` to `to` until either closes; while `silent`, what arrives is dropped.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut proxy = Self {
            address,
            target: target.to_owned(),
            task: None,
            silent: Arc::new(AtomicBool::new(false)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        let silent = self.silent.clone();
        self.task = Some(tokio::spawn(async move {
            // Each connection's task is aborted with the listener's, closing both sides.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let silent = silent.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::select! {
                            () = forward(client_in, server_out, silent.clone()) => {}
                            () = forward(server_in, client_out, silent) => {}
                        }
                    }
                });
            }
        }));
    }

    /// The database becomes unreachable.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The database is back, on the same address.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }
}

/// `host:port` of the PostgreSQL server the tests use.
fn postgres_address() -> String {
    let base = postgres_base();
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split('/').next().unwrap().to_owned()
}

/// Asserts a transient 503 as a GP system should see it: an OperationOutcome with the
/// one REC code of its status, issue code `transient`, and when to try again.
fn assert_unavailable(reply: &Reply, took: Duration, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {}", reply.text);
    assert!(took < PROMPTLY, "{what} took {took:?}");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{what}: Retry-After {retry}");
    assert_eq!(reply.headers["content-type"], "application/fhir+json");
    let body = reply.json();
    crate::fhir_schema::assert_operation_outcome(&body, what);
    assert_eq!(
        reply.issues(),
        vec![(
            "REC_SERVICE_UNAVAILABLE".into(),
            "transient".into(),
            "".into()
        )],
        "{what}"
    );
    for secret in FIXTURE_PATIENT_DATA {
        assert!(!reply.text.contains(secret), "{what} quotes {secret}");
    }
}

/// Another process's write lock on the SQLite database, held until rolled back.
async fn hold_write_lock(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn ready(app: &TestApp) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let res = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, res.json().await.unwrap(), started.elapsed())
}

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

async fn the_database_going_away_is_answered_503_promptly_and_the_gateway_recovers(db: Db) {
    // The fault: PostgreSQL becomes unreachable; SQLite, having no network, is held by
    // another process's write lock past the busy timeout, which stops every write (and
    // so every audited answer) just as surely.
    let (url, _database) = fresh_database(db).await;
    let (app, mut proxy) = match db {
        Db::Postgres => {
            let target = postgres_address();
            let proxy = Proxy::start(&target).await;
            let url = url.replacen(&target, &proxy.address.to_string(), 1);
            (TestApp::spawn_at(&url, "").await, Some(proxy))
        }
        Db::Sqlite => {
            let app = TestApp::spawn_with(db, "[database]\nsqlite_busy_timeout_ms = 300").await;
            (app, None)
        }
    };
    let first = app.send("gp-a", &referral()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let id = first.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read_path = format!("/fhir/r4/ServiceRequest/{id}");

    let mut lock = None;
    match db {
        Db::Postgres => proxy.as_mut().unwrap().stop().await,
        Db::Sqlite => {
            lock = Some(hold_write_lock(&app.database_url).await);
        }
    }

    let (reply, took) = timed(app.send("gp-a", &referral())).await;
    assert_unavailable(&reply, took, "a referral while the database is away");
    let (reply, took) = timed(app.get("gp-a", &read_path)).await;
    assert_unavailable(&reply, took, "a read while the database is away");
    let (reply, took) = timed(app.get("operator", "/operator/v1/deliveries")).await;
    assert_unavailable(
        &reply,
        took,
        "an operator's list while the database is away",
    );

    if db == Db::Postgres {
        let (status, retry, body, took) = ready(&app).await;
        assert_eq!(status, 503, "{body}");
        assert!(took < PROMPTLY, "readiness took {took:?}");
        assert!(retry.is_some(), "readiness says when to look again");
        // An OperationOutcome, like every error, naming the dependency and how it failed.
        crate::fhir_schema::assert_operation_outcome(&body, "readiness while the database is away");
        let said = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            said.starts_with("not ready: database unreachable")
                || said.starts_with("not ready: database timeout"),
            "{body}"
        );
        assert_eq!(body["issue"][0]["code"], "transient");
    }
    // (On SQLite the database still answers reads, so readiness stays 200: the lock
    // stops writes, not the database.)

    match db {
        Db::Postgres => proxy.as_mut().unwrap().restart().await,
        Db::Sqlite => {
            let mut conn = lock.take().unwrap();
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        }
    }
    // Recovery without a restart: ready again within seconds, and accepting.
    let mut back = false;
    for _ in 0..50 {
        if ready(&app).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "readiness recovers once the database is back");
    let again = app.send("gp-a", &referral()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(app.get("gp-a", &read_path).await.status, 200);
    assert_eq!(app.referral_count().await, 2, "nothing was half-stored");
}

async fn a_database_that_stops_answering_is_cut_off_at_the_request_deadline(db: Db) {
    // The fault: PostgreSQL's packets are dropped with every connection left open, so
    // no error ever comes back; SQLite is held by another write lock longer than the
    // request may take (the default busy timeout of ten seconds).
    let (url, _database) = fresh_database(db).await;
    let limits = "[server]\nhandler_timeout_ms = 1500\nbody_timeout_ms = 1000\n";
    let (app, proxy) = match db {
        Db::Postgres => {
            let target = postgres_address();
            let proxy = Proxy::start(&target).await;
            let url = url.replacen(&target, &proxy.address.to_string(), 1);
            (TestApp::spawn_at(&url, limits).await, Some(proxy))
        }
        Db::Sqlite => (TestApp::spawn_at(&url, limits).await, None),
    };
    let first = app.send("gp-a", &referral()).await;
    assert_eq!(first.status, 200, "{}", first.text);

    let mut lock = None;
    match &proxy {
        Some(proxy) => proxy.silent.store(true, Ordering::SeqCst),
        None => {
            lock = Some(hold_write_lock(&app.database_url).await);
        }
    }
    let (reply, took) = timed(app.send("gp-a", &referral())).await;
    assert_unavailable(&reply, took, "a referral while the database is silent");
    let (reply, took) = timed(app.get("operator", "/operator/v1/deliveries")).await;
    assert_unavailable(
        &reply,
        took,
        "an operator's list while the database is silent",
    );

    match (&proxy, lock.take()) {
        (Some(proxy), _) => proxy.silent.store(false, Ordering::SeqCst),
        (None, Some(mut conn)) => {
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        }
        (None, None) => unreachable!("SQLite was locked"),
    }
    // Once the database answers again, so does the gateway, without a restart; the
    // referral cut off was not half stored.
    let mut again = None;
    for _ in 0..50 {
        let reply = app.send("gp-a", &referral()).await;
        if reply.status == 200 {
            again = Some(reply);
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        again.is_some(),
        "the gateway accepts again once the database answers"
    );
    assert_eq!(app.referral_count().await, 2, "nothing was half-stored");
}

/// What a raw client got: the bytes until the gateway closed the connection (or 5 s
/// passed), and how long that took.
async fn raw_exchange(address: SocketAddr, request: &[u8]) -> (String, Duration) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Headers of a POST as the endpoint's client would send them, then the given framing
/// headers and a body that stops short.
fn stalled_post(path: &str, client: &str, framing: &str, partial_body: &str) -> Vec<u8> {
    let ids = Ids::fresh();
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/fhir+json\r\nX-Request-Id: {}\r\nX-Correlation-Id: {}\r\n\
         {framing}\r\n{partial_body}",
        token(client),
        ids.request,
        ids.correlation,
    )
    .into_bytes()
}

/// A 408 OperationOutcome (REC_TIMEOUT) that closes the connection.
fn assert_timed_out(answer: &str, took: Duration, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
    assert!(took < PROMPTLY, "{what}: closed after {took:?}: {answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{what}: {answer}");
    assert!(
        lower.contains("content-type: application/fhir+json"),
        "{what}: {answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body).unwrap();
    crate::fhir_schema::assert_operation_outcome(&body, what);
    assert_eq!(
        body["issue"][0]["details"]["coding"][0]["code"],
        "REC_TIMEOUT"
    );
    assert_eq!(body["issue"][0]["code"], "timeout");
}

async fn a_stalled_body_is_cut_off_at_its_deadline_and_the_next_request_is_served(db: Db) {
    let app = TestApp::spawn_with(
        db,
        "[server]\nbody_timeout_ms = 1000\nclient_request_timeout_ms = 1000",
    )
    .await;
    let address = app.address();
    let half = "{\"resourceType\": \"Bundle\", \"type\": \"message\", \"entry\": [";
    let referral_id = uuid::Uuid::new_v4();
    let cases = [
        (
            "a message whose Content-Length is larger than its body",
            stalled_post(
                "/fhir/r4/$process-message",
                "gp-a",
                "Content-Length: 4000\r\n",
                half,
            ),
        ),
        (
            "an unterminated chunked message",
            stalled_post(
                "/fhir/r4/$process-message",
                "gp-a",
                "Transfer-Encoding: chunked\r\n",
                &format!("400\r\n{half}"),
            ),
        ),
        (
            "a dry run that stalls",
            stalled_post(
                "/fhir/r4/Bundle/$validate",
                "gp-a",
                "Content-Length: 4000\r\n",
                half,
            ),
        ),
        (
            "a provider's status event that stalls",
            stalled_post(
                &format!("/provider/v1/referrals/{referral_id}/events"),
                "prospects",
                "Content-Length: 300\r\n",
                "{\"event\": \"accep",
            ),
        ),
        (
            "an auditor's subject request that stalls",
            stalled_post(
                "/audit/v1/subjects",
                "auditor",
                "Transfer-Encoding: chunked\r\n",
                "40\r\n{\"nhs_",
            ),
        ),
    ];
    for (what, request) in cases {
        let (answer, took) = raw_exchange(address, &request).await;
        assert_timed_out(&answer, took, what);
        // The gateway is not held up: the next request is served at once.
        let (reply, took) = timed(app.send("gp-a", &referral())).await;
        assert_eq!(reply.status, 200, "after {what}: {}", reply.text);
        assert!(took < PROMPTLY, "after {what}: {took:?}");
    }
    // The stalled messages were refused, and recorded as such, 408.
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .filter(|a| a.action == "referral.message" || a.action == "referral.validate")
            .filter(|a| a.http_status == Some(408))
            .count()
            >= 3,
        "{audit:?}"
    );

    // A request head that never ends: actix's own deadline, a bare 408 or a closed
    // connection.
    let (answer, took) = raw_exchange(
        address,
        b"POST /fhir/r4/$process-message HTTP/1.1\r\nHost: gateway\r\nContent-Ty",
    )
    .await;
    assert!(took < PROMPTLY, "an unfinished head held {took:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

async fn a_body_slower_than_the_minimum_rate_is_cut_off_before_the_total_deadline(db: Db) {
    let app = TestApp::spawn_with(
        db,
        "[server]\nbody_timeout_ms = 20000\nbody_min_bytes_per_second = 1000",
    )
    .await;
    let stream = TcpStream::connect(app.address()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = stalled_post(
        "/fhir/r4/$process-message",
        "gp-a",
        "Content-Length: 100000\r\n",
        "",
    );
    write.write_all(&head).await.unwrap();
    let started = Instant::now();
    // 40 bytes every 200 ms: 200 bytes a second, a fifth of the minimum.
    let trickle = tokio::spawn(async move {
        let chunk = [b' '; 40];
        while write.write_all(&chunk).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut got)).await;
    let took = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert_timed_out(&answer, took, "a trickled body");
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
}

async fn idle_and_surplus_connections_are_bounded(db: Db) {
    let app = TestApp::spawn_with(
        db,
        "[server]\nworkers = 1\nmax_connections = 2\nkeep_alive_ms = 500",
    )
    .await;
    let address = app.address();
    let get = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n";

    // An idle keep-alive connection is closed once keep_alive_ms has passed.
    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(get).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle connection held {:?}",
        started.elapsed()
    );

    // Two connections that say nothing hold the worker's two places; a third waits
    // until one of them goes, then is served.
    let holders = [
        TcpStream::connect(address).await.unwrap(),
        TcpStream::connect(address).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(address).await.unwrap();
    third.write_all(get).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(holders);
    let n = tokio::time::timeout(PROMPTLY, third.read(&mut buf))
        .await
        .expect("served once a place is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// An error status that is a valid OperationOutcome naming its REC code, quoting
/// nothing the request held.
fn assert_outcome(reply: &Reply, status: u16, rec: &str, code: &str, request_values: &[&str]) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(
        reply.headers["content-type"], "application/fhir+json",
        "{}",
        reply.text
    );
    crate::fhir_schema::assert_operation_outcome(&reply.json(), &format!("the {status}"));
    let issues = reply.issues();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!((issues[0].0.as_str(), issues[0].1.as_str()), (rec, code));
    for value in request_values {
        assert!(!reply.text.contains(value), "the {status} quotes {value}");
    }
}

async fn actix_s_own_refusals_are_operation_outcomes_quoting_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    // Headers past server.max_header_bytes (32 KiB), on any endpoint.
    let padding = "9990000018".repeat(4000);
    for (method, path) in [
        (reqwest::Method::GET, "/fhir/r4/metadata"),
        (reqwest::Method::POST, "/fhir/r4/$process-message"),
        (reqwest::Method::GET, "/health/live"),
    ] {
        let res = app
            .client
            .request(method, app.url(path))
            .header("X-Padding", &padding)
            .send()
            .await
            .unwrap();
        let reply = Reply::from(res).await;
        assert_outcome(&reply, 431, "REC_BAD_REQUEST", "too-long", &["9990000018"]);
    }
    // Bodies past what the provider and audit APIs read (actix's limit, 256 KiB).
    let big = format!("{{\"nhs_number\": \"{}\"}}", "9990000018".repeat(30_000));
    for (client, path) in [
        (
            "prospects",
            format!("/provider/v1/referrals/{}/events", uuid::Uuid::new_v4()),
        ),
        ("auditor", "/audit/v1/subjects".to_owned()),
    ] {
        let res = app
            .client
            .post(app.url(&path))
            .bearer_auth(token(client))
            .header("Content-Type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let reply = Reply::from(res).await;
        assert_outcome(&reply, 413, "REC_BAD_REQUEST", "too-long", &["9990000018"]);
    }
    // A query actix cannot read: its own message quotes the value; ours does not.
    let reply = app
        .get("operator", "/operator/v1/deliveries?limit=9990000018x")
        .await;
    assert_outcome(&reply, 400, "REC_BAD_REQUEST", "value", &["9990000018"]);
}

async fn a_referral_stored_but_not_read_back_is_still_answered_as_accepted(db: Db) {
    let app = TestApp::spawn(db).await;
    // Every referral is stored in a form the gateway cannot read back (as a value in
    // the clear would be), so reading it after the commit fails.
    let spoil: &[&str] = match db {
        Db::Sqlite => &["CREATE TRIGGER spoil AFTER INSERT ON referrals BEGIN \
             UPDATE referrals SET nhs_number = 'unreadable' WHERE id = NEW.id; END"],
        Db::Postgres => &[
            "CREATE FUNCTION spoil() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN NEW.nhs_number := 'unreadable'; RETURN NEW; END $$",
            "CREATE TRIGGER spoil BEFORE INSERT ON referrals FOR EACH ROW \
             EXECUTE FUNCTION spoil()",
        ],
    };
    for sql in spoil {
        execute_sql(db, &app.database_url, sql).await;
    }
    let msg = referral();
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", &msg, &ids).await;
    // It was committed, so the sender is told it was accepted, with the id and
    // reference to read it back by; not that nothing was stored.
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let id = body["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = query_text(db, &app.database_url, "SELECT id, reference FROM referrals").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0][0].as_deref(), Some(id.as_str()));
    assert!(
        reply.text.contains(stored[0][1].as_deref().unwrap()),
        "the answer carries the stored reference"
    );
    // And a sender that sends it again is told it is a duplicate, not stored twice.
    let again = app.send_with("gp-a", &msg, &ids).await;
    again.assert_issue(409, "REC_CONFLICT", "");
    assert_eq!(app.referral_count().await, 1);
}

on_both_databases!(
    a_referral_stored_but_not_read_back_is_still_answered_as_accepted,
    the_database_going_away_is_answered_503_promptly_and_the_gateway_recovers,
    a_database_that_stops_answering_is_cut_off_at_the_request_deadline,
    a_stalled_body_is_cut_off_at_its_deadline_and_the_next_request_is_served,
    a_body_slower_than_the_minimum_rate_is_cut_off_before_the_total_deadline,
    idle_and_surplus_connections_are_bounded,
    actix_s_own_refusals_are_operation_outcomes_quoting_nothing,
);

/// SQLite's accepts wait for one group-commit writer; past `max_waiting_accepts` a
/// sender is answered 503 at once instead of joining an ever longer wait. Those that
/// waited are stored when the lock frees; a refused one sent again is accepted, and an
/// accepted one sent again is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_past_the_writer_s_bound_are_refused_at_once_and_lose_nothing() {
    let app = Arc::new(
        TestApp::spawn_with(
            Db::Sqlite,
            "[database]\nmax_waiting_accepts = 2\nsqlite_busy_timeout_ms = 20000\n",
        )
        .await,
    );
    let mut lock = hold_write_lock(&app.database_url).await;
    let send = |ids: Ids| {
        let app = app.clone();
        let message = referral();
        tokio::spawn(async move {
            let reply = app.send_with("gp-a", &message, &ids).await;
            (reply, message, ids)
        })
    };
    // One accept held by the writer (waiting for the lock), two waiting behind it.
    let mut waiting = vec![send(Ids::fresh())];
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.push(send(Ids::fresh()));
    waiting.push(send(Ids::fresh()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut refused = Vec::new();
    for _ in 0..3 {
        let (reply, took) = timed(send(Ids::fresh())).await;
        let (reply, message, ids) = reply.unwrap();
        assert_unavailable(&reply, took, "an accept past the writer's bound");
        refused.push((message, ids));
    }
    assert_eq!(
        app.referral_count().await,
        0,
        "nothing is stored under the lock"
    );

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let mut accepted = Vec::new();
    for task in waiting {
        let (reply, message, ids) = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text);
        accepted.push((message, ids));
    }
    assert_eq!(app.referral_count().await, 3);

    for (message, ids) in &refused {
        let reply = app.send_with("gp-a", message, ids).await;
        assert_eq!(
            reply.status, 200,
            "a refused accept sent again: {}",
            reply.text
        );
    }
    let (message, ids) = &accepted[0];
    app.send_with("gp-a", message, ids)
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    assert_eq!(app.referral_count().await, 6, "each stored once");
}
