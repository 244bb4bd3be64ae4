//! Status events from providers, and the GP seeing them on the referral.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::FakeProvider;
use serde_json::{Value, json};

/// A referral from Y90001 (routed to prospects), delivered.
async fn delivered(db: Db) -> (TestApp, String, FakeProvider) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let reply = app.send("gp-a", &referral()).await;
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.deliver().await;
    (app, id, provider)
}

/// Posts a status event as provider `client`.
pub async fn post(
    app: &TestApp,
    client: &str,
    referral: &str,
    request_id: &str,
    body: &Value,
) -> Reply {
    let res = app
        .client
        .post(app.url(&format!("/provider/v1/referrals/{referral}/events")))
        .bearer_auth(token(client))
        .header("X-Request-Id", request_id)
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .unwrap();
    Reply::from(res).await
}

fn event(name: &str) -> Value {
    let mut e = json!({"event": name, "occurred_at": just_now()});
    match name {
        "declined" => e["reason"] = json!("failed-contact"),
        "closed" => e["reason"] = json!("completed"),
        "job-start" => {
            e["start_date"] = json!("2026-11-30");
            e["hours_per_week"] = json!(16);
        }
        _ => {}
    }
    e
}

/// A day `days` ago at 09:00 UTC, as RFC 3339.
fn days_ago(days: i64) -> String {
    let day =
        fhir_sdk::time::OffsetDateTime::now_utc().date() - fhir_sdk::time::Duration::days(days);
    format!("{day}T09:00:00Z")
}

async fn the_whole_journey_is_recorded_and_the_gp_sees_it(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    // Delivered 200 days ago, so that 26 weeks of work fit before today.
    delivered_days_ago(db, &app, &id, 200).await;
    let journey = [
        ("accepted", 199),
        ("contacted", 198),
        ("engaged", 197),
        ("action-plan-agreed", 196),
        ("job-start", 190),
        ("sustained-13-weeks", 190 - 91),
        ("sustained-26-weeks", 190 - 182),
        ("closed", 1),
    ];
    for (name, days) in journey {
        let mut body = event(name);
        body["occurred_at"] = json!(days_ago(days));
        let reply = post(
            &app,
            "prospects",
            &id,
            &uuid::Uuid::new_v4().to_string(),
            &body,
        )
        .await;
        assert_eq!(reply.status, 201, "{name}: {}", reply.text);
        assert_eq!(reply.json()["event"], name);
    }
    let read = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await;
    assert_eq!(read.status, 200);
    let sr = read.json();
    serde_json::from_value::<fhir_sdk::r4b::resources::ServiceRequest>(sr.clone())
        .expect("an R4 ServiceRequest with contained Tasks");
    let milestones: Vec<&str> = sr["contained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["businessStatus"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(milestones, journey.map(|(name, _)| name));
    let job = &sr["contained"][4];
    assert_eq!(job["executionPeriod"]["start"], days_ago(190).as_str());
    assert!(job["output"].to_string().contains("2026-11-30"));
    assert!(sr["extension"].to_string().contains("\"closed\""));
    // Nothing may follow closed.
    let after = post(
        &app,
        "prospects",
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &event("engaged"),
    )
    .await;
    after.assert_issue(409, "REC_CONFLICT", "");
}

async fn impossible_transitions_are_conflicts_with_a_reason(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let early = post(
        &app,
        "prospects",
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &event("engaged"),
    )
    .await;
    early.assert_issue(409, "REC_CONFLICT", "");
    assert_eq!(
        post(
            &app,
            "prospects",
            &id,
            &uuid::Uuid::new_v4().to_string(),
            &event("accepted")
        )
        .await
        .status,
        201
    );
    let sustained = post(
        &app,
        "prospects",
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &event("sustained-13-weeks"),
    )
    .await;
    assert_eq!(sustained.status, 409);
    assert!(sustained.text.contains("job start"), "{}", sustained.text);
    // Missing details are unprocessable.
    let bare_job = json!({"event": "job-start", "occurred_at": "2026-11-21"});
    let reply = post(
        &app,
        "prospects",
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &bare_job,
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.issues().len(), 2, "start date and hours both named");
    let junk = post(
        &app,
        "prospects",
        &id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"event": "x"}),
    )
    .await;
    assert_eq!(junk.status, 400);
    let events = app.store.events_for(&id).await.unwrap();
    assert_eq!(events.len(), 1);
}

