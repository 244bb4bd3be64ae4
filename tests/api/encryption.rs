//! Encryption at rest: a copy of the database alone reveals no identifiers, the
//! referral is still delivered, keys rotate, and a ciphertext moved to another row
//! does not decrypt.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::FakeProvider;
use serde_json::{Value, json};
use thrive_gateway::store::crypto::{StorageKeySettings, StorageKeys};

const NHS: &str = "9990000042";
const FAMILY: &str = "Quillfeatherby";
const PHONE: &str = "07700 900461";

/// A referral with values found nowhere else in the fixtures.
fn distinctive_referral() -> Value {
    let mut msg = referral();
    set(
        &mut msg,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!(NHS),
    );
    set(
        &mut msg,
        &format!("{}/name/0/family", at::PATIENT),
        json!(FAMILY),
    );
    set(
        &mut msg,
        &format!("{}/telecom/0/value", at::PATIENT),
        json!(PHONE),
    );
    msg
}

async fn accept(app: &TestApp, msg: &Value) -> String {
    let reply = app.send("gp-a", msg).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Everything a copy of the database holds, as text: SQLite's file and its WAL read as
/// bytes; every row of every table on PostgreSQL.
async fn raw_database(db: Db, url: &str) -> String {
    match db {
        Db::Sqlite => {
            let path = url.trim_start_matches("sqlite://");
            let mut bytes = Vec::new();
            for file in [path.to_owned(), format!("{path}-wal")] {
                if let Ok(b) = std::fs::read(&file) {
                    bytes.extend(b);
                }
            }
            assert!(!bytes.is_empty(), "the database file exists");
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Db::Postgres => {
            let mut out = String::new();
            for table in [
                "referrals",
                "referral_identifiers",
                "messages",
                "deliveries",
                "audit_events",
                "referral_events",
            ] {
                for row in query_text(db, url, &format!("SELECT t::text FROM {table} t")).await {
                    out.extend(row.into_iter().flatten());
                }
            }
            out
        }
    }
}

fn assert_no_identifiers(raw: &str) {
    for (what, value) in [
        ("NHS number", NHS),
        ("family name", FAMILY),
        ("phone", PHONE),
    ] {
        assert!(
            !raw.contains(value),
            "the database holds the {what} in the clear"
        );
    }
}

async fn a_copy_of_the_database_reveals_no_identifiers_and_delivery_still_works(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let id = accept(&app, &distinctive_referral()).await;

    let sealed = query_text(
        db,
        &app.database_url,
        &format!("SELECT message, nhs_number FROM referrals WHERE id = '{id}'"),
    )
    .await;
    for column in &sealed[0] {
        let value = column.as_deref().unwrap();
        assert!(value.starts_with("enc:v1:"), "stored sealed");
    }
    assert_no_identifiers(&raw_database(db, &app.database_url).await);

    // The referral reads back and reaches the provider, minimised, as before.
    assert_eq!(
        app.get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
            .await
            .status,
        200
    );
    assert_eq!(app.deliver().await, 1);
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    let data = &seen[0].body["data"];
    assert_eq!(data["family_name"], FAMILY);
    assert_eq!(data["contact"], PHONE);
    assert!(
        data["patient_pseudonym"]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    assert!(!seen[0].body.to_string().contains(NHS));
    assert_eq!(
        app.store.deliveries_for(&id).await.unwrap()[0]
            .state
            .as_str(),
        "delivered"
    );

    // A cancellation still checks the patient against the (decrypted) NHS number.
    let original = distinctive_referral();
    let other = accept(&app, &original).await;
    let mut wrong_patient = cancellation(&original);
    set(
        &mut wrong_patient,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("9990000018"),
    );
    set(
        &mut wrong_patient,
        &format!("{}/id", at::SERVICE_REQUEST),
        json!(other),
    );
    app.send("gp-a", &wrong_patient)
        .await
        .assert_issue(422, "REC_UNPROCESSABLE_ENTITY", "Patient");
    assert_eq!(app.send("gp-a", &cancellation(&original)).await.status, 200);
    assert_no_identifiers(&raw_database(db, &app.database_url).await);
}

async fn after_rotation_old_and_new_referrals_both_deliver(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let before = TestApp::spawn_with(db, &provider.config("")).await;
    let old = accept(&before, &distinctive_referral()).await;
    let rotated = format!(
        "{}\n[keys.storage]\nactive = \"v2\"\n[keys.storage.versions.v2]\nfile = \"{KEYS}/storage-v2.key\"\n",
        provider.config("")
    );
    let after = before.second(&rotated).await;
    let new = accept(&after, &distinctive_referral()).await;

    let versions = query_text(
        db,
        &after.database_url,
        &format!("SELECT id, message, nhs_number FROM referrals WHERE id IN ('{old}', '{new}')"),
    )
    .await;
    for row in versions {
        let id = row[0].as_deref().unwrap();
        let prefix = if id == old { "enc:v1:" } else { "enc:v2:" };
        assert!(row[1].as_deref().unwrap().starts_with(prefix), "{id}");
        assert!(row[2].as_deref().unwrap().starts_with(prefix), "{id}");
    }
    for _ in 0..3 {
        if after.deliver().await == 0 {
            break;
        }
    }
    for id in [&old, &new] {
        assert_eq!(
            after.store.deliveries_for(id).await.unwrap()[0]
                .state
                .as_str(),
            "delivered"
        );
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body["data"]["family_name"] == FAMILY));

    // Old values open only while their version stays configured.
    let only_v2: StorageKeySettings = toml::from_str(&format!(
        "active = \"v2\"\n[versions.v2]\nfile = \"{KEYS}/storage-v2.key\"\n"
    ))
    .unwrap();
    let keys = StorageKeys::load(Some(&only_v2)).unwrap();
    let settings = test_settings(&after.database_url, "");
    let store = thrive_gateway::store::connect_with_keys(&settings.database, keys.into())
        .await
        .unwrap();
    assert!(store.referral(&new).await.unwrap().is_some());
    let err = store.referral(&old).await.unwrap_err().to_string();
    assert!(
        err.contains(&old) && err.contains("v1") && err.contains("not configured"),
        "{err}"
    );
}

async fn a_ciphertext_moved_to_another_row_dead_letters_without_patient_data(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let donor = accept(&app, &distinctive_referral()).await;
    let victim = accept(&app, &distinctive_referral()).await;
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "UPDATE referrals SET message = (SELECT message FROM referrals WHERE id = '{donor}') \
             WHERE id = '{victim}'"
        ),
    )
    .await;
    assert_eq!(app.deliver().await, 2, "both attempted, nothing panics");
    assert_eq!(app.deliver().await, 0, "nothing loops");
    assert_eq!(
        app.store.deliveries_for(&donor).await.unwrap()[0]
            .state
            .as_str(),
        "delivered"
    );
    assert_eq!(
        app.store.deliveries_for(&victim).await.unwrap()[0]
            .state
            .as_str(),
        "dead"
    );
    assert_eq!(provider.seen().len(), 1, "the moved copy was never sent");

    let dead = app
        .get("operator", "/operator/v1/deliveries?dead=true")
        .await;
    assert_eq!(dead.status, 200, "{}", dead.text);
    let rows = dead.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let reason = rows[0]["last_error"].as_str().unwrap();
    assert!(
        reason.contains(&victim) && reason.contains("cannot be decrypted") && reason.contains("v1"),
        "the operator sees which referral and key: {reason}"
    );
    for secret in [NHS, FAMILY, PHONE]
        .iter()
        .chain(FIXTURE_PATIENT_DATA.iter())
    {
        assert!(!dead.text.contains(secret), "no patient data in the reason");
    }
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "delivery.referral"
        && a.outcome == "dead-letter"
        && a.referral_id.as_deref() == Some(victim.as_str())));
}

