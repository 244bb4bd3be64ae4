//! Recording providers' status events, whichever way they arrive (the provider
//! interface over HTTPS, or a message in the gateway's MESH inbox): the event is read
//! (a JSON event or a FHIR Task), checked against the referral and its milestones, and
//! recorded with its audit record, once per request id.

use crate::app::{AppState, AuditContext, RequestIds};
use crate::events::{self, EventBody, Field, Milestone};
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::store::{
    DeliveryKind, DeliveryState, EventRecord, EventRecorded, EventRow, MilestoneDelivery,
    ReferralRow,
};
use fhir_sdk::time::OffsetDateTime;
use serde_json::Value;

/// Where each part of a status event was read from, so that a refusal names it: the
/// JSON event's own fields, or the Task elements (FHIRPath) they were taken from.
#[derive(Debug, Clone)]
pub struct Paths {
    referral: String,
    event: String,
    occurred_at: String,
    reason: String,
    start_date: String,
    hours_per_week: String,
}

impl Paths {
    /// The JSON event: the path's `referral_id` and the body's field names.
    pub fn json() -> Self {
        Self {
            referral: "referral_id".into(),
            event: Field::Event.json_name().into(),
            occurred_at: Field::OccurredAt.json_name().into(),
            reason: Field::Reason.json_name().into(),
            start_date: Field::StartDate.json_name().into(),
            hours_per_week: Field::HoursPerWeek.json_name().into(),
        }
    }

    fn of(&self, field: Field) -> &str {
        match field {
            Field::Event => &self.event,
            Field::OccurredAt => &self.occurred_at,
            Field::Reason => &self.reason,
            Field::StartDate => &self.start_date,
            Field::HoursPerWeek => &self.hours_per_week,
        }
    }
}

/// An event's body: the JSON event, read once the referral is known to be the
/// provider's (and the request is not a repeat), or the event a Task was read into.
pub enum Body {
    Json(Vec<u8>),
    Read(EventBody),
}

/// A status event recorded, now or by an earlier request with the same id.
pub struct Recorded {
    pub row: EventRow,
    pub referral: ReferralRow,
    /// Recorded by this request (201), rather than found from an earlier one (200).
    pub created: bool,
}

/// Reads the JSON event field by field: a body that is not a JSON object, a field it
/// does not take, a missing `event` or `occurred_at`, or a field of the wrong type is
/// 400, every problem named by its field and none quoting a value.
pub fn read_json_event(bytes: &[u8]) -> Result<EventBody, Rejection> {
    let known = [
        Field::Event,
        Field::OccurredAt,
        Field::Reason,
        Field::StartDate,
        Field::HoursPerWeek,
    ]
    .map(Field::json_name);
    let mut body = crate::params::JsonFields::parse(
        bytes,
        &known,
        "{\"event\", \"occurred_at\", and \"reason\", \"start_date\", \"hours_per_week\" where the event needs them}",
    )?;
    let event = body.string("event", true, "a string: the event's name");
    let occurred_at = body.string(
        "occurred_at",
        true,
        "a string: an RFC 3339 date-time or a YYYY-MM-DD date",
    );
    let reason = body.string("reason", false, "a string");
    let start_date = body.string("start_date", false, "a string: a YYYY-MM-DD date");
    let hours_per_week = body.number("hours_per_week", "a number");
    body.finish()?;
    Ok(EventBody {
        event: event.unwrap_or_default(),
        occurred_at: occurred_at.unwrap_or_default(),
        reason,
        start_date,
        hours_per_week,
    })
}

