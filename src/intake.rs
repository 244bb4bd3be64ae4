//! Intake, the decision about a message: from an authenticated caller's
//! `$process-message` body, validate, check the caller may refer for the practice,
//! route, pass the consent gate, and store, or reject with every reason. Every decision
//! leaves an audit record. The HTTP side is [`crate::http::intake`].

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::app::{AppState, AuditContext, RequestIds};
use crate::auth::{Principal, Role};
use crate::consent;
use crate::domain::ReferralReference;
use crate::metrics::ReferralOutcome;
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::routing::{RouteDecision, RouteError};
use crate::store::{
    Inserted, NewReferralRecord, ReferralId, ReferralRow, ReferralStatus, UpdateRecord, Updated,
};
use crate::validation::{self, Context, Message, NewReferral, UpdateAction, UpdateRequest};
use fhir_sdk::time::OffsetDateTime;
use serde_json::json;

/// What an accepted message produced, for the response.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub bundle_id: String,
    /// The request's `MessageHeader.source.endpoint`: the answer's destination.
    pub source_endpoint: String,
    pub referral: ReferralRow,
    /// What the message did: stored a referral, cancelled or withdrew one.
    pub decision: ReferralOutcome,
}

/// What a new referral's route and consent come to.
struct Plan {
    route: RouteDecision,
    consent: consent::ConsentRecord,
    reference_prefix: String,
}

/// What a dry run found: the message would be accepted.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// `new`, `cancel` or `withdraw-consent`.
    pub action: &'static str,
    pub programme: Option<String>,
    pub provider: Option<String>,
}