async fn migrate_encrypts_what_an_older_gateway_stored_in_the_clear(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let id = accept(&app, &distinctive_referral()).await;
    // As a gateway from before encryption at rest wrote it.
    let message = distinctive_referral().to_string().replace('\'', "''");
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "UPDATE referrals SET message = '{message}', nhs_number = '{NHS}' WHERE id = '{id}'"
        ),
    )
    .await;
    let unreadable = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await;
    assert_eq!(
        unreadable.status, 500,
        "a value in the clear is not trusted"
    );

    let migrate = |with_key: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("THRIVE_ENV")
            .env("THRIVE__DATABASE__URL", &app.database_url)
            .arg("migrate");
        if with_key {
            cmd.env("THRIVE__KEYS__STORAGE__ACTIVE", "v1").env(
                "THRIVE__KEYS__STORAGE__VERSIONS__V1__FILE",
                format!("{KEYS}/storage-v1.key"),
            );
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(migrate(false).contains("nothing sealed"));
    assert!(migrate(true).contains("1 referrals held in the clear were encrypted"));
    assert!(migrate(true).contains("0 referrals"), "only once");
    let stored = query_text(
        db,
        &app.database_url,
        &format!("SELECT message, nhs_number FROM referrals WHERE id = '{id}'"),
    )
    .await;
    for value in stored[0].iter().flatten() {
        assert!(value.starts_with("enc:v1:"));
        assert_no_identifiers(value);
    }
    assert_eq!(app.deliver().await, 1);
    assert_eq!(provider.seen()[0].body["data"]["family_name"], FAMILY);
    assert_eq!(
        app.get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
            .await
            .status,
        200
    );
}

async fn the_gateway_refuses_to_start_without_the_storage_key(db: Db) {
    let (url, _dir) = fresh_database(db).await;
    let mut settings = test_settings(&url, "");
    settings.keys.storage = None;
    let err = thrive_gateway::startup::Application::build(&settings, false)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("keys.storage"), "{err}");

    // A key of the wrong size is refused too, naming where it came from.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "ab".repeat(16)).unwrap();
    let settings = test_settings(
        &url,
        &format!(
            "[keys.storage]\nactive = \"v1\"\n[keys.storage.versions.v1]\nfile = \"{}\"\n",
            short.display()
        ),
    );
    let err = thrive_gateway::startup::Application::build(&settings, false)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("16 bytes") && err.contains("short.key"),
        "{err}"
    );
    assert!(!err.contains(&"ab".repeat(16)), "{err}");
}

on_both_databases!(
    a_copy_of_the_database_reveals_no_identifiers_and_delivery_still_works,
    after_rotation_old_and_new_referrals_both_deliver,
    a_ciphertext_moved_to_another_row_dead_letters_without_patient_data,
    the_gateway_refuses_to_start_without_the_storage_key,
    migrate_encrypts_what_an_older_gateway_stored_in_the_clear,
);
