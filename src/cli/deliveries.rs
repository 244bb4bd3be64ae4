//! The delivery queue and its dead letters: `thrive-gateway deliveries`.

use super::*;
use crate::operations::{DeadLetterAction, DeliveryDetail, Recipients};
use crate::store::{DeliveryFilter, DeliveryView, ShownState};
use fhir_sdk::time::{Duration, OffsetDateTime};

pub(super) async fn deliveries(
    settings: &Settings,
    name: &str,
    command: DeliveriesCommand,
) -> Done {
    let store = open_for(name, settings, None).await?;
    match command {
        DeliveriesCommand::List {
            dead,
            recipient,
            state,
            since,
            limit,
            json,
        } => {
            let recipients = Recipients::of(settings);
            if let Some(r) = &recipient
                && !recipients.contains(r)
            {
                return Err(Failure::usage(format!(
                    "--recipient: no provider or GP callback is called {r} (configured: {})",
                    recipients.listed()
                )));
            }
            let since = since
                .as_deref()
                .map(crate::reports::bound)
                .transpose()
                .map_err(|e| Failure::usage(format!("--since: {e}")))?;
            let filter = DeliveryFilter {
                dead_only: dead,
                recipient,
                state: state.and_then(|s| ShownState::parse(s.name())),
                since,
            };
            let rows = crate::operations::list(store.as_ref(), &filter, limit).await?;
            audit::record_as(
                store.as_ref(),
                "operator",
                "operator.deliveries.list",
                serde_json::json!({
                    "dead_only": dead,
                    "recipient": filter.recipient,
                    "state": filter.state.map(ShownState::as_str),
                    "count": rows.len(),
                }),
            )
            .await?;
            if json {
                return print_json(&rows);
            }
            let paused: Vec<String> = store
                .recipient_controls()
                .await?
                .into_iter()
                .filter(|c| c.paused_at.is_some())
                .map(|c| c.recipient)
                .collect();
            if !paused.is_empty() {
                println!("paused (nothing is sent to them): {}", paused.join(", "));
            }
            print_table(&rows, OffsetDateTime::now_utc());
            Ok(())
        }
        DeliveriesCommand::Show { id, json } => {
            let detail = crate::operations::show(store.as_ref(), &id).await?;
            let mut record = operator_audit("operator.deliveries.show", &id);
            record.outcome = if detail.is_some() {
                "allowed"
            } else {
                "not-found"
            }
            .into();
            if let Some(d) = &detail {
                record.referral_id = Some(d.delivery.referral_id.to_string());
                record.recipient = Some(d.delivery.provider.clone());
            }
            store.append_audit(&record).await?;
            audit::seal_what_was_written(store.as_ref()).await;
            let Some(detail) = detail else {
                return Err(Failure::failed(format!("no delivery has id {id}")));
            };
            if json {
                return print_json(&detail);
            }
            print_detail(&detail, OffsetDateTime::now_utc());
            Ok(())
        }
        DeliveriesCommand::Pause { recipient } => pause(settings, store, &recipient, true).await,
        DeliveriesCommand::Resume { recipient } => pause(settings, store, &recipient, false).await,
        DeliveriesCommand::Recipients { json } => {
            let known = Recipients::of(settings);
            let rows =
                crate::operations::recipients(store.as_ref(), &known, OffsetDateTime::now_utc())
                    .await?;
            audit::record_as(
                store.as_ref(),
                "operator",
                "operator.recipients.list",
                serde_json::json!({"count": rows.len()}),
            )
            .await?;
            if json {
                return print_json(&rows);
            }
            println!(
                "{:<16}  {:<8}  {:>7}  {:>6}  paused by",
                "recipient", "state", "queued", "oldest"
            );
            for r in rows {
                println!(
                    "{:<16}  {:<8}  {:>7}  {:>6}  {}",
                    r.recipient,
                    if r.paused { "paused" } else { "sending" },
                    r.queued,
                    r.oldest_queued_seconds
                        .map_or_else(|| "-".into(), |s| span(Duration::seconds(s))),
                    r.paused_by.as_deref().unwrap_or("-"),
                );
            }
            Ok(())
        }
        DeliveriesCommand::Replay { id } => {
            let audit = operator_audit("operator.deliveries.replay", &id);
            let done = crate::operations::replay(store.as_ref(), &id, audit).await?;
            dead_letter_result(done, &id, "queued again")
        }
        DeliveriesCommand::Resolve { id } => {
            let audit = operator_audit("operator.deliveries.resolve", &id);
            let done = crate::operations::resolve(store.as_ref(), &id, audit).await?;
            dead_letter_result(done, &id, "resolved: it will not be replayed")
        }
    }
}

