//! Operators' pages: the delivery queue with its filters, one delivery and its
//! attempts, replay and resolve of dead letters, pause and resume of recipients (each
//! with a confirmation step), and a referral's timeline.

use super::layout::{
    Field, FieldError, Section, age, csrf_field, error_summary, page, select, summary, table_head,
    tag, when,
};
use super::{
    ConsoleError, CsrfForm, User, html_response, record_allowed, record_field_errors,
    record_refusal,
};
use crate::app::AppState;
use crate::config::console::ConsoleRole;
use crate::operations::{self, DeadLetterAction};
use crate::outcome::RecCode;
use crate::store::{DeliveryFilter, DeliveryState, DeliveryView, ShownState};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use fhir_sdk::time::OffsetDateTime;
use maud::{Markup, html};
use std::collections::HashMap;

type Params = web::Query<HashMap<String, String>>;

fn param<'a>(q: &'a Params, name: &str) -> &'a str {
    q.get(name).map(|s| s.trim()).unwrap_or_default()
}

fn state_tag(d: &DeliveryView) -> Markup {
    match (d.state, d.resolved_at) {
        (DeliveryState::Dead, Some(_)) => tag("Resolved", "grey"),
        (DeliveryState::Dead, None) => tag("Dead letter", "red"),
        (DeliveryState::Delivered, _) => tag("Delivered", "green"),
        (DeliveryState::Cancelled, _) => tag("Cancelled", "grey"),
        (_, _) if d.attempts > 0 => tag("Retrying", "orange"),
        _ => tag("Queued", ""),
    }
}

/// A success message after an action, from `?done=`.
fn banner(done: &str) -> Markup {
    let text = match done {
        "replayed" => {
            "The dead letter is queued again. The worker checks consent and the referral's state before it sends it."
        }
        "resolved" => "The dead letter is resolved: it will not be sent.",
        "paused" => {
            "Deliveries to this recipient are paused. Referrals are still accepted and queued."
        }
        "resumed" => "Deliveries to this recipient are resumed.",
        _ => return html! {},
    };
    html! {
        div class="nhsuk-inset-text" role="status" {
            span class="nhsuk-u-visually-hidden" { "Information: " }
            p { (text) }
        }
    }
}

