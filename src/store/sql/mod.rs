//! The SQL both engines share. The statements are written once in the common dialect
//! (numbered `$n` parameters, `RETURNING`, standard types bound from Rust), and a macro
//! per aggregate (`referrals`, `audit`, `outbox`, `events`, `reports`) stamps out its
//! trait's implementation for each pool type. What only one engine does is in `sqlite`
//! and `postgres`.

use super::crypto::{Column, StorageKeys};
use super::{
    AuditFilter, AuditRecord, AuditRow, Claim, ClaimedDelivery, DeliveryFilter, DeliveryKind,
    DeliveryOutcome, DeliveryRow, DeliveryState, DeliveryView, EventRecord, EventRecorded,
    EventRow, Finish, Inserted, NewReferralRecord, RecipientClaim, RecipientControl,
    RecipientQueue, ReferralRow, ReferralStatus, ReportRow, ShownState, Store, StoreError,
    UpdateRecord, Updated,
};
use super::{
    AuditStore, EventStore, MeshInbound, MeshStore, OutboxStore, ReferralStore, ReportStore,
};
use accept::{INSERT_IDENTIFIER, INSERT_NEW_MESSAGE, INSERT_REFERRAL};
use async_trait::async_trait;
use fhir_sdk::time::{Duration, OffsetDateTime};
use std::sync::Arc;
use write::{WriteTurns, WriteTx};

/// Embedded SQLite (WAL, synchronous FULL). Accepts go through one writer that
/// commits them in groups ([`sqlite::GroupCommit`]).
#[derive(Debug)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    keys: Option<Arc<StorageKeys>>,
    /// `None` in the writer's own copy, which stores each group directly.
    accepts: Option<sqlite::GroupCommit>,
    /// Records delivery outcomes on a connection of its own.
    finisher: Arc<finisher::Finisher>,
    /// Whose turn it is at the write lock, the accept writer's and finisher's included.
    turns: WriteTurns,
}

/// PostgreSQL, shared by several gateway processes. Writers never touch the chain
/// head; sealers take it in turn (`seal_batch`).
#[derive(Debug)]
pub struct PostgresStore {
    pool: sqlx::PgPool,
    keys: Option<Arc<StorageKeys>>,
}

impl SqliteStore {
    /// Without `keys`, personal data can be neither written nor read. At most
    /// `max_waiting_accepts` accepts wait for the group-commit writer; more are refused
    /// as [`StoreError::Overloaded`]. The writer's own connection waits `busy_timeout`
    /// for the lock, as the pool's do.
    pub fn new(
        pool: sqlx::SqlitePool,
        keys: Option<Arc<StorageKeys>>,
        max_waiting_accepts: usize,
        busy_timeout: std::time::Duration,
    ) -> Self {
        let target = sqlite::WriterTarget {
            file: pool.connect_options().get_filename().to_path_buf(),
            busy_timeout,
        };
        let turns = WriteTurns::default();
        Self {
            pool,
            keys,
            finisher: Arc::new(finisher::Finisher::new(target.clone(), turns.clone())),
            accepts: Some(sqlite::GroupCommit::start(
                target,
                max_waiting_accepts,
                turns.clone(),
            )),
            turns,
        }
    }
}

impl PostgresStore {
    /// Without `keys`, personal data can be neither written nor read.
    pub fn new(pool: sqlx::PgPool, keys: Option<Arc<StorageKeys>>) -> Self {
        Self { pool, keys }
    }
}

/// This gateway's SQLite schema, from its migrations.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");
/// This gateway's PostgreSQL schema, from its migrations.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("src/store/migrations/postgres");

/// A record's columns as they are bound.
struct Prepared {
    at: OffsetDateTime,
    status: Option<i32>,
    subject: Option<String>,
    detail: String,
}

