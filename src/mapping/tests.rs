//! Unit tests for applying datasets: each transform, absent and unusable values, the
//! receipt, and the disclosure guard.

use super::*;
use crate::routing::Routing;
use fhir_sdk::time::macros::date;
use serde_json::json;

const ROUTING: &str = r#"version = "1"
[providers.p]
name = "P"

[[programmes]]
id = "tiw"
name = "T"
reference_prefix = "TIW"
referral_codes = ["1"]

[localities.l]
name = "L"
practices = ["Y90001"]
providers = { tiw = "p" }
"#;

const TABLE: &str = r#"id = "colours"
version = "7"
default = "other"
[codes]
r = "red"
"#;

const STRICT_TABLE: &str = r#"id = "strict"
version = "1"
[codes]
r = "red"
"#;

/// A dataset for provider `p` with the given `[[fields]]`, loaded the way production
/// loads one.
fn dataset(fields: &str) -> Dataset {
    try_dataset(fields).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn try_dataset(fields: &str) -> Result<Dataset, Vec<crate::routing::MappingError>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("datasets")).unwrap();
    std::fs::create_dir(dir.path().join("tables")).unwrap();
    std::fs::write(dir.path().join("routing.toml"), ROUTING).unwrap();
    std::fs::write(dir.path().join("tables/colours.toml"), TABLE).unwrap();
    std::fs::write(dir.path().join("tables/strict.toml"), STRICT_TABLE).unwrap();
    let text = format!("id = \"d\"\nversion = \"3\"\nprovider = \"p\"\n{fields}");
    std::fs::write(dir.path().join("datasets/p.toml"), text).unwrap();
    let routing = Routing::load(dir.path()).unwrap();
    let datasets = Datasets::load(dir.path(), &routing)?;
    Ok(datasets
        .for_provider(&ProviderId::parse("p").unwrap())
        .unwrap()
        .clone())
}

fn field(name: &str, transform: &str, source: &str, required: bool) -> String {
    format!(
        "[[fields]]\nname = \"{name}\"\ntransform = \"{transform}\"\nsource = \"{source}\"\nrequired = {required}\n"
    )
}

struct FakeKeys(&'static str);

impl Pseudonymise for FakeKeys {
    fn pseudonym(&self, input: &str) -> String {
        format!("{}:<{input}>", self.0)
    }
    fn key_version(&self) -> &str {
        self.0
    }
}

fn bundle() -> Value {
    json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "ServiceRequest", "authoredOn": "2026-11-20T10:10:00+00:00"}},
        {"resource": {"resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "999 000 0018"}],
            "birthDate": "2008-11-21",
            "multipleBirthInteger": 2,
            "active": true,
            "name": [{"family": "Example", "given": ["Ann"]}],
            "gender": "female",
            "address": [{"postalCode": "wv10 1aa"}, {"postalCode": "nonsense"}],
            "telecom": [{"system": "email", "value": "a@example.com"}]}},
        {"resource": {"resourceType": "Observation", "code": {"coding": [{"code": "r"}]},
            "valueString": "g", "effectiveDateTime": "1999-05"}}
    ]})
}

fn apply(d: &Dataset, bundle: &Value) -> Result<Minimised, MapError> {
    d.apply(bundle, &FakeKeys("v5"), date!(2030 - 01 - 01))
}

#[test]
fn copy_keeps_strings_numbers_and_booleans_as_they_are() {
    let d = dataset(&format!(
        "{}{}{}",
        field("family", "copy", "Patient.name.family", true),
        field("births", "copy", "Patient.multipleBirthInteger", true),
        field("active", "copy", "Patient.active", true),
    ));
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(
        Value::Object(out.data),
        json!({"family": "Example", "births": 2, "active": true})
    );
}

#[test]
fn copy_of_a_structure_is_refused_required_or_left_out_optional() {
    let required = dataset(&field("name", "copy", "Patient.name", true));
    let err = apply(&required, &bundle()).unwrap_err();
    assert!(matches!(err, MapError::Unusable { .. }), "{err}");
    assert!(
        err.to_string().contains("`name`") && !err.to_string().contains("Example"),
        "{err}"
    );

    let optional = dataset(&field("name", "copy", "Patient.name", false));
    let out = apply(&optional, &bundle()).unwrap();
    assert!(out.data.is_empty());
    assert!(out.receipt.fields.is_empty());
}

