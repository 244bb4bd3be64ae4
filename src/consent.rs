//! The consent gate (contract section 5): a referral goes nowhere without an explicit,
//! active Consent to share with the routed provider.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::outcome::{Issue, IssueType};
use crate::routing::Provider;
use fhir_sdk::r4b::codes::ConsentState;
use fhir_sdk::time::OffsetDateTime;
use serde::{Deserialize, Serialize};

/// What validation read from one Consent in the bundle: enough to decide, nothing more.
#[derive(Debug, Clone)]
pub struct ConsentFacts {
    /// FHIRPath of the Consent, for issues.
    pub expression: String,
    pub status: ConsentState,
    /// `Consent.patient` resolves to the referral's Patient.
    pub about_patient: bool,
    /// Earliest instant `Consent.dateTime` can mean.
    pub date_time: Option<OffsetDateTime>,
    /// `provision.type` is `permit`.
    pub permit: bool,
    /// `provision.period` as (start, end-exclusive), when given.
    pub period: Option<(Option<OffsetDateTime>, Option<OffsetDateTime>)>,
    /// `provision.actor` names recipients at all.
    pub names_actors: bool,
    /// Identifiers of the named recipients, `(system, value)`.
    pub actors: Vec<(String, String)>,
    /// `policyRule` OPTIN or a policy URI/authority: explicit consent.
    pub explicit: bool,
}

/// The consent the gateway accepted, kept with the referral and checked again before
/// every delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// RFC 3339 instants; `None` where the Consent gave no bound.
    pub given_at: Option<String>,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    /// The provider the consent was checked against.
    pub recipient: String,
}

