//! Validation: from a request body to a typed message the rest of the pipeline can
//! trust, or every problem found, each with the FHIRPath of the element at fault.
//!
//! The body is read once as JSON (bounded depth), every entry is read into its
//! `fhir-sdk` R4 model (so FHIR datatypes and required elements are checked by the
//! models), references are resolved inside the bundle, and then the gateway's own
//! MessageDefinition rules are applied. No diagnostic ever quotes a value from the
//! request.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

mod bundle;
mod dates;

pub use bundle::ParsedBundle;
pub use dates::{lower_bound, upper_bound};

use crate::consent::ConsentFacts;
use crate::domain::{NHS_NUMBER_SYSTEM, NhsNumber, NhsNumberError, OdsCode};
use crate::fhir::bundle::Node;
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use crate::routing::Routing;
use bundle::Typed;
use fhir_sdk::r4b::{
    codes::{ConsentState, RequestIntent, RequestStatus},
    resources::MessageHeaderEvent,
    types::{CodeableConcept, Identifier, Reference},
};
use fhir_sdk::time::{Date, OffsetDateTime};
use std::collections::BTreeMap;

pub use crate::fhir::{MESSAGE_EVENTS, MESSAGE_REASONS, SNOMED};

/// What validation needs from outside the request.
pub struct Context<'a> {
    pub now: OffsetDateTime,
    pub minimum_age_years: u8,
    pub routing: &'a Routing,
}

/// Facts every message carries.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `Bundle.id`: echoed as `response.identifier`.
    pub bundle_id: String,
    /// `MessageHeader.id` when sent: a repeat is a duplicate.
    pub message_header_id: Option<String>,
    /// The referring GP practice, canonical ODS code.
    pub practice: OdsCode,
    /// `MessageHeader.source.endpoint`: where asynchronous answers go.
    pub source_endpoint: String,
    /// `(system, value)` of the sender's own ServiceRequest identifiers.
    pub sender_identifiers: Vec<(String, String)>,
    /// The sender's `ServiceRequest.id`, which may be the gateway's referral id.
    pub service_request_id: Option<String>,
    /// Entries of types the gateway does not read, counted by type (for the audit
    /// record; their content is dropped).
    pub ignored: BTreeMap<String, usize>,
}

/// A valid new referral, still holding identified data: only the store and (later)
/// the mapping stage may see it.
#[derive(Debug, Clone)]
pub struct NewReferral {
    pub envelope: Envelope,
    pub nhs_number: NhsNumber,
    /// SNOMED CT code of the referral (selects the programme).
    pub referral_code: String,
    /// Consents about the bundle's Patient, for the consent gate.
    pub consents: Vec<ConsentFacts>,
    /// The whole message as received, for delivery.
    pub bundle: serde_json::Value,
}

/// What a `reason` `update` message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateAction {
    /// `ServiceRequest.status` `revoked` or `entered-in-error`.
    Cancel,
    /// A `Consent` with status `inactive` or `rejected`.
    WithdrawConsent,
}

impl UpdateAction {
    pub fn name(self) -> &'static str {
        match self {
            UpdateAction::Cancel => "cancel",
            UpdateAction::WithdrawConsent => "withdraw-consent",
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub envelope: Envelope,
    pub action: UpdateAction,
    /// Present when the update names the patient, to check it is the same person.
    pub nhs_number: Option<NhsNumber>,
}

#[derive(Debug, Clone)]
pub enum Message {
    New(NewReferral),
    Update(UpdateRequest),
}

impl Message {
    pub fn envelope(&self) -> &Envelope {
        match self {
            Message::New(n) => &n.envelope,
            Message::Update(u) => &u.envelope,
        }
    }
}

/// The outcome of the first pass: the practice is known (so the caller can check the
/// client may refer for it) but the message may still have problems.
pub struct Checked {
    pub practice: Option<OdsCode>,
    pub result: Result<Message, Rejection>,
}

/// Reads the body as JSON, one meaning only: a key given twice is refused with its
/// path. Syntax errors report line and column only.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, Rejection> {
    use crate::fhir::json::{JsonError, parse};
    parse(body, "Bundle").map_err(|e| {
        let issue = match e {
            JsonError::TooDeep => Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                "the JSON is nested too deeply",
            ),
            JsonError::Syntax { line, column } => Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                format!("the body is not valid JSON (line {line}, column {column})"),
            ),
            JsonError::DuplicateKey { path } => Issue::structure(
                IssueType::Structure,
                path,
                "this key is given twice in its object; a FHIR JSON object names each element once",
            ),
        };
        Rejection::one(issue)
    })
}

