//! What the audit trail costs, as shipped: appending a pending record (one writer,
//! and four at once), sealing pending records into the hash chain by batch size,
//! verifying the chain, and exporting it. The store is opened as the gateway opens it.
//!
//! `cargo bench --bench audit`; on SQLite (a temporary file), and also on PostgreSQL
//! when `THRIVE_BENCH_POSTGRES` names a server (a fresh `thrive_test_<uuid>` database,
//! dropped afterwards).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/api/helpers.rs"]
mod helpers;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use helpers::{Db, audit_record, fresh_database, test_settings};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thrive_gateway::audit::export::{ExportPlan, Format};
use thrive_gateway::store::Store;

/// Records written before the verify and export rounds, so they walk a real chain.
const CHAIN: usize = 10_000;
const WRITERS: usize = 4;
const SEAL_BATCHES: [u64; 4] = [1, 20, 100, 500];

async fn append(store: &dyn Store, n: u64) {
    for _ in 0..n {
        store
            .append_audit(&audit_record("referral.read"))
            .await
            .unwrap();
    }
}

fn trail(c: &mut Criterion, db: Db) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _database) = rt.block_on(fresh_database(db));
    let settings = test_settings(&url, "");
    let store: Arc<dyn Store> = rt
        .block_on(thrive_gateway::store::connect(&settings.database))
        .unwrap();
    let mut group = c.benchmark_group(format!("audit ({db:?})"));
    group.sample_size(20);

    group.throughput(Throughput::Elements(1));
    group.bench_function("append one record", |b| {
        b.iter(|| rt.block_on(append(store.as_ref(), 1)));
    });
    group.throughput(Throughput::Elements(WRITERS as u64));
    group.bench_function("four writers append one each at once", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut writers = tokio::task::JoinSet::new();
                for _ in 0..WRITERS {
                    let store = store.clone();
                    writers.spawn(async move { append(store.as_ref(), 1).await });
                }
                while writers.join_next().await.is_some() {}
            })
        });
    });
    for batch in SEAL_BATCHES {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("seal {batch} pending records"), |b| {
            b.iter_custom(|iters| {
                let mut sealing = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(append(store.as_ref(), batch));
                    let started = Instant::now();
                    rt.block_on(store.seal_audit()).unwrap();
                    sealing += started.elapsed();
                }
                sealing
            })
        });
    }

    rt.block_on(async {
        append(store.as_ref(), CHAIN as u64).await;
        store.seal_audit().await.unwrap();
    });
    let records = rt.block_on(store.audit_head()).unwrap().0;
    group.sample_size(10);
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function(format!("verify a chain of {records} records"), |b| {
        b.iter(|| {
            let v = rt
                .block_on(thrive_gateway::audit::verify(store.as_ref(), None))
                .unwrap();
            assert!(v.intact());
        })
    });
    for format in [Format::Fhir, Format::Csv] {
        group.bench_function(format!("export {records} records as {format:?}"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    rt.block_on(async {
                        let from = fhir_sdk::time::macros::datetime!(2000-01-01 0:00 UTC);
                        let to = fhir_sdk::time::macros::datetime!(2100-01-01 0:00 UTC);
                        let plan = ExportPlan::new(store.as_ref(), None, from, to, format)
                            .await
                            .unwrap();
                        let mut bytes = 0usize;
                        let mut chunks = std::pin::pin!(plan.stream(store.clone()));
                        while let Some(chunk) = chunks.next().await {
                            bytes += chunk.unwrap().len();
                        }
                        bytes
                    })
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn audit(c: &mut Criterion) {
    trail(c, Db::Sqlite);
    if std::env::var("THRIVE_BENCH_POSTGRES").is_ok() {
        trail(c, Db::Postgres);
    }
}

criterion_group!(benches, audit);
criterion_main!(benches);
