//! The console in a real browser: signing in (the development page, and OpenID
//! Connect with PKCE against a stand-in issuer), an operator finding a failing
//! provider and replaying its dead letter, finding a referral's timeline, and an
//! auditor verifying the chain, searching by NHS number and downloading an export.
//! axe-core checks every page it opens.

use crate::browser::Browser;
use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};

/// The console with the development sign-in page for the test operator and auditor.
pub const CONSOLE: &str =
    "\n[console]\nenabled = true\ndev_sign_in = true\nplain_http_localhost = true\n";

/// Accepts the fixture referral; its id and reference.
pub async fn accept(app: &TestApp) -> (String, String) {
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = app.store.referral(&id).await.unwrap().unwrap();
    (id, stored.reference)
}

/// The delivery the operator replayed (now delivered: no dead letter to confirm).
async fn replay_id(app: &TestApp) -> String {
    let rows = app
        .get("operator", "/operator/v1/deliveries?state=delivered")
        .await
        .json();
    rows[0]["id"].as_str().unwrap().to_owned()
}

async fn an_operator_replays_a_dead_letter_and_reads_a_timeline(db: Db) {
    // Three refusals make the referral a dead letter; the provider then recovers.
    let provider = FakeProvider::start(vec![Step::status(503); 3]).await;
    let app = TestApp::spawn_with(db, &format!("{}{CONSOLE}", provider.config(FAST_RETRIES))).await;
    let (referral_id, reference) = accept(&app).await;
    app.deliver().await;

    let browser = Browser::start(&app.base).await;
    // No session: the console sends the browser to sign in, and back afterwards.
    browser.open("/console/deliveries").await;
    assert!(
        browser.path().await.starts_with("/console/sign-in"),
        "{}",
        browser.path().await
    );
    browser.assert_accessible("sign-in").await;
    browser.screenshot("sign-in").await;
    browser.dev_sign_in("operator").await;
    assert_eq!(browser.path().await, "/console/deliveries");

    // The overview shows the provider failing, and why.
    browser.click_link("Overview").await;
    let text = browser.text().await;
    let stored = app.store.referral(&referral_id).await.unwrap().unwrap();
    assert!(text.contains(&stored.provider), "{text}");
    assert!(text.contains("Failing"), "{text}");
    assert!(text.contains("503"), "the last error is shown: {text}");
    browser.assert_accessible("overview").await;
    browser.screenshot("overview").await;

    // It becomes a dead letter; the operator finds it and replays it.
    app.deliver().await;
    app.deliver().await;
    browser.open("/console").await;
    assert!(
        browser.text().await.contains("1 deliveries stopped"),
        "{}",
        browser.text().await
    );
    browser.click_link("See the dead letters").await;
    assert_eq!(browser.path().await, "/console/deliveries?state=dead");
    browser.assert_accessible("deliveries").await;
    browser.screenshot("deliveries").await;
    browser.click_link(&reference).await;
    let text = browser.text().await;
    assert!(
        text.contains("Dead letter") && text.contains("Attempts"),
        "{text}"
    );
    browser.assert_accessible("delivery").await;
    browser.click_link("Resolve").await;
    assert_eq!(browser.heading().await, "Resolve this dead letter?");
    browser.assert_accessible("resolve confirmation").await;
    browser.click_link("Cancel").await;
    browser.click_link("Replay").await;
    assert_eq!(browser.heading().await, "Replay this dead letter?");
    browser.assert_accessible("replay confirmation").await;
    browser.click_button("Yes, replay it").await;
    assert!(
        browser.text().await.contains("queued again"),
        "{}",
        browser.text().await
    );
    assert_eq!(app.deliver().await, 1);
    browser.client.refresh().await.unwrap();
    assert!(
        browser.text().await.contains("Delivered"),
        "{}",
        browser.text().await
    );
    browser.screenshot("delivery").await;
    assert_eq!(
        provider.seen().len(),
        4,
        "three refusals, then the replay delivered once"
    );

    // The replay is audited exactly as the operator API's replay.
    let replay = app
        .audit()
        .await
        .into_iter()
        .find(|r| r.action == "operator.deliveries.replay")
        .expect("the replay is audited");
    assert_eq!(
        (
            replay.outcome.as_str(),
            replay.http_status,
            replay.client_id.as_deref(),
            replay.role.as_deref()
        ),
        ("accepted", Some(202), Some("operator"), Some("operator"))
    );
    assert_eq!(replay.referral_id.as_deref(), Some(referral_id.as_str()));
    assert_eq!(replay.recipient.as_deref(), Some(stored.provider.as_str()));

    // Pause and resume, each confirmed first.
    browser.open("/console/deliveries").await;
    browser
        .click_link(&format!("Pause deliveries to {}", stored.provider))
        .await;
    browser.assert_accessible("pause confirmation").await;
    browser.click_button("Yes, pause deliveries").await;
    assert!(
        browser.text().await.contains("are paused"),
        "{}",
        browser.text().await
    );
    let recipients = app.get("operator", "/operator/v1/recipients").await.json();
    let paused = recipients
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == stored.provider.as_str())
        .unwrap();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["paused_by"], "operator");

    // The referral's timeline, found by its reference.
    browser.click_link("Find a referral").await;
    browser.fill("key", "TIW-NOSUCH").await;
    browser.click_button("Find").await;
    let text = browser.text().await;
    assert!(
        text.contains("There is a problem") && text.contains("No referral has this reference"),
        "{text}"
    );
    browser
        .assert_accessible("find a referral, not found")
        .await;
    browser.fill("key", &reference).await;
    browser.click_button("Find").await;
    let text = browser.text().await;
    for step in [
        "referral.new",
        "delivery.referral",
        "operator.deliveries.replay",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    for never in FIXTURE_PATIENT_DATA {
        assert!(!text.contains(never), "a timeline holds patient data");
    }
    browser.assert_accessible("timeline").await;
    browser.screenshot("timeline").await;

    // Pages of refusals and errors are accessible too.
    let replayed = replay_id(&app).await;
    for (path, heading) in [
        (
            "/console/deliveries?since=yesterday".to_owned(),
            "Deliveries",
        ),
        ("/console/nothing-here".to_owned(), "Page not found"),
        (
            format!("/console/deliveries/{replayed}/replay"),
            "Page not found",
        ),
    ] {
        browser.open(&path).await;
        assert_eq!(browser.heading().await, heading, "{path}");
        browser.assert_accessible(&path).await;
    }

    // An operator is not an auditor: an NHS-styled refusal, recorded.
    browser.open("/console/audit").await;
    assert_eq!(browser.heading().await, "You cannot open this page");
    browser.assert_accessible("forbidden").await;
    assert!(
        app.audit()
            .await
            .iter()
            .any(|r| r.action == "audit.list" && r.http_status == Some(403))
    );

    // Signing out ends the session.
    browser.open("/console").await;
    browser.click_button("Sign out").await;
    browser.open("/console").await;
    assert!(browser.path().await.starts_with("/console/sign-in"));
    browser.close().await;
}