/// Validates a parsed body against the gateway's MessageDefinition.
pub fn validate(value: serde_json::Value, ctx: &Context<'_>) -> Checked {
    let (practice, result) = {
        let parsed = match ParsedBundle::parse(&value) {
            Ok(p) => p,
            Err(r) => {
                return Checked {
                    practice: None,
                    result: Err(r),
                };
            }
        };
        let ignored = parsed.ignored();
        let mut v = Validator {
            b: &parsed,
            issues: parsed.issues.clone(),
            ctx,
        };
        let focus = v.focus_index();
        let practice = focus.and_then(|sr| v.practice(sr));
        let message = v.message(focus, practice.clone(), ignored);
        let result = match (Rejection::from_issues(v.issues), message) {
            (Some(r), _) => Err(r),
            (None, Some(m)) => Ok(m),
            (None, None) => Err(Rejection::one(Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                "the message could not be read as a referral",
            ))),
        };
        (practice, result)
    };
    let result = result.map(|mut m| {
        if let Message::New(n) = &mut m {
            n.bundle = bundle::without_ignored(value);
        }
        m
    });
    Checked { practice, result }
}

struct Validator<'a> {
    b: &'a ParsedBundle<'a>,
    issues: Vec<Issue>,
    ctx: &'a Context<'a>,
}

/// The MessageHeader is always the first entry.
const HEADER: Node = Node(0);

fn codes_in<'c>(cc: &'c CodeableConcept, system: &'c str) -> impl Iterator<Item = &'c str> + 'c {
    cc.coding
        .iter()
        .flatten()
        .filter(move |c| c.system.as_deref() == Some(system))
        .filter_map(|c| c.code.as_deref())
}

fn identifier_pairs(ids: &[Option<Identifier>]) -> Vec<(String, String)> {
    ids.iter()
        .flatten()
        .filter_map(|i| Some((i.system.clone()?, i.value.clone()?)))
        .collect()
}

