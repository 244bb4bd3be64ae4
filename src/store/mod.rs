//! Storage: the only module that speaks SQL.
//!
//! One [`Store`] interface with two implementations, embedded SQLite (the default) and
//! PostgreSQL (production, several replicas), proven by one conformance suite. Every
//! state change that belongs together (a referral, its consent, routing decision,
//! message id, queued delivery and decision record) is written in one transaction.
//!
//! Personal data held for delivery (the referral message and the NHS number) is sealed
//! with the storage keys ([`crypto`]) on the way in and opened on the way out, here and
//! nowhere else, so no caller can store it in the clear. Once a referral no longer
//! needs it, [`ReferralStore::purge_settled`] replaces it by the empty marker.

pub(crate) mod audit;
pub mod crypto;
mod events;
mod mesh;
mod outbox;
mod referrals;
mod reports;
mod sql;
mod states;

use async_trait::async_trait;
use fhir_sdk::time::OffsetDateTime;
use secrecy::ExposeSecret;
use std::{str::FromStr, sync::Arc, time::Duration};

use crate::config::{Backend, DatabaseSettings};
use crate::domain::Milestone;
use crypto::StorageKeys;

pub use crate::audit_record::{AuditRecord, AuditRow, CheckpointRow};

pub use audit::{AuditCount, AuditStore};
pub use events::EventStore;
pub use mesh::{MeshInbound, MeshStore};
pub use outbox::{
    DeliveryFilter, Finish, OutboxStore, RecipientClaim, RecipientControl, RecipientQueue,
    ShownState,
};
pub use referrals::{ReferralStore, ReferralSummary};
pub use reports::ReportStore;
pub use sql::{PostgresStore, SqliteStore};
pub use states::{DeliveryKind, DeliveryState, ReferralId, ReferralStatus};

/// The store's traits, for `use crate::store::prelude::*` where a `dyn Store` is called.
pub mod prelude {
    pub use super::{
        AuditStore, DeliveryStore, EventStore, MeshStore, OutboxStore, ReferralStore, ReportStore,
        Store,
    };
}

/// What the delivery worker reads and writes: the outbox, the referral and its status
/// events a milestone push is built from, and the audit trail. Not reports.
pub trait DeliveryStore: OutboxStore + ReferralStore + EventStore + AuditStore {}

impl<T: OutboxStore + ReferralStore + EventStore + AuditStore + ?Sized> DeliveryStore for T {}

/// Failures of the database itself. Never shown to callers: they get 503 when
/// [`StoreError::is_unavailable`], a plain 500 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite accept writer's own connection.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is not in the expected form: {0}")]
    Corrupt(String),
    /// Sealing failed, or the store was opened without the storage keys.
    #[error("storage encryption: {0}")]
    Encryption(String),
    /// More accepts wait for SQLite's writer than `database.max_waiting_accepts`.
    #[error("too many accepts are waiting for the database")]
    Overloaded,
    /// One of SQLite's own writers (accepts, delivery outcomes) stopped before
    /// answering: nothing was stored.
    #[error("the SQLite writer stopped before committing")]
    WriterGone,
    /// One failure shared by every accept of a group commit.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

impl StoreError {
    /// The database could not be reached or stopped answering (no connection, a
    /// broken one, a full pool), as opposed to a query it answered with an error or
    /// a row that does not decode: nothing to blame on the data being handled.
    pub fn is_unreachable(&self) -> bool {
        if let StoreError::Shared(e) = self {
            return e.is_unreachable();
        }
        self.is_unavailable()
            || matches!(
                self,
                StoreError::Database(sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)
            )
    }

