//! Dataset minimisation through the public API: golden datasets for each shipped
//! provider mapping, what must never leave, and `mappings check` on broken folders.
#![allow(clippy::unwrap_used)]

use fhir_sdk::time::{Date, macros::date};
use serde_json::Value;
use std::path::{Path, PathBuf};
use thrive_gateway::{
    domain::ProviderId,
    mapping::{Datasets, MapError, Minimised},
    pseudonym::PseudonymKeys,
    routing::{MappingError, Routing},
};

const PROVIDERS: [&str; 2] = ["bchft", "prospects"];
/// Later than the referral's `authoredOn`, so a golden age band proves the referral
/// date was used.
const TODAY: Date = date!(2027 - 01 - 01);

fn mappings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn shipped() -> Datasets {
    let dir = mappings_dir();
    let routing = Routing::load(&dir).unwrap();
    Datasets::load(&dir, &routing).unwrap_or_else(|errors| panic!("{}", report(&errors)))
}

/// Fixed test keys, a different one per recipient as in production.
fn keys(provider: &str) -> PseudonymKeys {
    let hex = match provider {
        "bchft" => "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".to_owned(),
        _ => "ff".repeat(32),
    };
    PseudonymKeys::from_hex(provider, "v1", [("v1", hex.as_str())]).unwrap()
}

fn minimise(datasets: &Datasets, provider: &str, bundle: &Value) -> Result<Minimised, MapError> {
    let id = ProviderId::parse(provider).unwrap();
    datasets
        .for_provider(&id)
        .unwrap()
        .apply(bundle, &keys(provider), TODAY)
}

fn assert_golden(minimised: &Minimised, golden: &str) {
    let actual = serde_json::to_value(minimised).unwrap();
    let expected = read_json(&fixture("golden").join(golden));
    assert_eq!(
        actual,
        expected,
        "{golden} differs; actual:\n{}",
        serde_json::to_string_pretty(&actual).unwrap()
    );
}

fn assert_receipt_matches_data(m: &Minimised) {
    let mut sent: Vec<&str> = m.data.keys().map(String::as_str).collect();
    sent.sort_unstable();
    let mut named: Vec<&str> = m.receipt.fields.iter().map(|f| f.name.as_str()).collect();
    named.sort_unstable();
    assert_eq!(sent, named, "the receipt names exactly the fields sent");
}

#[test]
fn each_provider_gets_exactly_its_golden_dataset() {
    let datasets = shipped();
    let bundle = read_json(&fixture("referral-new.json"));
    for provider in PROVIDERS {
        let m = minimise(&datasets, provider, &bundle).unwrap();
        assert_golden(&m, &format!("{provider}.json"));
        assert_receipt_matches_data(&m);
    }
}

#[test]
fn without_optional_resources_the_dataset_is_still_valid_and_leaves_their_fields_out() {
    let datasets = shipped();
    let bundle = read_json(&fixture("golden/referral-without-optional.json"));
    for provider in PROVIDERS {
        let m = minimise(&datasets, provider, &bundle).unwrap();
        assert_golden(&m, &format!("{provider}-without-optional.json"));
        assert_receipt_matches_data(&m);
        for absent in [
            "condition_category",
            "employment_status",
            "reasonable_adjustment",
        ] {
            assert!(!m.data.contains_key(absent), "{provider}: {absent}");
        }
    }
}

#[test]
fn identifiers_birth_date_address_notes_and_diagnoses_never_leave() {
    let datasets = shipped();
    let bundle = read_json(&fixture("referral-new.json"));
    let never = [
        "9990000018",
        "999 000 0018",
        "1973-04-12",
        "1973",
        "1 Example Street",
        "Example Street",
        "Oldbury",
        "B69 4AA",
        "knee pain",
        "Left delivery job",
        "caretaking",
        "239873007",
        "Osteoarthritis",
        "\"male\"",
        "GP-REF-000123",
        "7654321",
    ];
    for provider in PROVIDERS {
        let m = minimise(&datasets, provider, &bundle).unwrap();
        let payload = serde_json::to_string(&m).unwrap();
        for value in never {
            assert!(
                !payload.contains(value),
                "{provider} payload contains {value}: {payload}"
            );
        }
    }
}

