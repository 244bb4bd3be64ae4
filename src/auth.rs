//! Inbound authentication and authorisation: bearer JWTs from configured issuers, and
//! the role each configured client (`sub`) holds.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::config::{AuthSettings, ClientSettings};
use crate::domain::{OdsCode, ProviderId};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    jwk::{AlgorithmParameters, Jwk, JwkSet},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::{collections::HashMap, str::FromStr, sync::Arc};

/// Who is calling, after the token has been verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    pub role: Role,
}

/// What a client may do. A GP system carries the practices it may refer for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    GpSystem { practices: Vec<OdsCode> },
    Provider { provider: ProviderId },
    Auditor,
    Operator,
}

impl Role {
    /// The role's name as written in configuration and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Role::GpSystem { .. } => "gp-system",
            Role::Provider { .. } => "provider",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

impl Principal {
    /// True when this client is a GP system allowed to refer for `practice`.
    pub fn may_refer_for(&self, practice: &OdsCode) -> bool {
        matches!(&self.role, Role::GpSystem { practices } if practices.contains(practice))
    }
}

/// Why a request is not authenticated. Said to the caller in general terms only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the token's signing key (kid) is not trusted")]
    UnknownKey,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not this gateway")]
    Audience,
    #[error("the token's issuer does not match its key")]
    Issuer,
    #[error("the token's subject is not a known client")]
    UnknownClient,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token lives longer than the gateway accepts (exp - iat)")]
    TooLong,
    #[error("the token names critical header parameters (crit) the gateway does not understand")]
    Critical,
    #[error("send exactly one Authorization header")]
    Ambiguous,
    #[error("this client's tokens are single-use, and this one was used before (jti)")]
    Replayed,
    #[error("the token is not valid")]
    Invalid,
}

/// A problem with the auth configuration, found at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.algorithms: `{0}` is not an accepted asymmetric algorithm")]
    Algorithm(String),
    #[error("auth.issuers.{issuer}: cannot read JWKS {source_name}: {message}")]
    Jwks {
        issuer: String,
        source_name: String,
        message: String,
    },
    #[error("auth.issuers.{issuer}: key {kid}: {message}")]
    Key {
        issuer: String,
        kid: String,
        message: String,
    },
    #[error("key id {0} is published by two issuers; kids must be unique")]
    DuplicateKid(String),
    #[error(
        "THRIVE_ENV=production but issuer {0} trusts a published signing key (the development issuer's or the tests'): configure the production issuers"
    )]
    DevelopmentKeyInProduction(String),
}

struct TrustedKey {
    issuer: String,
    key: DecodingKey,
    /// Algorithms this key may verify, within the configured list.
    algorithms: Vec<Algorithm>,
}

/// Verifies inbound tokens; built once at start and shared.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<HashMap<String, TrustedKey>>,
    clients: Arc<HashMap<String, Role>>,
    audience: String,
    leeway: u64,
    max_lifetime: i64,
    /// Clients whose tokens may be used once: each `jti` is remembered until its
    /// token expires (in this process).
    single_use: Arc<std::collections::HashSet<String>>,
    seen_jti: Arc<std::sync::Mutex<HashMap<(String, String), i64>>>,
    /// Tokens whose signature and claims were verified, by the SHA-256 of the whole
    /// token, until they expire. A GP system sends the same access token with every
    /// request of its lifetime, and checking its RSA signature is most of what
    /// authentication costs. A changed byte anywhere is another key, so nothing but
    /// the very token verified is taken from here.
    verified: Arc<std::sync::Mutex<HashMap<[u8; 32], Claims>>>,
}

/// Verified tokens remembered at most; past it the expired go, then all.
const VERIFIED_CAPACITY: usize = 10_000;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("clients", &self.clients.len())
            .finish()
    }
}

#[derive(Clone, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// RFC 7515 4.1.11: a `crit` header lists extensions the recipient must understand;
/// the gateway understands none, so any `crit` is refused.
fn has_critical_header(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("crit").is_some())
}

