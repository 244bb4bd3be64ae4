//! The auditor API (`/audit/v1`, auditor role only). Every call, allowed or refused,
//! is itself an audit record. NHS numbers are taken only in request bodies, so they
//! stay out of URLs and access logs, and are turned into the audit pseudonym at once.

use crate::app::{AppState, AuditContext, RequestIds};
use crate::audit::export::{self, Format};
use crate::auth::{Principal, Role};
use crate::domain::NhsNumber;
use crate::outcome::{Issue, IssueType, RecCode, Rejection, server_error};
use crate::params::{self, DATE_OR_INSTANT, Query};
use crate::store::{AuditFilter, AuditRow};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// The request ids when sent (they are optional here), for the audit record.
fn ids(req: &HttpRequest) -> Option<RequestIds> {
    RequestIds::from_headers(req.headers()).ok()
}

/// Authenticates an auditor; a refusal is recorded before it is returned.
async fn auditor(gw: &AppState, req: &HttpRequest, action: &str) -> Result<Principal, Rejection> {
    crate::app::authenticate_role(
        gw,
        req,
        action,
        Role::Auditor,
        "only auditors may read the audit trail",
    )
    .await
}

/// Records an allowed auditor call; the answer is given only once it is recorded.
async fn record_call(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    action: &str,
    subject: Option<String>,
    detail: Value,
) -> Result<(), Rejection> {
    let ids = ids(req);
    let ctx = AuditContext {
        action,
        principal: Some(principal),
        ids: ids.as_ref(),
    };
    let mut record = ctx.record("allowed", 200, None, detail);
    record.subject = subject;
    Ok(gw.store.append_audit(&record).await?)
}

/// Records a refusal that came after authentication (bad parameters, unknown record),
/// then hands it back: every auditor call leaves a record, allowed or not.
async fn refused(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    action: &str,
    result: Result<HttpResponse, Rejection>,
) -> Result<HttpResponse, Rejection> {
    if let Err(rejection) = &result {
        let ids = ids(req);
        let ctx = AuditContext {
            action,
            principal: Some(principal),
            ids: ids.as_ref(),
        };
        gw.audit_rejection(&ctx, rejection).await;
    }
    result
}

/// The filters of `GET /audit/v1/records`, read after authentication so a bad one is
/// refused (and recorded) like any other refusal, each problem at its parameter.
struct ListQuery {
    filter: AuditFilter,
    /// Paging cursor: the `seq` of the last record of the previous page.
    after: i64,
    limit: i64,
    /// The filters as asked, for the audit record.
    asked: Value,
}

impl ListQuery {
    const PARAMETERS: [&str; 8] = [
        "from",
        "to",
        "referral",
        "action",
        "recipient",
        "client",
        "after",
        "limit",
    ];

