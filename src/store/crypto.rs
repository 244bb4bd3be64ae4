//! Encryption at rest of the personal data held for delivery (the identified referral
//! message and the NHS number), so that a copy of the database alone reveals no
//! identifiers.
//!
//! A value is stored as `enc:<version>:<base64(nonce || ciphertext || tag)>`: AES-256-GCM
//! with a random 96-bit nonce per value, under the storage key `<version>`. The
//! associated data binds each ciphertext to its table, column and row
//! (`referrals.message:<referral id>`), so a ciphertext copied to another row or
//! column does not decrypt. New values use the active version; every configured version
//! still decrypts, so keys can be rotated without rewriting old rows.
//!
//! Keys come from files or environment variables, exactly as pseudonym keys do
//! (`[keys.storage]` with `active` and `versions.<vN> = { file | env }`), hex-encoded,
//! exactly 32 bytes. They are never printed: `Debug` and every error name the version
//! and where the key lives, never the key, and decryption errors never quote the value.

pub use crate::config::StorageKeySettings;
use crate::pseudonym::{KeyOrigin, ReadError};
use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use std::{collections::BTreeMap, fmt};

/// AES-256: the key is exactly this many bytes.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// What every sealed value starts with.
pub const PREFIX: &str = "enc:";

/// A column holding sealed personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    ReferralMessage,
    ReferralNhsNumber,
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::ReferralMessage => "referrals.message",
            Column::ReferralNhsNumber => "referrals.nhs_number",
        }
    }

    /// The associated data: the column and the row the value belongs to.
    fn aad(self, row: &str) -> Vec<u8> {
        format!("{}:{row}", self.name()).into_bytes()
    }
}

/// Why the storage keys could not be loaded. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum StorageKeyError {
    #[error(
        "keys.storage is not configured: personal data held for delivery is encrypted at rest \
         with it (set keys.storage.active and keys.storage.versions.<vN>.file or .env; see README, \
         \"Encryption at rest\")"
    )]
    NotConfigured,
    #[error("keys.storage: active version `{0}` is not among the configured versions")]
    UnknownActive(String),
    #[error("keys.storage: version name `{0}` must be `v` followed by digits")]
    BadVersionName(String),
    #[error("storage key {version} ({origin}): cannot read: {error}")]
    Unreadable {
        version: String,
        origin: KeyOrigin,
        #[source]
        error: std::io::Error,
    },
    #[error("storage key {version} ({origin}): the variable is not set")]
    MissingEnv { version: String, origin: KeyOrigin },
    #[error("storage key {version} ({origin}): not hex-encoded")]
    NotHex { version: String, origin: KeyOrigin },
    #[error("storage key {version} ({origin}): {bytes} bytes, exactly {KEY_BYTES} needed")]
    WrongLength {
        version: String,
        origin: KeyOrigin,
        bytes: usize,
    },
}

/// Why a stored value could not be opened. Names the version at most, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("is not in the encrypted form")]
    NotSealed,
    #[error("names storage key {0}, which is not configured")]
    UnknownVersion(String),
    #[error("cannot be decrypted with storage key {0}")]
    Failed(String),
}

/// The storage keys, ready to seal and open values.
pub struct StorageKeys {
    active: String,
    ciphers: BTreeMap<String, Aes256Gcm>,
}

