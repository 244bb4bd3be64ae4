//! Auditors' pages: the trail with its filters, one record, verification of the
//! chain, the FHIR or CSV export, and subject access by NHS number. The NHS number is
//! taken only from a POSTed form, so it never appears in a URL, a log or the
//! browser's history, and is turned into the audit pseudonym at once.

use super::layout::{
    Field, FieldError, Section, csrf_field, error_summary, page, select, summary, table_head, tag,
    when,
};
use super::{
    ConsoleError, CsrfForm, User, html_response, record_allowed, record_field_errors,
    record_refusal,
};
use crate::app::AppState;
use crate::audit::export::{ExportPlan, Format};
use crate::config::console::ConsoleRole;
use crate::domain::NhsNumber;
use crate::operations::Timeline;
use crate::outcome::RecCode;
use crate::store::{AuditFilter, AuditRow};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use maud::{Markup, html};
use std::collections::HashMap;

type Params = web::Query<HashMap<String, String>>;

const PAGE: i64 = 50;

fn param<'a>(q: &'a Params, name: &str) -> &'a str {
    q.get(name).map(|s| s.trim()).unwrap_or_default()
}

fn date_error(field: &'static str) -> FieldError {
    FieldError {
        field,
        message: format!(
            "Enter the {} date as YYYY-MM-DD, for example 2026-12-01",
            if field == "from" { "from" } else { "to" }
        ),
    }
}

/// A date field's value: `None` when empty, an error when it is not a date.
fn date(
    q: &Params,
    field: &'static str,
    errors: &mut Vec<FieldError>,
) -> Option<fhir_sdk::time::OffsetDateTime> {
    let v = param(q, field);
    if v.is_empty() {
        return None;
    }
    let parsed = crate::reports::bound(v).ok();
    if parsed.is_none() {
        errors.push(date_error(field));
    }
    parsed
}

fn records_table(rows: &[AuditRow]) -> Markup {
    html! {
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Audit records, in chain order" }
            (table_head(&[("Record", false), ("When", false), ("Action", false), ("Outcome", false), ("Who", false), ("Recipient", false)]))
            tbody class="nhsuk-table__body" {
                @for r in rows {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" {
                            @if let Some(seq) = r.seq { a href={ "/console/audit/records/" (seq) } { (seq) } } @else { "pending" }
                        }
                        td class="nhsuk-table__cell" { (when(r.recorded_at)) }
                        td class="nhsuk-table__cell" { (r.action) }
                        td class="nhsuk-table__cell" {
                            (r.outcome) @if let Some(s) = r.http_status { " (" (s) ")" }
                        }
                        td class="nhsuk-table__cell" { (r.client_id.as_deref().unwrap_or("–")) }
                        td class="nhsuk-table__cell" { (r.recipient.as_deref().unwrap_or("–")) }
                    }
                }
            }
        }
    }
}