#[test]
fn pseudonym_uses_the_recipient_key_strips_spaces_and_records_the_key_version() {
    let d = dataset(&field(
        "person",
        "pseudonym",
        "Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value",
        true,
    ));
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(out.data["person"], json!("v5:<9990000018>"));
    assert_eq!(out.receipt.key_version.as_deref(), Some("v5"));
    assert_eq!(
        out.receipt.fields,
        [ReceiptField {
            name: "person".into(),
            transform: "pseudonym".into()
        }]
    );
}

#[test]
fn pseudonym_without_a_key_is_an_error_not_an_empty_value() {
    struct NoKeys;
    impl Pseudonymise for NoKeys {
        fn pseudonym(&self, _: &str) -> String {
            String::new()
        }
        fn key_version(&self) -> &str {
            ""
        }
    }
    let d = dataset(&field(
        "person",
        "pseudonym",
        "Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value",
        false,
    ));
    assert!(d.uses_pseudonyms());
    let err = d
        .apply(&bundle(), &NoKeys, date!(2030 - 01 - 01))
        .unwrap_err();
    assert!(matches!(err, MapError::NoPseudonymKey { .. }), "{err}");
}

#[test]
fn pseudonym_keys_implement_pseudonymise() {
    let keys = PseudonymKeys::from_hex("p", "v1", [("v1", &"ab".repeat(32)[..])]).unwrap();
    let d = dataset(&field(
        "person",
        "pseudonym",
        "Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value",
        true,
    ));
    let out = d.apply(&bundle(), &keys, date!(2030 - 01 - 01)).unwrap();
    let p = out.data["person"].as_str().unwrap();
    assert!(keys.verify("9990000018", p), "{p}");
    assert_eq!(out.receipt.key_version.as_deref(), Some("v1"));
}

#[test]
fn category_maps_listed_codes_and_falls_back_to_the_default() {
    let d = dataset(
        "[[fields]]\nname = \"c\"\ntransform = \"category\"\ntable = \"colours\"\n\
         source = \"Observation.code.coding.code\"\nrequired = true\n\
         [[fields]]\nname = \"g\"\ntransform = \"category\"\ntable = \"colours\"\n\
         source = \"Observation.valueString\"\nrequired = true\n",
    );
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(Value::Object(out.data), json!({"c": "red", "g": "other"}));
    assert_eq!(out.receipt.tables, ["colours@7"]);
}

#[test]
fn category_without_a_match_or_default_is_refused_without_naming_the_code() {
    let fields = |required| {
        format!(
            "[[fields]]\nname = \"g\"\ntransform = \"category\"\ntable = \"strict\"\n\
             source = \"Observation.valueString\"\nrequired = {required}\n"
        )
    };
    let err = apply(&dataset(&fields(true)), &bundle()).unwrap_err();
    assert!(err.to_string().contains("does not list"), "{err}");
    assert!(
        !err.to_string().contains("\"g\"") && !err.to_string().contains(" g "),
        "{err}"
    );

    let out = apply(&dataset(&fields(false)), &bundle()).unwrap();
    assert!(out.data.is_empty());
    assert!(
        out.receipt.tables.is_empty(),
        "a table that produced nothing was not used"
    );
}

#[test]
fn year_date_age_band_and_postcode_district_coarsen() {
    let d = dataset(&format!(
        "{}{}{}{}{}",
        field("birth_year", "year", "Patient.birthDate", true),
        field("seen_year", "year", "Observation.effectiveDateTime", true),
        field("referred", "date", "ServiceRequest.authoredOn", true),
        field("age", "age_band", "Patient.birthDate", true),
        field(
            "district",
            "postcode_district",
            "Patient.address.postalCode",
            true
        ),
    ));
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(
        Value::Object(out.data),
        json!({
            "birth_year": 2008,
            "seen_year": 1999,
            "referred": "2026-11-20",
            // 17 on the referral date (2026-11-20), though 21 on `today`.
            "age": "under-18",
            "district": "WV10",
        })
    );
}

#[test]
fn age_band_uses_today_when_the_referral_has_no_date() {
    let d = dataset(&field("age", "age_band", "Patient.birthDate", true));
    let mut b = bundle();
    b["entry"][0]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("authoredOn");
    let out = apply(&d, &b).unwrap();
    assert_eq!(out.data["age"], json!("18-24"));
}