#[test]
fn each_recipient_gets_its_own_pseudonym_and_the_receipt_its_key_version() {
    let datasets = shipped();
    let bundle = read_json(&fixture("referral-new.json"));
    let b = minimise(&datasets, "bchft", &bundle).unwrap();
    let p = minimise(&datasets, "prospects", &bundle).unwrap();
    let (bp, pp) = (&b.data["patient_pseudonym"], &p.data["patient_pseudonym"]);
    assert_ne!(bp, pp);
    assert!(keys("bchft").verify("9990000018", bp.as_str().unwrap()));
    assert!(!keys("prospects").verify("9990000018", bp.as_str().unwrap()));
    assert_eq!(b.receipt.key_version.as_deref(), Some("v1"));
}

#[test]
fn a_missing_required_source_names_the_field_not_the_data() {
    let datasets = shipped();
    let mut bundle = read_json(&fixture("referral-new.json"));
    for entry in bundle["entry"].as_array_mut().unwrap() {
        if entry["resource"]["resourceType"] == "Consent" {
            entry["resource"]
                .as_object_mut()
                .unwrap()
                .remove("dateTime");
        }
    }
    for provider in PROVIDERS {
        let err = minimise(&datasets, provider, &bundle).unwrap_err();
        assert!(
            matches!(&err, MapError::Missing { field, path, .. }
                if field == "consent_date" && path == "Consent.dateTime"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("`consent_date`"), "{message}");
        assert!(!message.contains("2026"), "{message}");
    }
}

// ---- `mappings check`: broken folders ----

/// A copy of the shipped mappings folder to break.
struct Folder(tempfile::TempDir);

impl Folder {
    fn shipped() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let src = mappings_dir();
        std::fs::copy(src.join("routing.toml"), dir.path().join("routing.toml")).unwrap();
        for sub in ["datasets", "tables"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(src.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.path().join(file)
    }

    /// Replaces the one occurrence of `from` in `file` and returns the 1-based line
    /// where `marker` then is.
    fn edit(&self, file: &str, from: &str, to: &str, marker: &str) -> usize {
        let text = std::fs::read_to_string(self.path(file)).unwrap();
        assert_eq!(text.matches(from).count(), 1, "{from:?} in {file}");
        let text = text.replacen(from, to, 1);
        std::fs::write(self.path(file), &text).unwrap();
        line_of(&text, marker)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).unwrap();
    }

    fn errors(&self) -> Vec<MappingError> {
        let routing = Routing::load(self.0.path()).unwrap();
        match Datasets::load(self.0.path(), &routing) {
            Ok(_) => panic!("the broken folder loaded"),
            Err(errors) => errors,
        }
    }
}

fn line_of(text: &str, marker: &str) -> usize {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not found"));
    text[..at].matches('\n').count() + 1
}

fn report(errors: &[MappingError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Exactly one error, in `file` at `line`, saying `message`; its text starts `file:line:`.
fn assert_one(errors: &[MappingError], folder: &Folder, file: &str, line: usize, message: &str) {
    assert_eq!(errors.len(), 1, "{}", report(errors));
    let e = &errors[0];
    let path = folder.path(file).display().to_string();
    assert_eq!(e.file, path, "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.message.contains(message), "{e}");
    assert!(
        e.to_string().starts_with(&format!("{path}:{line}: ")),
        "{e}"
    );
}

/// Among `errors`, the one for the file ending `file_end` is at `line`, saying `message`.
fn assert_has(errors: &[MappingError], file_end: &str, line: usize, message: &str) {
    let e = errors
        .iter()
        .find(|e| e.file.ends_with(file_end))
        .unwrap_or_else(|| panic!("no error for {file_end}: {}", report(errors)));
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.message.contains(message), "{e}");
}

const BCHFT: &str = "datasets/bchft.toml";

#[test]
fn the_shipped_mappings_pass_the_check() {
    let datasets = shipped();
    for provider in PROVIDERS {
        let d = datasets
            .for_provider(&ProviderId::parse(provider).unwrap())
            .unwrap();
        assert_eq!(d.id(), format!("{provider}-intake"));
        assert!(!d.version().is_empty());
    }
    assert_eq!(datasets.iter().count(), 2);
}

#[test]
fn toml_syntax_errors_name_file_and_line() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "name = \"programme\"",
        "name = \"programme",
        "name = \"programme",
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 1, "{}", report(&errors));
    assert_eq!(errors[0].file, f.path(BCHFT).display().to_string());
    assert_eq!(errors[0].line, Some(line), "{}", errors[0]);
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "source = \"Patient.name.family\"",
        "sourse = \"Patient.name.family\"",
        "sourse",
    );
    assert_one(&f.errors(), &f, BCHFT, line, "sourse");
}

