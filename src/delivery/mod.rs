//! Delivery: the outbox worker that gets every accepted referral to its provider once.
//!
//! A worker claims due deliveries with a lease (so several gateway processes on one
//! PostgreSQL database never send the same delivery at the same time), re-checks the
//! referral's state and consent, minimises the referral to the provider's dataset,
//! sends it with an `X-Request-Id` that stays the same across retries (the provider's
//! de-duplication key), and records the outcome only while it still holds the lease.
//! No database transaction is open while the provider is called. The same outbox
//! carries each status event back to the referring GP system where a GP callback is
//! configured for it (kind `milestone`, see [`gp_callbacks`]).

mod client;
pub mod gp_callbacks;
mod record;
mod retry;

use record::{Attempted, Decided, Leased, keep_first};
pub use retry::backoff;
use retry::{Why, dead, seconds, stopped};

pub use client::{Answer, FailureClass, ProviderClient};
pub use gp_callbacks::GpCallbacks;

use crate::fhir::provider as provider_message;

use crate::config::pace::{self, Pace};
use crate::config::{DeliverySettings, ProviderFormat, Settings};
use crate::consent::ConsentRecord;
use crate::domain::ProviderId;
use crate::mapping::{Datasets, Pseudonymise};
use crate::pseudonym::PseudonymKeys;
use crate::store::{
    AuditRecord, Claim, ClaimedDelivery, DeliveryKind, DeliveryOutcome, DeliveryStore,
    RecipientClaim, ReferralStatus, StoreError,
};
use fhir_sdk::time::{Duration, OffsetDateTime};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::{collections::HashMap, sync::Arc};

/// A problem with the delivery configuration, found at start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverySetupError {
    #[error("routing sends referrals to provider {0}, but providers.{0} is not configured")]
    MissingProvider(String),
    #[error("provider {0} has no dataset mapping")]
    MissingDataset(String),
    #[error("keys.pseudonym.{0}: {1}")]
    Keys(String, String),
    #[error("providers.{0}: {1}")]
    Client(String, String),
    #[error("gp_callbacks.{0}: {1}")]
    Callback(String, String),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshSetupError),
}

/// Everything one provider needs: where to send, what to send, how to pseudonymise.
struct Recipient {
    client: ProviderClient,
    keys: Option<PseudonymKeys>,
    /// Who receives, as FHIR messages name it in `MessageHeader.destination`.
    receiver: provider_message::Receiver,
}

/// The outbox worker. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Deliverer {
    store: Arc<dyn DeliveryStore>,
    datasets: Arc<Datasets>,
    recipients: Arc<HashMap<ProviderId, Recipient>>,
    /// GP systems that take milestones back, by callback id.
    callbacks: Arc<HashMap<String, ProviderClient>>,
    settings: DeliverySettings,
    /// This worker's lease owner name, unique per process.
    owner: String,
    /// Counts attempts for `GET /metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Every configured recipient (providers routing can choose, GP callbacks) with
    /// its limits, in a fixed order the worker starts from a different place in each
    /// pass, so that no recipient's queue keeps the others waiting.
    paces: Arc<Vec<(String, Pace)>>,
    turn: Arc<AtomicUsize>,
    /// The time quiet hours are read against; tests move it.
    clock: Clock,
    /// The gateway's MESH mailbox, when `[mesh]` is configured.
    mesh: Option<Arc<crate::mesh::MeshClient>>,
}

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("owner", &self.owner)
            .finish()
    }
}

/// Used where a dataset names no pseudonym (checked at start): it is never called.
struct NoKeys;

impl Pseudonymise for NoKeys {
    fn pseudonym(&self, _input: &str) -> String {
        String::new()
    }
    fn key_version(&self) -> &str {
        ""
    }
}

