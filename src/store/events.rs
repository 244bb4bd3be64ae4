//! Status events providers report about their referrals.

use super::{EventRecord, EventRecorded, EventRow, StoreError};
use async_trait::async_trait;

/// Status events providers report about their referrals.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Records a status event and moves the referral's milestone, atomically, only
    /// while the milestone is still `from`; queues its push to the GP system with it
    /// where `gp_push` says so.
    async fn record_event(&self, e: &EventRecord) -> Result<EventRecorded, StoreError>;
    /// A referral's status events, oldest first.
    async fn events_for(&self, referral_id: &str) -> Result<Vec<EventRow>, StoreError>;
    /// One status event by its id (a provider reads back the Task it posted).
    async fn event(&self, id: &str) -> Result<Option<EventRow>, StoreError>;
}
