//! The programme report for both roles: the same published figures as
//! `GET /reports/v1/programme` (counts of 1 to 4 shown as `<5`, the rest rounded to
//! the nearest 5), as a table with a chart, and as CSV.

use super::chart::{self, Bar};
use super::layout::{Field, FieldError, Section, error_summary, page, select};
use super::{ConsoleError, User, html_response, record_allowed, record_field_errors};
use crate::app::AppState;
use crate::reports::{GroupBy, MEASURES, Published, Row};
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use fhir_sdk::time::{Duration, OffsetDateTime};
use maud::html;
use std::collections::HashMap;

type Params = web::Query<HashMap<String, String>>;

/// The report's period and grouping, defaulted when the form was not sent: the year
/// so far, by provider.
struct Asked {
    from: String,
    to: String,
    group_by: String,
}

fn asked(q: &Params) -> Asked {
    let today = OffsetDateTime::now_utc().date();
    let get =
        |name: &str, default: String| q.get(name).map(|v| v.trim().to_owned()).unwrap_or(default);
    Asked {
        from: get("from", format!("{}-01-01", today.year())),
        to: get("to", (today + Duration::days(1)).to_string()),
        group_by: get("group_by", "provider".into()),
    }
}

/// The published rows, or the form's errors (recorded as the API records them).
async fn rows(
    gw: &AppState,
    user: &User,
    a: &Asked,
) -> Result<Result<Vec<Row>, Vec<FieldError>>, ConsoleError> {
    let principal = user.principal(user.first_role());
    let mut errors = Vec::new();
    let from = crate::reports::bound(&a.from).ok();
    if from.is_none() {
        errors.push(FieldError {
            field: "from",
            message: "Enter the from date as YYYY-MM-DD".into(),
        });
    }
    let to = crate::reports::bound(&a.to).ok();
    if to.is_none() {
        errors.push(FieldError {
            field: "to",
            message: "Enter the to date as YYYY-MM-DD".into(),
        });
    }
    let group_by = a.group_by.parse::<GroupBy>().ok();
    if group_by.is_none() {
        errors.push(FieldError {
            field: "group_by",
            message: "Choose provider, locality, programme or month".into(),
        });
    }
    let (Some(from), Some(to), Some(group_by)) = (from, to, group_by) else {
        record_field_errors(gw, &principal, "report.programme", &errors).await;
        return Ok(Err(errors));
    };
    let rows = gw.store.report_rows(from, to, false).await?;
    record_allowed(
        gw,
        &principal,
        "report.programme",
        200,
        serde_json::json!({"from": a.from, "to": a.to, "group_by": a.group_by}),
        |_| {},
    )
    .await?;
    Ok(Ok(crate::reports::programme(&rows, group_by)))
}

fn measure_name(m: &str) -> String {
    let spaced = m.replace('_', " ");
    let mut chars = spaced.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

async fn report(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let a = asked(&query);
    let result = rows(&gw, &user, &a).await?;
    let errors = result.as_ref().err().cloned().unwrap_or_default();
    let groups = vec![
        ("provider".to_owned(), "Provider".to_owned()),
        ("locality".to_owned(), "Locality".to_owned()),
        ("programme".to_owned(), "Programme".to_owned()),
        ("month".to_owned(), "Month".to_owned()),
    ];
    let csv_link = {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("from", &a.from)
            .append_pair("to", &a.to)
            .append_pair("group_by", &a.group_by)
            .finish();
        format!("/console/report.csv?{q}")
    };
    let status = super::layout::status_of(&errors);
    let body = html! {
        (error_summary(&errors))
        h1 { "Programme report" }
        p { "Referrals received in the period and the milestones they reached. Counts of 1 to 4 are shown as <5; all other counts are rounded to the nearest 5." }
        form method="get" action="/console/report" novalidate {
            div class="console-actions" {
                (Field::text("from", "From", &a.from).date().hint("YYYY-MM-DD").render(&errors))
                (Field::text("to", "Up to", &a.to).date().hint("YYYY-MM-DD").render(&errors))
                (select("group_by", "Group by", &groups, &a.group_by, &errors))
            }
            button class="nhsuk-button nhsuk-button--secondary" type="submit" data-module="nhsuk-button" { "Show report" }
        }
        @if let Ok(rows) = &result {
            @let bars: Vec<Bar> = rows.iter().filter(|r| r.group != "total").map(|r| Bar {
                label: r.group.clone(),
                value: match r.measures["received"] { Published::Rounded(n) => n, Published::Suppressed(_) => 0 },
                kind: "",
                shown: match r.measures["received"] { Published::Suppressed(s) => Some(s), Published::Rounded(_) => None },
            }).collect();
            h2 { "Referrals received" }
            (chart::bars("report-received", "Referrals received by group", &bars))
            div class="nhsuk-table-responsive" {
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption" { "Milestones by " (a.group_by) }
                    thead class="nhsuk-table__head" {
                        tr class="nhsuk-table__row" {
                            th class="nhsuk-table__header" scope="col" { "Group" }
                            @for m in MEASURES { th class="nhsuk-table__header nhsuk-table__header--numeric" scope="col" { (measure_name(m)) } }
                        }
                    }
                    tbody class="nhsuk-table__body" {
                        @for r in rows {
                            tr class="nhsuk-table__row" {
                                th class="nhsuk-table__header" scope="row" { (r.group) }
                                @for m in MEASURES { td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (r.measures[m]) } }
                            }
                        }
                    }
                }
            }
            p { a href=(csv_link) download { "Download this report as CSV" } }
        }
    };
    Ok(html_response(
        status,
        page("Programme report", Some(&user), Section::Report, body),
    ))
}

async fn report_csv(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let a = asked(&query);
    match rows(&gw, &user, &a).await? {
        Ok(rows) => Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"programme-{}-{}.csv\"", a.from, a.to),
            ))
            .body(crate::reports::to_csv(&rows))),
        Err(_) => Err(ConsoleError::NotFound(
            "The report's period or grouping is not valid: go back to the report and correct it."
                .into(),
        )),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/report", web::get().to(report))
        .route("/report.csv", web::get().to(report_csv));
}
