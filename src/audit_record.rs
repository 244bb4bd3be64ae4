//! The audit record's format, on its own: the record as written, the row as stored,
//! the chained content and its hash, the time truncation both engines agree on, and the
//! signed checkpoint row. The store writes and reads these; the audit module walks and
//! verifies them; this module depends on neither.

use fhir_sdk::time::{OffsetDateTime, format_description::well_known::Rfc3339};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One decision for the audit table. Holds ids, codes and paths, never patient data.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub at: OffsetDateTime,
    /// e.g. `referral.new`, `referral.cancel`, `referral.read`.
    pub action: String,
    /// `accepted`, `rejected`, `allowed`, `denied`.
    pub outcome: String,
    pub http_status: Option<u16>,
    pub client_id: Option<String>,
    pub role: Option<String>,
    pub referral_id: Option<String>,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The NHS identity headers the caller sent, summarised (see
    /// `audit::identity`): staff and system identifiers, never the patient's.
    pub actor_identity: Option<String>,
    /// The subject's audit pseudonym. Left empty for a record about a stored
    /// referral, the store fills it in from the referral.
    pub subject: Option<String>,
    /// Who the data went (or would have gone) to: a provider or GP callback id.
    pub recipient: Option<String>,
    /// The mapping (dataset or routing table) and its version the decision used.
    pub mapping_version: Option<String>,
    /// The pseudonym key version used in a disclosure.
    pub key_version: Option<String>,
    /// JSON object: routing decision, consent summary, rejection codes and paths.
    pub detail: serde_json::Value,
}

impl AuditRecord {
    /// A record of `action` with `outcome` now, every other field empty.
    pub fn new(action: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self {
            at: OffsetDateTime::now_utc(),
            action: action.into(),
            outcome: outcome.into(),
            http_status: None,
            client_id: None,
            role: None,
            referral_id: None,
            request_id: None,
            correlation_id: None,
            actor_identity: None,
            subject: None,
            recipient: None,
            mapping_version: None,
            key_version: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// The record is about data going to `recipient`.
    pub fn to_recipient(mut self, recipient: &str) -> Self {
        self.recipient = Some(recipient.to_owned());
        self
    }

    /// The record is about this subject (audit pseudonym); the store need not look it up.
    pub fn about(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_owned());
        self
    }

    /// The record's decision used this mapping version.
    pub fn under_mapping(mut self, mapping_version: &str) -> Self {
        self.mapping_version = Some(mapping_version.to_owned());
        self
    }
}

/// A stored audit record. Its fields are the columns, spelled here once: exports write
/// and read it by these names, and a test holds the store's SQL and the CSV header to
/// them.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    /// Place in the hash chain (`None`: written before the chain existed).
    pub seq: Option<i64>,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub action: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub client_id: Option<String>,
    pub role: Option<String>,
    pub actor_identity: Option<String>,
    pub referral_id: Option<String>,
    pub subject: Option<String>,
    pub recipient: Option<String>,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub mapping_version: Option<String>,
    pub key_version: Option<String>,
    pub detail: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// The `prev_hash` of the first record in the chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Audit times are kept to the microsecond: what PostgreSQL stores, so a record
/// reads back exactly as it was hashed on either engine.
pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(fhir_sdk::time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// The content of one record as the chain covers it: every column but the id and
/// the record's place (`seq`), so that moving a record is caught by the links, not
/// mistaken for a change of content.
#[derive(Debug, Clone, Copy)]
pub struct ChainEntry<'a> {
    pub recorded_at: OffsetDateTime,
    pub action: &'a str,
    pub outcome: &'a str,
    pub http_status: Option<i32>,
    pub client_id: Option<&'a str>,
    pub role: Option<&'a str>,
    pub actor_identity: Option<&'a str>,
    pub referral_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub mapping_version: Option<&'a str>,
    pub key_version: Option<&'a str>,
    /// The detail JSON exactly as stored.
    pub detail: &'a str,
}

impl ChainEntry<'_> {
    /// SHA-256, lower-case hex, of `prev_hash` and the content as a JSON array in a
    /// fixed order (unambiguous: every string is quoted and escaped), that is of
    /// `["<prev_hash>",` followed by [`ChainEntry::tail`].
    pub fn hash(&self, prev_hash: &str) -> String {
        chain_hash(prev_hash, &self.tail())
    }

    /// The content after `prev_hash`: the JSON array `[recorded_at, action, outcome,
    /// http_status, client_id, role, actor_identity, referral_id, subject, recipient,
    /// request_id, correlation_id, mapping_version, key_version, detail]` without its
    /// opening bracket. It does not depend on the record before.
    pub fn tail(&self) -> String {
        let at = self.recorded_at.format(&Rfc3339).unwrap_or_default();
        // A tuple is written as a JSON array, without copying the content into a
        // `serde_json::Value` first.
        let mut content = serde_json::to_string(&(
            at,
            self.action,
            self.outcome,
            self.http_status,
            self.client_id,
            self.role,
            self.actor_identity,
            self.referral_id,
            self.subject,
            self.recipient,
            self.request_id,
            self.correlation_id,
            self.mapping_version,
            self.key_version,
            self.detail,
        ))
        .unwrap_or_default();
        // A JSON array always opens with `[`.
        if content.starts_with('[') {
            content.remove(0);
        }
        content
    }
}

/// The hash of a record whose content after `prev_hash` is `tail`
/// ([`ChainEntry::tail`]): SHA-256, lower-case hex, of the UTF-8 text
/// `["` + `prev_hash` + `",` + `tail`. A unit test holds this to the whole-array
/// formula. (Gateways before the sealer had PostgreSQL compute the same digest in
/// SQL; those records verify as any other.)
pub fn chain_hash(prev_hash: &str, tail: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"[\"");
    digest.update(prev_hash.as_bytes());
    digest.update(b"\",");
    digest.update(tail.as_bytes());
    hex::encode(digest.finalize())
}

impl AuditRow {
    /// The chained content of a stored record.
    pub fn entry(&self) -> ChainEntry<'_> {
        ChainEntry {
            recorded_at: self.recorded_at,
            action: &self.action,
            outcome: &self.outcome,
            http_status: self.http_status,
            client_id: self.client_id.as_deref(),
            role: self.role.as_deref(),
            actor_identity: self.actor_identity.as_deref(),
            referral_id: self.referral_id.as_deref(),
            subject: self.subject.as_deref(),
            recipient: self.recipient.as_deref(),
            request_id: self.request_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            mapping_version: self.mapping_version.as_deref(),
            key_version: self.key_version.as_deref(),
            detail: &self.detail,
        }
    }
}

/// A stored checkpoint.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub seq: i64,
    pub hash: String,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    pub key_id: String,
    /// Compact JWS (EdDSA) over the checkpoint claims (place and hash).
    pub signature: String,
}

/// The names of [`AuditRow`]'s columns, in its order, as its fields spell them.
#[cfg(test)]
pub(crate) fn row_columns() -> Vec<String> {
    let row = AuditRow {
        id: 1,
        seq: None,
        recorded_at: OffsetDateTime::UNIX_EPOCH,
        action: String::new(),
        outcome: String::new(),
        http_status: None,
        client_id: None,
        role: None,
        actor_identity: None,
        referral_id: None,
        subject: None,
        recipient: None,
        request_id: None,
        correlation_id: None,
        mapping_version: None,
        key_version: None,
        detail: String::new(),
        prev_hash: None,
        hash: None,
    };
    match serde_json::to_value(row) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}