async fn pause(
    settings: &Settings,
    store: std::sync::Arc<dyn crate::store::Store>,
    recipient: &str,
    paused: bool,
) -> Done {
    let known = Recipients::of(settings);
    let action = if paused {
        "operator.recipients.pause"
    } else {
        "operator.recipients.resume"
    };
    let audit = crate::store::AuditRecord {
        client_id: Some("command-line".into()),
        role: Some("operator".into()),
        detail: serde_json::json!({"recipient": recipient}),
        ..crate::store::AuditRecord::new(action, "accepted")
    };
    let changed =
        crate::operations::pause(store.as_ref(), &known, recipient, paused, audit).await?;
    audit::seal_what_was_written(store.as_ref()).await;
    let verb = if paused { "paused" } else { "sending" };
    match changed {
        None => Err(Failure::usage(format!(
            "no provider or GP callback is called {recipient} (configured: {})",
            known.listed()
        ))),
        Some(true) => {
            println!("{recipient}: {verb}");
            Ok(())
        }
        Some(false) => {
            println!("{recipient}: {verb} already");
            Ok(())
        }
    }
}

fn operator_audit(action: &str, id: &str) -> crate::store::AuditRecord {
    crate::store::AuditRecord {
        client_id: Some("command-line".into()),
        role: Some("operator".into()),
        detail: serde_json::json!({"delivery_id": id}),
        ..crate::store::AuditRecord::new(action, "accepted")
    }
}

fn dead_letter_result(action: DeadLetterAction, id: &str, done: &str) -> Done {
    match action {
        DeadLetterAction::Done => {
            println!("delivery {id} {done}");
            Ok(())
        }
        DeadLetterAction::Resolved => Err(Failure::failed(format!(
            "delivery {id} is a dead letter an operator already resolved: it is never replayed"
        ))),
        DeadLetterAction::NotDeadLetter => {
            Err(Failure::failed(format!("no dead letter has id {id}")))
        }
    }
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Done {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(Failure::failed)?
    );
    Ok(())
}

/// The operator's table: one delivery a line, the last error last so it may run on.
fn print_table(rows: &[DeliveryView], now: OffsetDateTime) {
    println!(
        "{:<36}  {:<16}  {:<10}  {:<12}  {:<9}  {:>8}  {:>5}  {:<10}  last error",
        "id", "referral", "recipient", "kind", "state", "attempts", "age", "next"
    );
    for r in rows {
        let state = ShownState::of(r.state, r.resolved_at.is_some());
        let next = if r.state == crate::store::DeliveryState::Queued {
            let wait = r.next_attempt_at - now;
            if wait <= Duration::ZERO {
                "due".to_owned()
            } else {
                format!("in {}", span(wait))
            }
        } else {
            "-".to_owned()
        };
        println!(
            "{:<36}  {:<16}  {:<10}  {:<12}  {:<9}  {:>8}  {:>5}  {:<10}  {}",
            r.id,
            r.reference.as_deref().unwrap_or("-"),
            r.provider,
            r.kind.as_str(),
            state.as_str(),
            r.attempts,
            span(now - r.created_at),
            next,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
}

/// A delivery, then its attempts one a line.
fn print_detail(d: &DeliveryDetail, now: OffsetDateTime) {
    let v = &d.delivery;
    let state = ShownState::of(v.state, v.resolved_at.is_some());
    println!("delivery   {}", v.id);
    println!(
        "referral   {} ({})",
        v.reference.as_deref().unwrap_or("-"),
        v.referral_id
    );
    println!("recipient  {} ({})", v.provider, v.kind);
    println!(
        "state      {} after {} attempts, queued {} ago",
        state.as_str(),
        v.attempts,
        span(now - v.created_at)
    );
    if v.state == crate::store::DeliveryState::Queued {
        println!("next       {}", rfc3339(v.next_attempt_at));
    }
    println!("last error {}", v.last_error.as_deref().unwrap_or("-"));
    println!();
    println!(
        "{:>6}  {:<24}  {:>8}  {:<12}  {:>6}  {:<20}  reason",
        "seq", "at", "duration", "outcome", "status", "target"
    );
    for a in &d.attempts {
        println!(
            "{:>6}  {:<24}  {:>8}  {:<12}  {:>6}  {:<20}  {}",
            a.seq.map_or_else(|| "-".into(), |s| s.to_string()),
            rfc3339(a.at),
            a.duration_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            a.outcome,
            a.http_status.map_or_else(|| "-".into(), |s| s.to_string()),
            a.target.as_deref().unwrap_or("-"),
            a.reason.as_deref().unwrap_or("-"),
        );
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&fhir_sdk::time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A duration as an operator reads it at a glance: `42s`, `7m`, `3h`, `2d`.
fn span(d: Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