impl Validator<'_> {
    fn push(&mut self, issue: Issue) {
        self.issues.push(issue);
    }

    fn path(&self, n: Node, rest: &str) -> String {
        self.b.path(n, rest)
    }

    /// Resolves a reference the gateway needs, made in `from`: reports it at `at` when
    /// it is absent, resolves to nothing in the bundle, or points elsewhere than one of
    /// `types`.
    fn resolve(
        &mut self,
        from: Node,
        reference: Option<&Reference>,
        at: String,
        types: &[&str],
        what: &str,
    ) -> Option<Node> {
        let Some(r) = reference.and_then(|r| r.reference.as_deref()) else {
            self.push(Issue::structure(
                IssueType::Required,
                at,
                format!("{what} is required as a reference to a resource in the bundle"),
            ));
            return None;
        };
        let Some(target) = self.b.resolve(from, r) else {
            self.push(Issue::structure(
                IssueType::NotFound,
                format!("{at}.reference"),
                format!("{what} does not resolve to a resource in the bundle"),
            ));
            return None;
        };
        let rt = self.b.resource_type(target);
        if types.contains(&rt) {
            Some(target)
        } else {
            // Only a known type is named back: the field is the sender's text.
            let found = match crate::fhir::types::kind(rt) {
                crate::fhir::types::Kind::Unknown => "a resource of no R4 type".to_owned(),
                _ => format!("a {rt}"),
            };
            self.push(Issue::structure(
                IssueType::Invalid,
                format!("{at}.reference"),
                format!(
                    "{what} must reference a {}, not {found}",
                    types.join(" or ")
                ),
            ));
            None
        }
    }

    /// The referring practice, from the first of these that gives an ODS code:
    /// requester PractitionerRole.organization; for a Practitioner requester, a
    /// PractitionerRole in the bundle for them; an Organization requester; and only
    /// then MessageHeader.sender.
    fn practice(&mut self, sr: Node) -> Option<OdsCode> {
        let Typed::ServiceRequest(request) = self.b.typed(sr) else {
            return None;
        };
        let at = self.path(sr, "requester");
        self.resolve(
            sr,
            request.requester.as_ref(),
            at.clone(),
            &["PractitionerRole", "Practitioner", "Organization"],
            "ServiceRequest.requester",
        )?;
        for org in self.b.index.practice_candidates(sr) {
            let Typed::Organization(o) = self.b.typed(org) else {
                continue;
            };
            let found = o.identifier.iter().enumerate().find_map(|(k, i)| {
                let i = i.as_ref()?;
                OdsCode::is_ods_system(i.system.as_deref()?).then_some((k, i.value.as_deref()))
            });
            match found {
                Some((k, Some(v))) => match OdsCode::parse(v) {
                    Ok(code) => return Some(code),
                    Err(e) => {
                        let at = self.path(org, &format!("identifier[{k}].value"));
                        self.push(Issue::structure(IssueType::Value, at, e.to_string()));
                        return None;
                    }
                },
                _ => continue,
            }
        }
        // Reported on the practice Organization the requester leads to, if any.
        let at = match self.b.index.practice_candidates(sr).first() {
            Some(&org) => self.path(org, "identifier"),
            None => at,
        };
        self.push(Issue::structure(
            IssueType::Required,
            at,
            "the GP practice Organization needs an ODS code identifier (https://fhir.nhs.uk/Id/ods-organization-code); it is looked for on the requester's Organization (through its PractitionerRole), then on MessageHeader.sender",
        ));
        None
    }

    /// The ServiceRequest in `MessageHeader.focus`.
    fn focus_index(&mut self) -> Option<Node> {
        let Typed::MessageHeader(h) = self.b.typed(HEADER) else {
            return None;
        };
        let focus: Vec<&Reference> = h.focus.iter().flatten().collect();
        if focus.len() != 1 {
            let at = self.path(HEADER, "focus");
            self.push(Issue::structure(
                IssueType::Required,
                at,
                "MessageHeader.focus must hold exactly one reference, to the ServiceRequest",
            ));
            return None;
        }
        let at = self.path(HEADER, "focus[0]");
        self.resolve(
            HEADER,
            focus.first().copied(),
            at,
            &["ServiceRequest"],
            "MessageHeader.focus",
        )
    }

    fn message(
        &mut self,
        sr_idx: Option<Node>,
        practice: Option<OdsCode>,
        ignored: BTreeMap<String, usize>,
    ) -> Option<Message> {
        let Typed::MessageHeader(h) = self.b.typed(HEADER) else {
            // The bundle pass reported the missing or invalid MessageHeader.
            return None;
        };
        let header_id = h.id.clone().filter(|id| !id.is_empty());
        let source_endpoint = h.source.endpoint.clone();
        match &h.event {
            MessageHeaderEvent::Coding(c)
                if c.system.as_deref() == Some(MESSAGE_EVENTS)
                    && c.code.as_deref() == Some("servicerequest-request") => {}
            _ => {
                let at = self.path(HEADER, "eventCoding");
                self.push(Issue::structure(
                IssueType::Value,
                at,
                "MessageHeader.eventCoding must be https://fhir.nhs.uk/CodeSystem/message-events-bars|servicerequest-request",
            ))
            }
        }
        let reason = h
            .reason
            .as_ref()
            .and_then(|r| codes_in(r, MESSAGE_REASONS).next().map(str::to_owned));
        let reason = match reason.as_deref() {
            Some("new") => Some(true),
            Some("update") => Some(false),
            Some(_) => {
                let at = self.path(HEADER, "reason");
                self.push(Issue::business(
                    IssueType::NotSupported,
                    at,
                    "MessageHeader.reason: the gateway accepts `new` and `update` messages only",
                ));
                None
            }
            None => {
                let at = self.path(HEADER, "reason");
                self.push(Issue::structure(
                    IssueType::Required,
                    at,
                    "MessageHeader.reason needs a https://fhir.nhs.uk/CodeSystem/message-reason-bars code (new or update)",
                ));
                None
            }
        };

        let (Some(sr_idx), Some(practice), Some(is_new)) = (sr_idx, practice, reason) else {
            return None;
        };
        let Typed::ServiceRequest(sr) = self.b.typed(sr_idx) else {
            return None;
        };
        let envelope = Envelope {
            bundle_id: self.b.bundle_id.clone(),
            message_header_id: header_id,
            practice,
            source_endpoint,
            sender_identifiers: identifier_pairs(&sr.identifier),
            service_request_id: sr.id.clone(),
            ignored,
        };

        let at = self.path(sr_idx, "subject");
        let patient = self.resolve(
            sr_idx,
            Some(&sr.subject),
            at,
            &["Patient"],
            "ServiceRequest.subject",
        );
        let nhs_number = patient.and_then(|p| self.nhs_number(p));

        if is_new {
            if sr.status != RequestStatus::Active {
                let at = self.path(sr_idx, "status");
                self.push(Issue::business(
                    IssueType::Value,
                    at,
                    "a new referral's ServiceRequest.status must be `active`",
                ));
            }
            if !matches!(sr.intent, RequestIntent::Plan | RequestIntent::Order) {
                let at = self.path(sr_idx, "intent");
                self.push(Issue::business(
                    IssueType::Value,
                    at,
                    "ServiceRequest.intent must be `plan` or `order`",
                ));
            }
            let referral_code = self.referral_code(sr_idx, sr.code.as_ref());
            let referral_date = sr
                .authored_on
                .as_ref()
                .map(|d| dates::lower_bound(d).date())
                .unwrap_or(self.ctx.now.date());
            if let Some(p) = patient {
                self.age(p, referral_date);
            }
            let consents = match patient {
                Some(p) => self.consents(p),
                None => Vec::new(),
            };
            Some(Message::New(NewReferral {
                envelope,
                nhs_number: nhs_number?,
                referral_code: referral_code?,
                consents,
                bundle: serde_json::Value::Null,
            }))
        } else {
            let cancel = matches!(
                sr.status,
                RequestStatus::Revoked | RequestStatus::EnteredInError
            );
            let withdraw = self
                .b
                .consents()
                .any(|(_, c)| matches!(c.status, ConsentState::Inactive | ConsentState::Rejected));
            let action = if cancel {
                UpdateAction::Cancel
            } else if withdraw {
                UpdateAction::WithdrawConsent
            } else {
                let at = self.path(sr_idx, "status");
                self.push(Issue::business(
                    IssueType::NotSupported,
                    at,
                    "an update must cancel the referral (ServiceRequest.status `revoked` or `entered-in-error`) or withdraw consent (a Consent with status `inactive` or `rejected`)",
                ));
                return None;
            };
            if let Some(p) = patient {
                // Only for the references each Consent must resolve.
                let _ = self.consents(p);
            }
            Some(Message::Update(UpdateRequest {
                envelope,
                action,
                nhs_number,
            }))
        }
    }

    fn nhs_number(&mut self, patient: Node) -> Option<NhsNumber> {
        let Typed::Patient(p) = self.b.typed(patient) else {
            return None;
        };
        let found = p.identifier.iter().enumerate().find_map(|(k, i)| {
            let i = i.as_ref()?;
            (i.system.as_deref() == Some(NHS_NUMBER_SYSTEM)).then_some((k, i.value.as_deref()))
        });
        match found {
            Some((k, Some(v))) => match NhsNumber::parse(v) {
                Ok(n) => Some(n),
                Err(e) => {
                    let code = match e {
                        NhsNumberError::NotTenDigits => IssueType::Value,
                        NhsNumberError::CheckDigit | NhsNumberError::AllSameDigit => {
                            IssueType::BusinessRule
                        }
                    };
                    self.push(Issue::business(
                        code,
                        self.path(patient, &format!("identifier[{k}].value")),
                        e.to_string(),
                    ));
                    None
                }
            },
            _ => {
                self.push(Issue::structure(
                    IssueType::Required,
                    self.path(patient, "identifier"),
                    "the Patient needs an NHS number identifier (https://fhir.nhs.uk/Id/nhs-number)",
                ));
                None
            }
        }
    }

    fn referral_code(&mut self, sr: Node, code: Option<&CodeableConcept>) -> Option<String> {
        let Some(code) = code else {
            self.push(Issue::structure(
                IssueType::Required,
                self.path(sr, "code"),
                "ServiceRequest.code is required: a SNOMED CT employment support referral code",
            ));
            return None;
        };
        let found = codes_in(code, SNOMED).find(|c| self.ctx.routing.is_referral_code(c));
        if found.is_none() {
            self.push(Issue::business(
                IssueType::Value,
                self.path(sr, "code"),
                "ServiceRequest.code is not an employment support referral code the gateway accepts (see MessageDefinition)",
            ));
        }
        found.map(str::to_owned)
    }

    fn age(&mut self, patient: Node, on: Date) {
        let Typed::Patient(p) = self.b.typed(patient) else {
            return;
        };
        let Some(birth) = p.birth_date.as_ref() else {
            self.push(Issue::structure(
                IssueType::Required,
                self.path(patient, "birthDate"),
                "Patient.birthDate is required to check the programme's minimum age",
            ));
            return;
        };
        // The latest possible birthday for partial dates, so nobody under age passes.
        let born = dates::latest_day(birth);
        let mut years = on.year().saturating_sub(born.year());
        if (on.month() as u8, on.day()) < (born.month() as u8, born.day()) {
            years = years.saturating_sub(1);
        }
        if born > on {
            self.push(Issue::business(
                IssueType::Value,
                self.path(patient, "birthDate"),
                "Patient.birthDate is after the referral date",
            ));
        } else if years < i32::from(self.ctx.minimum_age_years) {
            self.push(Issue::business(
                IssueType::BusinessRule,
                self.path(patient, "birthDate"),
                format!(
                    "the patient must be at least {} years old on the referral date",
                    self.ctx.minimum_age_years
                ),
            ));
        }
    }

    fn consents(&mut self, patient: Node) -> Vec<ConsentFacts> {
        let consents: Vec<_> = self.b.consents().collect();
        let mut out = Vec::new();
        for (idx, c) in consents {
            let about_patient = match c.patient.as_ref().and_then(|r| r.reference.as_deref()) {
                Some(r) => match self.b.resolve(idx, r) {
                    Some(target) => target == patient,
                    None => {
                        self.push(Issue::structure(
                            IssueType::NotFound,
                            self.path(idx, "patient.reference"),
                            "Consent.patient does not resolve to a resource in the bundle",
                        ));
                        false
                    }
                },
                None => false,
            };
            let mut actors = Vec::new();
            if let Some(p) = &c.provision {
                for (k, a) in p.actor.iter().enumerate() {
                    let Some(a) = a else { continue };
                    if let Some(i) = &a.reference.identifier {
                        actors.extend(identifier_pairs(std::slice::from_ref(&Some(i.clone()))));
                    }
                    if let Some(r) = a.reference.reference.as_deref() {
                        match self.b.resolve(idx, r) {
                            Some(target) => actors.extend(self.b.identifiers_of(target)),
                            // The gate must know who the consent names.
                            None if a.reference.identifier.is_none() => {
                                self.push(Issue::structure(
                                    IssueType::NotFound,
                                    self.path(idx, &format!("provision.actor[{k}].reference.reference")),
                                    "a consent actor must resolve to a resource in the bundle or carry an identifier",
                                ));
                            }
                            None => {}
                        }
                    }
                }
            }
            out.push(ConsentFacts {
                expression: self.path(idx, ""),
                status: c.status,
                about_patient,
                date_time: c.date_time.as_ref().map(dates::lower_bound),
                permit: c.provision.as_ref().and_then(|p| p.r#type)
                    == Some(fhir_sdk::r4b::codes::ConsentProvisionType::Permit),
                period: c
                    .provision
                    .as_ref()
                    .and_then(|p| p.period.as_ref())
                    .map(|per| {
                        (
                            per.start.as_ref().map(dates::lower_bound),
                            per.end.as_ref().map(dates::upper_bound),
                        )
                    }),
                names_actors: c
                    .provision
                    .as_ref()
                    .is_some_and(|p| p.actor.iter().flatten().next().is_some()),
                actors,
                explicit: c.policy_rule.as_ref().is_some_and(|r| {
                    r.coding
                        .iter()
                        .flatten()
                        .any(|c| c.code.as_deref() == Some("OPTIN"))
                }) || c
                    .policy
                    .iter()
                    .flatten()
                    .any(|p| p.uri.is_some() || p.authority.is_some()),
            });
        }
        out
    }
}