async fn a_repeated_event_is_idempotent(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let request = uuid::Uuid::new_v4().to_string();
    let first = post(&app, "prospects", &id, &request, &event("accepted")).await;
    let again = post(&app, "prospects", &id, &request, &event("accepted")).await;
    assert_eq!((first.status, again.status), (201, 200));
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(app.store.events_for(&id).await.unwrap().len(), 1);
}

async fn a_decline_maps_to_a_bars_rejection_reason(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let no_reason = json!({"event": "declined", "occurred_at": "2026-11-21"});
    assert_eq!(
        post(
            &app,
            "prospects",
            &id,
            &uuid::Uuid::new_v4().to_string(),
            &no_reason
        )
        .await
        .status,
        422
    );
    assert_eq!(
        post(
            &app,
            "prospects",
            &id,
            &uuid::Uuid::new_v4().to_string(),
            &event("declined")
        )
        .await
        .status,
        201
    );
    let sr = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await
        .json();
    let task = &sr["contained"][0];
    assert_eq!(task["status"], "rejected");
    assert_eq!(
        task["statusReason"]["coding"][0]["system"],
        "https://fhir.nhs.uk/CodeSystem/rejected-reasons-bars"
    );
    assert_eq!(task["statusReason"]["coding"][0]["code"], "FC");
}

async fn only_the_provider_that_has_the_referral_may_report(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let rid = || uuid::Uuid::new_v4().to_string();
    post(&app, "bchft", &id, &rid(), &event("accepted"))
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    post(&app, "gp-a", &id, &rid(), &event("accepted"))
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    post(
        &app,
        "prospects",
        &uuid::Uuid::new_v4().to_string(),
        &rid(),
        &event("accepted"),
    )
    .await
    .assert_issue(404, "REC_NOT_FOUND", "");
    // Accepted but not yet delivered: the provider cannot know of it.
    let waiting = app.send("gp-a", &referral()).await.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    post(&app, "prospects", &waiting, &rid(), &event("accepted"))
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    let anonymous = app
        .client
        .post(app.url(&format!("/provider/v1/referrals/{id}/events")))
        .json(&event("accepted"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "referral.event"
        && a.client_id.as_deref() == Some("bchft")
        && a.http_status == Some(403)));
    assert!(app.store.events_for(&id).await.unwrap().is_empty());
}

on_both_databases!(
    the_whole_journey_is_recorded_and_the_gp_sees_it,
    impossible_transitions_are_conflicts_with_a_reason,
    a_repeated_event_is_idempotent,
    a_decline_maps_to_a_bars_rejection_reason,
    only_the_provider_that_has_the_referral_may_report,
);

