//! Write transactions, and on SQLite the process's turn at its one write lock.

use super::{PostgresStore, SqliteStore};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A write transaction. On SQLite it also holds this process's turn at the write
/// lock until it ends: SQLite lets one writer in at a time, and a connection that
/// finds the lock taken sleeps in growing steps (its busy timeout) and keeps losing
/// to a writer that takes it again at once. Turns are handed out in order, so the
/// accept writer, the delivery worker and the sealer each wait only for the
/// transactions before them.
pub(super) struct WriteTx<'c, DB: sqlx::Database> {
    // Dropped first: an unfinished transaction's rollback is queued on its connection
    // before the turn passes (should the next writer still find the lock, it waits).
    tx: sqlx::Transaction<'c, DB>,
    _turn: Option<OwnedMutexGuard<()>>,
}

/// The queue for SQLite's write lock in this process.
#[derive(Debug, Clone, Default)]
pub(super) struct WriteTurns(Arc<Mutex<()>>);

impl WriteTurns {
    /// Waits for this process's turn to write.
    pub(super) async fn next(&self) -> OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }

    /// The same from a thread outside the runtime (the accept writer).
    pub(super) fn next_blocking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.blocking_lock()
    }
}

impl<'c, DB: sqlx::Database> WriteTx<'c, DB> {
    fn new(tx: sqlx::Transaction<'c, DB>, turn: Option<OwnedMutexGuard<()>>) -> Self {
        Self { tx, _turn: turn }
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub(super) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl<DB: sqlx::Database> Deref for WriteTx<'_, DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: sqlx::Database> DerefMut for WriteTx<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// A write transaction (IMMEDIATE), begun in this process's turn.
    pub(super) async fn begin_write(&self) -> Result<WriteTx<'static, sqlx::Sqlite>, sqlx::Error> {
        let turn = self.turns.next().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx::new(tx, Some(turn)))
    }
}

impl PostgresStore {
    /// A write transaction; PostgreSQL's writers wait only for the rows they share.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<WriteTx<'static, sqlx::Postgres>, sqlx::Error> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        Ok(WriteTx::new(tx, None))
    }
}
