//! Programme statistics and the commissioners' extract: `thrive-gateway report`.

use super::*;

pub(super) async fn report(
    settings: &Settings,
    from: &str,
    to: &str,
    group_by: GroupBy,
    format: ReportFormat,
) -> Done {
    use crate::reports;
    let from_t = reports::bound(from).map_err(Failure::usage)?;
    let to_t = reports::bound(to).map_err(Failure::usage)?;
    let group = group_by
        .name()
        .parse::<reports::GroupBy>()
        .map_err(Failure::usage)?;
    let store = open_for("report programme", settings, None).await?;
    let rows = reports::programme(&store.report_rows(from_t, to_t, false).await?, group);
    audit::record_as(
        store.as_ref(),
        "operator",
        "report.programme",
        serde_json::json!({"from": from, "to": to, "group_by": group_by.name(), "rows": rows.len()}),
    )
    .await?;
    match format {
        ReportFormat::Csv => print!("{}", reports::to_csv(&rows)),
        ReportFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).map_err(Failure::failed)?
            )
        }
        ReportFormat::Table => {
            print!("{:<20}", "group");
            for m in reports::MEASURES {
                print!(" {m:>18}");
            }
            println!();
            for r in &rows {
                print!("{:<20}", r.group);
                for m in reports::MEASURES {
                    print!(" {:>18}", r.measures[m].to_string());
                }
                println!();
            }
            println!(
                "counts of 1 to 4 are shown as <5; all other counts are rounded to the nearest 5"
            );
        }
    }
    Ok(())
}

pub(super) async fn extract(
    settings: &Settings,
    from: &str,
    to: &str,
    format: ExtractFormat,
) -> Done {
    use crate::reports;
    let from_t = reports::bound(from).map_err(Failure::usage)?;
    let to_t = reports::bound(to).map_err(Failure::usage)?;
    let Some(key_settings) = settings.keys.pseudonym.get("reporting") else {
        return Err(Failure::usage(
            "keys.pseudonym.reporting is not configured: an extract is only ever pseudonymised",
        ));
    };
    let keys =
        crate::pseudonym::PseudonymKeys::load("reporting", key_settings).map_err(Failure::usage)?;
    let Some(list_file) = &settings.reporting.opt_out_file else {
        return Err(Failure::usage(
            "reporting.opt_out_file is not configured: the National Data Opt-out applies to extracts",
        ));
    };
    let opted_out = std::fs::read_to_string(list_file)
        .map_err(|e| format!("{}: {e}", list_file.display()))
        .and_then(|t| reports::opt_outs(&t))
        .map_err(Failure::failed)?;
    let storage_keys = crate::store::crypto::StorageKeys::load(settings.keys.storage.as_ref())
        .map_err(Failure::usage)?;
    let store = open_for(
        "report extract",
        settings,
        Some(std::sync::Arc::new(storage_keys)),
    )
    .await?;
    let rows = store.report_rows(from_t, to_t, true).await?;
    let (rows, left_out) = reports::extract(&rows, &keys, &opted_out);
    audit::record_as(
        store.as_ref(),
        "operator",
        "report.extract",
        serde_json::json!({"from": from, "to": to, "rows": rows.len(), "opted_out": left_out.opted_out, "purged": left_out.purged,
            "key_version": keys.key_version()}),
    )
    .await?;
    match format {
        ExtractFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(Failure::failed)?
        ),
        ExtractFormat::Csv => print!("{}", reports::extract_csv(&rows)),
    }
    eprintln!(
        "{} rows; {} left out under the National Data Opt-out; {} purged under retention",
        rows.len(),
        left_out.opted_out,
        left_out.purged
    );
    Ok(())
}
