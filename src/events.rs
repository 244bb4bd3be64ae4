//! Status events: what providers tell the gateway happened to a referral (accepted,
//! engaged, job start, sustained work, closed), checked against the referral's
//! milestone state machine so the GP never sees an impossible history.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

pub use crate::domain::{EVENTS, Milestone};
use fhir_sdk::time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};

/// Why a provider declined a referral.
pub const DECLINE_REASONS: [&str; 5] = [
    "ineligible",
    "declined-by-person",
    "failed-contact",
    "out-of-area",
    "other",
];

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
    /// `occurred_at` was given as a date: the event happened some time that day (UTC),
    /// and is stored as its midnight.
    pub date_only: bool,
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
    let date_only = OffsetDateTime::parse(&body.occurred_at, &Rfc3339).is_err();
    let occurred_at = OffsetDateTime::parse(&body.occurred_at, &Rfc3339)
        .ok()
        .filter(|_| crate::fhir::offset_in_range(&body.occurred_at))
        .ok_or(())
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
    let mut detail = serde_json::Map::new();
    if event == Milestone::JobStart {
        match body.start_date.as_deref().map(|d| {
            Date::parse(
                d,
                fhir_sdk::time::macros::format_description!("[year]-[month]-[day]"),
            )
        }) {
            Some(Ok(d)) => {
                detail.insert("start_date".into(), serde_json::json!(d.to_string()));
            }
            _ => problems.push((
                Field::StartDate,
                "job-start needs start_date (YYYY-MM-DD)".into(),
            )),
        }
        match body.hours_per_week {
            Some(h) if h > 0.0 && h <= 168.0 => {
                detail.insert("hours_per_week".into(), serde_json::json!(h));
            }
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
            date_only,
            reason,
            detail: serde_json::Value::Object(detail),
        }),
        _ => Err(problems),
    }
}

/// Days of work a `sustained-13-weeks` event needs after the job start (13 weeks).
pub const SUSTAINED_13_WEEKS_DAYS: i64 = 91;
/// Days of work a `sustained-26-weeks` event needs after the job start (26 weeks).
pub const SUSTAINED_26_WEEKS_DAYS: i64 = 182;

/// What a referral's history says an event's date must follow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    /// When the referral was delivered to the provider reporting.
    pub delivered_at: Option<OffsetDateTime>,
    /// The latest milestone recorded, and when it happened.
    pub previous: Option<(Milestone, OffsetDateTime)>,
    /// When the job start happened, once one is recorded.
    pub job_start: Option<OffsetDateTime>,
}

