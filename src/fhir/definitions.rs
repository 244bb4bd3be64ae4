//! The gateway's published definitions: its CapabilityStatement and the referral
//! MessageDefinition that says what a referral message must hold.

use super::{MESSAGE_EVENTS, SNOMED};
use crate::routing::Routing;
use serde_json::{Value, json};
use std::sync::OnceLock;

/// Canonical URL of the referral MessageDefinition.
pub const MESSAGE_DEFINITION_URL: &str =
    "https://thrive-gateway.nhs.uk/fhir/r4/MessageDefinition/employment-support-referral";

pub fn capability_statement() -> &'static Value {
    static CAPABILITY: OnceLock<Value> = OnceLock::new();
    CAPABILITY.get_or_init(|| {
        json!({
            "resourceType": "CapabilityStatement",
            "id": "thrive-gateway",
            "url": "https://thrive-gateway.nhs.uk/fhir/r4/metadata",
            "name": "ThriveGateway",
            "title": "thrive-gateway: employment support referrals",
            "status": "active",
            "date": "2026-11-23",
            "publisher": "thrive-gateway",
            "kind": "instance",
            "software": {"name": "thrive-gateway", "version": env!("CARGO_PKG_VERSION")},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "rest": [{
                "mode": "server",
                "security": {
                    "cors": false,
                    "description": "OAuth2 bearer JWT from a configured issuer; roles gp-system, provider, auditor, operator",
                },
                "resource": [{
                    "type": "ServiceRequest",
                    "profile": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{
                        "name": "identifier",
                        "type": "token",
                        "documentation": "the gateway's referral reference or the practice's own ServiceRequest identifier",
                    }],
                }, {
                    "type": "Bundle",
                    "operation": [{
                        "name": "validate",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                        "documentation": "a dry run of $process-message: the same answer, nothing stored or sent",
                    }],
                }, {
                    "type": "MessageDefinition",
                    "interaction": [{"code": "search-type"}],
                }],
                "operation": [{
                    "name": "process-message",
                    "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                }],
            }],
            "messaging": [{
                "supportedMessage": [{"mode": "receiver", "definition": MESSAGE_DEFINITION_URL}],
            }],
        })
    })
}

/// Resource types the gateway reads in a referral message, with their cardinality;
/// any other R4 type may be present and is dropped.
const ALLOWED: [(&str, &str); 11] = [
    ("MessageHeader", "1..1"),
    ("ServiceRequest", "1..1"),
    ("Patient", "1..1"),
    ("PractitionerRole", "0..*"),
    ("Practitioner", "0..*"),
    ("Organization", "1..*"),
    ("Consent", "1..*"),
    ("Condition", "0..*"),
    ("QuestionnaireResponse", "0..*"),
    ("Flag", "0..*"),
    ("Observation", "0..*"),
];

/// The referral MessageDefinition, as a searchset Bundle (`GET /MessageDefinition`).
/// Accepted referral codes come from the routing mapping, so they are always the
/// codes the gateway actually routes.
pub fn message_definition_bundle(routing: &Routing, minimum_age: u8) -> Value {
    let codes: Vec<Value> = routing
        .programmes()
        .flat_map(|p| p.referral_codes.iter())
        .map(|c| json!({"system": SNOMED, "code": c}))
        .collect();
    let allowed_resources: Vec<Value> = ALLOWED
        .iter()
        .map(|(code, card)| json!({"url": code, "valueString": card}))
        .collect();
    let definition = json!({
        "resourceType": "MessageDefinition",
        "id": "employment-support-referral",
        "url": MESSAGE_DEFINITION_URL,
        "version": env!("CARGO_PKG_VERSION"),
        "name": "EmploymentSupportReferral",
        "title": "Referral to employment support (Thrive into Work, IPS, WorkWell)",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "thrive-gateway",
        "description": format!(
            "A BaRS-style message Bundle. First entry: MessageHeader with eventCoding \
             {MESSAGE_EVENTS}|servicerequest-request, reason new or update, and focus on one \
             ServiceRequest (status active, intent plan or order, code one of the accepted \
             referral codes, subject a Patient with a valid NHS number who is at least \
             {minimum_age} on the referral date, requester a PractitionerRole, Practitioner \
             or Organization leading to the GP practice Organization with an ODS code). \
             A new referral needs an active, explicit Consent (provision.type permit) about \
             the Patient. The references the gateway relies on (focus, subject, requester, \
             Consent.patient) must resolve inside the Bundle; any other R4 resource may be \
             present and is checked, not kept. \
             An update cancels (ServiceRequest.status revoked or entered-in-error) or \
             withdraws consent (Consent.status inactive or rejected)."
        ),
        "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-request"},
        "category": "notification",
        "focus": [{"code": "ServiceRequest", "profile": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest", "min": 1, "max": "1"}],
        "responseRequired": "always",
        "allowedResponse": [{"message": MESSAGE_DEFINITION_URL}],
        "extension": [{
            "url": "https://thrive-gateway.nhs.uk/StructureDefinition/accepted-referral-codes",
            "valueCodeableConcept": {"coding": codes},
        }, {
            "url": "https://thrive-gateway.nhs.uk/StructureDefinition/allowed-resources",
            "extension": allowed_resources,
        }],
    });
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"fullUrl": MESSAGE_DEFINITION_URL, "resource": definition, "search": {"mode": "match"}}],
    })
}