async fn providers_may_send_fhir_task_updates_under_the_same_rules(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let task = |code: &str, extra: Value| {
        let mut t = json!({
            "resourceType": "Task",
            "status": "in-progress",
            "intent": "order",
            "basedOn": [{"reference": format!("ServiceRequest/{id}")}],
            "businessStatus": {"coding": [{"system": "https://thrive-gateway.nhs.uk/CodeSystem/referral-milestone", "code": code}]},
            "executionPeriod": {"start": just_now()},
        });
        if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
            t.extend(extra.clone());
        }
        t
    };
    let send = |body: Value, client: &'static str| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(app.url("/provider/v1/fhir/Task"))
                .bearer_auth(token(client))
                .header("Content-Type", "application/fhir+json")
                .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            Reply::from(res).await
        }
    };
    assert_eq!(
        send(task("accepted", json!({})), "prospects").await.status,
        201
    );
    assert_eq!(
        send(task("engaged", json!({})), "prospects").await.status,
        201
    );
    let job = task(
        "job-start",
        json!({"input": [
            {"type": {"text": "start_date"}, "valueDate": "2026-12-01"},
            {"type": {"text": "hours_per_week"}, "valueDecimal": 20}
        ]}),
    );
    let reply = send(job, "prospects").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let output = reply.json()["output"].clone();
    assert!(
        output
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["type"]["text"] == "hours_per_week" && o["valueString"] == "20.0"),
        "the Task as recorded carries the job start's hours: {output}"
    );
    // Same rules: impossible transitions, other providers, malformed Tasks.
    send(task("accepted", json!({})), "prospects")
        .await
        .assert_issue(409, "REC_CONFLICT", "");
    send(task("sustained-13-weeks", json!({})), "bchft")
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    send(json!({"resourceType": "Task"}), "prospects")
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "Task");
    let sr = app
        .get("gp-a", &format!("/fhir/r4/ServiceRequest/{id}"))
        .await
        .json();
    assert_eq!(sr["contained"].as_array().unwrap().len(), 3);
}

on_both_databases!(providers_may_send_fhir_task_updates_under_the_same_rules);

/// A Task reporting `code` for `referral`, happening now.
pub fn task(referral: &str, code: &str) -> Value {
    json!({
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "basedOn": [{"reference": format!("ServiceRequest/{referral}")}],
        "businessStatus": {"coding": [{"system": "https://thrive-gateway.nhs.uk/CodeSystem/referral-milestone", "code": code}]},
        "executionPeriod": {"start": just_now()},
    })
}

/// Posts a FHIR Task as provider `client` with this request id.
pub async fn post_task(app: &TestApp, client: &str, request_id: &str, body: &Value) -> Reply {
    let res = app
        .client
        .post(app.url("/provider/v1/fhir/Task"))
        .bearer_auth(token(client))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", request_id)
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply::from(res).await
}

