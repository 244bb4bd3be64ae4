//! Programme statistics for commissioners: how many people were referred, accepted,
//! engaged, started work and stayed in work, by provider, locality, programme or month.
//!
//! Counts follow NHS statistical disclosure practice: a count from 1 to 4 is shown as
//! `<5`, and every other count (totals included) is rounded to the nearest 5, so a
//! suppressed cell cannot be worked out from the others. No row identifies a person.

use crate::domain::Milestone;
use crate::store::ReportRow;
use fhir_sdk::time::OffsetDateTime;
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;

/// What a report row is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Provider,
    Locality,
    Programme,
    Month,
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "provider" => Ok(Self::Provider),
            "locality" => Ok(Self::Locality),
            "programme" => Ok(Self::Programme),
            "month" => Ok(Self::Month),
            _ => Err("group_by must be provider, locality, programme or month".into()),
        }
    }
}

/// The measures, in the order reports show them.
pub const MEASURES: [&str; 9] = [
    "received",
    "accepted",
    "declined",
    "engaged",
    "job_starts",
    "sustained_13_weeks",
    "sustained_26_weeks",
    "closed",
    "action_plans",
];

/// A count as published: exact counts never leave this module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Published {
    Rounded(u64),
    Suppressed(&'static str),
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Published::Rounded(n) => write!(f, "{n}"),
            Published::Suppressed(s) => f.write_str(s),
        }
    }
}

/// Suppresses 1 to 4 and rounds everything else to the nearest 5.
pub fn publish(n: u64) -> Published {
    match n {
        1..=4 => Published::Suppressed("<5"),
        _ => Published::Rounded((n + 2) / 5 * 5),
    }
}

/// One published row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub group: String,
    pub measures: BTreeMap<&'static str, Published>,
}

/// Counts the referrals by group and measure, then publishes them, with a total row.
pub fn programme(rows: &[ReportRow], group_by: GroupBy) -> Vec<Row> {
    let mut counts: BTreeMap<String, [u64; MEASURES.len()]> = BTreeMap::new();
    for r in rows {
        let group = match group_by {
            GroupBy::Provider => r.provider.clone(),
            GroupBy::Locality => r.locality.clone(),
            GroupBy::Programme => r.programme.clone(),
            GroupBy::Month => format!("{}-{:02}", r.created_at.year(), r.created_at.month() as u8),
        };
        let has = |m: Milestone| r.events.contains(&m);
        let reached = [
            true,
            has(Milestone::Accepted),
            has(Milestone::Declined),
            has(Milestone::Engaged),
            has(Milestone::JobStart),
            has(Milestone::Sustained13Weeks),
            has(Milestone::Sustained26Weeks),
            has(Milestone::Closed),
            has(Milestone::ActionPlanAgreed),
        ];
        for target in [group, "total".to_owned()] {
            let c = counts.entry(target).or_insert([0; MEASURES.len()]);
            for (i, hit) in reached.iter().enumerate() {
                c[i] += u64::from(*hit);
            }
        }
    }
    let mut out: Vec<Row> = counts
        .into_iter()
        .map(|(group, c)| Row {
            group,
            measures: MEASURES
                .iter()
                .zip(c)
                .map(|(m, n)| (*m, publish(n)))
                .collect(),
        })
        .collect();
    // The total row last.
    out.sort_by_key(|r| r.group == "total");
    out
}

/// CSV with a header row.
pub fn to_csv(rows: &[Row]) -> String {
    let mut out = format!("group,{}\n", MEASURES.join(","));
    for r in rows {
        let cells: Vec<String> = MEASURES.iter().map(|m| r.measures[m].to_string()).collect();
        out.push_str(&format!("{},{}\n", r.group, cells.join(",")));
    }
    out
}

/// Parses a `from`/`to` bound: an RFC 3339 instant or a date (midnight UTC).
pub fn bound(s: &str) -> Result<OffsetDateTime, String> {
    use fhir_sdk::time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| {
            fhir_sdk::time::Date::parse(
                s,
                fhir_sdk::time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| format!("`{s}` is not a date (YYYY-MM-DD) or RFC 3339 date-time"))
}

/// One person-level extract row: the reporting pseudonym, never the NHS number.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractRow {
    pub subject: String,
    pub provider: String,
    pub locality: String,
    pub programme: String,
    pub month: String,
    pub milestones: String,
}

