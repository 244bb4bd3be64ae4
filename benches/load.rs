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
//! Then end to end, with the delivery worker running as shipped and a stand-in
//! provider written here: the same senders' referrals accepted and delivered (both
//! rates, and how far delivery lagged); and a backlog of queued deliveries, accepted
//! with delivery off, drained by a gateway started on that database.
//!
//! `cargo bench --bench load`; `THRIVE_LOAD_REFERRALS` (per round, default 20,000),
//! `THRIVE_LOAD_SENDERS` (default 16), `THRIVE_LOAD_BACKLOG` (default 50,000) and
//! `THRIVE_LOAD_PARTS` (default `accept,flow,backlog`); `THRIVE_BENCH_POSTGRES` adds
//! each part on PostgreSQL, and one of two gateway processes sharing its database.
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
    start_with(database_url, "", &[]).await
}

/// A gateway process with `extra` TOML (new tables only) and `env` (`THRIVE__…`
/// overrides of the test layer's keys) over the bench's settings.
async fn start_with(database_url: &str, extra: &str, env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    // The test layer, with the per-client rate limit off: the senders are one client.
    let toml = format!(
        "{}\n[rate_limit]\nper_client_per_second = 0\nper_client_burst = 0\n{extra}",
        test_toml(database_url)
    );
    std::fs::write(&config, toml).unwrap();
    let port = free_port();
    let started = Instant::now();
    // `THRIVE_LOAD_GATEWAY_CPUS` (a `taskset` list such as `0`) confines each gateway to
    // those cores, to see how it scales with them; taskset execs, so the pid is the
    // gateway's.
    let mut command = match std::env::var("THRIVE_LOAD_GATEWAY_CPUS") {
        Ok(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, env!("CARGO_BIN_EXE_thrive-gateway")]);
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_thrive-gateway")),
    };
    let child = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("THRIVE_ENV")
        .env("THRIVE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
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

/// A stand-in provider: answers every delivery 202 at once and counts them, each
/// `X-Request-Id` once, so a delivery sent twice shows.
mod provider {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct Received {
        ids: Mutex<HashSet<String>>,
        unique: AtomicUsize,
        twice: AtomicUsize,
    }

    impl Received {
        /// Distinct deliveries received.
        pub fn unique(&self) -> usize {
            self.unique.load(Ordering::Relaxed)
        }
        /// Deliveries received again with a request id already seen.
        pub fn twice(&self) -> usize {
            self.twice.load(Ordering::Relaxed)
        }
    }

    async fn receive(
        req: HttpRequest,
        seen: web::Data<Received>,
        _body: web::Bytes,
    ) -> HttpResponse {
        let Some(id) = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        else {
            return HttpResponse::BadRequest().finish();
        };
        let new = seen
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
        let counter = if new { &seen.unique } else { &seen.twice };
        counter.fetch_add(1, Ordering::Relaxed);
        HttpResponse::Accepted().json(serde_json::json!({"received": true}))
    }

    /// Serves on `port` from its own thread, one worker, until the process ends.
    pub fn start(port: u16) -> std::sync::Arc<Received> {
        let seen = web::Data::new(Received::default());
        let counts = seen.clone().into_inner();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                HttpServer::new(move || {
                    App::new()
                        .app_data(seen.clone())
                        .app_data(web::PayloadConfig::new(1 << 20))
                        .route("/{provider}", web::post().to(receive))
                })
                .workers(1)
                .bind(("127.0.0.1", port))
                .expect("stand-in provider port")
                .run()
                .await
                .expect("stand-in provider");
            });
        });
        counts
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

/// The settings that send every provider's deliveries to the stand-in on `port`.
fn providers_toml(port: u16) -> String {
    ["bchft", "prospects"]
        .map(|p| format!("[providers.{p}]\nendpoint = \"http://127.0.0.1:{port}/{p}\"\n"))
        .join("")
}

