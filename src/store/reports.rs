//! What the programme statistics and commissioner extracts read.

use super::{ReportRow, StoreError};
use async_trait::async_trait;
use fhir_sdk::time::OffsetDateTime;

/// What the programme statistics and commissioner extracts read.
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Referrals received in `[from, to)` with the events each reached; with their
    /// NHS numbers (decrypted, so only with the storage keys) when `identified`.
    async fn report_rows(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        identified: bool,
    ) -> Result<Vec<ReportRow>, StoreError>;
}
