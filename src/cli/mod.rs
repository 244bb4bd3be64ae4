//! The command line: the commands and their options here, and each command group in a
//! file of its own (`audit`, `deliveries`, `dev_token`, `migrate`, `report`,
//! `retention`). Only `serve` and `migrate` create or migrate a database.

mod audit;
mod deliveries;
mod dev_token;
mod migrate;
mod referrals;
mod report;
mod retention;

use crate::config::{Settings, Sources};
use crate::routing::Routing;
use crate::startup::Application;
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;
use std::{path::PathBuf, process::ExitCode};

/// thrive-gateway: employment support referrals from GP systems to providers.
#[derive(Debug, Parser)]
#[command(name = "thrive-gateway", version, about)]
pub struct Cli {
    /// Extra configuration files, applied in order after config/default.toml and
    /// config/<THRIVE_ENV>.toml.
    #[arg(long = "config", global = true, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and serve the HTTP API.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a development bearer token for a configured client (development only).
    DevToken {
        /// The client id (`sub`), e.g. example-gp.
        #[arg(long)]
        client: String,
    },
    /// Work with the mapping files.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Inspect the delivery queue and replay dead letters.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// The gateway's MESH mailbox.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// Follow one referral.
    Referrals {
        #[command(subcommand)]
        command: ReferralsCommand,
    },
    /// The information-governance audit trail: verify, checkpoint, export.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Programme statistics for commissioners.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Purge personal data that delivery no longer needs.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
}

/// Options with a fixed set of values; clap refuses any other (exit 2) and lists them.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
        pub enum $name {
            $(#[value(name = $text)] $variant),+
        }

        impl $name {
            /// The value as typed, for the audit record and the parsers behind it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
    };
}

