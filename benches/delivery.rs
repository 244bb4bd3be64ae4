//! Delivery costs: minimising and pseudonymising one referral for a provider, and
//! end-to-end accept-to-delivered throughput through a running gateway, its store and
//! a local sandbox provider (all on this machine, over loopback).

use criterion::{Criterion, criterion_group, criterion_main};
use fhir_sdk::time::macros::date;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use thrive_gateway::domain::ProviderId;
use thrive_gateway::mapping::Datasets;
use thrive_gateway::pseudonym::PseudonymKeys;
use thrive_gateway::routing::Routing;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn map_and_pseudonymise(c: &mut Criterion) {
    let dir = Path::new(ROOT).join("mappings");
    let routing = Routing::load(&dir).expect("routing");
    let datasets = Datasets::load(&dir, &routing).expect("datasets");
    let bundle: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/referral-new.json")).expect("JSON");
    let keys =
        PseudonymKeys::from_hex("prospects", "v1", [("v1", &*"a2c9".repeat(16))]).expect("keys");
    for provider in ["bchft", "prospects"] {
        let dataset = datasets
            .for_provider(&ProviderId::parse(provider).expect("id"))
            .expect("dataset");
        c.bench_function(&format!("map + pseudonymise ({provider})"), |b| {
            b.iter(|| {
                black_box(
                    dataset
                        .apply(black_box(&bundle), &keys, date!(2026 - 11 - 23))
                        .expect("maps"),
                )
            })
        });
    }
}

/// Every gateway encrypts personal data at rest with the test storage key.
const STORAGE_KEYS: &str = concat!(
    "[keys.storage]\nactive = \"v1\"\n[keys.storage.versions.v1]\nfile = \"",
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/storage-v1.key\"\n"
);

/// Referrals accepted over HTTP and delivered to a sandbox provider, per referral.
fn accept_to_delivered(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, sandbox_base) = runtime.block_on(async {
        use figment::providers::{Format, Toml};
        let sandbox_settings = thrive_gateway::config::Settings::from_figment(
            thrive_gateway::config::defaults_figment(&Path::new(ROOT).join("config")).merge(
                Toml::string(&format!(
                    "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}/sandbox.db\"\n[delivery]\nenabled = false\n[sandbox]\nenabled = true\n[mappings]\ndir = \"{ROOT}/mappings\"\n[keys.pseudonym.audit]\nactive = \"v1\"\n[keys.pseudonym.audit.versions.v1]\nfile = \"{ROOT}/tests/fixtures/keys/pseudonym-audit-v1.key\"\n{STORAGE_KEYS}",
                    dir.path().display()
                )),
            ),
        )
        .expect("sandbox settings");
        let sandbox = thrive_gateway::startup::Application::build(&sandbox_settings, false)
            .await
            .expect("sandbox starts");
        let sandbox_base = format!("http://{}", sandbox.address());
        tokio::spawn(sandbox.run());
        let endpoint = format!("{sandbox_base}/sandbox/prospects/referrals");
        let settings = thrive_gateway::config::Settings::from_figment(
            thrive_gateway::config::defaults_figment(&Path::new(ROOT).join("config")).merge(Toml::string(&format!(
                r#"
[server]
bind = "127.0.0.1:0"
[database]
url = "sqlite://{db}/gateway.db"
[delivery]
enabled = false
batch_size = 32
[mappings]
dir = "{ROOT}/mappings"
[auth.issuers.test]
issuer = "https://test-issuer.invalid"
jwks_file = "{ROOT}/tests/fixtures/keys/test-jwks.json"
[auth.clients.gp-a]
role = "gp-system"
practices = ["Y90001"]
[providers.bchft]
endpoint = "{endpoint}"
[providers.prospects]
endpoint = "{endpoint}"
[keys.pseudonym.bchft]
active = "v1"
[keys.pseudonym.bchft.versions.v1]
file = "{ROOT}/tests/fixtures/keys/pseudonym-bchft-v1.key"
[keys.pseudonym.prospects]
active = "v1"
[keys.pseudonym.prospects.versions.v1]
file = "{ROOT}/tests/fixtures/keys/pseudonym-prospects-v1.key"
[keys.pseudonym.audit]
active = "v1"
[keys.pseudonym.audit.versions.v1]
file = "{ROOT}/tests/fixtures/keys/pseudonym-audit-v1.key"
{STORAGE_KEYS}
"#,
                db = dir.path().display()
            ))),
        )
        .expect("gateway settings");
        let app = thrive_gateway::startup::Application::build(&settings, false)
            .await
            .expect("gateway starts");
        (app, sandbox_base)
    });
    let base = format!("http://{}", app.address());
    let deliverer = app.deliverer().cloned().expect("deliverer");
    runtime.spawn(app.run());
    let token = {
        let pem =
            std::fs::read(format!("{ROOT}/tests/fixtures/keys/test-issuer.pem")).expect("key");
        thrive_gateway::auth::mint_token(
            &pem,
            "test-1",
            "https://test-issuer.invalid",
            "thrive-gateway",
            "gp-a",
            3600,
        )
        .expect("token")
    };
    let mut template: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/referral-new.json")).expect("JSON");
    // Consent dates around today, so the example stays within its consent period.
    let today = fhir_sdk::time::OffsetDateTime::now_utc().date();
    let consent = &mut template["entry"][5]["resource"];
    consent["dateTime"] = (today - fhir_sdk::time::Duration::days(1))
        .to_string()
        .into();
    consent["provision"]["period"] = serde_json::json!({
        "start": (today - fhir_sdk::time::Duration::days(1)).to_string(),
        "end": (today + fhir_sdk::time::Duration::days(365)).to_string(),
    });
    template["entry"][1]["resource"]["authoredOn"] = today.to_string().into();
    let client = reqwest::Client::new();
    let _ = sandbox_base;

    let mut group = c.benchmark_group("end to end");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("accept to delivered (per referral)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut msg = template.clone();
                    msg["entry"][0]["resource"]["id"] = uuid::Uuid::new_v4().to_string().into();
                    msg["entry"][1]["resource"]["identifier"][0]["value"] =
                        uuid::Uuid::new_v4().to_string().into();
                    let res = client
                        .post(format!("{base}/fhir/r4/$process-message"))
                        .bearer_auth(&token)
                        .header("Content-Type", "application/fhir+json")
                        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                        .body(msg.to_string())
                        .send()
                        .await
                        .expect("sent");
                    assert_eq!(res.status(), 200, "accepted");
                }
                let mut delivered = 0;
                while delivered < iters as usize {
                    delivered += deliverer.run_once().await.expect("delivery pass");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, map_and_pseudonymise, accept_to_delivered);
criterion_main!(benches);
