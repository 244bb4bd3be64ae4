//! Keyed pseudonyms, one key set per recipient: the mapping step replaces the NHS number
//! with a pseudonym before anything leaves, and the audit trail holds pseudonyms only.
//!
//! A pseudonym is `"<version>:<hex HMAC-SHA256(key, input)>"`. The same input gives the
//! same pseudonym for one recipient's key version, so a provider can link its own
//! referrals; different recipients have different keys, so their pseudonyms cannot be
//! linked to each other. The key version travels with the pseudonym, so keys can be
//! rotated: new pseudonyms use the active version and old ones still verify.
//!
//! Keys come from files or environment variables named in configuration, hex-encoded,
//! at least 32 bytes. They are never generated at random (a random key per process
//! would change every pseudonym on restart) and never printed: `Debug` and every error
//! name the recipient, version and where the key lives, never the key.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{collections::BTreeMap, fmt, path::PathBuf};

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes: the HMAC-SHA256 output size, as RFC 2104 advises.
pub const MIN_KEY_BYTES: usize = 32;

/// A pseudonym as disclosed: `v1:` followed by 64 lower-case hex digits.
/// Made only by [`PseudonymKeys::pseudonym`], so it always has that form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Pseudonym(String);

impl Pseudonym {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The key version that made it, so a verifier knows which key to use.
    pub fn key_version(&self) -> &str {
        self.0.split_once(':').map_or("", |(v, _)| v)
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One recipient's pseudonym keys as configured:
/// `[keys.pseudonym.<recipient>]` with `active` and `[...versions.<vN>]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymKeySettings {
    /// The version used for new pseudonyms; every version still verifies.
    pub active: String,
    pub versions: BTreeMap<String, KeySource>,
}

/// Where one key version lives. Written as a table with exactly one of
/// `file = "<path>"` or `env = "<VARIABLE>"`; either holds the key in hex.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawKeySource")]
pub enum KeySource {
    /// A file whose whole contents, trimmed, are the hex key (a mounted secret).
    File(PathBuf),
    /// An environment variable holding the hex key.
    Env(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySource {
    file: Option<PathBuf>,
    env: Option<String>,
}

impl TryFrom<RawKeySource> for KeySource {
    type Error = String;

    fn try_from(raw: RawKeySource) -> Result<Self, Self::Error> {
        match (raw.file, raw.env) {
            (Some(file), None) => Ok(Self::File(file)),
            (None, Some(env)) => Ok(Self::Env(env)),
            (Some(_), Some(_)) => Err("a key version takes `file` or `env`, not both".to_owned()),
            (None, None) => {
                Err("a key version needs `file = \"<path>\"` or `env = \"<VAR>\"`".to_owned())
            }
        }
    }
}

/// Why a key source could not be read. Holds no key material.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be read.
    Unreadable(std::io::Error),
    /// The variable is not set (or not Unicode).
    MissingEnv,
}

impl KeySource {
    /// The key text the source holds (hex, untrimmed), held as a secret.
    pub fn read(&self) -> Result<SecretString, ReadError> {
        match self {
            KeySource::File(path) => std::fs::read_to_string(path)
                .map(SecretString::from)
                .map_err(ReadError::Unreadable),
            KeySource::Env(var) => std::env::var(var)
                .map(SecretString::from)
                .map_err(|_| ReadError::MissingEnv),
        }
    }
}

/// Where a key came from, for error messages: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    Env(String),
    /// Given directly, as tests do through [`PseudonymKeys::from_hex`].
    Inline,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Inline => f.write_str("inline key"),
        }
    }
}

impl From<&KeySource> for KeyOrigin {
    fn from(source: &KeySource) -> Self {
        match source {
            KeySource::File(path) => Self::File(path.clone()),
            KeySource::Env(var) => Self::Env(var.clone()),
        }
    }
}

