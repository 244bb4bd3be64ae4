//! What the audit trail costs. Appends one audit record on its own
//! (`Store::append_audit`, a pending record), has four writers append at once, and
//! measures the accept with its audit record (as the gateway writes it) against the
//! same accept without it (the baseline store and gateway of the
//! `audit-cost-baseline` feature): over HTTP, against gateways on one database, and
//! the accept transaction alone. Sealing pending records into the hash chain is
//! timed too, after each round of accepts, and counted against the record: the
//! gateways' own sealers are idle here (`audit.seal_interval_ms` of an hour), so the
//! bench seals each round's records itself, as a gateway's sealer would under a load
//! of a round every seal interval.
//! Goal: the audit record adds under 10% to the cost of an accept.
//!
//! `cargo bench --bench audit --features audit-cost-baseline`
//!
//! Runs on SQLite (a temporary file, opened as the gateway opens it), and also on
//! PostgreSQL when `THRIVE_BENCH_POSTGRES` names a server, e.g.
//! `THRIVE_BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432`: a fresh database
//! `thrive_bench_<uuid>` is created there and dropped afterwards.
//!
//! Ends with one line per database: what the record adds to an accept over HTTP, in
//! rounds to three gateways (as deployed, baseline, and a second baseline as the
//! control), each order in turn (so the growing tables and a busy machine weigh on all
//! alike), the median of the rounds' differences against the median round without it,
//! and what the same measure reads between the two baselines; the same with each
//! round's sealing added (the record's whole cost, the answer waiting and the sealer's
//! work after it), and sealing per record on its own; the record's marginal
//! cost inside the accept transaction, measured in paired rounds, as a cross-check;
//! and the append throughput. Request bodies are built before the clock starts.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fhir_sdk::time::{
    Duration as TimeDuration, OffsetDateTime, format_description::well_known::Rfc3339,
};
use figment::providers::{Format, Toml};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thrive_gateway::config::{Settings, defaults_figment};
use thrive_gateway::store::{AuditRecord, AuditRow, NewReferralRecord, Store};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ISSUER: &str = "https://test-issuer.invalid";
/// Criterion samples per benchmark; the summary averages the last this many calls
/// (criterion's measurement, after its warm-up).
const SAMPLES: usize = 10;
const WRITERS: usize = 4;
/// Paired rounds of accept transactions with and without the audit record, and
/// transactions per round: the marginal cost is the median of the rounds'
/// differences, so drift (the tables grow) and a stray slow round weigh little.
const ROUNDS: usize = 100;
const PER_ROUND: usize = 40;
/// Rounds of accepts over HTTP, each to the gateway as deployed, to one on the
/// baseline store and to a second on the baseline store (the control: what the
/// measure reads between two identical gateways), and accepts per round.
const HTTP_ROUNDS: usize = 300;
const HTTP_PER_ROUND: usize = 20;
/// Sealing alone: records per batch (as many as a gateway's sealer finds after one
/// interval at rising loads), and rounds of each.
const SEAL_BATCHES: [usize; 4] = [1, 20, 100, 500];
const SEAL_ROUNDS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

/// A database for one run, and how to get rid of it.
enum Database {
    Sqlite(tempfile::TempDir),
    Postgres { base: String, name: String },
}

impl Database {
    async fn create(db: Db) -> (String, Self) {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/gateway.db", dir.path().display());
                (url, Database::Sqlite(dir))
            }
            Db::Postgres => {
                let base = postgres_base().expect("THRIVE_BENCH_POSTGRES set");
                let name = format!("thrive_bench_{}", uuid::Uuid::new_v4().simple());
                admin(&base, &format!("CREATE DATABASE {name}")).await;
                (format!("{base}/{name}"), Database::Postgres { base, name })
            }
        }
    }

    async fn drop_now(self) {
        match self {
            Database::Sqlite(dir) => drop(dir),
            Database::Postgres { base, name } => {
                admin(
                    &base,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await
            }
        }
    }
}

fn postgres_base() -> Option<String> {
    std::env::var("THRIVE_BENCH_POSTGRES")
        .ok()
        .map(|b| b.trim_end_matches('/').to_owned())
        .filter(|b| !b.is_empty())
}

