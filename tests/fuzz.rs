//! A short fuzz run of the intake decision in every test pass (`THRIVE_FUZZ_CASES`,
//! default 256); `cargo bench --bench fuzz` runs it long.
#![allow(clippy::unwrap_used)]

#[path = "fuzz/intake.rs"]
mod intake;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn mutated_messages_are_answered_never_panicked_on() {
    let cases = std::env::var("THRIVE_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let routing = intake::routing();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&intake::mutation(), |m| {
            let body = intake::body(&m);
            intake::decide(&body, &routing)
                .map(|_| ())
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn the_fixture_itself_is_accepted() {
    let body = intake::body(&[]);
    assert_eq!(intake::decide(&body, &intake::routing()), Ok(true));
}
