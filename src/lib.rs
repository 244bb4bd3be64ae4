//! thrive-gateway: receives employment support referrals from GP systems as FHIR R4
//! messages, checks who sent them and whether the patient consented, routes each to
//! its programme and provider, and stores it for delivery, answering at once.
//!
//! The modules follow a referral through the gateway: [`http`] and [`app`] (the HTTP
//! faces and what requests share), [`auth`], [`validation`] with [`fhir`], [`intake`]
//! (the decision), [`consent`], [`routing`], [`store`], [`mapping`], [`delivery`]; with
//! [`config`], [`telemetry`], [`metrics`], [`startup`] and [`cli`] around them.

pub mod app;
pub mod audit;
pub mod audit_record;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consent;
pub mod console;
pub mod delivery;
pub mod domain;
pub mod events;
pub mod fhir;
pub mod http;
pub mod intake;
pub mod limits;
pub mod mapping;
pub mod mesh;
pub mod mesh_inbox;
pub mod metrics;
pub mod operations;
pub mod outcome;
pub mod params;
pub mod provider_events;
pub mod pseudonym;
pub mod rate_limit;
pub mod reports;
pub mod retention;
pub mod routing;
pub mod startup;
pub mod store;
pub mod summary;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod validation;
