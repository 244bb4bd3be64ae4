//! The bundle pass: shape of the message Bundle, each resource (entries and contained
//! ones) read into its R4 model, duplicate entries, and the index that resolves
//! references as FHIR resolves them in a bundle ([`crate::fhir::bundle`]).

use crate::domain::{ODS_SYSTEM, OdsCode};
use crate::fhir::bundle::{BundleIndex, Node};
use crate::fhir::types::{self, Kind};
use crate::outcome::{Issue, IssueType, Rejection};
use fhir_sdk::r4b::resources::{Consent, MessageHeader, Organization, Patient, ServiceRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// A resource read into its model. Types the pipeline does not read fields of are
/// checked against their model and then kept as `Other`.
pub(super) enum Typed {
    MessageHeader(Box<MessageHeader>),
    ServiceRequest(Box<ServiceRequest>),
    Patient(Box<Patient>),
    Organization(Box<Organization>),
    Consent(Box<Consent>),
    Other,
    /// Did not conform to its model; already reported.
    Invalid,
}

/// A message Bundle whose resources have been read and indexed.
pub struct ParsedBundle<'a> {
    pub bundle_id: String,
    pub index: BundleIndex<'a>,
    typed: Vec<Typed>,
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

/// `(system, value)` identifiers of a resource, ODS systems canonical.
pub fn identifiers(resource: &Value) -> Vec<(String, String)> {
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

impl<'a> ParsedBundle<'a> {
    pub fn parse(value: &'a Value) -> Result<Self, Rejection> {
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

        let mut path = "Bundle".to_owned();
        check_primitives(value, "", &mut path, &mut issues);
        let index = BundleIndex::new(value);
        let mut seen_urls = HashSet::new();
        for (i, raw) in raw_entries.iter().enumerate() {
            let at = format!("Bundle.entry[{i}]");
            if !raw.get("resource").is_some_and(Value::is_object) {
                issues.push(Issue::structure(
                    IssueType::Required,
                    format!("{at}.resource"),
                    "each entry needs a resource",
                ));
            }
            match raw.get("fullUrl") {
                // bdl-7: fullUrl is unique in a bundle.
                Some(Value::String(url)) if !url.is_empty() && !seen_urls.insert(url.as_str()) => {
                    issues.push(Issue::structure(
                        IssueType::Duplicate,
                        format!("{at}.fullUrl"),
                        "two entries have the same fullUrl",
                    ));
                }
                Some(Value::String(url)) if !url.is_empty() => {}
                None => {}
                Some(_) => issues.push(Issue::structure(
                    IssueType::Value,
                    format!("{at}.fullUrl"),
                    "fullUrl must be a non-empty uri",
                )),
            }
        }
        let typed = index
            .nodes()
            .map(|n| {
                if raw_entries
                    .get(n.0)
                    .is_some_and(|raw| !raw.get("resource").is_some_and(Value::is_object))
                {
                    return Typed::Invalid;
                }
                read_typed(index.resource(n), &index.path(n), &mut issues)
            })
            .collect();
        // Only the resource type matters here: a MessageHeader that fails its model
        // was reported where it fails.
        if raw_entries
            .first()
            .and_then(|raw| raw.get("resource"))
            .is_some_and(Value::is_object)
            && index.resource_type(Node(0)) != "MessageHeader"
        {
            issues.push(Issue::structure(
                IssueType::Structure,
                "Bundle.entry[0].resource",
                "the first entry of a message Bundle must be a MessageHeader",
            ));
        }
        Ok(Self {
            bundle_id,
            index,
            typed,
            issues,
        })
    }

    /// The resource a literal reference made in `from` points at.
    pub fn resolve(&self, from: Node, reference: &str) -> Option<Node> {
        self.index.resolve(from, reference)
    }

    pub fn resource_type(&self, n: Node) -> &str {
        self.index.resource_type(n)
    }

    pub(super) fn typed(&self, n: Node) -> &Typed {
        static INVALID: Typed = Typed::Invalid;
        self.typed.get(n.0).unwrap_or(&INVALID)
    }

    /// The FHIRPath of an element of a resource; `rest` empty for the resource.
    pub fn path(&self, n: Node, rest: &str) -> String {
        let base = self.index.path(n);
        if rest.is_empty() {
            base
        } else {
            format!("{base}.{rest}")
        }
    }

    /// `(system, value)` identifiers of a resource, ODS systems canonical.
    pub fn identifiers_of(&self, n: Node) -> Vec<(String, String)> {
        identifiers(self.index.resource(n))
    }

    pub(super) fn consents(&self) -> impl Iterator<Item = (Node, &Consent)> {
        self.typed.iter().enumerate().filter_map(|(i, t)| match t {
            Typed::Consent(c) => Some((Node(i), c.as_ref())),
            _ => None,
        })
    }

    /// Entries of types the gateway does not read, by type: named in the audit
    /// record, never stored or forwarded.
    pub fn ignored(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for n in (0..self.index.entries()).map(Node) {
            let rt = self.index.resource_type(n);
            if !rt.is_empty() && !types::is_used(rt) {
                let count = out.entry(rt.to_owned()).or_insert(0_usize);
                *count = count.saturating_add(1);
            }
        }
        out
    }
}

/// Longest `code`, `system` or identifier `value` accepted: far beyond any NHS code or
/// identifier, short enough that no one fills memory or the audit trail with one.
pub const MAX_CODE_CHARS: usize = 1_024;

/// Stands for a resource's own `id` key in [`check_primitives`].
const RESOURCE_ID: &str = "resource id";

/// Checks the primitives the models read without complaint, wherever they are:
/// date-time offsets within ±14:00 (R4's pattern), resource `id`s as FHIR ids
/// (`[A-Za-z0-9.-]{1,64}`), and `code`, `system` and `value` strings within
/// [`MAX_CODE_CHARS`].
fn check_primitives(value: &Value, key: &str, path: &mut String, issues: &mut Vec<Issue>) {
    match value {
        Value::String(s) => {
            let problem = if !crate::fhir::offset_in_range(s) {
                Some("a date-time's offset must be Z or between -14:00 and +14:00")
            } else if key == RESOURCE_ID
                && !(s.len() <= 64
                    && !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
            {
                Some("a resource id is 1 to 64 letters, digits, `-` and `.`")
            } else if matches!(key, "code" | "system" | "value")
                && s.chars().count() > MAX_CODE_CHARS
            {
                Some("this code, system or identifier value is longer than the gateway accepts")
            } else {
                None
            };
            if let Some(what) = problem {
                issues.push(Issue::structure(IssueType::Value, path.clone(), what));
            }
        }
        Value::Object(map) => {
            // A resource's own `id` is of FHIR type id; an element's is a string.
            let resource = map.contains_key("resourceType");
            for (k, v) in map {
                let len = path.len();
                path.push('.');
                // Keys are the sender's text until the models have read them.
                path.push_str(crate::fhir::json::element(k));
                let key = if resource && k == "id" {
                    RESOURCE_ID
                } else {
                    k
                };
                check_primitives(v, key, path, issues);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (n, v) in items.iter().enumerate() {
                let len = path.len();
                // Written in place: no allocation for each element.
                let _ = write!(path, "[{n}]");
                check_primitives(v, key, path, issues);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The message as the gateway keeps it: the entries of the types it reads, in order.
pub fn without_ignored(mut bundle: Value) -> Value {
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|e| {
            e.get("resource")
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
                .is_some_and(types::is_used)
        });
    }
    bundle
}

fn read<T: DeserializeOwned>(
    resource: &Value,
    at: &str,
    issues: &mut Vec<Issue>,
) -> Option<Box<T>> {
    // A container is read without its contained resources; each of those is read on
    // its own, so a problem in one is reported once, at its own path.
    let stripped;
    let resource = match resource.get("contained") {
        Some(_) => {
            let mut r = resource.clone();
            if let Some(o) = r.as_object_mut() {
                o.remove("contained");
            }
            stripped = r;
            &stripped
        }
        None => resource,
    };
    // Most resources conform: read them plainly, and only on an error read again with
    // the path tracked (which allocates at every key) to say where.
    if let Ok(t) = T::deserialize(resource) {
        return Some(Box::new(t));
    }
    match serde_path_to_error::deserialize::<_, T>(resource) {
        Ok(t) => Some(Box::new(t)),
        Err(e) => {
            let inner = e.path().to_string();
            let expression = if inner.is_empty() || inner == "." {
                at.to_owned()
            } else {
                format!("{at}.{inner}")
            };
            let (code, what) = describe(&e.into_inner().to_string());
            issues.push(Issue::structure(code, expression, what));
            None
        }
    }
}

/// Checks a resource of a type the pipeline does not read against its model.
macro_rules! check_other {
    ($rt:expr, $resource:expr, $at:expr, $issues:expr; $($t:ident),* $(,)?) => {
        match $rt {
            $(stringify!($t) => read::<fhir_sdk::r4b::resources::$t>($resource, $at, $issues).map(|_| Typed::Other),)*
            _ => Some(Typed::Other),
        }
    };
}

fn read_typed(resource: &Value, at: &str, issues: &mut Vec<Issue>) -> Typed {
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let typed = match rt {
        "MessageHeader" => read(resource, at, issues).map(Typed::MessageHeader),
        "ServiceRequest" => read(resource, at, issues).map(Typed::ServiceRequest),
        "Patient" => read(resource, at, issues).map(Typed::Patient),
        "Organization" => read(resource, at, issues).map(Typed::Organization),
        "Consent" => read(resource, at, issues).map(Typed::Consent),
        "" => {
            issues.push(Issue::structure(
                IssueType::Required,
                format!("{at}.resourceType"),
                "each resource needs a resourceType",
            ));
            None
        }
        _ => match types::kind(rt) {
            Kind::Modelled => check_other!(rt, resource, at, issues;
            Account,
            ActivityDefinition,
            AdverseEvent,
            AllergyIntolerance,
            Appointment,
            AppointmentResponse,
            AuditEvent,
            Basic,
            Binary,
            BiologicallyDerivedProduct,
            BodyStructure,
            Bundle,
            CapabilityStatement,
            CarePlan,
            CareTeam,
            CatalogEntry,
            ChargeItem,
            ChargeItemDefinition,
            Claim,
            ClaimResponse,
            ClinicalImpression,
            CodeSystem,
            Communication,
            CommunicationRequest,
            CompartmentDefinition,
            Composition,
            ConceptMap,
            Condition,
            Contract,
            Coverage,
            CoverageEligibilityRequest,
            CoverageEligibilityResponse,
            DetectedIssue,
            Device,
            DeviceDefinition,
            DeviceMetric,
            DeviceRequest,
            DeviceUseStatement,
            DiagnosticReport,
            DocumentManifest,
            DocumentReference,
            Encounter,
            Endpoint,
            EnrollmentRequest,
            EnrollmentResponse,
            EpisodeOfCare,
            EventDefinition,
            ExampleScenario,
            ExplanationOfBenefit,
            FamilyMemberHistory,
            Flag,
            Goal,
            GraphDefinition,
            Group,
            GuidanceResponse,
            HealthcareService,
            ImagingStudy,
            Immunization,
            ImmunizationEvaluation,
            ImmunizationRecommendation,
            ImplementationGuide,
            InsurancePlan,
            Invoice,
            Library,
            Linkage,
            List,
            Location,
            Measure,
            MeasureReport,
            Media,
            Medication,
            MedicationAdministration,
            MedicationDispense,
            MedicationKnowledge,
            MedicationRequest,
            MedicationStatement,
            MessageDefinition,
            MolecularSequence,
            NamingSystem,
            NutritionOrder,
            Observation,
            ObservationDefinition,
            OperationDefinition,
            OperationOutcome,
            OrganizationAffiliation,
            Parameters,
            PaymentNotice,
            PaymentReconciliation,
            Person,
            PlanDefinition,
            Practitioner,
            PractitionerRole,
            Procedure,
            Provenance,
            Questionnaire,
            QuestionnaireResponse,
            RelatedPerson,
            RequestGroup,
            ResearchDefinition,
            ResearchElementDefinition,
            ResearchStudy,
            ResearchSubject,
            RiskAssessment,
            Schedule,
            SearchParameter,
            Slot,
            Specimen,
            SpecimenDefinition,
            StructureDefinition,
            StructureMap,
            Subscription,
            Substance,
            SupplyDelivery,
            SupplyRequest,
            Task,
            TerminologyCapabilities,
            TestReport,
            TestScript,
            ValueSet,
            VerificationResult,
            VisionPrescription
                ),
            Kind::ShapeOnly => Some(Typed::Other),
            Kind::Unknown => {
                issues.push(Issue::structure(
                    IssueType::NotSupported,
                    format!("{at}.resourceType"),
                    "this is not an R4 resource type",
                ));
                None
            }
        },
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
