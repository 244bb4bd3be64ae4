//! The information-governance audit trail: one chained record for every decision and
//! disclosure, naming the subject only by the audit pseudonym; tampering of every
//! kind is found; auditors list, read, search by person and export, and every one of
//! their calls is itself recorded.

use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::FakeProvider;
use base64::Engine;
use serde_json::{Value, json};
use thrive_gateway::audit::checkpoint::{Signer, VerifyingKeys};
use thrive_gateway::audit::{Tamper, export};
use thrive_gateway::config::CheckpointSettings;
use thrive_gateway::pseudonym::PseudonymKeys;

fn checkpoint_settings() -> CheckpointSettings {
    CheckpointSettings {
        key_id: "test-audit-1".into(),
        private_key_file: Some(format!("{KEYS}/audit-checkpoint.pem").into()),
        public_key_file: format!("{KEYS}/audit-checkpoint.pub.pem").into(),
        interval_seconds: 300,
    }
}

fn verifying_keys() -> VerifyingKeys {
    VerifyingKeys::from_settings(&checkpoint_settings()).unwrap()
}

fn audit_keys() -> PseudonymKeys {
    let hex = std::fs::read_to_string(format!("{KEYS}/pseudonym-audit-v1.key")).unwrap();
    PseudonymKeys::from_hex("audit", "v1", [("v1", hex.trim())]).unwrap()
}

/// A gateway with a provider, one referral accepted and delivered, one rejected.
async fn busy_gateway(db: Db) -> (TestApp, FakeProvider, String) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.deliver().await, 1);
    let mut bad = referral();
    set(
        &mut bad,
        "/entry/2/resource/identifier/0/value",
        json!("9990000019"),
    );
    assert_eq!(app.send("gp-a", &bad).await.status, 422);
    // Everything written so far sealed into the chain (the gateway's sealer would in
    // a moment), so the tampering below meets records in their places.
    app.store.seal_audit().await.expect("sealed");
    assert_eq!(app.store.audit_pending().await.expect("counted"), 0);
    (app, provider, id)
}

async fn verify(app: &TestApp) -> thrive_gateway::audit::Verification {
    thrive_gateway::audit::verify(app.store.as_ref(), Some(&verifying_keys()))
        .await
        .unwrap()
}

async fn every_decision_is_one_chained_record_naming_the_subject_by_pseudonym(db: Db) {
    let (app, _provider, id) = busy_gateway(db).await;
    let rows = app.audit().await;
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert!(
        actions.contains(&("referral.new", "accepted")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("delivery.referral", "delivered")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("referral.message", "rejected")),
        "{actions:?}"
    );

    // The chain: places 1..n in order, each linking to the one before.
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=rows.len() as i64).collect::<Vec<_>>());
    assert_eq!(
        rows[0].prev_hash.as_deref(),
        Some(thrive_gateway::audit::GENESIS)
    );
    for pair in rows.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let v = verify(&app).await;
    assert_eq!(v.problem, None);
    assert_eq!(v.records, rows.len() as u64);

    // Every record about the referral names the subject by the audit pseudonym.
    let subject = audit_keys().pseudonym("9990000018").into_string();
    let about: Vec<_> = rows
        .iter()
        .filter(|r| r.referral_id.as_deref() == Some(id.as_str()))
        .collect();
    assert!(about.len() >= 2);
    for r in &about {
        assert_eq!(r.subject.as_deref(), Some(subject.as_str()), "{}", r.action);
    }
    // The disclosure names recipient, mapping and key versions as columns.
    let disclosure = rows
        .iter()
        .find(|r| r.action == "delivery.referral")
        .unwrap();
    assert_eq!(disclosure.recipient.as_deref(), Some("prospects"));
    assert!(
        disclosure
            .mapping_version
            .as_deref()
            .is_some_and(|m| m.starts_with("prospects")),
        "{:?}",
        disclosure.mapping_version
    );
    assert_eq!(disclosure.key_version.as_deref(), Some("v1"));
    let accepted = rows.iter().find(|r| r.action == "referral.new").unwrap();
    assert_eq!(accepted.recipient.as_deref(), Some("prospects"));
    assert!(
        accepted
            .mapping_version
            .as_deref()
            .is_some_and(|m| m.starts_with("routing@"))
    );

    // No patient data anywhere in the trail.
    let all = rows
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join("\n");
    for never in FIXTURE_PATIENT_DATA {
        assert!(!all.contains(never), "the audit trail holds patient data");
    }
}