async fn a_posted_task_is_created_where_the_provider_can_read_it(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let request = uuid::Uuid::new_v4().to_string();
    let created = post_task(&app, "prospects", &request, &task(&id, "accepted")).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.headers["content-type"], "application/fhir+json");
    let body = created.json();
    crate::fhir_schema::assert_valid_r4(&body, "a posted Task as recorded");
    serde_json::from_value::<fhir_sdk::r4b::resources::Task>(body.clone()).expect("an R4 Task");
    assert_eq!(body["resourceType"], "Task");
    assert_eq!(body["businessStatus"]["coding"][0]["code"], "accepted");
    assert_eq!(
        body["basedOn"][0]["reference"],
        format!("ServiceRequest/{id}").as_str()
    );
    let task_id = body["id"].as_str().unwrap().to_owned();
    let location = created.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/provider/v1/fhir/Task/{task_id}"));
    assert_eq!(
        app.store.events_for(&id).await.unwrap()[0].id,
        task_id,
        "the Task is the recorded event"
    );

    // Read where Location says, by the provider that posted it.
    let read = app.get("prospects", &location).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.headers["content-type"], "application/fhir+json");
    assert_eq!(read.json(), body);
    // The same request again: 200, the same Task at the same place.
    let again = post_task(&app, "prospects", &request, &task(&id, "accepted")).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["location"].to_str().unwrap(), location);
    assert_eq!(again.json()["id"], task_id.as_str());
    // Nobody else's, and nothing at a malformed id.
    app.get("bchft", &location)
        .await
        .assert_issue(404, "REC_NOT_FOUND", "id");
    app.get("prospects", "/provider/v1/fhir/Task/not-a-task")
        .await
        .assert_issue(404, "REC_NOT_FOUND", "id");
    app.get("gp-a", &location)
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    let reads: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.event.read")
        .map(|r| (r.outcome, r.http_status))
        .collect();
    assert_eq!(
        reads,
        [
            ("allowed".to_owned(), Some(200)),
            ("rejected".to_owned(), Some(404)),
            ("rejected".to_owned(), Some(404)),
        ]
    );

    // A Task may name the referral as its focus (the request it fulfils).
    let mut engaged = task(&id, "engaged");
    engaged.as_object_mut().unwrap().remove("basedOn");
    engaged["focus"] = json!({"reference": format!("ServiceRequest/{id}")});
    let reply = post_task(
        &app,
        "prospects",
        &uuid::Uuid::new_v4().to_string(),
        &engaged,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

async fn an_invalid_task_is_refused_at_its_elements(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let send = |body: Value| {
        let app = &app;
        async move { post_task(app, "prospects", &uuid::Uuid::new_v4().to_string(), &body).await }
    };
    let without = |key: &str| {
        let mut t = task(&id, "accepted");
        t.as_object_mut().unwrap().remove(key);
        t
    };
    // Every structural problem at once, each at its element.
    let mut bare = without("businessStatus");
    bare.as_object_mut().unwrap().remove("basedOn");
    bare["focus"] = json!({"reference": "Patient/1"});
    let reply = send(bare).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let at: Vec<String> = reply.issues().into_iter().map(|(_, _, e)| e).collect();
    assert_eq!(at, ["Task.focus.reference", "Task.businessStatus"]);
    send(without("status"))
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "Task.status");
    let mut modified = without("executionPeriod");
    modified["lastModified"] = json!("yesterday");
    let reply = send(modified).await;
    reply.assert_issue(400, "REC_BAD_REQUEST", "Task.lastModified");
    assert!(!reply.text.contains("yesterday"), "{}", reply.text);
    send(without("executionPeriod")).await.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Task.executionPeriod.start",
    );
    send(json!({"resourceType": "Patient"})).await.assert_issue(
        400,
        "REC_BAD_REQUEST",
        "Task.resourceType",
    );
    // Business rules name the element the event part came from.
    send(task(&id, "teleported")).await.assert_issue(
        422,
        "REC_UNPROCESSABLE_ENTITY",
        "Task.businessStatus.coding[0].code",
    );
    let mut future = task(&id, "accepted");
    future["executionPeriod"]["start"] = json!("2999-01-01T00:00:00Z");
    send(future).await.assert_issue(
        422,
        "REC_UNPROCESSABLE_ENTITY",
        "Task.executionPeriod.start",
    );
    let mut job = task(&id, "job-start");
    job["input"] = json!([{"type": {"text": "start_date"}, "valueDate": "2026-12-01"}]);
    let reply = send(job.clone()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let issues = reply.issues();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        issues[0].2, "Task.input",
        "hours_per_week is not there at all"
    );
    job["input"][0]["valueDate"] = json!("01/12/2026");
    job["input"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": {"text": "hours_per_week"}, "valueDecimal": 16}));
    let reply = send(job.clone()).await;
    reply.assert_issue(400, "REC_BAD_REQUEST", "Task.input[0]");
    assert!(!reply.text.contains("01/12/2026"), "{}", reply.text);
    job["input"][0]["valueDate"] = json!("2026-12-01");
    // Nothing was accepted yet: a job start is a conflict, at the event.
    send(job)
        .await
        .assert_issue(409, "REC_CONFLICT", "Task.businessStatus.coding[0].code");
    send(task(&uuid::Uuid::new_v4().to_string(), "accepted"))
        .await
        .assert_issue(404, "REC_NOT_FOUND", "Task.basedOn[0].reference");
    assert!(app.store.events_for(&id).await.unwrap().is_empty());
    let refused = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.event" && r.outcome == "rejected")
        .count();
    assert_eq!(refused, 11, "every refusal is recorded");
}

