//! Source paths: where in the referral Bundle a dataset field takes its value from.
//!
//! ```text
//! path     = root selector? ("." element selector?)+
//! root     = Patient | ServiceRequest | Consent | Condition | Observation | Flag
//!          | QuestionnaireResponse | Practitioner | PractitionerRole | Organization
//!          | Practice
//! selector = "[" digits "]"                   the Nth item (from 0)
//!          | "[" element ("." element)* "=" value "]"
//!                                             the first item where that element equals
//!                                             value; value runs to the "]" and may hold
//!                                             ":" "/" "." "=" (split on the first "=")
//! element  = letter (letter | digit | "_")*
//! ```
//!
//! A resource root is the first entry of that `resourceType` in the Bundle (or the one
//! its selector picks). `Practice` is the GP practice: the Organization that the
//! ServiceRequest's requester belongs to, found as intake finds it (through a
//! PractitionerRole, or the MessageHeader's sender), with references resolved as FHIR
//! resolves them in a bundle.
//! An array element without a selector stands for its first item. A filter's element
//! path looks through every array on the way, so `[code.coding.code=67875-5]` matches a
//! resource any of whose codings has that code.
//!
//! Examples: `Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value`,
//! `Observation[code.coding.code=67875-5].valueCodeableConcept.coding[0].code`.
//!
//! Paths are parsed once when the mapping loads; applying one cannot fail, it only
//! finds a value or nothing.

use crate::fhir::bundle::{BundleIndex, Node};
use serde_json::Value;
use std::fmt;

/// A parsed source path. Displays as the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePath {
    text: String,
    root: Root,
    root_selector: Option<Selector>,
    steps: Vec<Step>,
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Resource(ResourceType),
    Practice,
}

/// The resource types a path may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Patient,
    ServiceRequest,
    Consent,
    Condition,
    Observation,
    Flag,
    QuestionnaireResponse,
    Practitioner,
    PractitionerRole,
    Organization,
}

impl ResourceType {
    const ALL: [Self; 10] = [
        Self::Patient,
        Self::ServiceRequest,
        Self::Consent,
        Self::Condition,
        Self::Observation,
        Self::Flag,
        Self::QuestionnaireResponse,
        Self::Practitioner,
        Self::PractitionerRole,
        Self::Organization,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "Patient",
            Self::ServiceRequest => "ServiceRequest",
            Self::Consent => "Consent",
            Self::Condition => "Condition",
            Self::Observation => "Observation",
            Self::Flag => "Flag",
            Self::QuestionnaireResponse => "QuestionnaireResponse",
            Self::Practitioner => "Practitioner",
            Self::PractitionerRole => "PractitionerRole",
            Self::Organization => "Organization",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    element: String,
    selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Index(usize),
    Where { key: Vec<String>, value: String },
}

/// Why a path does not parse. Mapping text only, never referral data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source path `{path}`: {reason}")]
pub struct PathError {
    path: String,
    reason: String,
}

impl SourcePath {
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let fail = |reason: String| PathError {
            path: text.to_owned(),
            reason,
        };
        let segments = segments(text).map_err(fail)?;
        let mut segments = segments.into_iter();
        let Some((root_name, root_selector)) = segments.next() else {
            return Err(fail("is empty".to_owned()));
        };
        let root = if root_name == "Practice" {
            if root_selector.is_some() {
                return Err(fail(
                    "`Practice` names one Organization and takes no `[...]`".to_owned(),
                ));
            }
            Root::Practice
        } else {
            match ResourceType::ALL.iter().find(|t| t.as_str() == root_name) {
                Some(t) => Root::Resource(*t),
                None => {
                    let roots: Vec<&str> = ResourceType::ALL.iter().map(|t| t.as_str()).collect();
                    return Err(fail(format!(
                        "unknown root `{root_name}`; a path starts with one of {}, Practice",
                        roots.join(", ")
                    )));
                }
            }
        };
        let steps: Vec<Step> = segments
            .map(|(element, selector)| Step { element, selector })
            .collect();
        if steps.is_empty() {
            return Err(fail(format!(
                "names the whole {root_name}; add the element to take, e.g. `{root_name}.id`"
            )));
        }
        Ok(Self {
            text: text.to_owned(),
            root,
            root_selector,
            steps,
        })
    }

