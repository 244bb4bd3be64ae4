//! Bad input: each gets the right status and a precise OperationOutcome with no patient
//! data in it, nothing is stored, the rejection is audited, and the gateway stays up.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::{Value, json};

/// A message that breaks one rule, and what the GP system must be told.
struct Case {
    name: &'static str,
    body: Body,
    status: u16,
    rec: &'static str,
    expression: &'static str,
}

enum Body {
    Raw(String),
    Json(Value),
}

fn changed(f: impl FnOnce(&mut Value)) -> Body {
    let mut v = referral();
    f(&mut v);
    Body::Json(v)
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "not JSON",
            body: Body::Raw("this is not json".into()),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "",
        },
        Case {
            name: "JSON that is not FHIR",
            body: Body::Json(json!({"hello": "world"})),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.resourceType",
        },
        Case {
            name: "a resource that is not a Bundle",
            body: Body::Json(json!({"resourceType": "Patient", "id": "x"})),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.resourceType",
        },
        Case {
            name: "wrong bundle type",
            body: changed(|v| set(v, "/type", json!("collection"))),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.type",
        },
        Case {
            name: "missing MessageHeader",
            body: changed(|v| remove(v, "/entry/0")),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[0].resource",
        },
        Case {
            name: "deeply nested JSON",
            body: Body::Raw(nested(100_000)),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "",
        },
        Case {
            name: "unknown resource type",
            body: changed(|v| {
                v["entry"].as_array_mut().unwrap().push(json!({
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000ff",
                    "resource": {"resourceType": "Spaceship", "id": "x"}
                }))
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[9].resource.resourceType",
        },
        Case {
            name: "a resource type that came after R4",
            body: changed(|v| {
                v["entry"].as_array_mut().unwrap().push(json!({
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000fe",
                    "resource": {"resourceType": "SubscriptionTopic", "id": "m"}
                }))
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[9].resource.resourceType",
        },
        Case {
            name: "duplicate entries",
            body: changed(|v| {
                let dup = v["entry"][6].clone();
                v["entry"].as_array_mut().unwrap().push(dup);
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[9].fullUrl",
        },
        Case {
            name: "reference to nothing",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/subject/reference", at::SERVICE_REQUEST),
                    json!("urn:uuid:00000000-0000-4000-8000-000000000000"),
                )
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[1].resource.subject.reference",
        },
        Case {
            name: "number where a string belongs",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/identifier/0/value", at::PATIENT),
                    json!(9990000018u64),
                )
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[2].resource.identifier[0].value",
        },
        Case {
            name: "invalid code for a required element",
            body: changed(|v| set(v, &format!("{}/status", at::CONSENT), json!("maybe"))),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[5].resource.status",
        },
        Case {
            name: "wrong event",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/eventCoding/code", at::HEADER),
                    json!("booking-request"),
                )
            }),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[0].resource.eventCoding",
        },
        Case {
            name: "missing NHS number",
            body: changed(|v| remove(v, &format!("{}/identifier", at::PATIENT))),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[2].resource.identifier",
        },
        Case {
            name: "practice without ODS code",
            body: changed(|v| remove(v, &format!("{}/identifier", at::PRACTICE))),
            status: 400,
            rec: "REC_BAD_REQUEST",
            expression: "Bundle.entry[4].resource.identifier",
        },
        Case {
            name: "NHS number fails Modulus 11",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/identifier/0/value", at::PATIENT),
                    json!("9990000019"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[2].resource.identifier[0].value",
        },
        Case {
            name: "NHS number all one digit",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/identifier/0/value", at::PATIENT),
                    json!("4444444444"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[2].resource.identifier[0].value",
        },
        Case {
            name: "patient under 18",
            body: changed(|v| {
                let young = fhir_sdk::time::OffsetDateTime::now_utc().date().year() - 17;
                set(
                    v,
                    &format!("{}/birthDate", at::PATIENT),
                    json!(format!("{young}-01-01")),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[2].resource.birthDate",
        },
        Case {
            name: "not an employment support referral code",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/code/coding/0/code", at::SERVICE_REQUEST),
                    json!("183524004"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[1].resource.code",
        },
        Case {
            name: "new referral that is not active",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/status", at::SERVICE_REQUEST),
                    json!("draft"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[1].resource.status",
        },
        Case {
            name: "intent neither plan nor order",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/intent", at::SERVICE_REQUEST),
                    json!("proposal"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[1].resource.intent",
        },
        Case {
            name: "no consent",
            body: changed(|v| {
                remove(v, "/entry/5");
                remove(v, &format!("{}/supportingInfo/0", at::SERVICE_REQUEST));
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry",
        },
        Case {
            name: "consent not active",
            body: changed(|v| set(v, &format!("{}/status", at::CONSENT), json!("proposed"))),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.status",
        },
        Case {
            name: "consent that does not permit",
            body: changed(|v| set(v, &format!("{}/provision/type", at::CONSENT), json!("deny"))),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.provision.type",
        },
        Case {
            name: "consent given in the future",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/dateTime", at::CONSENT),
                    json!("2999-01-01T00:00:00Z"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.dateTime",
        },
        Case {
            name: "consent period over",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/provision/period", at::CONSENT),
                    json!({"start": "2020-01-01", "end": "2021-01-01"}),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.provision.period.end",
        },
        Case {
            name: "consent not explicit",
            body: changed(|v| remove(v, &format!("{}/policyRule", at::CONSENT))),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.policyRule",
        },
        Case {
            name: "consent naming another recipient",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/provision/actor", at::CONSENT),
                    json!([{
                        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "TAJ"}}
                    }]),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry[5].resource.provision.actor",
        },
        Case {
            name: "consent about someone else",
            body: changed(|v| {
                set(
                    v,
                    &format!("{}/patient/reference", at::CONSENT),
                    json!("urn:uuid:5e1c7a3e-2b4d-4c1a-9f00-000000000005"),
                )
            }),
            status: 422,
            rec: "REC_UNPROCESSABLE_ENTITY",
            expression: "Bundle.entry",
        },
    ]
}

async fn each_kind_of_bad_input_gets_a_precise_answer_and_changes_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    for case in cases() {
        let ids = Ids::fresh();
        let text = match &case.body {
            Body::Raw(s) => s.clone(),
            Body::Json(v) => v.to_string(),
        };
        let res = app
            .client
            .post(app.url("/fhir/r4/$process-message"))
            .bearer_auth(token("gp-a"))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", ids.request.to_string())
            .header("X-Correlation-Id", ids.correlation.to_string())
            .body(text)
            .send()
            .await
            .unwrap();
        let reply = Reply::from(res).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text);
        assert_eq!(
            reply.headers["x-request-id"],
            ids.request.to_string(),
            "{}",
            case.name
        );
        let issues = reply.issues();
        assert!(
            issues
                .iter()
                .any(|(r, _, e)| r == case.rec && e.contains(case.expression)),
            "{}: expected {} at {}, got {issues:?}",
            case.name,
            case.rec,
            case.expression
        );
        for secret in FIXTURE_PATIENT_DATA {
            assert!(
                !reply.text.contains(secret),
                "{}: answer holds patient data",
                case.name
            );
        }
        let audit = app.audit().await;
        let last = audit.last().expect("rejection audited");
        assert_eq!(last.outcome, "rejected", "{}", case.name);
        assert_eq!(
            last.http_status,
            Some(i32::from(case.status)),
            "{}",
            case.name
        );
        assert_eq!(
            last.request_id.as_deref(),
            Some(ids.request.to_string().as_str()),
            "{}",
            case.name
        );
        for secret in FIXTURE_PATIENT_DATA {
            assert!(
                !last.detail.contains(secret),
                "{}: audit holds patient data",
                case.name
            );
        }
    }
    assert_eq!(
        app.referral_count().await,
        0,
        "no rejected message was stored"
    );
    // Still up, still accepting.
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
}

async fn all_problems_are_reported_together(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut v = referral();
    set(
        &mut v,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("9990000019"),
    );
    set(
        &mut v,
        &format!("{}/birthDate", at::PATIENT),
        json!("2020-01-01"),
    );
    set(
        &mut v,
        &format!("{}/intent", at::SERVICE_REQUEST),
        json!("proposal"),
    );
    let reply = app.send("gp-a", &v).await;
    assert_eq!(reply.status, 422);
    let expressions: Vec<String> = reply.issues().into_iter().map(|(_, _, e)| e).collect();
    for want in [
        "Bundle.entry[2].resource.identifier[0].value",
        "Bundle.entry[2].resource.birthDate",
        "Bundle.entry[1].resource.intent",
    ] {
        assert!(
            expressions.iter().any(|e| e == want),
            "{want} missing from {expressions:?}"
        );
    }
}

async fn request_rules_are_enforced_before_the_body_is_read(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = referral().to_string();
    let post = || {
        app.client
            .post(app.url("/fhir/r4/$process-message"))
            .bearer_auth(token("gp-a"))
    };

    // Wrong content type: 415.
    let res = post()
        .header("Content-Type", "text/plain")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // Missing X-Request-Id, malformed X-Correlation-Id: 400, both named, both echoed.
    let res = post()
        .header("Content-Type", "application/fhir+json")
        .header("X-Correlation-Id", "not-a-uuid")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let reply = Reply::from(res).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.headers["x-correlation-id"], "not-a-uuid");
    let diagnostics = reply.json()["issue"].to_string();
    assert!(diagnostics.contains("X-Request-Id") && diagnostics.contains("X-Correlation-Id"));

    // 2 MB body: 413 (with and without a Content-Length the gateway can trust).
    let big = format!(
        "{{\"resourceType\":\"Bundle\",\"pad\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let res = post()
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let res = post()
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(app.referral_count().await, 0);
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
}

on_both_databases!(
    each_kind_of_bad_input_gets_a_precise_answer_and_changes_nothing,
    all_problems_are_reported_together,
    request_rules_are_enforced_before_the_body_is_read,
);