#[test]
fn a_field_without_required_is_refused_at_its_table() {
    let f = Folder::shipped();
    let line = f.edit(
        "datasets/prospects.toml",
        "transform = \"copy\"\nrequired = true\n\n[[fields]]\nname = \"contact\"",
        "transform = \"copy\"\n\n[[fields]]\nname = \"contact\"",
        "[[fields]]\nname = \"family_name\"",
    );
    assert_one(
        &f.errors(),
        &f,
        "datasets/prospects.toml",
        line,
        "missing field `required`",
    );
}

#[test]
fn unknown_transforms_are_refused_naming_the_known_ones() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "transform = \"postcode_district\"",
        "transform = \"postcode\"",
        "transform = \"postcode\"",
    );
    assert_one(
        &f.errors(),
        &f,
        BCHFT,
        line,
        "unknown transform `postcode`; known: copy, pseudonym",
    );
}

#[test]
fn bad_path_syntax_and_unknown_roots_are_refused() {
    let f = Folder::shipped();
    let syntax = f.edit(
        BCHFT,
        "\"Patient.name.given\"",
        "\"Patient.name[0.given\"",
        "Patient.name[0.given",
    );
    let root = f.edit(
        "datasets/prospects.toml",
        "\"ServiceRequest.authoredOn\"",
        "\"Referral.authoredOn\"",
        "Referral.authoredOn",
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 2, "{}", report(&errors));
    assert_has(&errors, "bchft.toml", syntax, "never closed");
    assert_has(&errors, "prospects.toml", root, "unknown root `Referral`");
}

#[test]
fn a_path_in_first_of_sources_is_checked_too() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "\"Practitioner.name.text\"",
        "\"Practitioner..name\"",
        "Practitioner..name",
    );
    assert_one(&f.errors(), &f, BCHFT, line, "empty element");
}

#[test]
fn category_needs_a_table_that_exists() {
    let f = Folder::shipped();
    let missing = f.edit(
        BCHFT,
        "transform = \"category\"\ntable = \"employment-status\"\n",
        "transform = \"category\"\n",
        "transform = \"category\"",
    );
    let unknown = f.edit(
        "datasets/prospects.toml",
        "table = \"condition-categories\"",
        "table = \"conditions\"",
        "table = \"conditions\"",
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 2, "{}", report(&errors));
    assert_has(&errors, "bchft.toml", missing, "needs `table");
    assert_has(
        &errors,
        "prospects.toml",
        unknown,
        "no code table `conditions`",
    );
}

#[test]
fn a_table_removed_from_disk_breaks_every_dataset_using_it() {
    let f = Folder::shipped();
    std::fs::remove_file(f.path("tables/employment-status.toml")).unwrap();
    let errors = f.errors();
    assert_eq!(errors.len(), 2, "{}", report(&errors));
    assert!(
        errors
            .iter()
            .all(|e| e.message.contains("no code table `employment-status`"))
    );
}

