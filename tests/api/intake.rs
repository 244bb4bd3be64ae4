//! Accepting referrals: the response message, routing, what is stored, and reading a
//! referral back.

use crate::helpers::*;
use crate::on_both_databases;
use serde_json::json;

async fn accepts_a_referral_and_answers_with_a_response_message(db: Db) {
    let app = TestApp::spawn(db).await;
    let msg = referral();
    let ids = Ids::fresh();
    let reply = app.send_with("gp-a", &msg, &ids).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.headers["x-request-id"], ids.request.to_string());
    assert_eq!(
        reply.headers["x-correlation-id"],
        ids.correlation.to_string()
    );
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );

    let body = reply.json();
    // It is a valid FHIR R4 message Bundle.
    serde_json::from_value::<fhir_sdk::r4b::resources::Bundle>(body.clone())
        .expect("response parses as an R4 Bundle");
    assert_eq!(body["type"], "message");
    let header = &body["entry"][0]["resource"];
    assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
    assert_eq!(header["response"]["identifier"], msg["id"]);
    assert_eq!(header["response"]["code"], "ok");
    let sr = &body["entry"][1]["resource"];
    assert_eq!(sr["resourceType"], "ServiceRequest");
    let id = sr["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    let encounter = &body["entry"][2]["resource"];
    assert_eq!(encounter["resourceType"], "Encounter");
    assert_eq!(encounter["status"], "planned");
    let reference = encounter["identifier"][0]["value"].as_str().unwrap();
    assert!(
        reference.len() == 13 && reference.starts_with("TIW-") && &reference[8..9] == "-",
        "{reference}"
    );
    for secret in FIXTURE_PATIENT_DATA {
        assert!(!reply.text.contains(secret), "response holds patient data");
    }

    // Stored with its routing decision, consent and a queued delivery.
    let row = app.store.referral(id).await.unwrap().expect("stored");
    assert_eq!(row.provider, "prospects");
    assert_eq!(row.locality, "sandwell");
    assert_eq!(row.programme, "thrive-into-work");
    assert_eq!(row.reference, reference);
    assert!(row.consent.contains("\"recipient\":\"prospects\""));
    let deliveries = app.store.deliveries_for(id).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        (deliveries[0].kind.as_str(), deliveries[0].state.as_str()),
        ("referral", "queued")
    );

    // The decision is recorded with client and ids, and no NHS number.
    let audit = app.audit().await;
    let accepted = audit
        .iter()
        .find(|a| a.action == "referral.new")
        .expect("audited");
    assert_eq!(accepted.outcome, "accepted");
    assert_eq!(accepted.client_id.as_deref(), Some("gp-a"));
    assert_eq!(
        accepted.request_id.as_deref(),
        Some(ids.request.to_string().as_str())
    );
    assert_eq!(
        accepted.correlation_id.as_deref(),
        Some(ids.correlation.to_string().as_str())
    );
    assert_eq!(accepted.referral_id.as_deref(), Some(id));
    assert!(accepted.detail.contains("prospects"));
    for a in &audit {
        for secret in FIXTURE_PATIENT_DATA {
            assert!(!a.detail.contains(secret));
        }
    }
}

