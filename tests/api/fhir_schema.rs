//! An independent check of the FHIR documents the gateway emits. The gateway did not
//! write it: HL7's own FHIR R4 (4.0.1) JSON schema (`tests/fixtures/fhir/`, see the README
//! there), checked by the `jsonschema` crate, plus the Bundle invariants that a JSON
//! schema cannot express, written from the R4 specification's text. Nothing here uses the
//! gateway's own validation code.
//!
//! The schema is compiled once per test binary (a shared lazy static), so only the first
//! call pays for it.

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::sync::LazyLock;

/// HL7's `fhir.schema.json` for R4 4.0.1, gzipped.
const SCHEMA_GZ: &[u8] = include_bytes!("../fixtures/fhir/fhir.schema.json.gz");

/// The R4 elements with minimum cardinality 1 that the schema leaves optional (primitives
/// and choices), per schema definition, from HL7's R4 StructureDefinitions.
const REQUIRED_ELEMENTS: &str = include_str!("../fixtures/fhir/r4-required-elements.json");

/// The code system every coded OperationOutcome issue must use (NHS HTTP error codes).
const NHS_HTTP_ERROR_CODES: &str = "https://fhir.nhs.uk/Codesystem/http-error-codes";

/// Longest excerpt of a schema message kept in a failure (messages quote the instance).
const MESSAGE_LIMIT: usize = 300;

struct R4 {
    validator: Validator,
    /// The schema's `definitions`, to follow a document's elements to their definitions.
    definitions: Value,
    /// The resource types the schema knows (its `discriminator.mapping`).
    resource_types: BTreeSet<String>,
    /// Definition name -> property -> FHIR path, for the elements the schema should
    /// require but does not (`r4-required-elements.json`).
    required: BTreeMap<String, BTreeMap<String, String>>,
}

static R4: LazyLock<R4> = LazyLock::new(|| {
    let schema = hl7_schema();
    let resource_types = schema["discriminator"]["mapping"]
        .as_object()
        .expect("fhir.schema.json has discriminator.mapping")
        .keys()
        .cloned()
        .collect();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&dispatch_on_resource_type(schema.clone()))
        .expect("fhir.schema.json compiles");
    let required = serde_json::from_str(REQUIRED_ELEMENTS).expect("r4-required-elements.json");
    R4 {
        validator,
        definitions: schema["definitions"].clone(),
        resource_types,
        required,
    }
});

/// HL7's schema as published.
fn hl7_schema() -> Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(SCHEMA_GZ)
        .read_to_string(&mut text)
        .expect("tests/fixtures/fhir/fhir.schema.json.gz is gzipped UTF-8");
    let schema: Value = serde_json::from_str(&text).expect("fhir.schema.json is JSON");
    assert_eq!(
        schema["id"], "http://hl7.org/fhir/json-schema/4.0",
        "not the R4 schema"
    );
    schema
}

/// HL7's schema with its `oneOf` over the 146 resource types (the document itself and
/// `ResourceList`: Bundle.entry.resource, contained, Parameters.parameter.resource, ...)
/// replaced by what the schema's own `discriminator` (OpenAPI's keyword, which JSON Schema
/// ignores) says it means: the definition named by `resourceType`, as draft-07 if/then.
///
/// It accepts exactly what the `oneOf` accepts (each definition requires its own
/// `resourceType` const, so at most one branch can match); the self-test
/// `the_dispatch_agrees_with_hl7s_one_of` checks that. What it changes is the failure: a
/// failed `oneOf` reports one opaque error and keeps, for each of the 146 branches, errors
/// that own a copy of the instance (run over HL7's examples, a large failing Bundle got the
/// test process killed), where the dispatch reports the errors of the resource's own
/// definition at their paths.
fn dispatch_on_resource_type(mut schema: Value) -> Value {
    let mapping = schema["discriminator"]["mapping"]
        .as_object()
        .expect("fhir.schema.json has discriminator.mapping")
        .clone();
    let dispatch = serde_json::json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"enum": mapping.keys().collect::<Vec<_>>()}},
        "allOf": mapping.iter().map(|(resource_type, definition)| serde_json::json!({
            "if": {
                "required": ["resourceType"],
                "properties": {"resourceType": {"const": resource_type}},
            },
            "then": {"$ref": definition},
        })).collect::<Vec<_>>(),
    });
    let root = schema.as_object_mut().expect("the schema is an object");
    assert!(
        root.remove("oneOf").is_some(),
        "fhir.schema.json has its root oneOf"
    );
    root.insert(
        "$schema".to_owned(),
        "http://json-schema.org/draft-07/schema#".into(),
    );
    for (keyword, value) in dispatch.as_object().expect("an object") {
        root.insert(keyword.clone(), value.clone());
    }
    schema["definitions"]["ResourceList"] = dispatch;
    schema
}