impl Deliverer {
    /// Checks that every provider routing can choose has an endpoint, a dataset and,
    /// where its dataset pseudonymises, keys; builds a client per GP callback.
    pub fn new(
        settings: &Settings,
        store: Arc<dyn DeliveryStore>,
        routing: &crate::routing::Routing,
        datasets: Arc<Datasets>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, DeliverySetupError> {
        let mesh = settings
            .mesh
            .as_ref()
            .map(crate::mesh::MeshClient::new)
            .transpose()?
            .map(Arc::new);
        let mut recipients = HashMap::new();
        for provider in routing.providers() {
            let id = provider.id.to_string();
            let config = settings
                .providers
                .get(&id)
                .ok_or_else(|| DeliverySetupError::MissingProvider(id.clone()))?;
            let Some(dataset) = datasets.for_provider(&provider.id) else {
                return Err(DeliverySetupError::MissingDataset(id));
            };
            let keys = match settings.keys.pseudonym.get(&id) {
                Some(k) => Some(
                    PseudonymKeys::load(&id, k)
                        .map_err(|e| DeliverySetupError::Keys(id.clone(), e.to_string()))?,
                ),
                None if dataset.uses_pseudonyms() => {
                    return Err(DeliverySetupError::Keys(
                        id,
                        "the provider's dataset pseudonymises, but no keys are configured".into(),
                    ));
                }
                None => None,
            };
            let client = ProviderClient::new(config, mesh.as_ref())
                .map_err(|e| DeliverySetupError::Client(id.clone(), e))?;
            let receiver = provider_message::Receiver {
                endpoint: config.endpoint.clone(),
                identifier: provider.identifiers.first().cloned(),
                name: provider.name.clone(),
            };
            recipients.insert(
                provider.id.clone(),
                Recipient {
                    client,
                    keys,
                    receiver,
                },
            );
        }
        let mut callbacks = HashMap::new();
        let mut paces: Vec<(String, Pace)> = Vec::new();
        for (id, callback) in &settings.gp_callbacks {
            let config = callback.client();
            let client = ProviderClient::new(&config, mesh.as_ref())
                .map_err(|e| DeliverySetupError::Callback(id.clone(), e))?;
            callbacks.insert(id.clone(), client);
            paces.push((id.clone(), config.pace()));
        }
        for id in recipients.keys() {
            let id = id.to_string();
            if let Some(config) = settings.providers.get(&id) {
                paces.push((id, config.pace()));
            }
        }
        paces.sort_by(|a, b| a.0.cmp(&b.0));
        paces.dedup_by(|a, b| a.0 == b.0);
        Ok(Self {
            store,
            datasets,
            recipients: Arc::new(recipients),
            callbacks: Arc::new(callbacks),
            settings: settings.delivery.clone(),
            owner: format!("worker-{}", uuid::Uuid::new_v4()),
            metrics,
            paces: Arc::new(paces),
            turn: Arc::new(AtomicUsize::new(0)),
            clock: Arc::new(OffsetDateTime::now_utc),
            mesh,
        })
    }

    /// The gateway's MESH mailbox the worker sends from, when `[mesh]` is configured.
    pub fn mesh_client(&self) -> Option<Arc<crate::mesh::MeshClient>> {
        self.mesh.clone()
    }

    /// The same worker, reading quiet hours against `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The delivery's recipient and kind as metric labels: configured ids only, so a
    /// stray value in the database never becomes a label.
    fn labels<'a>(&self, provider: &'a str, kind: DeliveryKind) -> (&'a str, &'static str) {
        let configured = if kind == DeliveryKind::Milestone {
            self.callbacks.contains_key(provider)
        } else {
            ProviderId::parse(provider).is_ok_and(|p| self.recipients.contains_key(&p))
        };
        let recipient = if configured { provider } else { "(unknown)" };
        (recipient, kind.as_str())
    }