on_both_databases!(
    a_posted_task_is_created_where_the_provider_can_read_it,
    an_invalid_task_is_refused_at_its_elements,
);

async fn provider_parameters_are_refused_by_name_and_recorded(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let events_of = |referral: &str, query: &str| {
        let app = &app;
        let url = app.url(&format!("/provider/v1/referrals/{referral}/events{query}"));
        async move {
            let res = app
                .client
                .post(url)
                .bearer_auth(token("prospects"))
                .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                .json(&event("accepted"))
                .send()
                .await
                .unwrap();
            Reply::from(res).await
        }
    };
    let refusals = || async {
        app.audit()
            .await
            .into_iter()
            .filter(|r| r.action == "referral.event" && r.outcome == "rejected")
            .map(|r| (r.http_status, r.detail))
            .collect::<Vec<_>>()
    };
    let reply = events_of(&id, "?notify=gp").await;
    reply.assert_issue(400, "REC_BAD_REQUEST", "notify");
    assert_eq!(reply.headers["content-type"], "application/fhir+json");
    assert!(!reply.text.contains("gp\""), "{}", reply.text);
    let reply = events_of("9990000018", "").await;
    assert_eq!(reply.issues()[0].2, "referral_id");
    reply.assert_issue(404, "REC_NOT_FOUND", "referral_id");
    assert!(!reply.text.contains("9990000018"), "{}", reply.text);
    let recorded = refusals().await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0].0, Some(400));
    assert!(recorded[0].1.contains("@notify"), "{}", recorded[0].1);
    assert_eq!(recorded[1].0, Some(404));
    assert!(recorded[1].1.contains("@referral_id"), "{}", recorded[1].1);

    // A request header at fault is named too.
    let res = app
        .client
        .post(app.url(&format!("/provider/v1/referrals/{id}/events")))
        .bearer_auth(token("prospects"))
        .header("X-Request-Id", "9990000018")
        .json(&event("accepted"))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(res).await;
    let at: Vec<String> = reply.issues().into_iter().map(|(_, _, e)| e).collect();
    assert_eq!(at, ["X-Request-Id", "X-Correlation-Id"], "{}", reply.text);
    assert!(!reply.text.contains("9990000018"), "{}", reply.text);
    assert_eq!(refusals().await.len(), 3);

    // The FHIR Task endpoints take FHIR's _format (JSON) and _pretty, nothing else.
    let task_at = |query: &str| {
        let app = &app;
        let url = app.url(&format!("/provider/v1/fhir/Task{query}"));
        let body = task(&id, "accepted");
        async move {
            let res = app
                .client
                .post(url)
                .bearer_auth(token("prospects"))
                .header("Content-Type", "application/fhir+json")
                .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            Reply::from(res).await
        }
    };
    task_at("?_format=xml")
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "_format");
    assert_eq!(refusals().await.len(), 4);
    let created = task_at("?_format=json&_pretty=true").await;
    assert_eq!(created.status, 201, "{}", created.text);
    let location = created.headers["location"].to_str().unwrap().to_owned();
    app.get("prospects", &format!("{location}?_summary=true"))
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "_summary");
}

on_both_databases!(provider_parameters_are_refused_by_name_and_recorded);

