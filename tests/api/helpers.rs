//! Test harness: a real gateway on port 0 with a fresh database (SQLite file or new
//! PostgreSQL database), a test token issuer, and builders for referral messages whose
//! dates are relative to today so the suite never ages.

use fhir_sdk::time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};
use figment::providers::{Format, Toml};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::Arc;
use thrive_gateway::config::{Settings, defaults_figment};
use thrive_gateway::startup::Application;
use thrive_gateway::store::Store;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const TEST_ISSUER: &str = "https://test-issuer.invalid";
pub const AUDIENCE: &str = "thrive-gateway";
pub const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

/// Base URL of the PostgreSQL server tests (and benchmarks) create databases on.
pub fn postgres_base() -> String {
    std::env::var("THRIVE_TEST_POSTGRES")
        .or_else(|_| std::env::var("THRIVE_BENCH_POSTGRES"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// An HTTP client whose every request ends within `secs`: a port that takes the
/// connection and never answers fails the request instead of holding the test.
pub fn bounded_client(secs: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(secs))
        .build()
        .expect("an HTTP client")
}

/// A test's own database: an SQLite folder, or a PostgreSQL database dropped when the
/// last holder lets go, so test runs leave nothing behind.
pub struct TestDatabase {
    _dir: Option<tempfile::TempDir>,
    postgres: Option<String>,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres.take() else {
            return;
        };
        // The test's runtime may be shutting down: drop on a runtime of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            rt.block_on(async {
                use sqlx::Executor;
                let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base())).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                admin.close().await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("a test database could not be dropped; .ci/run drops leftovers");
        }
    }
}

/// A fresh, empty database URL for `db`, and the guard that removes it.
pub async fn fresh_database(db: Db) -> (String, TestDatabase) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}/gateway.db", dir.path().display());
            (
                url,
                TestDatabase {
                    _dir: Some(dir),
                    postgres: None,
                },
            )
        }
        Db::Postgres => {
            use sqlx::Executor;
            let name = format!("thrive_test_{}", uuid::Uuid::new_v4().simple());
            let mut admin = None;
            for _ in 0..20 {
                match sqlx::PgPool::connect(&format!("{}/postgres", postgres_base())).await {
                    Ok(p) => {
                        admin = Some(p);
                        break;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
                }
            }
            let admin = admin.expect("PostgreSQL reachable (see README: tests need it)");
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("create test database");
            admin.close().await;
            (
                format!("{}/{name}", postgres_base()),
                TestDatabase {
                    _dir: None,
                    postgres: Some(name),
                },
            )
        }
    }
}

/// The test pseudonym keys of both seed providers, as configuration.
pub fn pseudonym_keys_toml() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    ["bchft", "prospects", "audit"]
        .map(|p| {
            format!(
                "[keys.pseudonym.{p}]\nactive = \"v1\"\n[keys.pseudonym.{p}.versions.v1]\nfile = \"{root}/tests/fixtures/keys/pseudonym-{p}-v1.key\"\n"
            )
        })
        .join("\n")
}

/// The test storage key (v1), as configuration; every test gateway runs encrypted.
pub fn storage_keys_toml() -> String {
    format!(
        "[keys.storage]\nactive = \"v1\"\n[keys.storage.versions.v1]\nfile = \"{KEYS}/storage-v1.key\"\n"
    )
}

/// The test layer over the shipped defaults, as TOML: the test issuer and clients, the
/// test keys, and delivery and retention off. Benchmarks hand it to a gateway process
/// with `--config`.
pub fn test_toml(database_url: &str) -> String {
    format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2

[database]
url = "{database_url}"
max_connections = 10

[auth.issuers.test]
issuer = "{TEST_ISSUER}"
jwks_file = "{KEYS}/test-jwks.json"

[auth.clients.gp-a]
role = "gp-system"
practices = ["Y90001", "Y90010", "Y90030", "Y99999"]

[auth.clients.gp-b]
role = "gp-system"
practices = ["Y90020"]

[auth.clients.bchft]
role = "provider"
provider = "bchft"

[auth.clients.prospects]
role = "provider"
provider = "prospects"

[auth.clients.auditor]
role = "auditor"

[auth.clients.operator]
role = "operator"

[mappings]
dir = "{root}/mappings"

[delivery]
enabled = false

[audit.checkpoint]
key_id = "test-audit-1"
private_key_file = "{KEYS}/audit-checkpoint.pem"
public_key_file = "{KEYS}/audit-checkpoint.pub.pem"
[retention]
enabled = false

{keys}
{storage}
"#,
        root = env!("CARGO_MANIFEST_DIR"),
        keys = pseudonym_keys_toml(),
        storage = storage_keys_toml(),
    )
}