async fn list(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let action = "audit.list";
    let principal = super::require(&gw, &user, ConsoleRole::Auditor, action).await?;
    let mut errors = Vec::new();
    let from = date(&query, "from", &mut errors);
    let to = date(&query, "to", &mut errors);
    let after_text = param(&query, "after");
    let after = match after_text {
        "" => 0,
        v => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .unwrap_or_else(|| {
                errors.push(FieldError {
                    field: "after",
                    message: "The page position must be a record number".into(),
                });
                0
            }),
    };
    let text = |name: &str| {
        Some(param(&query, name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let filter = AuditFilter {
        from,
        to,
        referral_id: text("referral"),
        action: text("action"),
        recipient: text("recipient"),
        client_id: text("client"),
        subjects: Vec::new(),
    };
    let mut rows = Vec::new();
    if errors.is_empty() {
        rows = gw.store.audit_query(&filter, after, PAGE).await?;
        let asked = serde_json::json!({"from": text("from"), "to": text("to"), "referral": text("referral"),
            "action": text("action"), "recipient": text("recipient"), "client": text("client")});
        record_allowed(
            &gw,
            &principal,
            action,
            200,
            serde_json::json!({"filter": asked, "after": after, "count": rows.len()}),
            |_| {},
        )
        .await?;
    } else {
        record_field_errors(&gw, &principal, action, &errors).await;
    }
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().and_then(|r| r.seq))
        .flatten();
    let next_link = next.map(|seq| {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        for name in ["from", "to", "action", "referral", "recipient", "client"] {
            let v = param(&query, name);
            if !v.is_empty() {
                pairs.append_pair(name, v);
            }
        }
        pairs.append_pair("after", &seq.to_string());
        format!("/console/audit?{}", pairs.finish())
    });
    let status = super::layout::status_of(&errors);
    let body = html! {
        (error_summary(&errors))
        h1 { "Audit trail" }
        ul class="nhsuk-list" {
            li { a href="/console/audit/verify" { "Verify the audit chain" } }
            li { a href="/console/audit/export" { "Download an export (FHIR or CSV)" } }
            li { a href="/console/audit/subject" { "Subject access: everything about one person" } }
        }
        form method="get" action="/console/audit" novalidate {
            div class="console-actions" {
                (Field::text("from", "From", param(&query, "from")).date().hint("YYYY-MM-DD").render(&errors))
                (Field::text("to", "Up to", param(&query, "to")).date().hint("YYYY-MM-DD").render(&errors))
                (Field::text("action", "Action", param(&query, "action")).hint("For example referral.new").render(&errors))
            }
            div class="console-actions" {
                (Field::text("referral", "Referral id", param(&query, "referral")).render(&errors))
                (Field::text("recipient", "Recipient", param(&query, "recipient")).width("nhsuk-input--width-10").render(&errors))
                (Field::text("client", "Client", param(&query, "client")).width("nhsuk-input--width-10").render(&errors))
            }
            button class="nhsuk-button nhsuk-button--secondary" type="submit" data-module="nhsuk-button" { "Show records" }
        }
        @if errors.is_empty() {
            @if rows.is_empty() { p { "No records match." } } @else { (records_table(&rows)) }
            @if let Some(link) = next_link { p { a href=(link) { "Next " (PAGE) " records" } } }
        }
    };
    Ok(html_response(
        status,
        page("Audit trail", Some(&user), Section::Audit, body),
    ))
}

async fn record(
    gw: web::Data<AppState>,
    user: User,
    seq: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let action = "audit.read";
    let principal = super::require(&gw, &user, ConsoleRole::Auditor, action).await?;
    let wanted = seq.parse::<i64>().ok();
    let row = match wanted {
        Some(seq) => gw
            .store
            .audit_chain(seq.saturating_sub(1), 1)
            .await?
            .into_iter()
            .find(|r| r.seq == Some(seq)),
        None => None,
    };
    let Some(row) = row else {
        record_refusal(
            &gw,
            &principal,
            action,
            RecCode::NotFound,
            "seq",
            "no audit record has this number",
        )
        .await;
        return Err(ConsoleError::NotFound(
            "No audit record has this number.".into(),
        ));
    };
    record_allowed(
        &gw,
        &principal,
        action,
        200,
        serde_json::json!({"seq": row.seq}),
        |_| {},
    )
    .await?;
    let detail: serde_json::Value = serde_json::from_str(&row.detail).unwrap_or_default();
    let text = |v: &Option<String>| html! { (v.as_deref().unwrap_or("–")) };
    let title = format!("Audit record {}", row.seq.unwrap_or_default());
    let body = html! {
        h1 { (title) }
        (summary(&[
            ("When", html! { (when(row.recorded_at)) }),
            ("Action", html! { (row.action) }),
            ("Outcome", html! { (row.outcome) @if let Some(s) = row.http_status { " (HTTP " (s) ")" } }),
            ("Client", text(&row.client_id)),
            ("Role", text(&row.role)),
            ("Referral", text(&row.referral_id)),
            ("Subject (pseudonym)", text(&row.subject)),
            ("Recipient", text(&row.recipient)),
            ("Request id", text(&row.request_id)),
            ("Correlation id", text(&row.correlation_id)),
            ("Mapping version", text(&row.mapping_version)),
            ("Key version", text(&row.key_version)),
            ("Previous hash", html! { code { (row.prev_hash.as_deref().unwrap_or("–")) } }),
            ("Hash", html! { code { (row.hash.as_deref().unwrap_or("–")) } }),
            ("Detail", html! { pre class="console-detail" { (serde_json::to_string_pretty(&detail).unwrap_or_default()) } }),
        ]))
        p { a href="/console/audit" { "Back to the audit trail" } }
    };
    Ok(html_response(
        StatusCode::OK,
        page(&title, Some(&user), Section::Audit, body),
    ))
}

async fn verify_page(gw: web::Data<AppState>, user: User) -> Result<HttpResponse, ConsoleError> {
    super::require(&gw, &user, ConsoleRole::Auditor, "audit.verify").await?;
    let body = html! {
        h1 { "Verify the audit chain" }
        p { "Verification reads every record in the chain, checks each hash and link, and checks every signed checkpoint. It may take a while on a long trail." }
        form method="post" action="/console/audit/verify" novalidate {
            (csrf_field(&user.csrf))
            button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Verify the audit chain" }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Verify the audit chain", Some(&user), Section::Audit, body),
    ))
}

async fn verify(
    gw: web::Data<AppState>,
    user: User,
    form: Option<web::Form<CsrfForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let sent = form.map(|f| f.into_inner().csrf).unwrap_or_default();
    let action = "audit.verify";
    let principal = super::form_action(&gw, &user, ConsoleRole::Auditor, action, &sent).await?;
    let v = crate::audit::verify(gw.store.as_ref(), gw.checkpoint_keys.as_ref()).await?;
    record_allowed(
        &gw,
        &principal,
        action,
        200,
        serde_json::json!({"intact": v.intact()}),
        |_| {},
    )
    .await?;
    let body = html! {
        h1 { "Verify the audit chain" }
        @if v.intact() {
            div class="nhsuk-card nhsuk-card--feature" {
                div class="nhsuk-card__content nhsuk-card__content--feature" {
                    h2 class="nhsuk-card__heading nhsuk-card__heading--feature" { "The audit chain is intact" }
                    p class="nhsuk-card__description" { "Every record's hash and link, and every signed checkpoint, checked out." }
                }
            }
        } @else {
            div class="nhsuk-error-summary" {
                div role="alert" {
                    h2 class="nhsuk-error-summary__heading" { "The audit chain is not intact" }
                    div class="nhsuk-error-summary__body" {
                        p {
                            @if let Some(problem) = &v.problem { (problem.to_string()) }
                            @if let Some(sealing) = &v.sealing { "Sealing failed: " (sealing) }
                        }
                    }
                }
            }
        }
        (summary(&[
            ("Result", if v.intact() { tag("Intact", "green") } else { tag("Broken", "red") }),
            ("Records checked", html! { (v.records) }),
            ("Signed checkpoints checked", html! { (v.checkpoints) }),
            ("Records waiting to be sealed", html! { (v.pending) }),
            ("Records from before the chain", html! { (v.legacy) }),
        ]))
        p { a href="/console/audit" { "Back to the audit trail" } }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Verify the audit chain", Some(&user), Section::Audit, body),
    ))
}