async fn routes_each_seed_locality_to_its_provider(db: Db) {
    let app = TestApp::spawn(db).await;
    for (practice, client, provider, locality) in [
        ("Y90010", "gp-a", "bchft", "dudley"),
        ("Y90020", "gp-b", "bchft", "walsall"),
        ("Y90030", "gp-a", "prospects", "wolverhampton"),
        ("Y90001", "gp-a", "prospects", "sandwell"),
    ] {
        let reply = app.send(client, &referral_from(practice)).await;
        assert_eq!(reply.status, 200, "{practice}: {}", reply.text);
        let id = reply.json()["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let row = app.store.referral(&id).await.unwrap().unwrap();
        assert_eq!(
            (row.provider.as_str(), row.locality.as_str()),
            (provider, locality)
        );
        assert_eq!(row.practice_ods, practice);
    }
}

async fn an_unroutable_practice_is_unprocessable_and_nothing_is_stored(db: Db) {
    let app = TestApp::spawn(db).await;
    // gp-a may refer for Y99999, but no locality lists it.
    let reply = app.send("gp-a", &referral_from("Y99999")).await;
    reply.assert_issue(422, "REC_UNPROCESSABLE_ENTITY", "ServiceRequest.requester");
    assert_eq!(app.referral_count().await, 0);
}

async fn lower_case_ods_system_and_spaced_nhs_number_are_accepted(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut msg = referral_from("y90001");
    set(
        &mut msg,
        &format!("{}/identifier/0/system", at::PRACTICE),
        json!("https://fhir.nhs.uk/id/ods-organization-code"),
    );
    set(
        &mut msg,
        &format!("{}/identifier/0/value", at::PATIENT),
        json!("999 000 0018"),
    );
    let reply = app.send("gp-a", &msg).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let sr = &body["entry"][1]["resource"];
    assert_eq!(
        sr["requester"]["identifier"]["system"],
        "https://fhir.nhs.uk/Id/ods-organization-code"
    );
    assert_eq!(sr["requester"]["identifier"]["value"], "Y90001");
    let row = app
        .store
        .referral(sr["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.nhs_number, "9990000018");
}

async fn the_referring_practice_operators_and_auditors_can_read_a_referral(db: Db) {
    let app = TestApp::spawn(db).await;
    let reply = app.send("gp-a", &referral()).await;
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/fhir/r4/ServiceRequest/{id}");

    let own = app.get("gp-a", &path).await;
    assert_eq!(own.status, 200, "{}", own.text);
    let sr = own.json();
    serde_json::from_value::<fhir_sdk::r4b::resources::ServiceRequest>(sr.clone())
        .expect("an R4 ServiceRequest");
    assert_eq!(sr["id"], id.as_str());
    assert_eq!(sr["status"], "active");
    for secret in FIXTURE_PATIENT_DATA {
        assert!(!own.text.contains(secret));
    }
    assert_eq!(app.get("auditor", &path).await.status, 200);
    assert_eq!(app.get("operator", &path).await.status, 200);
    app.get("gp-b", &path)
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    app.get("bchft", &path)
        .await
        .assert_issue(403, "REC_FORBIDDEN", "");
    app.get(
        "gp-a",
        &format!("/fhir/r4/ServiceRequest/{}", uuid::Uuid::new_v4()),
    )
    .await
    .assert_issue(404, "REC_NOT_FOUND", "");
    let anonymous = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // Reads are decisions too.
    let audit = app.audit().await;
    assert!(audit.iter().any(|a| a.action == "referral.read"
        && a.client_id.as_deref() == Some("gp-b")
        && a.outcome == "rejected"));
    assert!(audit.iter().any(|a| a.action == "referral.read"
        && a.client_id.as_deref() == Some("auditor")
        && a.outcome == "allowed"));
}

async fn metadata_message_definition_and_health_answer(db: Db) {
    let app = TestApp::spawn(db).await;
    let meta = app
        .client
        .get(app.url("/fhir/r4/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(meta.status(), 200);
    let meta: serde_json::Value = meta.json().await.unwrap();
    serde_json::from_value::<fhir_sdk::r4b::resources::CapabilityStatement>(meta.clone())
        .expect("an R4 CapabilityStatement");
    crate::fhir_schema::assert_valid_r4(&meta, "the CapabilityStatement");
    assert_eq!(meta["rest"][0]["operation"][0]["name"], "process-message");

    let defs = app.get("gp-a", "/fhir/r4/MessageDefinition").await;
    assert_eq!(defs.status, 200);
    let bundle = defs.json();
    crate::fhir_schema::assert_valid_r4(&bundle, "the MessageDefinition Bundle");
    let def = &bundle["entry"][0]["resource"];
    serde_json::from_value::<fhir_sdk::r4b::resources::MessageDefinition>(def.clone())
        .expect("an R4 MessageDefinition");
    assert_eq!(def["eventCoding"]["code"], "servicerequest-request");
    assert!(
        defs.text.contains("1082611000000105"),
        "lists the accepted referral codes"
    );

    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let nowhere = app
        .client
        .get(app.url("/fhir/r4/Nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    let nowhere: serde_json::Value = nowhere.json().await.unwrap();
    crate::fhir_schema::assert_operation_outcome(&nowhere, "an unknown endpoint's 404");
}

on_both_databases!(
    accepts_a_referral_and_answers_with_a_response_message,
    routes_each_seed_locality_to_its_provider,
    an_unroutable_practice_is_unprocessable_and_nothing_is_stored,
    lower_case_ods_system_and_spaced_nhs_number_are_accepted,
    the_referring_practice_operators_and_auditors_can_read_a_referral,
    metadata_message_definition_and_health_answer,
);

async fn the_gateway_serves_https_and_can_require_client_certificates(db: Db) {
    use crate::provider::TLS;
    let (url, _dir) = fresh_database(db).await;
    let https = |client_ca: &str| {
        test_settings(
            &url,
            &format!(
                "[server.tls]\ncert_file = \"{TLS}/server.pem\"\nkey_file = \"{TLS}/server.key\"\n{client_ca}"
            ),
        )
    };
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(format!("{TLS}/ca.pem")).unwrap()).unwrap();
    let identity = |name: &str| {
        let mut pem = std::fs::read(format!("{TLS}/{name}.pem")).unwrap();
        pem.extend(std::fs::read(format!("{TLS}/{name}.key")).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    };
    let start = |settings: thrive_gateway::config::Settings| async move {
        let app = thrive_gateway::startup::Application::build(&settings, false)
            .await
            .unwrap();
        let base = format!("https://127.0.0.1:{}", app.address().port());
        tokio::spawn(app.run());
        base
    };

    // TLS only.
    let base = start(https("")).await;
    let client = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .build()
        .unwrap();
    let res = client
        .get(format!("{base}/fhir/r4/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let plain = reqwest::get(format!(
        "{}/fhir/r4/metadata",
        base.replace("https", "http")
    ))
    .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP is not served"
    );

    // Mutual TLS: a client certificate from the configured CA is required.
    let base = start(https(&format!("client_ca_file = \"{TLS}/ca.pem\"\n"))).await;
    let anonymous = client.get(format!("{base}/fhir/r4/metadata")).send().await;
    assert!(anonymous.is_err(), "no client certificate, no connection");
    let stranger = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .identity(identity("other-client"))
        .build()
        .unwrap();
    assert!(
        stranger
            .get(format!("{base}/fhir/r4/metadata"))
            .send()
            .await
            .is_err()
    );
    let known = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(identity("client"))
        .build()
        .unwrap();
    let res = known
        .get(format!("{base}/fhir/r4/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

on_both_databases!(the_gateway_serves_https_and_can_require_client_certificates);
