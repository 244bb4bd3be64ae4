//! The page frame in the NHS design system (header, navigation, footer) and the
//! pieces every page repeats: the error summary, form fields, tables and buttons.

use super::session::User;
use crate::config::console::ConsoleRole;
use maud::{DOCTYPE, Markup, html};

/// The NHS logo, as the design system's header draws it.
const NHS_LOGO: &str = "M200 0v80H0V0h200Zm-27.5 5.5c-14.5 0-29 5-29 22 0 10.2 7.7 13.5 14.7 16.3l.7.3c5.4 2 10.1 3.9 10.1 8.4 0 6.5-8.5 7.5-14 7.5s-12.5-1.5-16-3.5L135 70c5.5 2 13.5 3.5 20 3.5 15.5 0 32-4.5 32-22.5 0-19.5-25.5-16.5-25.5-25.5 0-5.5 5.5-6.5 12.5-6.5a35 35 0 0 1 14.5 3l4-13.5c-4.5-2-12-3-20-3Zm-131 2h-22l-14 65H22l9-45h.5l13.5 45h21.5l14-65H64l-9 45h-.5l-13-45Zm63 0h-18l-13 65h17l6-28H117l-5.5 28H129l13.5-65H125L119.5 32h-20l5-24.5Z";

/// The console's sections, for the navigation and its current item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Deliveries,
    Referrals,
    Audit,
    Report,
    None,
}

/// The sections a user may open, in navigation order.
fn navigation(user: &User) -> Vec<(Section, &'static str, &'static str)> {
    let mut items = vec![(Section::Overview, "/console", "Overview")];
    if user.has(ConsoleRole::Operator) {
        items.push((Section::Deliveries, "/console/deliveries", "Deliveries"));
        items.push((Section::Referrals, "/console/referrals", "Find a referral"));
    }
    if user.has(ConsoleRole::Auditor) {
        items.push((Section::Audit, "/console/audit", "Audit trail"));
    }
    items.push((Section::Report, "/console/report", "Programme report"));
    items
}

/// A whole page: `title` is the `<title>` and, by convention, the page's `h1`.
pub fn page(title: &str, user: Option<&User>, section: Section, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – thrive-gateway console" }
                link rel="icon" href="/console/assets/images/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/console/assets/nhsuk-frontend.min.css";
                link rel="stylesheet" href="/console/assets/console.css";
                script type="module" src="/console/assets/console.js" {}
            }
            body {
                a class="nhsuk-skip-link" href="#maincontent" { "Skip to main content" }
                (header(user, section))
                div class="nhsuk-width-container" {
                    main class="nhsuk-main-wrapper" id="maincontent" {
                        (body)
                    }
                }
                footer class="nhsuk-footer" {
                    div class="nhsuk-width-container" {
                        div class="nhsuk-footer__meta" {
                            h2 class="nhsuk-u-visually-hidden" { "Support links" }
                            p class="nhsuk-body-s" {
                                "thrive-gateway: referrals to employment support in the West Midlands"
                            }
                        }
                    }
                }
            }
        }
    }
}

