//! Conformance: messages written the ways real GP systems and BaRS senders write them.
//! Strict about what the gateway relies on (who sends, for which practice, about whom,
//! with what consent, for which service), liberal about everything else valid R4.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::{Value, json};
use thrive_gateway::store::crypto::{Column, StorageKeySettings, StorageKeys};

/// A change a sender makes to the harness's referral.
type Change = fn(&mut Value);

const SHARED_EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/examples");

fn entries(v: &mut Value) -> &mut Vec<Value> {
    v["entry"].as_array_mut().expect("entries")
}

fn push(v: &mut Value, full_url: &str, resource: Value) {
    entries(v).push(json!({"fullUrl": full_url, "resource": resource}));
}

fn patient_url(v: &Value) -> String {
    v["entry"][2]["fullUrl"].as_str().unwrap().to_owned()
}

/// Entries real BaRS referrals carry that the gateway does not read.
fn add_clinical_context(v: &mut Value) {
    let patient = patient_url(v);
    let practice = v["entry"][4]["fullUrl"].as_str().unwrap().to_owned();
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000101",
        json!({"resourceType": "HealthcareService", "id": "7a0c1c52-0000-4000-8000-000000000101",
               "active": true, "providedBy": {"reference": practice}, "name": "GP practice"}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000102",
        json!({"resourceType": "Location", "id": "7a0c1c52-0000-4000-8000-000000000102",
               "status": "active", "name": "Main surgery",
               "managingOrganization": {"reference": practice}}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000103",
        json!({"resourceType": "Encounter", "id": "7a0c1c52-0000-4000-8000-000000000103",
               "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": patient},
               "location": [{"location": {"reference": "urn:uuid:7a0c1c52-0000-4000-8000-000000000102"}}]}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000104",
        json!({"resourceType": "CarePlan", "id": "7a0c1c52-0000-4000-8000-000000000104",
               "status": "active", "intent": "plan", "subject": {"reference": patient},
               "description": "Return-to-work plan agreed in surgery"}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000105",
        json!({"resourceType": "EpisodeOfCare", "id": "7a0c1c52-0000-4000-8000-000000000105",
               "status": "active", "patient": {"reference": patient}}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000106",
        json!({"resourceType": "MedicationStatement", "id": "7a0c1c52-0000-4000-8000-000000000106",
               "status": "active", "subject": {"reference": patient},
               "medicationCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "322236009"}]}}),
    );
    push(
        v,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000107",
        json!({"resourceType": "AllergyIntolerance", "id": "7a0c1c52-0000-4000-8000-000000000107",
               "patient": {"reference": patient},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]}}),
    );
    let sr = &mut v["entry"][1]["resource"];
    sr["encounter"] = json!({"reference": "urn:uuid:7a0c1c52-0000-4000-8000-000000000103"});
}

/// References a sender makes to what it did not put in the message.
fn refer_outside(v: &mut Value) {
    let sr = &mut v["entry"][1]["resource"];
    sr["supportingInfo"]
        .as_array_mut()
        .unwrap()
        .push(json!({"reference": "https://gp.example/fhir/DocumentReference/letter-1"}));
    sr["reasonReference"] = json!([{"reference": "Condition/not-in-this-message"}]);
    sr["basedOn"] = json!([{"reference": "urn:uuid:7a0c1c52-0000-4000-8000-0000000001ff"}]);
    sr["performer"] = json!([{"reference": "HealthcareService/elsewhere"}]);
}

/// RESTful `https://` fullUrls, with references written relative (`Type/id`) and
/// version-specific, or as absolute URLs.
fn restful(v: &mut Value, relative: bool) {
    let mut urls = Vec::new();
    for e in entries(v).iter_mut() {
        let rt = e["resource"]["resourceType"].as_str().unwrap().to_owned();
        let id = e["resource"]["id"].as_str().unwrap().to_owned();
        let old = e["fullUrl"].as_str().unwrap().to_owned();
        let new = format!("https://gp.example/fhir/{rt}/{id}");
        e["fullUrl"] = json!(new);
        urls.push((old, rt, id, new));
    }
    let mut text = v.to_string();
    for (old, rt, id, new) in &urls {
        let to = if relative {
            format!("{rt}/{id}/_history/1")
        } else {
            new.clone()
        };
        text = text.replace(
            &format!("\"reference\":\"{old}\""),
            &format!("\"reference\":\"{to}\""),
        );
    }
    *v = serde_json::from_str(&text).unwrap();
}

/// The requester is the Practitioner; the bundle holds their PractitionerRole.
fn practitioner_requester(v: &mut Value) {
    let practitioner = "urn:uuid:7a0c1c52-0000-4000-8000-000000000110";
    push(
        v,
        practitioner,
        json!({"resourceType": "Practitioner", "id": "7a0c1c52-0000-4000-8000-000000000110",
               "identifier": [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "7654321"}]}),
    );
    v["entry"][3]["resource"]["practitioner"] = json!({"reference": practitioner});
    v["entry"][1]["resource"]["requester"] = json!({"reference": practitioner});
}

/// The requester is a PractitionerRole contained in the ServiceRequest.
fn contained_requester(v: &mut Value) {
    let mut role = v["entry"][3]["resource"].clone();
    role["id"] = json!("requester");
    let sr = &mut v["entry"][1]["resource"];
    sr["contained"] = json!([role]);
    sr["requester"] = json!({"reference": "#requester"});
}

fn without_header_id(v: &mut Value) {
    v["entry"][0]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("id");
}

/// The message as stored for delivery, decrypted with the test storage key.
async fn stored_message(app: &TestApp, db: Db, id: &str) -> Value {
    let rows = query_text(
        db,
        &app.database_url,
        &format!("SELECT message FROM referrals WHERE id = '{id}'"),
    )
    .await;
    let sealed = rows[0][0].clone().expect("a stored message");
    let keys: StorageKeySettings = toml::from_str(&format!(
        "active = \"v1\"\n[versions.v1]\nfile = \"{KEYS}/storage-v1.key\"\n"
    ))
    .unwrap();
    let keys = StorageKeys::load(Some(&keys)).unwrap();
    let text = keys.open(Column::ReferralMessage, id, &sealed).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn accepted_id(reply: &Reply, what: &str) -> String {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text);
    let body = reply.json();
    crate::fhir_schema::assert_valid_r4(&body, what);
    body["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Each construct alone, then all of them in one message.
async fn real_sender_constructs_are_accepted(db: Db) {
    let app = TestApp::spawn(db).await;
    let cases: Vec<(&str, Change)> = vec![
        ("clinical context entries", add_clinical_context),
        ("references outside the bundle", refer_outside),
        ("relative, version-specific references", |v| {
            restful(v, true)
        }),
        ("absolute https references", |v| restful(v, false)),
        ("no MessageHeader.id", without_header_id),
        ("a Practitioner requester", practitioner_requester),
        ("a contained requester", contained_requester),
        ("all of them", |v| {
            add_clinical_context(v);
            refer_outside(v);
            practitioner_requester(v);
            restful(v, true);
            without_header_id(v);
        }),
    ];
    for (what, change) in cases {
        let mut message = referral();
        change(&mut message);
        let reply = app.send("gp-a", &message).await;
        let id = accepted_id(&reply, what);
        let row = app.store.referral(&id).await.unwrap().unwrap();
        assert_eq!(row.practice_ods, "Y90001", "{what}");
        assert_eq!(row.provider, "prospects", "{what}");
    }
}

/// What the gateway does not read is neither stored nor echoed; the audit record
/// counts it by type.
async fn ignored_entries_are_counted_not_kept(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    add_clinical_context(&mut message);
    let reply = app.send("gp-a", &message).await;
    let id = accepted_id(&reply, "clinical context");
    for ignored in [
        "CarePlan",
        "Return-to-work plan",
        "MedicationStatement",
        "Main surgery",
    ] {
        assert!(!reply.text.contains(ignored), "the answer echoes {ignored}");
    }
    let stored = stored_message(&app, db, &id).await;
    let types: Vec<&str> = stored["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "MessageHeader",
            "ServiceRequest",
            "Patient",
            "PractitionerRole",
            "Organization",
            "Consent",
            "Condition",
            "Observation",
            "Flag"
        ]
    );
    let record = app
        .audit()
        .await
        .into_iter()
        .find(|r| r.action == "referral.new" && r.referral_id.as_deref() == Some(id.as_str()))
        .expect("the accept record");
    let detail: Value = serde_json::from_str(&record.detail).unwrap();
    assert_eq!(
        detail["ignored_entries"],
        json!({"AllergyIntolerance": 1, "CarePlan": 1, "Encounter": 1, "EpisodeOfCare": 1,
               "HealthcareService": 1, "Location": 1, "MedicationStatement": 1})
    );
    assert!(!record.detail.contains("Return-to-work"));
}

/// Strict where the gateway relies on it.
async fn what_the_gateway_needs_must_still_resolve(db: Db) {
    let app = TestApp::spawn(db).await;
    let cases: Vec<(&str, Change, u16, &str, &str)> = vec![
        (
            "an unresolved subject",
            |v| v["entry"][1]["resource"]["subject"] = json!({"reference": "Patient/elsewhere"}),
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[1].resource.subject.reference",
        ),
        (
            "an unresolved requester",
            |v| {
                v["entry"][1]["resource"]["requester"] =
                    json!({"reference": "https://gp.example/fhir/PractitionerRole/x"})
            },
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[1].resource.requester.reference",
        ),
        (
            "an unresolved focus",
            |v| {
                v["entry"][0]["resource"]["focus"] =
                    json!([{"reference": "ServiceRequest/nowhere"}])
            },
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[0].resource.focus[0].reference",
        ),
        (
            "an unresolved Consent.patient",
            |v| {
                v["entry"][5]["resource"]["patient"] =
                    json!({"reference": "urn:uuid:7a0c1c52-0000-4000-8000-0000000002ff"})
            },
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[5].resource.patient.reference",
        ),
        (
            "an invalid Encounter among the ignored entries",
            |v| {
                add_clinical_context(v);
                v["entry"][11]["resource"]["status"] = json!("Zzyzxqwerty");
            },
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[11].resource.status",
        ),
        (
            "an unknown element type in a CarePlan",
            |v| {
                add_clinical_context(v);
                v["entry"][12]["resource"]["intent"] = json!(42);
            },
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[12].resource.intent",
        ),
        (
            "a contained requester that is not there",
            |v| v["entry"][1]["resource"]["requester"] = json!({"reference": "#missing"}),
            400,
            "REC_BAD_REQUEST",
            "Bundle.entry[1].resource.requester.reference",
        ),
    ];
    for (what, change, status, rec, expression) in cases {
        let mut message = referral();
        change(&mut message);
        let reply = app.send("gp-a", &message).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        reply.assert_issue(status, rec, expression);
        crate::fhir_schema::assert_valid_r4(&reply.json(), what);
        assert!(
            !reply.text.contains("Zzyzxqwerty"),
            "{what}: a value quoted"
        );
        let recs: Vec<String> = reply.issues().into_iter().map(|(r, _, _)| r).collect();
        assert!(
            recs.iter().all(|r| r == rec),
            "{what}: one REC code per answer: {recs:?}"
        );
    }
    assert_eq!(app.referral_count().await, 0);
}

/// The MessageHeader failing its model is reported once, where it fails.
async fn no_consequential_issues(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    message["entry"][0]["resource"]["source"]
        .as_object_mut()
        .unwrap()
        .remove("endpoint");
    let reply = app.send("gp-a", &message).await;
    reply.assert_issue(400, "REC_BAD_REQUEST", "Bundle.entry[0].resource.source");
    assert_eq!(reply.issues().len(), 1, "{}", reply.text);
}

/// Without MessageHeader.id, duplicates are still caught by X-Request-Id and by the
/// sender's ServiceRequest identifier.
async fn duplicates_without_a_header_id(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    without_header_id(&mut message);
    let ids = Ids::fresh();
    assert_eq!(app.send_with("gp-a", &message, &ids).await.status, 200);
    app.send_with("gp-a", &message, &ids)
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    let again = app.send("gp-a", &message).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.issues()[0].1, "duplicate");
    assert_eq!(app.referral_count().await, 1);
}

/// The requester's practice wins over MessageHeader.sender; the sender counts only
/// when the requester leads to no ODS code.
async fn the_requesters_practice_wins_over_the_sender(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut message = referral();
    push(
        &mut message,
        "urn:uuid:7a0c1c52-0000-4000-8000-000000000120",
        json!({"resourceType": "Organization", "id": "7a0c1c52-0000-4000-8000-000000000120",
               "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90020"}]}),
    );
    message["entry"][0]["resource"]["sender"] =
        json!({"reference": "urn:uuid:7a0c1c52-0000-4000-8000-000000000120"});
    // gp-b may refer only for Y90020 (the sender): the requester's Y90001 decides.
    app.send("gp-b", &message)
        .await
        .assert_issue(403, "REC_FORBIDDEN", "ServiceRequest.requester");
    let id = accepted_id(&app.send("gp-a", &message).await, "requester wins");
    assert_eq!(
        app.store.referral(&id).await.unwrap().unwrap().practice_ods,
        "Y90001"
    );

    // A requester Practitioner without a PractitionerRole: the sender names the practice.
    let mut message = referral();
    practitioner_requester(&mut message);
    message["entry"][3]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("practitioner");
    let id = accepted_id(&app.send("gp-a", &message).await, "sender fallback");
    assert_eq!(
        app.store.referral(&id).await.unwrap().unwrap().practice_ods,
        "Y90001"
    );
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!("{SHARED_EXAMPLES}/{name}"))
        .expect("the shared examples are beside the project")
}