/// Panics, naming `what` and listing every problem with its path, unless `doc` is a valid
/// FHIR R4 resource: HL7's JSON schema; the minimum cardinality of the primitive and choice
/// elements that the schema does not check (`Bundle.type`, `OperationOutcome.issue.severity`,
/// ...); FHIR's JSON rule that no array or object is empty (ele-1); and for a Bundle the
/// invariants bdl-1, 2, 3, 4, 5, 7, 8 and 12, every entry resource of a known type, and
/// every `fullUrl` absolute.
pub fn assert_valid_r4(doc: &Value, what: &str) {
    fail_on(what, doc, r4_problems(doc));
}

/// [`assert_valid_r4`], and `doc` is an OperationOutcome with at least one issue whose
/// every `details.coding` is an NHS HTTP error code
/// (`https://fhir.nhs.uk/Codesystem/http-error-codes`) with a code.
pub fn assert_operation_outcome(doc: &Value, what: &str) {
    let mut problems = r4_problems(doc);
    problems.extend(operation_outcome_problems(doc));
    fail_on(what, doc, problems);
}

/// Longest excerpt of the document itself shown after the problems.
const DOCUMENT_LIMIT: usize = 8000;

fn fail_on(what: &str, doc: &Value, problems: Vec<String>) {
    if !problems.is_empty() {
        let text = serde_json::to_string_pretty(doc).unwrap_or_default();
        panic!(
            "{what} is not valid FHIR R4 ({} problems):\n  - {}\n{what}:\n{}",
            problems.len(),
            problems.join("\n  - "),
            excerpt(&text, DOCUMENT_LIMIT),
        );
    }
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn excerpt(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let cut = (0..=limit)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &text[..cut])
}

/// Everything wrong with `doc` as FHIR R4: schema errors, then invariants.
fn r4_problems(doc: &Value) -> Vec<String> {
    let mut problems = schema_problems(doc);
    missing_required("ResourceList", doc, "", &mut problems);
    empty_containers("", doc, &mut problems);
    if doc["resourceType"] == "Bundle" {
        problems.extend(bundle_problems(doc));
    }
    problems
}

/// Every schema error, each as `path: message`.
fn schema_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for error in R4.validator.iter_errors(doc) {
        describe(&error, &mut problems);
    }
    problems
}

fn describe(error: &ValidationError<'_>, problems: &mut Vec<String>) {
    let at = path(error.instance_path().as_str());
    let message = match error.kind() {
        ValidationErrorKind::Enum { .. } if at.ends_with("/resourceType") => {
            format!("{} is not an R4 resource type", error.instance())
        }
        _ => excerpt(&error.to_string(), MESSAGE_LIMIT),
    };
    problems.push(format!("{at}: schema: {message}"));
}

/// A JSON pointer as a readable location (`/` for the document itself).
fn path(pointer: &str) -> String {
    if pointer.is_empty() {
        "/".to_owned()
    } else {
        pointer.to_owned()
    }
}