/// Reads the opt-out list; a bad line is named by number, never by content.
pub fn opt_outs(text: &str) -> Result<std::collections::HashSet<String>, String> {
    let mut out = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let number = crate::domain::NhsNumber::parse(line)
            .map_err(|e| format!("opt-out list line {}: {e}", n + 1))?;
        out.insert(number.expose().to_owned());
    }
    Ok(out)
}

/// What an extract left out, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeftOut {
    /// On the National Data Opt-out list.
    pub opted_out: usize,
    /// Purged under retention: no NHS number is held any more to pseudonymise.
    pub purged: usize,
}

/// The person-level extract: everyone in `rows` except those who opted out and those
/// whose personal data retention has purged, each under the reporting pseudonym.
pub fn extract(
    rows: &[ReportRow],
    keys: &crate::pseudonym::PseudonymKeys,
    opted_out: &std::collections::HashSet<String>,
) -> (Vec<ExtractRow>, LeftOut) {
    let mut left_out = LeftOut::default();
    let mut kept = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(nhs_number) = &r.nhs_number else {
            left_out.purged += 1;
            continue;
        };
        if opted_out.contains(nhs_number) {
            left_out.opted_out += 1;
            continue;
        }
        kept.push(ExtractRow {
            subject: keys.pseudonym(nhs_number).into_string(),
            provider: r.provider.clone(),
            locality: r.locality.clone(),
            programme: r.programme.clone(),
            month: format!("{}-{:02}", r.created_at.year(), r.created_at.month() as u8),
            milestones: r
                .events
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    (kept, left_out)
}

/// The extract as CSV with a header row.
pub fn extract_csv(rows: &[ExtractRow]) -> String {
    let mut out = String::from("subject,provider,locality,programme,month,milestones\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.subject, r.provider, r.locality, r.programme, r.month, r.milestones
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_lines_are_checked_and_named_by_number_only() {
        let list =
            opt_outs("# refreshed 2026-11-01\n999 000 0018\n\n9990000026 # second\n").unwrap();
        assert!(list.contains("9990000018") && list.contains("9990000026"));
        let err = opt_outs("9990000018\n9990000019\n").unwrap_err();
        assert!(
            err.contains("line 2") && !err.contains("9990000019"),
            "{err}"
        );
    }

    #[test]
    fn small_counts_are_suppressed_and_the_rest_rounded() {
        assert_eq!(publish(0), Published::Rounded(0));
        for n in 1..=4 {
            assert_eq!(publish(n), Published::Suppressed("<5"));
        }
        assert_eq!(publish(5), Published::Rounded(5));
        assert_eq!(publish(7), Published::Rounded(5));
        assert_eq!(publish(8), Published::Rounded(10));
        assert_eq!(publish(1002), Published::Rounded(1000));
    }

    #[test]
    fn a_suppressed_cell_cannot_be_recovered_from_the_total() {
        let row = |provider: &str, events: &[&str]| ReportRow {
            nhs_number: Some("9990000018".into()),
            created_at: OffsetDateTime::now_utc(),
            provider: provider.into(),
            locality: "x".into(),
            programme: "tiw".into(),
            events: events.iter().filter_map(|e| e.parse().ok()).collect(),
        };
        // 11 at one provider, 2 at the other: 13 in all.
        let mut rows: Vec<ReportRow> = (0..11).map(|_| row("bchft", &["accepted"])).collect();
        rows.push(row("prospects", &["accepted"]));
        rows.push(row("prospects", &[]));
        let out = programme(&rows, GroupBy::Provider);
        let get = |g: &str| out.iter().find(|r| r.group == g).unwrap().measures["received"].clone();
        assert_eq!(get("bchft"), Published::Rounded(10));
        assert_eq!(get("prospects"), Published::Suppressed("<5"));
        assert_eq!(
            get("total"),
            Published::Rounded(15),
            "13 rounded, so total - 10 is not the hidden 2"
        );
        assert_eq!(out.last().unwrap().group, "total");
        assert!(to_csv(&out).starts_with("group,received,accepted"));
    }
}
