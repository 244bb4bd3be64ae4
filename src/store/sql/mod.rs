//! The SQL both engines share. The statements are written once in the common dialect
//! (numbered `$n` parameters, `RETURNING`, standard types bound from Rust), and the
//! macro below stamps out the [`Store`] implementation for each pool type. Where the
//! engines must differ (migrations, locking), each implementation says so itself.

use super::crypto::{Column, StorageKeys};
use super::{
    AuditFilter, AuditRecord, AuditRow, Claim, ClaimedDelivery, DeliveryOutcome, DeliveryRow,
    DeliveryView, EventRecord, EventRecorded, EventRow, Inserted, NewReferralRecord, ReferralRow,
    ReferralStatus, ReportRow, Store, StoreError, UpdateRecord, Updated,
};
use async_trait::async_trait;
use fhir_sdk::time::OffsetDateTime;
use std::sync::Arc;

/// Embedded SQLite (WAL, synchronous FULL).
#[derive(Debug)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    keys: Option<Arc<StorageKeys>>,
}

/// PostgreSQL, shared by several gateway processes. Writers never touch the chain
/// head; sealers take it in turn (`seal_batch`).
#[derive(Debug)]
pub struct PostgresStore {
    pool: sqlx::PgPool,
    keys: Option<Arc<StorageKeys>>,
}

impl SqliteStore {
    /// Without `keys`, personal data can be neither written nor read.
    pub fn new(pool: sqlx::SqlitePool, keys: Option<Arc<StorageKeys>>) -> Self {
        Self { pool, keys }
    }
}

impl PostgresStore {
    /// Without `keys`, personal data can be neither written nor read.
    pub fn new(pool: sqlx::PgPool, keys: Option<Arc<StorageKeys>>) -> Self {
        Self { pool, keys }
    }
}

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
            at: crate::audit::truncate(a.at),
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
/// ([`crate::audit::ChainEntry::tail`]).
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