/// The elements of minimum cardinality 1 that the schema leaves optional: walks `value`,
/// an instance of schema definition `definition`, and its children (a `ResourceList` is the
/// definition of the resource's own `resourceType`). A primitive counts as present with its
/// value or with only its `_name` extensions; a choice `name[x]` with any `nameType`.
fn missing_required(definition: &str, value: &Value, at: &str, problems: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                missing_required(definition, item, &format!("{at}/{i}"), problems);
            }
        }
        Value::Object(members) => {
            let definition = if definition == "ResourceList" {
                match members.get("resourceType").and_then(Value::as_str) {
                    Some(t) if R4.resource_types.contains(t) => t,
                    _ => return, // the schema reports it
                }
            } else {
                definition
            };
            for (name, fhir_path) in R4.required.get(definition).into_iter().flatten() {
                let present = match name.strip_suffix("[x]") {
                    Some(prefix) => members.keys().any(|key| {
                        let key = key.strip_prefix('_').unwrap_or(key);
                        key.strip_prefix(prefix)
                            .is_some_and(|kind| kind.starts_with(|c: char| c.is_ascii_uppercase()))
                    }),
                    None => members.contains_key(name) || members.contains_key(&format!("_{name}")),
                };
                if !present {
                    problems.push(format!(
                        "{}: R4 cardinality: {fhir_path} is required (min 1)",
                        path(at)
                    ));
                }
            }
            for (name, member) in members {
                if let Some(child) = child_definition(definition, name) {
                    let key = name.replace('~', "~0").replace('/', "~1");
                    missing_required(child, member, &format!("{at}/{key}"), problems);
                }
            }
        }
        _ => {}
    }
}

/// The schema definition that property `name` of definition `definition` refers to.
fn child_definition(definition: &str, name: &str) -> Option<&'static str> {
    let property = &R4.definitions[definition]["properties"][name];
    property["$ref"]
        .as_str()
        .or_else(|| property["items"]["$ref"].as_str())?
        .strip_prefix("#/definitions/")
}

/// FHIR JSON: "arrays SHALL NOT be empty" (json.html) and every element has a value or
/// children (ele-1), so no empty object either. The schema allows both.
fn empty_containers(at: &str, value: &Value, problems: &mut Vec<String>) {
    match value {
        Value::Array(items) if items.is_empty() => {
            problems.push(format!("{}: ele-1: empty array", path(at)));
        }
        Value::Object(members) if members.is_empty() => {
            problems.push(format!("{}: ele-1: empty object", path(at)));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                empty_containers(&format!("{at}/{i}"), item, problems);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let name = name.replace('~', "~0").replace('/', "~1");
                empty_containers(&format!("{at}/{name}"), member, problems);
            }
        }
        _ => {}
    }
}

/// The Bundle invariants of R4 (bundle.html#invs) that the schema cannot check, and the
/// gateway's own rule that every `fullUrl` is absolute.
fn bundle_problems(bundle: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let kind = bundle["type"].as_str().unwrap_or_default();
    let entries: &[Value] = bundle["entry"].as_array().map_or(&[], Vec::as_slice);

    if bundle.get("total").is_some() && !matches!(kind, "searchset" | "history") {
        problems.push(format!(
            "/total: bdl-1: total only when a search or history (type is {kind})"
        ));
    }
    if kind == "message" {
        let first = entries.first().map(|e| &e["resource"]["resourceType"]);
        if first.and_then(Value::as_str) != Some("MessageHeader") {
            problems.push(
                "/entry/0/resource: bdl-12: a message must have a MessageHeader as its first resource"
                    .to_owned(),
            );
        }
    }

    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("/entry/{i}");
        if entry.get("search").is_some() && kind != "searchset" {
            problems.push(format!(
                "{at}/search: bdl-2: entry.search only when a search (type is {kind})"
            ));
        }
        let request_wanted = matches!(kind, "batch" | "transaction" | "history");
        if entry.get("request").is_some() != request_wanted {
            problems.push(format!(
                "{at}/request: bdl-3: entry.request mandatory for batch/transaction/history, \
                 otherwise prohibited (type is {kind})"
            ));
        }
        let response_wanted = matches!(kind, "batch-response" | "transaction-response" | "history");
        if entry.get("response").is_some() != response_wanted {
            problems.push(format!(
                "{at}/response: bdl-4: entry.response mandatory for \
                 batch-response/transaction-response/history, otherwise prohibited (type is {kind})"
            ));
        }

        let resource = entry.get("resource");
        match resource {
            None if entry.get("request").is_none() && entry.get("response").is_none() => {
                problems.push(format!(
                    "{at}: bdl-5: an entry must have a resource unless it has a request or response"
                ));
            }
            None => {}
            Some(resource) => match resource["resourceType"].as_str() {
                Some(t) if R4.resource_types.contains(t) => {}
                Some(t) => problems.push(format!(
                    "{at}/resource/resourceType: {t:?} is not an R4 resource type"
                )),
                None => problems.push(format!("{at}/resource: entry resource has no resourceType")),
            },
        }

        let Some(full_url) = entry["fullUrl"].as_str() else {
            continue;
        };
        if full_url.contains("/_history/") {
            problems.push(format!(
                "{at}/fullUrl: bdl-8: fullUrl cannot be a version specific reference ({full_url})"
            ));
        }
        if let Err(why) = absolute_full_url(full_url, resource) {
            problems.push(format!(
                "{at}/fullUrl: absolute fullUrl: {full_url:?} {why}"
            ));
        }
        let version = resource.and_then(|r| r["meta"]["versionId"].as_str());
        if kind != "history" && !seen.insert((full_url, version)) {
            problems.push(format!(
                "{at}/fullUrl: bdl-7: fullUrl {full_url:?} is not unique in the bundle \
                 (with the same meta.versionId)"
            ));
        }
    }
    problems
}

