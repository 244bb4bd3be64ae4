//! Referrals: accepting, reading, updating and purging them, and their deliveries.

use super::{
    AuditRecord, DeliveryRow, Inserted, NewReferralRecord, ReferralRow, StoreError, UpdateRecord,
    Updated,
};
use async_trait::async_trait;
use fhir_sdk::time::OffsetDateTime;

/// A referral as operators see it: where it stands, never whom it is about.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReferralSummary {
    pub id: super::ReferralId,
    pub reference: String,
    pub practice_ods: String,
    pub programme: String,
    pub provider: String,
    pub status: super::ReferralStatus,
    pub milestone: crate::domain::Milestone,
    pub correlation_id: String,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When retention purged its personal data.
    #[serde(with = "fhir_sdk::time::serde::rfc3339::option")]
    pub purged_at: Option<OffsetDateTime>,
}

/// Referrals: accepting, reading, updating and purging them, and their deliveries.
#[async_trait]
pub trait ReferralStore: Send + Sync {
    /// Writes an accepted referral with everything that belongs to it, atomically.
    async fn insert_referral(&self, r: &NewReferralRecord) -> Result<Inserted, StoreError>;
    async fn referral(&self, id: &str) -> Result<Option<ReferralRow>, StoreError>;
    /// The referral a practice's system knows by one of its own identifiers.
    async fn referral_by_sender_identifier(
        &self,
        practice_ods: &str,
        system: &str,
        value: &str,
    ) -> Result<Option<ReferralRow>, StoreError>;
    /// Referrals known by an identifier: the gateway's reference (`by_reference`) or
    /// any practice's own ServiceRequest identifier with this value (and `system`, when
    /// given). The caller scopes them to the practices it may see.
    async fn referrals_by_identifier(
        &self,
        by_reference: bool,
        system: Option<&str>,
        value: &str,
    ) -> Result<Vec<ReferralRow>, StoreError>;
    /// Cancels or withdraws, atomically and only while the referral is active.
    async fn apply_update(&self, u: &UpdateRecord) -> Result<Updated, StoreError>;
    async fn deliveries_for(&self, referral_id: &str) -> Result<Vec<DeliveryRow>, StoreError>;
    /// Purges the personal data of every referral whose last change (its own or any
    /// delivery's) is before `cutoff` and whose deliveries are all settled (delivered,
    /// cancelled, or dead and resolved): the message and NHS number become empty,
    /// `purged_at` is set, and the error excerpts of those deliveries are cleared. One
    /// guarded statement, so concurrent gateways never purge a referral twice. When
    /// anything was purged, `audit` is written in the same transaction with
    /// `detail.referrals` set to the count. Returns the count.
    async fn purge_settled(
        &self,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<u64, StoreError>;
    /// Referrals an operator names by a business key: the gateway id, the reference,
    /// the correlation id, or a sender's ServiceRequest identifier value. Metadata
    /// only; every match, oldest first (at most 100).
    async fn find_referrals(&self, key: &str) -> Result<Vec<ReferralSummary>, StoreError>;
    /// Referrals about the subject with any of these audit pseudonyms.
    async fn referrals_about(
        &self,
        subjects: &[String],
    ) -> Result<Vec<ReferralSummary>, StoreError>;
    /// How many referrals are stored (all states).
    async fn count_referrals(&self) -> Result<i64, StoreError>;
    /// Seals personal data still held in the clear, written before encryption at rest
    /// (`thrive-gateway migrate` does this once); returns how many referrals it sealed.
    /// Serving never does: there, a value not sealed is corrupt, not trusted.
    async fn seal_plaintext(&self) -> Result<u64, StoreError>;
}