    fn read(query_string: &str) -> Result<Self, Rejection> {
        let mut q = Query::parse(query_string, &Self::PARAMETERS);
        let from = q.get("from", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let to = q.get("to", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
        let (after, limit) = page(&mut q);
        let text = |name: &str| q.text(name).map(str::to_owned);
        let filter = AuditFilter {
            from,
            to,
            referral_id: text("referral"),
            action: text("action"),
            recipient: text("recipient"),
            client_id: text("client"),
            subjects: Vec::new(),
        };
        let asked = json!({"from": text("from"), "to": text("to"), "referral": text("referral"),
            "action": text("action"), "recipient": text("recipient"), "client": text("client")});
        q.finish()?;
        Ok(Self {
            filter,
            after,
            limit,
            asked,
        })
    }
}

/// A record as the API shows it: every column, `detail` as JSON.
fn record_view(r: &AuditRow) -> Value {
    let mut v = export::record_json(r);
    v["detail"] = serde_json::from_str(&r.detail).unwrap_or(Value::Null);
    v["actor_identity"] = r
        .actor_identity
        .as_deref()
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or(Value::Null);
    v
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// `after` (a record number, 0 by default) and `limit` (100 by default, at most 1000)
/// of a paged answer.
fn page(q: &mut Query) -> (i64, i64) {
    let after = q
        .get(
            "after",
            "a record number (a whole number, 0 or more)",
            |v| v.parse::<i64>().ok().filter(|n| *n >= 0),
        )
        .unwrap_or(0);
    let limit = q
        .get(
            "limit",
            "a whole number of at least 1 (pages hold at most 1000)",
            params::page_size(MAX_PAGE),
        )
        .unwrap_or(DEFAULT_PAGE);
    (after, limit)
}

#[get("/audit/v1/records")]
async fn list(req: HttpRequest, gw: web::Data<AppState>) -> Result<HttpResponse, Rejection> {
    let principal = auditor(&gw, &req, "audit.list").await?;
    let result = list_records(&gw, &req, &principal).await;
    refused(&gw, &req, &principal, "audit.list", result).await
}

async fn list_records(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
) -> Result<HttpResponse, Rejection> {
    let ListQuery {
        filter,
        after,
        limit,
        asked,
    } = ListQuery::read(req.query_string())?;
    let rows = gw.store.audit_query(&filter, after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().and_then(|r| r.seq))
        .flatten();
    record_call(
        gw,
        req,
        principal,
        "audit.list",
        None,
        json!({"filter": asked, "after": after, "count": rows.len()}),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "records": rows.iter().map(record_view).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[get("/audit/v1/records/{seq}")]
async fn one(
    req: HttpRequest,
    seq: web::Path<String>,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = auditor(&gw, &req, "audit.read").await?;
    let result = read_record(&gw, &req, &principal, &seq).await;
    refused(&gw, &req, &principal, "audit.read", result).await
}

async fn read_record(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    seq: &str,
) -> Result<HttpResponse, Rejection> {
    let not_found = || params::not_found("seq", "no audit record has this number");
    Query::none(req.query_string())?;
    let seq: i64 = seq.parse().map_err(|_| not_found())?;
    let row = gw
        .store
        .audit_chain(seq.saturating_sub(1), 1)
        .await?
        .into_iter()
        .find(|r| r.seq == Some(seq));
    // Not found is refused, and recorded as such by the caller.
    let row = row.ok_or_else(not_found)?;
    record_call(gw, req, principal, "audit.read", None, json!({"seq": seq})).await?;
    Ok(HttpResponse::Ok().json(record_view(&row)))
}

/// Everything recorded and disclosed about one person, found by the audit pseudonym
/// of the NHS number in the body (under every configured audit key version).
#[post("/audit/v1/subjects")]
async fn subjects(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = auditor(&gw, &req, "audit.subjects").await?;
    let result = subject_records(&gw, &req, &principal, &body).await;
    refused(&gw, &req, &principal, "audit.subjects", result).await
}

/// The NHS number of a subject search's body, `{"nhs_number": "<10 digits>"}`: 400
/// for another shape, 422 for a number failing the Modulus 11 check.
fn nhs_number_in(body: &[u8]) -> Result<NhsNumber, Rejection> {
    let mut body =
        params::JsonFields::parse(body, &["nhs_number"], "{\"nhs_number\": \"<10 digits>\"}")?;
    let nhs_number = body.string("nhs_number", true, "a string of 10 digits");
    body.finish()?;
    NhsNumber::parse(nhs_number.as_deref().unwrap_or_default()).map_err(|_| {
        Rejection::one(
            Issue::new(
                RecCode::UnprocessableEntity,
                IssueType::Value,
                "nhs_number is not a valid NHS number (10 digits passing the Modulus 11 check)",
            )
            .at("nhs_number"),
        )
    })
}

/// Every referral about one person, each with its whole story, for an auditor who
/// knows the NHS number (sent in the body, never in the URL): found through the
/// subject's audit pseudonym, so the number itself is neither stored nor logged.
#[post("/audit/v1/referrals")]
async fn subject_referrals(
    req: HttpRequest,
    body: web::Bytes,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let action = "audit.referrals";
    let principal = auditor(&gw, &req, action).await?;
    let result = async {
        Query::none(req.query_string())?;
        let nhs = nhs_number_in(&body)?;
        let found = gw
            .store
            .referrals_about(&gw.audit_keys.all_pseudonyms(nhs.expose()))
            .await?;
        let active = gw.audit_keys.pseudonym(nhs.expose()).into_string();
        record_call(
            &gw,
            &req,
            &principal,
            action,
            Some(active),
            json!({"count": found.len()}),
        )
        .await?;
        let timelines = crate::operations::timelines(gw.store.as_ref(), found).await?;
        Ok(HttpResponse::Ok().json(json!({"count": timelines.len(), "referrals": timelines})))
    }
    .await;
    refused(&gw, &req, &principal, action, result).await
}

async fn subject_records(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    body: &[u8],
) -> Result<HttpResponse, Rejection> {
    // Paged like the record listing, so one person with thousands of referrals never
    // makes one answer of everything.
    let mut q = Query::parse(req.query_string(), &["after", "limit"]);
    let (after, limit) = page(&mut q);
    q.finish()?;
    let nhs = nhs_number_in(body)?;
    let pseudonyms = gw.audit_keys.all_pseudonyms(nhs.expose());
    let active = gw.audit_keys.pseudonym(nhs.expose()).into_string();
    let filter = AuditFilter {
        subjects: pseudonyms,
        ..AuditFilter::default()
    };
    let rows = gw.store.audit_query(&filter, after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().and_then(|r| r.seq))
        .flatten();
    let mut referrals: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.referral_id.as_deref())
        .collect();
    referrals.sort_unstable();
    referrals.dedup();
    let disclosures: Vec<Value> = rows
        .iter()
        .filter(|r| r.action == "delivery.referral" && r.outcome == "delivered")
        .map(|r| {
            let detail: Value = serde_json::from_str(&r.detail).unwrap_or(Value::Null);
            json!({
                "seq": r.seq,
                "at": export::record_json(r)["recorded_at"],
                "referral_id": r.referral_id,
                "recipient": r.recipient,
                "mapping_version": r.mapping_version,
                "key_version": r.key_version,
                "fields": detail["receipt"]["fields"],
            })
        })
        .collect();
    record_call(
        gw,
        req,
        principal,
        "audit.subjects",
        Some(active.clone()),
        json!({"after": after, "records": rows.len(), "disclosures": disclosures.len()}),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "subject": active,
        "referrals": referrals,
        "disclosures": disclosures,
        "records": rows.iter().map(record_view).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[get("/audit/v1/export")]
async fn export_records(
    req: HttpRequest,
    gw: web::Data<AppState>,
) -> Result<HttpResponse, Rejection> {
    let principal = auditor(&gw, &req, "audit.export").await?;
    let result = export_inner(&gw, &req, &principal).await;
    refused(&gw, &req, &principal, "audit.export", result).await
}

async fn export_inner(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
) -> Result<HttpResponse, Rejection> {
    let mut query = Query::parse(req.query_string(), &["from", "to", "format"]);
    let from = query.required("from", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
    let to = query.required("to", DATE_OR_INSTANT, |v| crate::reports::bound(v).ok());
    let format = query
        .get("format", "fhir or csv", |v| v.parse::<Format>().ok())
        .unwrap_or(Format::Fhir);
    let asked = json!({
        "from": query.text("from"),
        "to": query.text("to"),
        "format": query.text("format").unwrap_or("fhir"),
    });
    query.finish()?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(server_error());
    };
    let plan = export::ExportPlan::new(
        gw.store.as_ref(),
        gw.checkpoint_signer.as_ref(),
        from,
        to,
        format,
    )
    .await?;
    record_call(
        gw,
        req,
        principal,
        "audit.export",
        None,
        json!({"from": asked["from"], "to": asked["to"], "format": asked["format"], "count": plan.records()}),
    )
    .await?;
    let content_type = plan.content_type();
    // Streamed a page at a time; a store failure part-way cuts the answer short,
    // which a reader sees as a broken transfer, never as a complete export.
    let body = plan.stream(gw.store.clone()).map(|chunk| {
        chunk.map(web::Bytes::from).map_err(|e| {
            tracing::error!(error = %e, "audit export failed part-way");
            actix_web::error::ErrorInternalServerError("audit export failed")
        })
    });
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .streaming(body))
}

/// Runs `audit verify` for an auditor: the answer says whether the chain is intact
/// and, if not, the first record that is wrong.
#[get("/audit/v1/verify")]
async fn verify(req: HttpRequest, gw: web::Data<AppState>) -> Result<HttpResponse, Rejection> {
    let principal = auditor(&gw, &req, "audit.verify").await?;
    let result = verify_chain(&gw, &req, &principal).await;
    refused(&gw, &req, &principal, "audit.verify", result).await
}

async fn verify_chain(
    gw: &AppState,
    req: &HttpRequest,
    principal: &Principal,
) -> Result<HttpResponse, Rejection> {
    Query::none(req.query_string())?;
    let v = crate::audit::verify(gw.store.as_ref(), gw.checkpoint_keys.as_ref()).await?;
    let body = json!({
        "intact": v.intact(),
        "records": v.records,
        "pending_records": v.pending,
        "sealing_error": v.sealing,
        "legacy_records": v.legacy,
        "checkpoints": v.checkpoints,
        "problem": v.problem.as_ref().map(ToString::to_string),
    });
    record_call(
        gw,
        req,
        principal,
        "audit.verify",
        None,
        json!({"intact": v.intact()}),
    )
    .await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Registers the auditor routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list)
        .service(one)
        .service(subjects)
        .service(subject_referrals)
        .service(export_records)
        .service(verify);
}