impl Prepared {
    fn new(a: &AuditRecord, subject: Option<String>) -> Self {
        Self {
            at: crate::audit_record::truncate(a.at),
            status: a.http_status.map(i32::from),
            subject,
            detail: a.detail.to_string(),
        }
    }
}

/// Binds a record's content columns as `$1` to `$15`, in the order of
/// `audit_content_columns!`.
macro_rules! bind_content {
    ($query:expr, $a:expr, $p:expr) => {
        $query
            .bind($p.at)
            .bind(&$a.action)
            .bind(&$a.outcome)
            .bind($p.status)
            .bind(&$a.client_id)
            .bind(&$a.role)
            .bind(&$a.actor_identity)
            .bind(&$a.referral_id)
            .bind(&$p.subject)
            .bind(&$a.recipient)
            .bind(&$a.request_id)
            .bind(&$a.correlation_id)
            .bind(&$a.mapping_version)
            .bind(&$a.key_version)
            .bind(&$p.detail)
    };
}

/// The content columns of a record: what the chain hash covers, in its order
/// ([`crate::audit_record::ChainEntry::tail`]).
macro_rules! audit_content_columns {
    () => {
        "recorded_at, action, outcome, http_status, client_id, role, actor_identity, \
         referral_id, subject, recipient, request_id, correlation_id, mapping_version, \
         key_version, detail"
    };
}

/// A record written with the change it records, waiting to be sealed into the
/// chain: its content as `$1` to `$15`.
macro_rules! pend {
    () => {
        concat!(
            "INSERT INTO audit_pending (",
            audit_content_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )
    };
}

/// The subject a record about referral `$1` names when it names none itself.
const SUBJECT_OF_REFERRAL: &str = "SELECT subject FROM referrals WHERE id = $1";

/// [`pend`] as a statement.
const PEND: &str = pend!();

/// SQLite: the oldest pending records, at most `$1`, read as [`AuditRow`]s without a
/// place in the chain.
const PENDING_OLDEST: &str = concat!(
    "SELECT id, CAST(NULL AS BIGINT) AS seq, ",
    audit_content_columns!(),
    ", CAST(NULL AS TEXT) AS prev_hash, CAST(NULL AS TEXT) AS hash \
     FROM audit_pending ORDER BY id LIMIT $1"
);

/// SQLite: whether any record waits to be sealed (`0` or `1`).
const ANY_PENDING: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM audit_pending LIMIT 1) AS p";

/// SQLite: pending records moved into the chain in one statement, in the order of
/// `$1`, a JSON array of `[place, previous hash, hash, pending id]`. The triggers of
/// migration 0007 check each link and move the head.
const SEAL_BATCH_SQLITE: &str = concat!(
    "INSERT INTO audit_events (",
    audit_content_columns!(),
    ", seq, prev_hash, hash) SELECT ",
    audit_content_columns!(),
    ", json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), \
     json_extract(j.value, '$[2]') FROM json_each($1) AS j \
     JOIN audit_pending AS p ON p.id = json_extract(j.value, '$[3]') ORDER BY j.key"
);

/// PostgreSQL: the oldest pending records, at most `$1`, each with the chain head as
/// the same statement (one snapshot) saw it; none when nothing is pending.
const PENDING_WITH_HEAD_POSTGRES: &str = concat!(
    "SELECT id, CAST(NULL AS BIGINT) AS seq, ",
    audit_content_columns!(),
    ", CAST(NULL AS TEXT) AS prev_hash, CAST(NULL AS TEXT) AS hash, \
     (SELECT seq FROM audit_head WHERE id = 1) AS head_seq, \
     (SELECT hash FROM audit_head WHERE id = 1) AS head_hash \
     FROM audit_pending ORDER BY id LIMIT $1"
);

/// A pending record with the head it is to extend ([`PENDING_WITH_HEAD_POSTGRES`]).
#[derive(sqlx::FromRow)]
struct PendingWithHead {
    #[sqlx(flatten)]
    row: AuditRow,
    head_seq: Option<i64>,
    head_hash: Option<String>,
}

