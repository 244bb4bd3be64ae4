//! The command line as an operator uses it.
#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use figment::providers::Format;
use std::process::Command;
use thrive_gateway::auth::{AuthSetupError, Authenticator};
use thrive_gateway::config::Settings;

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thrive-gateway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("THRIVE_ENV");
    for (k, _) in std::env::vars() {
        if k.starts_with("THRIVE__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The shipped development settings; key paths in them are relative to the crate root,
/// which is where cargo runs tests.
fn development_settings() -> Settings {
    let figment = figment::Figment::new()
        .merge(figment::providers::Toml::file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/default.toml"
        )))
        .merge(figment::providers::Toml::file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/development.toml"
        )));
    Settings::from_figment(figment).unwrap()
}

#[test]
fn mappings_check_passes_on_the_shipped_mappings() {
    let out = gateway().args(["mappings", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mappings ok"));
}

#[test]
fn mappings_check_names_file_and_line_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mappings/routing.toml"
    ))
    .unwrap();
    let broken = shipped.replace(
        "thrive-into-work = \"prospects\" }\n\n[localities.sandwell]",
        "thrive-into-work = \"nobody\" }\n\n[localities.sandwell]",
    );
    assert_ne!(broken, shipped, "the fixture edit applies");
    std::fs::write(dir.path().join("routing.toml"), &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("[localities.wolverhampton]"))
        .unwrap()
        + 1;
    let out = gateway()
        .args(["mappings", "check"])
        .env("THRIVE__MAPPINGS__DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("routing.toml:{line}:")),
        "{stderr}"
    );
    assert!(stderr.contains("unknown provider nobody"), "{stderr}");
}

#[test]
fn dev_token_mints_a_token_the_development_gateway_accepts() {
    let out = gateway()
        .args(["dev-token", "--client", "example-gp"])
        .env("THRIVE_ENV", "development")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let settings = development_settings();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let auth = rt
        .block_on(Authenticator::from_settings(&settings.auth, false))
        .unwrap();
    let who = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
    assert_eq!(who.client_id, "example-gp");
    assert_eq!(who.role.name(), "gp-system");

    let unknown = gateway()
        .args(["dev-token", "--client", "nobody"])
        .env("THRIVE_ENV", "development")
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}

#[test]
fn production_refuses_development_keys_and_dev_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"sqlite://{}/gw.db\"\n\n[auth.issuers.idp]\nissuer = \"https://idp.example\"\njwks_file = \"config/dev/jwks.json\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = gateway()
        .args(["serve", "--config"])
        .arg(&file)
        .env("THRIVE_ENV", "production")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("published signing key"), "{stderr}");

    let out = gateway()
        .args(["dev-token", "--client", "example-gp"])
        .env("THRIVE_ENV", "production")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// An operator who copies a published key into production is stopped before anything
/// is opened or bound, and told which setting to change; the key is not echoed.
#[test]
fn production_serve_refuses_a_published_storage_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gw.db");
    let file = dir.path().join("prod.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n\n[keys.storage]\nactive = \"v1\"\n[keys.storage.versions.v1]\nenv = \"GATEWAY_STORAGE_KEY\"\n",
            db.display()
        ),
    )
    .unwrap();
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/storage-v1.key"
    ))
    .unwrap();
    let out = gateway()
        .args(["serve", "--config"])
        .arg(&file)
        .env("THRIVE_ENV", "production")
        .env("THRIVE__SERVER__BIND", "127.0.0.1:0")
        .env("GATEWAY_STORAGE_KEY", key.trim())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys.storage.versions.v1")
            && stderr.contains("tests/fixtures/keys/storage-v1.key"),
        "{stderr}"
    );
    assert!(!stderr.contains(key.trim()), "the key is not echoed");
    assert!(!db.exists(), "nothing was opened");
}

