//! Per-referral work before storage: read the JSON, validate the message, route it and
//! pass the consent gate, on the example referral. Target: under 100 microseconds.

use criterion::{Criterion, criterion_group, criterion_main};
use fhir_sdk::time::macros::datetime;
use std::hint::black_box;
use std::path::Path;
use thrive_gateway::consent;
use thrive_gateway::routing::Routing;
use thrive_gateway::validation::{self, Context, Message};

fn intake(c: &mut Criterion) {
    let body = include_bytes!("../tests/fixtures/referral-new.json");
    let routing = Routing::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings"))
        .expect("shipped mappings load");
    // Inside the example consent's period, so the whole path runs.
    let now = datetime!(2026-11-23 12:00 UTC);
    let ctx = Context {
        now,
        minimum_age_years: 18,
        routing: &routing,
    };
    c.bench_function("validate + consent + route (example referral)", |b| {
        b.iter(|| {
            let value = validation::parse_json(black_box(body)).expect("JSON");
            let checked = validation::validate(value, &ctx);
            let Ok(Message::New(referral)) = checked.result else {
                panic!("the example referral is valid");
            };
            let route = routing
                .route(&referral.envelope.practice, &referral.referral_code)
                .expect("routable");
            let provider = routing.provider(&route.provider).expect("provider");
            black_box(consent::check(&referral.consents, provider, now).expect("consented"))
        })
    });
}

criterion_group!(benches, intake);
criterion_main!(benches);