/// Settings for a test gateway: shipped defaults, then [`test_toml`], then the test's own.
pub fn test_settings(database_url: &str, extra_toml: &str) -> Settings {
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let overrides = test_toml(database_url);
    // The test's own TOML is a layer of its own, so it may set any table again.
    let figment = defaults_figment(&config_dir)
        .merge(Toml::string(&overrides))
        .merge(Toml::string(extra_toml));
    Settings::from_figment(figment).expect("test settings are valid")
}

/// A running gateway and what tests need to talk to it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    /// The gateway's shared state, for tests that drive intake with a fixed clock.
    pub gateway: thrive_gateway::app::AppState,
    /// The outbox worker, when the test configured providers; tests drive it.
    pub deliverer: Option<thrive_gateway::delivery::Deliverer>,
    /// The database URL, for a second gateway on the same database.
    pub database_url: String,
    /// The supervisor of the gateway's background tasks (tests add failing ones).
    pub supervisor: thrive_gateway::supervisor::Supervisor,
    /// The reader of the gateway's MESH inbox, when `[mesh]` is configured.
    pub mesh_inbox: Option<thrive_gateway::mesh_inbox::MeshInbox>,
    _db: Arc<TestDatabase>,
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, "").await
    }

    pub async fn spawn_with(db: Db, extra_toml: &str) -> Self {
        let (url, guard) = fresh_database(db).await;
        Self::spawn_on(&url, Arc::new(guard), extra_toml).await
    }

    /// A gateway on the database at `url` (e.g. reached through a test's own proxy).
    pub async fn spawn_at(url: &str, extra_toml: &str) -> Self {
        // The caller holds that database's guard.
        let nothing = TestDatabase {
            _dir: None,
            postgres: None,
        };
        Self::spawn_on(url, Arc::new(nothing), extra_toml).await
    }

    /// The address the gateway listens on, for tests that speak raw TCP to it.
    pub fn address(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("the base URL is http://<address>")
    }

    /// Another gateway process on this one's database.
    pub async fn second(&self, extra_toml: &str) -> Self {
        Self::spawn_on(&self.database_url, self._db.clone(), extra_toml).await
    }

    async fn spawn_on(url: &str, db: Arc<TestDatabase>, extra_toml: &str) -> Self {
        let settings = test_settings(url, extra_toml);
        let app = Application::build(&settings, false)
            .await
            .expect("gateway starts");
        let base = format!("http://{}", app.address());
        let gateway = app.gateway().clone();
        let store = gateway.store.clone();
        let deliverer = app.deliverer().cloned();
        let supervisor = app.supervisor().clone();
        let mesh_inbox = app.mesh_inbox().cloned();
        tokio::spawn(app.run());
        Self {
            base,
            client: reqwest::Client::new(),
            store,
            gateway,
            deliverer,
            database_url: url.to_owned(),
            supervisor,
            mesh_inbox,
            _db: db,
        }
    }

    /// Runs the outbox worker once: claims due deliveries and attempts them.
    pub async fn deliver(&self) -> usize {
        self.deliverer
            .as_ref()
            .expect("providers configured")
            .run_once()
            .await
            .expect("delivery pass")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a message as `client` with fresh request and correlation ids.
    pub async fn send(&self, client: &str, body: &Value) -> Reply {
        self.send_with(client, body, &Ids::fresh()).await
    }

    pub async fn send_with(&self, client: &str, body: &Value, ids: &Ids) -> Reply {
        let req = self
            .client
            .post(self.url("/fhir/r4/$process-message"))
            .bearer_auth(token(client))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", ids.request.to_string())
            .header("X-Correlation-Id", ids.correlation.to_string())
            .body(body.to_string());
        Reply::from(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, client: &str, path: &str) -> Reply {
        let req = self.client.get(self.url(path)).bearer_auth(token(client));
        Reply::from(req.send().await.expect("request sent")).await
    }

    /// Every audit record, oldest first.
    pub async fn audit(&self) -> Vec<thrive_gateway::store::AuditRow> {
        self.store
            .audit_after(0, 10_000)
            .await
            .expect("audit readable")
    }

    pub async fn referral_count(&self) -> i64 {
        self.store.count_referrals().await.expect("count")
    }
}

/// Request ids for one message.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub request: uuid::Uuid,
    pub correlation: uuid::Uuid,
}