impl AppState {
    /// Handles one `$process-message` body from an authenticated caller.
    pub async fn process(
        &self,
        principal: &Principal,
        ids: &RequestIds,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Outcome, Rejection> {
        let mut ctx = AuditContext {
            action: "referral.message",
            principal: Some(principal),
            ids: Some(ids),
        };
        let result = self.decide(principal, ids, body, now, &mut ctx).await;
        if let Err(rejection) = &result {
            // A refused message that names a valid NHS number is recorded against that
            // person's pseudonym, so a subject access request finds it too.
            let subject = subject_nhs_number(body)
                .map(|n| self.audit_keys.pseudonym(n.expose()).into_string());
            self.audit_rejection_about(&ctx, rejection, subject).await;
        }
        result
    }

    /// Everything `$process-message` checks before it changes anything: the caller's
    /// role and practice, and the message itself.
    fn check(
        &self,
        principal: &Principal,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Message, Rejection> {
        if !matches!(principal.role, Role::GpSystem { .. }) {
            return Err(Issue::new(
                RecCode::Forbidden,
                IssueType::Forbidden,
                "only GP systems may send referral messages",
            )
            .into());
        }
        let value = validation::parse_json(body)?;
        let vctx = Context {
            now,
            minimum_age_years: self.minimum_age_years,
            routing: &self.routing,
        };
        let checked = validation::validate(value, &vctx);
        if let Some(practice) = &checked.practice
            && !principal.may_refer_for(practice)
        {
            // Nothing more is said to a caller that may not refer for this practice.
            return Err(Issue::new(
                RecCode::Forbidden,
                IssueType::Forbidden,
                "this client may not refer for the requesting GP practice",
            )
            .at("ServiceRequest.requester")
            .into());
        }
        checked.result
    }

    async fn decide(
        &self,
        principal: &Principal,
        ids: &RequestIds,
        body: &[u8],
        now: OffsetDateTime,
        ctx: &mut AuditContext<'_>,
    ) -> Result<Outcome, Rejection> {
        match self.check(principal, body, now)? {
            Message::New(referral) => {
                ctx.action = "referral.new";
                self.accept(principal, ids, referral, now).await
            }
            Message::Update(update) => {
                ctx.action = match update.action {
                    UpdateAction::Cancel => "referral.cancel",
                    UpdateAction::WithdrawConsent => "referral.withdraw-consent",
                };
                self.update(principal, ids, update, now).await
            }
        }
    }

    /// `$validate`: what `$process-message` would answer, without storing, forwarding
    /// or changing anything (duplicates excepted: a dry run is never stored, so it
    /// cannot tell a later copy from the first). Recorded as `referral.validate`.
    pub async fn dry_run(
        &self,
        principal: &Principal,
        ids: &RequestIds,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<DryRun, Rejection> {
        let ctx = AuditContext {
            action: "referral.validate",
            principal: Some(principal),
            ids: Some(ids),
        };
        let result = async {
            match self.check(principal, body, now)? {
                Message::New(referral) => {
                    let plan = self.plan(&referral, now)?;
                    Ok(DryRun {
                        action: "new",
                        programme: Some(plan.route.programme),
                        provider: Some(plan.route.provider.to_string()),
                    })
                }
                Message::Update(update) => {
                    let referral = self.target_of(&update).await?;
                    if referral.status != ReferralStatus::Active {
                        return Err(not_active());
                    }
                    Ok(DryRun {
                        action: update.action.name(),
                        programme: None,
                        provider: None,
                    })
                }
            }
        }
        .await;
        match &result {
            Ok(d) => {
                let record = ctx.record("valid", 200, None, json!({ "message": d.action }));
                self.store.append_audit(&record).await?;
            }
            Err(rejection) => self.audit_rejection(&ctx, rejection).await,
        }
        result
    }

    /// Route and consent for a valid new referral: what would be stored.
    fn plan(&self, referral: &NewReferral, now: OffsetDateTime) -> Result<Plan, Rejection> {
        let envelope = &referral.envelope;
        let route = self
            .routing
            .route(&envelope.practice, &referral.referral_code)
            .map_err(|e| Rejection::one(route_issue(&e)))?;
        let provider = self.routing.provider(&route.provider).ok_or_else(|| {
            tracing::error!(provider = %route.provider, "routing names a provider it does not define");
            server_error()
        })?;
        let consent = consent::check(&referral.consents, provider, now)
            .map_err(|issues| Rejection { issues })?;
        let reference_prefix = self
            .routing
            .programme(&route.programme)
            .ok_or_else(server_error)?
            .reference_prefix
            .clone();
        Ok(Plan {
            route,
            consent,
            reference_prefix,
        })
    }

    async fn accept(
        &self,
        principal: &Principal,
        ids: &RequestIds,
        referral: NewReferral,
        now: OffsetDateTime,
    ) -> Result<Outcome, Rejection> {
        // At the database's precision (PostgreSQL keeps microseconds), so that the
        // answer, made from what was written, reads as every later read of it.
        let now = crate::audit_record::truncate(now);
        let Plan {
            route,
            consent,
            reference_prefix,
        } = self.plan(&referral, now)?;
        let envelope = &referral.envelope;
        let consent_json = serde_json::to_string(&consent).map_err(|_| server_error())?;
        let message = serde_json::to_string(&referral.bundle).map_err(|_| server_error())?;

        let id = ReferralId::generate();
        let subject = self
            .audit_keys
            .pseudonym(referral.nhs_number.expose())
            .into_string();
        let mut record = NewReferralRecord {
            id: id.clone(),
            reference: String::new(),
            practice_ods: envelope.practice.to_string(),
            bundle_id: envelope.bundle_id.clone(),
            programme: route.programme.clone(),
            locality: route.locality.clone(),
            provider: route.provider.to_string(),
            routing_version: route.mapping_version.clone(),
            referral_code: referral.referral_code.clone(),
            nhs_number: referral.nhs_number.expose().to_owned(),
            consent: consent_json,
            message,
            source_endpoint: envelope.source_endpoint.clone(),
            client_id: principal.client_id.clone(),
            request_id: ids.request_id.to_string(),
            correlation_id: ids.correlation_id.to_string(),
            message_header_id: envelope.message_header_id.clone(),
            sender_identifiers: envelope.sender_identifiers.clone(),
            delivery_id: uuid::Uuid::new_v4().to_string(),
            delivery_request_id: uuid::Uuid::new_v4().to_string(),
            now,
            audit: AuditContext {
                action: "referral.new",
                principal: Some(principal),
                ids: Some(ids),
            }
            .record(
                "accepted",
                200,
                Some(&id),
                accepted_detail(&route, &consent, &envelope.ignored),
            )
            .to_recipient(route.provider.as_str())
            .under_mapping(&format!("routing@{}", route.mapping_version))
            .about(&subject),
            subject,
        };
        // A reference collision is astronomically rare; try a few fresh ones.
        for _ in 0..5 {
            record.reference = ReferralReference::generate(&reference_prefix).to_string();
            match self.store.insert_referral(&record).await {
                Ok(Inserted::Accepted) => {
                    tracing::info!(referral_id = %id, provider = %route.provider, programme = %route.programme, "referral accepted");
                    // Answered from what was committed: reading it back would cost a
                    // query and the decryption of the message for nothing new.
                    let referral = record.stored();
                    return Ok(Outcome {
                        bundle_id: envelope.bundle_id.clone(),
                        source_endpoint: envelope.source_endpoint.clone(),
                        referral,
                        decision: ReferralOutcome::Accepted,
                    });
                }
                Ok(Inserted::Duplicate) => return Err(duplicate()),
                Ok(Inserted::ReferenceTaken) => continue,
                Err(e) => return Err(Rejection::from(e)),
            }
        }
        tracing::error!("no free referral reference after 5 tries");
        Err(server_error())
    }

    /// A referral just written, as stored. Failing that, the caller answers from what
    /// it wrote: the change is committed, and the sender must hear that it was.
    async fn load(&self, id: &str) -> Option<ReferralRow> {
        match self.store.referral(id).await {
            Ok(Some(r)) => Some(r),
            Ok(None) => {
                tracing::error!(
                    referral_id = id,
                    "a referral just written is not there to read back; answering from what was written"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, referral_id = id, "a referral just written could not be read back; answering from what was written");
                None
            }
        }
    }

    /// Finds the referral an update names: the gateway's id in `ServiceRequest.id`, or
    /// one of the sender's identifiers, always within the sending practice.
    async fn find_for_update(
        &self,
        update: &UpdateRequest,
    ) -> Result<Option<ReferralRow>, Rejection> {
        let env = &update.envelope;
        if let Some(id) = env.service_request_id.as_deref()
            && uuid::Uuid::parse_str(id).is_ok()
            && let Some(row) = self.store.referral(id).await?
            && row.practice_ods == env.practice.as_str()
        {
            return Ok(Some(row));
        }
        for (system, value) in &env.sender_identifiers {
            if let Some(row) = self
                .store
                .referral_by_sender_identifier(env.practice.as_str(), system, value)
                .await?
            {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// The referral an update names, and the same patient.
    async fn target_of(&self, update: &UpdateRequest) -> Result<ReferralRow, Rejection> {
        let Some(referral) = self.find_for_update(update).await? else {
            return Err(Issue::new(
                RecCode::NotFound,
                IssueType::NotFound,
                "no referral from this practice matches the ServiceRequest's id or identifiers",
            )
            .at("ServiceRequest")
            .into());
        };
        // Once retention purged the referral's personal data there is no NHS number to
        // compare; the referral was still found within the sending practice.
        if let Some(n) = &update.nhs_number
            && referral.purged_at.is_none()
            && n.expose() != referral.nhs_number
        {
            return Err(Issue::business(
                IssueType::BusinessRule,
                "Patient.identifier",
                "the update's Patient is not the patient of the referral it names",
            )
            .into());
        }
        Ok(referral)
    }

    async fn update(
        &self,
        principal: &Principal,
        ids: &RequestIds,
        update: UpdateRequest,
        now: OffsetDateTime,
    ) -> Result<Outcome, Rejection> {
        let referral = self.target_of(&update).await?;
        let (new_status, action, decision) = match update.action {
            UpdateAction::Cancel => (
                ReferralStatus::Cancelled,
                "referral.cancel",
                ReferralOutcome::Cancelled,
            ),
            UpdateAction::WithdrawConsent => (
                ReferralStatus::ConsentWithdrawn,
                "referral.withdraw-consent",
                ReferralOutcome::Withdrawn,
            ),
        };
        let record = UpdateRecord {
            referral_id: referral.id.clone(),
            new_status,
            request_id: ids.request_id.to_string(),
            message_header_id: update.envelope.message_header_id.clone(),
            kind: update.action.name().to_owned(),
            now,
            audit: AuditContext {
                action,
                principal: Some(principal),
                ids: Some(ids),
            }
            .record(
                "accepted",
                200,
                Some(&referral.id),
                json!({
                    "new_status": new_status.as_str(),
                    "ignored_entries": update.envelope.ignored,
                }),
            ),
        };
        match self.store.apply_update(&record).await {
            Ok(Updated::Applied { stopped, notices }) => {
                tracing::info!(referral_id = %referral.id, action, stopped, notices, "referral updated");
                let referral = match self.load(&referral.id).await {
                    Some(row) => row,
                    None => ReferralRow {
                        status: new_status,
                        updated_at: now,
                        ..referral
                    },
                };
                Ok(Outcome {
                    bundle_id: update.envelope.bundle_id.clone(),
                    source_endpoint: update.envelope.source_endpoint.clone(),
                    referral,
                    decision,
                })
            }
            Ok(Updated::Duplicate) => Err(duplicate()),
            Ok(Updated::NotActive) => Err(not_active()),
            Err(e) => Err(Rejection::from(e)),
        }
    }
}

fn duplicate() -> Rejection {
    Issue::new(
        RecCode::Conflict,
        IssueType::Duplicate,
        "this X-Request-Id or MessageHeader.id (or the sender's ServiceRequest identifier) was already accepted; nothing was stored again",
    )
    .into()
}

fn not_active() -> Rejection {
    Issue::new(
        RecCode::Conflict,
        IssueType::Conflict,
        "the referral is already cancelled or its consent withdrawn",
    )
    .into()
}

fn route_issue(e: &RouteError) -> Issue {
    let at = match e {
        RouteError::NoProgramme(_) => "ServiceRequest.code",
        _ => "ServiceRequest.requester",
    };
    Issue::new(
        RecCode::UnprocessableEntity,
        IssueType::BusinessRule,
        e.to_string(),
    )
    .at(at)
}

/// What the accept record says: the route, the consent relied on, and the types and
/// counts of entries the gateway ignored (never their content).
fn accepted_detail(
    route: &RouteDecision,
    consent: &consent::ConsentRecord,
    ignored: &std::collections::BTreeMap<String, usize>,
) -> serde_json::Value {
    json!({
        "ignored_entries": ignored,
        "route": route,
        "consent": {
            "recipient": consent.recipient,
            "valid_from": consent.valid_from,
            "valid_until": consent.valid_until,
        },
    })
}

/// The NHS number of the message's Patient, when there is exactly one that passes the
/// check; read only to name the subject of a refusal.
fn subject_nhs_number(body: &[u8]) -> Option<crate::domain::NhsNumber> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut found = value
        .get("entry")?
        .as_array()?
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter(|r| r["resourceType"] == "Patient")
        .flat_map(|r| r["identifier"].as_array().into_iter().flatten())
        .filter(|i| i["system"] == crate::domain::NHS_NUMBER_SYSTEM)
        .filter_map(|i| crate::domain::NhsNumber::parse(i["value"].as_str()?).ok());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