/// PostgreSQL: one statement, so one atomic change without a transaction of its own.
/// It moves the head from place `$9`, hash `$10` (the head the batch was linked to)
/// to place `$5`, hash `$7` (`$6` the hash before it); only if the head moved, it
/// moves the batch of pending records (ids `$1`) into the chain at places `$2`,
/// linked to `$3`, with hashes `$4`. The head's row lock is held for this statement
/// alone. Under READ COMMITTED a sealer that waited for it finds the head moved (its
/// condition is checked again on the row as committed) and moves nothing: it answers
/// 0 and reads again. It answers 1 when it sealed the batch whole (`$8` records),
/// and fails, changing nothing, in any other case (a record of the batch gone, which
/// nothing else does while the head is where it was read). The hashes were computed
/// from the records as read; the records moved are as deleted, so a pending record
/// changed in between is sealed with a hash that no longer matches it, and `audit
/// verify` reports it as changed.
const SEAL_BATCH_POSTGRES: &str = concat!(
    "WITH c AS (SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[]) \
     AS c(id, seq, prev_hash, hash)), \
     head AS (UPDATE audit_head SET seq = $5, prev_hash = $6, hash = $7 \
     WHERE id = 1 AND seq = $9 AND hash = $10 RETURNING 1), \
     gone AS (DELETE FROM audit_pending p USING c WHERE p.id = c.id \
     AND EXISTS (SELECT 1 FROM head) RETURNING p.*, c.seq, c.prev_hash, c.hash), \
     moved AS (INSERT INTO audit_events (",
    audit_content_columns!(),
    ", seq, prev_hash, hash) SELECT ",
    audit_content_columns!(),
    ", seq, prev_hash, hash FROM gone ORDER BY seq RETURNING 1) \
     SELECT CASE WHEN (SELECT COUNT(*) FROM moved) = $8 * (SELECT COUNT(*) FROM head) \
     THEN (SELECT COUNT(*) FROM head) \
     ELSE CAST('pending audit records changed while they were being sealed: ' \
     || (SELECT COUNT(*) FROM moved) AS BIGINT) END"
);

/// Records sealed in one transaction at most; a longer backlog takes several.
const SEAL_BATCH: i64 = 500;

/// PostgreSQL: how often one sealing round reads again after another sealer moved
/// the head first.
const SEAL_RACES: usize = 5;

/// The error when the chain has no head to link to (`audit_head` emptied): nothing
/// can be sealed until it is restored, and `audit verify` says so.
fn no_head() -> StoreError {
    StoreError::Corrupt(
        "audit_head has no row: pending audit records cannot be sealed into the chain".into(),
    )
}

