//! FHIR shapes the gateway answers with: the BaRS response message and the gateway's
//! view of a referral. They carry ids, codes and the referral reference, never the
//! patient's details.

use super::{BASE, MESSAGE_EVENTS, SNOMED, full_url, set};
use crate::domain::{Milestone, ODS_SYSTEM};
use crate::store::{EventRow, ReferralRow, ReferralStatus};
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

/// Code system of the milestones providers report.
pub const MILESTONE_SYSTEM: &str = "https://thrive-gateway.nhs.uk/CodeSystem/referral-milestone";

/// A contained resource's reference to the resource that contains it.
const CONTAINER: &str = "#";

/// A status event as a Task of its own (the provider's view): the milestone Task the
/// GP system sees contained, with the event's id and based on the referral.
pub fn event_task(row: &ReferralRow, e: &EventRow) -> Value {
    let mut task = milestone_task(0, e, &format!("ServiceRequest/{}", row.id));
    set(&mut task, "id", json!(e.id));
    set(
        &mut task,
        "meta",
        json!({"lastUpdated": fhir_instant(e.recorded_at)}),
    );
    task
}

/// One status event as a contained Task: `businessStatus` the milestone, `executionPeriod`
/// when it happened; a decline carries its BaRS rejection reason.
fn milestone_task(n: usize, e: &EventRow, based_on: &str) -> Value {
    let status = match e.event {
        Milestone::Declined => "rejected",
        Milestone::Closed | Milestone::Sustained26Weeks => "completed",
        Milestone::Accepted => "accepted",
        _ => "in-progress",
    };
    let mut task = json!({
        "resourceType": "Task",
        "id": format!("milestone-{}", n.saturating_add(1)),
        "status": status,
        "intent": "order",
        "basedOn": [{"reference": based_on}],
        "businessStatus": {"coding": [{"system": MILESTONE_SYSTEM, "code": e.event}]},
        "executionPeriod": {"start": fhir_instant(e.occurred_at)},
        "authoredOn": fhir_instant(e.recorded_at),
        "owner": {"display": e.provider},
    });
    if let Some(reason) = &e.reason {
        let mut coding = vec![json!({"system": MILESTONE_SYSTEM, "code": reason})];
        if e.event == Milestone::Declined {
            coding.insert(
                0,
                json!({
                    "system": REJECTED_REASONS,
                    "code": bars_rejection(reason),
                }),
            );
        }
        set(
            &mut task,
            "statusReason",
            json!({"coding": coding, "text": reason}),
        );
    }
    if let Ok(detail) = serde_json::from_str::<Value>(&e.detail)
        && detail.as_object().is_some_and(|d| !d.is_empty())
    {
        set(&mut task, "output", json!(detail
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| json!({"type": {"text": k}, "valueString": v.to_string().trim_matches('"')}))
            .collect::<Vec<_>>()));
    }
    task
}

/// The gateway's ServiceRequest for a stored referral, with its milestones.
pub fn service_request(row: &ReferralRow, events: &[EventRow]) -> Value {
    let status = match row.status {
        ReferralStatus::Active => "active",
        ReferralStatus::Cancelled | ReferralStatus::ConsentWithdrawn => "revoked",
    };
    let mut sr = json!({
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
    });
    sr.get_mut("extension")
        .and_then(Value::as_array_mut)
        .into_iter()
        .for_each(|x| x.push(json!({"url": MILESTONE_EXTENSION, "valueCode": row.milestone})));
    if !events.is_empty() {
        set(
            &mut sr,
            "contained",
            json!(
                events
                    .iter()
                    .enumerate()
                    .map(|(n, e)| milestone_task(n, e, CONTAINER))
                    .collect::<Vec<_>>()
            ),
        );
    }
    sr
}

/// Extension carrying the latest milestone a provider reported.
pub const MILESTONE_EXTENSION: &str =
    "https://thrive-gateway.nhs.uk/StructureDefinition/referral-milestone";

/// The Encounter of a response message: `identifier` the referral reference, `status`
/// as the caller decides, and a BaRS rejection reason where the provider declined.
fn encounter(row: &ReferralRow, status: &str, rejected: Option<&str>) -> Value {
    let mut encounter = json!({
        "resourceType": "Encounter",
        "id": uuid::Uuid::new_v4().to_string(),
        "identifier": [{"system": REFERENCE_SYSTEM, "value": row.reference}],
        "status": status,
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "VR",
            "display": "virtual",
        },
        "basedOn": [{"reference": full_url("ServiceRequest", &row.id)}],
    });
    if let Some(code) = rejected {
        set(
            &mut encounter,
            "reasonCode",
            json!([{"coding": [{"system": REJECTED_REASONS, "code": code}]}]),
        );
    }
    encounter
}

