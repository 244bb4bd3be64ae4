//! The referral aggregate's SQL: accepting, reading, updating and purging referrals. Each statement is written once for both engines.

use super::*;
use crate::store::ReferralSummary;

/// Columns of [`ReferralSummary`].
macro_rules! summary_columns {
    () => {
        "SELECT id, reference, practice_ods, programme, provider, status, milestone, \
         correlation_id, created_at, updated_at, purged_at FROM referrals"
    };
}

macro_rules! referral_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl ReferralStore for $store {
            async fn insert_referral(&self, r: &NewReferralRecord) -> Result<Inserted, StoreError> {
                let sealed = seal_record(&self.keys, r)?;
                self.insert_sealed(sealed).await
            }
            async fn referral(&self, id: &str) -> Result<Option<ReferralRow>, StoreError> {
                let row = sqlx::query_as::<_, ReferralRow>(concat!(
                    "SELECT ",
                    referral_columns!(),
                    " FROM referrals WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                open_referral(&self.keys, row)
            }
            async fn referral_by_sender_identifier(
                &self,
                practice_ods: &str,
                system: &str,
                value: &str,
            ) -> Result<Option<ReferralRow>, StoreError> {
                let row = sqlx::query_as::<_, ReferralRow>(concat!(
                    "SELECT ",
                    referral_columns!(),
                    " FROM referrals WHERE id = (SELECT referral_id FROM referral_identifiers \
                     WHERE practice_ods = $1 AND system = $2 AND value = $3)"
                ))
                .bind(practice_ods)
                .bind(system)
                .bind(value)
                .fetch_optional(&self.pool)
                .await?;
                open_referral(&self.keys, row)
            }
            async fn find_referrals(&self, key: &str) -> Result<Vec<ReferralSummary>, StoreError> {
                Ok(sqlx::query_as::<_, ReferralSummary>(concat!(
                    summary_columns!(),
                    " WHERE id = $1 OR reference = $1 OR correlation_id = $1 \
                     OR id IN (SELECT referral_id FROM referral_identifiers WHERE value = $1) \
                     ORDER BY created_at, id LIMIT 100"
                ))
                .bind(key)
                .fetch_all(&self.pool)
                .await?)
            }
            async fn referrals_about(&self, subjects: &[String]) -> Result<Vec<ReferralSummary>, StoreError> {
                let mut found = Vec::new();
                for subject in subjects {
                    let rows = sqlx::query_as::<_, ReferralSummary>(concat!(
                        summary_columns!(),
                        " WHERE subject = $1 ORDER BY created_at, id"
                    ))
                    .bind(subject)
                    .fetch_all(&self.pool)
                    .await?;
                    found.extend(rows);
                }
                found.sort_by_key(|r| r.created_at);
                found.dedup_by(|a, b| a.id == b.id);
                Ok(found)
            }
            async fn referrals_by_identifier(
                &self,
                by_reference: bool,
                system: Option<&str>,
                value: &str,
            ) -> Result<Vec<ReferralRow>, StoreError> {
                let mut found = Vec::new();
                if by_reference {
                    let rows = sqlx::query_as::<_, ReferralRow>(concat!(
                        "SELECT ",
                        referral_columns!(),
                        " FROM referrals WHERE reference = $1"
                    ))
                    .bind(value)
                    .fetch_all(&self.pool)
                    .await?;
                    found.extend(rows);
                }
                let rows = sqlx::query_as::<_, ReferralRow>(concat!(
                    "SELECT ",
                    referral_columns!(),
                    " FROM referrals WHERE id IN (SELECT referral_id FROM referral_identifiers \
                     WHERE value = $1 AND system = COALESCE($2, system)) ORDER BY created_at"
                ))
                .bind(value)
                .bind(system)
                .fetch_all(&self.pool)
                .await?;
                for row in rows {
                    if !found.iter().any(|r: &ReferralRow| r.id == row.id) {
                        found.push(row);
                    }
                }
                found
                    .into_iter()
                    .map(|row| open_referral(&self.keys, Some(row)).map(Option::into_iter))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.into_iter().flatten().collect())
            }
            async fn apply_update(&self, u: &UpdateRecord) -> Result<Updated, StoreError> {
                let mut tx = self.begin_write().await?;
                match self.apply_update_tx(&mut tx, u).await {
                    Ok(Some(done)) => {
                        tx.commit().await?;
                        Ok(done)
                    }
                    Ok(None) => {
                        tx.rollback().await?;
                        Ok(Updated::NotActive)
                    }
                    Err(e) => {
                        tx.rollback().await?;
                        match unique_violation(&e) {
                            Some(_) => Ok(Updated::Duplicate),
                            None => Err(e.into()),
                        }
                    }
                }
            }
            async fn deliveries_for(&self, referral_id: &str) -> Result<Vec<DeliveryRow>, StoreError> {
                let rows = sqlx::query_as::<_, DeliveryRow>(
                    "SELECT id, referral_id, provider, kind, state, request_id, attempts, \
                     delivered_at FROM deliveries WHERE referral_id = $1 ORDER BY created_at, id",
                )
                .bind(referral_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn purge_settled(
                &self,
                cutoff: OffsetDateTime,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<u64, StoreError> {
                let mut tx = self.begin_write().await?;
                // Re-checked row by row under the row lock, so a referral another
                // gateway purged, or that changed meanwhile, is left alone.
                let purged = sqlx::query(concat!(
                    "UPDATE referrals SET message = '', nhs_number = '', purged_at = $1 \
                     WHERE purged_at IS NULL AND updated_at < $2 AND NOT EXISTS (\
                     SELECT 1 FROM deliveries d WHERE d.referral_id = referrals.id \
                     AND (d.updated_at >= $2 OR NOT ",
                    settled!(),
                    "))"
                ))
                .bind(now)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if purged == 0 {
                    tx.rollback().await?;
                    return Ok(0);
                }
                // A provider's answer may echo what it was sent: gone with the data.
                sqlx::query(concat!(
                    "UPDATE deliveries SET last_error = NULL WHERE last_error IS NOT NULL AND ",
                    settled!(),
                    " AND referral_id IN (SELECT id FROM referrals WHERE purged_at = $1)"
                ))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let mut audit = audit.clone();
                if let Some(detail) = audit.detail.as_object_mut() {
                    detail.insert("referrals".into(), serde_json::json!(purged));
                }
                self.commit_with_audit(tx, purged, &audit).await?;
                Ok(purged)
            }
            async fn count_referrals(&self) -> Result<i64, StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM referrals")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }
            async fn seal_plaintext(&self) -> Result<u64, StoreError> {
                let keys = storage_keys(&self.keys)?;
                let clear: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT id, message, nhs_number FROM referrals WHERE purged_at IS NULL \
                     AND (message NOT LIKE 'enc:%' OR nhs_number NOT LIKE 'enc:%')",
                )
                .fetch_all(&self.pool)
                .await?;
                let mut sealed = 0;
                for (id, message, nhs_number) in clear {
                    let seal = |column: Column, value: String| {
                        if value.starts_with(crate::store::crypto::PREFIX) {
                            return Ok(value);
                        }
                        keys.seal(column, &id, &value)
                            .map_err(|e| StoreError::Encryption(e.to_string()))
                    };
                    let new_message = seal(Column::ReferralMessage, message.clone())?;
                    let new_nhs = seal(Column::ReferralNhsNumber, nhs_number.clone())?;
                    // Only if nobody changed the row meanwhile.
                    sealed += sqlx::query(
                        "UPDATE referrals SET message = $1, nhs_number = $2 \
                         WHERE id = $3 AND message = $4 AND nhs_number = $5",
                    )
                    .bind(new_message)
                    .bind(new_nhs)
                    .bind(&id)
                    .bind(message)
                    .bind(nhs_number)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                }
                Ok(sealed)
            }
        }
    };
}

for_both_engines!(referral_store);