async fn an_auditor_verifies_searches_a_person_and_downloads_an_export(db: Db) {
    let provider = FakeProvider::start(vec![]).await;
    let app = TestApp::spawn_with(db, &format!("{}{CONSOLE}", provider.config(FAST_RETRIES))).await;
    let (_, reference) = accept(&app).await;
    app.deliver().await;

    let browser = Browser::start(&app.base).await;
    browser.open("/console").await;
    browser.dev_sign_in("auditor").await;
    assert_eq!(browser.heading().await, "Overview");
    browser.assert_accessible("overview (auditor)").await;

    browser.click_link("Audit trail").await;
    let text = browser.text().await;
    assert!(
        text.contains("referral.new") && text.contains("delivery.referral"),
        "{text}"
    );
    browser.assert_accessible("audit trail").await;
    browser.screenshot("audit").await;
    // A bad filter is reported beside its field, never a 500.
    browser.fill("from", "last tuesday").await;
    browser.click_button("Show records").await;
    let text = browser.text().await;
    assert!(
        text.contains("There is a problem") && text.contains("Enter the from date"),
        "{text}"
    );
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css(".nhsuk-form-group--error #from"))
            .await
            .is_ok()
    );
    browser.assert_accessible("audit trail with an error").await;
    browser.open("/console/audit/records/1").await;
    assert_eq!(browser.heading().await, "Audit record 1");
    browser.assert_accessible("audit record").await;

    // Verify, with its result.
    browser.open("/console/audit/verify").await;
    browser.assert_accessible("verify").await;
    browser.click_button("Verify the audit chain").await;
    assert!(
        browser.text().await.contains("The audit chain is intact"),
        "{}",
        browser.text().await
    );
    browser.assert_accessible("verify result").await;
    browser.screenshot("verify").await;

    // Subject access: the NHS number goes by POST only, never into the address.
    browser.click_link("Audit trail").await;
    browser
        .click_link("Subject access: everything about one person")
        .await;
    browser.fill("nhs_number", "1234567890").await;
    browser.click_button("Search").await;
    assert!(
        browser.text().await.contains("Enter a valid NHS number"),
        "{}",
        browser.text().await
    );
    browser
        .assert_accessible("subject access with an error")
        .await;
    browser.fill("nhs_number", "999 000 0018").await;
    browser.click_button("Search").await;
    let text = browser.text().await;
    assert!(
        text.contains(&reference) && text.contains("Disclosures"),
        "{text}"
    );
    assert!(
        text.contains("bchft") || text.contains("prospects"),
        "the disclosure names its recipient: {text}"
    );
    assert!(
        text.contains("patient_pseudonym, programme"),
        "the disclosure lists the fields sent: {text}"
    );
    assert!(
        !text.contains("9990000018") && !text.contains("999 000 0018"),
        "the number is not shown again"
    );
    assert_eq!(browser.path().await, "/console/audit/subject");
    browser.assert_accessible("subject access").await;
    browser.screenshot("subject-access").await;
    let searches: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "audit.subjects")
        .collect();
    assert_eq!(
        searches.len(),
        2,
        "the refused search and the search are both recorded"
    );
    assert_eq!(
        (searches[0].outcome.as_str(), searches[0].http_status),
        ("rejected", Some(422))
    );
    let search = &searches[1];
    assert_eq!(
        (search.client_id.as_deref(), search.role.as_deref()),
        (Some("auditor"), Some("auditor"))
    );
    assert!(
        search.subject.is_some(),
        "the search names the person by pseudonym"
    );

    // The export downloads as a file.
    browser.open("/console/audit/export").await;
    browser.assert_accessible("export").await;
    let today = fhir_sdk::time::OffsetDateTime::now_utc().date();
    browser
        .fill(
            "from",
            &(today - fhir_sdk::time::Duration::days(1)).to_string(),
        )
        .await;
    browser
        .fill(
            "to",
            &(today + fhir_sdk::time::Duration::days(1)).to_string(),
        )
        .await;
    browser.choose("format", "csv").await;
    browser.press("Download").await;
    let (name, body) = browser.downloaded().await;
    assert!(
        name.starts_with("audit-") && name.ends_with(".csv"),
        "{name}"
    );
    let csv = String::from_utf8(body).unwrap();
    assert!(
        csv.lines().count() > 3 && csv.contains("referral.new"),
        "{csv}"
    );

    // The programme report, for both roles.
    browser.click_link("Programme report").await;
    let text = browser.text().await;
    assert!(
        text.contains("<5"),
        "one referral is published as <5: {text}"
    );
    browser.assert_accessible("report").await;
    browser.screenshot("report").await;
    browser.close().await;
}

