//! Never hang, fail fast and say so: a database that goes away is answered 503 within
//! about a second, and the gateway recovers on its own; a failure after a referral was
//! stored does not tell the sender it was not.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Generous against the configured second: timing on a loaded machine varies, and
/// what matters is that nobody waits the ten seconds of before.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A stand-in for the network path to PostgreSQL that the test can cut and mend: a
/// TCP proxy to the real server. Stopping it closes the listening port (new connections
/// are refused) and every connection through it, as a database restart does.
struct Proxy {
    address: SocketAddr,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut proxy = Self {
            address,
            target: target.to_owned(),
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Each connection's task is aborted with the listener's, closing both sides.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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
    let (app, mut proxy) = match db {
        Db::Postgres => {
            let (url, _) = fresh_database(db).await;
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
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            lock = Some(conn);
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
        assert_eq!(body["status"], "not ready");
        assert!(
            ["unreachable", "timeout"].contains(&body["database"].as_str().unwrap()),
            "{body}"
        );
        assert_eq!(body["failed"], serde_json::json!(["database"]));
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
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
    the_database_going_away_is_answered_503_promptly_and_the_gateway_recovers,
    a_referral_stored_but_not_read_back_is_still_answered_as_accepted,
);