    /// What kind of failure this is, in fixed words (for a dead letter's reason,
    /// which operators read: the error's own text may quote stored data).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Sqlite(_) => {
                "a database error"
            }
            StoreError::Corrupt(_) => "stored data not in the expected form",
            StoreError::Encryption(_) => "a storage encryption error",
            StoreError::Overloaded => "the database's queue full",
            StoreError::WriterGone => "the SQLite writer stopped",
            StoreError::Shared(e) => e.kind(),
        }
    }

    /// The database could not be reached, did not give a connection within
    /// `database.acquire_timeout_ms`, or is too busy or shutting down: a passing
    /// condition, so the caller should send the request again later. Anything else
    /// (a constraint, corrupt data, a bug) is not.
    pub fn is_unavailable(&self) -> bool {
        let e = match self {
            StoreError::Database(e) => e,
            // Busy or locked past the busy timeout, I/O, a full disk, unopenable: as below.
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                return matches!(f.extended_code & 0xff, 5 | 6 | 10 | 13 | 14);
            }
            StoreError::Overloaded => return true,
            StoreError::Shared(e) => return e.is_unavailable(),
            _ => return false,
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // The primary result code: busy or locked past the busy timeout,
                    // the file unreadable or unopenable, the disk full.
                    matches!(
                        code.parse::<i32>().map(|c| c & 0xff),
                        Ok(5 | 6 | 10 | 13 | 14)
                    )
                } else {
                    // SQLSTATE: connection exceptions, insufficient resources (too many
                    // connections, disk full), the server shutting down or starting,
                    // and serialization failures and deadlocks, which a retry resolves.
                    code.starts_with("08")
                        || code.starts_with("53")
                        || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
                }
            }
            _ => false,
        }
    }
}

/// Which audit records an auditor asks for; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub referral_id: Option<String>,
    pub action: Option<String>,
    pub recipient: Option<String>,
    pub client_id: Option<String>,
    /// Records about any of these subject pseudonyms (one per audit key version).
    pub subjects: Vec<String>,
}

/// Everything written when a referral is accepted.
#[derive(Debug, Clone)]
pub struct NewReferralRecord {
    pub id: ReferralId,
    pub reference: String,
    pub practice_ods: String,
    pub bundle_id: String,
    pub programme: String,
    pub locality: String,
    pub provider: String,
    pub routing_version: String,
    pub referral_code: String,
    pub nhs_number: String,
    /// JSON of the accepted [`crate::consent::ConsentRecord`].
    pub consent: String,
    /// The message as received.
    pub message: String,
    pub source_endpoint: String,
    pub client_id: String,
    pub request_id: String,
    pub correlation_id: String,
    pub message_header_id: Option<String>,
    pub sender_identifiers: Vec<(String, String)>,
    /// The subject's audit pseudonym, named by every audit record about the referral.
    pub subject: String,
    /// The queued delivery's id and its stable `X-Request-Id` towards the provider.
    pub delivery_id: String,
    pub delivery_request_id: String,
    pub now: OffsetDateTime,
    pub audit: AuditRecord,
}

impl NewReferralRecord {
    /// The referral row [`ReferralStore::insert_referral`] writes, for answering the sender
    /// when reading it back fails after the commit.
    pub fn stored(&self) -> ReferralRow {
        ReferralRow {
            id: self.id.clone(),
            reference: self.reference.clone(),
            practice_ods: self.practice_ods.clone(),
            bundle_id: self.bundle_id.clone(),
            status: ReferralStatus::Active,
            programme: self.programme.clone(),
            locality: self.locality.clone(),
            provider: self.provider.clone(),
            routing_version: self.routing_version.clone(),
            referral_code: self.referral_code.clone(),
            nhs_number: self.nhs_number.clone(),
            consent: self.consent.clone(),
            source_endpoint: self.source_endpoint.clone(),
            client_id: self.client_id.clone(),
            correlation_id: self.correlation_id.clone(),
            created_at: self.now,
            updated_at: self.now,
            milestone: Milestone::None,
            purged_at: None,
        }
    }
}

/// What happened to an insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Accepted,
    /// The request id, MessageHeader id or sender's ServiceRequest identifier was
    /// already accepted: nothing was written.
    Duplicate,
    /// The generated reference collided; the caller picks another.
    ReferenceTaken,
}

/// A stored referral as the gateway reads it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReferralRow {
    pub id: ReferralId,
    pub reference: String,
    pub practice_ods: String,
    pub bundle_id: String,
    pub status: ReferralStatus,
    pub programme: String,
    pub locality: String,
    pub provider: String,
    pub routing_version: String,
    pub referral_code: String,
    pub nhs_number: String,
    pub consent: String,
    pub source_endpoint: String,
    pub client_id: String,
    pub correlation_id: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The latest status event from the provider ([`Milestone::None`] before the first).
    pub milestone: Milestone,
    /// When retention purged the personal data (`nhs_number` is then empty).
    pub purged_at: Option<OffsetDateTime>,
}

