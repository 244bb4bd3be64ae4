//! The `fhir` delivery format: a FHIR R4 message Bundle holding only what the dataset
//! mapping produced. The mapped fields travel as the items of a QuestionnaireResponse
//! (one item per dataset field, `linkId` the field name), the NHS-number pseudonym as
//! the Patient's only identifier; nothing else about the person is added.

use super::messages::REFERENCE_SYSTEM;
use super::{MESSAGE_EVENTS, MESSAGE_REASONS};
use serde_json::{Map, Value, json};

/// Identifier system of a provider's pseudonyms, e.g. `.../Id/pseudonym/bchft`.
pub const PSEUDONYM_SYSTEM: &str = "https://thrive-gateway.nhs.uk/Id/pseudonym";

/// What the gateway says about the referral itself (ids, no personal data).
pub struct ReferralIds<'a> {
    pub id: &'a str,
    pub reference: &'a str,
    pub programme: &'a str,
    pub provider: &'a str,
    pub receiver: &'a Receiver,
}

/// The provider a message is for: `MessageHeader.destination`.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub endpoint: String,
    /// `(system, value)`: the provider's first identifier in the routing file.
    pub identifier: Option<(String, String)>,
    pub name: String,
}

impl Receiver {
    fn destination(&self) -> Value {
        let mut receiver = json!({"display": self.name});
        if let Some((system, value)) = &self.identifier {
            super::set(
                &mut receiver,
                "identifier",
                json!({"system": system, "value": value}),
            );
        }
        json!([{"endpoint": self.endpoint, "receiver": receiver}])
    }
}

/// An entry with an absolute `fullUrl` made from the resource's id (a new UUID when it
/// has none).
fn entry(resource: Value) -> (String, Value) {
    let mut resource = resource;
    if resource.get("id").is_none() {
        super::set(&mut resource, "id", json!(uuid::Uuid::new_v4().to_string()));
    }
    let url = crate::fhir::full_url(
        resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    (url.clone(), json!({"fullUrl": url, "resource": resource}))
}

fn answer(value: &Value) -> Value {
    match value {
        Value::Bool(b) => json!({"valueBoolean": b}),
        Value::Number(n) if n.is_i64() => json!({"valueInteger": n}),
        Value::Number(n) => json!({"valueDecimal": n}),
        Value::String(s) => json!({"valueString": s}),
        other => json!({"valueString": other.to_string()}),
    }
}

fn header(reason: &str, focus: &str, receiver: &Receiver, now: &str) -> (String, Value) {
    entry(json!({
        "resourceType": "MessageHeader",
        "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-request"},
        "reason": {"coding": [{"system": MESSAGE_REASONS, "code": reason}]},
        "destination": receiver.destination(),
        "source": {"name": "thrive-gateway", "endpoint": crate::fhir::BASE},
        "focus": [{"reference": focus}],
        "meta": {"lastUpdated": now},
    }))
}

fn bundle(now: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": now,
        "entry": entries,
    })
}

/// A new referral: MessageHeader, ServiceRequest, Patient (pseudonym only) and the
/// dataset as a QuestionnaireResponse.
pub fn referral(
    ids: &ReferralIds<'_>,
    mapping: (&str, &str),
    data: &Map<String, Value>,
    pseudonym_field: Option<&str>,
    now: &str,
) -> Value {
    let pseudonym = pseudonym_field
        .and_then(|f| data.get(f))
        .and_then(Value::as_str);
    let mut patient = json!({"resourceType": "Patient"});
    if let Some(p) = pseudonym {
        super::set(
            &mut patient,
            "identifier",
            json!([{"system": format!("{PSEUDONYM_SYSTEM}/{}", ids.provider), "value": p}]),
        );
    }
    let (patient_url, patient) = entry(patient);
    let items: Vec<Value> = data
        .iter()
        .map(|(name, value)| json!({"linkId": name, "answer": [answer(value)]}))
        .collect();
    let (qr_url, qr) = entry(json!({
        "resourceType": "QuestionnaireResponse",
        "questionnaire": format!("https://thrive-gateway.nhs.uk/dataset/{}|{}", mapping.0, mapping.1),
        "status": "completed",
        "subject": {"reference": patient_url},
        "authored": now,
        "item": items,
    }));
    let (sr_url, sr) = entry(json!({
        "resourceType": "ServiceRequest",
        "id": ids.id,
        "identifier": [{"system": REFERENCE_SYSTEM, "value": ids.reference}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/message-category-servicerequest", "code": "referral"}]}],
        "code": {"text": ids.programme},
        "subject": {"reference": patient_url},
        "supportingInfo": [{"reference": qr_url}],
    }));
    let (_, header) = header("new", &sr_url, ids.receiver, now);
    bundle(now, vec![header, sr, patient, qr])
}

/// A cancellation or withdrawal notice: ids and the new status, nothing personal.
pub fn notice(ids: &ReferralIds<'_>, kind: &str, now: &str) -> Value {
    let (sr_url, sr) = entry(json!({
        "resourceType": "ServiceRequest",
        "id": ids.id,
        "identifier": [{"system": REFERENCE_SYSTEM, "value": ids.reference}],
        "status": "revoked",
        "intent": "order",
        "code": {"text": ids.programme},
        "subject": {"display": "the patient of the original referral"},
        "note": [{"text": format!("{kind}: stop work on this referral")}],
    }));
    let (_, header) = header("update", &sr_url, ids.receiver, now);
    bundle(now, vec![header, sr])
}