/// SQLite: the pending record `$4` moved into the chain at place `$1`, linked to
/// `$2`, with hash `$3`. The triggers of migration 0007 check the link and move the
/// head.
const SEAL_ONE_SQLITE: &str = concat!(
    "INSERT INTO audit_events (",
    audit_content_columns!(),
    ", seq, prev_hash, hash) SELECT ",
    audit_content_columns!(),
    ", $1, $2, $3 FROM audit_pending WHERE id = $4"
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

impl SqliteStore {
    /// Without its triggers the head would no longer move and sealing would fail or
    /// be checked against nothing, so the store refuses to open.
    async fn check_chain_guards(&self) -> Result<(), StoreError> {
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
    async fn queue_accepted(
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
    async fn seal_batch(&self, limit: i64) -> Result<u64, StoreError> {
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

impl PostgresStore {
    /// PostgreSQL has no triggers to check.
    async fn check_chain_guards(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Queues the accepted referral's delivery and writes the accept's audit record,
    /// in one statement ([`QUEUE_AND_PEND_POSTGRES`]).
    async fn queue_accepted(
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
    async fn seal_batch(&self, limit: i64) -> Result<u64, StoreError> {
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

/// Columns of [`ClaimedDelivery`], read with the referral they belong to.
macro_rules! claimed_columns {
    () => {
        "SELECT d.id, d.referral_id, d.provider, d.kind, d.request_id, d.attempts, d.created_at, \
         r.reference, r.programme, r.status AS referral_status, r.consent, r.message, \
         r.correlation_id, d.event_id, e.event, d.worker_failures FROM deliveries d \
         JOIN referrals r ON r.id = d.referral_id LEFT JOIN referral_events e ON e.id = d.event_id \
         WHERE d.id = $1"
    };
}

/// Columns of [`DeliveryView`].
macro_rules! delivery_view_columns {
    () => {
        "SELECT id, referral_id, provider, kind, state, request_id, attempts, worker_failures, \
         last_status, last_error, next_attempt_at, created_at, resolved_at FROM deliveries"
    };
}

/// A delivery (`d`) that no longer needs the referral's personal data: delivered,
/// cancelled, or a dead letter an operator resolved.
macro_rules! settled {
    () => {
        "(state IN ('delivered', 'cancelled') OR (state = 'dead' AND resolved_at IS NOT NULL))"
    };
}

/// The statement that claims one due delivery. `$lock` is where the engines differ:
/// PostgreSQL skips rows another transaction has locked; SQLite has one writer at a
/// time, so the statement alone is atomic. The lease condition is repeated outside the
/// subquery so that a row claimed concurrently is re-checked, not claimed twice.
/// Milestones reach a GP system in the order they happened: one waits while an older
/// milestone of the same referral to the same recipient is still queued (a dead
/// letter no longer holds the rest back).
macro_rules! claim_one {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET lease_owner = $1, lease_expires_at = $2 WHERE id = (",
            "SELECT d.id FROM deliveries d WHERE d.state = 'queued' AND d.next_attempt_at <= $3 ",
            "AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $3) ",
            "AND NOT (d.kind = 'milestone' AND EXISTS (SELECT 1 FROM deliveries o ",
            "WHERE o.referral_id = d.referral_id AND o.provider = d.provider ",
            "AND o.kind = 'milestone' AND o.state = 'queued' AND o.created_at < d.created_at)) ",
            "ORDER BY d.next_attempt_at, d.created_at LIMIT 1 ",
            $lock,
            ") AND (lease_expires_at IS NULL OR lease_expires_at <= $3) RETURNING id"
        )
    };
}

macro_rules! sql_store {
    ($store:ty, $db:ty, $migrations:literal, $begin:literal, $lock:literal, $t0:literal, $t1:literal) => {
        impl $store {
            /// Writes `a` inside the caller's transaction, so it commits (or not) with
            /// the change it records, as a pending record: one row, without the chain
            /// head, so writers never wait for one another on its account. The sealer
            /// links it into the hash chain afterwards ([`Store::seal_audit`]). A
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
                            sqlx::query_as("SELECT subject FROM referrals WHERE id = $1")
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
                tx: &mut sqlx::Transaction<'_, $db>,
                r: &NewReferralRecord,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO referrals (id, reference, practice_ods, bundle_id, status, \
                     programme, locality, provider, routing_version, referral_code, nhs_number, \
                     consent, message, source_endpoint, client_id, correlation_id, created_at, \
                     updated_at, subject) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $16, $17)",
                )
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
                    sqlx::query(
                        "INSERT INTO referral_identifiers (practice_ods, system, value, referral_id) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&r.practice_ods)
                    .bind(system)
                    .bind(value)
                    .bind(&r.id)
                    .execute(&mut **tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO messages (request_id, message_header_id, referral_id, kind, received_at) \
                     VALUES ($1, $2, $3, 'new', $4)",
                )
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
                tx: &mut sqlx::Transaction<'_, $db>,
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
                    ReferralStatus::ConsentWithdrawn => "withdrawal",
                    _ => "cancellation",
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
                mut tx: sqlx::Transaction<'_, $db>,
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
                sqlx::migrate!($migrations).run(&self.pool).await?;
                self.check_chain_guards().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_referral(&self, r: &NewReferralRecord) -> Result<Inserted, StoreError> {
                let sealed = seal_record(&self.keys, r)?;
                let mut tx = self.pool.begin_with($begin).await?;
                match self.insert_referral_tx(&mut tx, &sealed).await {
                    Ok(()) => {
                        tx.commit().await?;
                        Ok(Inserted::Accepted)
                    }
                    Err(e) => {
                        tx.rollback().await?;
                        match unique_violation(&e) {
                            Some(Conflict::Reference) => Ok(Inserted::ReferenceTaken),
                            Some(Conflict::Other) => Ok(Inserted::Duplicate),
                            None => Err(e.into()),
                        }
                    }
                }
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
                let mut tx = self.pool.begin_with($begin).await?;
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

            async fn append_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                self.write_audit(&mut *tx, a).await?;
                tx.commit().await?;
                Ok(())
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

            async fn audit_checkpoints(&self) -> Result<Vec<crate::audit::checkpoint::CheckpointRow>, StoreError> {
                let rows = sqlx::query_as::<_, crate::audit::checkpoint::CheckpointRow>(
                    "SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoints ORDER BY seq",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            async fn insert_checkpoint(
                &self,
                c: &crate::audit::checkpoint::CheckpointRow,
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

            async fn claim_deliveries(
                &self,
                owner: &str,
                now: OffsetDateTime,
                lease_until: OffsetDateTime,
                limit: i64,
            ) -> Result<Vec<Claim>, StoreError> {
                let mut claimed = Vec::new();
                for _ in 0..limit {
                    let id: Option<(String,)> = sqlx::query_as(claim_one!($lock))
                        .bind(owner)
                        .bind(lease_until)
                        .bind(now)
                        .fetch_optional(&self.pool)
                        .await?;
                    let Some((id,)) = id else { break };
                    let row = sqlx::query_as::<_, ClaimedDelivery>(claimed_columns!())
                        .bind(&id)
                        .fetch_optional(&self.pool)
                        .await;
                    // A row that cannot be read must not stop the worker: it is
                    // handed back broken, and the worker parks it if it stays so.
                    let mut row = match row {
                        Ok(Some(row)) => row,
                        Ok(None) => {
                            tracing::error!(delivery_id = %id, "claimed delivery has no referral");
                            claimed.push(Claim::Broken {
                                id,
                                error: "the delivery's referral is missing".into(),
                            });
                            continue;
                        }
                        Err(e) => {
                            let e = StoreError::from(e);
                            if e.is_unreachable() {
                                return Err(e);
                            }
                            tracing::error!(delivery_id = %id, error = %e, "claimed delivery could not be read");
                            claimed.push(Claim::Broken {
                                id,
                                error: "the delivery could not be read from the database".into(),
                            });
                            continue;
                        }
                    };
                    // An unreadable message must not stop the worker: the delivery
                    // carries the reason and is dead-lettered.
                    match open_column(&self.keys, Column::ReferralMessage, &row.referral_id, &row.message) {
                        Ok(message) => row.message = message,
                        Err(e) => {
                            row.message = String::new();
                            row.unreadable = Some(e.to_string());
                        }
                    }
                    claimed.push(Claim::Ready(Box::new(row)));
                }
                Ok(claimed)
            }

            async fn finish_delivery(
                &self,
                id: &str,
                owner: &str,
                now: OffsetDateTime,
                outcome: &DeliveryOutcome,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let (state, next, status, error, receipt, delivered_at) = match outcome {
                    DeliveryOutcome::Delivered { status, receipt } => {
                        ("delivered", now, Some(i32::from(*status)), None, receipt.clone(), Some(now))
                    }
                    DeliveryOutcome::Retry { next_attempt_at, status, error } => {
                        ("queued", *next_attempt_at, status.map(i32::from), Some(error.clone()), None, None)
                    }
                    DeliveryOutcome::Dead { status, error } => {
                        ("dead", now, status.map(i32::from), Some(error.clone()), None, None)
                    }
                    DeliveryOutcome::Stopped { reason } => {
                        ("cancelled", now, None, Some(reason.clone()), None, None)
                    }
                    DeliveryOutcome::WorkerFailed { next_attempt_at, parked, error, .. } => {
                        let (state, next) = if *parked { ("dead", now) } else { ("queued", *next_attempt_at) };
                        (state, next, None, Some(error.clone()), None, None)
                    }
                };
                let attempted = i32::from(!matches!(
                    outcome,
                    DeliveryOutcome::Stopped { .. } | DeliveryOutcome::WorkerFailed { .. }
                ));
                // Counted in a row: any other outcome starts the count again.
                let worker_failures = match outcome {
                    DeliveryOutcome::WorkerFailed { failures, .. } => *failures,
                    _ => 0,
                };
                let mut tx = self.pool.begin_with($begin).await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET state = $1, next_attempt_at = $2, last_status = $3, \
                     last_error = $4, receipt = COALESCE($5, receipt), delivered_at = $6, \
                     attempts = attempts + $7, lease_owner = NULL, lease_expires_at = NULL, \
                     updated_at = $8, worker_failures = $11 \
                     WHERE id = $9 AND lease_owner = $10 AND lease_expires_at > $8",
                )
                .bind(state)
                .bind(next)
                .bind(status)
                .bind(error)
                .bind(receipt)
                .bind(delivered_at)
                .bind(attempted)
                .bind(now)
                .bind(id)
                .bind(owner)
                .bind(worker_failures)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }

            async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
                let n = sqlx::query(
                    "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL \
                     WHERE lease_owner = $1",
                )
                .bind(owner)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n)
            }

            async fn list_deliveries(&self, dead_only: bool, limit: i64) -> Result<Vec<DeliveryView>, StoreError> {
                let rows = sqlx::query_as::<_, DeliveryView>(
                    concat!(
                        delivery_view_columns!(),
                        " WHERE ($1 = 0 OR state = 'dead') ORDER BY created_at DESC, id LIMIT $2"
                    ),
                )
                .bind(i32::from(dead_only))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            async fn replay_delivery(
                &self,
                id: &str,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET state = 'queued', attempts = 0, worker_failures = 0, \
                     next_attempt_at = $1, updated_at = $1, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $2 AND state = 'dead' AND resolved_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }

            async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
                let row = sqlx::query_as::<_, DeliveryView>(concat!(
                    delivery_view_columns!(),
                    " WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }

            async fn resolve_delivery(
                &self,
                id: &str,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET resolved_at = $1 \
                     WHERE id = $2 AND state = 'dead' AND resolved_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }

            async fn purge_settled(
                &self,
                cutoff: OffsetDateTime,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
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

            async fn record_event(&self, e: &EventRecord) -> Result<EventRecorded, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let inserted = sqlx::query(
                    "INSERT INTO referral_events (id, referral_id, provider, event, occurred_at, \
                     reason, detail, request_id, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&e.id)
                .bind(&e.referral_id)
                .bind(&e.provider)
                .bind(&e.event)
                .bind(e.occurred_at)
                .bind(&e.reason)
                .bind(e.detail.to_string())
                .bind(&e.request_id)
                .bind(e.now)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    tx.rollback().await?;
                    return match unique_violation(&err) {
                        Some(_) => Ok(EventRecorded::Duplicate),
                        None => Err(err.into()),
                    };
                }
                let moved = sqlx::query(
                    "UPDATE referrals SET milestone = $1, updated_at = $2 \
                     WHERE id = $3 AND milestone = $4",
                )
                .bind(&e.event)
                .bind(e.now)
                .bind(&e.referral_id)
                .bind(&e.from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if let Some(push) = e.gp_push.as_ref().filter(|_| moved > 0) {
                    sqlx::query(
                        "INSERT INTO deliveries (id, referral_id, provider, kind, state, request_id, \
                         attempts, next_attempt_at, created_at, updated_at, event_id) \
                         VALUES ($1, $2, $3, 'milestone', 'queued', $4, 0, $5, $5, $5, $6)",
                    )
                    .bind(&push.id)
                    .bind(&e.referral_id)
                    .bind(&push.recipient)
                    .bind(&push.request_id)
                    .bind(e.now)
                    .bind(&e.id)
                    .execute(&mut *tx)
                    .await?;
                }
                if self.commit_with_audit(tx, moved, &e.audit).await? {
                    Ok(EventRecorded::Recorded)
                } else {
                    Ok(EventRecorded::Moved)
                }
            }

            async fn events_for(&self, referral_id: &str) -> Result<Vec<EventRow>, StoreError> {
                let rows = sqlx::query_as::<_, EventRow>(
                    "SELECT id, referral_id, provider, event, occurred_at, reason, detail, \
                     request_id, recorded_at FROM referral_events WHERE referral_id = $1 \
                     ORDER BY recorded_at, id",
                )
                .bind(referral_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            async fn event(&self, id: &str) -> Result<Option<EventRow>, StoreError> {
                let row = sqlx::query_as::<_, EventRow>(
                    "SELECT id, referral_id, provider, event, occurred_at, reason, detail, \
                     request_id, recorded_at FROM referral_events WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }

            async fn report_rows(
                &self,
                from: OffsetDateTime,
                to: OffsetDateTime,
                identified: bool,
            ) -> Result<Vec<ReportRow>, StoreError> {
                let referrals: Vec<(String, String, OffsetDateTime, String, String, String)> = sqlx::query_as(concat!(
                    "SELECT id, nhs_number, created_at, provider, locality, programme FROM referrals \
                     WHERE ", $t0, "created_at", $t1, " >= ", $t0, "$1", $t1,
                    " AND ", $t0, "created_at", $t1, " < ", $t0, "$2", $t1
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                let events: Vec<(String, String)> = sqlx::query_as(concat!(
                    "SELECT e.referral_id, e.event FROM referral_events e \
                     JOIN referrals r ON r.id = e.referral_id \
                     WHERE ", $t0, "r.created_at", $t1, " >= ", $t0, "$1", $t1,
                    " AND ", $t0, "r.created_at", $t1, " < ", $t0, "$2", $t1
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                let mut by_referral: std::collections::HashMap<String, Vec<String>> =
                    std::collections::HashMap::new();
                for (referral, event) in events {
                    by_referral.entry(referral).or_default().push(event);
                }
                referrals
                    .into_iter()
                    .map(|(id, nhs_number, created_at, provider, locality, programme)| {
                        let nhs_number = if identified {
                            Some(open_column(&self.keys, Column::ReferralNhsNumber, &id, &nhs_number)?)
                                .filter(|n| !n.is_empty())
                        } else {
                            None
                        };
                        Ok(ReportRow {
                            nhs_number,
                            created_at,
                            provider,
                            locality,
                            programme,
                            events: by_referral.remove(&id).unwrap_or_default(),
                        })
                    })
                    .collect()
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
                        if value.starts_with(super::crypto::PREFIX) {
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

            async fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT CASE WHEN state = 'dead' AND resolved_at IS NOT NULL THEN 'resolved' \
                     ELSE state END AS s, COUNT(*) FROM deliveries GROUP BY s ORDER BY s",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
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
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    "src/store/migrations/sqlite",
    "BEGIN IMMEDIATE",
    "",
    "strftime('%Y-%m-%dT%H:%M:%f', ",
    ")"
);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    "src/store/migrations/postgres",
    "BEGIN ISOLATION LEVEL READ COMMITTED",
    "FOR UPDATE SKIP LOCKED",
    "",
    ""
);
