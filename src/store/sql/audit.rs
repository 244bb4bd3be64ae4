//! The audit trail's SQL: pending records, sealing, reading the chain, checkpoints. Each statement is written once for both engines.

use super::*;

macro_rules! audit_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                self.write_audit(&mut *tx, a).await?;
                tx.commit().await?;
                Ok(())
            }
            async fn seal_audit(&self) -> Result<u64, StoreError> {
                let mut sealed = 0;
                loop {
                    let n = self.seal_batch(SEAL_BATCH).await?;
                    sealed += n;
                    if n < SEAL_BATCH as u64 {
                        return Ok(sealed);
                    }
                }
            }
            async fn audit_pending(&self) -> Result<i64, StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_pending")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }
            async fn audit_after(&self, after_id: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
                self.seal_before_reading().await;
                let rows = sqlx::query_as::<_, AuditRow>(concat!(
                    audit_columns!(),
                    "WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn audit_chain(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
                let rows = sqlx::query_as::<_, AuditRow>(concat!(
                    audit_columns!(),
                    "WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(after_seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn audit_unchained(&self) -> Result<(u64, Option<i64>), StoreError> {
                let (legacy,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM audit_events WHERE seq IS NULL AND id < \
                     COALESCE((SELECT MIN(id) FROM audit_events WHERE seq IS NOT NULL), 0)",
                )
                .fetch_one(&self.pool)
                .await?;
                let (late,): (Option<i64>,) = sqlx::query_as(
                    "SELECT MIN(id) FROM audit_events WHERE seq IS NULL AND id > \
                     COALESCE((SELECT MIN(id) FROM audit_events WHERE seq IS NOT NULL), 0)",
                )
                .fetch_one(&self.pool)
                .await?;
                let no_chain: (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM audit_events WHERE seq IS NOT NULL",
                )
                .fetch_one(&self.pool)
                .await?;
                // Before the first chained record exists, every record is legacy.
                if no_chain.0 == 0 {
                    let (all,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_events")
                        .fetch_one(&self.pool)
                        .await?;
                    return Ok((u64::try_from(all).unwrap_or(0), None));
                }
                Ok((u64::try_from(legacy).unwrap_or(0), late))
            }
            async fn audit_seq_of_hash(&self, hash: &str) -> Result<Option<i64>, StoreError> {
                let row: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT seq FROM audit_events WHERE hash = $1 LIMIT 1")
                        .bind(hash)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.and_then(|(s,)| s))
            }
            async fn audit_head(&self) -> Result<(i64, String), StoreError> {
                let head: Option<(i64, String)> =
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_optional(&self.pool)
                        .await?;
                head.ok_or_else(no_head)
            }
            async fn audit_query(
                &self,
                f: &AuditFilter,
                after_seq: i64,
                limit: i64,
            ) -> Result<Vec<AuditRow>, StoreError> {
                self.seal_before_reading().await;
                // Up to two subject pseudonyms per query (the audit key's active and
                // previous versions); more are asked in turns and merged.
                let subjects: Vec<Option<&str>> = if f.subjects.is_empty() {
                    vec![None]
                } else {
                    f.subjects.iter().map(|s| Some(s.as_str())).collect()
                };
                let mut rows: Vec<AuditRow> = Vec::new();
                for subject in subjects {
                    let q = match subject {
                        None => sqlx::query_as::<_, AuditRow>(audit_filtered!("AND ($7 IS NULL OR subject = $7)", $t0, $t1)),
                        Some(_) => sqlx::query_as::<_, AuditRow>(audit_filtered!("AND subject = $7", $t0, $t1)),
                    };
                    let mut found = q
                        .bind(f.from)
                        .bind(f.to)
                        .bind(&f.referral_id)
                        .bind(&f.action)
                        .bind(&f.recipient)
                        .bind(&f.client_id)
                        .bind(subject)
                        .bind(after_seq)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.append(&mut found);
                }
                rows.sort_by_key(|r| r.seq);
                rows.dedup_by_key(|r| r.id);
                rows.truncate(usize::try_from(limit).unwrap_or(0));
                Ok(rows)
            }
            async fn audit_counts(
                &self,
                action: &str,
                since: OffsetDateTime,
            ) -> Result<Vec<crate::store::AuditCount>, StoreError> {
                self.seal_before_reading().await;
                let rows: Vec<(Option<String>, String, Option<i32>, i64)> = sqlx::query_as(concat!(
                    "SELECT recipient, outcome, http_status, COUNT(*) FROM audit_events ",
                    "WHERE seq IS NOT NULL AND action = $1 AND ",
                    $t0, "recorded_at", $t1, " >= ", $t0, "$2", $t1,
                    " GROUP BY recipient, outcome, http_status"
                ))
                .bind(action)
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(recipient, outcome, http_status, count)| crate::store::AuditCount {
                        recipient,
                        outcome,
                        http_status,
                        count,
                    })
                    .collect())
            }
            async fn audit_checkpoints(&self) -> Result<Vec<crate::audit_record::CheckpointRow>, StoreError> {
                let rows = sqlx::query_as::<_, crate::audit_record::CheckpointRow>(
                    "SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoints ORDER BY seq",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn insert_checkpoint(
                &self,
                c: &crate::audit_record::CheckpointRow,
            ) -> Result<(), StoreError> {
                let inserted = sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, hash, signed_at, key_id, signature) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(c.seq)
                .bind(&c.hash)
                .bind(c.signed_at)
                .bind(&c.key_id)
                .bind(&c.signature)
                .execute(&self.pool)
                .await;
                match inserted {
                    // Another process signed the same head first: one checkpoint is enough.
                    Err(e) if unique_violation(&e).is_some() => Ok(()),
                    Err(e) => Err(e.into()),
                    Ok(_) => Ok(()),
                }
            }
        }
    };
}

for_both_engines!(audit_store);