async fn nhs_identity_headers_are_kept_as_the_actor(db: Db) {
    let app = TestApp::spawn(db).await;
    let org = base64::engine::general_purpose::STANDARD.encode(
        json!({"resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}], "name": "Test Practice"}).to_string(),
    );
    let device = base64::engine::general_purpose::STANDARD.encode(
        json!({"resourceType": "Device", "deviceName": [{"name": "Test GP System", "type": "manufacturer-name"}]}).to_string(),
    );
    let reply = app
        .client
        .post(app.url("/fhir/r4/$process-message"))
        .bearer_auth(token("gp-a"))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .header("NHSD-End-User-Organisation", org)
        .header("NHSD-Requesting-Software", device)
        .body(referral().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let rows = app.audit().await;
    let record = rows.iter().find(|r| r.action == "referral.new").unwrap();
    let identity: Value = serde_json::from_str(record.actor_identity.as_deref().unwrap()).unwrap();
    assert_eq!(identity["organisation"]["identifier"][0]["value"], "Y90001");
    assert_eq!(identity["software"]["name"], "Test GP System");
    assert_eq!(verify(&app).await.problem, None);
}

async fn a_changed_record_is_found(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET outcome = 'rejected' WHERE seq = 2",
    )
    .await;
    assert_eq!(verify(&app).await.problem, Some(Tamper::Changed { seq: 2 }));
}

async fn a_removed_record_is_found(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    execute_sql(
        db,
        &app.database_url,
        "DELETE FROM audit_events WHERE seq = 2",
    )
    .await;
    assert_eq!(verify(&app).await.problem, Some(Tamper::Removed { seq: 3 }));
}

async fn a_removed_record_is_found_even_when_the_rest_are_renumbered(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    execute_sql(
        db,
        &app.database_url,
        "DELETE FROM audit_events WHERE seq = 2",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = -seq WHERE seq > 2",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq < 0",
    )
    .await;
    execute_sql(db, &app.database_url, "UPDATE audit_head SET seq = seq - 1").await;
    assert_eq!(verify(&app).await.problem, Some(Tamper::Removed { seq: 2 }));
}

async fn the_last_record_removed_is_found_by_the_head(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let (last, _) = app.store.audit_head().await.unwrap();
    execute_sql(
        db,
        &app.database_url,
        &format!("DELETE FROM audit_events WHERE seq = {last}"),
    )
    .await;
    assert_eq!(
        verify(&app).await.problem,
        Some(Tamper::Removed { seq: last })
    );
}

async fn an_inserted_record_is_found_even_with_a_valid_hash(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let rows = app.audit().await;
    // A forger makes room after record 1 and writes a record that links to it, with a
    // correct hash of its own content: only the next record's link gives it away.
    let mut forged = rows[0].clone();
    forged.action = "referral.read".into();
    forged.outcome = "allowed".into();
    forged.actor_identity = None;
    forged.referral_id = None;
    forged.subject = None;
    forged.recipient = None;
    forged.request_id = None;
    forged.correlation_id = None;
    forged.mapping_version = None;
    forged.key_version = None;
    let prev = rows[0].hash.clone().unwrap();
    let hash = forged.entry().hash(&prev);
    if db == Db::Sqlite {
        // SQLite's triggers refuse a chained record that does not extend the head;
        // someone who can write to the file can drop them, so verify must not rely
        // on them.
        let forgery = format!(
            "INSERT INTO audit_events (seq, recorded_at, action, outcome, detail, prev_hash, hash) \
             SELECT 2, recorded_at, 'referral.read', 'allowed', detail, '{prev}', '{hash}' \
             FROM audit_events WHERE seq = 1"
        );
        let refused = try_execute_sql(db, &app.database_url, &forgery).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("audit chain head moved")),
            "{refused:?}"
        );
        for trigger in ["audit_chain_extends_head", "audit_chain_moves_head"] {
            execute_sql(db, &app.database_url, &format!("DROP TRIGGER {trigger}")).await;
        }
    }
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = -seq WHERE seq > 1",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = -seq + 1 WHERE seq < 0",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "INSERT INTO audit_events (seq, recorded_at, action, outcome, http_status, client_id, role, detail, prev_hash, hash) \
             SELECT 2, recorded_at, 'referral.read', 'allowed', http_status, client_id, role, detail, '{prev}', '{hash}' \
             FROM audit_events WHERE seq = 1"
        ),
    )
    .await;
    execute_sql(db, &app.database_url, "UPDATE audit_head SET seq = seq + 1").await;
    assert_eq!(
        verify(&app).await.problem,
        Some(Tamper::Inserted { seq: 2 })
    );
}