/// Reads a Task into the referral it is about, the event it stands for, and where in
/// the Task each part was found. Every problem is reported, each at its element;
/// none quotes the Task.
pub fn read_task(body: &[u8]) -> Result<(String, EventBody, Paths), Rejection> {
    let bad = |code: IssueType, at: String, what: &str| -> Issue {
        Issue::structure(code, at, what.to_owned())
    };
    let task: Value = serde_json::from_slice(body).map_err(|_| {
        Rejection::one(bad(
            IssueType::Structure,
            "Task".into(),
            "the body must be a FHIR Task (JSON)",
        ))
    })?;
    if task["resourceType"] != "Task" {
        return Err(bad(
            IssueType::Structure,
            "Task.resourceType".into(),
            "the body must be a FHIR Task (resourceType Task)",
        )
        .into());
    }
    if let Err(e) =
        serde_path_to_error::deserialize::<_, fhir_sdk::r4b::resources::Task>(task.clone())
    {
        // The path comes from the Task's shape; the error's own text may quote the
        // value, so only the name of a missing element (from the schema) is kept.
        let path = e.path().to_string();
        let missing = e
            .inner()
            .to_string()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next().map(str::to_owned));
        let at = match (path.as_str(), missing) {
            (".", Some(field)) => format!("Task.{field}"),
            (".", None) => "Task".to_owned(),
            (path, Some(field)) => format!("Task.{path}.{field}"),
            (path, None) => format!("Task.{path}"),
        };
        return Err(bad(
            IssueType::Structure,
            at,
            "this element is missing or is not valid FHIR R4 (type, code or format)",
        )
        .into());
    }
    let mut issues = Vec::new();
    let referral = task_referral(&task).unwrap_or_else(|issue| {
        issues.push(issue);
        ("Task.basedOn".into(), String::new())
    });
    let (event_at, event) = match task["businessStatus"]["coding"][0]["code"].as_str() {
        Some(code) => ("Task.businessStatus.coding[0].code", code),
        None => {
            let at = if task["businessStatus"].is_null() {
                "Task.businessStatus"
            } else {
                "Task.businessStatus.coding[0].code"
            };
            issues.push(bad(
                IssueType::Required,
                at.into(),
                "Task.businessStatus.coding[0].code must be the event (referral-milestone code)",
            ));
            (at, "")
        }
    };
    let (occurred_at_path, occurred_at) = match (
        task["executionPeriod"]["start"].as_str(),
        task["lastModified"].as_str(),
    ) {
        (Some(start), _) => ("Task.executionPeriod.start", start),
        (None, Some(modified)) => ("Task.lastModified", modified),
        (None, None) => {
            issues.push(bad(
                IssueType::Required,
                "Task.executionPeriod.start".into(),
                "Task.executionPeriod.start (when it happened) is required",
            ));
            ("Task.executionPeriod.start", "")
        }
    };
    let (reason_path, reason) = match (
        task["statusReason"]["coding"][0]["code"].as_str(),
        task["statusReason"]["text"].as_str(),
    ) {
        (Some(code), _) => ("Task.statusReason.coding[0].code", Some(code)),
        (None, Some(text)) => ("Task.statusReason.text", Some(text)),
        (None, None) => ("Task.statusReason", None),
    };
    let mut start_date = (String::from("Task.input"), None);
    let mut hours = (String::from("Task.input"), None);
    for (i, input) in task["input"].as_array().into_iter().flatten().enumerate() {
        match input["type"]["text"].as_str() {
            Some("start_date") => {
                start_date = (
                    format!("Task.input[{i}].valueDate"),
                    input["valueDate"].as_str().map(str::to_owned),
                );
            }
            Some("hours_per_week") => {
                hours = match (
                    input["valueDecimal"].as_f64(),
                    input["valueInteger"].as_f64(),
                ) {
                    (None, Some(h)) => (format!("Task.input[{i}].valueInteger"), Some(h)),
                    (h, _) => (format!("Task.input[{i}].valueDecimal"), h),
                };
            }
            _ => {}
        }
    }
    if let Some(rejection) = Rejection::from_issues(issues) {
        return Err(rejection);
    }
    let paths = Paths {
        referral: referral.0,
        event: event_at.into(),
        occurred_at: occurred_at_path.into(),
        reason: reason_path.into(),
        start_date: start_date.0,
        hours_per_week: hours.0,
    };
    let event = EventBody {
        event: event.to_owned(),
        occurred_at: occurred_at.to_owned(),
        reason: reason.map(str::to_owned),
        start_date: start_date.1,
        hours_per_week: hours.1,
    };
    Ok((referral.1, event, paths))
}

/// The referral a Task is about: the `ServiceRequest/<id>` it is `basedOn` or (as the
/// FHIR workflow pattern puts the request a Task fulfils) its `focus`, with the element
/// it was found at. Both may be given, naming the same referral.
fn task_referral(task: &Value) -> Result<(String, String), Issue> {
    let service_request = |r: &Value| {
        r["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ServiceRequest/"))
            .map(str::to_owned)
    };
    let based_on = task["basedOn"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .find_map(|(i, r)| {
            service_request(r).map(|id| (format!("Task.basedOn[{i}].reference"), id))
        });
    let focus = service_request(&task["focus"]).map(|id| ("Task.focus.reference".to_owned(), id));
    match (based_on, focus) {
        (Some(_), Some(focus)) if task_refs_differ(task, &focus.1) => Err(Issue::structure(
            IssueType::Invariant,
            focus.0,
            "Task.focus and Task.basedOn name different referrals",
        )),
        (Some(found), _) | (None, Some(found)) => Ok(found),
        (None, None) => {
            let at = if task["focus"].is_null() {
                "Task.basedOn"
            } else {
                "Task.focus.reference"
            };
            Err(Issue::structure(
                IssueType::Required,
                at,
                "Task.basedOn (or Task.focus) must reference ServiceRequest/<referral id>",
            ))
        }
    }
}

/// Whether the referral `focus` names is not one the Task is `basedOn`.
fn task_refs_differ(task: &Value, focus: &str) -> bool {
    !task["basedOn"].as_array().into_iter().flatten().any(|r| {
        r["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ServiceRequest/"))
            == Some(focus)
    })
}

