//! The console's guards over plain HTTP: sessions and their cookie, CSRF tokens,
//! roles, security headers and bad filter values, each refusal recorded.

use crate::console::{CONSOLE, accept};
use crate::helpers::*;
use crate::on_both_databases;
use crate::provider::{FAST_RETRIES, FakeProvider, Step};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of the cookie `name` a response sets, with its whole header.
fn cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        v.starts_with(&format!("{name}=")).then(|| {
            (
                v.split(';').next().unwrap_or_default().to_owned(),
                v.to_owned(),
            )
        })
    })
}

fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// A signed-in session: its cookie and its CSRF token.
pub struct Session {
    pub cookie: String,
    pub set_cookie: String,
    pub csrf: String,
}

pub async fn sign_in(app: &TestApp, client: &str, host: Option<&str>) -> Session {
    let http = http();
    let with_host = |r: reqwest::RequestBuilder| match host {
        Some(h) => r.header("Host", h),
        None => r,
    };
    let page = with_host(http.get(app.url("/console/sign-in")))
        .send()
        .await
        .unwrap();
    let (pending, _) = cookie(&page, "thrive_console_sign_in").unwrap();
    let csrf = csrf_in(&page.text().await.unwrap());
    let res = with_host(http.post(app.url("/console/sign-in/dev")))
        .header(COOKIE, pending)
        .form(&[("csrf", csrf.as_str()), ("client", client)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let (cookie, set_cookie) = cookie(&res, "thrive_console").unwrap();
    let overview = with_host(http.get(app.url("/console")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    let csrf = csrf_in(&overview.text().await.unwrap());
    Session {
        cookie,
        set_cookie,
        csrf,
    }
}

async fn sessions_cookies_and_headers_guard_every_page(db: Db) {
    let app = TestApp::spawn_with(db, CONSOLE).await;
    let http = http();

    // No session, or a forged one: to sign-in, coming back to the page afterwards.
    for cookie in [None, Some("thrive_console=forged")] {
        let mut req = http.get(app.url("/console/deliveries?state=dead"));
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 303);
        assert_eq!(
            res.headers()[LOCATION],
            "/console/sign-in?next=%2Fconsole%2Fdeliveries%3Fstate%3Ddead"
        );
    }

    // The session cookie: HttpOnly, SameSite=Strict, under /console; not Secure only on
    // plain HTTP to this machine.
    let local = sign_in(&app, "operator", None).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(
            local.set_cookie.contains(flag),
            "{flag}: {}",
            local.set_cookie
        );
    }
    assert!(!local.set_cookie.contains("Secure"), "{}", local.set_cookie);
    // Without console.plain_http_localhost (everywhere but development), always Secure.
    let strict = app
        .second(&CONSOLE.replace("plain_http_localhost = true", ""))
        .await;
    let strict = sign_in(&strict, "operator", None).await;
    assert!(
        strict.set_cookie.contains("Secure"),
        "{}",
        strict.set_cookie
    );
    let remote = sign_in(&app, "operator", Some("gateway.example.nhs.uk")).await;
    assert!(
        remote.set_cookie.contains("Secure"),
        "{}",
        remote.set_cookie
    );

    // Security headers on every page, signed in or not, and no patient data cached.
    for (path, session) in [
        ("/console/sign-in", None),
        ("/console", Some(&local)),
        ("/console/deliveries", Some(&local)),
        ("/console/nothing-here", Some(&local)),
    ] {
        let mut req = http.get(app.url(path));
        if let Some(s) = session {
            req = req.header(COOKIE, &s.cookie);
        }
        let res = req.send().await.unwrap();
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store", "{path}");
        assert!(
            res.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
    }
    // The design system is served from the gateway, nothing from elsewhere.
    let css = http
        .get(app.url("/console/assets/nhsuk-frontend.min.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    let css = css.text().await.unwrap();
    assert!(
        css.contains(".nhsuk-header") && !css.contains("https://"),
        "vendored, self-contained CSS"
    );

    // Signing out: the cookie is removed.
    let res = http
        .post(app.url("/console/sign-out"))
        .header(COOKIE, &local.cookie)
        .form(&[("csrf", local.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let (_, removal) = cookie(&res, "thrive_console").unwrap();
    assert!(removal.contains("Max-Age=0"), "{removal}");
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|r| r.action == "console.sign-out" && r.client_id.as_deref() == Some("operator"))
    );
}

async fn forms_without_their_token_are_refused_and_recorded(db: Db) {
    let provider = FakeProvider::start(vec![Step::status(503); 6]).await;
    let app = TestApp::spawn_with(db, &format!("{}{CONSOLE}", provider.config(FAST_RETRIES))).await;
    accept(&app).await;
    accept(&app).await;
    for _ in 0..3 {
        app.deliver().await;
    }
    let dead = app
        .get("operator", "/operator/v1/deliveries?state=dead")
        .await
        .json();
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let other = dead[1]["id"].as_str().unwrap().to_owned();
    let session = sign_in(&app, "operator", None).await;
    let http = http();
    let replay = |csrf: Option<&str>| {
        let mut form = vec![];
        if let Some(c) = csrf {
            form.push(("csrf", c.to_owned()));
        }
        http.post(app.url(&format!("/console/deliveries/{id}/replay")))
            .header(COOKIE, &session.cookie)
            .form(&form)
            .send()
    };
    // A body that is not a form at all carries no token either.
    let unreadable = http
        .post(app.url(&format!("/console/deliveries/{id}/replay")))
        .header(COOKIE, &session.cookie)
        .header(CONTENT_TYPE, "text/plain")
        .body(format!("csrf={}", session.csrf))
        .send();
    assert_eq!(unreadable.await.unwrap().status(), 403);
    for csrf in [None, Some("guessed")] {
        let res = replay(csrf).await.unwrap();
        assert_eq!(res.status(), 403);
        assert!(
            res.text()
                .await
                .unwrap()
                .contains("This form could not be accepted")
        );
    }
    let refused: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "operator.deliveries.replay")
        .collect();
    assert_eq!(refused.len(), 3);
    assert!(
        refused
            .iter()
            .all(|r| r.outcome == "rejected" && r.http_status == Some(403))
    );
    let still = app
        .get("operator", "/operator/v1/deliveries?state=dead")
        .await
        .json();
    assert_eq!(still.as_array().unwrap().len(), 2, "nothing was replayed");

    // With the session's token it is done.
    let res = replay(Some(&session.csrf)).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()[LOCATION],
        format!("/console/deliveries/{id}?done=replayed")
    );

    // The same action through the API leaves the same record, but for its ids.
    let api = app
        .client
        .post(app.url(&format!("/operator/v1/deliveries/{other}/replay")))
        .bearer_auth(token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 202);
    let replays: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "operator.deliveries.replay" && r.outcome == "accepted")
        .collect();
    assert_eq!(replays.len(), 2);
    let shape = |r: &thrive_gateway::store::AuditRow| {
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        (
            r.outcome.clone(),
            r.http_status,
            r.client_id.clone(),
            r.role.clone(),
            r.recipient.is_some(),
            r.referral_id.is_some(),
            r.subject.is_some(),
            detail
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&replays[0]), shape(&replays[1]));

    // The sign-in form has its own token too.
    let res = http
        .post(app.url("/console/sign-in/dev"))
        .form(&[("client", "operator")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        app.audit()
            .await
            .iter()
            .any(|r| r.action == "console.sign-in" && r.outcome == "rejected")
    );
}

async fn roles_and_bad_filters_get_pages_not_errors(db: Db) {
    let app = TestApp::spawn_with(db, CONSOLE).await;
    let http = http();
    let auditor = sign_in(&app, "auditor", None).await;
    let operator = sign_in(&app, "operator", None).await;
    let get = |path: &str, s: &Session| {
        http.get(app.url(path))
            .header(COOKIE, s.cookie.clone())
            .send()
    };

    // A wrong role: 403, an NHS-styled page, recorded under the API's action.
    let res = get("/console/deliveries", &auditor).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Only operators may manage deliveries")
    );
    let res = get("/console/audit", &operator).await.unwrap();
    assert_eq!(res.status(), 403);
    let api = app.get("auditor", "/operator/v1/deliveries").await;
    assert_eq!(api.status, 403);
    let refusals: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "operator.deliveries.list" && r.http_status == Some(403))
        .collect();
    assert_eq!(refusals.len(), 2, "the console's refusal and the API's");
    let shape = |r: &thrive_gateway::store::AuditRow| {
        (
            r.outcome.clone(),
            r.client_id.clone(),
            r.role.clone(),
            r.detail.clone(),
        )
    };
    assert_eq!(shape(&refusals[0]), shape(&refusals[1]));
    let audit = app.audit().await;
    assert!(audit.iter().any(|r| r.action == "operator.deliveries.list"
        && r.http_status == Some(403)
        && r.client_id.as_deref() == Some("auditor")));
    assert!(audit.iter().any(|r| r.action == "audit.list"
        && r.http_status == Some(403)
        && r.client_id.as_deref() == Some("operator")));

    // Bad filter values: the error summary and the message beside the field.
    for (path, s, field, message) in [
        (
            "/console/deliveries?since=yesterday",
            &operator,
            "since",
            "Enter a date as YYYY-MM-DD",
        ),
        (
            "/console/deliveries?state=lost",
            &operator,
            "state",
            "Choose a state from the list",
        ),
        (
            "/console/deliveries?recipient=nobody",
            &operator,
            "recipient",
            "Choose a recipient from the list",
        ),
        (
            "/console/audit?to=soon",
            &auditor,
            "to",
            "Enter the to date",
        ),
        (
            "/console/audit/export?from=2026-01-01&to=2026-02-01&format=pdf",
            &auditor,
            "format",
            "Choose FHIR or CSV",
        ),
        (
            "/console/report?group_by=colour",
            &auditor,
            "group_by",
            "Choose provider, locality, programme or month",
        ),
    ] {
        let res = get(path, s).await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let html = res.text().await.unwrap();
        assert!(html.contains("nhsuk-error-summary"), "{path}");
        assert!(
            html.contains(&format!("href=\"#{field}\"")),
            "{path}: the summary links to the field"
        );
        assert!(
            html.contains(&format!("id=\"{field}-error\"")),
            "{path}: the message is beside the field"
        );
        assert!(html.contains(message), "{path}: {message}");
    }

    // The report downloads as CSV, suppressed cells and all.
    let res = get(
        "/console/report.csv?from=2026-01-01&to=2027-01-01&group_by=month",
        &operator,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert!(
        res.text()
            .await
            .unwrap()
            .starts_with("group,received,accepted")
    );
    let audit = app.audit().await;
    assert!(
        audit
            .iter()
            .any(|r| r.action == "report.programme" && r.client_id.as_deref() == Some("operator"))
    );

    // Subject access takes the NHS number by POST only.
    let res = get("/console/audit/subject?nhs_number=9990000018", &auditor)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.text().await.unwrap().contains("9990000018"));
    assert!(
        !app.audit()
            .await
            .iter()
            .any(|r| r.action == "audit.subjects"),
        "a GET searches nothing"
    );
}

async fn the_console_is_off_unless_enabled(db: Db) {
    let app = TestApp::spawn(db).await;
    let res = http().get(app.url("/console")).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

on_both_databases!(
    sessions_cookies_and_headers_guard_every_page,
    forms_without_their_token_are_refused_and_recorded,
    roles_and_bad_filters_get_pages_not_errors,
    the_console_is_off_unless_enabled,
);
