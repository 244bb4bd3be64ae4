//! Inbound authentication and authorisation: only valid tokens from configured issuers
//! get in, and a GP system refers only for its own practices.

use crate::helpers::*;
use crate::on_both_databases;
use jsonwebtoken::Algorithm;

async fn post_with(app: &TestApp, authorization: Option<String>) -> Reply {
    let mut req = app
        .client
        .post(app.url("/fhir/r4/$process-message"))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .body(referral().to_string());
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    Reply::from(req.send().await.unwrap()).await
}

fn hs256_token(claims: &Claims) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("test-1".into());
    // An attacker signing with the issuer's public key as an HMAC secret.
    let public = std::fs::read(format!("{KEYS}/test-jwks.json")).unwrap();
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap()
}

async fn bad_tokens_are_unauthorised(db: Db) {
    let app = TestApp::spawn(db).await;
    let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
    let valid = Claims::for_client("gp-a");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("not a bearer token", Some("Basic Z3A6cGFzcw==".into())),
        ("malformed token", Some("Bearer not.a.jwt".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        exp: now - 120,
                        ..valid.clone()
                    },
                    "test-issuer.pem",
                    "test-1",
                    Algorithm::RS256
                )
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        nbf: now + 600,
                        ..valid.clone()
                    },
                    "test-issuer.pem",
                    "test-1",
                    Algorithm::RS256
                )
            )),
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        aud: "someone-else".into(),
                        ..valid.clone()
                    },
                    "test-issuer.pem",
                    "test-1",
                    Algorithm::RS256
                )
            )),
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        iss: "https://evil.invalid".into(),
                        ..valid.clone()
                    },
                    "test-issuer.pem",
                    "test-1",
                    Algorithm::RS256
                )
            )),
        ),
        (
            "forged signature",
            Some(format!(
                "Bearer {}",
                sign(&valid, "forger.pem", "test-1", Algorithm::RS256)
            )),
        ),
        (
            "unknown key id",
            Some(format!(
                "Bearer {}",
                sign(&valid, "test-issuer.pem", "other-kid", Algorithm::RS256)
            )),
        ),
        (
            "HS256 with the public key",
            Some(format!("Bearer {}", hs256_token(&valid))),
        ),
        (
            "algorithm the key does not declare",
            Some(format!(
                "Bearer {}",
                sign(&valid, "test-issuer.pem", "test-1", Algorithm::RS512)
            )),
        ),
        (
            "unknown client",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        sub: "stranger".into(),
                        ..valid.clone()
                    },
                    "test-issuer.pem",
                    "test-1",
                    Algorithm::RS256
                )
            )),
        ),
    ];
    for (name, authorization) in cases {
        let reply = post_with(&app, authorization).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.text);
        assert_eq!(reply.headers["www-authenticate"], "Bearer", "{name}");
        assert_eq!(reply.issues()[0].0, "REC_UNAUTHORIZED", "{name}");
    }
    assert_eq!(app.referral_count().await, 0);
    let audit = app.audit().await;
    assert!(audit.len() >= 12, "every refusal is audited");
    assert!(
        audit
            .iter()
            .all(|a| a.http_status == Some(401) && a.client_id.is_none())
    );
    // The valid token still works.
    let reply = post_with(&app, Some(format!("Bearer {}", token("gp-a")))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

async fn a_gp_system_refers_only_for_its_own_practices(db: Db) {
    let app = TestApp::spawn(db).await;
    // gp-b may refer for Y90020 only; the fixture's practice is Y90001.
    let reply = app.send("gp-b", &referral()).await;
    reply.assert_issue(403, "REC_FORBIDDEN", "");
    // Only that is said: nothing about the message's other problems.
    let mut bad = referral();
    set(
        &mut bad,
        &format!("{}/identifier/0/value", at::PATIENT),
        serde_json::json!("9990000019"),
    );
    let reply = app.send("gp-b", &bad).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.issues().len(), 1);
    // Providers, auditors and operators do not send referrals.
    for client in ["bchft", "auditor", "operator"] {
        app.send(client, &referral())
            .await
            .assert_issue(403, "REC_FORBIDDEN", "");
    }
    assert_eq!(app.referral_count().await, 0);
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.client_id.as_deref() == Some("gp-b") && a.http_status == Some(403))
    );
}

on_both_databases!(
    bad_tokens_are_unauthorised,
    a_gp_system_refers_only_for_its_own_practices
);
