//! The delivery queue and its dead letters: `thrive-gateway deliveries`.

use super::*;
use crate::operations::DeadLetterAction;

pub(super) async fn deliveries(
    settings: &Settings,
    name: &str,
    command: DeliveriesCommand,
) -> Done {
    let store = open_for(name, settings, None).await?;
    match command {
        DeliveriesCommand::List { dead, limit, json } => {
            let rows = crate::operations::list(store.as_ref(), dead, limit).await?;
            audit::record_as(
                store.as_ref(),
                "operator",
                "operator.deliveries.list",
                serde_json::json!({"dead_only": dead, "count": rows.len()}),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(Failure::failed)?
                );
                return Ok(());
            }
            println!(
                "{:<36}  {:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:>6}  reason",
                "id", "referral", "provider", "kind", "state", "attempts", "status"
            );
            for r in rows {
                let state = if r.resolved_at.is_some() {
                    "resolved"
                } else {
                    r.state.as_str()
                };
                println!(
                    "{:<36}  {:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:>6}  {}",
                    r.id,
                    r.referral_id,
                    r.provider,
                    r.kind.as_str(),
                    state,
                    r.attempts,
                    r.last_status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.last_error.as_deref().unwrap_or("-")
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