/// Why `event` cannot have happened when it says, given the referral's `timeline`;
/// empty when its date makes sense. An event may not be dated before the referral
/// was delivered to the provider, nor before the previous milestone; sustained work
/// is counted in whole days (UTC) from the job start. A date-only `occurred_at` covers
/// its whole day, so an event that day is never "before" something later that day.
/// Date arithmetic is checked: a date the gateway cannot compare is a problem, not a
/// panic.
pub fn refuse_date(event: &StatusEvent, timeline: &Timeline) -> Vec<String> {
    let mut problems = Vec::new();
    let out_of_range = || "occurred_at is outside the dates the gateway can compare".to_owned();
    // The latest moment the event may have happened, exclusive for a whole day.
    let latest = if event.date_only {
        event
            .occurred_at
            .checked_add(fhir_sdk::time::Duration::days(1))
    } else {
        Some(event.occurred_at)
    };
    let before = |t: OffsetDateTime| match latest {
        Some(latest) if event.date_only => Some(latest <= t),
        Some(latest) => Some(latest < t),
        None => None,
    };
    if let Some(delivered) = timeline.delivered_at {
        match before(delivered) {
            Some(true) => problems.push(
                "occurred_at is before the referral was delivered to this provider".to_owned(),
            ),
            Some(false) => {}
            None => problems.push(out_of_range()),
        }
    }
    if let Some((previous, at)) = timeline.previous {
        match before(at) {
            Some(true) => problems.push(format!(
                "occurred_at is before the previous milestone ({}) happened",
                previous.as_str()
            )),
            Some(false) => {}
            None if problems.is_empty() => problems.push(out_of_range()),
            None => {}
        }
    }
    let needed = match event.event {
        Milestone::Sustained13Weeks => Some((SUSTAINED_13_WEEKS_DAYS, "13 weeks")),
        Milestone::Sustained26Weeks => Some((SUSTAINED_26_WEEKS_DAYS, "26 weeks")),
        _ => None,
    };
    if let (Some((days, weeks)), Some(job_start)) = (needed, timeline.job_start) {
        let day = |t: OffsetDateTime| t.to_offset(fhir_sdk::time::UtcOffset::UTC).date();
        match day(job_start).checked_add(fhir_sdk::time::Duration::days(days)) {
            Some(earliest) if day(event.occurred_at) < earliest => problems.push(format!(
                "{} must be at least {weeks} ({days} days) after the job-start event's date",
                event.event.as_str()
            )),
            Some(_) => {}
            None => problems.push(out_of_range()),
        }
    }
    problems
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
    fn dates_follow_the_delivery_the_last_milestone_and_the_job_start() {
        use fhir_sdk::time::{Duration, macros::datetime};
        let at = |event: Milestone, occurred_at: OffsetDateTime, date_only: bool| StatusEvent {
            event,
            occurred_at,
            date_only,
            reason: Option::None,
            detail: serde_json::json!({}),
        };
        let delivered = datetime!(2026-01-05 15:00 UTC);
        let timeline = Timeline {
            delivered_at: Some(delivered),
            previous: Option::None,
            job_start: Option::None,
        };
        assert_eq!(
            refuse_date(
                &at(Accepted, delivered - Duration::seconds(1), false),
                &timeline
            )
            .len(),
            1
        );
        assert!(refuse_date(&at(Accepted, delivered, false), &timeline).is_empty());
        // A date covers its day: the day of delivery is not before it.
        let that_day = datetime!(2026-01-05 0:00 UTC);
        assert!(refuse_date(&at(Accepted, that_day, true), &timeline).is_empty());
        assert!(!refuse_date(&at(Accepted, that_day, false), &timeline).is_empty());
        let after_accepted = Timeline {
            previous: Some((Accepted, datetime!(2026-01-06 12:00 UTC))),
            ..timeline
        };
        let why = refuse_date(
            &at(Contacted, datetime!(2026-01-06 11:00 UTC), false),
            &after_accepted,
        );
        assert!(why[0].contains("previous milestone (accepted)"), "{why:?}");

        let job = datetime!(2026-02-02 17:30 UTC);
        let working = Timeline {
            previous: Some((JobStart, job)),
            job_start: Some(job),
            ..timeline
        };
        let sustained = |event, days: i64| {
            refuse_date(
                &at(
                    event,
                    datetime!(2026-02-02 9:00 UTC) + Duration::days(days),
                    false,
                ),
                &working,
            )
        };
        assert_eq!(sustained(Sustained13Weeks, 84).len(), 1, "12 weeks");
        assert_eq!(sustained(Sustained13Weeks, 90).len(), 1, "a day short");
        assert!(
            sustained(Sustained13Weeks, 91).is_empty(),
            "13 weeks, by the day"
        );
        assert_eq!(sustained(Sustained26Weeks, 175).len(), 1, "25 weeks");
        assert!(sustained(Sustained26Weeks, 182).is_empty(), "26 weeks");

        // Dates at the edge of what the gateway can represent: refused, no panic.
        let last_day = Date::MAX.midnight().assume_utc();
        assert!(!refuse_date(&at(Accepted, last_day, true), &timeline).is_empty());
        let late_job = Timeline {
            job_start: Some(last_day),
            ..Timeline::default()
        };
        assert!(!refuse_date(&at(Sustained13Weeks, last_day, false), &late_job).is_empty());
        let first_day = Date::MIN.midnight().assume_utc();
        assert!(!refuse_date(&at(Accepted, first_day, true), &timeline).is_empty());
    }
}