/// The gateway's rule: a `fullUrl` is `urn:uuid:<uuid>`, `urn:oid:<oid>` or an http(s) URL,
/// and an http(s) URL ending in `Type/id` names the entry's own type and id.
fn absolute_full_url(full_url: &str, resource: Option<&Value>) -> Result<(), &'static str> {
    if let Some(uuid) = full_url.strip_prefix("urn:uuid:") {
        return if is_uuid(uuid) {
            Ok(())
        } else {
            Err("is not urn:uuid: and a lower-case UUID")
        };
    }
    if let Some(oid) = full_url.strip_prefix("urn:oid:") {
        return if is_oid(oid) {
            Ok(())
        } else {
            Err("is not urn:oid: and an OID")
        };
    }
    let Some(rest) = full_url
        .strip_prefix("https://")
        .or_else(|| full_url.strip_prefix("http://"))
    else {
        return Err("is not absolute (urn:uuid:, urn:oid:, http: or https:)");
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || full_url.chars().any(char::is_whitespace) {
        return Err("is not a URL");
    }
    let segments: Vec<&str> = path.split('/').collect();
    if let [.., kind, id] = segments.as_slice()
        && R4.resource_types.contains(*kind)
        && let Some(resource) = resource
    {
        if resource["resourceType"] != *kind {
            return Err("names a different resource type than the entry's resource");
        }
        if resource["id"] != *id {
            return Err("ends in an id that is not the entry resource's id");
        }
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn is_oid(s: &str) -> bool {
    // FHIR's oid type: [0-2](\.(0|[1-9][0-9]*))+
    let mut arcs = s.split('.');
    let root_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let rest: Vec<&str> = arcs.collect();
    root_ok
        && !rest.is_empty()
        && rest.iter().all(|a| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (a == &"0" || !a.starts_with('0'))
        })
}

/// The gateway's OperationOutcome rules beyond R4.
fn operation_outcome_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if doc["resourceType"] != "OperationOutcome" {
        problems.push(format!(
            "/resourceType: expected an OperationOutcome, found {}",
            doc["resourceType"]
        ));
        return problems;
    }
    let issues: &[Value] = doc["issue"].as_array().map_or(&[], Vec::as_slice);
    if issues.is_empty() {
        problems.push("/issue: an OperationOutcome needs at least one issue".to_owned());
    }
    for (i, issue) in issues.iter().enumerate() {
        let Some(codings) = issue["details"]["coding"].as_array() else {
            continue;
        };
        for (c, coding) in codings.iter().enumerate() {
            let at = format!("/issue/{i}/details/coding/{c}");
            if coding["system"] != NHS_HTTP_ERROR_CODES {
                problems.push(format!(
                    "{at}/system: expected {NHS_HTTP_ERROR_CODES}, found {}",
                    coding["system"]
                ));
            }
            if coding["code"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}/code: an NHS HTTP error code needs a code"));
            }
        }
    }
    problems
}

mod self_tests {
    //! The validator itself: it passes what is valid and fails, for the right reason, on
    //! what is not.

    use super::*;
    use serde_json::json;

