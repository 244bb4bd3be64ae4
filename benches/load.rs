//! Load: concurrent GP senders against a gateway process on a fresh database, with
//! delivery off. Prints referrals/s, p50 and p99, CPU per referral in the gateway
//! process, its idle and peak RSS, and its RSS after each of two rounds, so growth that
//! levels off (allocator and cache warm-up) is told apart from a leak.
//!
//! In the same run the same senders drive the floor: a minimal durable pipeline written
//! here (HTTP, JSON parse, an HMAC, three SQLite rows in one WAL transaction with
//! synchronous FULL, the answer; one transaction per referral, on the HTTP worker),
//! and each gateway round is printed as a ratio of it.
//!
//! `cargo bench --bench load`; `THRIVE_LOAD_REFERRALS` (per round, default 20,000) and
//! `THRIVE_LOAD_SENDERS` (default 16); `THRIVE_BENCH_POSTGRES` adds a run on PostgreSQL,
//! and one of two gateway processes sharing its database.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/api/helpers.rs"]
mod helpers;

use helpers::{Db, fresh_database, referral, test_toml, token};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace([',', '_'], "").parse().ok())
        .unwrap_or(default)
}

/// The gateway under load, as its own process, so its CPU and memory are its own.
struct Gateway {
    child: Child,
    base: String,
    started: Duration,
    _config: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(database_url: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    // The test layer, with the per-client rate limit off: the senders are one client.
    let toml = format!(
        "{}\n[rate_limit]\nper_client_per_second = 0\nper_client_burst = 0\n",
        test_toml(database_url)
    );
    std::fs::write(&config, toml).unwrap();
    let port = free_port();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("THRIVE_ENV")
        .env("THRIVE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    loop {
        if let Ok(res) = client.get(format!("{base}/health/ready")).send().await
            && res.status() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway not ready"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Gateway {
        child,
        base,
        started: started.elapsed(),
        _config: dir,
    }
}

/// Resident and peak resident memory of `pid`, in MB (from `/proc`).
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time `pid` has used, user and system.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are the 14th and 15th fields, in clock ticks of 1/100 s.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The floor: the least a durable accept must do, with nothing of the gateway's. Each
/// accept is its own transaction on one SQLite connection, run on the HTTP worker
/// itself (no hand-off to another thread).
mod floor {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use hmac::{Hmac, KeyInit, Mac};
    use std::sync::Mutex;

    type HmacSha256 = Hmac<sha2::Sha256>;

    fn store(
        db: &Mutex<rusqlite::Connection>,
        id: &str,
        subject: &str,
        body: &[u8],
    ) -> rusqlite::Result<()> {
        let mut conn = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO referrals (id, subject, message) VALUES (?1, ?2, ?3)",
            (id, subject, body),
        )?;
        tx.execute(
            "INSERT INTO deliveries (id, referral_id) VALUES (?1, ?2)",
            (uuid::Uuid::new_v4().to_string(), id),
        )?;
        tx.execute(
            "INSERT INTO audit (referral_id, subject) VALUES (?1, ?2)",
            (id, subject),
        )?;
        tx.commit()
    }

    async fn accept(db: web::Data<Mutex<rusqlite::Connection>>, body: web::Bytes) -> HttpResponse {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return HttpResponse::BadRequest().finish();
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(b"floor-pseudonym-key") else {
            return HttpResponse::InternalServerError().finish();
        };
        mac.update(message["id"].as_str().unwrap_or_default().as_bytes());
        let subject = hex::encode(mac.finalize().into_bytes());
        let id = uuid::Uuid::new_v4().to_string();
        match store(&db, &id, &subject, &body) {
            Ok(()) => HttpResponse::Ok().json(serde_json::json!({"id": id})),
            Err(_) => HttpResponse::ServiceUnavailable().finish(),
        }
    }

    /// Serves the floor on `port` from its own thread until the process ends.
    pub fn start(path: std::path::PathBuf, port: u16) {
        let conn = rusqlite::Connection::open(path).expect("floor database");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             CREATE TABLE referrals (id TEXT PRIMARY KEY, subject TEXT, message BLOB); \
             CREATE TABLE deliveries (id TEXT PRIMARY KEY, referral_id TEXT); \
             CREATE TABLE audit (seq INTEGER PRIMARY KEY, referral_id TEXT, subject TEXT);",
        )
        .expect("floor tables");
        let db = web::Data::new(Mutex::new(conn));
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                HttpServer::new(move || {
                    App::new()
                        .app_data(db.clone())
                        .app_data(web::PayloadConfig::new(1 << 20))
                        .route("/fhir/r4/$process-message", web::post().to(accept))
                })
                .workers(2)
                .bind(("127.0.0.1", port))
                .expect("floor port")
                .run()
                .await
                .expect("floor server");
            });
        });
    }
}

