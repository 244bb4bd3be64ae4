//! Operating the delivery queue and its dead letters, for the operator API
//! ([`crate::http`]) and the command line alike. Every call is audited.
//!
//! A dead letter is either replayed (queued again) or resolved: an operator decides it
//! will not be sent, so it is never replayed and no longer holds back the retention
//! purge of the referral's personal data.

use crate::store::{AuditRecord, DeliveryState, DeliveryView, OutboxStore, StoreError};
use fhir_sdk::time::OffsetDateTime;

/// Lists deliveries, newest first (dead letters only when asked).
pub async fn list(
    store: &dyn OutboxStore,
    dead_only: bool,
    limit: i64,
) -> Result<Vec<DeliveryView>, StoreError> {
    store.list_deliveries(dead_only, limit).await
}

/// What became of a replay or resolve request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterAction {
    /// Done (queued again, or marked resolved).
    Done,
    /// No dead letter has this id.
    NotDeadLetter,
    /// The dead letter was already resolved: it is never replayed or resolved again.
    Resolved,
}

/// Why `id` was not acted on: resolved already, or not a dead letter at all.
async fn refusal(store: &dyn OutboxStore, id: &str) -> Result<DeadLetterAction, StoreError> {
    Ok(match store.delivery(id).await? {
        Some(d) if d.state == DeliveryState::Dead && d.resolved_at.is_some() => {
            DeadLetterAction::Resolved
        }
        _ => DeadLetterAction::NotDeadLetter,
    })
}

/// Puts a dead letter back in the queue. Its consent and referral state are checked
/// again by the worker before it is sent. A resolved dead letter is not replayed.
/// The record names the delivery's referral (and so its subject) and recipient.
async fn about_delivery(
    store: &dyn OutboxStore,
    id: &str,
    mut audit: AuditRecord,
) -> Result<AuditRecord, StoreError> {
    if let Some(d) = store.delivery(id).await? {
        audit.referral_id = Some(d.referral_id.to_string());
        audit.recipient = Some(d.provider.clone());
    }
    Ok(audit)
}

pub async fn replay(
    store: &dyn OutboxStore,
    id: &str,
    audit: AuditRecord,
) -> Result<DeadLetterAction, StoreError> {
    let audit = about_delivery(store, id, audit).await?;
    if store
        .replay_delivery(id, OffsetDateTime::now_utc(), &audit)
        .await?
    {
        Ok(DeadLetterAction::Done)
    } else {
        refusal(store, id).await
    }
}

/// Marks a dead letter resolved: never replayed, and no longer holding back the purge.
pub async fn resolve(
    store: &dyn OutboxStore,
    id: &str,
    audit: AuditRecord,
) -> Result<DeadLetterAction, StoreError> {
    let audit = about_delivery(store, id, audit).await?;
    if store
        .resolve_delivery(id, OffsetDateTime::now_utc(), &audit)
        .await?
    {
        Ok(DeadLetterAction::Done)
    } else {
        refusal(store, id).await
    }
}
