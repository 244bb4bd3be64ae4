//! What only SQLite does: checking the chain's triggers, committing accepts in
//! groups, queueing an accept, and sealing under its single write lock.

use super::*;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

/// The most accepts one commit holds.
const MAX_GROUP: usize = 64;

/// An accept waiting for the writer, and where its outcome goes.
struct Waiting {
    record: NewReferralRecord,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// One writer for accepts. SQLite has one write lock and each commit costs an fsync
/// (synchronous FULL): rather than each accept waiting its turn for the lock and
/// paying its own fsync, the writer takes every accept waiting, stores each in a
/// savepoint of one transaction, commits once, and only then answers each. An
/// accept is acknowledged only after the commit that holds it; a failed commit
/// fails every accept in it, none of which was stored.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    waiting: mpsc::Sender<Waiting>,
}

impl GroupCommit {
    /// Starts the writer on `store` (a copy without a writer of its own); it ends when
    /// the last handle is dropped.
    pub(super) fn start(store: SqliteStore, max_waiting: usize) -> Self {
        let (waiting, queue) = mpsc::channel(max_waiting.max(1));
        tokio::spawn(store.write_groups(queue));
        Self { waiting }
    }
}

impl SqliteStore {
    /// Hands a sealed accept to the writer and waits for the commit that holds it.
    /// Refused at once, without waiting, when the writer's queue is full.
    pub(super) async fn insert_sealed(&self, r: NewReferralRecord) -> Result<Inserted, StoreError> {
        let Some(group) = &self.accepts else {
            return self.insert_alone(&r).await;
        };
        let (reply, outcome) = oneshot::channel();
        group
            .waiting
            .try_send(Waiting { record: r, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::WriterGone,
            })?;
        outcome.await.map_err(|_| StoreError::WriterGone)?
    }

    /// The writer's loop: each turn takes every accept waiting (up to [`MAX_GROUP`])
    /// and commits them together. A panic fails that group's accepts, not the writer.
    async fn write_groups(self, mut queue: mpsc::Receiver<Waiting>) {
        while let Some(first) = queue.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let outcomes = std::panic::AssertUnwindSafe(self.commit_group(&group))
                .catch_unwind()
                .await;
            match outcomes {
                Ok(outcomes) => {
                    for (w, outcome) in group.into_iter().zip(outcomes) {
                        // A sender that gave up waiting is answered by nothing.
                        let _ = w.reply.send(outcome);
                    }
                }
                Err(_) => {
                    tracing::error!(
                        accepts = group.len(),
                        "the accept writer panicked; the group was not stored"
                    );
                }
            }
        }
    }

    /// Stores the group in one IMMEDIATE transaction, each accept in a savepoint so
    /// that a duplicate undoes only its own rows, and commits once. One outcome per
    /// accept. An accept whose request was given up (its deadline passed) before the
    /// write lock was had is left out: that sender was told to send again.
    async fn commit_group(&self, group: &[Waiting]) -> Vec<Result<Inserted, StoreError>> {
        let failed = |e: sqlx::Error| {
            let e = Arc::new(StoreError::from(e));
            group
                .iter()
                .map(|_| Err(StoreError::Shared(e.clone())))
                .collect()
        };
        let mut tx = match self.pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => return failed(e),
        };
        let mut outcomes = Vec::with_capacity(group.len());
        for Waiting { record: r, reply } in group {
            if reply.is_closed() {
                outcomes.push(Err(StoreError::WriterGone));
                continue;
            }
            if let Err(e) = sqlx::query("SAVEPOINT accept").execute(&mut *tx).await {
                return failed(e);
            }
            let outcome = match self.insert_referral_tx(&mut tx, r).await {
                Ok(()) => Ok(Inserted::Accepted),
                Err(e) => {
                    if let Err(e) = sqlx::query("ROLLBACK TO SAVEPOINT accept")
                        .execute(&mut *tx)
                        .await
                    {
                        return failed(e);
                    }
                    inserted_or(e)
                }
            };
            if let Err(e) = sqlx::query("RELEASE SAVEPOINT accept")
                .execute(&mut *tx)
                .await
            {
                return failed(e);
            }
            outcomes.push(outcome);
        }
        match tx.commit().await {
            Ok(()) => outcomes,
            Err(e) => failed(e),
        }
    }
}

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