/// Why a recipient's keys could not be loaded. Names the recipient, version and origin;
/// never holds key material (hex decoding errors, which quote the bad character, are
/// deliberately dropped).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "pseudonym keys for {recipient}: active version `{active}` is not among the configured versions"
    )]
    UnknownActive { recipient: String, active: String },
    #[error(
        "pseudonym keys for {recipient}: version name `{version}` must be `v` followed by digits"
    )]
    BadVersionName { recipient: String, version: String },
    #[error("pseudonym key {recipient} {version} ({origin}): cannot read: {error}")]
    Unreadable {
        recipient: String,
        version: String,
        origin: KeyOrigin,
        #[source]
        error: std::io::Error,
    },
    #[error("pseudonym key {recipient} {version} ({origin}): the variable is not set")]
    MissingEnv {
        recipient: String,
        version: String,
        origin: KeyOrigin,
    },
    #[error("pseudonym key {recipient} {version} ({origin}): not hex-encoded")]
    NotHex {
        recipient: String,
        version: String,
        origin: KeyOrigin,
    },
    #[error(
        "pseudonym key {recipient} {version} ({origin}): {bytes} bytes, at least {MIN_KEY_BYTES} needed"
    )]
    TooShort {
        recipient: String,
        version: String,
        origin: KeyOrigin,
        bytes: usize,
    },
}

/// One recipient's keys, ready to make and check pseudonyms.
///
/// Each version is held as an HMAC already keyed (cloned per use), so making a
/// pseudonym cannot fail; the raw key bytes are zeroised as soon as that is built.
pub struct PseudonymKeys {
    recipient: String,
    active: String,
    /// The active version's HMAC, so making a pseudonym needs no lookup that could miss.
    active_mac: HmacSha256,
    versions: BTreeMap<String, HmacSha256>,
}