pub async fn record(
    gw: &AppState,
    provider: &str,
    referral_id: &str,
    ids: Result<RequestIds, Rejection>,
    body: Body,
    paths: &Paths,
    ctx: &AuditContext<'_>,
) -> Result<Recorded, Rejection> {
    let ids = ids?;
    let not_found = || -> Rejection {
        Issue::new(
            RecCode::NotFound,
            IssueType::NotFound,
            "no referral has this id",
        )
        .at(paths.referral.clone())
        .into()
    };
    if uuid::Uuid::parse_str(referral_id).is_err() {
        return Err(not_found());
    }
    let referral = gw
        .store
        .referral(referral_id)
        .await?
        .ok_or_else(not_found)?;
    let delivered = gw
        .store
        .deliveries_for(referral_id)
        .await?
        .into_iter()
        .find(|d| {
            d.kind == DeliveryKind::Referral
                && d.state == DeliveryState::Delivered
                && d.provider == provider
        });
    if referral.provider != provider || delivered.is_none() {
        return Err(Issue::new(
            RecCode::Forbidden,
            IssueType::Forbidden,
            "this referral has not been delivered to this provider",
        )
        .at(paths.referral.clone())
        .into());
    }
    // The same request again: the same answer, nothing recorded twice.
    let request_id = ids.request_id.to_string();
    let existing = gw.store.events_for(referral_id).await?;
    if let Some(row) = existing.iter().find(|e| e.request_id == request_id) {
        return Ok(Recorded {
            row: row.clone(),
            referral,
            created: false,
        });
    }
    let body: EventBody = match body {
        Body::Read(body) => body,
        Body::Json(bytes) => read_json_event(&bytes)?,
    };
    let now = OffsetDateTime::now_utc();
    let event = events::parse(body, now).map_err(|problems| Rejection {
        issues: problems
            .into_iter()
            .map(|(field, p)| Issue::business(IssueType::Value, paths.of(field), p))
            .collect(),
    })?;
    let from = referral.milestone;
    if let Some(why) = from.refuse(event.event) {
        return Err(Issue::new(RecCode::Conflict, IssueType::Conflict, why)
            .at(paths.event.clone())
            .into());
    }
    // The dates must make sense against what is recorded: 422, like any other value
    // the provider can correct and send again (409 is kept for the lifecycle).
    let timeline = events::Timeline {
        delivered_at: delivered.and_then(|d| d.delivered_at),
        previous: existing.last().map(|e| (e.event, e.occurred_at)),
        job_start: existing
            .iter()
            .rfind(|e| e.event == Milestone::JobStart)
            .map(|e| e.occurred_at),
    };
    let problems = events::refuse_date(&event, &timeline);
    if !problems.is_empty() {
        return Err(Rejection {
            issues: problems
                .into_iter()
                .map(|p| Issue::business(IssueType::BusinessRule, paths.occurred_at.clone(), p))
                .collect(),
        });
    }
    let record = EventRecord {
        id: uuid::Uuid::new_v4().to_string(),
        referral_id: referral.id.clone(),
        provider: provider.to_owned(),
        from,
        event: event.event,
        occurred_at: event.occurred_at,
        reason: event.reason.clone(),
        detail: event.detail.clone(),
        request_id: request_id.clone(),
        now,
        gp_push: gw
            .gp_callbacks
            .recipient(&referral.source_endpoint)
            .map(|recipient| MilestoneDelivery {
                id: uuid::Uuid::new_v4().to_string(),
                recipient: recipient.to_owned(),
                request_id: uuid::Uuid::new_v4().to_string(),
            }),
        audit: ctx.record(
            "accepted",
            201,
            Some(referral_id),
            serde_json::json!({"event": event.event.as_str(), "from": from.as_str(), "recipient": provider}),
        ),
    };
    match gw.store.record_event(&record).await? {
        EventRecorded::Recorded => {
            tracing::info!(referral_id, event = event.event.as_str(), "status event recorded");
            // Read back, so the answer is the event as stored (times at the
            // database's precision), the same as every later read of it.
            let row = gw
                .store
                .event(&record.id)
                .await
                ?
                .ok_or_else(server_error)?;
            Ok(Recorded {
                row,
                referral,
                created: true,
            })
        }
        EventRecorded::Duplicate => {
            let rows = gw.store.events_for(referral_id).await?;
            let row = rows
                .into_iter()
                .find(|e| e.request_id == request_id)
                .ok_or_else(server_error)?;
            Ok(Recorded {
                row,
                referral,
                created: false,
            })
        }
        EventRecorded::Moved => Err(Issue::new(
            RecCode::Conflict,
            IssueType::Conflict,
            "another status event for this referral was recorded at the same moment; read the referral and send again",
        )
        .into()),
    }
}