#[test]
fn serve_refuses_to_start_without_the_storage_key_and_development_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gw.db");
    let out = gateway()
        .args(["serve"])
        .env(
            "THRIVE__DATABASE__URL",
            format!("sqlite://{}", db.display()),
        )
        .env("THRIVE__SERVER__BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys.storage is not configured"),
        "{stderr}"
    );
    assert!(!db.exists(), "nothing was written without the key");

    let settings = development_settings();
    thrive_gateway::store::crypto::StorageKeys::load(settings.keys.storage.as_ref())
        .expect("the development configuration has a storage key");
}

#[test]
fn an_unknown_key_stops_the_gateway_naming_the_key() {
    let out = gateway()
        .args(["migrate"])
        .env("THRIVE__SERVER__BINDD", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bindd"));
}

#[test]
fn migrate_creates_the_sqlite_database_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/folder/gw.db");
    let out = gateway()
        .args(["migrate"])
        .env(
            "THRIVE__DATABASE__URL",
            format!("sqlite://{}", db.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists());
}

#[tokio::test]
async fn production_refuses_the_development_key_and_symmetric_algorithms() {
    let settings = development_settings();
    // Development: fine.
    Authenticator::from_settings(&settings.auth, false)
        .await
        .unwrap();
    // Production with the development issuer: refused, whatever the issuer is called.
    let mut renamed = settings.auth.clone();
    let issuer = renamed.issuers.remove("development").unwrap();
    renamed.issuers.insert("corporate-idp".into(), issuer);
    let err = Authenticator::from_settings(&renamed, true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthSetupError::DevelopmentKeyInProduction(ref name) if name == "corporate-idp"),
        "{err}"
    );

    let mut hs = settings.auth.clone();
    hs.algorithms = vec!["HS256".into()];
    let err = Authenticator::from_settings(&hs, false).await.unwrap_err();
    assert!(err.to_string().contains("HS256"), "{err}");
}