#[test]
fn constant_needs_a_value_and_first_of_needs_sources() {
    let f = Folder::shipped();
    let constant = f.edit(
        BCHFT,
        "transform = \"constant\"\nvalue = \"thrive-into-work\"\n",
        "transform = \"constant\"\n",
        "transform = \"constant\"",
    );
    assert_one(&f.errors(), &f, BCHFT, constant, "needs `value");

    let f = Folder::shipped();
    let first_of = f.edit(
        "datasets/prospects.toml",
        "sources = [\"Patient.telecom[system=phone].value\", \"Patient.telecom[system=email].value\"]\n",
        "",
        "name = \"contact\"",
    ) + 1;
    assert_one(
        &f.errors(),
        &f,
        "datasets/prospects.toml",
        first_of,
        "needs `sources",
    );
}

#[test]
fn duplicate_field_names_are_refused_at_the_second() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "name = \"email\"",
        "name = \"phone\"",
        "name = \"phone\"\nsource = \"Patient.telecom[system=email]",
    );
    assert_one(&f.errors(), &f, BCHFT, line, "field `phone` is named twice");
}

#[test]
fn fields_that_would_disclose_notes_or_raw_identifiers_are_refused() {
    let f = Folder::shipped();
    let line = f.edit(
        BCHFT,
        "source = \"Practice.name\"",
        "source = \"ServiceRequest.note.text\"",
        "ServiceRequest.note",
    );
    assert_one(
        &f.errors(),
        &f,
        BCHFT,
        line,
        "free-text notes are never disclosed",
    );
}

#[test]
fn a_dataset_for_a_provider_routing_does_not_know_is_refused() {
    let f = Folder::shipped();
    let text = std::fs::read_to_string(f.path(BCHFT))
        .unwrap()
        .replace("provider = \"bchft\"", "provider = \"nobody\"");
    f.write("datasets/nobody.toml", &text);
    let line = line_of(&text, "provider = ");
    assert_one(
        &f.errors(),
        &f,
        "datasets/nobody.toml",
        line,
        "provider `nobody` is not in routing.toml",
    );
}

#[test]
fn a_routed_provider_without_a_dataset_is_reported_at_its_routing_entry() {
    let f = Folder::shipped();
    std::fs::remove_file(f.path("datasets/prospects.toml")).unwrap();
    let routing = std::fs::read_to_string(f.path("routing.toml")).unwrap();
    let line = line_of(&routing, "[providers.prospects]");
    assert_one(
        &f.errors(),
        &f,
        "routing.toml",
        line,
        "provider `prospects` has no dataset",
    );
}

#[test]
fn two_datasets_for_one_provider_are_refused() {
    let f = Folder::shipped();
    let text = std::fs::read_to_string(f.path(BCHFT)).unwrap();
    f.write("datasets/bchft-copy.toml", &text);
    let line = line_of(&text, "provider = ");
    // Files are read in name order: `bchft-copy.toml` comes before `bchft.toml`.
    assert_one(&f.errors(), &f, BCHFT, line, "already has a dataset in");
}

#[test]
fn broken_tables_are_reported_with_their_file_and_line() {
    let f = Folder::shipped();
    let line = f.edit(
        "tables/employment-status.toml",
        "default = \"unknown\"",
        "fallback = \"unknown\"",
        "fallback",
    );
    let errors = f.errors();
    // The broken table, then each dataset that uses it.
    assert_eq!(errors.len(), 3, "{}", report(&errors));
    let table = &errors[0];
    assert_eq!(
        table.file,
        f.path("tables/employment-status.toml")
            .display()
            .to_string()
    );
    assert_eq!(table.line, Some(line), "{table}");
    assert!(table.message.contains("fallback"), "{table}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let f = Folder::shipped();
    f.edit(
        BCHFT,
        "\"ServiceRequest.authoredOn\"\ntransform = \"date\"",
        "\"ServiceRequest.authoredOn\"\ntransform = \"day\"",
        "\"day\"",
    );
    f.edit(BCHFT, "name = \"email\"", "name = \"Email\"", "Email");
    f.edit(
        "datasets/prospects.toml",
        "\"Patient.name.given\"",
        "\"Patient.name.given[]\"",
        "given[]",
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 3, "{}", report(&errors));
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.file.ends_with("bchft.toml"))
            .count(),
        2
    );
    assert!(errors.iter().all(|e| e.line.is_some()));
}