impl Authenticator {
    /// Loads every issuer's keys (files now; URLs fetched once) and the client table.
    pub async fn from_settings(
        settings: &AuthSettings,
        production: bool,
    ) -> Result<Self, AuthSetupError> {
        let allowed = settings
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = HashMap::new();
        for (name, issuer) in &settings.issuers {
            let mut sets = Vec::new();
            if let Some(file) = &issuer.jwks_file {
                let text = std::fs::read_to_string(file).map_err(|e| AuthSetupError::Jwks {
                    issuer: name.clone(),
                    source_name: file.display().to_string(),
                    message: e.to_string(),
                })?;
                sets.push((file.display().to_string(), text));
            }
            if let Some(url) = &issuer.jwks_url {
                sets.push((url.clone(), fetch_jwks(name, url).await?));
            }
            for (source_name, text) in sets {
                let set: JwkSet =
                    serde_json::from_str(&text).map_err(|e| AuthSetupError::Jwks {
                        issuer: name.clone(),
                        source_name: source_name.clone(),
                        message: e.to_string(),
                    })?;
                for jwk in &set.keys {
                    let kid = jwk
                        .common
                        .key_id
                        .clone()
                        .ok_or_else(|| AuthSetupError::Key {
                            issuer: name.clone(),
                            kid: "(none)".into(),
                            message: "every key needs a kid".into(),
                        })?;
                    // Their private keys are public: production never trusts them.
                    if production && crate::config::production::is_published_jwk(jwk) {
                        return Err(AuthSetupError::DevelopmentKeyInProduction(name.clone()));
                    }
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthSetupError::Key {
                        issuer: name.clone(),
                        kid: kid.clone(),
                        message: e.to_string(),
                    })?;
                    let algorithms = allowed
                        .iter()
                        .copied()
                        .filter(|a| key_accepts(jwk, *a))
                        .collect();
                    let trusted = TrustedKey {
                        issuer: issuer.issuer.clone(),
                        key,
                        algorithms,
                    };
                    if keys.insert(kid.clone(), trusted).is_some() {
                        return Err(AuthSetupError::DuplicateKid(kid));
                    }
                }
            }
        }

        let clients = settings
            .clients
            .iter()
            .map(|(sub, c)| {
                let role = match c {
                    ClientSettings::GpSystem { practices } => Role::GpSystem {
                        practices: practices.clone(),
                    },
                    ClientSettings::Provider { provider } => Role::Provider {
                        provider: provider.clone(),
                    },
                    ClientSettings::Auditor {} => Role::Auditor,
                    ClientSettings::Operator {} => Role::Operator,
                };
                (sub.clone(), role)
            })
            .collect();

        Ok(Self {
            keys: Arc::new(keys),
            clients: Arc::new(clients),
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
            max_lifetime: i64::try_from(settings.max_token_lifetime_seconds).unwrap_or(i64::MAX),
            single_use: Arc::new(settings.single_use_token_clients.iter().cloned().collect()),
            seen_jti: Arc::default(),
            verified: Arc::default(),
        })
    }

    /// Checks an `Authorization` header value and returns the calling client.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.still_verified(&digest) {
            return self.admit(claims);
        }
        let jwt_header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if has_critical_header(token) {
            return Err(AuthError::Critical);
        }
        let kid = jwt_header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let trusted = self.keys.get(kid).ok_or(AuthError::UnknownKey)?;
        if !trusted.algorithms.contains(&jwt_header.alg) {
            return Err(AuthError::Algorithm);
        }
        let mut validation = Validation::new(jwt_header.alg);
        validation.algorithms = vec![jwt_header.alg];
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&trusted.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = decode::<Claims>(token, &trusted.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::Signature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidAudience => AuthError::Audience,
                K::InvalidIssuer => AuthError::Issuer,
                K::InvalidAlgorithm => AuthError::Algorithm,
                K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => AuthError::Malformed,
                _ => AuthError::Invalid,
            }
        })?;
        if !self.clients.contains_key(&data.claims.sub) {
            return Err(AuthError::UnknownClient);
        }
        self.check_times(&data.claims)?;
        self.remember(digest, &data.claims);
        self.admit(data.claims)
    }

    /// A verified token's client, once its `jti` is spent where tokens are single-use.
    fn admit(&self, claims: Claims) -> Result<Principal, AuthError> {
        let role = self
            .clients
            .get(&claims.sub)
            .ok_or(AuthError::UnknownClient)?;
        if self.single_use.contains(&claims.sub) {
            self.use_once(&claims)?;
        }
        Ok(Principal {
            client_id: claims.sub,
            role: role.clone(),
        })
    }

    /// The remembered tokens.
    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Claims>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether claims are unexpired as verification would judge them now (leeway
    /// included).
    fn unexpired(&self) -> impl Fn(&Claims) -> bool + use<> {
        let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        move |c: &Claims| c.exp.saturating_add(leeway) >= now
    }

    /// The claims of a token verified before, while it has not expired.
    fn still_verified(&self, digest: &[u8; 32]) -> Option<Claims> {
        let (mut verified, unexpired) = (self.remembered(), self.unexpired());
        match verified.get(digest) {
            Some(c) if unexpired(c) => Some(c.clone()),
            Some(_) => {
                // Expired: verified afresh, the sender hears why.
                verified.remove(digest);
                None
            }
            None => None,
        }
    }

    fn remember(&self, digest: [u8; 32], claims: &Claims) {
        let (mut verified, unexpired) = (self.remembered(), self.unexpired());
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, c| unexpired(c));
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
    }
}

