//! The bundle pass: shape of the message Bundle, each entry read into its R4 model,
//! duplicate entries, and every literal reference resolved inside the bundle.

use crate::domain::{ODS_SYSTEM, OdsCode};
use crate::outcome::{Issue, IssueType, Rejection};
use fhir_sdk::r4b::resources::{
    Condition, Consent, Flag, MessageHeader, Observation, Organization, Patient, Practitioner,
    PractitionerRole, QuestionnaireResponse, ServiceRequest,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;

/// Resource types the gateway's MessageDefinition allows in a referral message.
pub const ALLOWED_TYPES: [&str; 11] = [
    "MessageHeader",
    "ServiceRequest",
    "Patient",
    "PractitionerRole",
    "Practitioner",
    "Organization",
    "Consent",
    "Condition",
    "QuestionnaireResponse",
    "Flag",
    "Observation",
];

/// Position of an entry in `Bundle.entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryIndex(pub usize);

/// An entry read into its model. Types the pipeline does not read fields of are
/// checked against their model and then kept as `Other`.
pub(super) enum Typed {
    MessageHeader(Box<MessageHeader>),
    ServiceRequest(Box<ServiceRequest>),
    Patient(Box<Patient>),
    PractitionerRole(Box<PractitionerRole>),
    Organization(Box<Organization>),
    Consent(Box<Consent>),
    Other,
    /// Did not conform to its model; already reported.
    Invalid,
}

struct Entry {
    resource_type: String,
    typed: Typed,
    identifiers: Vec<(String, String)>,
}

/// A message Bundle whose entries have been read and indexed.
pub struct ParsedBundle {
    pub bundle_id: String,
    entries: Vec<Entry>,
    by_reference: HashMap<String, usize>,
    /// Problems that do not stop the rest of validation.
    pub issues: Vec<Issue>,
}

fn fatal(expression: &str, code: IssueType, d: &str) -> Rejection {
    Rejection::one(Issue::structure(code, expression, d))
}

/// ODS codes are compared in their canonical system.
pub(super) fn canonical_system(system: &str) -> &str {
    if OdsCode::is_ods_system(system) {
        ODS_SYSTEM
    } else {
        system
    }
}

fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|i| {
                    let system = i.get("system")?.as_str()?;
                    let value = i.get("value")?.as_str()?;
                    Some((canonical_system(system).to_owned(), value.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl ParsedBundle {
    pub fn parse(value: &Value) -> Result<Self, Rejection> {
        let Some(obj) = value.as_object() else {
            return Err(fatal(
                "Bundle",
                IssueType::Structure,
                "the body must be a FHIR resource (a JSON object)",
            ));
        };
        match obj.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => {}
            Some(_) => {
                return Err(fatal(
                    "Bundle.resourceType",
                    IssueType::Structure,
                    "$process-message takes a Bundle of type `message`",
                ));
            }
            None => {
                return Err(fatal(
                    "Bundle.resourceType",
                    IssueType::Required,
                    "the body is not a FHIR resource: resourceType is missing",
                ));
            }
        }
        if obj.get("type").and_then(Value::as_str) != Some("message") {
            return Err(fatal(
                "Bundle.type",
                IssueType::Value,
                "Bundle.type must be `message`",
            ));
        }
        let mut issues = Vec::new();
        let bundle_id = match obj.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                issues.push(Issue::structure(
                    IssueType::Required,
                    "Bundle.id",
                    "Bundle.id is required (it identifies the message in the response)",
                ));
                String::new()
            }
        };
        let raw_entries = match obj.get("entry").and_then(Value::as_array) {
            Some(e) if !e.is_empty() => e,
            _ => {
                return Err(fatal(
                    "Bundle.entry",
                    IssueType::Required,
                    "a message Bundle needs entries, the first a MessageHeader",
                ));
            }
        };

        let mut entries = Vec::with_capacity(raw_entries.len());
        let mut by_reference = HashMap::new();
        for (i, raw) in raw_entries.iter().enumerate() {
            let at = format!("Bundle.entry[{i}]");
            let resource = raw.get("resource").filter(|r| r.is_object());
            let Some(resource) = resource else {
                issues.push(Issue::structure(
                    IssueType::Required,
                    format!("{at}.resource"),
                    "each entry needs a resource",
                ));
                entries.push(Entry {
                    resource_type: String::new(),
                    typed: Typed::Invalid,
                    identifiers: Vec::new(),
                });
                continue;
            };
            let rt = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let typed = read_typed(rt, resource, &at, &mut issues);
            match raw.get("fullUrl") {
                Some(Value::String(url)) if !url.is_empty() => {
                    if by_reference.insert(url.clone(), i).is_some() {
                        issues.push(Issue::structure(
                            IssueType::Duplicate,
                            format!("{at}.fullUrl"),
                            "two entries have the same fullUrl",
                        ));
                    }
                }
                _ => issues.push(Issue::structure(
                    IssueType::Required,
                    format!("{at}.fullUrl"),
                    "each entry needs a fullUrl",
                )),
            }
            if let Some(id) = resource.get("id").and_then(Value::as_str) {
                let key = format!("{rt}/{id}");
                if let Some(prev) = by_reference.insert(key, i)
                    && prev != i
                {
                    issues.push(Issue::structure(
                        IssueType::Duplicate,
                        format!("{at}.resource.id"),
                        "two entries hold the same resource type and id",
                    ));
                }
            }
            entries.push(Entry {
                resource_type: rt.to_owned(),
                typed,
                identifiers: identifiers(resource),
            });
        }
        if !matches!(entries[0].typed, Typed::MessageHeader(_)) {
            issues.push(Issue::structure(
                IssueType::Structure,
                "Bundle.entry[0].resource",
                "the first entry of a message Bundle must be a MessageHeader",
            ));
        }
        let parsed = Self {
            bundle_id,
            entries,
            by_reference,
            issues,
        };
        let mut ref_issues = Vec::new();
        for (i, raw) in raw_entries.iter().enumerate() {
            if let Some(resource) = raw.get("resource") {
                let mut path = format!("Bundle.entry[{i}].resource");
                parsed.check_references(resource, &mut path, &mut ref_issues);
            }
        }
        let mut parsed = parsed;
        parsed.issues.extend(ref_issues);
        Ok(parsed)
    }

    /// Walks a resource and reports every literal reference that points at nothing in
    /// the bundle. Contained references (`#id`) are local and skipped.
    fn check_references(&self, value: &Value, path: &mut String, issues: &mut Vec<Issue>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if k == "reference"
                        && let Value::String(r) = v
                    {
                        if !r.starts_with('#') && self.resolve(r).is_none() {
                            issues.push(Issue::structure(
                                IssueType::NotFound,
                                path.clone(),
                                "this reference does not resolve to an entry in the bundle",
                            ));
                        }
                    } else if k != "contained" {
                        self.check_references(v, path, issues);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (n, v) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{n}]"));
                    self.check_references(v, path, issues);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// The entry a literal reference points at: a `fullUrl`, `Type/id`, or an absolute
    /// URL ending in `Type/id`.
    pub fn resolve(&self, reference: &str) -> Option<EntryIndex> {
        if let Some(i) = self.by_reference.get(reference) {
            return Some(EntryIndex(*i));
        }
        let mut parts = reference.rsplitn(3, '/');
        let id = parts.next()?;
        let rt = parts.next()?;
        self.by_reference
            .get(&format!("{rt}/{id}"))
            .map(|i| EntryIndex(*i))
    }

    pub fn resource_type(&self, idx: EntryIndex) -> &str {
        &self.entries[idx.0].resource_type
    }

    pub(super) fn typed(&self, idx: EntryIndex) -> &Typed {
        &self.entries[idx.0].typed
    }

    /// `(system, value)` identifiers of an entry, ODS systems canonical.
    pub fn identifiers_of(&self, idx: EntryIndex) -> Vec<(String, String)> {
        self.entries[idx.0].identifiers.clone()
    }

    pub(super) fn consents(&self) -> impl Iterator<Item = (EntryIndex, &Consent)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &e.typed {
                Typed::Consent(c) => Some((EntryIndex(i), c.as_ref())),
                _ => None,
            })
    }
}