    /// Claims one batch of due deliveries and attempts them all; returns how many.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = OffsetDateTime::now_utc();
        let lease_until = now.saturating_add(seconds(self.settings.lease_seconds));
        let batch = self.settings.batch_size;
        let local_now = (self.clock)();
        let mut claimed = Vec::new();
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.paces.len() {
            let room = batch.saturating_sub(i64::try_from(claimed.len()).unwrap_or(i64::MAX));
            if room <= 0 {
                break;
            }
            let (recipient, pace) = &self.paces[(first + i) % self.paces.len()];
            // In quiet hours nothing is claimed, but the recipient is still marked as
            // controlled, so the claim for recipients no gateway has leaves it alone.
            let quiet = pace::is_quiet(&pace.quiet_hours, local_now);
            let claim = RecipientClaim {
                recipient,
                max_in_flight: pace.max_in_flight,
                interval: pace.interval(),
                limit: if quiet { 0 } else { room },
            };
            claimed.extend(
                self.store
                    .claim_for_recipient(&self.owner, now, lease_until, claim)
                    .await?,
            );
        }
        let room = batch.saturating_sub(i64::try_from(claimed.len()).unwrap_or(i64::MAX));
        if room > 0 {
            // Deliveries to recipients no gateway configures, to be dead-lettered.
            claimed.extend(
                self.store
                    .claim_deliveries(&self.owner, now, lease_until, room)
                    .await?,
            );
        }
        let n = claimed.len();
        let mut attempts: FuturesUnordered<_> = claimed
            .into_iter()
            .map(|c| self.attempt_guarded(c))
            .collect();
        let mut first_error = Ok(());
        while let Some(done) = attempts.next().await {
            // Whatever else has ended by now is recorded in the same transaction.
            let mut group = vec![done];
            while let Some(Some(more)) = attempts.next().now_or_never() {
                group.push(more);
            }
            let mut ended = Vec::with_capacity(group.len());
            for attempted in group {
                match attempted {
                    Ok(a) => ended.push(a),
                    Err(e) => keep_first(&mut first_error, Err(e)),
                }
            }
            keep_first(&mut first_error, self.record(ended).await);
        }
        first_error.map(|()| n)
    }

    /// Attempts one claimed delivery so that nothing about it can stop the worker: a
    /// panic, or a row that cannot be read, is counted against that delivery (see
    /// [`Deliverer::worker_failed`]) while the other deliveries go on. The outcome is
    /// recorded afterwards, with the others that ended at the same time. Fails only
    /// when the database cannot be reached.
    async fn attempt_guarded(&self, claim: Claim) -> Result<Attempted<'_>, StoreError> {
        match claim {
            Claim::Ready(d) => {
                match std::panic::AssertUnwindSafe(self.attempt(&d))
                    .catch_unwind()
                    .await
                {
                    Ok(decided) => Ok(Attempted::Decided(Box::new(decided))),
                    Err(panic) => {
                        tracing::error!(
                            delivery_id = %d.id,
                            message = %crate::supervisor::panic_message(panic.as_ref()),
                            "delivery worker panicked on this delivery"
                        );
                        Ok(Attempted::Failed(Leased::from(d.as_ref()), "it panicked"))
                    }
                }
            }
            Claim::Broken { id, error } => {
                let Some(view) = self.store.delivery(&id).await? else {
                    return Ok(Attempted::Gone);
                };
                let leased = Leased {
                    id: view.id,
                    referral_id: view.referral_id,
                    provider: view.provider,
                    kind: view.kind,
                    request_id: view.request_id,
                    correlation_id: None,
                    worker_failures: view.worker_failures,
                };
                tracing::error!(delivery_id = %leased.id, reason = %error, "delivery worker cannot read this delivery");
                Ok(Attempted::Failed(
                    leased,
                    "it could not be read with its referral",
                ))
            }
        }
    }

    /// Works until `stop` turns true, then gives back its leases.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let idle = std::time::Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            if *stop.borrow() {
                break;
            }
            let busy = match self.run_once().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::error!(error = %e, "delivery worker: database error");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        match self.store.release_leases(&self.owner).await {
            Ok(n) => tracing::info!(released = n, "delivery worker stopped"),
            Err(e) => tracing::error!(error = %e, "delivery worker: could not release leases"),
        }
    }

    /// Decides and, where allowed, sends one delivery; its outcome is recorded by
    /// [`Deliverer::record`].
    async fn attempt(&self, d: &ClaimedDelivery) -> Decided<'_> {
        // Under a rate limit, each delivery starts at its slot.
        if let Some(slot) = d.not_before {
            let wait = slot - OffsetDateTime::now_utc();
            if wait > Duration::ZERO {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
        let now = OffsetDateTime::now_utc();
        let started = std::time::Instant::now();
        let attempt = d.attempts.saturating_add(1);
        let (outcome, receipt, why) = self.decide(d, now).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let target = self.client_for(d).map_or("-", ProviderClient::host);
        let (result, status) = match &outcome {
            DeliveryOutcome::Delivered { status, .. } => ("delivered", Some(*status)),
            DeliveryOutcome::Retry { status, .. } => ("retry", *status),
            DeliveryOutcome::Dead { status, .. } => ("dead-letter", *status),
            DeliveryOutcome::Stopped { .. } => ("stopped", None),
            // Decided only by attempt_guarded, never by an attempt.
            DeliveryOutcome::WorkerFailed { .. } => ("worker-error", None),
        };
        let (recipient, kind) = self.labels(&d.provider, d.kind);
        self.metrics
            .delivery_attempt(recipient, kind, result, why.class);
        match &outcome {
            DeliveryOutcome::Delivered { .. } => self.metrics.recipient_attempt(recipient, true),
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Dead { .. } => {
                self.metrics.recipient_attempt(recipient, false);
            }
            _ => {}
        }
        let mapping = receipt.as_ref().and_then(|r| {
            Some(format!(
                "{}@{}",
                r["mapping_id"].as_str()?,
                r["mapping_version"].as_str()?
            ))
        });
        let key_version = receipt
            .as_ref()
            .and_then(|r| r["key_version"].as_str().map(str::to_owned));
        let mut detail = json!({
            "recipient": d.provider,
            "attempt": attempt,
            "reason": why.reason,
            "reason_class": why.class,
            "target": target,
            "duration_ms": duration_ms,
            "receipt": receipt,
        });
        if let Some(event) = &d.event {
            detail["event"] = json!(event);
        }
        if let Some(id) = &why.reference {
            detail["mesh_message_id"] = json!(id);
        }
        if d.kind == DeliveryKind::Referral {
            // The consent the disclosure rests on (dates and recipient, no identifiers).
            detail["consent"] = serde_json::from_str(&d.consent).unwrap_or(serde_json::Value::Null);
        }
        let audit = AuditRecord {
            at: now,
            http_status: status,
            referral_id: Some(d.referral_id.to_string()),
            request_id: Some(d.request_id.clone()),
            correlation_id: Some(d.correlation_id.clone()),
            recipient: Some(d.provider.clone()),
            mapping_version: mapping,
            key_version,
            detail,
            ..AuditRecord::new(format!("delivery.{}", d.kind), result)
        };
        Decided {
            leased: Leased::from(d),
            outcome,
            audit,
            target,
            attempt,
            reason_class: why.class,
            reason: why.reason,
            status,
            duration_ms,
        }
    }

    /// The client a delivery goes through, when its recipient is configured.
    fn client_for(&self, d: &ClaimedDelivery) -> Option<&ProviderClient> {
        if d.kind == DeliveryKind::Milestone {
            self.callbacks.get(&d.provider)
        } else {
            let provider = ProviderId::parse(&d.provider).ok()?;
            self.recipients.get(&provider).map(|r| &r.client)
        }
    }

    /// Decides and, where allowed, sends. Returns the outcome, the minimisation
    /// receipt of what was disclosed, and why it ended so.
    async fn decide(
        &self,
        d: &ClaimedDelivery,
        now: OffsetDateTime,
    ) -> (DeliveryOutcome, Option<serde_json::Value>, Why) {
        let age = now - d.created_at;
        let prepared = if d.kind == DeliveryKind::Milestone {
            self.prepare_milestone(d, now, age).await
        } else {
            self.prepare(d, now, age)
        };
        let (client, body, receipt) = match prepared {
            Ok(p) => p,
            Err((outcome, why)) => return (outcome, None, why),
        };
        let answer = client.send(&d.request_id, &d.correlation_id, &body).await;
        let (outcome, why) = self.classify(
            answer,
            client.host(),
            d.attempts.saturating_add(1),
            now,
            age,
        );
        // The body went out: whatever the answer, what it held is recorded.
        (outcome, receipt, why)
    }

    /// A delivery to a provider: who gets it and what, or why nothing is sent.
    fn prepare(
        &self,
        d: &ClaimedDelivery,
        now: OffsetDateTime,
        age: Duration,
    ) -> Result<Prepared<'_>, (DeliveryOutcome, Why)> {
        let Ok(provider) = ProviderId::parse(&d.provider) else {
            return Err(dead("the delivery names an unknown provider".into()));
        };
        let Some(recipient) = self.recipients.get(&provider) else {
            return Err(dead(format!("provider {provider} is not configured")));
        };
        if d.kind == DeliveryKind::Referral {
            if d.referral_status != ReferralStatus::Active {
                return Err(stopped(
                    "the referral was cancelled or its consent withdrawn",
                ));
            }
            match serde_json::from_str::<ConsentRecord>(&d.consent) {
                Ok(c) if c.covers(now) => {}
                _ => return Err(stopped("the consent no longer covers this disclosure")),
            }
        }
        self.young_enough(age)?;
        let (body, receipt) = self.body(d, &provider, recipient, now).map_err(dead)?;
        Ok((&recipient.client, body, receipt))
    }

    /// A milestone for the referring GP system. Neither a cancellation nor a consent
    /// withdrawal stops it: the GP practice is the data controller and must hear how
    /// the referral ended.
    async fn prepare_milestone(
        &self,
        d: &ClaimedDelivery,
        now: OffsetDateTime,
        age: Duration,
    ) -> Result<Prepared<'_>, (DeliveryOutcome, Why)> {
        let Some(client) = self.callbacks.get(&d.provider) else {
            return Err(dead(format!(
                "GP callback {} is not configured",
                d.provider
            )));
        };
        self.young_enough(age)?;
        match self.milestone_body(d).await {
            Ok(Some(body)) => Ok((client, body, None)),
            Ok(None) => Err(dead("the milestone to push is not stored".into())),
            Err(e) => {
                tracing::error!(error = %e, delivery_id = %d.id, "milestone push: database error");
                let failed = Answer::Failed {
                    class: FailureClass::Other,
                    error: "the milestone could not be read from the database".into(),
                };
                Err(self.classify(
                    failed,
                    client.host(),
                    d.attempts.saturating_add(1),
                    now,
                    age,
                ))
            }
        }
    }

    /// The `servicerequest-response` message for the delivery's status event, read
    /// with the referral it belongs to.
    async fn milestone_body(
        &self,
        d: &ClaimedDelivery,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(event_id) = &d.event_id else {
            return Ok(None);
        };
        let Some(referral) = self.store.referral(&d.referral_id).await? else {
            return Ok(None);
        };
        let history = self.store.events_for(&d.referral_id).await?;
        Ok(crate::fhir::messages::milestone(
            &referral, &history, event_id,
        ))
    }

    /// A dead letter once a delivery is older than `delivery.max_age_seconds`.
    fn young_enough(&self, age: Duration) -> Result<(), (DeliveryOutcome, Why)> {
        if age > seconds(self.settings.max_age_seconds) {
            return Err(dead(
                "the delivery is older than delivery.max_age_seconds".into(),
            ));
        }
        Ok(())
    }

    fn body(
        &self,
        d: &ClaimedDelivery,
        provider: &ProviderId,
        recipient: &Recipient,
        now: OffsetDateTime,
    ) -> Result<(serde_json::Value, Option<serde_json::Value>), String> {
        let referral = json!({
            "id": d.referral_id,
            "reference": d.reference,
            "programme": d.programme,
        });
        let format = recipient.client.format();
        let ids = provider_message::ReferralIds {
            id: &d.referral_id,
            reference: &d.reference,
            programme: &d.programme,
            provider: provider.as_str(),
            receiver: &recipient.receiver,
        };
        let stamp = now
            .format(&fhir_sdk::time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        if d.kind != DeliveryKind::Referral {
            let body = match format {
                ProviderFormat::Json => json!({"notice": d.kind, "referral": referral}),
                ProviderFormat::Fhir => provider_message::notice(&ids, d.kind.as_str(), &stamp),
            };
            return Ok((body, None));
        }
        let dataset = self
            .datasets
            .for_provider(provider)
            .ok_or_else(|| format!("provider {provider} has no dataset mapping"))?;
        if let Some(why) = &d.unreadable {
            return Err(why.clone());
        }
        let message: serde_json::Value = serde_json::from_str(&d.message)
            .map_err(|_| "the stored referral could not be read".to_owned())?;
        let keys: &dyn Pseudonymise = match &recipient.keys {
            Some(k) => k,
            None => &NoKeys,
        };
        let minimised = dataset
            .apply(&message, keys, now.date())
            .map_err(|e| format!("minimisation failed: {e}"))?;
        let receipt = serde_json::to_value(&minimised.receipt).ok();
        let body = match format {
            ProviderFormat::Json => json!({
                "notice": "referral",
                "referral": referral,
                "mapping": {"id": dataset.id(), "version": dataset.version()},
                "data": minimised.data,
            }),
            ProviderFormat::Fhir => {
                let pseudonym_field = minimised
                    .receipt
                    .fields
                    .iter()
                    .find(|f| f.transform == "pseudonym")
                    .map(|f| f.name.as_str());
                provider_message::referral(
                    &ids,
                    (dataset.id(), dataset.version()),
                    &minimised.data,
                    pseudonym_field,
                    &stamp,
                )
            }
        };
        Ok((body, receipt))
    }
}

/// Where a delivery goes and what it carries: the client, the body, and the
/// minimisation receipt of what it discloses.
type Prepared<'a> = (
    &'a ProviderClient,
    serde_json::Value,
    Option<serde_json::Value>,
);