impl Ids {
    pub fn fresh() -> Self {
        Self {
            request: uuid::Uuid::new_v4(),
            correlation: uuid::Uuid::new_v4(),
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn from(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body readable");
        Self {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.text))
    }

    /// `(REC code, issue code, expression)` of each OperationOutcome issue.
    pub fn issues(&self) -> Vec<(String, String, String)> {
        let body = self.json();
        assert_eq!(body["resourceType"], "OperationOutcome", "{}", self.text);
        body["issue"]
            .as_array()
            .expect("issues")
            .iter()
            .map(|i| {
                (
                    i["details"]["coding"][0]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    i["code"].as_str().unwrap_or_default().to_owned(),
                    i["expression"][0].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Asserts the status and that some issue has this REC code and an expression
    /// containing `expression`.
    pub fn assert_issue(&self, status: u16, rec: &str, expression: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let issues = self.issues();
        assert!(
            issues
                .iter()
                .any(|(r, _, e)| r == rec && e.contains(expression)),
            "expected {rec} at {expression}, got {issues:?}"
        );
    }
}

/// Claims for a test token; tests change fields to make bad tokens.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
}

impl Claims {
    pub fn for_client(client: &str) -> Self {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Self {
            iss: TEST_ISSUER.into(),
            sub: client.into(),
            aud: AUDIENCE.into(),
            exp: now + 300,
            nbf: now - 5,
            iat: now,
        }
    }
}

/// Signs with a key file under `tests/fixtures/keys`.
pub fn sign(claims: &Claims, key_file: &str, kid: &str, alg: Algorithm) -> String {
    let pem = std::fs::read(format!("{KEYS}/{key_file}")).expect("key file");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
    jsonwebtoken::encode(&header, claims, &key).expect("signed")
}

/// A valid token for a configured client.
pub fn token(client: &str) -> String {
    sign(
        &Claims::for_client(client),
        "test-issuer.pem",
        "test-1",
        Algorithm::RS256,
    )
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formats")
}

/// This moment, rounded up to the next whole second, as RFC 3339: a status event's
/// `occurred_at` that is after the delivery a test just made, not in the future (the
/// gateway allows a few minutes' clock skew), and stored exactly on both databases.
pub fn just_now() -> String {
    let now = OffsetDateTime::now_utc();
    rfc3339(now.replace_nanosecond(0).expect("0 ns") + Duration::seconds(1))
}

/// Makes the referral look delivered to its provider `days` ago, as a clock would, so
/// that status events can be dated across weeks without being in the future.
pub async fn delivered_days_ago(db: Db, app: &TestApp, referral: &str, days: i64) {
    let at = OffsetDateTime::now_utc() - Duration::days(days);
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "UPDATE deliveries SET delivered_at = '{}' WHERE referral_id = '{referral}' \
             AND kind = 'referral'",
            rfc3339(at.replace_nanosecond(0).expect("0 ns"))
        ),
    )
    .await;
}

/// Sets the element at a JSON pointer, panicking if its parent is missing.
pub fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let parent = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match parent {
        Value::Object(m) => {
            m.insert(key.to_owned(), value);
        }
        Value::Array(a) => a[key.parse::<usize>().expect("index")] = value,
        _ => panic!("{pointer} is not in a container"),
    }
}

/// Removes the element at a JSON pointer.
pub fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    match v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"))
    {
        Value::Object(m) => {
            m.remove(key);
        }
        Value::Array(a) => {
            a.remove(key.parse::<usize>().expect("index"));
        }
        _ => panic!("{pointer} is not in a container"),
    }
}

/// Entry positions in the referral fixture.
pub mod at {
    pub const HEADER: &str = "/entry/0/resource";
    pub const SERVICE_REQUEST: &str = "/entry/1/resource";
    pub const PATIENT: &str = "/entry/2/resource";
    pub const PRACTICE: &str = "/entry/4/resource";
    pub const CONSENT: &str = "/entry/5/resource";
}