async fn admin(base: &str, statement: &str) {
    use sqlx::Executor;
    let pool = sqlx::PgPool::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL at THRIVE_BENCH_POSTGRES reachable");
    pool.execute(sqlx::AssertSqlSafe(statement.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    pool.close().await;
}

/// Settings as the API tests use them: shipped defaults (so the store opens exactly
/// as a deployed gateway's does), the test issuer, the test storage key (every
/// gateway stores encrypted), pseudonym keys for both providers and the audit trail,
/// signed checkpoints, no delivery.
fn settings(database_url: &str) -> Settings {
    let keys = ["bchft", "prospects", "audit"]
        .map(|p| {
            format!(
                "[keys.pseudonym.{p}]\nactive = \"v1\"\n[keys.pseudonym.{p}.versions.v1]\nfile = \"{ROOT}/tests/fixtures/keys/pseudonym-{p}-v1.key\"\n"
            )
        })
        .join("\n");
    let overrides = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2

[database]
url = "{database_url}"

[auth.issuers.test]
issuer = "{ISSUER}"
jwks_file = "{ROOT}/tests/fixtures/keys/test-jwks.json"

[auth.clients.gp-a]
role = "gp-system"
practices = ["Y90001"]

[mappings]
dir = "{ROOT}/mappings"

[delivery]
enabled = false

# The bench seals itself, after each round, so that sealing is timed where it
# belongs; the gateways' sealers stay idle.
[audit]
seal_interval_ms = 3600000

[audit.checkpoint]
key_id = "test-audit-1"
private_key_file = "{ROOT}/tests/fixtures/keys/audit-checkpoint.pem"
public_key_file = "{ROOT}/tests/fixtures/keys/audit-checkpoint.pub.pem"

[keys.storage]
active = "v1"
[keys.storage.versions.v1]
file = "{ROOT}/tests/fixtures/keys/storage-v1.key"

{keys}
"#
    );
    Settings::from_figment(
        defaults_figment(&Path::new(ROOT).join("config")).merge(Toml::string(&overrides)),
    )
    .expect("bench settings are valid")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formats")
}

/// The example referral with fresh ids (so it is never refused as a duplicate) and
/// dates around now (so its consent holds).
fn referral(template: &Value) -> Value {
    let mut v = template.clone();
    let now = OffsetDateTime::now_utc();
    let fresh = || uuid::Uuid::new_v4().to_string();
    v["id"] = fresh().into();
    v["entry"][0]["resource"]["id"] = fresh().into();
    v["entry"][1]["resource"]["identifier"][0]["value"] =
        format!("GP-REF-{}", uuid::Uuid::new_v4().simple()).into();
    v["entry"][1]["resource"]["authoredOn"] = rfc3339(now - TimeDuration::minutes(5)).into();
    let consent = &mut v["entry"][5]["resource"];
    consent["dateTime"] = rfc3339(now - TimeDuration::minutes(10)).into();
    consent["provision"]["period"] = json!({
        "start": (now - TimeDuration::days(1)).date().to_string(),
        "end": (now + TimeDuration::days(365)).date().to_string(),
    });
    v
}

/// Three running gateways on one fresh database: `base` as deployed, `baseline_base`
/// and `control_base` on the baseline store, whose accepts leave their audit record
/// out.
struct Bench {
    base: String,
    baseline_base: String,
    control_base: String,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    token: String,
    template: Value,
}

/// One referral's request, built before the clock starts.
struct Request {
    body: String,
    request_id: String,
    correlation_id: String,
}

impl Bench {
    fn request(&self) -> Request {
        Request {
            body: referral(&self.template).to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    async fn accept_at(&self, base: &str, r: Request) {
        let res = self
            .client
            .post(format!("{base}/fhir/r4/$process-message"))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", r.request_id)
            .header("X-Correlation-Id", r.correlation_id)
            .body(r.body)
            .send()
            .await
            .expect("sent");
        let status = res.status();
        if status != 200 {
            let text = res.text().await.unwrap_or_default();
            panic!("accept answered {status}: {text}");
        }
    }
}

/// What a successful delivery to Prospects records: the referral, the recipient, the
/// mapping and key versions, and the minimisation receipt of the example referral.
fn delivery_record(referral_id: &str) -> AuditRecord {
    use thrive_gateway::domain::ProviderId;
    use thrive_gateway::mapping::Datasets;
    use thrive_gateway::pseudonym::PseudonymKeys;
    use thrive_gateway::routing::Routing;
    let dir = Path::new(ROOT).join("mappings");
    let routing = Routing::load(&dir).expect("routing");
    let datasets = Datasets::load(&dir, &routing).expect("datasets");
    let keys =
        PseudonymKeys::from_hex("prospects", "v1", [("v1", &*"a2c9".repeat(16))]).expect("keys");
    let bundle: Value =
        serde_json::from_str(include_str!("../tests/fixtures/referral-new.json")).expect("JSON");
    let minimised = datasets
        .for_provider(&ProviderId::parse("prospects").expect("id"))
        .expect("dataset")
        .apply(&bundle, &keys, OffsetDateTime::now_utc().date())
        .expect("maps");
    let receipt = serde_json::to_value(&minimised.receipt).expect("receipt JSON");
    AuditRecord {
        http_status: Some(201),
        referral_id: Some(referral_id.to_owned()),
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        correlation_id: Some(uuid::Uuid::new_v4().to_string()),
        recipient: Some("prospects".into()),
        mapping_version: Some(format!(
            "{}@{}",
            minimised.receipt.mapping_id, minimised.receipt.mapping_version
        )),
        key_version: minimised.receipt.key_version.clone(),
        detail: json!({
            "recipient": "prospects",
            "attempt": 1,
            "reason": null,
            "receipt": receipt,
        }),
        ..AuditRecord::new("delivery.referral", "delivered")
    }
}

/// The accept transaction as intake writes it, with fresh ids: the message, consent
/// and audit record of a referral the gateway accepted over HTTP (`accepted`, its
/// stored row, and the `referral.new` record written with it).
fn accept_record(
    template: &Value,
    accepted: &thrive_gateway::store::ReferralRow,
    audit: &AuditRow,
) -> NewReferralRecord {
    let fresh = || uuid::Uuid::new_v4().to_string();
    let id = fresh();
    let now = OffsetDateTime::now_utc();
    let detail = serde_json::from_str(&audit.detail).expect("stored detail is JSON");
    NewReferralRecord {
        id: id.clone(),
        reference: format!(
            "TIW-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase()
        ),
        practice_ods: accepted.practice_ods.clone(),
        bundle_id: fresh(),
        programme: accepted.programme.clone(),
        locality: accepted.locality.clone(),
        provider: accepted.provider.clone(),
        routing_version: accepted.routing_version.clone(),
        referral_code: accepted.referral_code.clone(),
        nhs_number: accepted.nhs_number.clone(),
        consent: accepted.consent.clone(),
        message: referral(template).to_string(),
        source_endpoint: accepted.source_endpoint.clone(),
        client_id: accepted.client_id.clone(),
        request_id: fresh(),
        correlation_id: fresh(),
        message_header_id: Some(fresh()),
        sender_identifiers: vec![(
            "https://fhir.nhs.uk/Id/gp-referral".into(),
            format!("GP-REF-{}", uuid::Uuid::new_v4().simple()),
        )],
        subject: audit.subject.clone().expect("the accept names its subject"),
        delivery_id: fresh(),
        delivery_request_id: fresh(),
        now,
        audit: AuditRecord {
            at: now,
            action: audit.action.clone(),
            outcome: audit.outcome.clone(),
            http_status: audit.http_status.and_then(|s| u16::try_from(s).ok()),
            client_id: audit.client_id.clone(),
            role: audit.role.clone(),
            referral_id: Some(id),
            request_id: Some(fresh()),
            correlation_id: Some(fresh()),
            actor_identity: audit.actor_identity.clone(),
            subject: audit.subject.clone(),
            recipient: audit.recipient.clone(),
            mapping_version: audit.mapping_version.clone(),
            key_version: audit.key_version.clone(),
            detail,
        },
    }
}

/// `(iterations, elapsed)` of every timed call; the last [`SAMPLES`] are criterion's
/// measurement.
#[derive(Default)]
struct Calls(RefCell<Vec<(u64, Duration)>>);

impl Calls {
    fn record(&self, iters: u64, elapsed: Duration) -> Duration {
        self.0.borrow_mut().push((iters, elapsed));
        elapsed
    }

    /// Mean seconds per iteration over the measurement.
    fn mean(&self) -> Option<f64> {
        let calls = self.0.borrow();
        let measured = &calls[calls.len().saturating_sub(SAMPLES)..];
        let iters: u64 = measured.iter().map(|(i, _)| i).sum();
        let secs: f64 = measured.iter().map(|(_, d)| d.as_secs_f64()).sum();
        (iters > 0).then(|| secs / iters as f64)
    }
}

#[derive(Default)]
struct Figures {
    append: Option<f64>,
    concurrent: Option<f64>,
    accept: Option<f64>,
    /// Accept transaction with and without its audit record, alternating rounds.
    with_audit: Option<f64>,
    without_audit: Option<f64>,
    /// Median of the paired rounds' differences.
    marginal: Option<f64>,
    /// Accepts over HTTP with and without the record: the rounds' medians, and the
    /// median of the paired rounds' differences.
    http_with: Option<f64>,
    http_without: Option<f64>,
    http_marginal: Option<f64>,
    /// Sealing after each round of accepts over HTTP: per record sealed (the mean).
    seal_per_record: Option<f64>,
    /// Median sealing time per accept after an audited round and after a baseline
    /// round (which finds nothing to seal).
    seal_busy: Option<f64>,
    seal_idle: Option<f64>,
    /// Sealing alone, per record, by records per batch: the median of rounds.
    seal_by_batch: Vec<(usize, f64)>,
    /// The control: the second baseline gateway's rounds against the first's, the
    /// same way; what the measure reads when there is nothing to find.
    http_control: Option<f64>,
}

/// `rounds` pairs of `run(true)` and `run(false)`, each first in every other round,
/// so drift (the tables grow, the machine is busy) weighs on both alike.
fn paired(rounds: usize, mut run: impl FnMut(bool) -> f64) -> (Vec<f64>, Vec<f64>) {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for audited in order {
            let took = run(audited);
            if audited {
                with.push(took)
            } else {
                without.push(took)
            }
        }
    }
    (with, without)
}

/// The gateways an accept over HTTP is sent to in the rounds, in the order of
/// [`rotated`]'s figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gateway {
    /// As deployed: the accept with its audit record.
    Audited,
    /// The baseline store: the accept without it.
    Baseline,
    /// A second baseline gateway, the control.
    Control,
}

/// Every order of the three gateways; the rounds take them in turn, so each gateway
/// runs first, second and third equally often and after each of the others.
const ORDERS: [[Gateway; 3]; 6] = {
    use Gateway::{Audited as A, Baseline as B, Control as C};
    [
        [A, B, C],
        [B, C, A],
        [C, A, B],
        [A, C, B],
        [C, B, A],
        [B, A, C],
    ]
};

/// `rounds` rounds of `run` for each gateway, in the orders of [`ORDERS`] in turn:
/// the audited, baseline and control figures of each round.
fn rotated<T>(rounds: usize, mut run: impl FnMut(Gateway) -> T) -> [Vec<T>; 3] {
    let mut figures: [Vec<T>; 3] = Default::default();
    for round in 0..rounds {
        for gateway in ORDERS[round % ORDERS.len()] {
            figures[gateway as usize].push(run(gateway));
        }
    }
    figures
}

fn median_difference(with: &[f64], without: &[f64]) -> Option<f64> {
    median(with.iter().zip(without).map(|(w, wo)| w - wo).collect())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn run_on(c: &mut Criterion, db: Db) -> Figures {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (url, database) = runtime.block_on(Database::create(db));
    let (bench, baseline) = runtime.block_on(async {
        let app = thrive_gateway::startup::Application::build(&settings(&url), false)
            .await
            .expect("gateway starts");
        let base = format!("http://{}", app.address());
        let store = app.gateway().store.clone();
        tokio::spawn(app.run());
        let app = thrive_gateway::startup::Application::build_without_accept_audit(&settings(&url))
            .await
            .expect("baseline gateway starts");
        let baseline_base = format!("http://{}", app.address());
        let baseline = app.gateway().store.clone();
        tokio::spawn(app.run());
        let app = thrive_gateway::startup::Application::build_without_accept_audit(&settings(&url))
            .await
            .expect("control gateway starts");
        let control_base = format!("http://{}", app.address());
        tokio::spawn(app.run());
        let pem = std::fs::read(format!("{ROOT}/tests/fixtures/keys/test-issuer.pem"))
            .expect("issuer key");
        let token = thrive_gateway::auth::mint_token(
            &pem,
            "test-1",
            ISSUER,
            "thrive-gateway",
            "gp-a",
            3600,
        )
        .expect("token");
        let template = serde_json::from_str(include_str!("../tests/fixtures/referral-new.json"))
            .expect("JSON");
        let bench = Bench {
            base,
            baseline_base,
            control_base,
            store,
            client: reqwest::Client::new(),
            token,
            template,
        };
        (bench, baseline)
    });
    // One accepted referral, so delivery records name a stored referral and the store
    // looks its subject up, as it does for every real delivery record; and the accept
    // transaction is measured with what this accept wrote.
    let (record, accepted, accept_audit) = runtime.block_on(async {
        bench.accept_at(&bench.base, bench.request()).await;
        let written = bench.store.audit_after(0, 100).await.expect("audit");
        let accept_audit = written
            .iter()
            .find(|r| r.action == "referral.new")
            .expect("the accept wrote its audit record")
            .clone();
        let referral_id = accept_audit
            .referral_id
            .clone()
            .expect("the accept's record names its referral");
        let accepted = bench
            .store
            .referral(&referral_id)
            .await
            .expect("read")
            .expect("the accepted referral is stored");
        let record = delivery_record(&referral_id);
        bench.store.append_audit(&record).await.expect("appends");
        let rows = bench.store.audit_after(0, 100).await.expect("audit");
        let last = rows.last().expect("appended");
        assert!(last.subject.is_some(), "the subject was looked up");
        println!(
            "{}: delivery.referral audit record, detail {} bytes",
            db.name(),
            last.detail.len()
        );
        (record, accepted, accept_audit)
    });
    let transaction = || accept_record(&bench.template, &accepted, &accept_audit);
    let insert = |store: &Arc<dyn Store>, r: NewReferralRecord| {
        let store = store.clone();
        async move {
            let inserted = store.insert_referral(&r).await.expect("stored");
            assert_eq!(inserted, thrive_gateway::store::Inserted::Accepted);
        }
    };
    let fresh = |record: &AuditRecord| AuditRecord {
        at: OffsetDateTime::now_utc(),
        ..record.clone()
    };

    // Over HTTP, against the three gateways: the goal's measure. First, while the
    // three gateways' connections are equally fresh (the later measures use the
    // audited and baseline stores' pools, not the control's).
    let over_http = |gateway: Gateway, n: usize| {
        let base = match gateway {
            Gateway::Audited => &bench.base,
            Gateway::Baseline => &bench.baseline_base,
            Gateway::Control => &bench.control_base,
        };
        let requests: Vec<_> = (0..n).map(|_| bench.request()).collect();
        runtime.block_on(async {
            let start = Instant::now();
            for r in requests {
                bench.accept_at(base, r).await;
            }
            start.elapsed()
        })
    };
    // Each round's accepts, then the sealing of what they wrote (nothing, for the
    // baseline gateways, but the look that finds nothing pending), timed apart:
    // seconds per accept for each, and how many records were sealed.
    let [http_with, http_without, http_control] = rotated(HTTP_ROUNDS, |gateway| {
        let accepts = over_http(gateway, HTTP_PER_ROUND).as_secs_f64() / HTTP_PER_ROUND as f64;
        let start = Instant::now();
        let sealed = runtime.block_on(bench.store.seal_audit()).expect("sealed");
        let sealing = start.elapsed().as_secs_f64() / HTTP_PER_ROUND as f64;
        let expected = if gateway == Gateway::Audited {
            HTTP_PER_ROUND as u64
        } else {
            0
        };
        assert_eq!(
            sealed, expected,
            "{gateway:?}: one record sealed per accept with it"
        );
        (accepts, sealing, sealed)
    });
    let accepts = |rounds: &[(f64, f64, u64)]| rounds.iter().map(|r| r.0).collect::<Vec<_>>();
    let sealing = |rounds: &[(f64, f64, u64)]| rounds.iter().map(|r| r.1).collect::<Vec<_>>();
    let sealed: u64 = http_with.iter().map(|r| r.2).sum();
    // The sealer's whole work, per record: the mean, so that slow batches count.
    let seal_per_record = (sealed > 0).then(|| {
        http_with
            .iter()
            .map(|r| r.1 * HTTP_PER_ROUND as f64)
            .sum::<f64>()
            / sealed as f64
    });
    // What a look that finds nothing pending costs, per accept (the baseline's
    // rounds): part of every sealing round, so not counted against the record.
    let seal_idle = median(sealing(&http_without));
    let seal_busy = median(sealing(&http_with));
    let (http_with, http_without, http_control) = (
        accepts(&http_with),
        accepts(&http_without),
        accepts(&http_control),
    );

    let mut group = c.benchmark_group(format!("audit ({})", db.name()));
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    let append = Calls::default();
    group.throughput(Throughput::Elements(1));
    group.bench_function("audit append", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bench
                        .store
                        .append_audit(&fresh(&record))
                        .await
                        .expect("appends");
                }
                append.record(iters, start.elapsed())
            })
        })
    });

    let concurrent = Calls::default();
    // The head once every record written is sealed.
    let sealed_head = || {
        runtime
            .block_on(async {
                bench.store.seal_audit().await?;
                bench.store.audit_head().await
            })
            .expect("audit head")
    };
    let (head_before, _) = sealed_head();
    let mut written = 0u64;
    group.throughput(Throughput::Elements(WRITERS as u64));
    group.bench_function(format!("audit append, {WRITERS} concurrent writers"), |b| {
        b.iter_custom(|iters| {
            written += iters * WRITERS as u64;
            runtime.block_on(async {
                let start = Instant::now();
                let writers: Vec<_> = (0..WRITERS)
                    .map(|_| {
                        let store = bench.store.clone();
                        let record = record.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                store.append_audit(&fresh(&record)).await.expect("appends");
                            }
                        })
                    })
                    .collect();
                for w in writers {
                    w.await.expect("writer finished");
                }
                concurrent.record(iters, start.elapsed())
            })
        })
    });
    let (head_after, _) = sealed_head();
    assert_eq!(
        head_after - head_before,
        written as i64,
        "every concurrent append has its own place in the chain"
    );
    let verified = runtime
        .block_on(thrive_gateway::audit::verify(&*bench.store, None))
        .expect("chain readable");
    assert_eq!(verified.problem, None, "the chain verifies");
    assert_eq!(verified.records as i64, head_after, "the chain is whole");
    println!(
        "{}: {WRITERS} writers appended {written} records; chain of {head_after} verified",
        db.name()
    );

    group.throughput(Throughput::Elements(1));
    for (name, store) in [
        ("accept transaction with its audit record", &bench.store),
        ("accept transaction without (baseline)", &baseline),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let records: Vec<_> = (0..iters).map(|_| transaction()).collect();
                runtime.block_on(async {
                    let start = Instant::now();
                    for r in records {
                        insert(store, r).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    // Alternating rounds, each variant first in every other round.
    let (with_audit, without_audit) = paired(ROUNDS, |audited| {
        let store = if audited { &bench.store } else { &baseline };
        let records: Vec<_> = (0..PER_ROUND).map(|_| transaction()).collect();
        runtime.block_on(async {
            let start = Instant::now();
            for r in records {
                insert(store, r).await;
            }
            let took = start.elapsed().as_secs_f64() / PER_ROUND as f64;
            // Sealed outside the clock: this measure is the transaction alone.
            bench.store.seal_audit().await.expect("sealed");
            took
        })
    });

    let accept = Calls::default();
    for (name, audited) in [
        ("accept over HTTP", true),
        (
            "accept over HTTP without its audit record (baseline)",
            false,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let gateway = if audited {
                    Gateway::Audited
                } else {
                    Gateway::Baseline
                };
                let took = over_http(gateway, usize::try_from(iters).expect("iterations"));
                runtime.block_on(bench.store.seal_audit()).expect("sealed");
                if audited {
                    accept.record(iters, took)
                } else {
                    took
                }
            })
        });
    }
    group.finish();

    // Sealing alone, by batch: records appended outside the clock, then sealed.
    let seal_by_batch: Vec<(usize, f64)> = SEAL_BATCHES
        .iter()
        .filter_map(|&n| {
            let per_record: Vec<f64> = (0..SEAL_ROUNDS)
                .map(|_| {
                    runtime.block_on(async {
                        for _ in 0..n {
                            bench
                                .store
                                .append_audit(&fresh(&record))
                                .await
                                .expect("appends");
                        }
                        let start = Instant::now();
                        let sealed = bench.store.seal_audit().await.expect("sealed");
                        assert_eq!(sealed, n as u64, "the batch sealed whole");
                        start.elapsed().as_secs_f64() / n as f64
                    })
                })
                .collect();
            median(per_record).map(|m| (n, m))
        })
        .collect();

    let verified = runtime
        .block_on(thrive_gateway::audit::verify(&*bench.store, None))
        .expect("chain readable");
    assert_eq!(
        verified.problem, None,
        "the chain verifies after the accepts"
    );

    drop(bench);
    drop(baseline);
    runtime.shutdown_timeout(Duration::from_secs(2));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(database.drop_now());
    Figures {
        append: append.mean(),
        // Each iteration is one record per writer.
        concurrent: concurrent.mean().map(|s| WRITERS as f64 / s),
        accept: accept.mean(),
        marginal: median_difference(&with_audit, &without_audit),
        with_audit: mean(&with_audit),
        without_audit: mean(&without_audit),
        http_marginal: median_difference(&http_with, &http_without),
        seal_per_record,
        seal_busy,
        seal_idle,
        seal_by_batch,
        http_control: median_difference(&http_control, &http_without),
        http_with: median(http_with),
        http_without: median(http_without),
    }
}