async fn reordered_records_are_found(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = -1 WHERE seq = 2",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = 2 WHERE seq = 3",
    )
    .await;
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET seq = 3 WHERE seq = -1",
    )
    .await;
    assert_eq!(
        verify(&app).await.problem,
        Some(Tamper::Reordered { seq: 2 })
    );
}

async fn a_record_written_outside_the_chain_is_found(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    execute_sql(
        db,
        &app.database_url,
        "INSERT INTO audit_events (recorded_at, action, outcome, detail) \
         SELECT recorded_at, 'referral.read', 'allowed', '{}' FROM audit_events WHERE seq = 1",
    )
    .await;
    assert!(matches!(
        verify(&app).await.problem,
        Some(Tamper::Unchained { .. })
    ));
}

async fn a_rewritten_chain_is_caught_by_the_signed_checkpoint(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let signer = Signer::from_settings(&checkpoint_settings()).unwrap();
    let c = signer
        .checkpoint(app.store.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verify(&app).await.checkpoints, 1);
    // Nothing new: no second checkpoint of the same head.
    assert!(
        signer
            .checkpoint(app.store.as_ref())
            .await
            .unwrap()
            .is_none()
    );

    // A tamperer without the private key rehashes the whole chain after a change.
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET outcome = 'rejected' WHERE seq = 1",
    )
    .await;
    let mut prev = thrive_gateway::audit::GENESIS.to_owned();
    for row in app.store.audit_chain(0, 1000).await.unwrap() {
        let hash = row.entry().hash(&prev);
        execute_sql(
            db,
            &app.database_url,
            &format!(
                "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}' WHERE seq = {}",
                row.seq.unwrap()
            ),
        )
        .await;
        prev = hash;
    }
    execute_sql(
        db,
        &app.database_url,
        &format!("UPDATE audit_head SET hash = '{prev}'"),
    )
    .await;
    let problem = verify(&app).await.problem;
    assert!(
        matches!(&problem, Some(Tamper::Checkpoint { seq, .. }) if *seq == c.seq),
        "{problem:?}"
    );

    // And a forged checkpoint over the new head does not verify with the real key.
    let forger = Signer::from_settings(&CheckpointSettings {
        private_key_file: Some(format!("{KEYS}/audit-checkpoint-other.pem").into()),
        ..checkpoint_settings()
    })
    .unwrap();
    execute_sql(db, &app.database_url, "DELETE FROM audit_checkpoints").await;
    forger
        .checkpoint(app.store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let problem = verify(&app).await.problem;
    assert!(
        matches!(&problem, Some(Tamper::Checkpoint { why, .. }) if why.contains("does not verify")),
        "{problem:?}"
    );
}

