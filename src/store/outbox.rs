//! The outbox: claiming deliveries, finishing them, and operating the queue and its dead letters.

use super::{AuditRecord, Claim, DeliveryOutcome, DeliveryState, DeliveryView, StoreError};
use async_trait::async_trait;
use fhir_sdk::time::{Duration, OffsetDateTime};

/// What one worker may claim for one recipient now, under its limits.
#[derive(Debug, Clone, Copy)]
pub struct RecipientClaim<'a> {
    pub recipient: &'a str,
    /// Leased deliveries to the recipient, across gateways, at most.
    pub max_in_flight: Option<u32>,
    /// The least time between two deliveries' starts (the rate limit).
    pub interval: Option<Duration>,
    /// Claimed at most.
    pub limit: i64,
}

/// One attempt's outcome to record, with its audit record.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    pub id: &'a str,
    pub outcome: &'a DeliveryOutcome,
    pub audit: &'a AuditRecord,
}

/// An operator's control of one recipient, as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RecipientControl {
    pub recipient: String,
    /// Set while paused: nothing is sent to it, and what is accepted waits.
    #[serde(with = "fhir_sdk::time::serde::rfc3339::option")]
    pub paused_at: Option<OffsetDateTime>,
    /// Who paused it (client id).
    pub paused_by: Option<String>,
}

/// One recipient's queue, read for the metrics and the operators' overview.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecipientQueue {
    pub recipient: String,
    pub queued: i64,
    /// When the oldest queued delivery was queued.
    pub oldest: Option<OffsetDateTime>,
}

/// A delivery's state as operators see it: a dead letter an operator resolved is
/// `resolved`, one still waiting for them `dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShownState {
    Queued,
    Delivered,
    Dead,
    Cancelled,
    Resolved,
}

impl ShownState {
    pub const ALL: &'static [ShownState] = &[
        Self::Queued,
        Self::Delivered,
        Self::Dead,
        Self::Cancelled,
        Self::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Resolved => "resolved",
        }
    }

    /// An operator's word for a state; `None` for anything else.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == word)
    }

    /// How a stored delivery is shown.
    pub fn of(state: DeliveryState, resolved: bool) -> Self {
        match state {
            DeliveryState::Queued => Self::Queued,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Dead if resolved => Self::Resolved,
            DeliveryState::Dead => Self::Dead,
            DeliveryState::Cancelled => Self::Cancelled,
        }
    }
}

/// Which deliveries an operator lists; every part left out matches all.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Dead letters only, resolved or not.
    pub dead_only: bool,
    /// A provider or GP callback id.
    pub recipient: Option<String>,
    pub state: Option<ShownState>,
    /// Queued at or after this time.
    pub since: Option<OffsetDateTime>,
}

impl DeliveryFilter {
    /// Every dead letter, resolved or not.
    pub fn dead() -> Self {
        Self {
            dead_only: true,
            ..Self::default()
        }
    }
}

/// The outbox: claiming deliveries, finishing them, and operating the queue and its dead letters.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` due deliveries for `owner` until `lease_until`, to
    /// recipients no gateway controls (see [`OutboxStore::claim_for_recipient`]): a
    /// recipient no longer configured, whose deliveries are then dead-lettered. A
    /// delivery is held by at most one owner at a time, across processes. One whose
    /// row cannot be read with its referral is returned as [`Claim::Broken`] (and
    /// logged), so it cannot stop the others; an error of the database itself (no
    /// connection) fails the whole claim.
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<Claim>, StoreError>;
    /// Claims up to `claim.limit` due deliveries to one recipient, holding its control
    /// row while it does (so gateways take turns): none while it is paused; no more
    /// than `max_in_flight` leased at once; under a rate limit, each claimed delivery
    /// carries the slot it may start at (`not_before`), spaced `interval` apart from the
    /// last slot any gateway took, and only slots within a second are handed out.
    async fn claim_for_recipient(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        claim: RecipientClaim<'_>,
    ) -> Result<Vec<Claim>, StoreError>;
    /// Pauses (`paused`) or resumes a recipient, with its audit record; `false` when it
    /// already was so (the record then says `unchanged`).
    async fn set_paused(
        &self,
        recipient: &str,
        paused: bool,
        now: OffsetDateTime,
        by: &str,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;
    /// Every recipient a gateway has controlled, paused or not.
    async fn recipient_controls(&self) -> Result<Vec<RecipientControl>, StoreError>;
    /// Queued deliveries and the oldest one's time, per recipient with any queued.
    async fn queue_by_recipient(&self) -> Result<Vec<RecipientQueue>, StoreError>;
    /// Records attempts' outcomes (each with its audit record) in one transaction, each
    /// only while `owner` still holds its lease at `now`; answers, in order, whether
    /// each was written (`false`: the lease was lost and nothing of it was written).
    async fn finish_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        finishes: &[Finish<'_>],
    ) -> Result<Vec<bool>, StoreError>;
    /// Gives back every lease `owner` holds (graceful shutdown).
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// Deliveries for operators, newest first, as `filter` narrows them.
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, StoreError>;
    /// Puts a dead letter back in the queue with a fresh attempt budget; `false` when
    /// it is not a dead letter, or an operator resolved it.
    async fn replay_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;
    /// One delivery as operators see it.
    async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError>;
    /// Marks a dead letter resolved (with its audit record): it is never replayed and
    /// no longer holds back the purge. `false` when it is not an unresolved dead letter.
    async fn resolve_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;
    /// How many deliveries are in each state (`queued`, `delivered`, `dead`,
    /// `cancelled`); states with none are left out. Read at every `/metrics` scrape.
    async fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
}