#[test]
fn unusable_dates_and_postcodes_are_refused_when_required() {
    let d = dataset(&field(
        "d",
        "postcode_district",
        "Patient.address[1].postalCode",
        true,
    ));
    let err = apply(&d, &bundle()).unwrap_err();
    assert!(err.to_string().contains("not a UK postcode"), "{err}");
    assert!(!err.to_string().contains("nonsense"), "{err}");

    let d = dataset(&field("d", "date", "Observation.effectiveDateTime", true));
    let err = apply(&d, &bundle()).unwrap_err();
    assert!(err.to_string().contains("not a full date"), "{err}");
    assert!(!err.to_string().contains("1999"), "{err}");
}

#[test]
fn constant_and_first_of() {
    let d = dataset(
        "[[fields]]\nname = \"programme\"\ntransform = \"constant\"\nvalue = \"tiw\"\nrequired = true\n\
         [[fields]]\nname = \"version\"\ntransform = \"constant\"\nvalue = 2\nrequired = true\n\
         [[fields]]\nname = \"contact\"\ntransform = \"first_of\"\nrequired = true\n\
         sources = [\"Patient.telecom[system=phone].value\", \"Patient.telecom[system=email].value\"]\n\
         [[fields]]\nname = \"none\"\ntransform = \"first_of\"\nrequired = false\n\
         sources = [\"Patient.telecom[system=phone].value\", \"Flag.code.coding.code\"]\n",
    );
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(
        Value::Object(out.data),
        json!({"programme": "tiw", "version": 2, "contact": "a@example.com"})
    );
    let names: Vec<_> = out
        .receipt
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.transform.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("programme", "constant"),
            ("version", "constant"),
            ("contact", "first_of")
        ]
    );
    assert_eq!(out.receipt.key_version, None);
}

#[test]
fn a_missing_required_field_names_the_field_and_path() {
    let d = dataset(&format!(
        "{}{}",
        field("family", "copy", "Patient.name.family", true),
        field("flag", "copy", "Flag.code.coding.code", true),
    ));
    let err = apply(&d, &bundle()).unwrap_err();
    assert_eq!(
        err,
        MapError::Missing {
            dataset: "d".into(),
            field: "flag".into(),
            path: "Flag.code.coding.code".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "dataset d: required field `flag` has no value at Flag.code.coding.code"
    );
}

#[test]
fn receipt_names_the_mapping_and_only_fields_sent() {
    let d = dataset(&format!(
        "{}{}{}",
        field("family", "copy", "Patient.name.family", true),
        field("flag", "copy", "Flag.code.coding.code", false),
        field("given", "copy", "Patient.name.given", false),
    ));
    assert_eq!(
        (d.id(), d.version(), d.provider().as_str()),
        ("d", "3", "p")
    );
    assert_eq!(
        d.field_names().collect::<Vec<_>>(),
        ["family", "flag", "given"]
    );
    let out = apply(&d, &bundle()).unwrap();
    assert_eq!(out.receipt.mapping_id, "d");
    assert_eq!(out.receipt.mapping_version, "3");
    let names: Vec<_> = out.receipt.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["family", "given"]);
    let mut keys: Vec<_> = out.data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["family", "given"]);
}

#[test]
fn the_guard_refuses_fields_that_would_disclose_what_no_dataset_may() {
    let cases = [
        (
            field("n", "copy", "ServiceRequest.note.text", false),
            "free-text notes",
        ),
        (field("n", "copy", "Condition.text.div", false), "narrative"),
        (
            field(
                "n",
                "copy",
                "Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value",
                false,
            ),
            "only disclosed as a `pseudonym`",
        ),
        (
            field("n", "copy", "Patient.identifier.value", false),
            "only disclosed as a `pseudonym`",
        ),
        (
            field("n", "copy", "Patient.birthDate", false),
            "`age_band` or `year`",
        ),
        (
            field("n", "date", "Patient.birthDate", false),
            "`age_band` or `year`",
        ),
        (
            field("n", "copy", "Patient.address.line", false),
            "`postcode_district`",
        ),
        (
            field("n", "copy", "Condition.code.coding.code", false),
            "only disclosed as a `category`",
        ),
        (
            field("n", "copy", "Condition.code.coding.display", false),
            "only disclosed as a `category`",
        ),
    ];
    for (fields, expected) in cases {
        let errors = try_dataset(&fields).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains(expected), "{}", errors[0]);
        assert_eq!(errors[0].line, Some(7), "{}", errors[0]);
    }
}