/// `audit checkpoint`, `audit verify`, `audit export` and `audit verify-export` as an
/// auditor runs them: intact answers exit 0, a tampered trail exits 1 naming the record.
#[tokio::test]
async fn audit_commands_verify_export_and_name_the_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gw.db").display());
    let run = |args: &[&str]| {
        gateway()
            .args(args)
            .env("THRIVE_ENV", "development")
            .env("THRIVE__DATABASE__URL", &url)
            .output()
            .unwrap()
    };
    let database: thrive_gateway::config::DatabaseSettings =
        figment::Figment::from(figment::providers::Toml::string(&format!(
            "url = \"{url}\"\nmax_connections = 2\nsqlite_busy_timeout_ms = 5000"
        )))
        .extract()
        .unwrap();
    let store = thrive_gateway::store::connect(&database).await.unwrap();
    for action in ["referral.new", "delivery.referral", "referral.read"] {
        store
            .append_audit(&thrive_gateway::store::AuditRecord::new(action, "allowed"))
            .await
            .unwrap();
    }

    let out = run(&["audit", "checkpoint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoint signed at record 3"));
    let out = run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("audit chain intact: 3 records, 1 checkpoints")
    );

    let file = dir.path().join("export.json");
    let out = run(&[
        "audit",
        "export",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--format",
        "fhir",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four records: the three above and `audit verify`'s own; the export signs the
    // head first, so a second checkpoint covers the fourth.
    let out = run(&["audit", "verify-export", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("export intact: 4 records linked and signed by 2 checkpoints")
    );
    // The same export stripped of its checkpoint proves nothing: exit 1.
    let mut bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    bundle["entry"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["resource"]["resourceType"] != "Provenance");
    let unsigned = dir.path().join("unsigned.json");
    std::fs::write(&unsigned, bundle.to_string()).unwrap();
    let out = run(&["audit", "verify-export", unsigned.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT PROVEN: 0 of 4 records"));

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_events SET action = 'referral.cancel' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let out = run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 2 was changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Formats and groupings are typed: a value outside the list is refused before anything
/// is opened, and the refusal lists what is accepted.
#[test]
fn an_unknown_format_or_grouping_is_refused_listing_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gw.db");
    for (args, choices) in [
        (
            vec![
                "report",
                "programme",
                "--from",
                "2026-01-01",
                "--to",
                "2026-02-01",
                "--format",
                "xml",
            ],
            "table, csv, json",
        ),
        (
            vec![
                "report",
                "programme",
                "--from",
                "2026-01-01",
                "--to",
                "2026-02-01",
                "--group-by",
                "colour",
            ],
            "provider, locality, programme, month",
        ),
        (
            vec![
                "audit",
                "export",
                "--from",
                "2026-01-01",
                "--to",
                "2026-02-01",
                "--format",
                "xml",
            ],
            "fhir, csv",
        ),
    ] {
        let out = gateway()
            .args(&args)
            .env(
                "THRIVE__DATABASE__URL",
                format!("sqlite://{}", db.display()),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(choices), "{args:?}: {stderr}");
        assert!(!db.exists(), "{args:?} opened the database");
    }
}

/// The development configuration on another port, changing only `server.bind`: the
/// start-up summary says where everything goes, and a referral reaches the sandbox.
/// A sandbox URL written out with the old port is named in a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_delivers_to_its_sandbox_with_only_the_port_changed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = gateway()
        .args(["serve"])
        .env("THRIVE_ENV", "development")
        .env("THRIVE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "THRIVE__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("gw.db").display()),
        )
        .env("THRIVE__TELEMETRY__FORMAT", "json")
        .env("THRIVE__DELIVERY__POLL_INTERVAL_MS", "50")
        // Written out, as the shipped file once had it: a port this gateway does not use.
        .env(
            "THRIVE__GP_CALLBACKS__EXAMPLE-GP__SOURCE_ENDPOINT",
            "https://gp.example/fhir",
        )
        .env(
            "THRIVE__GP_CALLBACKS__EXAMPLE-GP__ENDPOINT",
            "http://127.0.0.1:8080/sandbox/example-gp/referrals",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = helpers::bounded_client(10);
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let token = gateway()
        .args(["dev-token", "--client", "example-gp"])
        .env("THRIVE_ENV", "development")
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut delivered = serde_json::Value::Null;
    let mut answer = String::new();
    if ready {
        let sent = client
            .post(format!("{base}/fhir/r4/$process-message"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
            .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
            .body(helpers::referral().to_string())
            .send()
            .await
            .unwrap();
        answer = format!("{} {}", sent.status(), sent.text().await.unwrap());
        for _ in 0..100 {
            let mut all = Vec::new();
            for provider in ["bchft", "prospects"] {
                let got: serde_json::Value = client
                    .get(format!("{base}/sandbox/{provider}/received"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                all.extend(got.as_array().cloned().unwrap_or_default());
            }
            if !all.is_empty() {
                delivered = serde_json::Value::Array(all);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let logs =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(ready, "the gateway did not become ready: {logs}");
    assert!(answer.starts_with("200"), "{answer}");
    assert_eq!(delivered.as_array().map(Vec::len), Some(1), "{logs}");

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .find(|m| m.starts_with("thrive-gateway starting"))
        .unwrap_or_else(|| panic!("no start-up summary in {logs}"));
    for expected in [
        "development (configuration: config/default.toml, config/development.toml, THRIVE__",
        "SQLite database ",
        &format!("127.0.0.1:{port}, TLS off"),
        &format!("provider bchft -> 127.0.0.1:{port} (json, signed-jwt, http)"),
        &format!("provider prospects -> 127.0.0.1:{port} (fhir, signed-jwt, http)"),
        "gp callback example-gp -> 127.0.0.1:8080 (fhir, no auth, http)",
        "sandbox       on",
        "delivery worker on, retention on (after 30 days), audit sealer every 250 ms",
    ] {
        assert!(summary.contains(expected), "{expected}: {summary}");
    }
    for secret in ["BEGIN", "PRIVATE", "sqlite://"] {
        assert!(!summary.contains(secret), "{summary}");
    }
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["fields"]["key"] == "gp_callbacks.example-gp.endpoint");
    assert!(
        warning.is_some(),
        "no warning of the stale sandbox port: {logs}"
    );
}
