//! Programme statistics for commissioners (`/reports/v1`, auditor and operator roles).

use crate::app::{AppState, AuditContext};
use crate::auth::Role;
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::params::{DATE_OR_INSTANT, Query};
use actix_web::{HttpRequest, HttpResponse, get, web};

/// The report's parameters as asked, echoed in its answer and its audit record.
struct ReportQuery {
    from: String,
    to: String,
    group_by: String,
}

/// Programme statistics (auditor or operator role), small numbers suppressed:
/// `?from=&to=` (required) `&group_by=`, read after the role is checked.
#[get("/reports/v1/programme")]
async fn programme_report(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = crate::app::authenticate(&gw, &req)?;
    let ctx = AuditContext {
        action: "report.programme",
        principal: Some(&principal),
        ids: None,
    };
    let result = async {
        if !matches!(principal.role, Role::Auditor | Role::Operator) {
            return Err(Rejection::from(Issue::new(
                RecCode::Forbidden,
                IssueType::Forbidden,
                "only auditors and operators read programme statistics",
            )));
        }
        let mut query = Query::parse(req.query_string(), &["from", "to", "group_by"]);
        let from = query.required("from", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let to = query.required("to", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let group_by = query
            .get("group_by", "provider, locality, programme or month", |v| {
                v.parse::<crate::reports::GroupBy>().ok()
            })
            .unwrap_or(crate::reports::GroupBy::Provider);
        let shown = ReportQuery {
            from: query.text("from").unwrap_or_default().to_owned(),
            to: query.text("to").unwrap_or_default().to_owned(),
            group_by: query.text("group_by").unwrap_or("provider").to_owned(),
        };
        query.finish()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(server_error());
        };
        let rows = gw.store.report_rows(from, to, false).await?;
        Ok((crate::reports::programme(&rows, group_by), shown))
    }
    .await;
    match result {
        Ok((rows, query)) => {
            let record = ctx.record(
                "allowed",
                200,
                None,
                serde_json::json!({"from": query.from, "to": query.to, "group_by": query.group_by}),
            );
            gw.store.append_audit(&record).await?;
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "from": query.from,
                "to": query.to,
                "group_by": query.group_by,
                "suppression": "counts of 1 to 4 are shown as <5; all other counts are rounded to the nearest 5",
                "rows": rows,
            })))
        }
        Err(r) => {
            gw.audit_rejection(&ctx, &r).await;
            Err(r)
        }
    }
}

/// Registers the reporting routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(programme_report);
}
