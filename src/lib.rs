//! thrive-gateway: receives employment support referrals from GP systems as FHIR R4
//! messages, checks who sent them and whether the patient consented, routes each to
//! its programme and provider, and stores it for delivery, answering at once.
//!
//! The modules follow a referral through the gateway: [`intake`] (HTTP), [`auth`],
//! [`validation`], [`consent`], [`routing`], [`store`]; with [`config`], [`telemetry`],
//! [`metrics`], [`startup`] and [`cli`] around them.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consent;
pub mod delivery;
pub mod domain;
pub mod events;
pub mod fhir;
pub mod intake;
pub mod limits;
pub mod mapping;
pub mod metrics;
pub mod operations;
pub mod outcome;
pub mod params;
pub mod provider_api;
pub mod pseudonym;
pub mod published_keys;
pub mod rate_limit;
pub mod reports;
pub mod retention;
pub mod routing;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod validation;