choice!(
    /// What `report programme` groups by.
    GroupBy { Provider => "provider", Locality => "locality", Programme => "programme", Month => "month" }
);
choice!(
    /// How `report programme` prints.
    ReportFormat { Table => "table", Csv => "csv", Json => "json" }
);
choice!(
    /// How `report extract` prints.
    ExtractFormat { Csv => "csv", Json => "json" }
);
choice!(
    /// A delivery state, as `deliveries list --state` takes it.
    StateChoice { Queued => "queued", Delivered => "delivered", Dead => "dead", Cancelled => "cancelled", Resolved => "resolved" }
);
choice!(
    /// The form of an audit export.
    ExportFormat { Fhir => "fhir", Csv => "csv" }
);

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Run one purge pass now (as `serve` does every retention.interval_seconds) and
    /// print how many referrals were purged.
    Run,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Referrals, acceptances, engagement, job starts and sustained work, with small
    /// numbers suppressed.
    Programme {
        /// First day (YYYY-MM-DD or RFC 3339), inclusive.
        #[arg(long)]
        from: String,
        /// Last bound (YYYY-MM-DD or RFC 3339), exclusive.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = GroupBy::Provider)]
        group_by: GroupBy,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// A person-level extract for evaluation: pseudonymised with the reporting key,
    /// leaving out everyone on the National Data Opt-out list.
    Extract {
        /// First day (YYYY-MM-DD or RFC 3339), inclusive.
        #[arg(long)]
        from: String,
        /// Last bound (YYYY-MM-DD or RFC 3339), exclusive.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ExtractFormat::Csv)]
        format: ExtractFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain and the signed checkpoints; exits 1 naming the
    /// first record that was changed, removed, inserted or reordered.
    Verify,
    /// Sign the current chain head now (serve also does it every
    /// audit.checkpoint.interval_seconds).
    Checkpoint,
    /// Write the records of a time range as FHIR AuditEvents or CSV.
    Export {
        /// First day (YYYY-MM-DD or RFC 3339), inclusive.
        #[arg(long)]
        from: String,
        /// Last bound (YYYY-MM-DD or RFC 3339), exclusive.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Fhir)]
        format: ExportFormat,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Check an exported FHIR Bundle without the database: record hashes, links and
    /// checkpoint signatures (against audit.checkpoint.public_key_file, or --public-key).
    VerifyExport {
        file: PathBuf,
        /// The checkpoint public key (PEM) to check with.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Its key id.
        #[arg(long)]
        key_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first: id, referral reference, recipient, kind, state,
    /// attempts, age, next attempt and last error.
    List {
        /// Dead letters only (resolved ones included).
        #[arg(long)]
        dead: bool,
        /// Only those to this provider or GP callback id.
        #[arg(long)]
        recipient: Option<String>,
        /// Only those in this state.
        #[arg(long, value_enum)]
        state: Option<StateChoice>,
        /// Only those queued at or after this date (YYYY-MM-DD) or RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One delivery and every attempt at it: time, duration, outcome and reason.
    Show {
        /// The delivery id, as `deliveries list` shows it.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to a provider or GP callback: referrals are still accepted and
    /// queued, and go once it is resumed. Survives restarts; every gateway obeys it.
    Pause {
        /// The provider or GP callback id.
        recipient: String,
    },
    /// Send to a paused provider or GP callback again.
    Resume {
        /// The provider or GP callback id.
        recipient: String,
    },
    /// Each provider and GP callback: paused or not, queued deliveries, oldest age.
    Recipients {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back in the queue (consent is checked again before sending).
    Replay {
        /// The delivery id, as `deliveries list` shows it.
        id: String,
    },
    /// Mark a dead letter resolved: it is never replayed, and no longer holds back the
    /// retention purge of the referral's personal data.
    Resolve {
        /// The delivery id, as `deliveries list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Handshake with the configured mailbox and print how many messages wait in it.
    Check,
    /// The messages read from the gateway's inbox, newest first, and what became of
    /// each (recorded, refused with the reason, a delivery report).
    Inbox {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReferralsCommand {
    /// A referral's whole story, each step with its audit record's seq: KEY is its
    /// reference (TIW-…), gateway id, correlation id or the sender's identifier.
    Show {
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// Validate every mapping file; exit non-zero naming file and line on a problem.
    Check,
}

/// Why a command did not do its work. Every command returns it and [`run`] turns it
/// into the exit code, in one place: 2 when what was given cannot be used as given
/// (the configuration, an argument, a database missing or not at this gateway's
/// migration), 1 when the work failed or found a problem (a tampered chain, an
/// unreachable database).
#[derive(Debug)]
pub(crate) enum Failure {
    Usage(String),
    Failed(String),
}

impl Failure {
    pub(crate) fn usage(why: impl std::fmt::Display) -> Self {
        Failure::Usage(why.to_string())
    }

    pub(crate) fn failed(why: impl std::fmt::Display) -> Self {
        Failure::Failed(why.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure::failed(e)
    }
}

/// What a command returns: done, or why not.
pub(crate) type Done = Result<(), Failure>;

impl Command {
    /// The command as typed, naming it in its messages.
    fn name(&self) -> &'static str {
        match self {
            Command::Serve => "serve",
            Command::Migrate => "migrate",
            Command::DevToken { .. } => "dev-token",
            Command::Mappings { .. } => "mappings check",
            Command::Referrals {
                command: ReferralsCommand::Show { .. },
            } => "referrals show",
            Command::Mesh {
                command: MeshCommand::Check,
            } => "mesh check",
            Command::Mesh {
                command: MeshCommand::Inbox { .. },
            } => "mesh inbox",
            Command::Deliveries { command } => match command {
                DeliveriesCommand::List { .. } => "deliveries list",
                DeliveriesCommand::Show { .. } => "deliveries show",
                DeliveriesCommand::Pause { .. } => "deliveries pause",
                DeliveriesCommand::Resume { .. } => "deliveries resume",
                DeliveriesCommand::Recipients { .. } => "deliveries recipients",
                DeliveriesCommand::Replay { .. } => "deliveries replay",
                DeliveriesCommand::Resolve { .. } => "deliveries resolve",
            },
            Command::Audit { command } => match command {
                AuditCommand::Verify => "audit verify",
                AuditCommand::Checkpoint => "audit checkpoint",
                AuditCommand::Export { .. } => "audit export",
                AuditCommand::VerifyExport { .. } => "audit verify-export",
            },
            Command::Report { command } => match command {
                ReportCommand::Programme { .. } => "report programme",
                ReportCommand::Extract { .. } => "report extract",
            },
            Command::Retention { .. } => "retention run",
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let name = cli.command.name();
    match execute(cli, name).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (why, code) = match failure {
                Failure::Usage(why) => (why, ExitCode::from(2)),
                Failure::Failed(why) => (why, ExitCode::FAILURE),
            };
            eprintln!("thrive-gateway {name}: {why}");
            code
        }
    }
}

/// `mesh check`: the handshake, then the inbox count; names the mailbox, never a secret.
async fn mesh_check(settings: &Settings) -> Done {
    let Some(mesh) = &settings.mesh else {
        return Err(Failure::usage("no [mesh] table is configured"));
    };
    let client = crate::mesh::MeshClient::new(mesh).map_err(Failure::usage)?;
    client
        .handshake()
        .await
        .map_err(|e| Failure::failed(format!("handshake of mailbox {}: {e}", mesh.mailbox)))?;
    let count = client
        .inbox_count()
        .await
        .map_err(|e| Failure::failed(format!("inbox of mailbox {}: {e}", mesh.mailbox)))?;
    println!(
        "mailbox {} at {}: handshake ok, {count} messages waiting",
        mesh.mailbox, mesh.url
    );
    Ok(())
}

async fn execute(cli: Cli, name: &str) -> Done {
    let sources = Sources::from_process(cli.config.clone());
    let settings = Settings::load(&sources).map_err(Failure::usage)?;
    match cli.command {
        Command::Serve => {
            crate::telemetry::init(&settings.telemetry);
            crate::supervisor::install_panic_hook();
            let app = Application::build(&settings, sources.is_production())
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "gateway did not start");
                    Failure::failed(e)
                })?;
            let summary = app
                .summary(sources.environment.as_deref(), &sources.layers())
                .await;
            tracing::info!("{summary}");
            tracing::info!(address = %app.address(), environment = sources.environment.as_deref().unwrap_or("(none)"), "thrive-gateway listening");
            app.run().await.map_err(|e| {
                tracing::error!(error = %e, "server stopped with an error");
                Failure::failed(e)
            })
        }
        Command::Migrate => migrate::migrate(&settings).await,
        Command::DevToken { client } => dev_token::dev_token(&settings, &sources, &client),
        Command::Deliveries { command } => deliveries::deliveries(&settings, name, command).await,
        Command::Referrals {
            command: ReferralsCommand::Show { key, json },
        } => referrals::show(&settings, name, &key, json).await,
        Command::Mesh {
            command: MeshCommand::Check,
        } => mesh_check(&settings).await,
        Command::Mesh {
            command: MeshCommand::Inbox { limit, json },
        } => mesh_inbox(&settings, name, limit, json).await,
        Command::Audit { command } => audit::run(&settings, name, command).await,
        Command::Retention {
            command: RetentionCommand::Run,
        } => retention::retention(&settings).await,
        Command::Report {
            command:
                ReportCommand::Programme {
                    from,
                    to,
                    group_by,
                    format,
                },
        } => report::report(&settings, &from, &to, group_by, format).await,
        Command::Report {
            command: ReportCommand::Extract { from, to, format },
        } => report::extract(&settings, &from, &to, format).await,
        Command::Mappings {
            command: MappingsCommand::Check,
        } => {
            let r = Routing::load(&settings.mappings.dir)
                .and_then(|r| crate::mapping::Datasets::load(&settings.mappings.dir, &r).map(|_| r))
                .map_err(|errors| {
                    Failure::failed(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                })?;
            println!(
                "mappings ok: routing version {}, {} providers, each with a dataset",
                r.version(),
                r.providers().count()
            );
            Ok(())
        }
    }
}

/// `mesh inbox`: what was read from the inbox; audited as the operator API's list.
async fn mesh_inbox(settings: &Settings, name: &str, limit: i64, json: bool) -> Done {
    let store = open_for(name, settings, None).await?;
    let rows = store
        .mesh_messages(limit.clamp(1, 1000))
        .await
        .map_err(Failure::failed)?;
    audit::record_as(
        store.as_ref(),
        "operator",
        "operator.mesh.list",
        serde_json::json!({"count": rows.len()}),
    )
    .await?;
    if json {
        return deliveries::print_json(&rows);
    }
    println!(
        "{:<34}  {:<8}  {:<20}  {:<6}  {:<11}  {:<20}  reason",
        "message", "from", "workflow", "type", "outcome", "received"
    );
    let rfc3339 = &fhir_sdk::time::format_description::well_known::Rfc3339;
    for r in rows {
        println!(
            "{:<34}  {:<8}  {:<20}  {:<6}  {:<11}  {:<20}  {}",
            r.message_id,
            if r.sender.is_empty() {
                "MESH"
            } else {
                &r.sender
            },
            r.workflow_id,
            r.message_type,
            r.outcome,
            r.received_at
                .replace_nanosecond(0)
                .unwrap_or(r.received_at)
                .format(rfc3339)
                .unwrap_or_default(),
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Opens the database for a command that reads or tends it (all but `serve` and
/// `migrate`), never creating or migrating it, and names it on standard error. A
/// database that is missing or not at this gateway's migration is a usage failure
/// (exit 2); one that cannot be reached, a failure (exit 1).
pub(crate) async fn open_for(
    command: &str,
    settings: &Settings,
    keys: Option<std::sync::Arc<crate::store::crypto::StorageKeys>>,
) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    let name = crate::store::describe(&settings.database);
    match crate::store::open_existing(&settings.database, keys).await {
        Ok(store) => {
            eprintln!("thrive-gateway {command}: {name}");
            Ok(store)
        }
        Err(crate::store::OpenError::NotReady(why)) => Err(Failure::usage(format!(
            "{why}; nothing was created or changed"
        ))),
        Err(crate::store::OpenError::Store(e)) => Err(Failure::failed(format!("{name}: {e}"))),
    }
}