async fn list(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let action = "operator.deliveries.list";
    let principal = super::require(&gw, &user, ConsoleRole::Operator, action).await?;
    let (recipient, state, since) = (
        param(&query, "recipient"),
        param(&query, "state"),
        param(&query, "since"),
    );
    let mut errors = Vec::new();
    if !recipient.is_empty() && !gw.recipients.contains(recipient) {
        errors.push(FieldError {
            field: "recipient",
            message: "Choose a recipient from the list".into(),
        });
    }
    let shown_state = ShownState::parse(state);
    if !state.is_empty() && shown_state.is_none() {
        errors.push(FieldError {
            field: "state",
            message: "Choose a state from the list".into(),
        });
    }
    let since_at = crate::reports::bound(since).ok();
    if !since.is_empty() && since_at.is_none() {
        errors.push(FieldError {
            field: "since",
            message: "Enter a date as YYYY-MM-DD, for example 2026-12-01".into(),
        });
    }
    let mut rows = Vec::new();
    if errors.is_empty() {
        let filter = DeliveryFilter {
            dead_only: false,
            recipient: (!recipient.is_empty()).then(|| recipient.to_owned()),
            state: shown_state,
            since: since_at,
        };
        rows = operations::list(gw.store.as_ref(), &filter, 100).await?;
        record_allowed(
            &gw,
            &principal,
            action,
            200,
            serde_json::json!({
                "dead_only": false,
                "recipient": filter.recipient,
                "state": filter.state.map(ShownState::as_str),
                "count": rows.len(),
            }),
            |_| {},
        )
        .await?;
    } else {
        record_field_errors(&gw, &principal, action, &errors).await;
    }
    let recipients =
        operations::recipients(gw.store.as_ref(), &gw.recipients, OffsetDateTime::now_utc())
            .await?;
    record_allowed(
        &gw,
        &principal,
        "operator.recipients.list",
        200,
        serde_json::json!({"count": recipients.len()}),
        |_| {},
    )
    .await?;
    let mut recipient_options = vec![(String::new(), "Any recipient".to_owned())];
    recipient_options.extend(gw.recipients.iter().map(|r| (r.to_owned(), r.to_owned())));
    let state_options: Vec<(String, String)> = [
        ("", "Any state"),
        ("queued", "Queued"),
        ("dead", "Dead letters"),
        ("delivered", "Delivered"),
        ("cancelled", "Cancelled"),
        ("resolved", "Resolved"),
    ]
    .iter()
    .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
    .collect();
    let status = super::layout::status_of(&errors);
    let body = html! {
        (error_summary(&errors))
        h1 { "Deliveries" }
        (banner(param(&query, "done")))
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Recipients" }
            thead class="nhsuk-table__head" {
                tr class="nhsuk-table__row" {
                    th class="nhsuk-table__header" scope="col" { "Recipient" }
                    th class="nhsuk-table__header" scope="col" { "State" }
                    th class="nhsuk-table__header nhsuk-table__header--numeric" scope="col" { "Queued" }
                    th class="nhsuk-table__header" scope="col" { "Oldest waiting" }
                    th class="nhsuk-table__header" scope="col" { span class="nhsuk-u-visually-hidden" { "Action" } }
                }
            }
            tbody class="nhsuk-table__body" {
                @for r in &recipients {
                    tr class="nhsuk-table__row" {
                        td class="nhsuk-table__cell" { (r.recipient) }
                        td class="nhsuk-table__cell" {
                            @if r.paused { (tag("Paused", "yellow")) } @else { (tag("Sending", "green")) }
                        }
                        td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (r.queued) }
                        td class="nhsuk-table__cell" { (r.oldest_queued_seconds.map(age).unwrap_or_else(|| "–".into())) }
                        td class="nhsuk-table__cell" {
                            @let verb = if r.paused { "resume" } else { "pause" };
                            a href={ "/console/recipients/" (super::encode(&r.recipient)) "/" (verb) } {
                                @if r.paused { "Resume" } @else { "Pause" }
                                span class="nhsuk-u-visually-hidden" { " deliveries to " (r.recipient) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Find deliveries" }
        form method="get" action="/console/deliveries" novalidate {
            div class="console-actions" {
                (select("recipient", "Recipient", &recipient_options, recipient, &errors))
                (select("state", "State", &state_options, state, &errors))
                (Field::text("since", "Queued on or after", since).date().hint("For example 2026-12-01").render(&errors))
            }
            button class="nhsuk-button nhsuk-button--secondary" type="submit" data-module="nhsuk-button" { "Show deliveries" }
        }
        @if errors.is_empty() {
            (deliveries_table(&rows))
        }
    };
    Ok(html_response(
        status,
        page("Deliveries", Some(&user), Section::Deliveries, body),
    ))
}

fn deliveries_table(rows: &[DeliveryView]) -> Markup {
    let now = OffsetDateTime::now_utc();
    html! {
        @if rows.is_empty() {
            p { "No deliveries match." }
        } @else {
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption" { "Deliveries, newest first (at most 100)" }
                (table_head(&[("Referral", false), ("Recipient", false), ("Kind", false), ("State", false), ("Attempts", true), ("Age", false), ("Last error", false)]))
                tbody class="nhsuk-table__body" {
                    @for d in rows {
                        tr class="nhsuk-table__row" {
                            td class="nhsuk-table__cell" {
                                a href={ "/console/deliveries/" (d.id) } {
                                    (d.reference.as_deref().unwrap_or("(referral missing)"))
                                }
                            }
                            td class="nhsuk-table__cell" { (d.provider) }
                            td class="nhsuk-table__cell" { (d.kind.as_str()) }
                            td class="nhsuk-table__cell" { (state_tag(d)) }
                            td class="nhsuk-table__cell nhsuk-table__cell--numeric" { (d.attempts) }
                            td class="nhsuk-table__cell" { (age((now - d.created_at).whole_seconds().max(0))) }
                            td class="nhsuk-table__cell" { (d.last_error.as_deref().unwrap_or("–")) }
                        }
                    }
                }
            }
        }
    }
}

/// The delivery `id` names, or a 404 page (recorded under `action`).
async fn find(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
    id: &str,
) -> Result<operations::DeliveryDetail, ConsoleError> {
    let found = if uuid::Uuid::parse_str(id).is_ok() {
        operations::show(gw.store.as_ref(), id).await?
    } else {
        None
    };
    match found {
        Some(d) => Ok(d),
        None => {
            record_refusal(
                gw,
                principal,
                action,
                RecCode::NotFound,
                "id",
                "no delivery has this id",
            )
            .await;
            Err(ConsoleError::NotFound("No delivery has this id.".into()))
        }
    }
}

async fn show(
    gw: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let detail = shown(&gw, &user, &id).await?;
    let d = &detail.delivery;
    let dead = d.state == DeliveryState::Dead && d.resolved_at.is_none();
    let reference = d
        .reference
        .clone()
        .unwrap_or_else(|| d.referral_id.to_string());
    let body = html! {
        h1 { "Delivery of " (reference) }
        (banner(param(&query, "done")))
        (summary(&[
            ("State", state_tag(d)),
            ("Referral", html! { a href={ "/console/referrals?key=" (super::encode(&reference)) } { (reference) } }),
            ("Recipient", html! { (d.provider) }),
            ("Kind", html! { (d.kind.as_str()) }),
            ("Attempts", html! { (d.attempts) }),
            ("Queued", html! { (when(d.created_at)) }),
            ("Next attempt", html! { @if d.state == DeliveryState::Queued { (when(d.next_attempt_at)) } @else { "–" } }),
            ("Last error", html! { (d.last_error.as_deref().unwrap_or("–")) }),
            ("Request id", html! { code { (d.request_id) } }),
        ]))
        @if dead {
            div class="console-actions" {
                a class="nhsuk-button" href={ "/console/deliveries/" (d.id) "/replay" } draggable="false" { "Replay" }
                a class="nhsuk-button nhsuk-button--secondary" href={ "/console/deliveries/" (d.id) "/resolve" } draggable="false" { "Resolve" }
            }
        }
        h2 { "Attempts" }
        @if detail.attempts.is_empty() {
            p { "No attempt yet." }
        } @else {
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Attempts, oldest first" }
                (table_head(&[("When", false), ("Outcome", false), ("HTTP", false), ("Duration", false), ("Reason", false), ("Audit record", false)]))
                tbody class="nhsuk-table__body" {
                    @for a in &detail.attempts {
                        tr class="nhsuk-table__row" {
                            td class="nhsuk-table__cell" { (when(a.at)) }
                            td class="nhsuk-table__cell" { (a.outcome) }
                            td class="nhsuk-table__cell" { (a.http_status.map(|s| s.to_string()).unwrap_or_else(|| "–".into())) }
                            td class="nhsuk-table__cell" { (a.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "–".into())) }
                            td class="nhsuk-table__cell" { (a.reason.as_deref().unwrap_or("–")) }
                            td class="nhsuk-table__cell" { (a.seq.map(|s| s.to_string()).unwrap_or_else(|| "pending".into())) }
                        }
                    }
                }
            }
        }
        p { a href="/console/deliveries" { "Back to deliveries" } }
    };
    Ok(html_response(
        StatusCode::OK,
        page(
            &format!("Delivery of {reference}"),
            Some(&user),
            Section::Deliveries,
            body,
        ),
    ))
}

/// One delivery with its attempts, read for an operator and recorded as the API's
/// `operator.deliveries.show` records it.
async fn shown(
    gw: &AppState,
    user: &User,
    id: &str,
) -> Result<operations::DeliveryDetail, ConsoleError> {
    let action = "operator.deliveries.show";
    let principal = super::require(gw, user, ConsoleRole::Operator, action).await?;
    let detail = find(gw, &principal, action, id).await?;
    let d = &detail.delivery;
    record_allowed(
        gw,
        &principal,
        action,
        200,
        serde_json::json!({"delivery_id": id}),
        |r| {
            r.referral_id = Some(d.referral_id.to_string());
            r.recipient = Some(d.provider.clone());
        },
    )
    .await?;
    Ok(detail)
}

/// What one dead-letter verb is called where people and the audit trail see it.
struct Verb {
    action: &'static str,
    status: u16,
    question: &'static str,
    button: &'static str,
    explain: &'static str,
    done: &'static str,
    /// The API's "cannot be ..." for a dead letter already resolved.
    refused: &'static str,
}

fn verb(name: &str) -> Option<Verb> {
    match name {
        "replay" => Some(Verb {
            action: "operator.deliveries.replay",
            status: 202,
            question: "Replay this dead letter?",
            button: "Yes, replay it",
            explain: "It goes back in the queue. Before it is sent, the worker checks the referral's consent and state again.",
            done: "replayed",
            refused: "replayed",
        }),
        "resolve" => Some(Verb {
            action: "operator.deliveries.resolve",
            status: 200,
            question: "Resolve this dead letter?",
            button: "Yes, resolve it",
            explain: "It will never be sent, and no longer holds back the retention purge of the referral's personal data.",
            done: "resolved",
            refused: "resolved again",
        }),
        _ => None,
    }
}

async fn confirm_dead_letter(
    gw: web::Data<AppState>,
    user: User,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ConsoleError> {
    let (id, name) = path.into_inner();
    let verb = verb(&name).ok_or_else(|| ConsoleError::NotFound("No such action.".into()))?;
    // Asking is not doing: the page reads the delivery, as the API's show does.
    let detail = shown(&gw, &user, &id).await?;
    let d = &detail.delivery;
    if d.state != DeliveryState::Dead || d.resolved_at.is_some() {
        return Err(ConsoleError::NotFound(
            "This delivery is not a dead letter waiting for an operator.".into(),
        ));
    }
    let reference = d
        .reference
        .clone()
        .unwrap_or_else(|| d.referral_id.to_string());
    let body = html! {
        h1 { (verb.question) }
        (summary(&[
            ("Referral", html! { (reference) }),
            ("Recipient", html! { (d.provider) }),
            ("Attempts", html! { (d.attempts) }),
            ("Last error", html! { (d.last_error.as_deref().unwrap_or("–")) }),
        ]))
        p { (verb.explain) }
        form method="post" action={ "/console/deliveries/" (d.id) "/" (name) } novalidate {
            (csrf_field(&user.csrf))
            div class="console-actions" {
                button class="nhsuk-button" type="submit" data-module="nhsuk-button" { (verb.button) }
                a href={ "/console/deliveries/" (d.id) } { "Cancel" }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page(verb.question, Some(&user), Section::Deliveries, body),
    ))
}

async fn act_on_dead_letter(
    gw: web::Data<AppState>,
    user: User,
    path: web::Path<(String, String)>,
    form: Option<web::Form<CsrfForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let sent = form.map(|f| f.into_inner().csrf).unwrap_or_default();
    let (id, name) = path.into_inner();
    let verb = verb(&name).ok_or_else(|| ConsoleError::NotFound("No such action.".into()))?;
    let principal =
        super::form_action(&gw, &user, ConsoleRole::Operator, verb.action, &sent).await?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(no_dead_letter(&gw, &principal, verb.action).await);
    }
    let ctx = crate::app::AuditContext {
        action: verb.action,
        principal: Some(&principal),
        ids: None,
    };
    let record = ctx.record(
        "accepted",
        verb.status,
        None,
        serde_json::json!({"delivery_id": id}),
    );
    let result =
        operations::act_on_dead_letter(gw.store.as_ref(), name == "replay", &id, record).await?;
    match result {
        DeadLetterAction::Done => Ok(HttpResponse::SeeOther()
            .insert_header((
                header::LOCATION,
                format!("/console/deliveries/{id}?done={}", verb.done),
            ))
            .finish()),
        DeadLetterAction::Resolved => {
            let text = format!(
                "this dead letter was resolved by an operator and cannot be {}",
                verb.refused
            );
            record_refusal(&gw, &principal, verb.action, RecCode::Conflict, "id", &text).await;
            Err(ConsoleError::Conflict(format!(
                "This dead letter was resolved by an operator and cannot be {}.",
                verb.refused
            )))
        }
        DeadLetterAction::NotDeadLetter => Err(no_dead_letter(&gw, &principal, verb.action).await),
    }
}

/// The refusal of an id that is no dead letter, recorded as the API records it.
async fn no_dead_letter(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
) -> ConsoleError {
    let text = "no dead letter has this id";
    record_refusal(gw, principal, action, RecCode::NotFound, "id", text).await;
    ConsoleError::NotFound("This delivery is not a dead letter waiting for an operator.".into())
}

fn pause_verb(name: &str) -> Option<(bool, &'static str)> {
    match name {
        "pause" => Some((true, "operator.recipients.pause")),
        "resume" => Some((false, "operator.recipients.resume")),
        _ => None,
    }
}

async fn known_recipient(
    gw: &AppState,
    principal: &crate::auth::Principal,
    action: &str,
    recipient: &str,
) -> Result<(), ConsoleError> {
    if gw.recipients.contains(recipient) {
        return Ok(());
    }
    let text = format!(
        "no provider or GP callback has this id (configured: {})",
        gw.recipients.listed()
    );
    record_refusal(gw, principal, action, RecCode::NotFound, "recipient", &text).await;
    Err(ConsoleError::NotFound(
        "No provider or GP callback has this id.".into(),
    ))
}

async fn confirm_pause(
    gw: web::Data<AppState>,
    user: User,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ConsoleError> {
    let (recipient, name) = path.into_inner();
    let (paused, _) =
        pause_verb(&name).ok_or_else(|| ConsoleError::NotFound("No such action.".into()))?;
    // Asking is not doing: refusals here are recorded as a read of the recipients.
    let action = "operator.recipients.list";
    let principal = super::require(&gw, &user, ConsoleRole::Operator, action).await?;
    known_recipient(&gw, &principal, action, &recipient).await?;
    let title = if paused {
        format!("Pause deliveries to {recipient}?")
    } else {
        format!("Resume deliveries to {recipient}?")
    };
    let body = html! {
        h1 { (title) }
        @if paused {
            p { "Nothing is sent to " (recipient) " until an operator resumes it. Referrals are still accepted and queued, and are sent once it resumes." }
        } @else {
            p { "Queued deliveries to " (recipient) " are sent again, oldest first, within its limits." }
        }
        form method="post" action={ "/console/recipients/" (super::encode(&recipient)) "/" (name) } novalidate {
            (csrf_field(&user.csrf))
            div class="console-actions" {
                button class={ "nhsuk-button" @if paused { " nhsuk-button--warning" } } type="submit" data-module="nhsuk-button" {
                    @if paused { "Yes, pause deliveries" } @else { "Yes, resume deliveries" }
                }
                a href="/console/deliveries" { "Cancel" }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page(&title, Some(&user), Section::Deliveries, body),
    ))
}

async fn set_pause(
    gw: web::Data<AppState>,
    user: User,
    path: web::Path<(String, String)>,
    form: Option<web::Form<CsrfForm>>,
) -> Result<HttpResponse, ConsoleError> {
    let sent = form.map(|f| f.into_inner().csrf).unwrap_or_default();
    let (recipient, name) = path.into_inner();
    let (paused, action) =
        pause_verb(&name).ok_or_else(|| ConsoleError::NotFound("No such action.".into()))?;
    let principal = super::form_action(&gw, &user, ConsoleRole::Operator, action, &sent).await?;
    known_recipient(&gw, &principal, action, &recipient).await?;
    let ctx = crate::app::AuditContext {
        action,
        principal: Some(&principal),
        ids: None,
    };
    let record = ctx.record(
        "accepted",
        200,
        None,
        serde_json::json!({"recipient": recipient}),
    );
    operations::pause(
        gw.store.as_ref(),
        &gw.recipients,
        &recipient,
        paused,
        record,
    )
    .await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/console/deliveries?done={name}d"),
        ))
        .finish())
}

async fn referrals(
    gw: web::Data<AppState>,
    user: User,
    query: Params,
) -> Result<HttpResponse, ConsoleError> {
    let action = "operator.referrals.show";
    let principal = super::require(&gw, &user, ConsoleRole::Operator, action).await?;
    let asked = query.get("key").map(|k| k.trim().to_owned());
    let mut errors = Vec::new();
    let mut found = Vec::new();
    match asked.as_deref() {
        None => {}
        Some("") => errors.push(FieldError {
            field: "key",
            message: "Enter a reference, referral id or correlation id".into(),
        }),
        Some(key) => {
            let referrals = gw.store.find_referrals(key).await?;
            if referrals.is_empty() {
                let text =
                    "no referral has this reference, id, correlation id or sender identifier";
                record_refusal(&gw, &principal, action, RecCode::NotFound, "key", text).await;
                errors.push(FieldError {
                    field: "key",
                    message:
                        "No referral has this reference, id, correlation id or sender identifier"
                            .into(),
                });
            } else {
                let ids: Vec<String> = referrals.iter().map(|r| r.id.to_string()).collect();
                record_allowed(
                    &gw,
                    &principal,
                    action,
                    200,
                    serde_json::json!({"count": ids.len(), "referrals": ids}),
                    |r| {
                        if let [only] = ids.as_slice() {
                            r.referral_id = Some(only.clone());
                        }
                    },
                )
                .await?;
                found = operations::timelines(gw.store.as_ref(), referrals).await?;
            }
        }
    }
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let body = html! {
        (error_summary(&errors))
        h1 { "Find a referral" }
        form method="get" action="/console/referrals" novalidate {
            (Field::text("key", "Reference, referral id or correlation id", asked.as_deref().unwrap_or_default())
                .hint("For example TIW-7K3M9Q2X, or the X-Correlation-Id the GP system sent")
                .width("nhsuk-input--width-30")
                .render(&errors))
            button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Find" }
        }
        @for t in &found {
            (super::audit::timeline(t))
        }
    };
    Ok(html_response(
        status,
        page("Find a referral", Some(&user), Section::Referrals, body),
    ))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/deliveries", web::get().to(list))
        .route("/deliveries/{id}", web::get().to(show))
        .route(
            "/deliveries/{id}/{verb}",
            web::get().to(confirm_dead_letter),
        )
        .route(
            "/deliveries/{id}/{verb}",
            web::post().to(act_on_dead_letter),
        )
        .route("/recipients/{id}/{verb}", web::get().to(confirm_pause))
        .route("/recipients/{id}/{verb}", web::post().to(set_pause))
        .route("/referrals", web::get().to(referrals));
}