on_both_databases!(
    an_operator_replays_a_dead_letter_and_reads_a_timeline,
    an_auditor_verifies_searches_a_person_and_downloads_an_export,
);

async fn staff_sign_in_through_the_identity_provider_with_pkce(db: Db) {
    use crate::issuer::{Behaviour, Issuer};
    let issuer = Issuer::start(Behaviour {
        roles: vec![
            "thrive-operator".into(),
            "thrive-auditor".into(),
            "receptionist".into(),
        ],
        wrong_nonce: false,
    })
    .await;
    let app = TestApp::spawn_with(db, &issuer.console_toml()).await;
    let browser = Browser::start(&app.base).await;
    browser.open("/console/report").await;
    assert!(browser.path().await.starts_with("/console/sign-in"));
    assert!(
        !browser.text().await.contains("Development sign-in"),
        "no local sign-in outside development"
    );
    browser
        .assert_accessible("sign-in (identity provider)")
        .await;
    browser.click_link("Sign in with NHS Care Identity").await;
    // Back from the issuer, the page continues to where the user was going.
    for _ in 0..100 {
        if browser.path().await == "/console/report" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(browser.path().await, "/console/report");
    let text = browser.text().await;
    assert!(
        text.contains("Dr Alex Example (operator and auditor)"),
        "{text}"
    );
    assert!(
        text.contains("Deliveries") && text.contains("Audit trail"),
        "both roles' sections: {text}"
    );
    assert_eq!(
        issuer.exchanges(),
        (1, 0),
        "one code exchanged, with the PKCE verifier"
    );
    let signed_in = app
        .audit()
        .await
        .into_iter()
        .find(|r| r.action == "console.sign-in")
        .unwrap();
    assert_eq!(signed_in.outcome, "allowed");
    assert_eq!(signed_in.client_id.as_deref(), Some("555042709107"));
    assert!(
        signed_in.detail.contains("\"oidc\""),
        "{}",
        signed_in.detail
    );
    browser.click_button("Sign out").await;

    // No role for the console: refused, and recorded.
    issuer.set(Behaviour {
        roles: vec!["receptionist".into()],
        wrong_nonce: false,
    });
    browser.click_link("Sign in with NHS Care Identity").await;
    assert_eq!(browser.heading().await, "You cannot open this page");
    assert!(
        browser.text().await.contains("no role for this console"),
        "{}",
        browser.text().await
    );
    browser.assert_accessible("no role").await;

    // An ID token for another sign-in (its nonce) is refused.
    issuer.set(Behaviour {
        roles: vec!["thrive-operator".into()],
        wrong_nonce: true,
    });
    browser.open("/console/sign-in").await;
    browser.click_link("Sign in with NHS Care Identity").await;
    assert!(
        browser.text().await.contains("could not be verified"),
        "{}",
        browser.text().await
    );
    browser.open("/console").await;
    assert!(
        browser.path().await.starts_with("/console/sign-in"),
        "still signed out"
    );
    let refusals: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "console.sign-in" && r.outcome == "rejected")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals[1].detail.contains("nonce"),
        "{}",
        refusals[1].detail
    );
    browser.close().await;
}

on_both_databases!(staff_sign_in_through_the_identity_provider_with_pkce);