struct Round {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_referral: Duration,
}

/// Sends `n` unique referrals from `senders` concurrent senders; every one must be
/// accepted.
/// Sends `n` unique referrals from `senders` concurrent senders, spread over the
/// `targets` (base URL and process id); every one must be accepted. CPU is the sum over
/// the targets' processes.
async fn round(targets: &[(&str, u32)], n: usize, senders: usize) -> Round {
    let bearer = format!("Bearer {}", token("gp-a"));
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| serde_json::to_vec(&referral()).unwrap())
        .collect();
    let work = Arc::new(std::sync::Mutex::new(bodies));
    let urls: Vec<String> = targets
        .iter()
        .map(|(base, _)| format!("{base}/fhir/r4/$process-message"))
        .collect();
    let total_cpu = || targets.iter().map(|(_, pid)| cpu(*pid)).sum::<Duration>();
    let cpu_before = total_cpu();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..senders {
        let work = work.clone();
        let url = urls[k % urls.len()].clone();
        let bearer = bearer.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            loop {
                let Some(body) = work.lock().unwrap().pop() else {
                    break;
                };
                let sent = Instant::now();
                let res = client
                    .post(&url)
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/fhir+json")
                    .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                    .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                    .body(body)
                    .send()
                    .await
                    .expect("the gateway answers");
                let status = res.status();
                let _ = res.bytes().await;
                assert_eq!(status, 200, "every unique, valid referral is accepted");
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap());
    }
    let took = started.elapsed();
    let cpu_used = total_cpu().saturating_sub(cpu_before);
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Round {
        per_second: n as f64 / took.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        cpu_per_referral: cpu_used / n as u32,
    }
}

/// The floor's referrals/s under the same load, on a fresh file.
async fn floor_round(n: usize, senders: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    floor::start(dir.path().join("floor.db"), port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    while client.get(&base).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = round(&[(&base, std::process::id())], n, senders).await;
    println!(
        "floor: {n} referrals, {senders} senders: {:.0} referrals/s, p50 {:.1} ms, p99 {:.1} ms",
        r.per_second,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
    );
    r.per_second
}

async fn run(db: Db, n: usize, senders: usize, floor: f64) {
    let (url, _database) = fresh_database(db).await;
    let gw = start(&url).await;
    let pid = gw.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = memory(pid);
    println!(
        "{db:?}: start to ready {:.0} ms, idle RSS {idle:.1} MB",
        gw.started.as_secs_f64() * 1000.0
    );
    for k in 1..=2 {
        let r = round(&[(&gw.base, pid)], n, senders).await;
        let (rss, peak) = memory(pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (settled, _) = memory(pid);
        println!(
            "{db:?} round {k}: {n} referrals, {senders} senders: {:.0} referrals/s, p50 {:.1} ms, \
             p99 {:.1} ms, CPU {:.0} µs/referral; RSS {rss:.1} MB (peak {peak:.1}), \
             {settled:.1} MB after 5 s idle; {:.2}x the floor",
            r.per_second,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.cpu_per_referral.as_secs_f64() * 1e6,
            r.per_second / floor,
        );
    }
}

/// Two gateway processes on one PostgreSQL database, the senders split between them:
/// their aggregate, to compare with one gateway's (contention on shared rows would show
/// as less).
async fn two_gateways(n: usize, senders: usize, floor: f64) {
    let (url, _database) = fresh_database(Db::Postgres).await;
    let (a, b) = (start(&url).await, start(&url).await);
    let r = round(
        &[(&a.base, a.child.id()), (&b.base, b.child.id())],
        n,
        senders,
    )
    .await;
    println!(
        "Postgres, two gateways on one database: {n} referrals, {senders} senders: {:.0} \
         referrals/s together, p50 {:.1} ms, p99 {:.1} ms, CPU {:.0} µs/referral; {:.2}x the floor",
        r.per_second,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
        r.cpu_per_referral.as_secs_f64() * 1e6,
        r.per_second / floor,
    );
}

fn main() {
    let n = env_number("THRIVE_LOAD_REFERRALS", 20_000);
    let senders = env_number("THRIVE_LOAD_SENDERS", 16).max(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let floor = floor_round(n, senders).await;
        run(Db::Sqlite, n, senders, floor).await;
        // The database is made (and dropped) on the server this names.
        if std::env::var("THRIVE_BENCH_POSTGRES").is_ok() {
            run(Db::Postgres, n, senders, floor).await;
            two_gateways(n, senders, floor).await;
        }
    });
}
