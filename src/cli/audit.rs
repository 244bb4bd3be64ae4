//! `thrive-gateway audit ...`: verify the chain, sign a checkpoint, export a range,
//! check an export offline. Exit codes: 0 intact or done, 1 tampered or failed,
//! 2 configuration problem.

use super::AuditCommand;
use crate::audit::checkpoint::{Signer, VerifyingKeys};
use crate::audit::export::Format;
use crate::config::Settings;
use crate::store::{AuditRecord, AuditStore};
use std::process::ExitCode;

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("thrive-gateway audit: {e}");
    ExitCode::from(2)
}

fn failed(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("thrive-gateway audit: {e}");
    ExitCode::FAILURE
}

async fn record(
    store: &dyn AuditStore,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), ExitCode> {
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
) -> Result<(), ExitCode> {
    let record = AuditRecord {
        client_id: Some("command-line".into()),
        role: Some(role.into()),
        detail,
        ..AuditRecord::new(action, "allowed")
    };
    store.append_audit(&record).await.map_err(failed)?;
    seal_what_was_written(store).await;
    Ok(())
}

pub async fn run(settings: &Settings, command: AuditCommand) -> ExitCode {
    if let AuditCommand::VerifyExport {
        file,
        public_key,
        key_id,
    } = &command
    {
        return verify_export(settings, file, public_key.as_deref(), key_id.as_deref());
    }
    let store = match super::open_for("audit", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match command {
        AuditCommand::Verify => {
            let keys = match settings
                .audit
                .checkpoint
                .as_ref()
                .map(VerifyingKeys::from_settings)
            {
                Some(Err(e)) => return config_error(e),
                Some(Ok(k)) => Some(k),
                None => None,
            };
            let v = match crate::audit::verify(store.as_ref(), keys.as_ref()).await {
                Ok(v) => v,
                Err(e) => return failed(e),
            };
            if let Err(code) = record(
                store.as_ref(),
                "audit.verify",
                serde_json::json!({"intact": v.intact(), "records": v.records}),
            )
            .await
            {
                return code;
            }
            if let Some(why) = &v.sealing {
                eprintln!(
                    "audit records could not be sealed into the chain: {why} ({} waiting)",
                    v.pending
                );
            }
            match v.problem {
                None if v.sealing.is_some() => ExitCode::FAILURE,
                None => {
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
                    ExitCode::SUCCESS
                }
                Some(problem) => {
                    eprintln!(
                        "audit chain BROKEN: {problem} ({} records verified before it)",
                        v.records
                    );
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Checkpoint => {
            let Some(c) = &settings.audit.checkpoint else {
                return config_error("audit.checkpoint is not configured");
            };
            let signer = match Signer::from_settings(c) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            match signer.checkpoint(store.as_ref()).await {
                Ok(Some(c)) => {
                    println!("checkpoint signed at record {} ({})", c.seq, c.hash);
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!("the latest checkpoint already covers the chain head");
                    ExitCode::SUCCESS
                }
                Err(e) => failed(e),
            }
        }
        AuditCommand::Export {
            from,
            to,
            format,
            output,
        } => {
            let (Ok(from_t), Ok(to_t)) = (crate::reports::bound(&from), crate::reports::bound(&to))
            else {
                return config_error(
                    "--from and --to must be dates (YYYY-MM-DD) or RFC 3339 instants",
                );
            };
            let format_v: Format = match format.name().parse() {
                Ok(f) => f,
                Err(e) => return config_error(e),
            };
            // With the private key at hand the head is signed first, so the export is
            // covered by a checkpoint to its end.
            let signer = match settings.audit.checkpoint.as_ref() {
                Some(c) if c.private_key_file.is_some() => match Signer::from_settings(c) {
                    Ok(s) => Some(s),
                    Err(e) => return config_error(e),
                },
                _ => None,
            };
            let plan = match crate::audit::export::ExportPlan::new(
                store.as_ref(),
                signer.as_ref(),
                from_t,
                to_t,
                format_v,
            )
            .await
            {
                Ok(p) => p,
                Err(e) => return failed(e),
            };
            let n = plan.records();
            if let Err(code) = record(
                store.as_ref(),
                "audit.export",
                serde_json::json!({"from": from, "to": to, "format": format.name(), "count": n}),
            )
            .await
            {
                return code;
            }
            let written = match &output {
                Some(path) => match std::fs::File::create(path) {
                    Ok(file) => {
                        write_export(plan, store.clone(), std::io::BufWriter::new(file)).await
                    }
                    Err(e) => Err(format!("cannot write {}: {e}", path.display())),
                },
                None => write_export(plan, store.clone(), std::io::stdout().lock()).await,
            };
            match (written, output) {
                (Err(e), _) => failed(e),
                (Ok(()), Some(path)) => {
                    eprintln!("{n} records written to {}", path.display());
                    ExitCode::SUCCESS
                }
                (Ok(()), None) => ExitCode::SUCCESS,
            }
        }
        AuditCommand::VerifyExport { .. } => ExitCode::SUCCESS,
    }
}

/// Writes an export a page at a time, so its memory is one page whatever its range.
async fn write_export(
    plan: crate::audit::export::ExportPlan,
    store: std::sync::Arc<dyn crate::store::Store>,
    mut out: impl std::io::Write,
) -> Result<(), String> {
    use futures_util::StreamExt;
    let mut chunks = std::pin::pin!(plan.stream(store));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        out.write_all(&chunk)
            .map_err(|e| format!("cannot write the export: {e}"))?;
    }
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the export: {e}"))
}

fn verify_export(
    settings: &Settings,
    file: &std::path::Path,
    public_key: Option<&std::path::Path>,
    key_id: Option<&str>,
) -> ExitCode {
    let keys = match (public_key, &settings.audit.checkpoint) {
        (Some(pem), c) => {
            let kid = key_id
                .map(str::to_owned)
                .or_else(|| c.as_ref().map(|c| c.key_id.clone()))
                .unwrap_or_default();
            VerifyingKeys::load(&kid, pem)
        }
        (None, Some(c)) => VerifyingKeys::from_settings(c),
        (None, None) => return config_error("give --public-key, or configure audit.checkpoint"),
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => return config_error(e),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return config_error(format!("cannot read {}: {e}", file.display())),
    };
    let Ok(bundle) = serde_json::from_str::<serde_json::Value>(&text) else {
        return failed("the file is not JSON (only the FHIR export can be verified offline)");
    };
    match crate::audit::export::verify_bundle(&bundle, &keys) {
        Err(e) => failed(e),
        Ok(v) => match v.problem {
            None if v.records > 0 && v.covered == v.records => {
                println!(
                    "export intact: {} records linked and signed by {} checkpoints",
                    v.records, v.checkpoints
                );
                ExitCode::SUCCESS
            }
            None => {
                // Linked but not signed: a rewritten chain would look the same.
                eprintln!(
                    "export NOT PROVEN: {} of {} records are covered by a signed checkpoint; \
                     export again with the checkpoint key configured, or after `audit checkpoint`",
                    v.covered, v.records
                );
                ExitCode::FAILURE
            }
            Some(p) => {
                eprintln!("export BROKEN: {p}");
                ExitCode::FAILURE
            }
        },
    }
}