/// The export form, or the download when the form is filled in correctly.
async fn export(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let action = "audit.export";
    let principal = super::require(&gw, &user, ConsoleRole::Auditor, action).await?;
    let asked = !query.is_empty();
    let mut errors = Vec::new();
    let from = date(&query, "from", &mut errors);
    let to = date(&query, "to", &mut errors);
    if asked && param(&query, "from").is_empty() {
        errors.push(FieldError {
            field: "from",
            message: "Enter the from date".into(),
        });
    }
    if asked && param(&query, "to").is_empty() {
        errors.push(FieldError {
            field: "to",
            message: "Enter the to date".into(),
        });
    }
    let format_text = match param(&query, "format") {
        "" => "fhir",
        f => f,
    };
    let format = format_text.parse::<Format>().ok();
    if format.is_none() {
        errors.push(FieldError {
            field: "format",
            message: "Choose FHIR or CSV".into(),
        });
    }
    if let (true, Some(from), Some(to), Some(format), true) =
        (asked, from, to, format, errors.is_empty())
    {
        let plan = ExportPlan::new(
            gw.store.as_ref(),
            gw.checkpoint_signer.as_ref(),
            from,
            to,
            format,
        )
        .await?;
        record_allowed(
            &gw,
            &principal,
            action,
            200,
            serde_json::json!({
                "from": param(&query, "from"), "to": param(&query, "to"),
                "format": format_text, "count": plan.records(),
            }),
            |_| {},
        )
        .await?;
        let name = format!(
            "audit-{}-{}.{}",
            param(&query, "from"),
            param(&query, "to"),
            if format == Format::Csv { "csv" } else { "json" }
        );
        let content_type = plan.content_type();
        let body = plan.stream(gw.store.clone()).map(|chunk| {
            chunk.map(web::Bytes::from).map_err(|e| {
                tracing::error!(error = %e, "audit export failed part-way");
                actix_web::error::ErrorInternalServerError("audit export failed")
            })
        });
        return Ok(HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ))
            .streaming(body));
    }
    if asked {
        record_field_errors(&gw, &principal, action, &errors).await;
    }
    let formats = vec![
        (
            "fhir".to_owned(),
            "FHIR Bundle of AuditEvents (JSON)".to_owned(),
        ),
        ("csv".to_owned(), "CSV".to_owned()),
    ];
    let status = super::layout::status_of(&errors);
    let body = html! {
        (error_summary(&errors))
        h1 { "Download an export" }
        p { "The export holds every record of the period with the chain's links, and the signed checkpoints that cover it, so it can be checked away from the gateway." }
        form method="get" action="/console/audit/export" novalidate {
            div class="console-actions" {
                (Field::text("from", "From", param(&query, "from")).date().hint("YYYY-MM-DD").render(&errors))
                (Field::text("to", "Up to", param(&query, "to")).date().hint("YYYY-MM-DD").render(&errors))
            }
            (select("format", "Format", &formats, format_text, &errors))
            button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Download" }
        }
    };
    Ok(html_response(
        status,
        page("Download an export", Some(&user), Section::Audit, body),
    ))
}

