//! Black-box tests of the running gateway, each on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod helpers;

mod audit;
mod auth;
mod background;
mod browser;
mod commands;
mod conformance;
mod console;
mod console_security;
mod delivery;
mod duplicates;
mod encryption;
mod errors;
mod events;
mod fhir_schema;
mod gp_callbacks;
mod hostile;
mod intake;
mod issuer;
mod limits;
mod mesh;
mod mesh_sandbox;
mod metrics;
mod operating;
mod provider;
mod retention;
mod search;
mod store;
mod updates;
mod validation;
