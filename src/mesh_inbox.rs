//! The gateway's MESH inbox: providers' status events, and MESH's reports on messages
//! the gateway sent, read every `mesh.poll_interval_ms`.
//!
//! Each message is recorded first and acknowledged after, so a message is never lost:
//! one read again after a restart between the two is recognised by its MESH message
//! id (`mesh_inbound`) and only acknowledged. A status event is recorded exactly as
//! the provider interface records one, under a request id derived from the message id,
//! so even a kill between the event and its `mesh_inbound` row records it once.
//!
//! What the gateway cannot act on (an unknown workflow or sender, a body that is not a
//! status event, an event the referral's state refuses) is recorded as refused, with
//! an audit record, and acknowledged: nothing about it leaves the gateway, and
//! operators list it (`thrive-gateway mesh inbox`, `GET /operator/v1/mesh/messages`).

use crate::app::{AppState, AuditContext, RequestIds};
use crate::auth::{Principal, Role};
use crate::config::Settings;
use crate::domain::ProviderId;
use crate::mesh::{MeshClient, MeshError, Received};
use crate::outcome::{RecCode, Rejection};
use crate::provider_events::{Body, Paths, read_json_event, read_task, record};
use crate::store::{AuditRecord, MeshInbound, StoreError};
use fhir_sdk::time::OffsetDateTime;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Request ids of status events read from MESH are UUIDv5s of the message id in this
/// namespace: the same message always records under the same request id.
const MESH_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5e1d_4a0b_8c3e_4f61_9b2a_7d0c_3e8f_1a24);

/// Why a message was left in the inbox, to be read again at the next poll.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("{0}")]
    Mesh(MeshError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Recording failed for a reason of the gateway's own (a 5xx): read it again later.
    #[error("the status event could not be recorded now: {0}")]
    NotRecorded(String),
}

impl From<MeshError> for TakeError {
    fn from(e: MeshError) -> Self {
        TakeError::Mesh(e)
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Recorded now, with this outcome (`recorded`, `duplicate`, `refused`,
    /// `undelivered`, `reported`).
    Recorded(String),
    /// Recorded by an earlier read: only to be acknowledged.
    Seen,
}

/// Reads the gateway's inbox. Cheap to clone.
#[derive(Clone)]
pub struct MeshInbox {
    gw: AppState,
    mesh: Arc<MeshClient>,
    status_workflow: Option<String>,
    /// Providers by their MESH mailbox id (upper case).
    senders: Arc<HashMap<String, ProviderId>>,
    every: Duration,
}

impl std::fmt::Debug for MeshInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshInbox")
            .field("mailbox", &self.mesh.mailbox())
            .finish_non_exhaustive()
    }
}

impl MeshInbox {
    /// The inbox of `[mesh]`; providers are known by the mailbox their `mesh.to` names.
    pub fn new(settings: &Settings, gw: AppState, mesh: Arc<MeshClient>) -> Option<Self> {
        let config = settings.mesh.as_ref()?;
        let senders = settings
            .providers
            .iter()
            .filter_map(|(id, p)| {
                let route = p.mesh.as_ref()?;
                let id = ProviderId::parse(id).ok()?;
                Some((route.to.to_ascii_uppercase(), id))
            })
            .collect();
        Some(Self {
            gw,
            mesh,
            status_workflow: config.status_workflow_id.clone(),
            senders: Arc::new(senders),
            every: Duration::from_millis(config.poll_interval_ms),
        })
    }