    pub fn root(&self) -> Root {
        self.root
    }

    /// The element names after the root, in order (selectors left out).
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| s.element.as_str())
    }

    /// Values compared by the path's filters, e.g. an identifier system.
    pub fn filter_values(&self) -> impl Iterator<Item = &str> {
        self.root_selector
            .iter()
            .chain(self.steps.iter().filter_map(|s| s.selector.as_ref()))
            .filter_map(|s| match s {
                Selector::Where { value, .. } => Some(value.as_str()),
                Selector::Index(_) => None,
            })
    }

    /// The value this path points at in `bundle`, if there is one. May be an object or
    /// array when the path stops short of a primitive; callers decide what they accept.
    pub fn resolve<'a>(&self, bundle: &'a Value) -> Option<&'a Value> {
        let mut value = match self.root {
            Root::Resource(t) => {
                let mut candidates = resources(bundle).filter(|r| is_type(r, t.as_str()));
                match &self.root_selector {
                    None => candidates.next(),
                    Some(Selector::Index(n)) => candidates.nth(*n),
                    Some(Selector::Where { key, value }) => {
                        candidates.find(|r| any_equals(r, key, value))
                    }
                }
            }
            Root::Practice => practice(bundle),
        }?;
        for step in &self.steps {
            value = pick(value.get(&step.element)?, step.selector.as_ref())?;
        }
        Some(value)
    }
}

impl fmt::Display for SourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits `a[..].b.c[..]` into `(element, selector)` pairs.
fn segments(text: &str) -> Result<Vec<(String, Option<Selector>)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let name = &rest[..end];
        check_element(name, out.len())?;
        rest = &rest[end..];
        let selector = match rest.strip_prefix('[') {
            Some(open) => {
                let close = open
                    .find(']')
                    .ok_or_else(|| format!("`[` after `{name}` is never closed"))?;
                rest = &open[close + 1..];
                Some(selector(&open[..close])?)
            }
            None => None,
        };
        out.push((name.to_owned(), selector));
        if rest.is_empty() {
            return Ok(out);
        }
        match rest.strip_prefix('.') {
            Some("") => return Err("ends with `.`".to_owned()),
            Some(next) => rest = next,
            None => {
                return Err(format!(
                    "expected `.` after `{name}[...]`, found `{}`",
                    rest.chars().next().unwrap_or(' ')
                ));
            }
        }
    }
}

fn check_element(name: &str, position: usize) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (ok, name.is_empty(), position) {
        (true, _, _) => Ok(()),
        (false, true, 0) => Err("is empty or starts with `.` or `[`".to_owned()),
        (false, true, _) => Err("has an empty element (`..` or `.[`)".to_owned()),
        (false, false, _) => Err(format!(
            "`{name}` is not an element name (letters, digits and `_`, starting with a letter)"
        )),
    }
}

fn selector(inner: &str) -> Result<Selector, String> {
    if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
        return inner
            .parse()
            .map(Selector::Index)
            .map_err(|_| format!("index `[{inner}]` is too large"));
    }
    let Some((key, value)) = inner.split_once('=') else {
        return Err(format!(
            "`[{inner}]` is neither an index like `[0]` nor a filter like `[system=value]`"
        ));
    };
    if value.is_empty() {
        return Err(format!("filter `[{inner}]` has no value after `=`"));
    }
    let key: Vec<String> = key.split('.').map(str::to_owned).collect();
    for (i, k) in key.iter().enumerate() {
        check_element(k, i + 1).map_err(|e| format!("filter `[{inner}]`: {e}"))?;
    }
    Ok(Selector::Where {
        key,
        value: value.to_owned(),
    })
}

fn pick<'a>(value: &'a Value, selector: Option<&Selector>) -> Option<&'a Value> {
    match (value, selector) {
        (Value::Array(items), None) => items.first(),
        (Value::Array(items), Some(Selector::Index(n))) => items.get(*n),
        (Value::Array(items), Some(Selector::Where { key, value })) => {
            items.iter().find(|item| any_equals(item, key, value))
        }
        // FHIR JSON has single-valued elements too: treat one as a list of one.
        (single, None | Some(Selector::Index(0))) => Some(single),
        (_, Some(Selector::Index(_))) => None,
        (single, Some(Selector::Where { key, value })) => {
            any_equals(single, key, value).then_some(single)
        }
    }
}

