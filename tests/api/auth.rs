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

/// Signs `claims` (any JSON) under the test issuer's key with `header` as written.
fn sign_raw(header: serde_json::Value, claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let pem = std::fs::read(format!("{KEYS}/test-issuer.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

fn claims_json(client: &str, iat: i64, exp: i64, jti: Option<&str>) -> serde_json::Value {
    let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
    let mut c = serde_json::json!({
        "iss": TEST_ISSUER, "sub": client, "aud": AUDIENCE,
        "iat": iat, "exp": exp, "nbf": now - 5,
    });
    if let Some(jti) = jti {
        c["jti"] = serde_json::json!(jti);
    }
    c
}

fn rs256() -> serde_json::Value {
    serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "test-1"})
}

/// Tokens as the NHS API platform expects them: no future `iat`, a bounded lifetime,
/// no unknown `crit`, one Authorization header, and single-use `jti` where configured.
async fn tokens_are_held_to_nhs_practice(db: Db) {
    let app = TestApp::spawn_with(db, "[auth]\nsingle_use_token_clients = [\"gp-b\"]\n").await;
    let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
    let year = 365 * 24 * 3600;
    let mut crit = rs256();
    crit["crit"] = serde_json::json!(["urn:example:unknown"]);
    let cases = [
        (
            "iat ten years ahead",
            sign_raw(
                rs256(),
                claims_json("gp-a", now + 10 * year, now + 10 * year + 60, None),
            ),
            "issued in the future",
        ),
        (
            "exp eighty years ahead",
            sign_raw(rs256(), claims_json("gp-a", now, now + 80 * year, None)),
            "lives longer",
        ),
        (
            "an unknown crit",
            sign_raw(crit, claims_json("gp-a", now, now + 300, None)),
            "crit",
        ),
        (
            "single-use without a jti",
            sign_raw(rs256(), claims_json("gp-b", now, now + 300, None)),
            "single-use",
        ),
    ];
    for (what, token, says) in cases {
        let reply = post_with(&app, Some(format!("Bearer {token}"))).await;
        reply.assert_issue(401, "REC_UNAUTHORIZED", "");
        assert!(reply.text.contains(says), "{what}: {}", reply.text);
    }
    // The same lifetime within the limit is accepted (the message then meets 403 or
    // 200, not 401).
    let fine = sign_raw(rs256(), claims_json("gp-a", now, now + 3000, None));
    assert_eq!(
        post_with(&app, Some(format!("Bearer {fine}"))).await.status,
        200
    );

    // Two Authorization headers: neither counts, even when the first is valid.
    let reply = Reply::from(
        app.client
            .post(app.url("/fhir/r4/$process-message"))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
            .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
            .header("Authorization", format!("Bearer {}", token("gp-a")))
            .header("Authorization", "Bearer something-else")
            .body(referral().to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_issue(401, "REC_UNAUTHORIZED", "");
    assert!(
        reply.text.contains("exactly one Authorization"),
        "{}",
        reply.text
    );

    // A single-use token works once.
    let once = sign_raw(rs256(), claims_json("gp-b", now, now + 300, Some("jti-1")));
    let first = post_with(&app, Some(format!("Bearer {once}"))).await;
    assert_eq!(
        first.status, 403,
        "authenticated, then refused the practice: {}",
        first.text
    );
    let again = post_with(&app, Some(format!("Bearer {once}"))).await;
    again.assert_issue(401, "REC_UNAUTHORIZED", "");
    assert!(again.text.contains("used before"), "{}", again.text);
}

on_both_databases!(
    bad_tokens_are_unauthorised,
    a_gp_system_refers_only_for_its_own_practices,
    tokens_are_held_to_nhs_practice,
);

/// A token verified once is remembered by its whole text, never past its expiry: the
/// same token keeps working until it expires and is then refused as expired, and a
/// copy with one byte of its signature changed is refused while the original works.
async fn a_remembered_token_still_expires_and_is_never_mistaken(db: Db) {
    let app = TestApp::spawn_with(db, "[auth]\nleeway_seconds = 0\n").await;
    let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
    let token = sign(
        &Claims {
            exp: now + 2,
            ..Claims::for_client("gp-a")
        },
        "test-issuer.pem",
        "test-1",
        Algorithm::RS256,
    );
    for _ in 0..2 {
        let reply = post_with(&app, Some(format!("Bearer {token}"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let (head, signature) = token.rsplit_once('.').unwrap();
    let mut changed: Vec<u8> = signature.bytes().collect();
    changed[10] = if changed[10] == b'A' { b'B' } else { b'A' };
    let forged = format!("{head}.{}", String::from_utf8(changed).unwrap());
    let reply = post_with(&app, Some(format!("Bearer {forged}"))).await;
    reply.assert_issue(401, "REC_UNAUTHORIZED", "");

    while fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp() <= now + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let reply = post_with(&app, Some(format!("Bearer {token}"))).await;
    reply.assert_issue(401, "REC_UNAUTHORIZED", "");
    assert!(reply.text.contains("expired"), "{}", reply.text);
}

on_both_databases!(a_remembered_token_still_expires_and_is_never_mistaken);
