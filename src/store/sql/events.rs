//! Status events' SQL. Each statement is written once for both engines.

use super::*;

macro_rules! event_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl EventStore for $store {
            async fn record_event(&self, e: &EventRecord) -> Result<EventRecorded, StoreError> {
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(
                    "INSERT INTO referral_events (id, referral_id, provider, event, occurred_at, \
                     reason, detail, request_id, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&e.id)
                .bind(&e.referral_id)
                .bind(&e.provider)
                .bind(&e.event)
                .bind(e.occurred_at)
                .bind(&e.reason)
                .bind(e.detail.to_string())
                .bind(&e.request_id)
                .bind(e.now)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    tx.rollback().await?;
                    return match unique_violation(&err) {
                        Some(_) => Ok(EventRecorded::Duplicate),
                        None => Err(err.into()),
                    };
                }
                let moved = sqlx::query(
                    "UPDATE referrals SET milestone = $1, updated_at = $2 \
                     WHERE id = $3 AND milestone = $4",
                )
                .bind(&e.event)
                .bind(e.now)
                .bind(&e.referral_id)
                .bind(&e.from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if let Some(push) = e.gp_push.as_ref().filter(|_| moved > 0) {
                    sqlx::query(
                        "INSERT INTO deliveries (id, referral_id, provider, kind, state, request_id, \
                         attempts, next_attempt_at, created_at, updated_at, event_id) \
                         VALUES ($1, $2, $3, 'milestone', 'queued', $4, 0, $5, $5, $5, $6)",
                    )
                    .bind(&push.id)
                    .bind(&e.referral_id)
                    .bind(&push.recipient)
                    .bind(&push.request_id)
                    .bind(e.now)
                    .bind(&e.id)
                    .execute(&mut *tx)
                    .await?;
                }
                if self.commit_with_audit(tx, moved, &e.audit).await? {
                    Ok(EventRecorded::Recorded)
                } else {
                    Ok(EventRecorded::Moved)
                }
            }
            async fn events_for(&self, referral_id: &str) -> Result<Vec<EventRow>, StoreError> {
                let rows = sqlx::query_as::<_, EventRow>(
                    "SELECT id, referral_id, provider, event, occurred_at, reason, detail, \
                     request_id, recorded_at FROM referral_events WHERE referral_id = $1 \
                     ORDER BY recorded_at, id",
                )
                .bind(referral_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn event(&self, id: &str) -> Result<Option<EventRow>, StoreError> {
                let row = sqlx::query_as::<_, EventRow>(
                    "SELECT id, referral_id, provider, event, occurred_at, reason, detail, \
                     request_id, recorded_at FROM referral_events WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }
        }
    };
}

for_both_engines!(event_store);