    fn message_bundle() -> Value {
        json!({
            "resourceType": "Bundle",
            "id": "8f0a1c36-5f0e-4a57-9a41-0b8d3c2e7a10",
            "meta": {"lastUpdated": "2026-01-02T03:04:05Z"},
            "type": "message",
            "timestamp": "2026-01-02T03:04:05Z",
            "entry": [
                {
                    "fullUrl": "urn:uuid:4d3c1a22-8f3e-4b7a-9d2c-6e5f4a3b2c1d",
                    "resource": {
                        "resourceType": "MessageHeader",
                        "id": "4d3c1a22-8f3e-4b7a-9d2c-6e5f4a3b2c1d",
                        "eventCoding": {
                            "system": "https://fhir.nhs.uk/CodeSystem/message-events-bars",
                            "code": "servicerequest-request"
                        },
                        "source": {"endpoint": "https://gateway.example.org/fhir"},
                        "focus": [{"reference": "urn:uuid:0b6a7c9e-1d2f-4e3a-8b5c-7d6e5f4a3b2c"}]
                    }
                },
                {
                    "fullUrl": "urn:uuid:0b6a7c9e-1d2f-4e3a-8b5c-7d6e5f4a3b2c",
                    "resource": {
                        "resourceType": "Patient",
                        "id": "0b6a7c9e-1d2f-4e3a-8b5c-7d6e5f4a3b2c",
                        "birthDate": "1970-01-01",
                        "gender": "female"
                    }
                }
            ]
        })
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "male"})
    }

    fn outcome() -> Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "invalid",
                "details": {"coding": [{"system": NHS_HTTP_ERROR_CODES, "code": "REC_BAD_REQUEST"}]},
                "diagnostics": "Bundle.entry[0]: missing"
            }]
        })
    }

    /// The problems found, and that one of them mentions `needle`.
    fn fails_with(doc: &Value, needle: &str) -> Vec<String> {
        let problems = r4_problems(doc);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem mentioning {needle:?}, found {problems:#?}"
        );
        problems
    }

    #[test]
    fn the_dispatch_agrees_with_hl7s_one_of() {
        let hl7 = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .build(&hl7_schema())
            .expect("HL7's schema compiles as published");
        let mut docs = vec![message_bundle(), patient(), outcome(), json!({"id": "x"})];
        docs.push(json!({"resourceType": "Referral"}));
        docs.push(json!({"resourceType": "Patient", "gender": "x"}));
        docs.push(json!({"resourceType": "Patient", "favouriteColour": "blue"}));
        docs.push(json!({"resourceType": "OperationOutcome", "issue": [{"severity": "bad"}]}));
        docs.push(json!({"resourceType": "OperationOutcome"}));
        // Valid to the schema, which leaves Group.type and Group.actual (1..1) optional.
        docs.push(json!({"resourceType": "Patient", "contained": [{"resourceType": "Group"}]}));
        let mut doc = message_bundle();
        doc["entry"][1]["resource"]["birthDate"] = json!("1970-13-01");
        docs.push(doc);
        let mut doc = message_bundle();
        doc["entry"][1]["resource"]["resourceType"] = json!("Referral");
        docs.push(doc);
        let mut doc = message_bundle();
        doc["entry"][1]["resource"] = json!({"id": "no type"});
        docs.push(doc);
        let valid: Vec<bool> = docs.iter().map(|d| hl7.is_valid(d)).collect();
        let expected = [
            true, true, true, false, false, false, false, false, false, true,
        ];
        assert_eq!(
            valid[..expected.len()],
            expected,
            "HL7's schema on {docs:#?}"
        );
        assert!(valid[expected.len()..].iter().all(|v| !v), "{valid:?}");
        for (doc, hl7_says) in docs.iter().zip(valid) {
            assert_eq!(R4.validator.is_valid(doc), hl7_says, "{doc}");
            assert_eq!(schema_problems(doc).is_empty(), hl7_says, "{doc}");
        }
    }

    #[test]
    fn a_valid_message_bundle_passes() {
        assert_valid_r4(&message_bundle(), "message bundle");
        assert_valid_r4(&patient(), "patient");
    }

    #[test]
    fn the_panic_names_the_document_and_the_rule() {
        let mut doc = message_bundle();
        doc["type"] = json!("collection");
        doc["total"] = json!(2);
        let failure = std::panic::catch_unwind(|| assert_valid_r4(&doc, "the collection"))
            .expect_err("total on a collection must fail");
        let text = failure
            .downcast_ref::<String>()
            .expect("panic message is a String");
        assert!(
            text.starts_with("the collection is not valid FHIR R4"),
            "{text}"
        );
        assert!(text.contains("/total: bdl-1"), "{text}");
    }

    #[test]
    fn total_on_a_collection_fails_bdl_1() {
        let mut doc = message_bundle();
        doc["type"] = json!("collection");
        doc["total"] = json!(2);
        let problems = fails_with(&doc, "bdl-1");
        assert_eq!(problems.len(), 1, "{problems:#?}");
    }

    #[test]
    fn total_and_search_on_a_searchset_pass() {
        let mut doc = message_bundle();
        doc["type"] = json!("searchset");
        doc["total"] = json!(2);
        for entry in doc["entry"].as_array_mut().unwrap() {
            entry["search"] = json!({"mode": "match"});
        }
        assert_valid_r4(&doc, "searchset");
    }

    #[test]
    fn search_outside_a_searchset_fails_bdl_2() {
        let mut doc = message_bundle();
        doc["entry"][1]["search"] = json!({"mode": "match"});
        fails_with(&doc, "/entry/1/search: bdl-2");
    }

    #[test]
    fn request_and_response_follow_the_bundle_type() {
        let mut doc = message_bundle();
        doc["entry"][1]["request"] = json!({"method": "POST", "url": "Patient"});
        fails_with(&doc, "/entry/1/request: bdl-3");

        let mut doc = message_bundle();
        doc["entry"][1]["response"] = json!({"status": "201 Created"});
        fails_with(&doc, "/entry/1/response: bdl-4");

        let mut doc = message_bundle();
        doc["type"] = json!("transaction");
        doc["entry"][0]["request"] = json!({"method": "POST", "url": "MessageHeader"});
        fails_with(&doc, "/entry/1/request: bdl-3");
    }

    #[test]
    fn a_message_must_start_with_its_header_bdl_12() {
        let mut doc = message_bundle();
        doc["entry"].as_array_mut().unwrap().reverse();
        fails_with(&doc, "bdl-12");
    }

    #[test]
    fn a_repeated_full_url_fails_bdl_7() {
        let mut doc = message_bundle();
        doc["entry"][1]["fullUrl"] = doc["entry"][0]["fullUrl"].clone();
        fails_with(&doc, "/entry/1/fullUrl: bdl-7");
    }

    #[test]
    fn a_relative_full_url_fails() {
        let mut doc = message_bundle();
        doc["entry"][1]["fullUrl"] = json!("Patient/0b6a7c9e-1d2f-4e3a-8b5c-7d6e5f4a3b2c");
        fails_with(&doc, "/entry/1/fullUrl: absolute fullUrl");
    }

    #[test]
    fn full_urls_are_uuids_oids_or_urls_naming_their_resource() {
        let mut doc = message_bundle();
        doc["entry"][1]["fullUrl"] = json!("urn:uuid:not-a-uuid");
        fails_with(&doc, "lower-case UUID");

        let mut doc = message_bundle();
        doc["entry"][1]["fullUrl"] = json!("urn:oid:1.2.840.113619.6.197");
        assert_valid_r4(&doc, "oid fullUrl");
        doc["entry"][1]["fullUrl"] = json!("urn:oid:9.02");
        fails_with(&doc, "an OID");

        let mut doc = message_bundle();
        let id = doc["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        doc["entry"][1]["fullUrl"] =
            json!(format!("https://gateway.example.org/fhir/Patient/{id}"));
        assert_valid_r4(&doc, "http fullUrl");
        doc["entry"][1]["fullUrl"] = json!("https://gateway.example.org/fhir/Patient/other");
        fails_with(&doc, "not the entry resource's id");
        doc["entry"][1]["fullUrl"] = json!(format!("https://gateway.example.org/fhir/Group/{id}"));
        fails_with(&doc, "different resource type");
        doc["entry"][1]["fullUrl"] = json!(format!(
            "https://gateway.example.org/fhir/Patient/{id}/_history/1"
        ));
        fails_with(&doc, "bdl-8");
    }

    #[test]
    fn an_invalid_date_or_code_fails_the_schema() {
        let mut doc = patient();
        doc["birthDate"] = json!("not-a-date");
        fails_with(&doc, "/birthDate: schema:");

        let mut doc = patient();
        doc["gender"] = json!("x");
        fails_with(&doc, "/gender: schema:");
    }

    #[test]
    fn an_unknown_property_fails_the_schema() {
        let mut doc = patient();
        doc["favouriteColour"] = json!("blue");
        let problems = fails_with(&doc, "favouriteColour");
        assert!(problems[0].starts_with("/: schema:"), "{problems:#?}");
    }

    #[test]
    fn errors_inside_an_entry_name_their_path() {
        let mut doc = message_bundle();
        doc["entry"][1]["resource"]["birthDate"] = json!("not-a-date");
        let problems = fails_with(&doc, "/entry/1/resource/birthDate: schema:");
        assert_eq!(problems.len(), 1, "{problems:#?}");
    }

    #[test]
    fn an_unknown_resource_type_fails() {
        let doc = json!({"resourceType": "Referral", "id": "r1"});
        fails_with(
            &doc,
            "/resourceType: schema: \"Referral\" is not an R4 resource type",
        );
        fails_with(
            &json!({"id": "r1"}),
            "/: schema: \"resourceType\" is a required property",
        );

        let mut doc = message_bundle();
        doc["entry"][1]["resource"]["resourceType"] = json!("Referral");
        fails_with(&doc, "/entry/1/resource/resourceType");
    }

    #[test]
    fn required_primitives_and_choices_the_schema_misses_are_checked() {
        let mut doc = message_bundle();
        doc.as_object_mut().unwrap().remove("type");
        let problems = fails_with(&doc, "/: R4 cardinality: Bundle.type is required");
        assert!(
            problems.iter().all(|p| !p.contains("schema:")),
            "{problems:#?}"
        );

        let mut doc = message_bundle();
        doc["entry"][0]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("eventCoding");
        fails_with(
            &doc,
            "/entry/0/resource: R4 cardinality: MessageHeader.event[x]",
        );

        let mut doc = message_bundle();
        doc["entry"][1]["resource"]["extension"] = json!([{"valueString": "no url"}]);
        fails_with(
            &doc,
            "/entry/1/resource/extension/0: R4 cardinality: Extension.url",
        );

        let mut doc = outcome();
        doc["issue"][0].as_object_mut().unwrap().remove("severity");
        fails_with(
            &doc,
            "/issue/0: R4 cardinality: OperationOutcome.issue.severity",
        );

        // A value carried by its extensions alone (`_name`) counts as present.
        let mut doc = outcome();
        let issue = doc["issue"][0].as_object_mut().unwrap();
        issue.remove("severity");
        issue.insert(
            "_severity".to_owned(),
            json!({"extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown"
            }]}),
        );
        assert_operation_outcome(&doc, "outcome with _severity");
    }

    #[test]
    fn an_empty_array_fails_ele_1() {
        let mut doc = patient();
        doc["name"] = json!([]);
        fails_with(&doc, "/name: ele-1");
    }

    #[test]
    fn an_nhs_operation_outcome_passes_and_others_fail() {
        assert_operation_outcome(&outcome(), "outcome");

        let mut doc = outcome();
        doc["issue"][0]["details"]["coding"][0]["system"] =
            json!("https://fhir.nhs.uk/CodeSystem/http-error-codes");
        let problems = operation_outcome_problems(&doc);
        assert!(
            problems[0].contains("/issue/0/details/coding/0/system"),
            "{problems:#?}"
        );

        let mut doc = outcome();
        doc["issue"][0]["severity"] = json!("bad");
        fails_with(&doc, "/issue/0/severity: schema:");

        let mut doc = outcome();
        doc["issue"] = json!([]);
        assert!(!operation_outcome_problems(&doc).is_empty());
        assert!(!operation_outcome_problems(&patient()).is_empty());
    }
}
