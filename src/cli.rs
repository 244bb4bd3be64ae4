//! The command line: `serve`, `migrate`, `dev-token`, `mappings check`.

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
        Command::Migrate => match crate::store::connect(&settings.database).await {
            Ok(_) => {
                println!("migrations applied");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("thrive-gateway migrate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::DevToken { client } => dev_token(&settings, &sources, &client),
        Command::Mappings {
            command: MappingsCommand::Check,
        } => match Routing::load(&settings.mappings.dir) {
            Ok(r) => {
                println!(
                    "mappings ok: routing version {}, {} providers",
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