/// A valid new referral from practice `Y90001` (Sandwell), unique ids, dates around now.
pub fn referral() -> Value {
    let mut v: Value = serde_json::from_str(include_str!("../fixtures/referral-new.json"))
        .expect("fixture is JSON");
    let now = OffsetDateTime::now_utc();
    set(&mut v, "/id", json!(uuid::Uuid::new_v4().to_string()));
    set(
        &mut v,
        &format!("{}/id", at::HEADER),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    set(
        &mut v,
        &format!("{}/identifier/0/value", at::SERVICE_REQUEST),
        json!(format!("GP-REF-{}", uuid::Uuid::new_v4().simple())),
    );
    set(
        &mut v,
        &format!("{}/authoredOn", at::SERVICE_REQUEST),
        json!(rfc3339(now - Duration::minutes(5))),
    );
    set(
        &mut v,
        &format!("{}/dateTime", at::CONSENT),
        json!(rfc3339(now - Duration::minutes(10))),
    );
    let day = |d: OffsetDateTime| d.date().to_string();
    set(
        &mut v,
        &format!("{}/provision/period", at::CONSENT),
        json!({"start": day(now - Duration::days(1)), "end": day(now + Duration::days(365))}),
    );
    v
}

/// The referral, from another practice in the fixture's organisation.
pub fn referral_from(practice: &str) -> Value {
    let mut v = referral();
    set(
        &mut v,
        &format!("{}/identifier/0/value", at::PRACTICE),
        json!(practice),
    );
    v
}

/// An update for `original` (same Bundle.id and sender identifiers, new header id).
fn update(original: &Value) -> Value {
    let mut v = original.clone();
    set(
        &mut v,
        &format!("{}/id", at::HEADER),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    set(
        &mut v,
        &format!("{}/reason/coding/0/code", at::HEADER),
        json!("update"),
    );
    v
}

/// A cancellation (`ServiceRequest.status` revoked) of `original`.
pub fn cancellation(original: &Value) -> Value {
    let mut v = update(original);
    set(
        &mut v,
        &format!("{}/status", at::SERVICE_REQUEST),
        json!("revoked"),
    );
    v
}

/// A consent withdrawal (`Consent.status` inactive) for `original`.
pub fn withdrawal(original: &Value) -> Value {
    let mut v = update(original);
    set(
        &mut v,
        &format!("{}/status", at::CONSENT),
        json!("inactive"),
    );
    v
}

/// Patient data in the fixture, none of which may appear in any answer or record.
pub const FIXTURE_PATIENT_DATA: [&str; 7] = [
    "9990000018",
    "Matthew",
    "Example Street",
    "07700 900123",
    "matthew.example@example.com",
    "1973-04-12",
    "knee pain",
];

/// Runs an async test body once per database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        )*
    };
}

/// An audit record for store-level tests.
pub fn audit_record(action: &str) -> thrive_gateway::store::AuditRecord {
    thrive_gateway::store::AuditRecord {
        http_status: Some(200),
        client_id: Some("operator".into()),
        role: Some("operator".into()),
        ..thrive_gateway::store::AuditRecord::new(action, "accepted")
    }
}

/// The text columns of a query's rows, read straight from a test database as someone
/// holding a copy of it would.
pub async fn query_text(db: Db, url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::Row;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<Option<String>, _>(i))
                        .collect()
                })
                .collect()
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("postgres");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<Option<String>, _>(i))
                        .collect()
                })
                .collect()
        }
    }
}

/// Runs one statement straight against a test database, as a tamperer or a clock
/// would, bypassing the gateway.
pub async fn execute_sql(db: Db, url: &str, sql: &str) {
    if let Err(e) = try_execute_sql(db, url, sql).await {
        panic!("statement failed: {e}");
    }
}

/// [`execute_sql`], for a statement the database may refuse: its error message.
pub async fn try_execute_sql(db: Db, url: &str, sql: &str) -> Result<(), String> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let done = match db {
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
            sqlx::query(sql).execute(&pool).await.map(|_| ())
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("postgres");
            sqlx::query(sql).execute(&pool).await.map(|_| ())
        }
    };
    done.map_err(|e| e.to_string())
}