fn header(user: Option<&User>, section: Section) -> Markup {
    html! {
        header class="nhsuk-header" data-module="nhsuk-header" {
            div class="nhsuk-header__container nhsuk-width-container" {
                div class="nhsuk-header__service" {
                    a class="nhsuk-header__service-logo" href="/console" aria-label="NHS thrive-gateway console home" {
                        svg class="nhsuk-header__logo" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 80" height="40" width="100" focusable="false" role="img" aria-label="NHS" {
                            title { "NHS" }
                            path fill="currentcolor" d=(NHS_LOGO) {}
                        }
                        span class="nhsuk-header__service-name" { "thrive-gateway console" }
                    }
                }
                @if let Some(user) = user {
                    nav class="nhsuk-header__account" aria-label="Account" {
                        ul class="nhsuk-header__account-list" {
                            li class="nhsuk-header__account-item" {
                                (user.name) " (" (user.roles_shown()) ")"
                            }
                            li class="nhsuk-header__account-item" {
                                form class="nhsuk-header__account-form" action="/console/sign-out" method="post" novalidate {
                                    (csrf_field(&user.csrf))
                                    button class="nhsuk-header__account-button" { "Sign out" }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(user) = user {
                nav class="nhsuk-header__navigation" aria-label="Menu" {
                    div class="nhsuk-header__navigation-container nhsuk-width-container" {
                        ul class="nhsuk-header__navigation-list" {
                            @for (s, href, text) in navigation(user) {
                                @if s == section {
                                    li class="nhsuk-header__navigation-item nhsuk-header__navigation-item--current" {
                                        a class="nhsuk-header__navigation-link" href=(href) aria-current="page" {
                                            strong class="nhsuk-header__navigation-item-current-fallback" { (text) }
                                        }
                                    }
                                } @else {
                                    li class="nhsuk-header__navigation-item" {
                                        a class="nhsuk-header__navigation-link" href=(href) { (text) }
                                    }
                                }
                            }
                            li class="nhsuk-header__menu" hidden {
                                button class="nhsuk-header__menu-toggle nhsuk-header__navigation-link" id="toggle-menu" aria-expanded="false" {
                                    span class="nhsuk-u-visually-hidden" { "Browse " }
                                    "More"
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The hidden CSRF field every form that changes something carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A problem with one field of a form: the field's id and what is wrong with it.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// A page's status: 400 when its form has problems.
pub fn status_of(errors: &[FieldError]) -> actix_web::http::StatusCode {
    if errors.is_empty() {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::BAD_REQUEST
    }
}

/// The design system's error summary: every problem, each linking to its field.
pub fn error_summary(errors: &[FieldError]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="nhsuk-error-summary" data-module="nhsuk-error-summary" {
                div role="alert" {
                    h2 class="nhsuk-error-summary__heading" { "There is a problem" }
                    div class="nhsuk-error-summary__body" {
                        ul class="nhsuk-list nhsuk-error-summary__list" {
                            @for e in errors {
                                li { a href={ "#" (e.field) } { (e.message) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A text field with its label, hint and, when it has one, its error.
pub struct Field<'a> {
    pub id: &'static str,
    pub label: &'a str,
    pub hint: Option<&'a str>,
    pub value: &'a str,
    pub width: &'static str,
}

impl<'a> Field<'a> {
    pub fn text(id: &'static str, label: &'a str, value: &'a str) -> Self {
        Self {
            id,
            label,
            hint: None,
            value,
            width: "nhsuk-input--width-20",
        }
    }

    pub fn hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    pub fn width(mut self, width: &'static str) -> Self {
        self.width = width;
        self
    }

    /// A date as YYYY-MM-DD (or an RFC 3339 instant): a text field, since a
    /// browser's date picker cannot take the instant and varies between browsers.
    pub fn date(mut self) -> Self {
        self.width = "nhsuk-input--width-10";
        self
    }

    pub fn render(&self, errors: &[FieldError]) -> Markup {
        let error = errors.iter().find(|e| e.field == self.id);
        let hint_id = format!("{}-hint", self.id);
        let error_id = format!("{}-error", self.id);
        let described: Vec<&str> = [
            self.hint.map(|_| hint_id.as_str()),
            error.map(|_| error_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        html! {
            div class={ "nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" } } {
                label class="nhsuk-label" for=(self.id) { (self.label) }
                @if let Some(hint) = self.hint {
                    div class="nhsuk-hint" id=(hint_id) { (hint) }
                }
                @if let Some(e) = error {
                    span class="nhsuk-error-message" id=(error_id) {
                        span class="nhsuk-u-visually-hidden" { "Error: " }
                        (e.message)
                    }
                }
                input class={ "nhsuk-input " (self.width) @if error.is_some() { " nhsuk-input--error" } }
                    id=(self.id) name=(self.id) type="text" value=(self.value)
                    aria-describedby=[(!described.is_empty()).then(|| described.join(" "))];
            }
        }
    }
}

/// A select with its label and error; `options` are (value, text).
pub fn select(
    id: &'static str,
    label: &str,
    options: &[(String, String)],
    chosen: &str,
    errors: &[FieldError],
) -> Markup {
    let error = errors.iter().find(|e| e.field == id);
    html! {
        div class={ "nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" } } {
            label class="nhsuk-label" for=(id) { (label) }
            @if let Some(e) = error {
                span class="nhsuk-error-message" id={ (id) "-error" } {
                    span class="nhsuk-u-visually-hidden" { "Error: " }
                    (e.message)
                }
            }
            select class={ "nhsuk-select" @if error.is_some() { " nhsuk-select--error" } } id=(id) name=(id) {
                @for (value, text) in options {
                    option value=(value) selected[value == chosen] { (text) }
                }
            }
        }
    }
}

/// A summary list of (key, value) rows.
pub fn summary(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl class="nhsuk-summary-list" {
            @for (key, value) in rows {
                div class="nhsuk-summary-list__row" {
                    dt class="nhsuk-summary-list__key" { (key) }
                    dd class="nhsuk-summary-list__value" { (value) }
                }
            }
        }
    }
}

/// A tag in one of the design system's colours (`""` for the default blue).
pub fn tag(text: &str, colour: &str) -> Markup {
    let class = if colour.is_empty() {
        "nhsuk-tag".to_owned()
    } else {
        format!("nhsuk-tag nhsuk-tag--{colour}")
    };
    html! { strong class=(class) { (text) } }
}

/// A time as people read it, in UTC.
pub fn when(t: fhir_sdk::time::OffsetDateTime) -> String {
    let t = t.to_offset(fhir_sdk::time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An age in seconds as "4 min" or "3 h 5 min".
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} days", s / 86_400),
    }
}

/// A table's head: each column's title, and whether it holds numbers (aligned right).
pub fn table_head(columns: &[(&str, bool)]) -> Markup {
    html! {
        thead class="nhsuk-table__head" {
            tr class="nhsuk-table__row" {
                @for (title, numeric) in columns {
                    th class={ "nhsuk-table__header" @if *numeric { " nhsuk-table__header--numeric" } } scope="col" { (title) }
                }
            }
        }
    }
}