impl fmt::Debug for StorageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageKeys")
            .field("active", &self.active)
            .field("versions", &self.ciphers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl StorageKeys {
    /// Reads every configured version from its file or variable; `None` is refused with
    /// a message naming `keys.storage`.
    pub fn load(settings: Option<&StorageKeySettings>) -> Result<Self, StorageKeyError> {
        let settings = settings.ok_or(StorageKeyError::NotConfigured)?;
        let mut versions = Vec::with_capacity(settings.versions.len());
        for (version, source) in &settings.versions {
            check_version_name(version)?;
            let origin = KeyOrigin::from(source);
            let text = source.read().map_err(|e| match e {
                ReadError::Unreadable(error) => StorageKeyError::Unreadable {
                    version: version.clone(),
                    origin: origin.clone(),
                    error,
                },
                ReadError::MissingEnv => StorageKeyError::MissingEnv {
                    version: version.clone(),
                    origin: origin.clone(),
                },
            })?;
            versions.push((version.clone(), text, origin));
        }
        Self::build(&settings.active, versions)
    }

    /// Builds keys from hex strings, for tests and tools: `[("v1", "00ff..."), ...]`.
    pub fn from_hex<'a>(
        active: &str,
        versions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, StorageKeyError> {
        let versions = versions
            .into_iter()
            .map(|(v, hex)| (v.to_owned(), SecretString::from(hex), KeyOrigin::Inline))
            .collect();
        Self::build(active, versions)
    }

    fn build(
        active: &str,
        versions: Vec<(String, SecretString, KeyOrigin)>,
    ) -> Result<Self, StorageKeyError> {
        let mut ciphers = BTreeMap::new();
        for (version, text, origin) in versions {
            check_version_name(&version)?;
            let bytes =
                hex::decode(text.expose_secret().trim()).map_err(|_| StorageKeyError::NotHex {
                    version: version.clone(),
                    origin: origin.clone(),
                })?;
            let key = SecretBox::new(Box::new(bytes));
            let len = key.expose_secret().len();
            let cipher = (len == KEY_BYTES)
                .then(|| Aes256Gcm::new_from_slice(key.expose_secret()).ok())
                .flatten()
                .ok_or(StorageKeyError::WrongLength {
                    version: version.clone(),
                    origin,
                    bytes: len,
                })?;
            ciphers.insert(version, cipher);
        }
        if !ciphers.contains_key(active) {
            return Err(StorageKeyError::UnknownActive(active.to_owned()));
        }
        Ok(Self {
            active: active.to_owned(),
            ciphers,
        })
    }

    /// The version new values are sealed with.
    pub fn active_version(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` for `column` of row `row` under the active version.
    pub fn seal(&self, column: Column, row: &str, plaintext: &str) -> Result<String, SealError> {
        let cipher = self.ciphers.get(&self.active).ok_or(SealError)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|_| SealError)?;
        let aad = column.aad(row);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", self.active, STANDARD.encode(out)))
    }

    /// Opens a value [`seal`](Self::seal) made for the same column and row, with the
    /// version the value names.
    pub fn open(&self, column: Column, row: &str, value: &str) -> Result<String, OpenError> {
        let (version, body) = value
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or(OpenError::NotSealed)?;
        let cipher = self
            .ciphers
            .get(version)
            .ok_or_else(|| OpenError::UnknownVersion(printable_version(version)))?;
        let failed = || OpenError::Failed(version.to_owned());
        let bytes = STANDARD.decode(body).map_err(|_| failed())?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(failed());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| failed())?;
        let aad = column.aad(row);
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| failed())?;
        String::from_utf8(plain).map_err(|_| failed())
    }
}

/// Sealing failed: no randomness, or an impossible key state. Holds nothing.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a value could not be encrypted with the active storage key")]
pub struct SealError;

/// A version name as found in a stored value, safe to print: only the documented form.
fn printable_version(v: &str) -> String {
    if check_version_name(v).is_ok() && v.len() <= 12 {
        v.to_owned()
    } else {
        "(malformed)".to_owned()
    }
}

fn check_version_name(version: &str) -> Result<(), StorageKeyError> {
    let ok = version
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(StorageKeyError::BadVersionName(version.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
    const ROW: &str = "0b6f1f9e-8d1c-4c1e-9a51-3f6c2f0d7a11";
    const NHS: &str = "9990000018";

    fn keys(active: &str, versions: &[(&str, &str)]) -> StorageKeys {
        StorageKeys::from_hex(active, versions.iter().copied()).unwrap()
    }

    #[test]
    fn seal_and_open_round_trip_in_the_documented_form() {
        let k = keys("v1", &[("v1", K1)]);
        let sealed = k.seal(Column::ReferralNhsNumber, ROW, NHS).unwrap();
        assert!(sealed.starts_with("enc:v1:"), "{sealed}");
        assert!(!sealed.contains(NHS));
        assert_eq!(
            k.open(Column::ReferralNhsNumber, ROW, &sealed).unwrap(),
            NHS
        );
        let again = k.seal(Column::ReferralNhsNumber, ROW, NHS).unwrap();
        assert_ne!(sealed, again, "a fresh nonce every time");
        let empty = k.seal(Column::ReferralMessage, ROW, "").unwrap();
        assert_eq!(k.open(Column::ReferralMessage, ROW, &empty).unwrap(), "");
    }

    #[test]
    fn the_wrong_key_does_not_open_and_the_error_names_the_version_only() {
        let sealed = keys("v1", &[("v1", K1)])
            .seal(Column::ReferralNhsNumber, ROW, NHS)
            .unwrap();
        let other = keys("v1", &[("v1", K2)]);
        let err = other
            .open(Column::ReferralNhsNumber, ROW, &sealed)
            .unwrap_err();
        assert_eq!(err, OpenError::Failed("v1".into()));
        let text = err.to_string();
        assert!(
            text.contains("v1") && !text.contains(&sealed[7..20]),
            "{text}"
        );
        let missing = keys("v2", &[("v2", K2)])
            .open(Column::ReferralNhsNumber, ROW, &sealed)
            .unwrap_err();
        assert_eq!(missing, OpenError::UnknownVersion("v1".into()));
    }

    #[test]
    fn a_tampered_byte_or_another_row_or_column_does_not_open() {
        let k = keys("v1", &[("v1", K1)]);
        let sealed = k.seal(Column::ReferralMessage, ROW, "{\"a\":1}").unwrap();
        let (head, body) = sealed.split_at("enc:v1:".len());
        let mut bytes = STANDARD.decode(body).unwrap();
        for i in [0, NONCE_BYTES, bytes.len() - 1] {
            bytes[i] ^= 0x01;
            let tampered = format!("{head}{}", STANDARD.encode(&bytes));
            assert!(
                matches!(
                    k.open(Column::ReferralMessage, ROW, &tampered),
                    Err(OpenError::Failed(_))
                ),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        assert!(
            k.open(Column::ReferralMessage, "another-row", &sealed)
                .is_err()
        );
        assert!(k.open(Column::ReferralNhsNumber, ROW, &sealed).is_err());
        for bad in ["", NHS, "enc:v1", "enc:v1:!!!", "enc:v1:AAAA", "enc:x:AAAA"] {
            assert!(k.open(Column::ReferralMessage, ROW, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn after_rotation_new_values_use_the_active_version_and_old_ones_still_open() {
        let before = keys("v1", &[("v1", K1)]);
        let old = before.seal(Column::ReferralNhsNumber, ROW, NHS).unwrap();
        let after = keys("v2", &[("v1", K1), ("v2", K2)]);
        let new = after.seal(Column::ReferralNhsNumber, ROW, NHS).unwrap();
        assert!(new.starts_with("enc:v2:"));
        assert_eq!(after.active_version(), "v2");
        assert_eq!(
            after.open(Column::ReferralNhsNumber, ROW, &old).unwrap(),
            NHS
        );
        assert_eq!(
            after.open(Column::ReferralNhsNumber, ROW, &new).unwrap(),
            NHS
        );
    }

    #[test]
    fn key_errors_name_the_version_and_origin_never_the_key() {
        assert!(matches!(
            StorageKeys::from_hex("v1", [("v1", &K1[..62])]),
            Err(StorageKeyError::WrongLength { bytes: 31, .. })
        ));
        let long = format!("{K1}00");
        assert!(matches!(
            StorageKeys::from_hex("v1", [("v1", long.as_str())]),
            Err(StorageKeyError::WrongLength { bytes: 33, .. })
        ));
        let not_hex = format!("{}zz", &K1[..62]);
        let err = StorageKeys::from_hex("v1", [("v1", not_hex.as_str())]).unwrap_err();
        assert!(matches!(err, StorageKeyError::NotHex { .. }));
        assert!(!err.to_string().contains("zz"), "{err}");
        assert!(matches!(
            StorageKeys::from_hex("v2", [("v1", K1)]),
            Err(StorageKeyError::UnknownActive(_))
        ));
        assert!(matches!(
            StorageKeys::from_hex("key1", [("key1", K1)]),
            Err(StorageKeyError::BadVersionName(_))
        ));
        let none = StorageKeys::load(None).unwrap_err().to_string();
        assert!(none.contains("keys.storage"), "{none}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage-v1");
        std::fs::write(&path, format!("{K1}\n")).unwrap();
        let settings: StorageKeySettings = toml::from_str(&format!(
            "active = \"v1\"\n[versions.v1]\nfile = \"{}\"\n",
            path.display()
        ))
        .unwrap();
        let loaded = StorageKeys::load(Some(&settings)).unwrap();
        let sealed = keys("v1", &[("v1", K1)])
            .seal(Column::ReferralMessage, ROW, "x")
            .unwrap();
        assert_eq!(
            loaded.open(Column::ReferralMessage, ROW, &sealed).unwrap(),
            "x"
        );
        let debug = format!("{loaded:?}");
        assert!(
            debug.contains("v1") && !debug.contains(&K1[..16]),
            "{debug}"
        );

        let missing: StorageKeySettings = toml::from_str(
            "active = \"v1\"\n[versions.v1]\nenv = \"THRIVE_TEST_NO_SUCH_STORAGE_KEY\"\n",
        )
        .unwrap();
        let err = StorageKeys::load(Some(&missing)).unwrap_err().to_string();
        assert!(
            err.contains("THRIVE_TEST_NO_SUCH_STORAGE_KEY") && err.contains("v1"),
            "{err}"
        );
    }
}
