//! What `THRIVE_ENV=production` refuses, all of it here: the development signing key
//! (`dev.signing_key_file`), the sandbox receivers, and key material this repository
//! publishes.
//!
//! The development keys in `config/dev/` and the test keys and certificates in
//! `tests/fixtures/` are public: whoever has the repository has them. Used in
//! production, a published storage key opens a copy of the database, a published
//! pseudonym key turns pseudonyms back into NHS numbers by trying every number, a
//! published checkpoint key forges checkpoints, and a published TLS key or CA lets
//! anyone stand in for the gateway or a provider. So with `THRIVE_ENV=production`
//! every key and certificate the settings name is compared, by content, with these:
//! a match refuses the configuration, naming the setting and the published file,
//! never the key. A copy of a published file under another name, or the same hex key
//! in an environment variable, is refused alike.
//!
//! The issuers' signing keys are checked as [`crate::auth`] loads them, by
//! [`is_published_jwk`] (by JWK fingerprint, so keys fetched from a JWKS URL are
//! covered too).

use crate::config::Settings;
use crate::pseudonym::KeySource;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A configuration production refuses, naming the setting (never a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    PublishedKey(#[from] PublishedKey),
    #[error("THRIVE_ENV=production but dev.signing_key_file is set")]
    DevSigningKey,
    #[error(
        "THRIVE_ENV=production but sandbox.enabled is set: sandbox receivers are for development"
    )]
    Sandbox,
    #[error("THRIVE_ENV=production but console.dev_sign_in is set: it is for development")]
    ConsoleDevSignIn,
    #[error(
        "THRIVE_ENV=production but console.plain_http_localhost is set: cookies must be Secure"
    )]
    ConsolePlainHttp,
    #[error(
        "THRIVE_ENV=production and console.enabled, but console.{0} is not set: \
         sessions must survive a restart and sign-in must go through the identity provider"
    )]
    ConsoleIncomplete(&'static str),
}

/// Everything production refuses in `settings`, the first found: the development
/// signing key, the sandbox, then published key material ([`refuse_published`]).
pub fn refuse(settings: &Settings) -> Result<(), Refusal> {
    if settings.dev.signing_key_file.is_some() {
        return Err(Refusal::DevSigningKey);
    }
    if settings.sandbox.enabled {
        return Err(Refusal::Sandbox);
    }
    let console = &settings.console;
    if console.dev_sign_in {
        return Err(Refusal::ConsoleDevSignIn);
    }
    if console.plain_http_localhost {
        return Err(Refusal::ConsolePlainHttp);
    }
    if console.enabled && console.session_key_file.is_none() {
        return Err(Refusal::ConsoleIncomplete("session_key_file"));
    }
    if console.enabled && console.oidc.is_none() {
        return Err(Refusal::ConsoleIncomplete("oidc"));
    }
    refuse_published(settings)?;
    Ok(())
}

/// A JWK's identity as key material: the same public key under any `kid` or `alg`
/// has the same fingerprint.
pub fn jwk_fingerprint(jwk: &Jwk) -> Option<String> {
    let material = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => format!("RSA:{}:{}", rsa.n, rsa.e),
        AlgorithmParameters::EllipticCurve(ec) => format!("EC:{}:{}", ec.x, ec.y),
        AlgorithmParameters::OctetKeyPair(okp) => format!("OKP:{}", okp.x),
        _ => return None,
    };
    Some(hex::encode(Sha256::digest(material.as_bytes())))
}

/// The published issuers' key fingerprints, worked out on first use.
static PUBLISHED_JWKS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    JWKS.iter()
        .filter_map(|(_, jwks)| serde_json::from_str::<JwkSet>(jwks).ok())
        .flat_map(|set| set.keys)
        .filter_map(|jwk| jwk_fingerprint(&jwk))
        .collect()
});

/// Whether an issuer's key is one whose private key this repository publishes (the
/// development issuer's or the tests'), whatever its `kid`.
pub fn is_published_jwk(jwk: &Jwk) -> bool {
    jwk_fingerprint(jwk).is_some_and(|f| PUBLISHED_JWKS.contains(&f))
}

/// Published secrets that are text, not keys (the MESH sandbox's password and shared
/// key), by file: compared trimmed.
const TEXT_SECRETS: &[(&str, &str)] = &[
    (
        "config/dev/mesh-sandbox-password",
        include_str!("../../config/dev/mesh-sandbox-password"),
    ),
    (
        "config/dev/mesh-sandbox-shared-key",
        include_str!("../../config/dev/mesh-sandbox-shared-key"),
    ),
];