impl ConsentRecord {
    /// True while the consent still covers `now` (delivery re-checks this).
    pub fn covers(&self, now: OffsetDateTime) -> bool {
        let parse = |s: &Option<String>| {
            s.as_deref().and_then(|s| {
                OffsetDateTime::parse(s, &fhir_sdk::time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        parse(&self.valid_from).is_none_or(|f| f <= now)
            && parse(&self.valid_until).is_none_or(|u| now < u)
    }
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .ok()
}

/// Checks every Consent about the patient against the routed provider; the first one
/// that passes every rule is the authorising consent. Otherwise the reasons the
/// closest candidate failed are returned (422).
pub fn check(
    consents: &[ConsentFacts],
    provider: &Provider,
    now: OffsetDateTime,
) -> Result<ConsentRecord, Vec<Issue>> {
    let mut best: Option<Vec<Issue>> = None;
    for c in consents.iter().filter(|c| c.about_patient) {
        let problems = problems(c, provider, now);
        if problems.is_empty() {
            let (from, until) = c.period.unwrap_or((None, None));
            return Ok(ConsentRecord {
                given_at: c.date_time.and_then(rfc3339),
                valid_from: from.and_then(rfc3339),
                valid_until: until.and_then(rfc3339),
                recipient: provider.id.to_string(),
            });
        }
        if best.as_ref().is_none_or(|b| problems.len() < b.len()) {
            best = Some(problems);
        }
    }
    Err(best.unwrap_or_else(|| {
        vec![Issue::business(
            IssueType::BusinessRule,
            "Bundle.entry",
            "no Consent for the referral's Patient: explicit consent to share with employment support is required",
        )]
    }))
}

fn problems(c: &ConsentFacts, provider: &Provider, now: OffsetDateTime) -> Vec<Issue> {
    let at = |rest: &str| format!("{}.{rest}", c.expression);
    let mut out = Vec::new();
    let mut fail = |expression: String, d: &str| {
        out.push(Issue::business(IssueType::BusinessRule, expression, d))
    };
    if c.status != ConsentState::Active {
        fail(at("status"), "the Consent is not `active`");
    }
    if !c.permit {
        fail(
            at("provision.type"),
            "Consent.provision.type must be `permit`",
        );
    }
    if !c.explicit {
        fail(
            at("policyRule"),
            "explicit consent is required: policyRule OPTIN or a policy URI",
        );
    }
    match c.date_time {
        None => fail(
            at("dateTime"),
            "Consent.dateTime (when consent was given) is required",
        ),
        Some(t) if t > now => fail(at("dateTime"), "Consent.dateTime is in the future"),
        Some(_) => {}
    }
    if let Some((start, end)) = c.period {
        if start.is_some_and(|s| s > now) {
            fail(
                at("provision.period.start"),
                "the consent period has not started",
            );
        }
        if end.is_some_and(|e| e <= now) {
            fail(at("provision.period.end"), "the consent period has ended");
        }
    }
    if c.names_actors {
        let named = provider
            .identifiers
            .iter()
            .any(|(s, v)| c.actors.iter().any(|(cs, cv)| cs == s && cv == v));
        if !named {
            fail(
                at("provision.actor"),
                "the Consent names recipients, and the provider this referral is routed to is not among them",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProviderId;
    use fhir_sdk::time::{Duration, macros::datetime};

    fn provider() -> Provider {
        Provider {
            id: ProviderId::parse("bchft").unwrap(),
            name: "B".into(),
            identifiers: vec![(
                "https://fhir.nhs.uk/Id/ods-organization-code".into(),
                "TAJ".into(),
            )],
        }
    }

    fn good(now: OffsetDateTime) -> ConsentFacts {
        ConsentFacts {
            expression: "Bundle.entry[5].resource".into(),
            status: ConsentState::Active,
            about_patient: true,
            date_time: Some(now - Duration::days(1)),
            permit: true,
            period: Some((
                Some(now - Duration::days(1)),
                Some(now + Duration::days(365)),
            )),
            names_actors: false,
            actors: vec![],
            explicit: true,
        }
    }

    #[test]
    fn each_rule_fails_on_its_own() {
        let now = datetime!(2026-11-23 12:00 UTC);
        assert!(check(&[good(now)], &provider(), now).is_ok());
        type Breaker = fn(&mut ConsentFacts);
        let cases: Vec<(Breaker, &str)> = vec![
            (|c| c.status = ConsentState::Inactive, "status"),
            (|c| c.permit = false, "provision.type"),
            (|c| c.explicit = false, "policyRule"),
            (
                |c| c.date_time = c.date_time.map(|t| t + Duration::days(3)),
                "dateTime",
            ),
            (|c| c.date_time = None, "dateTime"),
            (
                |c| c.period = Some((c.period.unwrap().0.map(|t| t + Duration::days(5)), None)),
                "provision.period.start",
            ),
            (
                |c| c.period = Some((None, c.period.unwrap().0)),
                "provision.period.end",
            ),
            (
                |c| {
                    c.names_actors = true;
                    c.actors = vec![("x".into(), "y".into())]
                },
                "provision.actor",
            ),
        ];
        for (break_it, field) in cases {
            let mut c = good(now);
            break_it(&mut c);
            let issues = check(&[c], &provider(), now).unwrap_err();
            assert_eq!(issues.len(), 1, "{field}: {issues:?}");
            assert_eq!(
                issues[0].expression.as_deref(),
                Some(format!("Bundle.entry[5].resource.{field}").as_str())
            );
        }
    }

    #[test]
    fn a_consent_naming_the_provider_passes_and_one_about_someone_else_does_not_count() {
        let now = datetime!(2026-11-23 12:00 UTC);
        let mut c = good(now);
        c.names_actors = true;
        c.actors = vec![(
            "https://fhir.nhs.uk/Id/ods-organization-code".into(),
            "TAJ".into(),
        )];
        assert!(check(&[c.clone()], &provider(), now).is_ok());
        c.about_patient = false;
        let issues = check(&[c], &provider(), now).unwrap_err();
        assert_eq!(issues[0].expression.as_deref(), Some("Bundle.entry"));
    }

    #[test]
    fn the_record_stops_covering_after_its_end() {
        let now = datetime!(2026-11-23 12:00 UTC);
        let record = check(&[good(now)], &provider(), now).unwrap();
        assert!(record.covers(now));
        assert!(!record.covers(now + Duration::days(400)));
    }
}