impl fmt::Debug for PseudonymKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PseudonymKeys")
            .field("recipient", &self.recipient)
            .field("active", &self.active)
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PseudonymKeys {
    /// Reads every configured version of `recipient`'s keys from its file or variable.
    pub fn load(recipient: &str, settings: &PseudonymKeySettings) -> Result<Self, KeyError> {
        let mut versions = Vec::with_capacity(settings.versions.len());
        for (version, source) in &settings.versions {
            check_version_name(recipient, version)?;
            let origin = KeyOrigin::from(source);
            let text = source.read().map_err(|e| match e {
                ReadError::Unreadable(error) => KeyError::Unreadable {
                    recipient: recipient.to_owned(),
                    version: version.clone(),
                    origin: origin.clone(),
                    error,
                },
                ReadError::MissingEnv => KeyError::MissingEnv {
                    recipient: recipient.to_owned(),
                    version: version.clone(),
                    origin: origin.clone(),
                },
            })?;
            versions.push((version.clone(), text, origin));
        }
        Self::build(recipient, &settings.active, versions)
    }

    /// Builds keys from hex strings, for tests and tools: `[("v1", "00ff..."), ...]`.
    pub fn from_hex<'a>(
        recipient: &str,
        active: &str,
        versions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, KeyError> {
        let versions = versions
            .into_iter()
            .map(|(v, hex)| (v.to_owned(), SecretString::from(hex), KeyOrigin::Inline))
            .collect();
        Self::build(recipient, active, versions)
    }

    fn build(
        recipient: &str,
        active: &str,
        versions: Vec<(String, SecretString, KeyOrigin)>,
    ) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for (version, text, origin) in versions {
            check_version_name(recipient, &version)?;
            let bytes = hex::decode(text.expose_secret().trim()).map_err(|_| KeyError::NotHex {
                recipient: recipient.to_owned(),
                version: version.clone(),
                origin: origin.clone(),
            })?;
            let key = SecretBox::new(Box::new(bytes));
            let len = key.expose_secret().len();
            if len < MIN_KEY_BYTES {
                return Err(KeyError::TooShort {
                    recipient: recipient.to_owned(),
                    version,
                    origin,
                    bytes: len,
                });
            }
            // HMAC takes keys of any length, so this only fails on an impossible length.
            let mac = HmacSha256::new_from_slice(key.expose_secret()).map_err(|_| {
                KeyError::TooShort {
                    recipient: recipient.to_owned(),
                    version: version.clone(),
                    origin: origin.clone(),
                    bytes: len,
                }
            })?;
            keys.insert(version, mac);
        }
        let Some(active_mac) = keys.get(active).cloned() else {
            return Err(KeyError::UnknownActive {
                recipient: recipient.to_owned(),
                active: active.to_owned(),
            });
        };
        Ok(Self {
            recipient: recipient.to_owned(),
            active: active.to_owned(),
            active_mac,
            versions: keys,
        })
    }

    /// Whose keys these are (a provider id, `audit`, `reporting`).
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// The version new pseudonyms are made with; recorded with each disclosure.
    pub fn key_version(&self) -> &str {
        &self.active
    }

    /// The pseudonym of `input` under the active key version.
    pub fn pseudonym(&self, input: &str) -> Pseudonym {
        let tag = keyed(&self.active_mac, input).finalize().into_bytes();
        Pseudonym(format!("{}:{}", self.active, hex::encode(tag)))
    }

    /// `input`'s pseudonym under every configured version, active first: what an
    /// auditor's lookup matches, so records made before a key rotation are found.
    pub fn all_pseudonyms(&self, input: &str) -> Vec<String> {
        let mut all = vec![self.pseudonym(input).into_string()];
        for (version, key) in &self.versions {
            if *version != self.active {
                let tag = keyed(key, input).finalize().into_bytes();
                all.push(format!("{version}:{}", hex::encode(tag)));
            }
        }
        all
    }

    /// True when `pseudonym` is `input`'s pseudonym under any configured version, so
    /// pseudonyms disclosed before a key rotation still check. Compares in constant time.
    pub fn verify(&self, input: &str, pseudonym: &str) -> bool {
        let Some((version, tag)) = pseudonym.split_once(':') else {
            return false;
        };
        let Some(key) = self.versions.get(version) else {
            return false;
        };
        // Upper-case hex would decode too; only the form `pseudonym` emits is accepted.
        if tag.bytes().any(|b| b.is_ascii_uppercase()) {
            return false;
        }
        match hex::decode(tag) {
            Ok(tag) => keyed(key, input).verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// `mac` (already keyed) over `input`.
fn keyed(mac: &HmacSha256, input: &str) -> HmacSha256 {
    let mut mac = mac.clone();
    mac.update(input.as_bytes());
    mac
}

fn check_version_name(recipient: &str, version: &str) -> Result<(), KeyError> {
    let ok = version
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadVersionName {
            recipient: recipient.to_owned(),
            version: version.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
    const NHS: &str = "9990000018";

    fn keys(recipient: &str, active: &str, versions: &[(&str, &str)]) -> PseudonymKeys {
        PseudonymKeys::from_hex(recipient, active, versions.iter().copied()).unwrap()
    }

    #[test]
    fn known_answer_matches_hmac_sha256_computed_directly() {
        let k = keys("bchft", "v1", &[("v1", K1)]);
        let mut direct = HmacSha256::new_from_slice(&hex::decode(K1).unwrap()).unwrap();
        direct.update(NHS.as_bytes());
        let expected = format!("v1:{}", hex::encode(direct.finalize().into_bytes()));
        assert_eq!(k.pseudonym(NHS).as_str(), expected);
    }

    #[test]
    fn rfc_4231_test_case_2_with_a_long_enough_key() {
        // RFC 4231 case 2 uses the 4-byte key "Jefe", shorter than we accept. HMAC pads
        // short keys with zeros to the block size, so the same key zero-extended to 32
        // bytes gives the RFC's published tag.
        let key = format!("{}{}", hex::encode("Jefe"), "00".repeat(28));
        let k = keys("t", "v1", &[("v1", &key)]);
        assert_eq!(
            k.pseudonym("what do ya want for nothing?").as_str(),
            "v1:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn same_input_same_key_same_pseudonym_in_the_documented_form() {
        let k = keys("bchft", "v1", &[("v1", K1)]);
        let p = k.pseudonym(NHS);
        assert_eq!(p, k.pseudonym(NHS));
        assert_ne!(p, k.pseudonym("9990000026"));
        let (version, tag) = p.as_str().split_once(':').unwrap();
        assert_eq!(version, "v1");
        assert_eq!(p.key_version(), "v1");
        assert_eq!(tag.len(), 64);
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(!p.as_str().contains(NHS));
    }

    #[test]
    fn recipients_with_different_keys_cannot_be_linked() {
        let a = keys("bchft", "v1", &[("v1", K1)]);
        let b = keys("prospects", "v1", &[("v1", K2)]);
        assert_ne!(a.pseudonym(NHS), b.pseudonym(NHS));
        assert!(!b.verify(NHS, a.pseudonym(NHS).as_str()));
    }

    #[test]
    fn rotation_new_pseudonyms_use_the_active_version_old_ones_still_verify() {
        let before = keys("bchft", "v1", &[("v1", K1)]);
        let old = before.pseudonym(NHS);
        let after = keys("bchft", "v2", &[("v1", K1), ("v2", K2)]);
        let new = after.pseudonym(NHS);
        assert_eq!(after.key_version(), "v2");
        assert!(new.as_str().starts_with("v2:"));
        assert_ne!(old, new);
        assert!(after.verify(NHS, old.as_str()));
        assert!(after.verify(NHS, new.as_str()));
        // Until v2 is configured, its pseudonyms cannot be checked.
        assert!(!before.verify(NHS, new.as_str()));
    }

    #[test]
    fn verify_rejects_wrong_input_tampering_and_malformed_pseudonyms() {
        let k = keys("bchft", "v1", &[("v1", K1)]);
        let p = k.pseudonym(NHS).into_string();
        assert!(!k.verify("9990000026", &p));
        let mut flipped = p.clone();
        let last = if p.ends_with('0') { "1" } else { "0" };
        flipped.replace_range(p.len() - 1.., last);
        assert!(!k.verify(NHS, &flipped));
        assert!(!k.verify(NHS, &p[..p.len() - 2]), "truncated");
        assert!(!k.verify(NHS, &p.to_ascii_uppercase().replacen('V', "v", 1)));
        assert!(
            !k.verify(NHS, &p.replacen("v1:", "v9:", 1)),
            "unknown version"
        );
        assert!(!k.verify(NHS, &p.replacen("v1:", "", 1)), "no version");
        assert!(!k.verify(NHS, "v1:zz"));
    }

    #[test]
    fn debug_never_prints_key_material() {
        let k = keys("bchft", "v2", &[("v1", K1), ("v2", K2)]);
        let debug = format!("{k:?}");
        assert!(debug.contains("bchft") && debug.contains("v2"), "{debug}");
        for secret in [K1, K2, &K1[..16], &K2[..16]] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(!debug.contains("[0, 1, 2"), "{debug}");
    }

    #[test]
    fn settings_take_exactly_one_of_file_or_env() {
        let ok: PseudonymKeySettings = toml::from_str(
            "active = \"v2\"\n[versions.v1]\nfile = \"/run/secrets/k1\"\n[versions.v2]\nenv = \"K2\"\n",
        )
        .unwrap();
        assert_eq!(ok.versions["v1"], KeySource::File("/run/secrets/k1".into()));
        assert_eq!(ok.versions["v2"], KeySource::Env("K2".into()));

        let both = toml::from_str::<PseudonymKeySettings>(
            "active = \"v1\"\n[versions.v1]\nfile = \"/k\"\nenv = \"K\"\n",
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let neither =
            toml::from_str::<PseudonymKeySettings>("active = \"v1\"\n[versions.v1]\n").unwrap_err();
        assert!(neither.to_string().contains("needs `file"), "{neither}");
        let unknown = toml::from_str::<PseudonymKeySettings>(
            "active = \"v1\"\n[versions.v1]\nfile = \"/k\"\nkey = \"00\"\n",
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("key"), "{unknown}");
    }

    fn settings(active: &str, versions: &[(&str, KeySource)]) -> PseudonymKeySettings {
        PseudonymKeySettings {
            active: active.to_owned(),
            versions: versions
                .iter()
                .cloned()
                .map(|(v, s)| (v.to_owned(), s))
                .collect(),
        }
    }

    #[test]
    fn load_reads_trimmed_hex_from_files_and_agrees_with_from_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bchft-v1");
        std::fs::write(&path, format!("  {K1}\n")).unwrap();
        let loaded =
            PseudonymKeys::load("bchft", &settings("v1", &[("v1", KeySource::File(path))]))
                .unwrap();
        assert_eq!(loaded.recipient(), "bchft");
        assert_eq!(
            loaded.pseudonym(NHS),
            keys("bchft", "v1", &[("v1", K1)]).pseudonym(NHS)
        );
    }

    #[test]
    fn load_reads_the_named_environment_variable_and_never_quotes_it() {
        // The crate forbids `unsafe`, so tests cannot set variables: PATH is present and
        // not hex, which shows the variable was read, and its value stays out of the error.
        let path = std::env::var("PATH").unwrap();
        let err = PseudonymKeys::load(
            "bchft",
            &settings("v1", &[("v1", KeySource::Env("PATH".into()))]),
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::NotHex { .. }), "{err}");
        assert!(
            err.to_string().contains("environment variable PATH"),
            "{err}"
        );
        assert!(!err.to_string().contains(&path), "{err}");
    }

    #[test]
    fn every_key_error_names_recipient_version_and_origin_but_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, &K1[..62]).unwrap();
        let not_hex = dir.path().join("not-hex");
        let bad = format!("{}zz", &K1[..62]);
        std::fs::write(&not_hex, &bad).unwrap();
        let missing = dir.path().join("missing");

        let cases: Vec<(PseudonymKeySettings, &str)> = vec![
            (
                settings("v2", &[("v1", KeySource::File(short.clone()))]),
                "31 bytes, at least 32",
            ),
            (
                settings("v1", &[("v1", KeySource::File(not_hex.clone()))]),
                "not hex",
            ),
            (
                settings("v1", &[("v1", KeySource::File(missing.clone()))]),
                "cannot read",
            ),
            (
                settings(
                    "v1",
                    &[("v1", KeySource::Env("THRIVE_TEST_NO_SUCH_KEY_VAR".into()))],
                ),
                "THRIVE_TEST_NO_SUCH_KEY_VAR",
            ),
            (
                settings("key1", &[("key1", KeySource::File(short.clone()))]),
                "`key1` must be `v` followed by digits",
            ),
        ];
        for (settings, expected) in cases {
            let err = PseudonymKeys::load("bchft", &settings)
                .unwrap_err()
                .to_string();
            assert!(err.contains("bchft"), "{err}");
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains(&K1[..20]) && !err.contains("zz"), "{err}");
            if !expected.contains("key1") {
                assert!(err.contains("v1"), "{err}");
            }
        }

        let file_err = PseudonymKeys::load(
            "bchft",
            &settings("v1", &[("v1", KeySource::File(short.clone()))]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            file_err.contains(&short.display().to_string()),
            "{file_err}"
        );

        let inactive =
            PseudonymKeys::from_hex("bchft", "v3", [("v1", K1), ("v2", K2)]).unwrap_err();
        assert!(matches!(inactive, KeyError::UnknownActive { .. }));
        assert!(inactive.to_string().contains("`v3`"), "{inactive}");
        let odd = PseudonymKeys::from_hex("bchft", "v1", [("v1", &K1[..63])]).unwrap_err();
        assert!(matches!(odd, KeyError::NotHex { .. }), "{odd}");
        for name in ["v", "V1", "v1a", "1", ""] {
            let err = PseudonymKeys::from_hex("bchft", name, [(name, K1)]).unwrap_err();
            assert!(
                matches!(err, KeyError::BadVersionName { .. }),
                "{name}: {err}"
            );
        }
    }
}