/// A delivery as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub referral_id: ReferralId,
    pub provider: String,
    pub kind: DeliveryKind,
    pub state: DeliveryState,
    pub request_id: String,
    pub attempts: i32,
    /// When the recipient took it (`None` until delivered).
    pub delivered_at: Option<OffsetDateTime>,
}

/// A delivery one worker holds the lease on, with what it needs to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub id: String,
    pub referral_id: ReferralId,
    pub provider: String,
    /// For [`DeliveryKind::Milestone`], `provider` is the GP callback id.
    pub kind: DeliveryKind,
    /// Stable across retries: the provider's de-duplication key.
    pub request_id: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub reference: String,
    pub programme: String,
    pub referral_status: ReferralStatus,
    /// JSON of the accepted consent, checked again before every attempt.
    pub consent: String,
    /// The referral message as received (empty once purged).
    pub message: String,
    pub correlation_id: String,
    /// `milestone`: the status event it carries, and that event's name.
    pub event_id: Option<String>,
    pub event: Option<Milestone>,
    /// Set when the stored message could not be decrypted: why, naming the referral
    /// and key version, never the value. The worker dead-letters such a delivery.
    #[sqlx(skip)]
    pub unreadable: Option<String>,
    /// Under a recipient's rate limit, the slot it may start at.
    #[sqlx(skip)]
    pub not_before: Option<OffsetDateTime>,
    /// Times in a row the worker itself failed on this delivery (a panic, or an
    /// error of its own rather than a recipient's answer).
    pub worker_failures: i32,
}

/// A delivery a worker claimed: ready to attempt, or one whose row could not be read
/// with its referral, which the worker counts as a failure of its own on it (see
/// [`DeliveryOutcome::WorkerFailed`]) rather than letting it stop the queue.
#[derive(Debug, Clone)]
pub enum Claim {
    Ready(Box<ClaimedDelivery>),
    Broken {
        id: String,
        /// Why, in the gateway's own words: never a stored value.
        error: String,
    },
}