/// The three shared examples exactly as they are, on the day they were written.
async fn the_shared_examples_are_accepted_as_they_are(db: Db) {
    let when = fhir_sdk::time::macros::datetime!(2026-11-20 12:00 UTC);
    for second in ["referral-cancel.json", "consent-withdrawal.json"] {
        let app = TestApp::spawn(db).await;
        let gateway = app.gateway.clone();
        let principal = gateway
            .auth
            .authenticate(Some(&format!("Bearer {}", token("gp-a"))))
            .unwrap();
        for name in ["referral-new.json", second] {
            let ids = thrive_gateway::app::RequestIds {
                request_id: uuid::Uuid::new_v4(),
                correlation_id: uuid::Uuid::new_v4(),
                identity: None,
            };
            let outcome = gateway
                .process(&principal, &ids, &example(name), when)
                .await
                .unwrap_or_else(|r| panic!("{name}: {:?}", r.issues));
            crate::fhir_schema::assert_valid_r4(
                &thrive_gateway::fhir::messages::accepted(
                    &outcome.referral,
                    &outcome.bundle_id,
                    &outcome.source_endpoint,
                ),
                name,
            );
        }
    }
}

on_both_databases!(
    real_sender_constructs_are_accepted,
    ignored_entries_are_counted_not_kept,
    what_the_gateway_needs_must_still_resolve,
    no_consequential_issues,
    duplicates_without_a_header_id,
    the_requesters_practice_wins_over_the_sender,
    the_shared_examples_are_accepted_as_they_are,
);
