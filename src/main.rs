use clap::Parser;
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    thrive_gateway::cli::run(thrive_gateway::cli::Cli::parse()).await
}