/// True when any value reached by `key` from `value`, through any arrays, equals `want`.
fn any_equals(value: &Value, key: &[String], want: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| any_equals(item, key, want)),
        _ => match key.split_first() {
            None => match value {
                Value::String(s) => s == want,
                Value::Bool(b) => b.to_string() == want,
                Value::Number(n) => n.to_string() == want,
                _ => false,
            },
            Some((first, rest)) => value
                .get(first)
                .is_some_and(|child| any_equals(child, rest, want)),
        },
    }
}

/// Every entry's resource, in Bundle order.
pub fn resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
}

fn is_type(resource: &Value, t: &str) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some(t)
}

/// The first resource of type `t`.
pub fn first_of_type(bundle: &Value, t: ResourceType) -> Option<&Value> {
    resources(bundle).find(|r| is_type(r, t.as_str()))
}

/// The GP practice, found as intake found it ([`BundleIndex::practice_candidates`]):
/// the first candidate Organization with an ODS code, else the first candidate.
fn practice(bundle: &Value) -> Option<&Value> {
    let index = BundleIndex::new(bundle);
    let request = (0..index.entries())
        .map(Node)
        .find(|&n| index.resource_type(n) == "ServiceRequest")?;
    let candidates = index.practice_candidates(request);
    let has_ods = |n: &Node| {
        index.resource(*n)["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["system"].as_str())
            .any(crate::domain::OdsCode::is_ods_system)
    };
    let chosen = candidates
        .iter()
        .find(|n| has_ods(n))
        .or(candidates.first())?;
    Some(index.resource(*chosen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle() -> Value {
        json!({"resourceType": "Bundle", "entry": [
            {"fullUrl": "urn:uuid:sr", "resource": {"resourceType": "ServiceRequest", "id": "sr",
                "requester": {"reference": "PractitionerRole/role"}}},
            {"fullUrl": "urn:uuid:role", "resource": {"resourceType": "PractitionerRole", "id": "role",
                "organization": {"reference": "urn:uuid:org"}}},
            {"fullUrl": "urn:uuid:other", "resource": {"resourceType": "Organization", "id": "other",
                "name": "Not the practice"}},
            {"fullUrl": "urn:uuid:org", "resource": {"resourceType": "Organization", "id": "org",
                "name": "The Surgery",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}]}},
            {"resource": {"resourceType": "Patient", "id": "p",
                "identifier": [
                    {"system": "urn:other", "value": "X1"},
                    {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
                "name": [{"given": ["Ann", "B"], "family": "Example"}],
                "communication": [{"language": {"coding": [{"code": "pl"}]}, "preferred": true}],
                "multipleBirthInteger": 2}},
            {"resource": {"resourceType": "Observation", "code": {"coding": [{"code": "1"}]},
                "valueString": "first"}},
            {"resource": {"resourceType": "Observation", "code": {"coding": [
                {"system": "urn:a", "code": "x"}, {"system": "http://loinc.org", "code": "67875-5"}]},
                "valueString": "employment"}}
        ]})
    }

    fn at(path: &str) -> Option<Value> {
        SourcePath::parse(path).unwrap().resolve(&bundle()).cloned()
    }

    #[test]
    fn resolves_filters_indexes_and_first_items() {
        assert_eq!(
            at("Patient.identifier[system=https://fhir.nhs.uk/Id/nhs-number].value"),
            Some(json!("9990000018"))
        );
        assert_eq!(at("Patient.identifier.value"), Some(json!("X1")));
        assert_eq!(at("Patient.name.given"), Some(json!("Ann")));
        assert_eq!(at("Patient.name[0].given[1]"), Some(json!("B")));
        assert_eq!(at("Patient.name.given[2]"), None);
        assert_eq!(
            at("Patient.communication[preferred=true].language.coding.code"),
            Some(json!("pl"))
        );
        assert_eq!(at("Patient.communication[preferred=false].language"), None);
        assert_eq!(at("Patient.multipleBirthInteger"), Some(json!(2)));
        assert_eq!(at("Patient.identifier[system=urn:none].value"), None);
        assert_eq!(at("Flag.code"), None);
    }

    #[test]
    fn root_filters_look_through_every_array() {
        assert_eq!(at("Observation.valueString"), Some(json!("first")));
        assert_eq!(at("Observation[1].valueString"), Some(json!("employment")));
        assert_eq!(
            at("Observation[code.coding.code=67875-5].valueString"),
            Some(json!("employment"))
        );
        assert_eq!(at("Observation[code.coding.code=nope].valueString"), None);
    }

    #[test]
    fn practice_follows_requester_role_to_its_organization() {
        assert_eq!(at("Practice.name"), Some(json!("The Surgery")));
        assert_eq!(
            at("Practice.identifier[system=https://fhir.nhs.uk/Id/ods-organization-code].value"),
            Some(json!("Y90001"))
        );
        assert_eq!(at("Organization.name"), Some(json!("Not the practice")));

        let direct = json!({"entry": [
            {"fullUrl": "urn:uuid:sr", "resource": {"resourceType": "ServiceRequest",
                "requester": {"reference": "urn:uuid:org"}}},
            {"fullUrl": "urn:uuid:org", "resource": {"resourceType": "Organization", "name": "Direct"}}
        ]});
        let path = SourcePath::parse("Practice.name").unwrap();
        assert_eq!(path.resolve(&direct), Some(&json!("Direct")));

        let practitioner = json!({"entry": [
            {"resource": {"resourceType": "ServiceRequest", "requester": {"reference": "Practitioner/d"}}},
            {"resource": {"resourceType": "Practitioner", "id": "d", "name": [{"family": "X"}]}}
        ]});
        assert_eq!(
            path.resolve(&practitioner),
            None,
            "a Practitioner is not a practice"
        );
        let with_role = json!({"entry": [
            {"resource": {"resourceType": "ServiceRequest", "requester": {"reference": "Practitioner/d"}}},
            {"resource": {"resourceType": "Practitioner", "id": "d"}},
            {"resource": {"resourceType": "PractitionerRole", "id": "r",
                "practitioner": {"reference": "Practitioner/d"},
                "organization": {"reference": "Organization/o"}}},
            {"resource": {"resourceType": "Organization", "id": "o", "name": "Through the role"}}
        ]});
        assert_eq!(
            path.resolve(&with_role),
            Some(&json!("Through the role")),
            "a Practitioner's PractitionerRole in the bundle names the practice"
        );
        assert_eq!(path.resolve(&json!({"resourceType": "Bundle"})), None);
    }

    #[test]
    fn filter_values_may_hold_separators_and_equals_signs() {
        let p = SourcePath::parse("Patient.identifier[system=urn:a.b/c=d].value").unwrap();
        assert_eq!(p.filter_values().collect::<Vec<_>>(), ["urn:a.b/c=d"]);
        assert_eq!(p.elements().collect::<Vec<_>>(), ["identifier", "value"]);
        assert_eq!(
            p.to_string(),
            "Patient.identifier[system=urn:a.b/c=d].value"
        );
        assert_eq!(p.root(), Root::Resource(ResourceType::Patient));
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        let cases = [
            ("", "is empty"),
            ("Patient", "names the whole Patient"),
            ("Pateint.name", "unknown root `Pateint`"),
            ("Encounter.id", "unknown root `Encounter`"),
            ("Practice[0].name", "takes no `[...]`"),
            ("Patient.name.", "ends with `.`"),
            ("Patient..name", "empty element"),
            (".Patient.name", "is empty or starts with"),
            ("Patient.name[0", "never closed"),
            ("Patient.name[]", "neither an index"),
            ("Patient.name[given]", "neither an index"),
            ("Patient.name[use=]", "no value after"),
            ("Patient.name[=x]", "empty"),
            ("Patient.name[0]given", "expected `.` after"),
            ("Patient.name[0][1]", "expected `.` after"),
            ("Patient.na-me", "`na-me` is not an element name"),
            ("Patient.1name", "`1name` is not an element name"),
            ("Patient.name[99999999999999999999999]", "too large"),
        ];
        for (path, expected) in cases {
            let err = SourcePath::parse(path).unwrap_err().to_string();
            assert!(err.contains(expected), "{path:?}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = SourcePath::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_path_like_text(text in "[A-Za-z]{1,8}([.\\[\\]=0-9a-z:/]{0,6}){0,6}") {
            if let Ok(path) = SourcePath::parse(&text) {
                let _ = path.resolve(&bundle());
            }
        }
    }
}
