//! What only SQLite does: checking the chain's triggers, queueing an accept, and
//! sealing under its single write lock.

use super::*;

impl SqliteStore {
    /// Without its triggers the head would no longer move and sealing would fail or
    /// be checked against nothing, so the store refuses to open.
    pub(super) async fn check_chain_guards(&self) -> Result<(), StoreError> {
        let present: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'",
        )
        .fetch_all(&self.pool)
        .await?;
        match CHAIN_TRIGGERS
            .into_iter()
            .find(|t| !present.iter().any(|(name,)| name == t))
        {
            None => Ok(()),
            Some(trigger) => Err(StoreError::Corrupt(format!(
                "the audit chain trigger {trigger} is missing: restore it from migration \
                 0007 and run `thrive-gateway audit verify`"
            ))),
        }
    }

    /// Queues the accepted referral's delivery and writes the accept's audit record.
    pub(super) async fn queue_accepted(
        &self,
        conn: &mut sqlx::SqliteConnection,
        r: &NewReferralRecord,
    ) -> Result<(), sqlx::Error> {
        bind_queue!(sqlx::query(QUEUE_REFERRAL), r)
            .execute(&mut *conn)
            .await?;
        let p = accept_prepared(r);
        bind_content!(sqlx::query(PEND), r.audit, p)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Seals up to `limit` pending records, oldest first, in one IMMEDIATE
    /// transaction: no other writer, in this process or another, runs meanwhile,
    /// so the head read here is the head each record extends.
    pub(super) async fn seal_batch(&self, limit: i64) -> Result<u64, StoreError> {
        // A look first, so that a round with nothing to seal takes no write lock.
        let (pending,): (i64,) = sqlx::query_as(ANY_PENDING).fetch_one(&self.pool).await?;
        if pending == 0 {
            return Ok(0);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query_as::<_, AuditRow>(PENDING_OLDEST)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            tx.rollback().await?;
            return Ok(0);
        };
        let links = link(head.ok_or_else(no_head)?, &rows);
        for (i, row) in rows.iter().enumerate() {
            sqlx::query(SEAL_ONE_SQLITE)
                .bind(links.seq[i])
                .bind(&links.prev_hash[i])
                .bind(&links.hash[i])
                .bind(row.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM audit_pending WHERE id <= $1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}