fn subject_form(user: &User, errors: &[FieldError]) -> Markup {
    html! {
        form method="post" action="/console/audit/subject" novalidate autocomplete="off" {
            (csrf_field(&user.csrf))
            (Field::text("nhs_number", "NHS number", "")
                .hint("10 digits. It is sent only in this form: never in an address, and never stored.")
                .width("nhsuk-input--width-10")
                .render(errors))
            button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Search" }
        }
    }
}

async fn subject_page(gw: web::Data<AppState>, user: User) -> Result<HttpResponse, ConsoleError> {
    super::require(&gw, &user, ConsoleRole::Auditor, "audit.subjects").await?;
    let body = html! {
        h1 { "Subject access" }
        p { "Everything recorded about one person, and every disclosure of their data to a provider." }
        (subject_form(&user, &[]))
    };
    Ok(html_response(
        StatusCode::OK,
        page("Subject access", Some(&user), Section::Audit, body),
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
struct SubjectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    nhs_number: String,
}

async fn subject(
    gw: web::Data<AppState>,
    user: User,
    form: Option<web::Form<SubjectForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    let action = "audit.subjects";
    let principal =
        super::form_action(&gw, &user, ConsoleRole::Auditor, action, &form.csrf).await?;
    let digits: String = form
        .nhs_number
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let Ok(nhs) = NhsNumber::parse(&digits) else {
        let text = "nhs_number is not a valid NHS number (10 digits passing the Modulus 11 check)";
        record_refusal(
            &gw,
            &principal,
            action,
            RecCode::UnprocessableEntity,
            "nhs_number",
            text,
        )
        .await;
        let errors = [FieldError {
            field: "nhs_number",
            message: "Enter a valid NHS number: 10 digits, like 943 476 5919".into(),
        }];
        let body = html! {
            (error_summary(&errors))
            h1 { "Subject access" }
            (subject_form(&user, &errors))
        };
        return Ok(html_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            page("Subject access", Some(&user), Section::Audit, body),
        ));
    };
    let pseudonyms = gw.audit_keys.all_pseudonyms(nhs.expose());
    let active = gw.audit_keys.pseudonym(nhs.expose()).into_string();
    let filter = AuditFilter {
        subjects: pseudonyms.clone(),
        ..AuditFilter::default()
    };
    // Everything about the person, a page at a time: one answer holds it all.
    let mut rows: Vec<AuditRow> = Vec::new();
    loop {
        let after = rows.last().and_then(|r| r.seq).unwrap_or(0);
        let page = gw.store.audit_query(&filter, after, 1000).await?;
        let full = page.len() == 1000;
        rows.extend(page);
        if !full {
            break;
        }
    }
    let disclosures: Vec<&AuditRow> = rows
        .iter()
        .filter(|r| r.action == "delivery.referral" && r.outcome == "delivered")
        .collect();
    record_allowed(
        &gw,
        &principal,
        action,
        200,
        serde_json::json!({"after": 0, "records": rows.len(), "disclosures": disclosures.len()}),
        |r| r.subject = Some(active.clone()),
    )
    .await?;
    let referrals = gw.store.referrals_about(&pseudonyms).await?;
    record_allowed(
        &gw,
        &principal,
        "audit.referrals",
        200,
        serde_json::json!({"count": referrals.len()}),
        |r| r.subject = Some(active.clone()),
    )
    .await?;
    let timelines = crate::operations::timelines(gw.store.as_ref(), referrals).await?;
    let body = html! {
        h1 { "Subject access" }
        p { "For the NHS number entered (not shown again). Audit pseudonym: " code { (active) } }
        h2 { "Disclosures" }
        @if disclosures.is_empty() {
            p { "No data about this person was disclosed to a provider." }
        } @else {
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Disclosures" }
                (table_head(&[("When", false), ("To", false), ("Dataset version", false), ("Fields disclosed", false), ("Record", false)]))
                tbody class="nhsuk-table__body" {
                    @for r in &disclosures {
                        @let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
                        tr class="nhsuk-table__row" {
                            td class="nhsuk-table__cell" { (when(r.recorded_at)) }
                            td class="nhsuk-table__cell" { (r.recipient.as_deref().unwrap_or("–")) }
                            td class="nhsuk-table__cell" { (r.mapping_version.as_deref().unwrap_or("–")) }
                            td class="nhsuk-table__cell" {
                                @if let Some(fields) = detail["receipt"]["fields"].as_array() {
                                    (fields.iter().filter_map(|f| f["name"].as_str()).collect::<Vec<_>>().join(", "))
                                } @else { "–" }
                            }
                            td class="nhsuk-table__cell" {
                                @if let Some(seq) = r.seq { a href={ "/console/audit/records/" (seq) } { (seq) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Referrals (" (timelines.len()) ")" }
        @for t in &timelines { (timeline(t)) }
        h2 { "Every record about this person" }
        @if rows.is_empty() { p { "None." } } @else { (records_table(&rows)) }
        h2 { "Search again" }
        (subject_form(&user, &[]))
    };
    Ok(html_response(
        StatusCode::OK,
        page("Subject access", Some(&user), Section::Audit, body),
    ))
}

/// One referral and its story, as operators and auditors both see it: metadata only.
pub fn timeline(t: &Timeline) -> Markup {
    let r = &t.referral;
    html! {
        h2 { "Referral " (r.reference) }
        (summary(&[
            ("Status", html! { (r.status.as_str()) }),
            ("Milestone", html! { (r.milestone.as_str()) }),
            ("Programme", html! { (r.programme) }),
            ("Provider", html! { (r.provider) }),
            ("Practice", html! { (r.practice_ods) }),
            ("Referral id", html! { code { (r.id.to_string()) } }),
            ("Correlation id", html! { code { (r.correlation_id) } }),
            ("Received", html! { (when(r.created_at)) }),
            ("Personal data purged", html! { @match r.purged_at { Some(t) => (when(t)), None => "no" } }),
        ]))
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Timeline of " (r.reference) }
            (table_head(&[("When", false), ("Step", false), ("Outcome", false), ("Who", false), ("Why", false)]))
            tbody class="nhsuk-table__body" {
                @for s in &t.timeline {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" { (when(s.at)) }
                        td class="nhsuk-table__cell" { (s.action) @if let Some(to) = &s.recipient { " → " (to) } }
                        td class="nhsuk-table__cell" { (s.outcome) @if let Some(code) = s.http_status { " (" (code) ")" } }
                        td class="nhsuk-table__cell" { (s.actor.as_deref().unwrap_or("gateway")) }
                        td class="nhsuk-table__cell" {
                            (s.detail.iter().map(|(k, v)| format!("{k}: {}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect::<Vec<_>>().join("; "))
                        }
                    }
                }
            }
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(list))
        .route("/audit/records/{seq}", web::get().to(record))
        .route("/audit/verify", web::get().to(verify_page))
        .route("/audit/verify", web::post().to(verify))
        .route("/audit/export", web::get().to(export))
        .route("/audit/subject", web::get().to(subject_page))
        .route("/audit/subject", web::post().to(subject));
}