/// Pending records linked into the chain, column by column (as PostgreSQL binds them):
/// each record's place, previous hash and hash.
#[derive(Default)]
struct Links {
    seq: Vec<i64>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

/// Links `rows` (pending, oldest first) to the head `(seq, hash)`, hashing each
/// record's content as stored, exactly as `audit verify` recomputes it.
fn link(head: (i64, String), rows: &[AuditRow]) -> Links {
    let (mut seq, mut prev) = head;
    let mut links = Links::default();
    for row in rows {
        let hash = row.entry().hash(&prev);
        seq += 1;
        links.seq.push(seq);
        links
            .prev_hash
            .push(std::mem::replace(&mut prev, hash.clone()));
        links.hash.push(hash);
    }
    links
}

/// An accepted referral's delivery, queued, with its parameters named: its id, the
/// referral, the provider, its `X-Request-Id`, and now.
macro_rules! queue_referral {
    ($id:literal, $referral:literal, $provider:literal, $request:literal, $now:literal) => {
        concat!(
            "INSERT INTO deliveries (id, referral_id, provider, kind, state, request_id, \
             attempts, next_attempt_at, created_at, updated_at) VALUES (",
            $id,
            ", ",
            $referral,
            ", ",
            $provider,
            ", 'referral', 'queued', ",
            $request,
            ", 0, ",
            $now,
            ", ",
            $now,
            ", ",
            $now,
            ")"
        )
    };
}

/// [`queue_referral`] as `$1` to `$5`.
const QUEUE_REFERRAL: &str = queue_referral!("$1", "$2", "$3", "$4", "$5");

/// PostgreSQL: [`queue_referral`] (as `$16` to `$20`) and the accept's audit record in
/// one statement, so the record costs the accept no round trip of its own.
const QUEUE_AND_PEND_POSTGRES: &str = concat!(
    "WITH queued AS (",
    queue_referral!("$16", "$17", "$18", "$19", "$20"),
    ") ",
    pend!()
);

/// Binds an accepted referral's delivery ([`QUEUE_REFERRAL`]'s parameters).
macro_rules! bind_queue {
    ($query:expr, $r:expr) => {
        $query
            .bind(&$r.delivery_id)
            .bind(&$r.id)
            .bind(&$r.provider)
            .bind(&$r.delivery_request_id)
            .bind($r.now)
    };
}

/// The accept's audit record, naming the referral's subject.
fn accept_prepared(r: &NewReferralRecord) -> Prepared {
    let subject = r.audit.subject.clone().unwrap_or_else(|| r.subject.clone());
    Prepared::new(&r.audit, Some(subject))
}

/// The SQLite triggers every sealed record relies on (migration 0007).
const CHAIN_TRIGGERS: [&str; 2] = ["audit_chain_extends_head", "audit_chain_moves_head"];

/// The purged marker: what a sealed column holds once retention cleared it.
const PURGED: &str = "";

fn storage_keys(keys: &Option<Arc<StorageKeys>>) -> Result<&StorageKeys, StoreError> {
    keys.as_deref().ok_or_else(|| {
        StoreError::Encryption(
            "this store was opened without keys.storage, so it cannot hold personal data".into(),
        )
    })
}

/// The record as written: its personal data sealed to its row.
fn seal_record(
    keys: &Option<Arc<StorageKeys>>,
    r: &NewReferralRecord,
) -> Result<NewReferralRecord, StoreError> {
    let keys = storage_keys(keys)?;
    let seal = |column, value: &str| {
        keys.seal(column, &r.id, value)
            .map_err(|e| StoreError::Encryption(e.to_string()))
    };
    Ok(NewReferralRecord {
        nhs_number: seal(Column::ReferralNhsNumber, &r.nhs_number)?,
        message: seal(Column::ReferralMessage, &r.message)?,
        ..r.clone()
    })
}

/// Opens one sealed column of referral `id`; the purged marker stays empty. The error
/// names the referral, column and key version, never the value.
fn open_column(
    keys: &Option<Arc<StorageKeys>>,
    column: Column,
    id: &str,
    value: &str,
) -> Result<String, StoreError> {
    if value == PURGED {
        return Ok(String::new());
    }
    storage_keys(keys)?
        .open(column, id, value)
        .map_err(|e| StoreError::Corrupt(format!("referral {id}: {} {e}", column.name())))
}

fn open_referral(
    keys: &Option<Arc<StorageKeys>>,
    row: Option<ReferralRow>,
) -> Result<Option<ReferralRow>, StoreError> {
    row.map(|mut row| {
        row.nhs_number = open_column(keys, Column::ReferralNhsNumber, &row.id, &row.nhs_number)?;
        Ok(row)
    })
    .transpose()
}

/// Which unique rule a failed insert broke.
enum Conflict {
    Reference,
    Other,
}

fn unique_violation(e: &sqlx::Error) -> Option<Conflict> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if !db.is_unique_violation() {
        return None;
    }
    // The audit chain's own rule broken is a fault, never a duplicate request.
    if db.constraint() == Some("audit_events_seq") || db.message().contains("audit_events.seq") {
        return None;
    }
    let on_reference = db.constraint() == Some("referrals_reference_key")
        || db.message().contains("referrals.reference");
    Some(if on_reference {
        Conflict::Reference
    } else {
        Conflict::Other
    })
}