async fn two_gateways_writing_at_once_keep_one_unbroken_chain(db: Db) {
    let app = TestApp::spawn(db).await;
    let other = app.second("").await;
    let sends = (0..12).map(|n| {
        let target = if n % 2 == 0 { &app } else { &other };
        async move { target.send("gp-a", &referral()).await.status }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let v = verify(&app).await;
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 12);
    let (head, _) = app.store.audit_head().await.unwrap();
    assert_eq!(head, 12);
}

async fn auditor_get(app: &TestApp, client: &str, path: &str) -> Reply {
    app.get(client, path).await
}

async fn only_auditors_read_the_trail_and_every_call_is_recorded(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    for client in ["operator", "gp-a", "prospects"] {
        let reply = auditor_get(&app, client, "/audit/v1/records").await;
        reply.assert_issue(403, "REC_FORBIDDEN", "");
    }
    let unauthenticated = app
        .client
        .get(app.url("/audit/v1/records"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let rows = app.audit().await;
    let refused = rows
        .iter()
        .filter(|r| r.action == "audit.list" && r.outcome == "rejected")
        .count();
    assert_eq!(refused, 4, "each refusal is recorded");

    let reply = auditor_get(&app, "auditor", "/audit/v1/records").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let after = app.audit().await;
    let last = after.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.outcome.as_str()),
        ("audit.list", "allowed")
    );
    assert_eq!(last.client_id.as_deref(), Some("auditor"));
    assert_eq!(verify(&app).await.problem, None);
}

async fn auditors_filter_and_page_stably(db: Db) {
    let (app, _p, id) = busy_gateway(db).await;
    for _ in 0..3 {
        assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    }
    // Filter by referral: its acceptance and its delivery.
    let reply = auditor_get(&app, "auditor", &format!("/audit/v1/records?referral={id}")).await;
    let records = reply.json()["records"].as_array().unwrap().clone();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["referral.new", "delivery.referral"]);
    assert!(records.iter().all(|r| r["referral_id"] == id.as_str()));
    // By action and recipient.
    let reply = auditor_get(
        &app,
        "auditor",
        "/audit/v1/records?action=referral.new&recipient=prospects",
    )
    .await;
    assert_eq!(reply.json()["records"].as_array().unwrap().len(), 4);
    let reply = auditor_get(&app, "auditor", "/audit/v1/records?client=gp-b").await;
    assert_eq!(reply.json()["records"].as_array().unwrap().len(), 0);
    // By time: nothing before yesterday.
    let reply = auditor_get(&app, "auditor", "/audit/v1/records?to=2000-01-01").await;
    assert_eq!(reply.json()["records"].as_array().unwrap().len(), 0);
    let reply = auditor_get(&app, "auditor", "/audit/v1/records?from=yesterday").await;
    reply.assert_issue(400, "REC_BAD_REQUEST", "");

    // Paging: pages of two follow the chain; records the queries add land at the end
    // and never shift a page already read.
    let mut seen = Vec::new();
    let mut next: Option<i64> = None;
    loop {
        let path = match next {
            Some(n) => format!("/audit/v1/records?action=referral.new&limit=2&after={n}"),
            None => "/audit/v1/records?action=referral.new&limit=2".into(),
        };
        let page = auditor_get(&app, "auditor", &path).await.json();
        for r in page["records"].as_array().unwrap() {
            seen.push(r["seq"].as_i64().unwrap());
        }
        match page["next"].as_i64() {
            Some(n) => next = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // One record by its number.
    let one = auditor_get(&app, "auditor", &format!("/audit/v1/records/{}", seen[0])).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["seq"], seen[0]);
    assert_eq!(one.json()["action"], "referral.new");
    auditor_get(&app, "auditor", "/audit/v1/records/999999")
        .await
        .assert_issue(404, "REC_NOT_FOUND", "");
}

async fn a_subject_access_request_finds_everything_about_one_person(db: Db) {
    let (app, _p, id) = busy_gateway(db).await;
    // Someone else's referral must not appear.
    let mut other = referral();
    set(
        &mut other,
        "/entry/2/resource/identifier/0/value",
        json!("9434765919"),
    );
    assert_eq!(app.send("gp-a", &other).await.status, 200);

    let post = |body: Value, client: &'static str| {
        let app = &app;
        async move {
            let req = app
                .client
                .post(app.url("/audit/v1/subjects"))
                .bearer_auth(token(client))
                .json(&body);
            Reply::from(req.send().await.unwrap()).await
        }
    };
    post(json!({"nhs_number": "9990000018"}), "operator")
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    post(json!({"nhs_number": "9990000019"}), "auditor")
        .await
        .assert_issue(422, "REC_UNPROCESSABLE_ENTITY", "nhs_number");
    let reply = post(json!({"nhs_number": "999 000 0018"}), "auditor").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["referrals"], json!([id]));
    let disclosures = body["disclosures"].as_array().unwrap();
    assert_eq!(disclosures.len(), 1);
    assert_eq!(disclosures[0]["recipient"], "prospects");
    assert!(!disclosures[0]["fields"].as_array().unwrap().is_empty());
    assert!(
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["referral_id"] == id.as_str())
    );
    assert!(
        !reply.text.contains("9990000018"),
        "the answer names the person only by pseudonym"
    );
    // The answer is paged: one record a page, following `next`, finds them all.
    let all: Vec<Value> = body["records"].as_array().unwrap().clone();
    assert!(all.len() > 1, "enough records to page: {}", all.len());
    let mut paged = Vec::new();
    let mut after = 0;
    // Each lookup is itself recorded about the person, so the trail grows as it is
    // paged: stop once the first answer's records are covered.
    while paged.len() < all.len() {
        let req = app
            .client
            .post(app.url(&format!("/audit/v1/subjects?limit=1&after={after}")))
            .bearer_auth(token("auditor"))
            .json(&json!({"nhs_number": "9990000018"}));
        let page = Reply::from(req.send().await.unwrap()).await.json();
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 1, "a page holds at most its limit");
        paged.extend(records.iter().cloned());
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let seqs = |v: &[Value]| v.iter().map(|r| r["seq"].as_i64()).collect::<Vec<_>>();
    assert_eq!(seqs(&paged[..all.len()]), seqs(&all));
    // The lookup itself is recorded against the subject, without the number.
    let rows = app.audit().await;
    let lookup = rows
        .iter()
        .rev()
        .find(|r| r.action == "audit.subjects" && r.outcome == "allowed")
        .unwrap();
    assert_eq!(lookup.subject, body["subject"].as_str().map(str::to_owned));
    assert!(!format!("{rows:?}").contains("9990000018"));
}

