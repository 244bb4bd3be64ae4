//! The intake fuzz run, long: `cargo bench --bench fuzz` (cases from
//! `THRIVE_FUZZ_CASES`, default 200,000). Prints cases, answers and the rate; exits
//! non-zero on the first panic or quoted value, with the mutation that caused it.
#![allow(clippy::unwrap_used)]

#[path = "../tests/fuzz/intake.rs"]
mod intake;

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};

fn main() {
    let cases = std::env::var("THRIVE_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200_000);
    let routing = intake::routing();
    let accepted = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&intake::mutation(), |m| {
        let body = intake::body(&m);
        match intake::decide(&body, &routing) {
            Ok(true) => accepted.fetch_add(1, Ordering::Relaxed),
            Ok(false) => refused.fetch_add(1, Ordering::Relaxed),
            Err(e) => return Err(TestCaseError::fail(e)),
        };
        Ok(())
    });
    let secs = started.elapsed().as_secs_f64();
    if let Err(e) = result {
        eprintln!("intake fuzz failed after {secs:.1} s: {e}");
        std::process::exit(1);
    }
    println!(
        "intake fuzz: {cases} cases in {secs:.1} s ({:.0}/s): {} accepted, {} refused, no panic, nothing quoted",
        f64::from(cases) / secs,
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
}