async fn a_json_event_that_does_not_read_is_refused_by_field(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    let send = |body: Value| {
        let app = &app;
        let id = &id;
        async move {
            post(
                app,
                "prospects",
                id,
                &uuid::Uuid::new_v4().to_string(),
                &body,
            )
            .await
        }
    };
    let at = |reply: &Reply| {
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.headers["content-type"], "application/fhir+json");
        let mut at: Vec<String> = reply.issues().into_iter().map(|(_, _, e)| e).collect();
        at.sort();
        at
    };
    let reply =
        send(json!({"event": 5, "occurred_at": just_now(), "notes": "Matthew, knee pain"})).await;
    assert_eq!(at(&reply), ["event", "notes"]);
    assert!(
        !reply.text.contains("Matthew") && !reply.text.contains("knee"),
        "{}",
        reply.text
    );
    let reply = send(json!({"event": "accepted"})).await;
    assert_eq!(at(&reply), ["occurred_at"]);
    assert_eq!(reply.issues()[0].1, "required");
    let reply = send(json!({
        "event": "job-start", "occurred_at": just_now(),
        "start_date": 20261201, "hours_per_week": "sixteen"
    }))
    .await;
    assert_eq!(at(&reply), ["hours_per_week", "start_date"]);
    assert!(
        !reply.text.contains("sixteen") && !reply.text.contains("20261201"),
        "{}",
        reply.text
    );
    let reply = send(json!(["accepted"])).await;
    assert_eq!(at(&reply), [""], "not an object: no field to name");
    let recorded: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.event" && r.outcome == "rejected")
        .map(|r| r.http_status)
        .collect();
    assert_eq!(recorded, [Some(400); 4]);
    assert!(app.store.events_for(&id).await.unwrap().is_empty());
}

on_both_databases!(a_json_event_that_does_not_read_is_refused_by_field);

/// Posts `name` dated `occurred_at` (JSON), with a fresh request id.
async fn dated(app: &TestApp, id: &str, name: &str, occurred_at: &str) -> Reply {
    let mut body = event(name);
    body["occurred_at"] = json!(occurred_at);
    post(
        app,
        "prospects",
        id,
        &uuid::Uuid::new_v4().to_string(),
        &body,
    )
    .await
}

/// Asserts a 422 business-rule refusal at `at`, whose diagnostic says `why`.
fn refused_date(reply: &Reply, at: &str, why: &str) {
    assert_eq!(reply.status, 422, "{}", reply.text);
    let body = reply.json();
    let issues = body["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{}", reply.text);
    assert_eq!(issues[0]["code"], "business-rule");
    assert_eq!(
        issues[0]["details"]["coding"][0]["code"],
        "REC_UNPROCESSABLE_ENTITY"
    );
    assert_eq!(issues[0]["expression"][0], at);
    assert!(
        issues[0]["diagnostics"].as_str().unwrap().contains(why),
        "{}",
        reply.text
    );
}

async fn events_are_not_dated_before_the_delivery_or_the_last_milestone(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    delivered_days_ago(db, &app, &id, 10).await;
    refused_date(
        &dated(&app, &id, "accepted", &days_ago(11)).await,
        "occurred_at",
        "before the referral was delivered",
    );
    let mut before = task(&id, "accepted");
    before["executionPeriod"]["start"] = json!(days_ago(11));
    let reply = post_task(
        &app,
        "prospects",
        &uuid::Uuid::new_v4().to_string(),
        &before,
    )
    .await;
    refused_date(
        &reply,
        "Task.executionPeriod.start",
        "before the referral was delivered",
    );
    before.as_object_mut().unwrap().remove("executionPeriod");
    before["lastModified"] = json!(days_ago(11));
    let reply = post_task(
        &app,
        "prospects",
        &uuid::Uuid::new_v4().to_string(),
        &before,
    )
    .await;
    refused_date(
        &reply,
        "Task.lastModified",
        "before the referral was delivered",
    );
    // Dates far out are refused in words, not by a panic.
    let reply = dated(&app, &id, "accepted", "9999-12-31").await;
    reply.assert_issue(422, "REC_UNPROCESSABLE_ENTITY", "occurred_at");
    refused_date(
        &dated(&app, &id, "accepted", "0000-01-01").await,
        "occurred_at",
        "before the referral was delivered",
    );
    refused_date(
        &dated(&app, &id, "accepted", "0001-01-01T00:00:00Z").await,
        "occurred_at",
        "before the referral was delivered",
    );

    assert_eq!(dated(&app, &id, "accepted", &days_ago(5)).await.status, 201);
    refused_date(
        &dated(&app, &id, "contacted", &days_ago(6)).await,
        "occurred_at",
        "before the previous milestone (accepted)",
    );
    // A date covers its whole day: the day of the last milestone is not before it.
    let day = &days_ago(5)[..10];
    let reply = dated(&app, &id, "contacted", day).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let events = app.store.events_for(&id).await.unwrap();
    assert_eq!(events.len(), 2);
    let refusals: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "referral.event" && r.outcome == "rejected")
        .map(|r| r.http_status)
        .collect();
    assert_eq!(refusals, [Some(422); 7]);
}