/// Published hex keys (storage and pseudonym keys), by file.
const HEX_KEYS: &[(&str, &str)] = &[
    (
        "config/dev/pseudonym-audit-v1.key",
        include_str!("../../config/dev/pseudonym-audit-v1.key"),
    ),
    (
        "config/dev/pseudonym-bchft-v1.key",
        include_str!("../../config/dev/pseudonym-bchft-v1.key"),
    ),
    (
        "config/dev/pseudonym-prospects-v1.key",
        include_str!("../../config/dev/pseudonym-prospects-v1.key"),
    ),
    (
        "config/dev/storage-v1.key",
        include_str!("../../config/dev/storage-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-audit-v1.key",
        include_str!("../../tests/fixtures/keys/pseudonym-audit-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-audit-v2.key",
        include_str!("../../tests/fixtures/keys/pseudonym-audit-v2.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-bchft-v1.key",
        include_str!("../../tests/fixtures/keys/pseudonym-bchft-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-prospects-v1.key",
        include_str!("../../tests/fixtures/keys/pseudonym-prospects-v1.key"),
    ),
    (
        "tests/fixtures/keys/storage-v1.key",
        include_str!("../../tests/fixtures/keys/storage-v1.key"),
    ),
    (
        "tests/fixtures/keys/storage-v2.key",
        include_str!("../../tests/fixtures/keys/storage-v2.key"),
    ),
];

/// Published PEM files: private keys, public keys and certificates.
const PEM_FILES: &[(&str, &str)] = &[
    (
        "config/dev/audit-checkpoint.pem",
        include_str!("../../config/dev/audit-checkpoint.pem"),
    ),
    (
        "config/dev/audit-checkpoint.pub.pem",
        include_str!("../../config/dev/audit-checkpoint.pub.pem"),
    ),
    (
        "config/dev/dev-signing-key.pem",
        include_str!("../../config/dev/dev-signing-key.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint-other.pem",
        include_str!("../../tests/fixtures/keys/audit-checkpoint-other.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint-other.pub.pem",
        include_str!("../../tests/fixtures/keys/audit-checkpoint-other.pub.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint.pem",
        include_str!("../../tests/fixtures/keys/audit-checkpoint.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint.pub.pem",
        include_str!("../../tests/fixtures/keys/audit-checkpoint.pub.pem"),
    ),
    (
        "tests/fixtures/keys/forger.pem",
        include_str!("../../tests/fixtures/keys/forger.pem"),
    ),
    (
        "tests/fixtures/keys/test-issuer.pem",
        include_str!("../../tests/fixtures/keys/test-issuer.pem"),
    ),
    (
        "tests/fixtures/tls/ca.pem",
        include_str!("../../tests/fixtures/tls/ca.pem"),
    ),
    (
        "tests/fixtures/tls/client.key",
        include_str!("../../tests/fixtures/tls/client.key"),
    ),
    (
        "tests/fixtures/tls/client.pem",
        include_str!("../../tests/fixtures/tls/client.pem"),
    ),
    (
        "tests/fixtures/tls/other-ca.pem",
        include_str!("../../tests/fixtures/tls/other-ca.pem"),
    ),
    (
        "tests/fixtures/tls/other-client.key",
        include_str!("../../tests/fixtures/tls/other-client.key"),
    ),
    (
        "tests/fixtures/tls/other-client.pem",
        include_str!("../../tests/fixtures/tls/other-client.pem"),
    ),
    (
        "tests/fixtures/tls/other-server.key",
        include_str!("../../tests/fixtures/tls/other-server.key"),
    ),
    (
        "tests/fixtures/tls/other-server.pem",
        include_str!("../../tests/fixtures/tls/other-server.pem"),
    ),
    (
        "tests/fixtures/tls/server.key",
        include_str!("../../tests/fixtures/tls/server.key"),
    ),
    (
        "tests/fixtures/tls/server.pem",
        include_str!("../../tests/fixtures/tls/server.pem"),
    ),
];

/// The published issuers' public keys (JWKS): the development issuer's and the
/// tests'. Their private keys are in the repository; [`is_published_jwk`] finds them.
const JWKS: [(&str, &str); 2] = [
    (
        "config/dev/jwks.json",
        include_str!("../../config/dev/jwks.json"),
    ),
    (
        "tests/fixtures/keys/test-jwks.json",
        include_str!("../../tests/fixtures/keys/test-jwks.json"),
    ),
];

/// A setting that names published key material. Holds the setting's name and the
/// published file's, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "THRIVE_ENV=production but {setting} holds key material this project publishes \
     ({published}): anyone with the repository has it; generate your own (see README, \
     \"Keys in production\")"
)]
pub struct PublishedKey {
    /// The setting, e.g. `keys.storage.versions.v1`.
    pub setting: String,
    /// The published file it matches, e.g. `config/dev/storage-v1.key`.
    pub published: &'static str,
}

/// Every published hex key's bytes and every published PEM block's decoded content,
/// with the file it is in; decoded once, on first use.
static MATERIAL: std::sync::LazyLock<Vec<(&'static str, Vec<u8>)>> =
    std::sync::LazyLock::new(|| {
        let hex_keys = HEX_KEYS
            .iter()
            .filter_map(|(name, text)| Some((*name, hex::decode(text.trim()).ok()?)));
        let pem_blocks = PEM_FILES.iter().flat_map(|(name, text)| {
            pem::parse_many(text)
                .unwrap_or_default()
                .into_iter()
                .map(|block| (*name, block.into_contents()))
        });
        hex_keys.chain(pem_blocks).collect()
    });

/// The published file holding exactly this key or block content, if any.
fn published(material: &[u8]) -> Option<&'static str> {
    MATERIAL
        .iter()
        .find(|(_, published)| published.as_slice() == material)
        .map(|(name, _)| *name)
}

/// The published file holding the key a hex key source names, if any.
fn published_hex(source: &KeySource) -> Option<&'static str> {
    let text = source.read().ok()?;
    let key = SecretBox::new(Box::new(hex::decode(text.expose_secret().trim()).ok()?));
    published(key.expose_secret())
}

/// The published file sharing a block (a key or certificate, compared by its decoded
/// content) with the PEM file at `path`, if any.
fn published_pem(path: &Path) -> Option<&'static str> {
    let text = SecretBox::new(Box::new(std::fs::read(path).ok()?));
    let blocks = pem::parse_many(text.expose_secret()).ok()?;
    blocks.iter().find_map(|b| published(b.contents()))
}

/// The published file holding the text secret a source names, if any.
fn published_text(source: &KeySource) -> Option<&'static str> {
    let text = source.read().ok()?;
    TEXT_SECRETS
        .iter()
        .find(|(_, published)| published.trim() == text.expose_secret().trim())
        .map(|(name, _)| *name)
}

/// Where a setting's key material is.
enum Named<'a> {
    Hex(&'a KeySource),
    Text(&'a KeySource),
    Pem(&'a Path),
}

/// Every key and certificate the settings name, with its setting, in the order they
/// are checked.
fn named<'a>(settings: &'a Settings) -> Vec<(String, Named<'a>)> {
    let mut named = Vec::new();
    if let Some(storage) = &settings.keys.storage {
        for (version, source) in &storage.versions {
            named.push((
                format!("keys.storage.versions.{version}"),
                Named::Hex(source),
            ));
        }
    }
    for (recipient, keys) in &settings.keys.pseudonym {
        for (version, source) in &keys.versions {
            let setting = format!("keys.pseudonym.{recipient}.versions.{version}");
            named.push((setting, Named::Hex(source)));
        }
    }
    if let Some(mesh) = &settings.mesh {
        named.push(("mesh.password".into(), Named::Text(&mesh.password)));
        named.push(("mesh.shared_key".into(), Named::Text(&mesh.shared_key)));
    }
    let mut pem = |setting: String, path: &'a Path| named.push((setting, Named::Pem(path)));
    if let Some(c) = &settings.audit.checkpoint {
        if let Some(private) = &c.private_key_file {
            pem("audit.checkpoint.private_key_file".into(), private);
        }
        pem(
            "audit.checkpoint.public_key_file".into(),
            &c.public_key_file,
        );
    }
    if let Some(tls) = &settings.server.tls {
        pem("server.tls.cert_file".into(), &tls.cert_file);
        pem("server.tls.key_file".into(), &tls.key_file);
        if let Some(ca) = &tls.client_ca_file {
            pem("server.tls.client_ca_file".into(), ca);
        }
    }
    let mesh_tls = settings
        .mesh
        .as_ref()
        .map(|m| ("mesh".to_owned(), &None, &m.tls));
    let clients = settings
        .providers
        .iter()
        .map(|(id, p)| (format!("providers.{id}"), &p.oauth, &p.tls))
        .chain(mesh_tls)
        .chain(
            settings
                .gp_callbacks
                .iter()
                .map(|(id, g)| (format!("gp_callbacks.{id}"), &g.oauth, &g.tls)),
        );
    for (at, oauth, tls) in clients {
        if let Some(o) = oauth {
            pem(format!("{at}.oauth.key_file"), &o.key_file);
        }
        if let Some(t) = tls {
            for (name, file) in [
                ("ca_file", &t.ca_file),
                ("client_cert_file", &t.client_cert_file),
                ("client_key_file", &t.client_key_file),
            ] {
                if let Some(file) = file {
                    pem(format!("{at}.tls.{name}"), file);
                }
            }
        }
    }
    named
}

/// Checks every hex key and every PEM file the settings name, stopping at the first
/// that is published. What cannot be read here is passed over: the part of the
/// gateway that loads it reports that with its own message.
pub fn refuse_published(settings: &Settings) -> Result<(), PublishedKey> {
    for (setting, key) in named(settings) {
        let published = match key {
            Named::Hex(source) => published_hex(source),
            Named::Text(source) => published_text(source),
            Named::Pem(path) => published_pem(path),
        };
        if let Some(published) = published {
            return Err(PublishedKey { setting, published });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key-shaped file under the published folders is in the lists, so a key
    /// added to them later cannot slip past the production check.
    #[test]
    fn the_lists_hold_every_published_key_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let listed: Vec<&str> = HEX_KEYS
            .iter()
            .chain(PEM_FILES)
            .chain(&JWKS)
            .map(|(name, _)| *name)
            .collect();
        for dir in ["config/dev", "tests/fixtures/keys", "tests/fixtures/tls"] {
            let entries = std::fs::read_dir(root.join(dir)).expect("published folder");
            for entry in entries {
                let name = entry.expect("entry").file_name();
                let name = name.to_string_lossy();
                if [".key", ".pem", ".json"].iter().any(|e| name.ends_with(e)) {
                    let path = format!("{dir}/{name}");
                    assert!(listed.contains(&path.as_str()), "{path} is not listed");
                }
            }
        }
    }

    /// Each listed file is what its list says: 32 hex-encoded bytes, or at least one
    /// PEM block. A list entry that did not parse would match nothing.
    #[test]
    fn every_listed_file_parses_as_its_kind() {
        for (name, text) in HEX_KEYS {
            let key = hex::decode(text.trim()).unwrap_or_else(|_| panic!("{name}: not hex"));
            assert_eq!(key.len(), 32, "{name}");
            assert_eq!(published(&key), Some(*name));
        }
        for (name, text) in PEM_FILES {
            let blocks = pem::parse_many(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!blocks.is_empty(), "{name}: no PEM block");
            for block in blocks {
                assert!(published(block.contents()).is_some(), "{name}");
            }
        }
    }

    #[test]
    fn content_is_compared_not_names_or_layout() {
        let storage = include_str!("../../config/dev/storage-v1.key").trim();
        let upper = hex::decode(storage.to_uppercase()).expect("hex");
        assert_eq!(published(&upper), Some("config/dev/storage-v1.key"));
        assert_eq!(published(&[7u8; 32]), None);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("written");
            path
        };
        let copy = KeySource::File(file("copy.key", &format!(" {}\n", storage.to_uppercase())));
        assert_eq!(published_hex(&copy), Some("config/dev/storage-v1.key"));

        // The same key re-wrapped (other line lengths, CRLF) is still the same key.
        let pem_text = include_str!("../../tests/fixtures/tls/server.key");
        let block = pem::parse(pem_text).expect("PEM");
        let rewrapped = pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::CRLF),
        );
        assert_eq!(
            published_pem(&file("rewrapped.pem", &rewrapped)),
            Some("tests/fixtures/tls/server.key")
        );
        let fresh = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1u8; 48]));
        assert_eq!(published_pem(&file("fresh.pem", &fresh)), None);
        assert_eq!(published_pem(&file("text.pem", "not PEM at all")), None);
    }
}
