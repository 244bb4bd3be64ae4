//! Key material this repository publishes, and the production check against it.
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
//! The issuers' signing keys are checked by [`crate::auth`] (by JWK fingerprint, so
//! keys fetched from a JWKS URL are covered too).

use crate::config::{OAuthSettings, ProviderTlsSettings, Settings};
use crate::pseudonym::KeySource;
use std::path::Path;

/// Published hex keys (storage and pseudonym keys), by file.
const HEX_KEYS: &[(&str, &str)] = &[
    (
        "config/dev/pseudonym-audit-v1.key",
        include_str!("../config/dev/pseudonym-audit-v1.key"),
    ),
    (
        "config/dev/pseudonym-bchft-v1.key",
        include_str!("../config/dev/pseudonym-bchft-v1.key"),
    ),
    (
        "config/dev/pseudonym-prospects-v1.key",
        include_str!("../config/dev/pseudonym-prospects-v1.key"),
    ),
    (
        "config/dev/storage-v1.key",
        include_str!("../config/dev/storage-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-audit-v1.key",
        include_str!("../tests/fixtures/keys/pseudonym-audit-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-audit-v2.key",
        include_str!("../tests/fixtures/keys/pseudonym-audit-v2.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-bchft-v1.key",
        include_str!("../tests/fixtures/keys/pseudonym-bchft-v1.key"),
    ),
    (
        "tests/fixtures/keys/pseudonym-prospects-v1.key",
        include_str!("../tests/fixtures/keys/pseudonym-prospects-v1.key"),
    ),
    (
        "tests/fixtures/keys/storage-v1.key",
        include_str!("../tests/fixtures/keys/storage-v1.key"),
    ),
    (
        "tests/fixtures/keys/storage-v2.key",
        include_str!("../tests/fixtures/keys/storage-v2.key"),
    ),
];

/// Published PEM files: private keys, public keys and certificates.
const PEM_FILES: &[(&str, &str)] = &[
    (
        "config/dev/audit-checkpoint.pem",
        include_str!("../config/dev/audit-checkpoint.pem"),
    ),
    (
        "config/dev/audit-checkpoint.pub.pem",
        include_str!("../config/dev/audit-checkpoint.pub.pem"),
    ),
    (
        "config/dev/dev-signing-key.pem",
        include_str!("../config/dev/dev-signing-key.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint-other.pem",
        include_str!("../tests/fixtures/keys/audit-checkpoint-other.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint-other.pub.pem",
        include_str!("../tests/fixtures/keys/audit-checkpoint-other.pub.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint.pem",
        include_str!("../tests/fixtures/keys/audit-checkpoint.pem"),
    ),
    (
        "tests/fixtures/keys/audit-checkpoint.pub.pem",
        include_str!("../tests/fixtures/keys/audit-checkpoint.pub.pem"),
    ),
    (
        "tests/fixtures/keys/forger.pem",
        include_str!("../tests/fixtures/keys/forger.pem"),
    ),
    (
        "tests/fixtures/keys/test-issuer.pem",
        include_str!("../tests/fixtures/keys/test-issuer.pem"),
    ),
    (
        "tests/fixtures/tls/ca.pem",
        include_str!("../tests/fixtures/tls/ca.pem"),
    ),
    (
        "tests/fixtures/tls/client.key",
        include_str!("../tests/fixtures/tls/client.key"),
    ),
    (
        "tests/fixtures/tls/client.pem",
        include_str!("../tests/fixtures/tls/client.pem"),
    ),
    (
        "tests/fixtures/tls/other-ca.pem",
        include_str!("../tests/fixtures/tls/other-ca.pem"),
    ),
    (
        "tests/fixtures/tls/other-client.key",
        include_str!("../tests/fixtures/tls/other-client.key"),
    ),
    (
        "tests/fixtures/tls/other-client.pem",
        include_str!("../tests/fixtures/tls/other-client.pem"),
    ),
    (
        "tests/fixtures/tls/other-server.key",
        include_str!("../tests/fixtures/tls/other-server.key"),
    ),
    (
        "tests/fixtures/tls/other-server.pem",
        include_str!("../tests/fixtures/tls/other-server.pem"),
    ),
    (
        "tests/fixtures/tls/server.key",
        include_str!("../tests/fixtures/tls/server.key"),
    ),
    (
        "tests/fixtures/tls/server.pem",
        include_str!("../tests/fixtures/tls/server.pem"),
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

/// The published hex key whose key bytes are `key`, if any.
fn published_hex(key: &[u8]) -> Option<&'static str> {
    HEX_KEYS
        .iter()
        .find(|(_, text)| hex::decode(text.trim()).is_ok_and(|k| k == key))
        .map(|(name, _)| *name)
}

/// The published PEM file sharing a block (a key or certificate, compared by its
/// decoded content) with `pem`, if any.
fn published_pem(pem: &[u8]) -> Option<&'static str> {
    let blocks = pem::parse_many(pem).ok()?;
    PEM_FILES
        .iter()
        .find(|(_, text)| {
            pem::parse_many(text).is_ok_and(|published| {
                published
                    .iter()
                    .any(|p| blocks.iter().any(|b| b.contents() == p.contents()))
            })
        })
        .map(|(name, _)| *name)
}

/// Checks every hex key and every PEM file the settings name. What cannot be read
/// here is passed over: the part of the gateway that loads it reports that with its
/// own message.
pub fn refuse_published(settings: &Settings) -> Result<(), PublishedKey> {
    let mut found = Checked::default();
    if let Some(storage) = &settings.keys.storage {
        for (version, source) in &storage.versions {
            found.hex(format!("keys.storage.versions.{version}"), source);
        }
    }
    for (recipient, keys) in &settings.keys.pseudonym {
        for (version, source) in &keys.versions {
            found.hex(
                format!("keys.pseudonym.{recipient}.versions.{version}"),
                source,
            );
        }
    }
    if let Some(c) = &settings.audit.checkpoint {
        if let Some(private) = &c.private_key_file {
            found.pem("audit.checkpoint.private_key_file".into(), private);
        }
        found.pem(
            "audit.checkpoint.public_key_file".into(),
            &c.public_key_file,
        );
    }
    if let Some(tls) = &settings.server.tls {
        found.pem("server.tls.cert_file".into(), &tls.cert_file);
        found.pem("server.tls.key_file".into(), &tls.key_file);
        if let Some(ca) = &tls.client_ca_file {
            found.pem("server.tls.client_ca_file".into(), ca);
        }
    }
    for (id, p) in &settings.providers {
        found.client(&format!("providers.{id}"), p.oauth.as_ref(), p.tls.as_ref());
    }
    for (id, g) in &settings.gp_callbacks {
        found.client(
            &format!("gp_callbacks.{id}"),
            g.oauth.as_ref(),
            g.tls.as_ref(),
        );
    }
    match found.0 {
        Some(published) => Err(published),
        None => Ok(()),
    }
}

/// The first published key found, in the order the settings are checked.
#[derive(Default)]
struct Checked(Option<PublishedKey>);

impl Checked {
    fn note(&mut self, setting: String, published: Option<&'static str>) {
        if self.0.is_none()
            && let Some(published) = published
        {
            self.0 = Some(PublishedKey { setting, published });
        }
    }

    fn hex(&mut self, setting: String, source: &KeySource) {
        let text = match source {
            KeySource::File(path) => std::fs::read_to_string(path).ok(),
            KeySource::Env(var) => std::env::var(var).ok(),
        };
        let published = text
            .and_then(|t| hex::decode(t.trim()).ok())
            .and_then(|key| published_hex(&key));
        self.note(setting, published);
    }

    fn pem(&mut self, setting: String, path: &Path) {
        let published = std::fs::read(path).ok().and_then(|p| published_pem(&p));
        self.note(setting, published);
    }

    fn client(
        &mut self,
        at: &str,
        oauth: Option<&OAuthSettings>,
        tls: Option<&ProviderTlsSettings>,
    ) {
        if let Some(o) = oauth {
            self.pem(format!("{at}.oauth.key_file"), &o.key_file);
        }
        if let Some(t) = tls {
            for (name, file) in [
                ("ca_file", &t.ca_file),
                ("client_cert_file", &t.client_cert_file),
                ("client_key_file", &t.client_key_file),
            ] {
                if let Some(file) = file {
                    self.pem(format!("{at}.tls.{name}"), file);
                }
            }
        }
    }
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
            .map(|(name, _)| *name)
            .collect();
        for dir in ["config/dev", "tests/fixtures/keys", "tests/fixtures/tls"] {
            let entries = std::fs::read_dir(root.join(dir)).expect("published folder");
            for entry in entries {
                let name = entry.expect("entry").file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".key") || name.ends_with(".pem") {
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
            assert_eq!(published_hex(&key), Some(*name));
        }
        for (name, text) in PEM_FILES {
            let blocks = pem::parse_many(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!blocks.is_empty(), "{name}: no PEM block");
            assert!(published_pem(text.as_bytes()).is_some(), "{name}");
        }
    }

    #[test]
    fn content_is_compared_not_names_or_layout() {
        let storage = include_str!("../config/dev/storage-v1.key").trim();
        let upper = hex::decode(storage.to_uppercase()).expect("hex");
        assert_eq!(published_hex(&upper), Some("config/dev/storage-v1.key"));
        assert_eq!(published_hex(&[7u8; 32]), None);

        // The same key re-wrapped (other line lengths, CRLF) is still the same key.
        let pem_text = include_str!("../tests/fixtures/tls/server.key");
        let block = pem::parse(pem_text).expect("PEM");
        let rewrapped = pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::CRLF),
        );
        assert_eq!(
            published_pem(rewrapped.as_bytes()),
            Some("tests/fixtures/tls/server.key")
        );
        let fresh = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1u8; 48]));
        assert_eq!(published_pem(fresh.as_bytes()), None);
        assert_eq!(published_pem(b"not PEM at all"), None);
    }
}
