//! Status events: what providers tell the gateway happened to a referral (accepted,
//! engaged, job start, sustained work, closed), checked against the referral's
//! milestone state machine so the GP never sees an impossible history.

use fhir_sdk::time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};
use std::str::FromStr;

/// The referral's latest milestone. `None`: delivered, nothing reported yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    None,
    Accepted,
    Declined,
    Contacted,
    Engaged,
    ActionPlanAgreed,
    JobStart,
    Sustained13Weeks,
    Sustained26Weeks,
    Closed,
}

/// Every event a provider may send, in lifecycle order.
pub const EVENTS: [Milestone; 9] = [
    Milestone::Accepted,
    Milestone::Declined,
    Milestone::Contacted,
    Milestone::Engaged,
    Milestone::ActionPlanAgreed,
    Milestone::JobStart,
    Milestone::Sustained13Weeks,
    Milestone::Sustained26Weeks,
    Milestone::Closed,
];

impl Milestone {
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::None => "none",
            Milestone::Accepted => "accepted",
            Milestone::Declined => "declined",
            Milestone::Contacted => "contacted",
            Milestone::Engaged => "engaged",
            Milestone::ActionPlanAgreed => "action-plan-agreed",
            Milestone::JobStart => "job-start",
            Milestone::Sustained13Weeks => "sustained-13-weeks",
            Milestone::Sustained26Weeks => "sustained-26-weeks",
            Milestone::Closed => "closed",
        }
    }

    /// The events that may follow this milestone. Declined and closed are final; a
    /// job start needs engagement first; sustained work needs a job start.
    pub fn next(self) -> &'static [Milestone] {
        use Milestone::*;
        match self {
            None => &[Accepted, Declined],
            Accepted => &[Contacted, Engaged, Closed],
            Contacted => &[Engaged, Closed],
            Engaged => &[ActionPlanAgreed, JobStart, Closed],
            ActionPlanAgreed => &[JobStart, Closed],
            JobStart => &[Sustained13Weeks, Closed],
            Sustained13Weeks => &[Sustained26Weeks, Closed],
            Sustained26Weeks => &[Closed],
            Declined | Closed => &[],
        }
    }

    /// Why `event` cannot follow `self`, in words a provider's developer can act on.
    pub fn refuse(self, event: Milestone) -> Option<String> {
        if self.next().contains(&event) {
            return Option::None;
        }
        let why = match (self, event) {
            (Milestone::Declined | Milestone::Closed, _) => {
                format!(
                    "the referral is already {}: nothing may follow",
                    self.as_str()
                )
            }
            (_, Milestone::Sustained13Weeks | Milestone::Sustained26Weeks) => format!(
                "{} cannot follow {}: sustained work is counted from a job start (and 26 weeks after 13)",
                event.as_str(),
                self.as_str()
            ),
            (_, Milestone::JobStart) => format!(
                "job-start cannot follow {}: the person must be engaged first",
                self.as_str()
            ),
            _ => format!(
                "{} cannot follow {}; allowed next: {}",
                event.as_str(),
                self.as_str(),
                self.next()
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some(why)
    }
}

impl FromStr for Milestone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        std::iter::once(Milestone::None)
            .chain(EVENTS)
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown event; one of: {}",
                    EVENTS.map(|m| m.as_str()).join(", ")
                )
            })
    }
}

/// Why a provider declined a referral.
pub const DECLINE_REASONS: [&str; 5] = [
    "ineligible",
    "declined-by-person",
    "failed-contact",
    "out-of-area",
    "other",
];

/// The BaRS rejection reason (`https://fhir.nhs.uk/CodeSystem/rejected-reasons-bars`)
/// closest to a decline reason.
pub fn bars_rejection(reason: &str) -> &'static str {
    match reason {
        "failed-contact" => "FC",
        "ineligible" | "out-of-area" => "RRNA",
        _ => "OTH",
    }
}

/// A status event as a provider sends it (read from the JSON body or a Task by the
/// provider interface, which names each field at fault).
#[derive(Debug)]
pub struct EventBody {
    pub event: String,
    pub occurred_at: String,
    pub reason: Option<String>,
    /// `job-start`: first day of work.
    pub start_date: Option<String>,
    /// `job-start`: contracted hours a week.
    pub hours_per_week: Option<f64>,
}

/// A part of a status event, named when it is at fault. Each form of event (the JSON
/// body, a FHIR Task) says where it took each part from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Event,
    OccurredAt,
    Reason,
    StartDate,
    HoursPerWeek,
}

impl Field {
    /// The field's name in the JSON event body.
    pub fn json_name(self) -> &'static str {
        match self {
            Field::Event => "event",
            Field::OccurredAt => "occurred_at",
            Field::Reason => "reason",
            Field::StartDate => "start_date",
            Field::HoursPerWeek => "hours_per_week",
        }
    }
}

/// What is wrong with one part of an event, in the gateway's own words.
pub type Problem = (Field, String);

/// A checked event, ready to record.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    pub event: Milestone,
    pub occurred_at: OffsetDateTime,
    pub reason: Option<String>,
    /// Event details kept with it (job start date and hours).
    pub detail: serde_json::Value,
}