/// The columns of [`ReferralRow`], spelled once.
macro_rules! referral_columns {
    () => {
        "id, reference, practice_ods, bundle_id, status, programme, locality, provider, \
         routing_version, referral_code, nhs_number, consent, source_endpoint, client_id, \
         correlation_id, created_at, updated_at, milestone, purged_at"
    };
}

/// The columns of [`AuditRow`], spelled once.
macro_rules! audit_columns {
    () => {
        "SELECT id, seq, recorded_at, action, outcome, http_status, client_id, role, \
         actor_identity, referral_id, subject, recipient, request_id, correlation_id, \
         mapping_version, key_version, detail, prev_hash, hash FROM audit_events "
    };
}

/// Every auditor filter, each one skipped when its parameter is NULL; `$8` is the
/// paging cursor and `$9` the page size. Times are compared through `$t0 ... $t1`,
/// where the engines differ (see [`sql_store`]'s invocations).
macro_rules! audit_filtered {
    ($subjects:literal, $t0:literal, $t1:literal) => {
        concat!(
            audit_columns!(),
            "WHERE seq IS NOT NULL AND ($1 IS NULL OR ",
            $t0,
            "recorded_at",
            $t1,
            " >= ",
            $t0,
            "$1",
            $t1,
            ") ",
            "AND ($2 IS NULL OR ",
            $t0,
            "recorded_at",
            $t1,
            " < ",
            $t0,
            "$2",
            $t1,
            ") AND ($3 IS NULL OR referral_id = $3) ",
            "AND ($4 IS NULL OR action = $4) AND ($5 IS NULL OR recipient = $5) ",
            "AND ($6 IS NULL OR client_id = $6) AND seq > $8 ",
            $subjects,
            " ORDER BY seq LIMIT $9"
        )
    };
}

/// Columns of [`DeliveryView`].
macro_rules! delivery_view_columns {
    () => {
        "SELECT d.id, d.referral_id, r.reference, d.provider, d.kind, d.state, d.request_id, \
         d.attempts, d.worker_failures, d.last_status, d.last_error, d.next_attempt_at, \
         d.created_at, d.resolved_at FROM deliveries d LEFT JOIN referrals r ON r.id = d.referral_id"
    };
}

/// A delivery (`d`) that no longer needs the referral's personal data: delivered,
/// cancelled, or a dead letter an operator resolved.
macro_rules! settled {
    () => {
        "(state IN ('delivered', 'cancelled') OR (state = 'dead' AND resolved_at IS NOT NULL))"
    };
}

/// What an insert that failed on a unique constraint means for the sender, or the
/// error itself.
fn inserted_or(e: sqlx::Error) -> Result<Inserted, StoreError> {
    match unique_violation(&e) {
        Some(Conflict::Reference) => Ok(Inserted::ReferenceTaken),
        Some(Conflict::Other) => Ok(Inserted::Duplicate),
        None => Err(e.into()),
    }
}