impl Authenticator {
    /// `iat` not in the future beyond the leeway, and a lifetime (`exp - iat`, or what
    /// is left of it without `iat`) within the configured maximum. Checked arithmetic:
    /// the values are the sender's.
    fn check_times(&self, claims: &Claims) -> Result<(), AuthError> {
        let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        if let Some(iat) = claims.iat
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthError::IssuedInFuture);
        }
        let from = claims.iat.unwrap_or(now);
        if claims.exp.saturating_sub(from) > self.max_lifetime.saturating_add(leeway) {
            return Err(AuthError::TooLong);
        }
        Ok(())
    }

    /// Remembers a single-use token's `jti` until it expires; a second use is refused.
    fn use_once(&self, claims: &Claims) -> Result<(), AuthError> {
        let jti = claims.jti.clone().ok_or(AuthError::Replayed)?;
        let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
        let mut seen = self
            .seen_jti
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|_, exp| *exp >= now);
        match seen.entry((claims.sub.clone(), jti)) {
            std::collections::hash_map::Entry::Occupied(_) => Err(AuthError::Replayed),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(claims.exp);
                Ok(())
            }
        }
    }
}

/// Only asymmetric algorithms: a shared-secret HS* on a public key would let anyone
/// holding the public key mint tokens.
fn parse_algorithm(name: &str) -> Result<Algorithm, AuthSetupError> {
    let alg = Algorithm::from_str(name).map_err(|_| AuthSetupError::Algorithm(name.into()))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err(AuthSetupError::Algorithm(name.into()))
        }
        other => Ok(other),
    }
}

fn key_accepts(jwk: &Jwk, alg: Algorithm) -> bool {
    use Algorithm::*;
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, ES256 | ES384),
        AlgorithmParameters::OctetKeyPair(_) => matches!(alg, EdDSA),
        _ => false,
    };
    // A key that names its algorithm is held to it.
    let declared_ok = match jwk.common.key_algorithm {
        Some(declared) => format!("{declared:?}") == format!("{alg:?}"),
        None => true,
    };
    family_ok && declared_ok
}

async fn fetch_jwks(issuer: &str, url: &str) -> Result<String, AuthSetupError> {
    let err = |message: String| AuthSetupError::Jwks {
        issuer: issuer.to_owned(),
        source_name: url.to_owned(),
        message,
    };
    if !url.starts_with("https://") {
        return Err(err("jwks_url must be https".into()));
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| err(e.to_string()))?;
    response.text().await.map_err(|e| err(e.to_string()))
}

/// Mints a development token (`thrive-gateway dev-token`): RS256, signed with the
/// development key, `aud` this gateway.
pub fn mint_token(
    signing_key_pem: &[u8],
    key_id: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
    ttl_seconds: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        iat: u64,
        nbf: u64,
        exp: u64,
        jti: String,
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some(key_id.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(signing_key_pem)?;
    jsonwebtoken::encode(
        &header,
        &Out {
            iss: issuer,
            sub: subject,
            aud: audience,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl_seconds),
            jti: uuid::Uuid::new_v4().to_string(),
        },
        &key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_none_algorithms_are_refused_in_configuration() {
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("RS512").is_ok());
    }
}
