//! Programme statistics and the commissioners' extract: `thrive-gateway report`.

use super::*;

pub(super) async fn report(
    settings: &Settings,
    from: &str,
    to: &str,
    group_by: &str,
    format: &str,
) -> ExitCode {
    use crate::reports;
    let parsed = (|| {
        Ok::<_, String>((
            reports::bound(from)?,
            reports::bound(to)?,
            group_by.parse::<reports::GroupBy>()?,
        ))
    })();
    let (from_t, to_t, group) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("thrive-gateway report programme: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match open_for("report programme", settings, None).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.report_rows(from_t, to_t, false).await {
        Ok(r) => reports::programme(&r, group),
        Err(e) => {
            eprintln!("thrive-gateway report programme: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(code) = audit::record_as(
        store.as_ref(),
        "operator",
        "report.programme",
        serde_json::json!({"from": from, "to": to, "group_by": group_by, "rows": rows.len()}),
    )
    .await
    {
        return code;
    }
    match format {
        "csv" => print!("{}", reports::to_csv(&rows)),
        "json" => match serde_json::to_string_pretty(&rows) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        "table" => {
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
        other => {
            eprintln!("--format must be table, csv or json, not {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

pub(super) async fn extract(settings: &Settings, from: &str, to: &str, format: &str) -> ExitCode {
    use crate::reports;
    let fail = |e: String| {
        eprintln!("thrive-gateway report extract: {e}");
        ExitCode::FAILURE
    };
    let (from_t, to_t) = match (reports::bound(from), reports::bound(to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    if format != "csv" && format != "json" {
        return fail(format!("--format must be csv or json, not {format}"));
    }
    let Some(key_settings) = settings.keys.pseudonym.get("reporting") else {
        return fail(
            "keys.pseudonym.reporting is not configured: an extract is only ever pseudonymised"
                .into(),
        );
    };
    let keys = match crate::pseudonym::PseudonymKeys::load("reporting", key_settings) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let Some(list_file) = &settings.reporting.opt_out_file else {
        return fail("reporting.opt_out_file is not configured: the National Data Opt-out applies to extracts".into());
    };
    let opted_out = match std::fs::read_to_string(list_file)
        .map_err(|e| format!("{}: {e}", list_file.display()))
        .and_then(|t| reports::opt_outs(&t))
    {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let storage_keys = match crate::store::crypto::StorageKeys::load(settings.keys.storage.as_ref())
    {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => return fail(e.to_string()),
    };
    let store = match open_for("report extract", settings, Some(storage_keys)).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.report_rows(from_t, to_t, true).await {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let (rows, left_out) = reports::extract(&rows, &keys, &opted_out);
    if let Err(code) = audit::record_as(
        store.as_ref(),
        "operator",
        "report.extract",
        serde_json::json!({"from": from, "to": to, "rows": rows.len(), "opted_out": left_out.opted_out, "purged": left_out.purged,
            "key_version": keys.key_version()}),
    )
    .await
    {
        return code;
    }
    if format == "json" {
        match serde_json::to_string_pretty(&rows) {
            Ok(t) => println!("{t}"),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        print!("{}", reports::extract_csv(&rows));
    }
    eprintln!(
        "{} rows; {} left out under the National Data Opt-out; {} purged under retention",
        rows.len(),
        left_out.opted_out,
        left_out.purged
    );
    ExitCode::SUCCESS
}