    /// Polls until `stop` turns true; does nothing when `mesh.poll_interval_ms` is 0.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        if self.every.is_zero() {
            return;
        }
        loop {
            if let Err(e) = self.poll_once().await {
                tracing::warn!(mailbox = %self.mesh.mailbox(), error = %e, "MESH inbox could not be read; trying again at the next poll");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Reads every message waiting: records each, then acknowledges it. A message
    /// that cannot be read or recorded now stays for the next poll. Returns how many
    /// were acknowledged.
    pub async fn poll_once(&self) -> Result<usize, MeshError> {
        let mut acknowledged = 0;
        for id in self.mesh.inbox().await? {
            match self.take(&id).await {
                Ok(_) => {
                    self.mesh.acknowledge(&id).await?;
                    acknowledged += 1;
                }
                Err(e) => {
                    tracing::warn!(mesh_message_id = %id, error = %e, "MESH message left in the inbox for the next poll");
                }
            }
        }
        Ok(acknowledged)
    }

    /// Reads one message and records what it comes to, without acknowledging it.
    pub async fn take(&self, message_id: &str) -> Result<Taken, TakeError> {
        if self.gw.store.mesh_message_seen(message_id).await? {
            return Ok(Taken::Seen);
        }
        let received = self.mesh.download(message_id).await?;
        let (row, audit) = if received.message_type.eq_ignore_ascii_case("REPORT") {
            self.report(&received).await?
        } else {
            self.status_event(&received).await?
        };
        if row.outcome == "refused" {
            tracing::warn!(
                mesh_message_id = %row.message_id,
                sender = %row.sender,
                workflow_id = %row.workflow_id,
                reason = row.reason.as_deref().unwrap_or_default(),
                "MESH message refused and acknowledged"
            );
        }
        let outcome = row.outcome.clone();
        if !self
            .gw
            .store
            .record_mesh_message(&row, audit.as_ref())
            .await?
        {
            return Ok(Taken::Seen);
        }
        Ok(Taken::Recorded(outcome))
    }

    /// A provider's status event: recorded as the provider interface records one, or
    /// refused with the reason.
    async fn status_event(
        &self,
        m: &Received,
    ) -> Result<(MeshInbound, Option<AuditRecord>), TakeError> {
        let now = OffsetDateTime::now_utc();
        let mut row = MeshInbound {
            message_id: m.message_id.clone(),
            sender: m.from.clone(),
            workflow_id: m.workflow_id.clone(),
            message_type: m.message_type.clone(),
            outcome: "refused".into(),
            reason: None,
            referral_id: None,
            received_at: now,
        };
        let request_id = uuid::Uuid::new_v5(&MESH_NAMESPACE, m.message_id.as_bytes());
        let ids = RequestIds {
            request_id,
            correlation_id: request_id,
            identity: None,
        };
        let provider = self.senders.get(&m.from.to_ascii_uppercase());
        let principal = provider.map(|p| Principal {
            client_id: format!("mesh:{}", m.from),
            role: Role::Provider {
                provider: p.clone(),
            },
        });
        let ctx = AuditContext {
            action: "referral.event",
            principal: principal.as_ref(),
            ids: Some(&ids),
        };
        let detail = |reason: &str| {
            serde_json::json!({
                "transport": "mesh",
                "mesh_message_id": m.message_id,
                "sender": m.from,
                "workflow_id": m.workflow_id,
                "reason": reason,
            })
        };
        let refuse = |mut row: MeshInbound, status: u16, reason: String| {
            let audit = ctx.record("rejected", status, None, detail(&reason));
            row.reason = Some(reason);
            (row, Some(audit))
        };
        if self.status_workflow.as_deref() != Some(m.workflow_id.as_str()) {
            return Ok(refuse(
                row,
                400,
                "not a workflow the gateway takes (mesh.status_workflow_id)".into(),
            ));
        }
        let Some(provider) = provider else {
            return Ok(refuse(
                row,
                403,
                "the sending mailbox is not a provider's (providers.<id>.mesh.to)".into(),
            ));
        };
        let (referral_id, body, paths) = match read_event(&m.body) {
            Ok(read) => read,
            Err(r) => return Ok(refuse(row, status_of(&r), reasons(&r))),
        };
        row.referral_id = uuid::Uuid::parse_str(&referral_id)
            .is_ok()
            .then(|| referral_id.clone());
        match record(
            &self.gw,
            provider.as_str(),
            &referral_id,
            Ok(ids.clone()),
            body,
            &paths,
            &ctx,
        )
        .await
        {
            Ok(recorded) => {
                row.outcome = if recorded.created {
                    "recorded"
                } else {
                    "duplicate"
                }
                .into();
                // The event's own audit record was written with it.
                Ok((row, None))
            }
            // The database is away or failed: leave the message for the next poll.
            Err(r) if matches!(r.rec(), RecCode::ServiceUnavailable | RecCode::ServerError) => {
                Err(TakeError::NotRecorded(reasons(&r)))
            }
            Err(r) => {
                let referral = row.referral_id.clone();
                let (row, audit) = refuse(row, status_of(&r), reasons(&r));
                Ok((
                    row,
                    audit.map(|a| AuditRecord {
                        referral_id: referral,
                        ..a
                    }),
                ))
            }
        }
    }

    /// MESH's report on a message the gateway sent: a non-delivery report makes its
    /// delivery a dead letter; a delivery report is noted.
    async fn report(&self, m: &Received) -> Result<(MeshInbound, Option<AuditRecord>), StoreError> {
        let now = OffsetDateTime::now_utc();
        let failed = m
            .status_success
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("ERROR"));
        let said = format!(
            "MESH {} {}: {}",
            if failed {
                "non-delivery report"
            } else {
                "delivery report"
            },
            m.status_code.as_deref().unwrap_or("-"),
            m.status_description.as_deref().unwrap_or("no description"),
        );
        let mut row = MeshInbound {
            message_id: m.message_id.clone(),
            sender: m.from.clone(),
            workflow_id: m.workflow_id.clone(),
            message_type: m.message_type.clone(),
            outcome: "reported".into(),
            reason: Some(said.clone()),
            referral_id: None,
            received_at: now,
        };
        let delivery = match m.local_id.as_deref() {
            Some(local) => self.gw.store.delivery_by_request_id(local).await?,
            None => None,
        };
        let Some(delivery) = delivery else {
            row.reason = Some(format!("{said} (about no message the gateway sent)"));
            return Ok((row, None));
        };
        row.referral_id = Some(delivery.referral_id.to_string());
        let audit = AuditRecord {
            referral_id: Some(delivery.referral_id.to_string()),
            recipient: Some(delivery.provider.clone()),
            detail: serde_json::json!({
                "delivery_id": delivery.id,
                "transport": "mesh",
                "mesh_message_id": m.linked_message_id,
                "report_id": m.message_id,
                "reason": said,
            }),
            ..AuditRecord::new(
                "delivery.report",
                if failed { "undelivered" } else { "delivered" },
            )
        };
        if !failed {
            return Ok((row, Some(audit)));
        }
        row.outcome = "undelivered".into();
        if self
            .gw
            .store
            .mark_undelivered(&delivery.id, &said, now, &audit)
            .await?
        {
            tracing::warn!(
                delivery_id = %delivery.id,
                recipient = %delivery.provider,
                reason = %said,
                "MESH could not hand a delivery over: it is a dead letter"
            );
        }
        // Its audit record was written with the dead letter (or by an earlier read).
        Ok((row, None))
    }
}

