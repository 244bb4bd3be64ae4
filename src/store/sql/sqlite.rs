//! What only SQLite does: checking the chain's triggers, committing accepts in
//! groups, queueing an accept, and sealing under its single write lock.

use super::*;
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
///
/// The writer is a thread of its own with its own connection, running every
/// statement of a group itself: through the pool each statement would be a hand-over
/// to the connection's thread and back, which cost more CPU than the statements.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    waiting: mpsc::Sender<Waiting>,
}

/// Where the writer's connection goes, and how it waits for the lock.
#[derive(Debug, Clone)]
pub(super) struct WriterTarget {
    pub(super) file: std::path::PathBuf,
    pub(super) busy_timeout: std::time::Duration,
}

impl GroupCommit {
    /// Starts the writer on `target`; it ends when the last handle is dropped.
    /// Each group is written in its turn from `turns`.
    pub(super) fn start(target: WriterTarget, max_waiting: usize, turns: WriteTurns) -> Self {
        let (waiting, queue) = mpsc::channel(max_waiting.max(1));
        let started = std::thread::Builder::new()
            .name("sqlite-accepts".into())
            .spawn(move || write_groups(&target, &turns, queue));
        if let Err(e) = started {
            // Every accept then fails with WriterGone (503), which the log explains.
            tracing::error!(error = %e, "the SQLite accept writer could not be started");
        }
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
}

/// The writer's connection, as the pool's: WAL, synchronous FULL, foreign keys, the
/// same busy timeout.
pub(super) fn open_writer(target: &WriterTarget) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(&target.file)?;
    conn.busy_timeout(target.busy_timeout)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// The writer's loop: each turn takes every accept waiting (up to [`MAX_GROUP`])
/// and commits them together. A panic fails that group's accepts, not the writer.
fn write_groups(target: &WriterTarget, turns: &WriteTurns, mut queue: mpsc::Receiver<Waiting>) {
    let mut conn: Option<rusqlite::Connection> = None;
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        // Opened at the first accept (after migrations), and again after a failure.
        let writer = match conn.take().map_or_else(|| open_writer(target), Ok) {
            Ok(c) => c,
            Err(e) => {
                let e = Arc::new(StoreError::from(e));
                for w in group {
                    let _ = w.reply.send(Err(StoreError::Shared(e.clone())));
                }
                continue;
            }
        };
        let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _turn = turns.next_blocking();
            commit_group(&writer, &group)
        }));
        match outcomes {
            Ok((outcomes, healthy)) => {
                for (w, outcome) in group.into_iter().zip(outcomes) {
                    // A sender that gave up waiting is answered by nothing.
                    let _ = w.reply.send(outcome);
                }
                if healthy {
                    conn = Some(writer);
                }
            }
            Err(_) => {
                tracing::error!(
                    accepts = group.len(),
                    "the accept writer panicked; the group was not stored"
                );
                // Dropping the connection rolls back whatever it had begun.
            }
        }
    }
}

/// Stores the group in one IMMEDIATE transaction, each accept in a savepoint so that
/// a duplicate undoes only its own rows, and commits once. One outcome per accept,
/// and whether the connection may be used again. An accept whose request was given
/// up (its deadline passed) before the write lock was had is left out: that sender
/// was told to send again.
fn commit_group(
    conn: &rusqlite::Connection,
    group: &[Waiting],
) -> (Vec<Result<Inserted, StoreError>>, bool) {
    let failed = |e: rusqlite::Error| {
        let e = Arc::new(StoreError::from(e));
        let outcomes = group
            .iter()
            .map(|_| Err(StoreError::Shared(e.clone())))
            .collect();
        // A connection left inside a transaction is dropped, which rolls it back.
        (outcomes, conn.is_autocommit())
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return failed(e);
    }
    let mut outcomes = Vec::with_capacity(group.len());
    for Waiting { record: r, reply } in group {
        if reply.is_closed() {
            outcomes.push(Err(StoreError::WriterGone));
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT accept") {
            return failed(e);
        }
        let outcome = match insert_referral(conn, r) {
            Ok(()) => Ok(Inserted::Accepted),
            Err(e) => {
                if let Err(e) = conn.execute_batch("ROLLBACK TO SAVEPOINT accept") {
                    return failed(e);
                }
                inserted_or_sqlite(e)
            }
        };
        if let Err(e) = conn.execute_batch("RELEASE SAVEPOINT accept") {
            return failed(e);
        }
        outcomes.push(outcome);
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => (outcomes, true),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            failed(e)
        }
    }
}

