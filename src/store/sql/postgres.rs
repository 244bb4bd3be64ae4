//! What only PostgreSQL does: queueing an accept with its record in one statement, and
//! sealing without a transaction, several replicas taking turns.

use super::outbox::{FINISH, Finished};
use super::*;

impl PostgresStore {
    /// Each accept commits on its own connection: PostgreSQL's own group commit
    /// (`commit_delay`) is the server's to tune.
    pub(super) async fn insert_sealed(&self, r: NewReferralRecord) -> Result<Inserted, StoreError> {
        self.insert_alone(&r).await
    }

    /// [`OutboxStore::finish_deliveries`] in one transaction, so a pass's outcomes
    /// share one commit.
    pub(super) async fn finish_here(
        &self,
        owner: &str,
        now: OffsetDateTime,
        finishes: &[Finish<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut held = Vec::with_capacity(finishes.len());
        for f in finishes {
            let v = Finished::new(f.outcome, now);
            let changed = sqlx::query(FINISH)
                .bind(v.state)
                .bind(v.next_attempt_at)
                .bind(v.status)
                .bind(v.error)
                .bind(v.receipt)
                .bind(v.delivered_at)
                .bind(v.attempted)
                .bind(now)
                .bind(f.id)
                .bind(owner)
                .bind(v.worker_failures)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if changed {
                self.write_audit(&mut tx, f.audit).await?;
            }
            held.push(changed);
        }
        if held.contains(&true) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(held)
    }

    /// PostgreSQL has no triggers to check.
    pub(super) async fn check_chain_guards(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Queues the accepted referral's delivery and writes the accept's audit record,
    /// in one statement ([`QUEUE_AND_PEND_POSTGRES`]).
    pub(super) async fn queue_accepted(
        &self,
        conn: &mut sqlx::PgConnection,
        r: &NewReferralRecord,
    ) -> Result<(), sqlx::Error> {
        let p = accept_prepared(r);
        bind_queue!(
            bind_content!(sqlx::query(QUEUE_AND_PEND_POSTGRES), r.audit, p),
            r
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Seals up to `limit` pending records, oldest first: one statement reads them
    /// with the head, and one ([`SEAL_BATCH_POSTGRES`]) moves head and records
    /// together, provided the head is still where it was read. So sealers in every
    /// process take turns without holding a lock between statements, the chain
    /// never forks and no record is sealed twice; one that finds the head moved
    /// reads again. Writers never touch the head, so none waits for this.
    pub(super) async fn seal_batch(&self, limit: i64) -> Result<u64, StoreError> {
        for _ in 0..SEAL_RACES {
            let pending = sqlx::query_as::<_, PendingWithHead>(PENDING_WITH_HEAD_POSTGRES)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            let head = match pending.first() {
                None => return Ok(0),
                Some(PendingWithHead {
                    head_seq: Some(seq),
                    head_hash: Some(hash),
                    ..
                }) => (*seq, hash.clone()),
                Some(_) => return Err(no_head()),
            };
            let rows: Vec<AuditRow> = pending.into_iter().map(|p| p.row).collect();
            let links = link(head.clone(), &rows);
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            // The batch's last record is the new head; `rows` is not empty.
            let (sealed,): (i64,) = sqlx::query_as(SEAL_BATCH_POSTGRES)
                .bind(&ids)
                .bind(&links.seq)
                .bind(&links.prev_hash)
                .bind(&links.hash)
                .bind(links.seq.last())
                .bind(links.prev_hash.last())
                .bind(links.hash.last())
                .bind(ids.len() as i64)
                .bind(head.0)
                .bind(&head.1)
                .fetch_one(&self.pool)
                .await?;
            if sealed == 1 {
                return Ok(rows.len() as u64);
            }
        }
        // Other sealers kept moving the head: they are sealing what is pending.
        Ok(0)
    }
}
