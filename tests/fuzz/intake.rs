//! The intake decision under mutated messages: the fixture referral with elements
//! replaced, removed or given hostile values (calendar ends, offsets, huge numbers,
//! wrong types, control characters), and raw bytes. Whatever comes in, the decision is
//! an answer, never a panic, and no inserted value is ever quoted back.
//!
//! Shared by `tests/fuzz.rs` (a short run in every test pass) and `benches/fuzz.rs`
//! (a long run: `cargo bench --bench fuzz`).

use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use thrive_gateway::consent;
use thrive_gateway::outcome::Rejection;
use thrive_gateway::routing::Routing;
use thrive_gateway::validation::{self, Context, Message};

/// A marker no diagnostic may echo.
pub const MARK: &str = "Zq9Marker";

pub fn routing() -> Routing {
    Routing::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")))
        .expect("the shipped mappings load")
}

pub fn fixture() -> Value {
    serde_json::from_str(include_str!("../fixtures/referral-new.json")).expect("fixture")
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

/// Values senders get wrong, and values attackers send.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1e308)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!("9999-12-31")),
        Just(json!("9999")),
        Just(json!("0001-01-01")),
        Just(json!("2026-12-01T09:00:00+25:00")),
        Just(json!("2026-02-30")),
        Just(json!(format!("{MARK}\u{0}\u{202e}"))),
        Just(json!(MARK.repeat(2_000))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"reference": format!("#{MARK}")}])),
        Just(json!({"reference": format!("https://x.example/fhir/{MARK}/1/_history/2")})),
        "[a-zA-Z0-9:/#._|-]{0,40}".prop_map(|s| json!(format!("{MARK}{s}"))),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// One mutation of the fixture.
#[derive(Debug, Clone)]
pub enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    Bytes(Vec<u8>),
}

pub fn mutation() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        4 => (any::<usize>(), hostile_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Bytes),
    ];
    proptest::collection::vec(one, 1..4)
}

/// The body a list of mutations makes of the fixture.
pub fn body(mutations: &[Mutation]) -> Vec<u8> {
    let mut v = fixture();
    for m in mutations {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        match m {
            Mutation::Replace(i, value) if !all.is_empty() => {
                if let Some(slot) = v.pointer_mut(&all[i % all.len()]) {
                    *slot = value.clone();
                }
            }
            Mutation::Remove(i) if !all.is_empty() => {
                let p = &all[i % all.len()];
                if let Some((parent, key)) = p.rsplit_once('/')
                    && let Some(container) = v.pointer_mut(parent)
                {
                    match container {
                        Value::Object(m) => {
                            m.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Value::Array(a) => {
                            if let Ok(k) = key.parse::<usize>()
                                && k < a.len()
                            {
                                a.remove(k);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Mutation::Bytes(bytes) => {
                let mut text = v.to_string().into_bytes();
                let at = bytes.first().map_or(0, |b| usize::from(*b)) * text.len() / 256;
                text.splice(at..at, bytes.iter().copied());
                return text;
            }
            _ => {}
        }
    }
    v.to_string().into_bytes()
}

/// The pure intake decision: read, validate, route, consent; `Ok(true)` when it would
/// accept. Panics (the failure a fuzz run looks for) propagate; a diagnostic quoting
/// the marker, or a refusal with no issue, is a failure too.
pub fn decide(body: &[u8], routing: &Routing) -> Result<bool, String> {
    let now = fhir_sdk::time::macros::datetime!(2026-11-20 12:00 UTC);
    let ctx = Context {
        now,
        minimum_age_years: 18,
        routing,
    };
    let rejection = match validation::parse_json(body) {
        Err(r) => Some(r),
        Ok(value) => match validation::validate(value, &ctx).result {
            Err(r) => Some(r),
            Ok(Message::New(n)) => match routing.route(&n.envelope.practice, &n.referral_code) {
                Ok(route) => match routing.provider(&route.provider) {
                    Some(p) => consent::check(&n.consents, p, now)
                        .err()
                        .map(|issues| Rejection { issues }),
                    None => None,
                },
                Err(_) => None,
            },
            Ok(Message::Update(_)) => None,
        },
    };
    let Some(r) = rejection else {
        return Ok(true);
    };
    let text = r.to_operation_outcome().to_string();
    if text.contains(MARK) {
        return Err(format!("a diagnostic quotes the sender: {text}"));
    }
    if r.issues.is_empty() {
        return Err("a rejection without issues".into());
    }
    Ok(false)
}
