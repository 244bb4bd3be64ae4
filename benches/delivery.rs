//! Delivery costs: minimising and pseudonymising one referral for a provider, and
//! end-to-end accept-to-delivered throughput through a running gateway, its store and
//! a local sandbox provider (all on this machine, over loopback).

#![allow(dead_code)]

#[path = "../tests/api/helpers.rs"]
mod helpers;

use criterion::{Criterion, criterion_group, criterion_main};
use fhir_sdk::time::macros::date;
use helpers::{AUDIENCE, Db, TEST_ISSUER, TestApp, referral};
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

/// Referrals accepted over HTTP and delivered to a sandbox provider, per referral.
fn accept_to_delivered(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, _sandbox) = runtime.block_on(async {
        let sandbox = TestApp::spawn_with(Db::Sqlite, "[sandbox]\nenabled = true\n").await;
        let endpoint = sandbox.url("/sandbox/prospects/referrals");
        let app = TestApp::spawn_with(
            Db::Sqlite,
            &format!(
                "[delivery]\nbatch_size = 32\n[providers.bchft]\nendpoint = \"{endpoint}\"\n\
                 [providers.prospects]\nendpoint = \"{endpoint}\"\n"
            ),
        )
        .await;
        (app, sandbox)
    });
    let base = app.base.clone();
    let deliverer = app.deliverer.clone().expect("deliverer");
    let token = {
        let pem =
            std::fs::read(format!("{ROOT}/tests/fixtures/keys/test-issuer.pem")).expect("key");
        thrive_gateway::auth::mint_token(&pem, "test-1", TEST_ISSUER, AUDIENCE, "gp-a", 3600)
            .expect("token")
    };
    let client = reqwest::Client::new();

    let mut group = c.benchmark_group("end to end");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("accept to delivered (per referral)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let msg = referral();
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