/// A status event as a MESH message carries it: a FHIR Task, or the JSON event with
/// the referral's id in `referral_id` (which the HTTP interface has in its path).
fn read_event(body: &[u8]) -> Result<(String, Body, Paths), Rejection> {
    let not_event = || {
        Rejection::one(crate::outcome::Issue::structure(
            crate::outcome::IssueType::Structure,
            "body",
            "not a status event: a JSON event with referral_id, or a FHIR Task",
        ))
    };
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|_| not_event())?;
    if value["resourceType"] == "Task" {
        return read_task(body)
            .map(|(referral, event, paths)| (referral, Body::Read(event), paths));
    }
    let object = value.as_object_mut().ok_or_else(not_event)?;
    let referral = match object.remove("referral_id") {
        Some(serde_json::Value::String(id)) => id,
        _ => {
            return Err(Rejection::one(crate::outcome::Issue::structure(
                crate::outcome::IssueType::Required,
                "referral_id",
                "referral_id (a string: the referral's id) is required in a MESH status event",
            )));
        }
    };
    let rest = serde_json::to_vec(object).map_err(|_| not_event())?;
    let event = read_json_event(&rest)?;
    Ok((referral, Body::Read(event), Paths::json()))
}

fn status_of(r: &Rejection) -> u16 {
    r.rec().status().as_u16()
}

/// A refusal's issues in the gateway's own words, each at its element.
fn reasons(r: &Rejection) -> String {
    r.issues
        .iter()
        .map(|i| match &i.expression {
            Some(at) => format!("{} ({at})", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