/// `sql` with PostgreSQL-style `$n` parameters as SQLite's `?n`, so both paths run
/// the same statements.
pub(super) fn positional(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Statements as the writer prepares them (each once per connection).
pub(super) static WRITER_SQL: std::sync::LazyLock<[String; 5]> = std::sync::LazyLock::new(|| {
    [
        positional(INSERT_REFERRAL),
        positional(INSERT_IDENTIFIER),
        positional(INSERT_NEW_MESSAGE),
        positional(QUEUE_REFERRAL),
        positional(PEND),
    ]
});

/// Times as sqlx writes them to SQLite (RFC 3339), so both paths store one form.
pub(super) fn time_text(t: OffsetDateTime) -> rusqlite::Result<String> {
    t.format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// One accept's rows, as [`SqliteStore::insert_referral_tx`] writes them: the
/// referral, the sender's identifiers, the message, the queued delivery and the
/// accept's audit record.
fn insert_referral(conn: &rusqlite::Connection, r: &NewReferralRecord) -> rusqlite::Result<()> {
    let [referral, identifier, message, queue, pend] = &*WRITER_SQL;
    let now = time_text(r.now)?;
    conn.prepare_cached(referral)?.execute(rusqlite::params![
        r.id.as_str(),
        r.reference,
        r.practice_ods,
        r.bundle_id,
        r.programme,
        r.locality,
        r.provider,
        r.routing_version,
        r.referral_code,
        r.nhs_number,
        r.consent,
        r.message,
        r.source_endpoint,
        r.client_id,
        r.correlation_id,
        now,
        r.subject,
    ])?;
    for (system, value) in &r.sender_identifiers {
        conn.prepare_cached(identifier)?.execute(rusqlite::params![
            r.practice_ods,
            system,
            value,
            r.id.as_str(),
        ])?;
    }
    conn.prepare_cached(message)?.execute(rusqlite::params![
        r.request_id,
        r.message_header_id,
        r.id.as_str(),
        now,
    ])?;
    conn.prepare_cached(queue)?.execute(rusqlite::params![
        r.delivery_id,
        r.id.as_str(),
        r.provider,
        r.delivery_request_id,
        now,
    ])?;
    pend_record(conn, pend, &r.audit, &accept_prepared(r))
}

/// Writes `a` as a pending audit record with `pend` ([`PEND`] as the writer
/// prepares it), as [`SqliteStore::write_audit`] does through the pool.
pub(super) fn pend_record(
    conn: &rusqlite::Connection,
    pend: &str,
    a: &AuditRecord,
    p: &Prepared,
) -> rusqlite::Result<()> {
    conn.prepare_cached(pend)?.execute(rusqlite::params![
        time_text(p.at)?,
        a.action,
        a.outcome,
        p.status,
        a.client_id,
        a.role,
        a.actor_identity,
        a.referral_id,
        p.subject,
        a.recipient,
        a.request_id,
        a.correlation_id,
        a.mapping_version,
        a.key_version,
        p.detail,
    ])?;
    Ok(())
}

/// What an insert that failed on a unique constraint means for the sender, or the
/// error itself ([`inserted_or`] for the writer's connection).
fn inserted_or_sqlite(e: rusqlite::Error) -> Result<Inserted, StoreError> {
    let message = match &e {
        rusqlite::Error::SqliteFailure(f, message)
            if matches!(
                f.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ) =>
        {
            message.as_deref().unwrap_or_default()
        }
        _ => return Err(e.into()),
    };
    // The audit chain's own rule broken is a fault, never a duplicate request.
    if message.contains("audit_events.seq") {
        return Err(e.into());
    }
    if message.contains("referrals.reference") {
        Ok(Inserted::ReferenceTaken)
    } else {
        Ok(Inserted::Duplicate)
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
        let mut tx = self.begin_write().await?;
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
        // One statement for the batch: each through the pool is a hand-over to the
        // connection's thread and back.
        let batch: Vec<serde_json::Value> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                serde_json::json!([links.seq[i], links.prev_hash[i], links.hash[i], row.id])
            })
            .collect();
        let moved = sqlx::query(SEAL_BATCH_SQLITE)
            .bind(serde_json::Value::Array(batch).to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved != rows.len() as u64 {
            tx.rollback().await?;
            return Err(StoreError::Corrupt(format!(
                "{} of {} pending audit records could be sealed",
                moved,
                rows.len()
            )));
        }
        sqlx::query("DELETE FROM audit_pending WHERE id <= $1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}