fn read_typed(rt: &str, resource: &Value, at: &str, issues: &mut Vec<Issue>) -> Typed {
    fn read<T: DeserializeOwned>(
        resource: &Value,
        at: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<Box<T>> {
        match serde_path_to_error::deserialize::<_, T>(resource) {
            Ok(t) => Some(Box::new(t)),
            Err(e) => {
                let inner = e.path().to_string();
                let expression = if inner.is_empty() || inner == "." {
                    format!("{at}.resource")
                } else {
                    format!("{at}.resource.{inner}")
                };
                let (code, what) = describe(&e.into_inner().to_string());
                issues.push(Issue::structure(code, expression, what));
                None
            }
        }
    }
    let typed = match rt {
        "MessageHeader" => read(resource, at, issues).map(Typed::MessageHeader),
        "ServiceRequest" => read(resource, at, issues).map(Typed::ServiceRequest),
        "Patient" => read(resource, at, issues).map(Typed::Patient),
        "PractitionerRole" => read(resource, at, issues).map(Typed::PractitionerRole),
        "Organization" => read(resource, at, issues).map(Typed::Organization),
        "Consent" => read(resource, at, issues).map(Typed::Consent),
        "Practitioner" => read::<Practitioner>(resource, at, issues).map(|_| Typed::Other),
        "Condition" => read::<Condition>(resource, at, issues).map(|_| Typed::Other),
        "QuestionnaireResponse" => {
            read::<QuestionnaireResponse>(resource, at, issues).map(|_| Typed::Other)
        }
        "Flag" => read::<Flag>(resource, at, issues).map(|_| Typed::Other),
        "Observation" => read::<Observation>(resource, at, issues).map(|_| Typed::Other),
        "" => {
            issues.push(Issue::structure(
                IssueType::Required,
                format!("{at}.resource.resourceType"),
                "each resource needs a resourceType",
            ));
            None
        }
        _ => {
            issues.push(Issue::structure(
                IssueType::NotSupported,
                format!("{at}.resource.resourceType"),
                format!(
                    "this resource type is not part of the referral message; allowed: {}",
                    ALLOWED_TYPES.join(", ")
                ),
            ));
            None
        }
    };
    typed.unwrap_or(Typed::Invalid)
}

/// Turns a serde message into the gateway's own words. serde quotes offending values
/// (`invalid type: string "..."`), which could be patient data, so only the shape of
/// the message is kept: field names and expected types, never the value.
fn describe(message: &str) -> (IssueType, String) {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return (
            IssueType::Required,
            format!("required element `{field}` is missing"),
        );
    }
    if message.starts_with("invalid type") {
        let expected = message
            .rsplit_once(", expected ")
            .map(|(_, e)| e.trim_end_matches('.'))
            .unwrap_or("another type");
        return (
            IssueType::Structure,
            format!("wrong JSON type for this element: expected {expected}"),
        );
    }
    if message.starts_with("unknown variant") {
        let expected = message
            .split_once("expected ")
            .map(|(_, e)| e)
            .unwrap_or("a valid code");
        return (
            IssueType::Value,
            format!("not a valid code for this element; expected {expected}"),
        );
    }
    if message.starts_with("invalid length") {
        return (IssueType::Structure, "wrong number of items".into());
    }
    (
        IssueType::Value,
        "this element's value does not conform to its FHIR datatype".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_values() {
        let (_, d) = describe("invalid type: string \"9990000018\", expected a boolean");
        assert!(!d.contains("999"), "{d}");
        assert!(d.contains("a boolean"));
        let (_, d) = describe("invalid value: string \"1973-13-45\", expected a date");
        assert!(!d.contains("1973"), "{d}");
        let (code, d) = describe("missing field `status`");
        assert_eq!(code, IssueType::Required);
        assert!(d.contains("`status`"));
    }
}
