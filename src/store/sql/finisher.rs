//! SQLite: delivery outcomes recorded on a connection of their own, off the pool.

use super::outbox::{FINISH, Finished};
use super::sqlite::{WRITER_SQL, WriterTarget, open_writer, pend_record, positional, time_text};
use super::*;
use std::sync::{Mutex, PoisonError};

/// Records a pass's delivery outcomes in one blocking call on its own connection.
/// Through the pool each outcome cost three statements, each a hand-over to the
/// connection's thread and back, which cost more CPU than the statements.
#[derive(Debug)]
pub(super) struct Finisher {
    target: WriterTarget,
    /// Opened at the first use, and again after a failure left it in a transaction.
    conn: Mutex<Option<rusqlite::Connection>>,
    turns: WriteTurns,
}

/// One outcome to record, owned, to cross to the blocking thread.
struct Outcome {
    id: String,
    finished: Finished,
    audit: AuditRecord,
}

/// [`FINISH`] and the subject look-up as this connection prepares them.
static FINISH_SQL: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| [positional(FINISH), positional(SUBJECT_OF_REFERRAL)]);

impl Finisher {
    pub(super) fn new(target: WriterTarget, turns: WriteTurns) -> Self {
        Self {
            target,
            conn: Mutex::new(None),
            turns,
        }
    }
}

impl SqliteStore {
    /// [`OutboxStore::finish_deliveries`] on the finisher's connection, in this
    /// process's turn at the write lock: one transaction, one commit.
    pub(super) async fn finish_here(
        &self,
        owner: &str,
        now: OffsetDateTime,
        finishes: &[Finish<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let outcomes: Vec<Outcome> = finishes
            .iter()
            .map(|f| Outcome {
                id: f.id.to_owned(),
                finished: Finished::new(f.outcome, now),
                audit: f.audit.clone(),
            })
            .collect();
        let finisher = self.finisher.clone();
        let owner = owner.to_owned();
        match tokio::task::spawn_blocking(move || finisher.finish(&owner, now, &outcomes)).await {
            Ok(written) => written,
            // The worker counts a panic against the deliveries, as on the pool.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only as the runtime shuts down: nothing was written; the leases run out.
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

impl Finisher {
    fn finish(
        &self,
        owner: &str,
        now: OffsetDateTime,
        outcomes: &[Outcome],
    ) -> Result<Vec<bool>, StoreError> {
        // A panic elsewhere while it was held leaves nothing half-done here: a
        // connection left in a transaction is never put back.
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match slot.take() {
            Some(conn) => conn,
            None => open_writer(&self.target)?,
        };
        let written = {
            let _turn = self.turns.next_blocking();
            write(&conn, owner, now, outcomes)
        };
        if conn.is_autocommit() {
            *slot = Some(conn);
        }
        Ok(written?)
    }
}

/// The outcomes in one IMMEDIATE transaction, each only where `owner` holds the
/// lease, each written with its audit record; committed only if any was.
fn write(
    conn: &rusqlite::Connection,
    owner: &str,
    now: OffsetDateTime,
    outcomes: &[Outcome],
) -> rusqlite::Result<Vec<bool>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let written = write_each(conn, owner, now, outcomes);
    match written {
        Ok(held) if held.contains(&true) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            Ok(held)
        }
        Ok(held) => conn.execute_batch("ROLLBACK").map(|()| held),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn write_each(
    conn: &rusqlite::Connection,
    owner: &str,
    now: OffsetDateTime,
    outcomes: &[Outcome],
) -> rusqlite::Result<Vec<bool>> {
    let [finish, subject_of] = &*FINISH_SQL;
    let pend = &WRITER_SQL[4];
    let at = time_text(now)?;
    let mut held = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let f = &o.finished;
        let changed = conn.prepare_cached(finish)?.execute(rusqlite::params![
            f.state.as_str(),
            time_text(f.next_attempt_at)?,
            f.status,
            f.error,
            f.receipt,
            f.delivered_at.map(time_text).transpose()?,
            f.attempted,
            at,
            o.id,
            owner,
            f.worker_failures,
        ])? > 0;
        if changed {
            let a = &o.audit;
            // As `write_audit`: a record about a referral names the referral's subject.
            let subject = match (&a.subject, &a.referral_id) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(referral)) => {
                    let mut query = conn.prepare_cached(subject_of)?;
                    let mut rows = query.query([referral])?;
                    match rows.next()? {
                        Some(row) => row.get::<_, Option<String>>(0)?,
                        None => None,
                    }
                }
                (None, None) => None,
            };
            pend_record(conn, pend, a, &Prepared::new(a, subject))?;
        }
        held.push(changed);
    }
    Ok(held)
}