async fn exports_carry_every_record_and_verify_without_the_database(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let signer = Signer::from_settings(&checkpoint_settings()).unwrap();
    signer
        .checkpoint(app.store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let total = app.store.audit_head().await.unwrap().0;

    let fhir = auditor_get(
        &app,
        "auditor",
        "/audit/v1/export?from=2000-01-01&to=2100-01-01&format=fhir",
    )
    .await;
    assert_eq!(fhir.status, 200, "{}", fhir.text);
    let bundle = fhir.json();
    crate::fhir_schema::assert_valid_r4(&bundle, "the FHIR audit export");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert!(
        bundle.get("total").is_none(),
        "bdl-1: no total on a collection"
    );
    let events: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "AuditEvent")
        .collect();
    assert_eq!(
        events.len() as i64,
        total,
        "{:?}",
        events
            .iter()
            .map(|e| e["outcomeDesc"].clone())
            .collect::<Vec<_>>()
    );
    // The disclosure, BALP PrivacyDisclosure at its source: DCM 110106 Export, subtype
    // lifecycle "disclose", recipient agent, patient entity by pseudonym.
    let disclosure = events
        .iter()
        .find(|e| {
            e["type"]["code"] == "110106"
                && e["subtype"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|c| c["code"] == "disclose"))
        })
        .expect("a disclosure event");
    assert_eq!(
        disclosure["meta"]["profile"][0],
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PrivacyDisclosure.Source"
    );
    assert!(
        disclosure["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"]["code"] == "XrequestId"
                && e["what"]["identifier"]["value"].is_string()),
        "the request id is an entity"
    );
    assert!(
        disclosure["agent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"]["coding"][0]["code"] == "IRCP"
                && a["who"]["identifier"]["value"] == "prospects")
    );
    let patient = disclosure["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["role"]["code"] == "1")
        .unwrap();
    assert_eq!(
        patient["what"]["identifier"]["system"],
        export::SUBJECT_SYSTEM
    );
    // Checks out offline with the public key alone.
    let v = export::verify_bundle(&bundle, &verifying_keys()).unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.checkpoints, 1);
    assert_eq!(v.covered as i64, total);
    // A record changed in the file is caught.
    let mut tampered = bundle.clone();
    let ext = tampered["entry"][0]["resource"]["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .replace("\"accepted\"", "\"rejected\"");
    tampered["entry"][0]["resource"]["extension"][0]["valueString"] = json!(ext);
    let v = export::verify_bundle(&tampered, &verifying_keys()).unwrap();
    assert_eq!(v.problem, Some(Tamper::Changed { seq: 1 }));
    // So is a change to what the auditor reads, the record left alone.
    let mut shown = bundle.clone();
    shown["entry"][1]["resource"]["outcome"] = json!("8");
    let v = export::verify_bundle(&shown, &verifying_keys()).unwrap();
    assert_eq!(v.problem, Some(Tamper::Changed { seq: 2 }));
    // Without its checkpoint nothing is proven: linked, but signed by none.
    let mut unsigned = bundle.clone();
    unsigned["entry"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["resource"]["resourceType"] != "Provenance");
    let v = export::verify_bundle(&unsigned, &verifying_keys()).unwrap();
    assert_eq!((v.problem, v.covered), (None, 0));

    let csv = auditor_get(
        &app,
        "auditor",
        "/audit/v1/export?from=2000-01-01&to=2100-01-01&format=csv",
    )
    .await;
    assert_eq!(csv.status, 200);
    let mut lines = csv.text.lines();
    assert_eq!(lines.next().unwrap(), export::CSV_COLUMNS.join(","));
    // Everything so far, now including the FHIR export itself, a row each.
    let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len() as i64, total + 1);
    assert_eq!(&rows[rows.len() - 1][3], "audit.export");
    for never in FIXTURE_PATIENT_DATA {
        assert!(!fhir.text.contains(never) && !csv.text.contains(never));
    }
    auditor_get(
        &app,
        "auditor",
        "/audit/v1/export?from=2000-01-01&to=2100-01-01&format=xml",
    )
    .await
    .assert_issue(400, "REC_BAD_REQUEST", "");
    // The exports are recorded too, the refused one included.
    let rows = app.audit().await;
    let exports = |outcome: &str| {
        rows.iter()
            .filter(|r| r.action == "audit.export" && r.outcome == outcome)
            .count()
    };
    assert_eq!((exports("allowed"), exports("rejected")), (2, 1));
}

