//! The MESH inbox's SQL. Each statement is written once for both engines.

use super::*;

macro_rules! mesh_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl MeshStore for $store {
            async fn mesh_message_seen(&self, message_id: &str) -> Result<bool, StoreError> {
                let found: Option<(String,)> =
                    sqlx::query_as("SELECT message_id FROM mesh_inbound WHERE message_id = $1")
                        .bind(message_id)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(found.is_some())
            }
            async fn record_mesh_message(
                &self,
                m: &MeshInbound,
                audit: Option<&AuditRecord>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(
                    "INSERT INTO mesh_inbound (message_id, sender, workflow_id, message_type, \
                     outcome, reason, referral_id, received_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&m.message_id)
                .bind(&m.sender)
                .bind(&m.workflow_id)
                .bind(&m.message_type)
                .bind(&m.outcome)
                .bind(&m.reason)
                .bind(&m.referral_id)
                .bind(m.received_at)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    tx.rollback().await?;
                    return match unique_violation(&err) {
                        Some(_) => Ok(false),
                        None => Err(err.into()),
                    };
                }
                if let Some(audit) = audit {
                    self.write_audit(&mut *tx, audit).await?;
                }
                tx.commit().await?;
                Ok(true)
            }
            async fn mesh_messages(&self, limit: i64) -> Result<Vec<MeshInbound>, StoreError> {
                let rows = sqlx::query_as::<_, MeshInbound>(
                    "SELECT message_id, sender, workflow_id, message_type, outcome, reason, \
                     referral_id, received_at FROM mesh_inbound \
                     ORDER BY received_at DESC, message_id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn delivery_by_request_id(
                &self,
                request_id: &str,
            ) -> Result<Option<DeliveryView>, StoreError> {
                let row = sqlx::query_as::<_, DeliveryView>(concat!(
                    delivery_view_columns!(),
                    " WHERE d.request_id = $1"
                ))
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }
            async fn mark_undelivered(
                &self,
                id: &str,
                reason: &str,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET state = 'dead', last_error = $1, updated_at = $2, \
                     next_attempt_at = $2 WHERE id = $3 AND state = 'delivered'",
                )
                .bind(reason)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }
        }
    };
}

for_both_engines!(mesh_store);
