//! The overview: each recipient's queue, dead letters, referrals accepted and rejected
//! by reason over the last 24 hours and 30 days, and the audit chain's state.

use super::chart::{self, Bar};
use super::layout::{Section, age, page, table_head, tag, when};
use super::{ConsoleError, User, html_response};
use crate::app::{AppState, AuditContext};
use crate::config::console::ConsoleRole;
use crate::store::{AuditCount, AuditFilter, DeliveryFilter, ShownState};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use fhir_sdk::time::{Duration, OffsetDateTime, Time};
use maud::{Markup, html};
use std::collections::BTreeMap;

/// One recipient's line of the overview.
struct RecipientLine {
    view: crate::operations::RecipientView,
    /// Queued deliveries that have failed at least once.
    failing: usize,
    last_error: Option<String>,
    delivered_today: i64,
    dead: usize,
}

/// What an intake refusal's HTTP status says, in words.
fn reason(outcome: &str, status: Option<i32>) -> String {
    if outcome == "accepted" {
        return "Accepted".into();
    }
    match status {
        Some(400) => "Rejected: not a valid message".into(),
        Some(401) => "Rejected: not authenticated".into(),
        Some(403) => "Rejected: sender not permitted".into(),
        Some(409) => "Rejected: duplicate".into(),
        Some(413) => "Rejected: too large".into(),
        Some(415) => "Rejected: not FHIR JSON".into(),
        Some(422) => "Rejected: business rule (consent, NHS number, age, routing)".into(),
        Some(429) => "Rejected: rate limited".into(),
        Some(s) => format!("Rejected: HTTP {s}"),
        None => format!("Rejected: {outcome}"),
    }
}

/// Messages received since `since`, by reason: referrals accepted, and every refusal,
/// whether or not the message was far enough read to be known as a new referral.
async fn intake(gw: &AppState, since: OffsetDateTime) -> Result<Vec<Bar>, ConsoleError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for action in ["referral.new", "referral.message"] {
        for AuditCount {
            outcome,
            http_status,
            count,
            ..
        } in gw.store.audit_counts(action, since).await?
        {
            if outcome == "valid" {
                continue;
            }
            *counts.entry(reason(&outcome, http_status)).or_default() +=
                u64::try_from(count).unwrap_or(0);
        }
    }
    let mut bars: Vec<Bar> = counts
        .into_iter()
        .map(|(label, value)| Bar {
            kind: if label == "Accepted" {
                "accepted"
            } else {
                "rejected"
            },
            label,
            value,
            shown: None,
        })
        .collect();
    // Accepted first, then refusals by how many.
    bars.sort_by_key(|b| (b.kind != "accepted", std::cmp::Reverse(b.value)));
    Ok(bars)
}

async fn recipient_lines(
    gw: &AppState,
    now: OffsetDateTime,
) -> Result<Vec<RecipientLine>, ConsoleError> {
    let store = gw.store.as_ref();
    let midnight = now.replace_time(Time::MIDNIGHT);
    let mut delivered: BTreeMap<String, i64> = BTreeMap::new();
    for action in ["delivery.referral", "delivery.milestone"] {
        for c in store.audit_counts(action, midnight).await? {
            if c.outcome == "delivered"
                && let Some(r) = c.recipient
            {
                *delivered.entry(r).or_default() += c.count;
            }
        }
    }
    let mut lines = Vec::new();
    for view in crate::operations::recipients(store, &gw.recipients, now).await? {
        let queued = DeliveryFilter {
            recipient: Some(view.recipient.clone()),
            state: Some(ShownState::Queued),
            ..DeliveryFilter::default()
        };
        let queued = store.list_deliveries(&queued, 500).await?;
        let failed: Vec<_> = queued.iter().filter(|d| d.attempts > 0).collect();
        let dead = DeliveryFilter {
            recipient: Some(view.recipient.clone()),
            state: Some(ShownState::Dead),
            ..DeliveryFilter::default()
        };
        lines.push(RecipientLine {
            failing: failed.len(),
            last_error: failed.iter().find_map(|d| d.last_error.clone()),
            delivered_today: delivered.get(&view.recipient).copied().unwrap_or(0),
            dead: store.list_deliveries(&dead, 1000).await?.len(),
            view,
        });
    }
    Ok(lines)
}

fn recipients_table(lines: &[RecipientLine], operator: bool) -> Markup {
    html! {
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Recipients" }
            (table_head(&[("Recipient", false), ("State", false), ("Queued", true), ("Oldest waiting", false), ("Failing", true), ("Delivered today", true), ("Dead letters", true)]))
            tbody class="nhsuk-table__body" {
                @for l in lines {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" {
                            @if operator {
                                a href={ "/console/deliveries?recipient=" (super::encode(&l.view.recipient)) } { (l.view.recipient) }
                            } @else { (l.view.recipient) }
                        }
                        td class="nhsuk-table__cell" {
                            @if l.view.paused { (tag("Paused", "yellow")) }
                            @else if l.failing > 0 { (tag("Failing", "red")) }
                            @else { (tag("Sending", "green")) }
                            @if operator && let Some(e) = &l.last_error { br; span class="nhsuk-body-s" { (e) } }
                        }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (l.view.queued) }
                        td class="nhsuk-table__cell" { (l.view.oldest_queued_seconds.map(age).unwrap_or_else(|| "–".into())) }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (l.failing) }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (l.delivered_today) }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" {
                            @if operator && l.dead > 0 {
                                a href={ "/console/deliveries?state=dead&recipient=" (super::encode(&l.view.recipient)) } { (l.dead) }
                            } @else { (l.dead) }
                        }
                    }
                }
            }
        }
    }
}