impl Claim {
    /// The delivery's id.
    pub fn id(&self) -> &str {
        match self {
            Claim::Ready(d) => &d.id,
            Claim::Broken { id, .. } => id,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The provider has it (2xx, or 409: it had it already).
    Delivered {
        status: u16,
        receipt: Option<String>,
    },
    /// Try again at `next_attempt_at`.
    Retry {
        next_attempt_at: OffsetDateTime,
        status: Option<u16>,
        error: String,
    },
    /// Parked for an operator: the provider refused it, or attempts or age ran out.
    Dead { status: Option<u16>, error: String },
    /// Never to be sent: the referral was cancelled or its consent no longer holds.
    Stopped { reason: String },
    /// The worker itself failed on the delivery (it panicked, or hit an error of its
    /// own; not a recipient's answer) for the `failures`th time in a row: back in the
    /// queue at `next_attempt_at`, or, when `parked`, a dead letter, so one poisonous
    /// delivery never holds up the rest. Not counted as an attempt.
    WorkerFailed {
        failures: i32,
        next_attempt_at: OffsetDateTime,
        parked: bool,
        error: String,
    },
}

/// A delivery as operators see it (`deliveries list`).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub referral_id: ReferralId,
    /// The referral's reference (`TIW-…`); `None` when the referral is missing.
    pub reference: Option<String>,
    pub provider: String,
    pub kind: DeliveryKind,
    pub state: DeliveryState,
    pub request_id: String,
    pub attempts: i32,
    /// Times in a row the worker itself failed on it (see
    /// [`DeliveryOutcome::WorkerFailed`]).
    pub worker_failures: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When an operator resolved this dead letter: it is not replayed, and no longer
    /// holds back the retention purge.
    #[serde(with = "fhir_sdk::time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

/// A provider's status event to record, moving the referral from `from` to `event`.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: String,
    pub referral_id: ReferralId,
    pub provider: String,
    /// The milestone the event was checked against; recording fails if it moved.
    pub from: Milestone,
    pub event: Milestone,
    pub occurred_at: OffsetDateTime,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
    pub request_id: String,
    pub now: OffsetDateTime,
    pub audit: AuditRecord,
    /// Where the referring GP system takes milestones back: the delivery queued with
    /// the event, in the same transaction.
    pub gp_push: Option<MilestoneDelivery>,
}

/// A `milestone` delivery of one status event to the referring GP system.
#[derive(Debug, Clone)]
pub struct MilestoneDelivery {
    pub id: String,
    /// The GP callback id (`gp_callbacks.<id>`).
    pub recipient: String,
    /// Its own `X-Request-Id`, stable across retries.
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRecorded {
    Recorded,
    /// This request id was already recorded for the referral: nothing was written.
    Duplicate,
    /// Another event moved the referral first: nothing was written.
    Moved,
}

/// A recorded status event.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventRow {
    pub id: String,
    pub referral_id: ReferralId,
    pub provider: String,
    pub event: Milestone,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub reason: Option<String>,
    pub detail: String,
    pub request_id: String,
    #[serde(with = "fhir_sdk::time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// One referral as programme reporting sees it: where and when, and which milestones
/// it reached. No identifiers of the person.
#[derive(Debug, Clone)]
pub struct ReportRow {
    /// Only for person-level extracts, which pseudonymise it before anything leaves;
    /// `None` once retention purged it.
    pub nhs_number: Option<String>,
    pub created_at: OffsetDateTime,
    pub provider: String,
    pub locality: String,
    pub programme: String,
    pub events: Vec<Milestone>,
}

/// A cancellation or consent withdrawal to apply.
#[derive(Debug, Clone)]
pub struct UpdateRecord {
    pub referral_id: ReferralId,
    pub new_status: ReferralStatus,
    pub request_id: String,
    pub message_header_id: Option<String>,
    /// `cancel` or `withdraw-consent`.
    pub kind: String,
    pub now: OffsetDateTime,
    pub audit: AuditRecord,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// Applied: undelivered deliveries were cancelled (`stopped`), and a notice was
    /// queued for each provider that already had the referral (`notices`).
    Applied { stopped: u64, notices: u64 },
    /// The referral is no longer active: nothing was written.
    NotActive,
    /// This request id or MessageHeader id was already accepted: nothing was written.
    Duplicate,
}

/// The whole store: every aggregate's interface, each in its own file, and what the
/// database as a whole answers. A consumer that needs one aggregate takes that trait.
#[async_trait]
pub trait Store: DeliveryStore + ReportStore + MeshStore + Send + Sync + std::fmt::Debug {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Cheap reachability check for `/health/ready`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the database `settings.database.url` names (creating an SQLite file and its
/// folder on first start) and applies migrations, without the storage keys: such a store
/// serves the queue, audit and statistics, and refuses to write or read personal data
/// ([`StoreError::Encryption`]). Serving and delivering use [`connect_with_keys`].
pub async fn connect(settings: &DatabaseSettings) -> Result<Arc<dyn Store>, StoreError> {
    open(settings, None).await
}

/// Why a command would not open a database it only reads or tends.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing is there to read, or it is not at this gateway's migration. Nothing was
    /// created or changed.
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the gateway database `settings` names as it is: never creating a file, a
/// database or a table, and never migrating. A database that is missing or not at this
/// gateway's latest migration is refused ([`OpenError::NotReady`]). Used by every
/// command but `serve` and `migrate`.
pub async fn open_existing(
    settings: &DatabaseSettings,
    keys: Option<Arc<StorageKeys>>,
) -> Result<Arc<dyn Store>, OpenError> {
    let name = describe(settings);
    let backend = settings
        .backend()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => {
            // Not even WAL is set: a file that is not the gateway's is left as it was.
            let options = sqlite_options(settings)
                .map_err(StoreError::from)?
                .create_if_missing(false);
            if !options.get_filename().is_file() {
                return Err(OpenError::NotReady(format!("there is no {name}")));
            }
            let pool = pool_options(settings)
                .connect_with(options)
                .await
                .map_err(StoreError::from)?;
            let applied = sqlx::query_scalar::<_, i64>(APPLIED_MIGRATIONS)
                .fetch_all(&pool)
                .await;
            at_latest(&name, applied, &sql::SQLITE_MIGRATOR)?;
            Arc::new(SqliteStore::new(
                pool,
                keys,
                settings.max_waiting_accepts,
                Duration::from_millis(settings.sqlite_busy_timeout_ms),
            ))
        }
        Backend::Postgres => {
            let pool = pool_options(settings)
                .connect(settings.url.expose_secret())
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000") => {
                        OpenError::NotReady(format!("there is no {name}"))
                    }
                    _ => OpenError::Store(e.into()),
                })?;
            let applied = sqlx::query_scalar::<_, i64>(APPLIED_MIGRATIONS)
                .fetch_all(&pool)
                .await;
            at_latest(&name, applied, &sql::POSTGRES_MIGRATOR)?;
            Arc::new(PostgresStore::new(pool, keys))
        }
    };
    Ok(store)
}