macro_rules! sql_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        impl $store {
            /// Stores one sealed accept in a transaction of its own.
            async fn insert_alone(&self, r: &NewReferralRecord) -> Result<Inserted, StoreError> {
                let mut tx = self.begin_write().await?;
                match self.insert_referral_tx(&mut tx, r).await {
                    Ok(()) => {
                        tx.commit().await?;
                        Ok(Inserted::Accepted)
                    }
                    Err(e) => {
                        tx.rollback().await?;
                        inserted_or(e)
                    }
                }
            }

            /// Writes `a` inside the caller's transaction, so it commits (or not) with
            /// the change it records, as a pending record: one row, without the chain
            /// head, so writers never wait for one another on its account. The sealer
            /// links it into the hash chain afterwards ([`AuditStore::seal_audit`]). A
            /// record about a stored referral without a subject names the referral's.
            async fn write_audit(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                a: &AuditRecord,
            ) -> Result<(), sqlx::Error> {
                let subject = match (&a.subject, &a.referral_id) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(referral)) => {
                        let found: Option<(Option<String>,)> =
                            sqlx::query_as(SUBJECT_OF_REFERRAL)
                                .bind(referral)
                                .fetch_optional(&mut *conn)
                                .await?;
                        found.and_then(|(s,)| s)
                    }
                    (None, None) => None,
                };
                let p = Prepared::new(a, subject);
                bind_content!(sqlx::query(PEND), a, p).execute(conn).await?;
                Ok(())
            }

            /// Seals what is pending before the trail is read, so a reader sees every
            /// record written. Sealing that fails (a record forged past the head blocks
            /// it, or the head is gone) must not keep auditors from what is chained:
            /// it is logged, and `audit verify` reports it.
            async fn seal_before_reading(&self) {
                if let Err(e) = self.seal_audit().await {
                    tracing::warn!(error = %e, "pending audit records could not be sealed; reading the chain as it is");
                }
            }

            async fn insert_referral_tx(
                &self,
                tx: &mut WriteTx<'_, $db>,
                r: &NewReferralRecord,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(INSERT_REFERRAL)
                .bind(&r.id)
                .bind(&r.reference)
                .bind(&r.practice_ods)
                .bind(&r.bundle_id)
                .bind(&r.programme)
                .bind(&r.locality)
                .bind(&r.provider)
                .bind(&r.routing_version)
                .bind(&r.referral_code)
                .bind(&r.nhs_number)
                .bind(&r.consent)
                .bind(&r.message)
                .bind(&r.source_endpoint)
                .bind(&r.client_id)
                .bind(&r.correlation_id)
                .bind(r.now)
                .bind(&r.subject)
                .execute(&mut **tx)
                .await?;
                for (system, value) in &r.sender_identifiers {
                    sqlx::query(INSERT_IDENTIFIER)
                    .bind(&r.practice_ods)
                    .bind(system)
                    .bind(value)
                    .bind(&r.id)
                    .execute(&mut **tx)
                    .await?;
                }
                sqlx::query(INSERT_NEW_MESSAGE)
                .bind(&r.request_id)
                .bind(&r.message_header_id)
                .bind(&r.id)
                .bind(r.now)
                .execute(&mut **tx)
                .await?;
                self.queue_accepted(&mut **tx, r).await
            }

            async fn apply_update_tx(
                &self,
                tx: &mut WriteTx<'_, $db>,
                u: &UpdateRecord,
            ) -> Result<Option<Updated>, sqlx::Error> {
                sqlx::query(
                    "INSERT INTO messages (request_id, message_header_id, referral_id, kind, received_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&u.request_id)
                .bind(&u.message_header_id)
                .bind(&u.referral_id)
                .bind(&u.kind)
                .bind(u.now)
                .execute(&mut **tx)
                .await?;
                let changed = sqlx::query(
                    "UPDATE referrals SET status = $1, updated_at = $2 \
                     WHERE id = $3 AND status = 'active'",
                )
                .bind(u.new_status.as_str())
                .bind(u.now)
                .bind(&u.referral_id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(None);
                }
                let stopped = sqlx::query(
                    "UPDATE deliveries SET state = 'cancelled', updated_at = $1 \
                     WHERE referral_id = $2 AND kind = 'referral' AND state = 'queued'",
                )
                .bind(u.now)
                .bind(&u.referral_id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let notice_kind = match u.new_status {
                    ReferralStatus::ConsentWithdrawn => DeliveryKind::Withdrawal,
                    ReferralStatus::Active | ReferralStatus::Cancelled => DeliveryKind::Cancellation,
                };
                let delivered: Vec<(String,)> = sqlx::query_as(
                    "SELECT provider FROM deliveries \
                     WHERE referral_id = $1 AND kind = 'referral' AND state = 'delivered'",
                )
                .bind(&u.referral_id)
                .fetch_all(&mut **tx)
                .await?;
                for (provider,) in &delivered {
                    sqlx::query(
                        "INSERT INTO deliveries (id, referral_id, provider, kind, state, request_id, \
                         attempts, next_attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'queued', $5, 0, $6, $6, $6)",
                    )
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&u.referral_id)
                    .bind(provider)
                    .bind(notice_kind)
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(u.now)
                    .execute(&mut **tx)
                    .await?;
                }
                self.write_audit(&mut **tx, &u.audit).await?;
                Ok(Some(Updated::Applied {
                    stopped,
                    notices: delivered.len() as u64,
                }))
            }
        }

        impl $store {
            /// Commits a guarded change with its audit record, or rolls back when the
            /// guard matched nothing (`false`).
            async fn commit_with_audit(
                &self,
                mut tx: WriteTx<'_, $db>,
                changed: u64,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                if changed == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                self.write_audit(&mut *tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                $migrator.run(&self.pool).await?;
                self.check_chain_guards().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

// SQLite write transactions begin IMMEDIATE: they take the write lock first, waiting
// their turn (busy timeout), so none can fail half-way because another writer
// committed after it had read (a deferred transaction that read first, even only the
// schema for a new connection's first statement, cannot take the lock then).
// PostgreSQL's transactions lock row by row, and are READ COMMITTED whatever the
// server's default, which sealing relies on (see `PostgresStore::seal_batch`).
//
// SQLite keeps times as RFC 3339 text whose fraction has its trailing zeros dropped,
// which does not sort as time does (`…:00.5Z` < `…:00Z`): range filters compare them
// normalised to fixed-width UTC text (to the millisecond). PostgreSQL compares
// `timestamptz` values as they are.
/// Stamps out `$stamp` for each engine with what differs between them (see above):
/// the store, its database, its migrations, the claim's row lock, and how a time
/// column is wrapped for comparison.
macro_rules! for_both_engines {
    ($stamp:ident) => {
        $stamp!(
            SqliteStore,
            sqlx::Sqlite,
            SQLITE_MIGRATOR,
            "",
            "strftime('%Y-%m-%dT%H:%M:%f', ",
            ")"
        );
        $stamp!(
            PostgresStore,
            sqlx::Postgres,
            POSTGRES_MIGRATOR,
            "FOR UPDATE SKIP LOCKED",
            "",
            ""
        );
    };
}

for_both_engines!(sql_store);

mod accept;
mod audit;
mod events;
mod finisher;
mod mesh;
mod outbox;
mod postgres;
mod referrals;
mod reports;
mod sqlite;
mod write;

#[cfg(test)]
mod tests {
    /// The SQL names the record's columns as its fields do: a column added to one and
    /// not the other fails here, not in an auditor's export.
    #[test]
    fn audit_sql_columns_are_the_records_fields() {
        let select = audit_columns!();
        let listed = select
            .trim_start_matches("SELECT ")
            .split(" FROM ")
            .next()
            .unwrap_or_default();
        let mut sql: Vec<&str> = listed.split(',').map(str::trim).collect();
        let mut fields = crate::audit_record::row_columns();
        sql.sort_unstable();
        fields.sort_unstable();
        assert_eq!(sql, fields);
        let content: Vec<&str> = audit_content_columns!().split(',').map(str::trim).collect();
        assert!(content.iter().all(|c| fields.iter().any(|f| f == c)));
        assert_eq!(
            content.len(),
            fields.len() - 4,
            "all but id, seq and the two hashes"
        );
    }
}
