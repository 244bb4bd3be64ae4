//! The command line: `serve`, `migrate`, `dev-token`, `mappings check`, `deliveries`,
//! `report`, `retention`.

pub mod audit;

use crate::config::{Settings, Sources};
use crate::routing::Routing;
use crate::startup::Application;
use clap::{Parser, Subcommand};
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
        /// provider, locality, programme or month.
        #[arg(long, default_value = "provider")]
        group_by: String,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
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
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
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
        /// fhir or csv.
        #[arg(long, default_value = "fhir")]
        format: String,
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
    /// List deliveries, newest first.
    List {
        /// Dead letters only.
        #[arg(long)]
        dead: bool,
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
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
pub enum MappingsCommand {
    /// Validate every mapping file; exit non-zero naming file and line on a problem.
    Check,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let sources = Sources::from_process(cli.config.clone());
    let settings = match Settings::load(&sources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve => {
            crate::telemetry::init(&settings.telemetry);
            crate::supervisor::install_panic_hook();
            let app = match Application::build(&settings, sources.is_production()).await {
                Ok(app) => app,
                Err(e) => {
                    tracing::error!(error = %e, "gateway did not start");
                    eprintln!("thrive-gateway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(address = %app.address(), environment = sources.environment.as_deref().unwrap_or("(none)"), "thrive-gateway listening");
            match app.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "server stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate => migrate(&settings).await,
        Command::DevToken { client } => dev_token(&settings, &sources, &client),
        Command::Deliveries { command } => deliveries(&settings, command).await,
        Command::Audit { command } => audit::run(&settings, command).await,
        Command::Retention {
            command: RetentionCommand::Run,
        } => retention(&settings).await,
        Command::Report {
            command:
                ReportCommand::Programme {
                    from,
                    to,
                    group_by,
                    format,
                },
        } => report(&settings, &from, &to, &group_by, &format).await,
        Command::Report {
            command: ReportCommand::Extract { from, to, format },
        } => extract(&settings, &from, &to, &format).await,
        Command::Mappings {
            command: MappingsCommand::Check,
        } => match Routing::load(&settings.mappings.dir)
            .and_then(|r| crate::mapping::Datasets::load(&settings.mappings.dir, &r).map(|_| r))
        {
            Ok(r) => {
                println!(
                    "mappings ok: routing version {}, {} providers, each with a dataset",
                    r.version(),
                    r.providers().count()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

/// Applies migrations; with `keys.storage` configured, also seals personal data that a
/// gateway from before encryption at rest stored in the clear.
async fn migrate(settings: &Settings) -> ExitCode {
    let fail = |e: String| {
        eprintln!("thrive-gateway migrate: {e}");
        ExitCode::FAILURE
    };
    eprintln!(
        "thrive-gateway migrate: {}",
        crate::store::describe(&settings.database)
    );
    let Some(key_settings) = &settings.keys.storage else {
        return match crate::store::connect(&settings.database).await {
            Ok(_) => {
                println!("migrations applied (keys.storage is not configured: nothing sealed)");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    };
    let keys = match crate::store::crypto::StorageKeys::load(Some(key_settings)) {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => return fail(e.to_string()),
    };
    let store = match crate::store::connect_with_keys(&settings.database, keys).await {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match store.seal_plaintext().await {
        Ok(n) => {
            println!("migrations applied; {n} referrals held in the clear were encrypted");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn dev_token(settings: &Settings, sources: &Sources, client: &str) -> ExitCode {
    if sources.is_production() {
        eprintln!("dev-token is refused when THRIVE_ENV=production");
        return ExitCode::FAILURE;
    }
    let (Some(key_file), Some(kid), Some(issuer)) = (
        &settings.dev.signing_key_file,
        &settings.dev.key_id,
        &settings.dev.issuer,
    ) else {
        eprintln!(
            "dev-token needs dev.signing_key_file, dev.key_id and dev.issuer (THRIVE_ENV=development sets them)"
        );
        return ExitCode::FAILURE;
    };
    if !settings.auth.clients.contains_key(client) {
        eprintln!("no client `{client}` in auth.clients");
        return ExitCode::FAILURE;
    }
    let pem = match std::fs::read(key_file) {
        Ok(p) => secrecy::SecretBox::new(Box::new(p)),
        Err(e) => {
            eprintln!("cannot read {}: {e}", key_file.display());
            return ExitCode::FAILURE;
        }
    };
    match crate::auth::mint_token(
        pem.expose_secret(),
        kid,
        issuer,
        &settings.auth.audience,
        client,
        settings.dev.token_ttl_seconds,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign a token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the database for a command that reads or tends it (all but `serve` and
/// `migrate`), never creating or migrating it, and names it on standard error. A
/// database that is missing or not at this gateway's migration is exit 2; one that
/// cannot be reached, exit 1.
pub(crate) async fn open_for(
    command: &str,
    settings: &Settings,
    keys: Option<std::sync::Arc<crate::store::crypto::StorageKeys>>,
) -> Result<std::sync::Arc<dyn crate::store::Store>, ExitCode> {
    let name = crate::store::describe(&settings.database);
    match crate::store::open_existing(&settings.database, keys).await {
        Ok(store) => {
            eprintln!("thrive-gateway {command}: {name}");
            Ok(store)
        }
        Err(crate::store::OpenError::NotReady(why)) => {
            eprintln!("thrive-gateway {command}: {why}; nothing was created or changed");
            Err(ExitCode::from(2))
        }
        Err(crate::store::OpenError::Store(e)) => {
            eprintln!("thrive-gateway {command}: {name}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

async fn deliveries(settings: &Settings, command: DeliveriesCommand) -> ExitCode {
    let store = match open_for("deliveries", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match command {
        DeliveriesCommand::List { dead, limit, json } => {
            let listed = crate::operations::list(store.as_ref(), dead, limit).await;
            if let Ok(rows) = &listed
                && let Err(code) = audit::record_as(
                    store.as_ref(),
                    "operator",
                    "operator.deliveries.list",
                    serde_json::json!({"dead_only": dead, "count": rows.len()}),
                )
                .await
            {
                return code;
            }
            match listed {
                Ok(rows) if json => match serde_json::to_string_pretty(&rows) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(rows) => {
                    println!(
                        "{:<36}  {:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:>6}  reason",
                        "id", "referral", "provider", "kind", "state", "attempts", "status"
                    );
                    for r in rows {
                        let state = if r.resolved_at.is_some() {
                            "resolved"
                        } else {
                            r.state.as_str()
                        };
                        println!(
                            "{:<36}  {:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:>6}  {}",
                            r.id,
                            r.referral_id,
                            r.provider,
                            r.kind,
                            state,
                            r.attempts,
                            r.last_status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            r.last_error.as_deref().unwrap_or("-")
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("thrive-gateway deliveries list: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        DeliveriesCommand::Replay { id } => {
            let audit = operator_audit("operator.deliveries.replay", &id);
            dead_letter_result(
                crate::operations::replay(store.as_ref(), &id, audit).await,
                &id,
                "replay",
                "queued again",
            )
        }
        DeliveriesCommand::Resolve { id } => {
            let audit = operator_audit("operator.deliveries.resolve", &id);
            dead_letter_result(
                crate::operations::resolve(store.as_ref(), &id, audit).await,
                &id,
                "resolve",
                "resolved: it will not be replayed",
            )
        }
    }
}

fn operator_audit(action: &str, id: &str) -> crate::store::AuditRecord {
    crate::store::AuditRecord {
        client_id: Some("command-line".into()),
        role: Some("operator".into()),
        detail: serde_json::json!({"delivery_id": id}),
        ..crate::store::AuditRecord::new(action, "accepted")
    }
}

fn dead_letter_result(
    result: Result<crate::operations::DeadLetterAction, crate::store::StoreError>,
    id: &str,
    verb: &str,
    done: &str,
) -> ExitCode {
    use crate::operations::DeadLetterAction;
    match result {
        Ok(DeadLetterAction::Done) => {
            println!("delivery {id} {done}");
            ExitCode::SUCCESS
        }
        Ok(DeadLetterAction::Resolved) => {
            eprintln!(
                "delivery {id} is a dead letter an operator already resolved: it is never replayed"
            );
            ExitCode::FAILURE
        }
        Ok(DeadLetterAction::NotDeadLetter) => {
            eprintln!("no dead letter has id {id}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("thrive-gateway deliveries {verb}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn retention(settings: &Settings) -> ExitCode {
    // Purging needs no keys: it only ever clears.
    let store = match open_for("retention run", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let purged =
        crate::retention::run_once(store.as_ref(), &settings.retention, "command-line").await;
    audit::seal_what_was_written(store.as_ref()).await;
    match purged {
        Ok(p) => {
            println!(
                "retention: purged the personal data of {} referrals settled more than {} days ago",
                p.referrals, p.after_days
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("thrive-gateway retention run: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn report(
    settings: &Settings,
    from: &str,
    to: &str,
    group_by: &str,
    format: &str,
) -> ExitCode {
    use crate::reports;
    let parsed = (|| {
        Ok::<_, String>((
            reports::bound(from)?,
            reports::bound(to)?,
            group_by.parse::<reports::GroupBy>()?,
        ))
    })();
    let (from_t, to_t, group) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("thrive-gateway report programme: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match open_for("report programme", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.report_rows(from_t, to_t, false).await {
        Ok(r) => reports::programme(&r, group),
        Err(e) => {
            eprintln!("thrive-gateway report programme: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(code) = audit::record_as(
        store.as_ref(),
        "operator",
        "report.programme",
        serde_json::json!({"from": from, "to": to, "group_by": group_by, "rows": rows.len()}),
    )
    .await
    {
        return code;
    }
    match format {
        "csv" => print!("{}", reports::to_csv(&rows)),
        "json" => match serde_json::to_string_pretty(&rows) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        "table" => {
            print!("{:<20}", "group");
            for m in reports::MEASURES {
                print!(" {m:>18}");
            }
            println!();
            for r in &rows {
                print!("{:<20}", r.group);
                for m in reports::MEASURES {
                    print!(" {:>18}", r.measures[m].to_string());
                }
                println!();
            }
            println!(
                "counts of 1 to 4 are shown as <5; all other counts are rounded to the nearest 5"
            );
        }
        other => {
            eprintln!("--format must be table, csv or json, not {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

async fn extract(settings: &Settings, from: &str, to: &str, format: &str) -> ExitCode {
    use crate::reports;
    let fail = |e: String| {
        eprintln!("thrive-gateway report extract: {e}");
        ExitCode::FAILURE
    };
    let (from_t, to_t) = match (reports::bound(from), reports::bound(to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    if format != "csv" && format != "json" {
        return fail(format!("--format must be csv or json, not {format}"));
    }
    let Some(key_settings) = settings.keys.pseudonym.get("reporting") else {
        return fail(
            "keys.pseudonym.reporting is not configured: an extract is only ever pseudonymised"
                .into(),
        );
    };
    let keys = match crate::pseudonym::PseudonymKeys::load("reporting", key_settings) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let Some(list_file) = &settings.reporting.opt_out_file else {
        return fail("reporting.opt_out_file is not configured: the National Data Opt-out applies to extracts".into());
    };
    let opted_out = match std::fs::read_to_string(list_file)
        .map_err(|e| format!("{}: {e}", list_file.display()))
        .and_then(|t| reports::opt_outs(&t))
    {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let storage_keys = match crate::store::crypto::StorageKeys::load(settings.keys.storage.as_ref())
    {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => return fail(e.to_string()),
    };
    let store = match open_for("report extract", settings, Some(storage_keys)).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.report_rows(from_t, to_t, true).await {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let (rows, left_out) = reports::extract(&rows, &keys, &opted_out);
    if let Err(code) = audit::record_as(
        store.as_ref(),
        "operator",
        "report.extract",
        serde_json::json!({"from": from, "to": to, "rows": rows.len(), "opted_out": left_out.opted_out, "purged": left_out.purged,
            "key_version": keys.key_version()}),
    )
    .await
    {
        return code;
    }
    if format == "json" {
        match serde_json::to_string_pretty(&rows) {
            Ok(t) => println!("{t}"),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        print!("{}", reports::extract_csv(&rows));
    }
    eprintln!(
        "{} rows; {} left out under the National Data Opt-out; {} purged under retention",
        rows.len(),
        left_out.opted_out,
        left_out.purged
    );
    ExitCode::SUCCESS
}