const APPLIED_MIGRATIONS: &str =
    "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

/// Whether the migrations applied are exactly this gateway's.
fn at_latest(
    name: &str,
    applied: Result<Vec<i64>, sqlx::Error>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), OpenError> {
    let latest = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let applied = match applied {
        Ok(v) => v,
        // No migrations table: whatever this is, the gateway never set it up.
        Err(sqlx::Error::Database(_)) => {
            return Err(OpenError::NotReady(format!(
                "the {name} holds no thrive-gateway tables; `thrive-gateway migrate` creates them"
            )));
        }
        Err(e) => return Err(OpenError::Store(e.into())),
    };
    match applied.last().copied() {
        Some(at) if at == latest => Ok(()),
        Some(at) if at > latest => Err(OpenError::NotReady(format!(
            "the {name} is at migration {at}, newer than this gateway's {latest}: use the \
             gateway version that migrated it"
        ))),
        at => Err(OpenError::NotReady(format!(
            "the {name} is at migration {}, this gateway needs {latest}: run `thrive-gateway \
             migrate` first",
            at.unwrap_or(0)
        ))),
    }
}

/// The database `settings` names, for people: engine, host or path, and database name,
/// never a password.
pub fn describe(settings: &DatabaseSettings) -> String {
    let url = settings.url.expose_secret();
    match settings.backend() {
        Ok(Backend::Sqlite) => match sqlx::sqlite::SqliteConnectOptions::from_str(url) {
            Ok(o) => format!("SQLite database {}", o.get_filename().display()),
            Err(_) => "SQLite database (unreadable URL)".to_owned(),
        },
        Ok(Backend::Postgres) => match sqlx::postgres::PgConnectOptions::from_str(url) {
            Ok(o) => format!(
                "PostgreSQL database {} on {}:{}",
                o.get_database().unwrap_or("(the user's default)"),
                o.get_host(),
                o.get_port()
            ),
            Err(_) => "PostgreSQL database (unreadable URL)".to_owned(),
        },
        Err(_) => "database (unknown engine)".to_owned(),
    }
}

/// [`connect`], sealing and opening personal data with `keys`.
pub async fn connect_with_keys(
    settings: &DatabaseSettings,
    keys: Arc<StorageKeys>,
) -> Result<Arc<dyn Store>, StoreError> {
    open(settings, Some(keys)).await
}

/// The SQLite connection options every command shares: synchronous FULL (a commit
/// survives power loss, not only a process crash), foreign keys, and the busy timeout.
fn sqlite_options(
    settings: &DatabaseSettings,
) -> Result<sqlx::sqlite::SqliteConnectOptions, sqlx::Error> {
    Ok(
        sqlx::sqlite::SqliteConnectOptions::from_str(settings.url.expose_secret())?
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_millis(settings.sqlite_busy_timeout_ms)),
    )
}

/// The pool size and acquire timeout of `database.*`, for either engine.
fn pool_options<DB: sqlx::Database>(settings: &DatabaseSettings) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
}

async fn open(
    settings: &DatabaseSettings,
    keys: Option<Arc<StorageKeys>>,
) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match settings
        .backend()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
    {
        Backend::Sqlite => {
            let options = sqlite_options(settings)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Corrupt(format!("cannot create database folder: {e}"))
                })?;
            }
            let pool = pool_options(settings).connect_with(options).await?;
            Arc::new(SqliteStore::new(
                pool,
                keys,
                settings.max_waiting_accepts,
                Duration::from_millis(settings.sqlite_busy_timeout_ms),
            ))
        }
        Backend::Postgres => {
            let pool = pool_options(settings)
                .connect(settings.url.expose_secret())
                .await?;
            Arc::new(PostgresStore::new(pool, keys))
        }
    };
    store.migrate().await?;
    Ok(store)
}
