//! FHIR shapes the gateway answers with: the BaRS response message and the gateway's
//! view of a referral. They carry ids, codes and the referral reference, never the
//! patient's details.

use super::process::Outcome;
use crate::domain::ODS_SYSTEM;
use crate::store::{ReferralRow, ReferralStatus};
use crate::validation::{MESSAGE_EVENTS, SNOMED};
use serde_json::{Value, json};

/// Identifier system of the gateway's human-readable referral references.
pub const REFERENCE_SYSTEM: &str = "https://thrive-gateway.nhs.uk/Id/referral-reference";
/// Extension carrying the gateway's own referral state.
pub const STATE_EXTENSION: &str =
    "https://thrive-gateway.nhs.uk/StructureDefinition/referral-state";

fn fhir_instant(t: fhir_sdk::time::OffsetDateTime) -> String {
    t.format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The gateway's ServiceRequest for a stored referral.
pub fn service_request(row: &ReferralRow) -> Value {
    let status = match row.status() {
        Ok(ReferralStatus::Active) => "active",
        _ => "revoked",
    };
    json!({
        "resourceType": "ServiceRequest",
        "id": row.id,
        "meta": {"lastUpdated": fhir_instant(row.updated_at)},
        "extension": [{"url": STATE_EXTENSION, "valueCode": row.status}],
        "identifier": [{"system": REFERENCE_SYSTEM, "value": row.reference}],
        "status": status,
        "intent": "plan",
        "category": [{"coding": [{
            "system": "https://fhir.nhs.uk/CodeSystem/message-category-servicerequest",
            "code": "referral",
        }]}],
        "code": {"coding": [{"system": SNOMED, "code": row.referral_code}]},
        "subject": {"display": "patient held by the referring practice"},
        "authoredOn": fhir_instant(row.created_at),
        "requester": {"identifier": {"system": ODS_SYSTEM, "value": row.practice_ods}},
        "performer": [{"display": row.provider}],
    })
}

fn encounter(row: &ReferralRow) -> Value {
    let status = match row.status() {
        Ok(ReferralStatus::Active) => "planned",
        _ => "cancelled",
    };
    json!({
        "resourceType": "Encounter",
        "id": uuid::Uuid::new_v4().to_string(),
        "identifier": [{"system": REFERENCE_SYSTEM, "value": row.reference}],
        "status": status,
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "VR",
            "display": "virtual",
        },
        "basedOn": [{"reference": format!("ServiceRequest/{}", row.id)}],
    })
}

/// The `servicerequest-response` message for an accepted request.
pub fn accepted(outcome: &Outcome) -> Value {
    let row = &outcome.referral;
    let header_id = uuid::Uuid::new_v4().to_string();
    let encounter = encounter(row);
    let now = fhir_instant(fhir_sdk::time::OffsetDateTime::now_utc());
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": now},
        "type": "message",
        "timestamp": now,
        "entry": [
            {
                "fullUrl": format!("urn:uuid:{header_id}"),
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-response"},
                    "source": {"name": "thrive-gateway", "endpoint": "https://thrive-gateway.nhs.uk/fhir/r4"},
                    "response": {"identifier": outcome.bundle_id, "code": "ok"},
                    "focus": [{"reference": format!("ServiceRequest/{}", row.id)}],
                },
            },
            {
                "fullUrl": format!("ServiceRequest/{}", row.id),
                "resource": service_request(row),
            },
            {
                "fullUrl": format!("urn:uuid:{}", encounter["id"].as_str().unwrap_or_default()),
                "resource": encounter,
            },
        ],
    })
}