/// Waits until the stand-in has `n` distinct deliveries; the time from `since`.
async fn delivered(seen: &provider::Received, n: usize, since: Instant) -> Duration {
    while seen.unique() < n {
        assert!(
            since.elapsed() < Duration::from_secs(600),
            "only {} of {n} delivered after ten minutes",
            seen.unique()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
}

/// End to end: the senders' referrals accepted and delivered to the stand-in by the
/// same gateway, its delivery worker running as shipped. Prints both rates, how many
/// were still queued when the last was accepted, and peak RSS.
async fn flow(db: Db, n: usize, senders: usize) {
    let (url, _database) = fresh_database(db).await;
    let port = free_port();
    let seen = provider::start(port);
    let gw = start_with(
        &url,
        &providers_toml(port),
        &[("THRIVE__DELIVERY__ENABLED", "true")],
    )
    .await;
    let pid = gw.child.id();
    let started = Instant::now();
    let r = round(&[(&gw.base, pid)], n, senders).await;
    let sending = started.elapsed();
    let queued = n - seen.unique().min(n);
    let all = delivered(&seen, n, started).await;
    let (_, peak) = memory(pid);
    println!(
        "{db:?} end to end: {n} referrals, {senders} senders: accepted {:.0}/s (p99 {:.1} ms); \
         delivered {:.0}/s while sending, {queued} still queued when the last was accepted; all \
         delivered after {:.1} s, {:.0} referrals/s end to end; {} delivered twice; peak RSS \
         {peak:.1} MB",
        r.per_second,
        r.p99.as_secs_f64() * 1000.0,
        (n - queued) as f64 / sending.as_secs_f64(),
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        seen.twice(),
    );
}

/// A backlog: `n` referrals accepted with delivery off, then a gateway with delivery
/// on started on that database; the time from its start until the stand-in has them
/// all.
async fn backlog(db: Db, n: usize, senders: usize) {
    let (url, _database) = fresh_database(db).await;
    let port = free_port();
    let seen = provider::start(port);
    {
        let gw = start_with(&url, &providers_toml(port), &[]).await;
        round(&[(&gw.base, gw.child.id())], n, senders).await;
    }
    let started = Instant::now();
    let gw = start_with(
        &url,
        &providers_toml(port),
        &[("THRIVE__DELIVERY__ENABLED", "true")],
    )
    .await;
    let cpu_before = cpu(gw.child.id());
    let all = delivered(&seen, n, started).await;
    let used = cpu(gw.child.id()).saturating_sub(cpu_before);
    let (_, peak) = memory(gw.child.id());
    println!(
        "{db:?} backlog: {n} queued deliveries drained in {:.1} s, {:.0}/s; CPU {:.0} µs a \
         delivery; {} delivered twice; peak RSS {peak:.1} MB",
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        used.as_secs_f64() * 1e6 / n as f64,
        seen.twice(),
    );
}

fn main() {
    let n = env_number("THRIVE_LOAD_REFERRALS", 20_000);
    let senders = env_number("THRIVE_LOAD_SENDERS", 16).max(1);
    let queued = env_number("THRIVE_LOAD_BACKLOG", 50_000);
    let parts = std::env::var("THRIVE_LOAD_PARTS").unwrap_or_else(|_| "accept,flow,backlog".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    // The database is made (and dropped) on the server this names.
    let postgres = std::env::var("THRIVE_BENCH_POSTGRES").is_ok();
    if let Ok(cpus) = std::env::var("THRIVE_LOAD_GATEWAY_CPUS") {
        println!("each gateway confined to CPUs {cpus}; the floor and the senders are not");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if part("accept") {
            let floor = floor_round(n, senders).await;
            run(Db::Sqlite, n, senders, floor).await;
            if postgres {
                run(Db::Postgres, n, senders, floor).await;
                two_gateways(n, senders, floor).await;
            }
        }
        for db in [Db::Sqlite, Db::Postgres] {
            if db == Db::Postgres && !postgres {
                continue;
            }
            if part("flow") {
                flow(db, n, senders).await;
            }
            if part("backlog") {
                backlog(db, queued, senders).await;
            }
        }
    });
}
