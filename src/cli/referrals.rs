//! One referral's story: `thrive-gateway referrals show KEY`.

use super::*;
use crate::operations::Timeline;

pub(super) async fn show(settings: &Settings, name: &str, key: &str, json: bool) -> Done {
    let store = open_for(name, settings, None).await?;
    let found = store.find_referrals(key.trim()).await?;
    let ids: Vec<String> = found.iter().map(|r| r.id.to_string()).collect();
    let record = crate::store::AuditRecord {
        client_id: Some("command-line".into()),
        role: Some("operator".into()),
        referral_id: (ids.len() == 1).then(|| ids[0].clone()),
        detail: serde_json::json!({"count": ids.len(), "referrals": ids}),
        ..crate::store::AuditRecord::new(
            "operator.referrals.show",
            if ids.is_empty() {
                "not-found"
            } else {
                "allowed"
            },
        )
    };
    store.append_audit(&record).await?;
    audit::seal_what_was_written(store.as_ref()).await;
    if found.is_empty() {
        return Err(Failure::failed(
            "no referral has this reference, id, correlation id or sender identifier",
        ));
    }
    let timelines = crate::operations::timelines(store.as_ref(), found).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&timelines).map_err(Failure::failed)?
        );
        return Ok(());
    }
    if timelines.len() > 1 {
        println!("{} referrals match; each is shown.\n", timelines.len());
    }
    for t in &timelines {
        print_timeline(t);
    }
    Ok(())
}

fn print_timeline(t: &Timeline) {
    let r = &t.referral;
    let stamp = |at: fhir_sdk::time::OffsetDateTime| {
        at.format(&fhir_sdk::time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!("referral    {} ({})", r.reference, r.id);
    println!(
        "            {} from {} to {}, {}, milestone {}",
        r.programme, r.practice_ods, r.provider, r.status, r.milestone
    );
    println!("correlation {}", r.correlation_id);
    println!();
    println!(
        "{:>6}  {:<27}  {:<26}  {:<14}  {:>6}  {:<16}  detail",
        "seq", "at", "action", "outcome", "status", "by"
    );
    for s in &t.timeline {
        let detail = serde_json::Value::Object(s.detail.clone());
        println!(
            "{:>6}  {:<27}  {:<26}  {:<14}  {:>6}  {:<16}  {}",
            s.seq.map_or_else(|| "-".into(), |n| n.to_string()),
            stamp(s.at),
            s.action,
            s.outcome,
            s.http_status.map_or_else(|| "-".into(), |n| n.to_string()),
            s.actor.as_deref().unwrap_or("gateway"),
            if s.detail.is_empty() {
                String::new()
            } else {
                detail.to_string()
            },
        );
    }
    println!();
}