fn intake_section(id: &str, title: &str, bars: &[Bar]) -> Markup {
    html! {
        h3 { (title) }
        (chart::bars(id, title, bars))
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { (title) " (figures)" }
            (table_head(&[("Outcome", false), ("Messages", true)]))
            tbody class="nhsuk-table__body" {
                @for b in bars {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" { (b.label) }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (b.value) }
                    }
                }
            }
        }
    }
}

/// The audit chain: how far it reaches, what waits to join it, its last checkpoint and
/// the last verification anyone ran.
async fn chain_section(
    gw: &AppState,
    now: OffsetDateTime,
    auditor: bool,
) -> Result<Markup, ConsoleError> {
    let store = gw.store.as_ref();
    let pending = store.audit_pending().await?;
    let head = store.audit_head().await.map(|(seq, _)| seq).unwrap_or(0);
    let checkpoint = store
        .audit_checkpoints()
        .await?
        .into_iter()
        .max_by_key(|c| c.seq);
    let verifies = AuditFilter {
        action: Some("audit.verify".into()),
        from: Some(now - Duration::days(30)),
        ..AuditFilter::default()
    };
    let mut last_verify = None;
    let mut after = 0;
    loop {
        let rows = store.audit_query(&verifies, after, 1000).await?;
        if let Some(last) = rows.iter().rev().find(|r| r.outcome == "allowed") {
            last_verify = Some(last.clone());
        }
        match rows.last() {
            Some(r) if rows.len() == 1000 => after = r.seq.unwrap_or(i64::MAX),
            _ => break,
        }
    }
    let verified = last_verify.as_ref().map(|r| {
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
        (r.recorded_at, detail["intact"].as_bool())
    });
    Ok(html! {
        h2 { "Audit trail" }
        (super::layout::summary(&[
            ("Records in the chain", html! { (head) }),
            ("Waiting to be sealed", html! {
                (pending)
                @if pending > 1000 { " " (tag("Sealing behind", "red")) }
            }),
            ("Last signed checkpoint", html! {
                @match &checkpoint {
                    Some(c) => { "record " (c.seq) ", " (when(c.signed_at)) }
                    None => { "none yet" }
                }
            }),
            ("Last verification (30 days)", html! {
                @match verified {
                    Some((at, Some(true))) => { (tag("Intact", "green")) " " (when(at)) }
                    Some((at, Some(false))) => { (tag("Broken", "red")) " " (when(at)) }
                    Some((at, None)) => { "ran " (when(at)) }
                    None => { "not run in the last 30 days" }
                }
            }),
        ]))
        @if auditor {
            p { a href="/console/audit/verify" { "Verify the audit chain now" } }
        }
    })
}

async fn overview(gw: web::Data<AppState>, user: User) -> Result<HttpResponse, ConsoleError> {
    let now = OffsetDateTime::now_utc();
    let operator = user.has(ConsoleRole::Operator);
    let auditor = user.has(ConsoleRole::Auditor);
    let lines = recipient_lines(&gw, now).await?;
    let day = intake(&gw, now - Duration::hours(24)).await?;
    let month = intake(&gw, now - Duration::days(30)).await?;
    let dead_total: usize = lines.iter().map(|l| l.dead).sum();
    let chain = chain_section(&gw, now, auditor).await?;
    let principal = user.principal(user.first_role());
    let ctx = AuditContext {
        action: "console.overview",
        principal: Some(&principal),
        ids: None,
    };
    gw.store
        .append_audit(&ctx.record("allowed", 200, None, serde_json::json!({})))
        .await?;
    let body = html! {
        h1 { "Overview" }
        p class="nhsuk-body-s" { "As of " (when(now)) ". Reload the page to update it." }
        h2 { "Delivery" }
        @if dead_total > 0 {
            div class="nhsuk-warning-callout" {
                h3 class="nhsuk-warning-callout__label" { "Dead letters" }
                p {
                    (dead_total) " deliveries stopped and wait for an operator: replay or resolve each one."
                    @if operator { " " a href="/console/deliveries?state=dead" { "See the dead letters" } }
                }
            }
        }
        (recipients_table(&lines, operator))
        h2 { "Referrals received" }
        (intake_section("intake-24h", "Last 24 hours", &day))
        (intake_section("intake-30d", "Last 30 days", &month))
        (chain)
    };
    Ok(html_response(
        StatusCode::OK,
        page("Overview", Some(&user), Section::Overview, body),
    ))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(overview))
        .route("/", web::get().to(overview));
}