/// An export is read and written a page at a time; one spanning several pages is the
/// same whole, contiguous export, in both formats, and verifies on its own.
async fn an_export_longer_than_a_page_is_whole_and_verifies(db: Db) {
    let app = TestApp::spawn(db).await;
    for _ in 0..2_500 {
        app.store
            .append_audit(&audit_record("referral.read"))
            .await
            .unwrap();
    }
    let fhir = auditor_get(
        &app,
        "auditor",
        "/audit/v1/export?from=2000-01-01&to=2100-01-01&format=fhir",
    )
    .await;
    assert_eq!(fhir.status, 200);
    let bundle = fhir.json();
    let seqs: Vec<i64> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "AuditEvent")
        .map(|e| {
            e["fullUrl"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let head = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "every record, once, in order"
    );
    assert!(head >= 2_500);
    let v = export::verify_bundle(&bundle, &verifying_keys()).unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(
        v.covered as i64, head,
        "the signed head covers the whole export"
    );

    let csv = auditor_get(
        &app,
        "auditor",
        "/audit/v1/export?from=2000-01-01&to=2100-01-01&format=csv",
    )
    .await;
    assert_eq!(csv.status, 200);
    let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
    let rows: Vec<i64> = reader
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    // Everything so far, now including the FHIR export's own record.
    assert_eq!(
        rows,
        (1..=head + 1).collect::<Vec<_>>(),
        "one row a record, in order"
    );
}

async fn checkpoints_found_by_the_auditor_verify_endpoint(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let signer = Signer::from_settings(&checkpoint_settings()).unwrap();
    signer
        .checkpoint(app.store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let reply = auditor_get(&app, "auditor", "/audit/v1/verify").await;
    assert_eq!(reply.json()["intact"], true, "{}", reply.text);
    assert_eq!(reply.json()["checkpoints"], 1, "{}", reply.text);
    execute_sql(
        db,
        &app.database_url,
        "UPDATE audit_events SET detail = '{}' WHERE seq = 1",
    )
    .await;
    let reply = auditor_get(&app, "auditor", "/audit/v1/verify").await;
    assert_eq!(reply.json()["intact"], false);
    assert!(
        reply.json()["problem"]
            .as_str()
            .unwrap()
            .contains("record 1 was changed")
    );
}

async fn time_filters_follow_time_not_text_and_any_offset(db: Db) {
    let app = TestApp::spawn(db).await;
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    let rows = app.audit().await;
    let second = rows
        .iter()
        .filter(|r| r.action == "referral.new")
        .nth(1)
        .unwrap();
    let at = second.recorded_at;
    // The same instant written in UTC and at +01:00.
    let utc = at
        .format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .unwrap();
    let plus_one = at
        .to_offset(fhir_sdk::time::UtcOffset::from_hms(1, 0, 0).unwrap())
        .format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .unwrap();
    for bound in [utc, plus_one] {
        let bound = bound.replace('+', "%2B");
        let page = auditor_get(
            &app,
            "auditor",
            &format!("/audit/v1/records?action=referral.new&from={bound}"),
        )
        .await
        .json();
        let seqs: Vec<i64> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![second.seq.unwrap()], "from={bound}");
        let page = auditor_get(
            &app,
            "auditor",
            &format!("/audit/v1/records?action=referral.new&to={bound}"),
        )
        .await
        .json();
        assert_eq!(page["records"].as_array().unwrap().len(), 1, "to={bound}");
    }
}

async fn pages_never_shift_while_records_are_added(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let before: Vec<i64> = app.audit().await.iter().map(|r| r.seq.unwrap()).collect();
    // Every page read adds a record (the read itself) at the end of the chain.
    let mut seen = Vec::new();
    let mut next: Option<i64> = None;
    for _ in 0..20 {
        let path = match next {
            Some(n) => format!("/audit/v1/records?limit=2&after={n}"),
            None => "/audit/v1/records?limit=2".into(),
        };
        let page = auditor_get(&app, "auditor", &path).await.json();
        seen.extend(
            page["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        match page["next"].as_i64() {
            Some(n) => next = Some(n),
            None => break,
        }
        if seen.len() >= before.len() + 4 {
            break;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat: {seen:?}"
    );
    assert_eq!(&seen[..before.len()], &before[..]);
}

async fn refusals_after_authentication_are_recorded_too(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    auditor_get(&app, "auditor", "/audit/v1/records?from=yesterday")
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "");
    auditor_get(&app, "auditor", "/audit/v1/records?colour=blue")
        .await
        .assert_issue(400, "REC_BAD_REQUEST", "");
    auditor_get(&app, "auditor", "/audit/v1/records/999999")
        .await
        .assert_issue(404, "REC_NOT_FOUND", "");
    let reply = app.get("gp-a", "/operator/v1/deliveries").await;
    assert_eq!(reply.status, 403);
    let rows = app.audit().await;
    let refused = |action: &str| {
        rows.iter()
            .filter(|r| r.action == action && r.outcome == "rejected")
            .count()
    };
    assert_eq!(refused("audit.list"), 2);
    assert_eq!(refused("audit.read"), 1);
    assert_eq!(refused("operator.deliveries.list"), 1);
}

async fn a_refused_referral_is_recorded_against_its_subject(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut no_consent = referral();
    set(
        &mut no_consent,
        &format!("{}/status", at::CONSENT),
        json!("rejected"),
    );
    assert_eq!(app.send("gp-a", &no_consent).await.status, 422);
    let subject = audit_keys().pseudonym("9990000018").into_string();
    let rows = app.audit().await;
    let refused = rows.iter().find(|r| r.outcome == "rejected").unwrap();
    assert_eq!(refused.subject.as_deref(), Some(subject.as_str()));
    assert_eq!(refused.referral_id, None, "nothing was stored");
}

async fn dead_letter_handling_names_the_referral_and_recipient(db: Db) {
    let provider = FakeProvider::start(vec![crate::provider::Step::status(400)]).await;
    let app = TestApp::spawn_with(db, &provider.config("")).await;
    let reply = app.send("gp-a", &referral()).await;
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.deliver().await, 1);
    let delivery = app.store.deliveries_for(&id).await.unwrap()[0].id.clone();
    let reply = app
        .client
        .post(app.url(&format!("/operator/v1/deliveries/{delivery}/replay")))
        .bearer_auth(token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let rows = app.audit().await;
    let dead = rows.iter().find(|r| r.outcome == "dead-letter").unwrap();
    assert!(
        dead.detail.contains("receipt") && !dead.detail.contains("\"receipt\":null"),
        "the body went out: its receipt is kept"
    );
    let replay = rows
        .iter()
        .find(|r| r.action == "operator.deliveries.replay")
        .unwrap();
    assert_eq!(replay.referral_id.as_deref(), Some(id.as_str()));
    assert_eq!(replay.recipient.as_deref(), Some("prospects"));
    assert_eq!(replay.subject, dead.subject);
    assert!(replay.subject.is_some());
}

/// A running gateway seals what it writes by itself, with no one reading the trail:
/// the accept's record leaves `audit_pending` for its place in the chain within a few
/// of the gateway's seal intervals (250 ms by default), and the gauge shows the wait.
async fn a_running_gateway_seals_its_records_by_itself(db: Db) {
    let app = TestApp::spawn(db).await;
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    let mut waits = 0;
    // `audit_pending` and `audit_chain` only read; they never seal.
    while app.store.audit_pending().await.unwrap() > 0 {
        assert!(waits < 200, "audit records still pending after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waits += 1;
    }
    let chain = app.store.audit_chain(0, 100).await.unwrap();
    assert!(
        chain
            .iter()
            .any(|r| r.action == "referral.new" && r.outcome == "accepted"),
        "the accept's record is in the chain"
    );
    let metrics = app.get("gp-a", "/metrics").await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == "thrive_audit_pending_records 0"),
        "{}",
        metrics.text
    );
}

/// A record forged past the head (on PostgreSQL, or on SQLite with its triggers
/// dropped) takes the place the next record would be sealed at, so sealing stops
/// there. `audit verify` still names the forgery, says that sealing failed and how
/// many records wait; auditors still read what is chained.
async fn a_record_forged_past_the_head_is_found_while_it_blocks_sealing(db: Db) {
    let (app, _p, _id) = busy_gateway(db).await;
    let (head, hash) = app.store.audit_head().await.unwrap();
    if db == Db::Sqlite {
        for trigger in ["audit_chain_extends_head", "audit_chain_moves_head"] {
            execute_sql(db, &app.database_url, &format!("DROP TRIGGER {trigger}")).await;
        }
    }
    execute_sql(
        db,
        &app.database_url,
        &format!(
            "INSERT INTO audit_events (seq, recorded_at, action, outcome, detail, prev_hash, hash) \
             SELECT {}, recorded_at, 'referral.read', 'allowed', '{{}}', '{hash}', 'ab' \
             FROM audit_events WHERE seq = 1",
            head + 1
        ),
    )
    .await;
    // Recorded after the forgery: it waits, its place taken.
    assert_eq!(app.send("gp-a", &referral()).await.status, 200);
    let v = verify(&app).await;
    assert_eq!(v.problem, Some(Tamper::Inserted { seq: head + 1 }));
    assert!(
        v.sealing.as_deref().is_some_and(|why| !why.is_empty()),
        "{v:?}"
    );
    assert!(v.pending >= 1, "{v:?}");
    assert!(!v.intact());
    let listed = auditor_get(&app, "auditor", "/audit/v1/records?limit=500").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let verified = auditor_get(&app, "auditor", "/audit/v1/verify").await;
    assert_eq!(verified.status, 200, "{}", verified.text);
    assert_eq!(verified.json()["intact"], false);
    assert!(verified.json()["pending_records"].as_u64() >= Some(1));
}

on_both_databases!(
    an_export_longer_than_a_page_is_whole_and_verifies,
    a_running_gateway_seals_its_records_by_itself,
    a_record_forged_past_the_head_is_found_while_it_blocks_sealing,
    every_decision_is_one_chained_record_naming_the_subject_by_pseudonym,
    nhs_identity_headers_are_kept_as_the_actor,
    a_changed_record_is_found,
    a_removed_record_is_found,
    a_removed_record_is_found_even_when_the_rest_are_renumbered,
    the_last_record_removed_is_found_by_the_head,
    an_inserted_record_is_found_even_with_a_valid_hash,
    reordered_records_are_found,
    a_record_written_outside_the_chain_is_found,
    a_rewritten_chain_is_caught_by_the_signed_checkpoint,
    two_gateways_writing_at_once_keep_one_unbroken_chain,
    only_auditors_read_the_trail_and_every_call_is_recorded,
    auditors_filter_and_page_stably,
    a_subject_access_request_finds_everything_about_one_person,
    exports_carry_every_record_and_verify_without_the_database,
    checkpoints_found_by_the_auditor_verify_endpoint,
    time_filters_follow_time_not_text_and_any_offset,
    pages_never_shift_while_records_are_added,
    refusals_after_authentication_are_recorded_too,
    a_refused_referral_is_recorded_against_its_subject,
    dead_letter_handling_names_the_referral_and_recipient,
);