/// The BaRS rejection reason (`https://fhir.nhs.uk/CodeSystem/rejected-reasons-bars`)
/// closest to a decline reason.
pub fn bars_rejection(reason: &str) -> &'static str {
    match reason {
        "failed-contact" => "FC",
        "ineligible" | "out-of-area" => "RRNA",
        _ => "OTH",
    }
}

/// Code system of BaRS rejection reasons (`RRNA`, `FC`, `OTH`).
pub const REJECTED_REASONS: &str = "https://fhir.nhs.uk/CodeSystem/rejected-reasons-bars";

/// A `servicerequest-response` message Bundle answering the request Bundle
/// `bundle_id` sent from `destination` (its `MessageHeader.source.endpoint`):
/// MessageHeader (focus the ServiceRequest), the referral's ServiceRequest `sr`, and
/// the Encounter. Every `fullUrl` is absolute and every reference resolves in it.
fn response_message(
    row: &ReferralRow,
    bundle_id: &str,
    destination: &str,
    sr: Value,
    encounter: Value,
) -> Value {
    let header_id = uuid::Uuid::new_v4().to_string();
    let sr_url = full_url("ServiceRequest", &row.id);
    let encounter_id = encounter
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let now = fhir_instant(fhir_sdk::time::OffsetDateTime::now_utc());
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": now},
        "type": "message",
        "timestamp": now,
        "entry": [
            {
                "fullUrl": full_url("MessageHeader", &header_id),
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-response"},
                    "destination": [{
                        "endpoint": destination,
                        "receiver": {"identifier": {"system": ODS_SYSTEM, "value": row.practice_ods}},
                    }],
                    "source": {"name": "thrive-gateway", "endpoint": BASE},
                    "response": {"identifier": bundle_id, "code": "ok"},
                    "focus": [{"reference": sr_url}],
                },
            },
            {
                "fullUrl": sr_url,
                "resource": sr,
            },
            {
                "fullUrl": full_url("Encounter", &encounter_id),
                "resource": encounter,
            },
        ],
    })
}

/// The `servicerequest-response` message for an accepted request: the request Bundle
/// `bundle_id` sent from `source_endpoint`, and the referral as it now stands.
pub fn accepted(row: &ReferralRow, bundle_id: &str, source_endpoint: &str) -> Value {
    let status = match row.status {
        ReferralStatus::Active => "planned",
        ReferralStatus::Cancelled | ReferralStatus::ConsentWithdrawn => "cancelled",
    };
    response_message(
        row,
        bundle_id,
        source_endpoint,
        service_request(row, &[]),
        encounter(row, status, None),
    )
}

/// The `servicerequest-response` message that pushes one milestone back to the
/// referring GP system, answering its original request (`referrals.bundle_id`): the
/// ServiceRequest as of that milestone with the milestone as its contained Task
/// (numbered as in the referral's history), and an Encounter whose status follows the
/// milestone. `None` when `event_id` is not in `history`.
pub fn milestone(row: &ReferralRow, history: &[EventRow], event_id: &str) -> Option<Value> {
    let (n, event) = history.iter().enumerate().find(|(_, e)| e.id == event_id)?;
    let as_of = ReferralRow {
        milestone: event.event,
        ..row.clone()
    };
    let mut sr = service_request(&as_of, &[]);
    set(
        &mut sr,
        "contained",
        json!([milestone_task(n, event, CONTAINER)]),
    );
    let (status, rejected) = match event.event {
        Milestone::Declined => (
            "cancelled",
            Some(bars_rejection(event.reason.as_deref().unwrap_or_default())),
        ),
        Milestone::Closed => ("finished", None),
        Milestone::Accepted => ("planned", None),
        _ => ("in-progress", None),
    };
    Some(response_message(
        row,
        &row.bundle_id,
        &row.source_endpoint,
        sr,
        encounter(row, status, rejected),
    ))
}

/// A `searchset` Bundle of referrals with their milestones.
pub fn searchset(found: &[(ReferralRow, Vec<EventRow>)]) -> Value {
    let entries: Vec<Value> = found
        .iter()
        .map(|(row, events)| {
            json!({
                "fullUrl": full_url("ServiceRequest", &row.id),
                "resource": service_request(row, events),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": entries.len(),
    });
    // FHIR allows no empty arrays (ele-1): no matches, no `entry`.
    if !entries.is_empty() {
        set(&mut bundle, "entry", json!(entries));
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_map_to_bars_rejection_reasons() {
        assert_eq!(bars_rejection("failed-contact"), "FC");
        assert_eq!(bars_rejection("ineligible"), "RRNA");
        assert_eq!(bars_rejection("declined-by-person"), "OTH");
    }
}
