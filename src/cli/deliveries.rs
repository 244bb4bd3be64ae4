//! The delivery queue and its dead letters: `thrive-gateway deliveries`.

use super::*;

pub(super) async fn deliveries(settings: &Settings, command: DeliveriesCommand) -> ExitCode {
    let store = match open_for("deliveries", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match command {
        DeliveriesCommand::List { dead, limit, json } => {
            let listed = crate::operations::list(store.as_ref(), dead, limit).await;
            if let Ok(rows) = &listed
                && let Err(code) = audit::record_as(
                    store.as_ref(),
                    "operator",
                    "operator.deliveries.list",
                    serde_json::json!({"dead_only": dead, "count": rows.len()}),
                )
                .await
            {
                return code;
            }
            match listed {
                Ok(rows) if json => match serde_json::to_string_pretty(&rows) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(rows) => {
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
                            r.kind,
                            state,
                            r.attempts,
                            r.last_status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            r.last_error.as_deref().unwrap_or("-")
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("thrive-gateway deliveries list: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        DeliveriesCommand::Replay { id } => {
            let audit = operator_audit("operator.deliveries.replay", &id);
            dead_letter_result(
                crate::operations::replay(store.as_ref(), &id, audit).await,
                &id,
                "replay",
                "queued again",
            )
        }
        DeliveriesCommand::Resolve { id } => {
            let audit = operator_audit("operator.deliveries.resolve", &id);
            dead_letter_result(
                crate::operations::resolve(store.as_ref(), &id, audit).await,
                &id,
                "resolve",
                "resolved: it will not be replayed",
            )
        }
    }
}

pub(super) fn operator_audit(action: &str, id: &str) -> crate::store::AuditRecord {
    crate::store::AuditRecord {
        client_id: Some("command-line".into()),
        role: Some("operator".into()),
        detail: serde_json::json!({"delivery_id": id}),
        ..crate::store::AuditRecord::new(action, "accepted")
    }
}

pub(super) fn dead_letter_result(
    result: Result<crate::operations::DeadLetterAction, crate::store::StoreError>,
    id: &str,
    verb: &str,
    done: &str,
) -> ExitCode {
    use crate::operations::DeadLetterAction;
    match result {
        Ok(DeadLetterAction::Done) => {
            println!("delivery {id} {done}");
            ExitCode::SUCCESS
        }
        Ok(DeadLetterAction::Resolved) => {
            eprintln!(
                "delivery {id} is a dead letter an operator already resolved: it is never replayed"
            );
            ExitCode::FAILURE
        }
        Ok(DeadLetterAction::NotDeadLetter) => {
            eprintln!("no dead letter has id {id}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("thrive-gateway deliveries {verb}: {e}");
            ExitCode::FAILURE
        }
    }
}