async fn sustained_work_is_counted_from_the_job_start(db: Db) {
    let (app, id, _provider) = delivered(db).await;
    delivered_days_ago(db, &app, &id, 200).await;
    for (name, days) in [("accepted", 199), ("engaged", 198), ("job-start", 190)] {
        let reply = dated(&app, &id, name, &days_ago(days)).await;
        assert_eq!(reply.status, 201, "{name}: {}", reply.text);
    }
    let weeks_in = |weeks: i64| days_ago(190 - weeks * 7);
    refused_date(
        &dated(&app, &id, "sustained-13-weeks", &weeks_in(12)).await,
        "occurred_at",
        "at least 13 weeks (91 days) after the job-start",
    );
    let reply = dated(&app, &id, "sustained-13-weeks", &weeks_in(13)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    refused_date(
        &dated(&app, &id, "sustained-26-weeks", &weeks_in(25)).await,
        "occurred_at",
        "at least 26 weeks (182 days) after the job-start",
    );
    let mut task_26 = task(&id, "sustained-26-weeks");
    task_26["executionPeriod"]["start"] = json!(weeks_in(25));
    let reply = post_task(
        &app,
        "prospects",
        &uuid::Uuid::new_v4().to_string(),
        &task_26,
    )
    .await;
    refused_date(&reply, "Task.executionPeriod.start", "at least 26 weeks");
    let reply = dated(&app, &id, "sustained-26-weeks", &weeks_in(26)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let recorded: Vec<String> = app
        .store
        .events_for(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.to_string())
        .collect();
    assert_eq!(
        recorded,
        [
            "accepted",
            "engaged",
            "job-start",
            "sustained-13-weeks",
            "sustained-26-weeks"
        ]
    );
}

on_both_databases!(
    events_are_not_dated_before_the_delivery_or_the_last_milestone,
    sustained_work_is_counted_from_the_job_start,
);

async fn programme_statistics_suppress_small_numbers(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let mut prospects = Vec::new();
    for _ in 0..7 {
        prospects.push(
            app.send("gp-a", &referral()).await.json()["entry"][1]["resource"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(app.send("gp-a", &referral_from("Y90010")).await.status, 200);
    app.deliver().await;
    for (n, id) in prospects.iter().enumerate() {
        let rid = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            post(&app, "prospects", id, &rid, &event("accepted"))
                .await
                .status,
            201
        );
        if n < 2 {
            let rid = uuid::Uuid::new_v4().to_string();
            assert_eq!(
                post(&app, "prospects", id, &rid, &event("engaged"))
                    .await
                    .status,
                201
            );
        }
    }
    let today = fhir_sdk::time::OffsetDateTime::now_utc().date();
    let query = format!(
        "/reports/v1/programme?from={}&to={}&group_by=provider",
        today - fhir_sdk::time::Duration::days(1),
        today + fhir_sdk::time::Duration::days(1)
    );
    let reply = app.get("auditor", &query).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let row = |g: &str| {
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == g)
            .unwrap()
            .clone()
    };
    assert_eq!(row("prospects")["measures"]["received"], 5, "7 rounds to 5");
    assert_eq!(row("prospects")["measures"]["accepted"], 5);
    assert_eq!(row("prospects")["measures"]["engaged"], "<5");
    assert_eq!(row("bchft")["measures"]["received"], "<5");
    assert_eq!(row("total")["measures"]["received"], 10, "8 rounds to 10");
    for id in &prospects {
        assert!(
            !reply.text.contains(id.as_str()),
            "no row identifies a referral"
        );
    }
    assert_eq!(app.get("operator", &query).await.status, 200);
    app.get("gp-a", &query)
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    app.get(
        "auditor",
        "/reports/v1/programme?from=2026-01-01&to=2027-01-01&group_by=colour",
    )
    .await
    .assert_issue(400, "REC_BAD_REQUEST", "");

    // The same from the command line, as CSV.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("THRIVE_ENV")
        .env("THRIVE__DATABASE__URL", &app.database_url)
        .args([
            "report",
            "programme",
            "--group-by",
            "locality",
            "--format",
            "csv",
            "--from",
        ])
        .arg((today - fhir_sdk::time::Duration::days(1)).to_string())
        .arg("--to")
        .arg((today + fhir_sdk::time::Duration::days(1)).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.starts_with("group,received,accepted,declined,engaged"),
        "{csv}"
    );
    assert!(csv.contains("\nsandwell,5,5,0,<5,"), "{csv}");
    assert!(csv.contains("\ndudley,<5,"), "{csv}");
}

on_both_databases!(programme_statistics_suppress_small_numbers);

async fn the_reporting_extract_is_pseudonymised_and_honours_the_opt_out(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let mut referrals = Vec::new();
    for nhs in ["9990000018", "9990000026", "9990000034"] {
        let mut msg = referral();
        set(
            &mut msg,
            &format!("{}/identifier/0/value", at::PATIENT),
            json!(nhs),
        );
        let reply = app.send("gp-a", &msg).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        referrals.push(
            reply.json()["entry"][1]["resource"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.deliver().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("opt-out.txt");
    std::fs::write(&list, "# National Data Opt-out\n999 000 0026\n").unwrap();
    let key = dir.path().join("reporting-v1.key");
    std::fs::write(&key, "5d".repeat(32)).unwrap();
    let today = fhir_sdk::time::OffsetDateTime::now_utc().date();
    let run = |with_keys: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("THRIVE_ENV")
            .env("THRIVE__DATABASE__URL", &app.database_url)
            .env("THRIVE__REPORTING__OPT_OUT_FILE", &list)
            .env("THRIVE__KEYS__STORAGE__ACTIVE", "v1")
            .env(
                "THRIVE__KEYS__STORAGE__VERSIONS__V1__FILE",
                format!("{KEYS}/storage-v1.key"),
            )
            .args(["report", "extract", "--from"])
            .arg((today - fhir_sdk::time::Duration::days(1)).to_string())
            .arg("--to")
            .arg((today + fhir_sdk::time::Duration::days(1)).to_string());
        if with_keys {
            cmd.env("THRIVE__KEYS__PSEUDONYM__REPORTING__ACTIVE", "v1")
                .env(
                    "THRIVE__KEYS__PSEUDONYM__REPORTING__VERSIONS__V1__FILE",
                    &key,
                );
        }
        cmd.output().unwrap()
    };
    let refused = run(false);
    assert!(
        !refused.status.success(),
        "no extract without the reporting key"
    );
    let out = run(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "subject,provider,locality,programme,month,milestones"
    );
    assert_eq!(
        lines.len(),
        3,
        "two people, the opted-out one left out: {csv}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("v1:") && l.contains(",prospects,sandwell,"))
    );
    for nhs in ["9990000018", "9990000026", "9990000034"] {
        assert!(!csv.contains(nhs), "no NHS number in an extract");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 left out"));
    // Direct care is untouched: the opted-out person's referral was delivered.
    assert_eq!(
        app.store.deliveries_for(&referrals[1]).await.unwrap()[0]
            .state
            .as_str(),
        "delivered"
    );
}

on_both_databases!(the_reporting_extract_is_pseudonymised_and_honours_the_opt_out);
