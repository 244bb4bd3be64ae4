//! What the gateway read from its MESH inbox, so that nothing read twice is acted on
//! twice, and what MESH's reports say about messages the gateway sent.

use super::{AuditRecord, DeliveryView, StoreError};
use async_trait::async_trait;
use fhir_sdk::time::OffsetDateTime;

/// One message read from the inbox and what became of it. No patient data: the body
/// is never kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct MeshInbound {
    pub message_id: String,
    /// The sending mailbox (empty for MESH's own reports).
    pub sender: String,
    pub workflow_id: String,
    /// `DATA` or `REPORT`.
    pub message_type: String,
    /// `recorded`, `duplicate`, `refused`, `undelivered` or `reported`.
    pub outcome: String,
    /// Why it was refused, or what the report said.
    pub reason: Option<String>,
    pub referral_id: Option<String>,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

#[async_trait]
pub trait MeshStore: Send + Sync {
    /// Whether the message with this MESH id was read and recorded before.
    async fn mesh_message_seen(&self, message_id: &str) -> Result<bool, StoreError>;
    /// Records a message read from the inbox, with its audit record when given, in
    /// one transaction; `false` (and nothing written) when it was recorded before.
    async fn record_mesh_message(
        &self,
        m: &MeshInbound,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError>;
    /// The messages read, newest first.
    async fn mesh_messages(&self, limit: i64) -> Result<Vec<MeshInbound>, StoreError>;
    /// The delivery sent with this request id (a MESH message's local id).
    async fn delivery_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<DeliveryView>, StoreError>;
    /// Makes a delivered delivery a dead letter, with its audit record: MESH could not
    /// hand it over. `false` when it is not (or no longer) delivered.
    async fn mark_undelivered(
        &self,
        id: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;
}