fn audit(c: &mut Criterion) {
    let mut dbs = vec![Db::Sqlite];
    if postgres_base().is_some() {
        dbs.push(Db::Postgres);
    }
    let figures: Vec<_> = dbs.into_iter().map(|db| (db, run_on(c, db))).collect();
    let ms = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.3} ms", s * 1e3));
    let line = figures
        .iter()
        .map(|(db, f)| {
            let us = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.0} µs", s * 1e6));
            let percent = |part: Option<f64>, of: Option<f64>| match (part, of) {
                (Some(p), Some(o)) => format!("{:.1}%", p / o * 100.0),
                _ => "-".to_owned(),
            };
            let rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.0} records/s"));
            // The goal's measure: what the record adds to an accept over HTTP, against
            // the same accept without it, in the same rounds.
            let share = percent(f.http_marginal, f.http_without);
            // The record's whole cost: what it adds to the accept, and the sealer's
            // work for it afterwards.
            let whole_cost = f.http_marginal.zip(f.seal_per_record).map(|(m, s)| m + s);
            let whole = percent(whole_cost, f.http_without);
            let batches = f
                .seal_by_batch
                .iter()
                .map(|(n, s)| format!("{n}: {}", us(Some(*s))))
                .collect::<Vec<_>>()
                .join(", ");
            // What the same measure reads between two identical baseline gateways.
            let control = percent(f.http_control, f.http_without);
            // The cross-check: the record's marginal cost inside the accept
            // transaction against an accept over HTTP less that cost.
            let inside = percent(f.marginal, f.accept.zip(f.marginal).map(|(a, m)| a - m));
            format!(
                "{}: the audit record adds {share} to an accept over HTTP ({} with, {} \
                 without, {} more; the control gateway, also without, reads {control}, {}); \
                 with the sealer's work for it, {whole} ({} more; sealing {} a record in batches of \
                 {HTTP_PER_ROUND}, median {} an accept after an audited round, {} after a baseline one; \
                 sealing alone by batch size, per record, {batches}); \
                 inside the accept transaction it adds {} ({} with, {} without), {inside} of an accept over HTTP ({} with it); append on its own {} \
                 ({}), {WRITERS} writers {}",
                db.name(),
                ms(f.http_with),
                ms(f.http_without),
                us(f.http_marginal),
                us(f.http_control),
                us(whole_cost),
                us(f.seal_per_record),
                us(f.seal_busy),
                us(f.seal_idle),
                us(f.marginal),
                ms(f.with_audit),
                ms(f.without_audit),
                ms(f.accept),
                ms(f.append),
                rate(f.append.map(|s| 1.0 / s)),
                rate(f.concurrent),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    println!("audit cost (goal: under 10% of an accept):\n{line}");
}

criterion_group!(benches, audit);
criterion_main!(benches);
