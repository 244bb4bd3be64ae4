//! The audit trail: pending records, sealing them into the chain, reading it, and its signed checkpoints.

use super::{AuditFilter, AuditRecord, AuditRow, CheckpointRow, StoreError};
use async_trait::async_trait;

/// The audit trail: pending records, sealing them into the chain, reading it, and its signed checkpoints.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Writes a decision record on its own (rejections: nothing else is written).
    ///
    /// Every audit record, here and in the transactions that write one with their
    /// change, is written pending: durable with its change, and linked into the hash
    /// chain by [`AuditStore::seal_audit`], which the gateway runs every
    /// `audit.seal_interval_ms` and reads of the trail run first.
    async fn append_audit(&self, a: &AuditRecord) -> Result<(), StoreError>;
    /// Links every pending record into the hash chain, oldest first, in batches that
    /// each take the chain head for their transaction (sealers in several processes
    /// take turns); returns how many it sealed. Fails, sealing nothing more, when the
    /// chain has no head.
    async fn seal_audit(&self) -> Result<u64, StoreError>;
    /// How many audit records wait to be sealed.
    async fn audit_pending(&self) -> Result<i64, StoreError>;
    /// Audit records in order, oldest first, after `after_id` (pending ones sealed
    /// first, where sealing succeeds).
    async fn audit_after(&self, after_id: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError>;
    /// Chained audit records in chain order, after place `after_seq`. Seals nothing.
    async fn audit_chain(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError>;
    /// Records outside the chain: how many were written before it began, and the id
    /// of the first one written after it began (which should not exist).
    async fn audit_unchained(&self) -> Result<(u64, Option<i64>), StoreError>;
    /// The place of the record with this hash, if any.
    async fn audit_seq_of_hash(&self, hash: &str) -> Result<Option<i64>, StoreError>;
    /// The chain head as sealers keep it: last place and hash. Seals nothing.
    async fn audit_head(&self) -> Result<(i64, String), StoreError>;
    /// Records matching `filter`, in chain order, after place `after_seq` (pending
    /// ones sealed first, where sealing succeeds: a failure is logged, and what is
    /// chained is still answered).
    async fn audit_query(
        &self,
        filter: &AuditFilter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// Chained records of `action` at or after `since`, counted by recipient, outcome
    /// and HTTP status (pending ones sealed first, as for [`AuditStore::audit_query`]).
    async fn audit_counts(
        &self,
        action: &str,
        since: fhir_sdk::time::OffsetDateTime,
    ) -> Result<Vec<AuditCount>, StoreError>;
    async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError>;
    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError>;
}

/// How many records of one action had one recipient, outcome and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCount {
    pub recipient: Option<String>,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub count: i64,
}
