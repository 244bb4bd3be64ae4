//! `thrive-gateway audit ...`: verify the chain, sign a checkpoint, export a range,
//! check an export offline. Exit codes: 0 intact or done, 1 tampered or failed,
//! 2 configuration problem.

use super::{AuditCommand, Done, Failure};
use crate::audit::checkpoint::{Signer, VerifyingKeys};
use crate::audit::export::Format;
use crate::config::Settings;
use crate::store::{AuditRecord, AuditStore};

async fn record(store: &dyn AuditStore, action: &str, detail: serde_json::Value) -> Done {
    record_as(store, "auditor", action, detail).await
}

/// Seals what a command wrote into the chain at once, since no gateway may be running
/// to seal it. If that fails its records stay pending (durable) for the next sealer,
/// and the command goes on.
pub async fn seal_what_was_written(store: &dyn AuditStore) {
    if let Err(e) = store.seal_audit().await {
        eprintln!("thrive-gateway: this command's audit record stays pending: {e}");
    }
}

/// Records a command-line action taken in `role`, sealed at once; a failure to record
/// fails the command, so nothing is read from the command line without its record.
pub async fn record_as(
    store: &dyn AuditStore,
    role: &str,
    action: &str,
    detail: serde_json::Value,
) -> Done {
    let record = AuditRecord {
        client_id: Some("command-line".into()),
        role: Some(role.into()),
        detail,
        ..AuditRecord::new(action, "allowed")
    };
    store.append_audit(&record).await?;
    seal_what_was_written(store).await;
    Ok(())
}

pub(super) async fn run(settings: &Settings, name: &str, command: AuditCommand) -> Done {
    if let AuditCommand::VerifyExport {
        file,
        public_key,
        key_id,
    } = &command
    {
        return verify_export(settings, file, public_key.as_deref(), key_id.as_deref());
    }
    let store = super::open_for(name, settings, None).await?;
    match command {
        AuditCommand::Verify => {
            let keys = settings
                .audit
                .checkpoint
                .as_ref()
                .map(VerifyingKeys::from_settings)
                .transpose()
                .map_err(Failure::usage)?;
            let v = crate::audit::verify(store.as_ref(), keys.as_ref()).await?;
            record(
                store.as_ref(),
                "audit.verify",
                serde_json::json!({"intact": v.intact(), "records": v.records}),
            )
            .await?;
            let sealing = v.sealing.as_ref().map(|why| {
                format!(
                    "audit records could not be sealed into the chain: {why} ({} waiting)",
                    v.pending
                )
            });
            if let Some(problem) = &v.problem {
                let broken = format!(
                    "audit chain BROKEN: {problem} ({} records verified before it)",
                    v.records
                );
                return Err(Failure::failed(match sealing {
                    Some(sealing) => format!("{broken}; {sealing}"),
                    None => broken,
                }));
            }
            if let Some(sealing) = sealing {
                return Err(Failure::failed(sealing));
            }
            println!(
                "audit chain intact: {} records, {} checkpoints verified{}",
                v.records,
                v.checkpoints,
                if v.legacy > 0 {
                    format!(
                        ", {} older records written before the chain began",
                        v.legacy
                    )
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let Some(c) = &settings.audit.checkpoint else {
                return Err(Failure::usage("audit.checkpoint is not configured"));
            };
            let signer = Signer::from_settings(c).map_err(Failure::usage)?;
            match signer
                .checkpoint(store.as_ref())
                .await
                .map_err(Failure::failed)?
            {
                Some(c) => println!("checkpoint signed at record {} ({})", c.seq, c.hash),
                None => println!("the latest checkpoint already covers the chain head"),
            }
            Ok(())
        }
        AuditCommand::Export {
            from,
            to,
            format,
            output,
        } => {
            let (Ok(from_t), Ok(to_t)) = (crate::reports::bound(&from), crate::reports::bound(&to))
            else {
                return Err(Failure::usage(
                    "--from and --to must be dates (YYYY-MM-DD) or RFC 3339 instants",
                ));
            };
            let format_v: Format = format.name().parse().map_err(Failure::usage)?;
            // With the private key at hand the head is signed first, so the export is
            // covered by a checkpoint to its end.
            let signer = match settings.audit.checkpoint.as_ref() {
                Some(c) if c.private_key_file.is_some() => {
                    Some(Signer::from_settings(c).map_err(Failure::usage)?)
                }
                _ => None,
            };
            let plan = crate::audit::export::ExportPlan::new(
                store.as_ref(),
                signer.as_ref(),
                from_t,
                to_t,
                format_v,
            )
            .await
            .map_err(Failure::failed)?;
            let n = plan.records();
            record(
                store.as_ref(),
                "audit.export",
                serde_json::json!({"from": from, "to": to, "format": format.name(), "count": n}),
            )
            .await?;
            match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).map_err(|e| {
                        Failure::failed(format!("cannot write {}: {e}", path.display()))
                    })?;
                    write_export(plan, store.clone(), std::io::BufWriter::new(file)).await?;
                    eprintln!("{n} records written to {}", path.display());
                }
                None => write_export(plan, store.clone(), std::io::stdout().lock()).await?,
            }
            Ok(())
        }
        AuditCommand::VerifyExport { .. } => Ok(()),
    }
}

/// Writes an export a page at a time, so its memory is one page whatever its range.
async fn write_export(
    plan: crate::audit::export::ExportPlan,
    store: std::sync::Arc<dyn crate::store::Store>,
    mut out: impl std::io::Write,
) -> Done {
    use futures_util::StreamExt;
    let cannot = |e: std::io::Error| Failure::failed(format!("cannot write the export: {e}"));
    let mut chunks = std::pin::pin!(plan.stream(store));
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?).map_err(cannot)?;
    }
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(cannot)
}

fn verify_export(
    settings: &Settings,
    file: &std::path::Path,
    public_key: Option<&std::path::Path>,
    key_id: Option<&str>,
) -> Done {
    let keys = match (public_key, &settings.audit.checkpoint) {
        (Some(pem), c) => {
            let kid = key_id
                .map(str::to_owned)
                .or_else(|| c.as_ref().map(|c| c.key_id.clone()))
                .unwrap_or_default();
            VerifyingKeys::load(&kid, pem)
        }
        (None, Some(c)) => VerifyingKeys::from_settings(c),
        (None, None) => {
            return Err(Failure::usage(
                "give --public-key, or configure audit.checkpoint",
            ));
        }
    }
    .map_err(Failure::usage)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    let Ok(bundle) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Err(Failure::failed(
            "the file is not JSON (only the FHIR export can be verified offline)",
        ));
    };
    let v = crate::audit::export::verify_bundle(&bundle, &keys).map_err(Failure::failed)?;
    match v.problem {
        None if v.records > 0 && v.covered == v.records => {
            println!(
                "export intact: {} records linked and signed by {} checkpoints",
                v.records, v.checkpoints
            );
            Ok(())
        }
        // Linked but not signed: a rewritten chain would look the same.
        None => Err(Failure::failed(format!(
            "export NOT PROVEN: {} of {} records are covered by a signed checkpoint; \
             export again with the checkpoint key configured, or after `audit checkpoint`",
            v.covered, v.records
        ))),
        Some(p) => Err(Failure::failed(format!("export BROKEN: {p}"))),
    }
}