/// Reads and checks an event body; every problem is listed with the part at fault.
pub fn parse(body: EventBody, now: OffsetDateTime) -> Result<StatusEvent, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let event = match body.event.parse::<Milestone>() {
        Ok(Milestone::None) | Err(_) => {
            problems.push((
                Field::Event,
                format!(
                    "event must be one of: {}",
                    EVENTS.map(|m| m.as_str()).join(", ")
                ),
            ));
            Milestone::None
        }
        Ok(m) => m,
    };
    let occurred_at = OffsetDateTime::parse(&body.occurred_at, &Rfc3339)
        .or_else(|_| {
            Date::parse(
                &body.occurred_at,
                fhir_sdk::time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| {
            problems.push((
                Field::OccurredAt,
                "occurred_at must be an RFC 3339 date-time or a YYYY-MM-DD date".into(),
            ))
        })
        .ok();
    let latest = now.checked_add(fhir_sdk::time::Duration::minutes(5));
    if occurred_at.is_some_and(|t| latest.is_none_or(|latest| t > latest)) {
        problems.push((Field::OccurredAt, "occurred_at is in the future".into()));
    }
    match event {
        Milestone::Declined => match body.reason.as_deref() {
            Some(r) if DECLINE_REASONS.contains(&r) => {}
            _ => problems.push((
                Field::Reason,
                format!(
                    "declined needs a reason: one of {}",
                    DECLINE_REASONS.join(", ")
                ),
            )),
        },
        Milestone::Closed if body.reason.as_deref().is_none_or(|r| r.trim().is_empty()) => {
            problems.push((Field::Reason, "closed needs a reason".into()))
        }
        _ => {}
    }
    let mut detail = serde_json::json!({});
    if event == Milestone::JobStart {
        match body.start_date.as_deref().map(|d| {
            Date::parse(
                d,
                fhir_sdk::time::macros::format_description!("[year]-[month]-[day]"),
            )
        }) {
            Some(Ok(d)) => detail["start_date"] = serde_json::json!(d.to_string()),
            _ => problems.push((
                Field::StartDate,
                "job-start needs start_date (YYYY-MM-DD)".into(),
            )),
        }
        match body.hours_per_week {
            Some(h) if h > 0.0 && h <= 168.0 => detail["hours_per_week"] = serde_json::json!(h),
            _ => problems.push((
                Field::HoursPerWeek,
                "job-start needs hours_per_week (above 0, at most 168)".into(),
            )),
        }
    }
    // A decline or closure reason is a code or a short phrase, never notes about the person.
    let reason = body.reason.map(|r| r.chars().take(80).collect::<String>());
    match (problems.is_empty(), occurred_at) {
        (true, Some(occurred_at)) => Ok(StatusEvent {
            event,
            occurred_at,
            reason,
            detail,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Milestone::*;

    /// The whole table: for every state and every event, allowed or refused.
    #[test]
    fn every_pair_of_state_and_event_is_decided_as_the_lifecycle_says() {
        let allowed: &[(Milestone, &[Milestone])] = &[
            (None, &[Accepted, Declined]),
            (Accepted, &[Contacted, Engaged, Closed]),
            (Declined, &[]),
            (Contacted, &[Engaged, Closed]),
            (Engaged, &[ActionPlanAgreed, JobStart, Closed]),
            (ActionPlanAgreed, &[JobStart, Closed]),
            (JobStart, &[Sustained13Weeks, Closed]),
            (Sustained13Weeks, &[Sustained26Weeks, Closed]),
            (Sustained26Weeks, &[Closed]),
            (Closed, &[]),
        ];
        for (state, next) in allowed {
            for event in EVENTS {
                let refused = state.refuse(event);
                assert_eq!(
                    refused.is_none(),
                    next.contains(&event),
                    "{} -> {}: {refused:?}",
                    state.as_str(),
                    event.as_str()
                );
            }
        }
        assert!(
            Accepted
                .refuse(Sustained13Weeks)
                .unwrap()
                .contains("job start")
        );
        assert!(
            Closed
                .refuse(Accepted)
                .unwrap()
                .contains("nothing may follow")
        );
    }

    #[test]
    fn events_need_their_details() {
        let now = OffsetDateTime::now_utc();
        let body = |event: &str, reason: Option<&str>| EventBody {
            event: event.into(),
            occurred_at: "2026-11-20".into(),
            reason: reason.map(str::to_owned),
            start_date: Option::None,
            hours_per_week: Option::None,
        };
        assert!(parse(body("declined", Option::None), now).is_err());
        assert!(parse(body("declined", Some("because")), now).is_err());
        assert!(parse(body("declined", Some("failed-contact")), now).is_ok());
        assert!(parse(body("closed", Option::None), now).is_err());
        let fields: Vec<Field> = parse(body("job-start", Option::None), now)
            .unwrap_err()
            .into_iter()
            .map(|(field, _)| field)
            .collect();
        assert_eq!(fields, [Field::StartDate, Field::HoursPerWeek]);
        assert!(parse(body("teleported", Option::None), now).is_err());
        let mut future = body("accepted", Option::None);
        future.occurred_at = "2999-01-01T00:00:00Z".into();
        assert!(parse(future, now).is_err());
        let job = EventBody {
            start_date: Some("2026-11-30".into()),
            hours_per_week: Some(16.0),
            ..body("job-start", Option::None)
        };
        assert_eq!(parse(job, now).unwrap().detail["hours_per_week"], 16.0);
    }

    #[test]
    fn declines_map_to_bars_rejection_reasons() {
        assert_eq!(bars_rejection("failed-contact"), "FC");
        assert_eq!(bars_rejection("ineligible"), "RRNA");
        assert_eq!(bars_rejection("declined-by-person"), "OTH");
    }
}
