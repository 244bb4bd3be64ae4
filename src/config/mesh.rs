//! The gateway's MESH mailbox, and MESH as a provider's transport.

use crate::pseudonym::KeySource;
use serde::Deserialize;

/// The gateway's own mailbox at a MESH server (`[mesh]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSettings {
    /// The MESH API base URL, e.g. `https://mesh-sync.spineservices.nhs.uk`.
    pub url: String,
    /// The gateway's mailbox id.
    pub mailbox: String,
    /// The mailbox password (`file` or `env`); never logged.
    pub password: KeySource,
    /// The environment's shared key (`file` or `env`); never logged.
    pub shared_key: KeySource,
    /// Mutual TLS to the MESH server.
    #[serde(default)]
    pub tls: Option<super::ProviderTlsSettings>,
    /// Compressed payloads larger than this are sent in chunks of this size.
    #[serde(default = "default_chunk_bytes")]
    pub max_chunk_bytes: usize,
    /// Per-request timeout, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How often the inbox is read, in milliseconds; 0 reads it never.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    /// The workflow of providers' status events. Without it every data message that
    /// arrives is refused (and acknowledged); reports are still read.
    #[serde(default)]
    pub status_workflow_id: Option<String>,
}

fn default_poll_interval() -> u64 {
    // MESH asks clients not to poll more often than every few minutes.
    300_000
}

fn default_chunk_bytes() -> usize {
    // MESH's own limit is 100 MB a chunk; 20 MB keeps each POST short.
    20_000_000
}

fn default_timeout() -> u64 {
    30_000
}

/// How deliveries reach a provider or GP callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// POST to `endpoint`.
    #[default]
    Https,
    /// A message to the recipient's MESH mailbox (`mesh.to`), from `[mesh]`'s mailbox.
    Mesh,
}

/// Where a MESH delivery goes: `providers.<id>.mesh`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRoute {
    /// The recipient's mailbox id.
    pub to: String,
    /// The MESH workflow id the recipient expects.
    pub workflow_id: String,
}
