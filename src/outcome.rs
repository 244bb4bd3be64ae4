//! Errors as GP systems see them: FHIR `OperationOutcome`s with the NHS `REC_*` codes.
//!
//! Every rejection anywhere in the pipeline becomes a [`Rejection`]; this module is the
//! one place that turns it into an HTTP status and a body. Diagnostics are written by
//! the gateway from fixed phrases and element paths, never copied from the request, so
//! no patient data can reach a response.

use crate::store::StoreError;
use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde_json::{Value, json};
use std::fmt;

/// What a 503 (or 429) asks the client to wait before sending again, in seconds:
/// long enough for a database fail-over or restart to be noticed, short enough that
/// a GP system's retry lands soon after.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// The code system of the NHS HTTP error codes (lower-case `s`, as NHS examples write it).
pub const HTTP_ERROR_CODES: &str = "https://fhir.nhs.uk/Codesystem/http-error-codes";

/// NHS HTTP error codes (BaRS / spine `REC_*`), each tied to its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnprocessableEntity,
    ServerError,
    ServiceUnavailable,
    /// 408: the request (its head or body) did not arrive in time.
    Timeout,
    /// 431: the request headers are larger than the gateway accepts.
    HeadersTooLarge,
    /// 429: the client sent more than the gateway takes from it.
    TooManyRequests,
}

impl RecCode {
    pub fn status(self) -> StatusCode {
        match self {
            RecCode::BadRequest => StatusCode::BAD_REQUEST,
            RecCode::Unauthorized => StatusCode::UNAUTHORIZED,
            RecCode::Forbidden => StatusCode::FORBIDDEN,
            RecCode::NotFound => StatusCode::NOT_FOUND,
            RecCode::Conflict => StatusCode::CONFLICT,
            RecCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RecCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RecCode::UnprocessableEntity => StatusCode::UNPROCESSABLE_ENTITY,
            RecCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            RecCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RecCode::Timeout => StatusCode::REQUEST_TIMEOUT,
            RecCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RecCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `REC_*` code. 413, 415, 429 and 431 have no code of their own in the NHS
    /// list and are reported as bad requests with their own HTTP status.
    pub fn code(self) -> &'static str {
        match self {
            RecCode::BadRequest
            | RecCode::PayloadTooLarge
            | RecCode::UnsupportedMediaType
            | RecCode::HeadersTooLarge
            | RecCode::TooManyRequests => "REC_BAD_REQUEST",
            RecCode::Unauthorized => "REC_UNAUTHORIZED",
            RecCode::Forbidden => "REC_FORBIDDEN",
            RecCode::NotFound => "REC_NOT_FOUND",
            RecCode::Conflict => "REC_CONFLICT",
            RecCode::UnprocessableEntity => "REC_UNPROCESSABLE_ENTITY",
            RecCode::ServerError => "REC_SERVER_ERROR",
            RecCode::ServiceUnavailable => "REC_SERVICE_UNAVAILABLE",
            RecCode::Timeout => "REC_TIMEOUT",
        }
    }

    fn display(self) -> &'static str {
        match self {
            RecCode::BadRequest
            | RecCode::PayloadTooLarge
            | RecCode::UnsupportedMediaType
            | RecCode::HeadersTooLarge
            | RecCode::TooManyRequests => "400: The request was not understood",
            RecCode::Unauthorized => "401: Not authorised",
            RecCode::Forbidden => "403: Forbidden",
            RecCode::NotFound => "404: Not found",
            RecCode::Conflict => "409: Conflict",
            RecCode::UnprocessableEntity => "422: Unprocessable entity",
            RecCode::ServerError => "500: Internal server error",
            RecCode::ServiceUnavailable => "503: Service unavailable",
            RecCode::Timeout => "408: Request timeout",
        }
    }

    /// Answered without reading the rest of the request (or after giving up on it):
    /// the connection is closed rather than leave unread bytes in front of the
    /// client's next request.
    fn closes_connection(self) -> bool {
        matches!(
            self,
            RecCode::Unauthorized
                | RecCode::PayloadTooLarge
                | RecCode::UnsupportedMediaType
                | RecCode::Timeout
                | RecCode::HeadersTooLarge
        )
    }

    /// A passing condition: the answer says when to send again (`Retry-After`).
    fn retry_later(self) -> bool {
        matches!(self, RecCode::ServiceUnavailable | RecCode::TooManyRequests)
    }
}

/// FHIR `IssueType` codes the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Structure,
    Required,
    Value,
    Invariant,
    Invalid,
    Security,
    Login,
    Forbidden,
    NotFound,
    Duplicate,
    Conflict,
    BusinessRule,
    TooLong,
    NotSupported,
    Exception,
    Transient,
    Timeout,
    Throttled,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Invalid => "invalid",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::NotFound => "not-found",
            IssueType::Duplicate => "duplicate",
            IssueType::Conflict => "conflict",
            IssueType::BusinessRule => "business-rule",
            IssueType::TooLong => "too-long",
            IssueType::NotSupported => "not-supported",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Timeout => "timeout",
            IssueType::Throttled => "throttled",
        }
    }
}

/// One problem found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Which HTTP class the problem belongs to.
    pub rec: RecCode,
    pub code: IssueType,
    /// FHIRPath of the element at fault, e.g. `Bundle.entry[2].resource.birthDate`.
    pub expression: Option<String>,
    /// What is wrong, in the gateway's own words; never request content.
    pub diagnostics: String,
}

impl Issue {
    pub fn new(rec: RecCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            rec,
            code,
            expression: None,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// A structural problem (400).
    pub fn structure(code: IssueType, expression: impl Into<String>, d: impl Into<String>) -> Self {
        Self::new(RecCode::BadRequest, code, d).at(expression)
    }

    /// A business-rule problem (422).
    pub fn business(code: IssueType, expression: impl Into<String>, d: impl Into<String>) -> Self {
        Self::new(RecCode::UnprocessableEntity, code, d).at(expression)
    }
}

/// A request the gateway will not act on, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub issues: Vec<Issue>,
}

impl Rejection {
    pub fn one(issue: Issue) -> Self {
        Self {
            issues: vec![issue],
        }
    }

    pub fn from_issues(issues: Vec<Issue>) -> Option<Self> {
        if issues.is_empty() {
            None
        } else {
            Some(Self { issues })
        }
    }

    /// The answer's status: the first class present in the order that tells the caller
    /// most (a malformed message before a business rule).
    pub fn rec(&self) -> RecCode {
        const ORDER: [RecCode; 13] = [
            RecCode::ServerError,
            RecCode::ServiceUnavailable,
            RecCode::TooManyRequests,
            RecCode::Timeout,
            RecCode::HeadersTooLarge,
            RecCode::Unauthorized,
            RecCode::UnsupportedMediaType,
            RecCode::PayloadTooLarge,
            RecCode::Forbidden,
            RecCode::BadRequest,
            RecCode::NotFound,
            RecCode::Conflict,
            RecCode::UnprocessableEntity,
        ];
        ORDER
            .into_iter()
            .find(|r| self.issues.iter().any(|i| i.rec == *r))
            .unwrap_or(RecCode::ServerError)
    }

    /// Stable, value-free summary for audit records: `code@expression` per issue.
    pub fn summary(&self) -> Vec<String> {
        self.issues
            .iter()
            .map(|i| match &i.expression {
                Some(e) => format!("{}:{}@{}", i.rec.code(), i.code.code(), e),
                None => format!("{}:{}", i.rec.code(), i.code.code()),
            })
            .collect()
    }

    /// The `OperationOutcome` body. Every issue carries the answer's one `REC_*` code,
    /// the one its HTTP status stands for.
    pub fn to_operation_outcome(&self) -> Value {
        let rec = self.rec();
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|i| {
                let mut issue = json!({
                    "severity": "error",
                    "code": i.code.code(),
                    "details": {"coding": [{
                        "system": HTTP_ERROR_CODES,
                        "code": rec.code(),
                        "display": rec.display(),
                    }]},
                    "diagnostics": i.diagnostics,
                });
                if let Some(e) = &i.expression {
                    issue["expression"] = json!([e]);
                }
                issue
            })
            .collect();
        json!({
            "resourceType": "OperationOutcome",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-OperationOutcome"]},
            "issue": issues,
        })
    }
}

impl From<Issue> for Rejection {
    fn from(issue: Issue) -> Self {
        Self::one(issue)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} issues)", self.rec().code(), self.issues.len())
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.rec().status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status_code());
        builder.content_type("application/fhir+json");
        let rec = self.rec();
        if rec == RecCode::Unauthorized {
            builder.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if rec.retry_later() {
            builder.insert_header(("Retry-After", RETRY_AFTER_SECONDS.to_string()));
        }
        if rec.closes_connection() {
            builder.force_close();
        }
        builder.json(self.to_operation_outcome())
    }
}

/// The one way a store failure becomes an answer: 503 with `Retry-After` when the
/// database is unavailable ([`StoreError::is_unavailable`]), 500 otherwise. Either way
/// the error is logged where the `?` (or call) is, inside the request's span; the
/// caller hears nothing of it.
impl From<StoreError> for Rejection {
    #[track_caller]
    fn from(e: StoreError) -> Self {
        let at = std::panic::Location::caller();
        if e.is_unavailable() {
            tracing::warn!(error = %e, at = %at, "the database is unavailable; answering 503");
            unavailable()
        } else {
            tracing::error!(error = %e, at = %at, "a database operation failed; answering 500");
            server_error()
        }
    }
}

/// The database is away or saturated: 503, `Retry-After`, issue code `transient`. What
/// already reached the database is not undone, hence no claim about it; a message
/// sent again with the same `X-Request-Id` is never stored twice.
pub fn unavailable() -> Rejection {
    Rejection::one(Issue::new(
        RecCode::ServiceUnavailable,
        IssueType::Transient,
        "the gateway's database is unavailable just now; send the request again after the \
         Retry-After interval, with the same X-Request-Id",
    ))
}

/// An error status answered by something other than the gateway's own handlers
/// (actix's extractors, a refused method): an OperationOutcome in the gateway's words,
/// so no error is ever plain text or quotes the request. Its status is that of the
/// `REC_*` class: statuses the NHS list has no place for (405, 411, 414, ...) become
/// the 404 or 400 they amount to.
pub fn for_status(status: StatusCode) -> Rejection {
    let issue = |rec, code, what: &str| Issue::new(rec, code, what);
    Rejection::one(match status.as_u16() {
        401 => issue(
            RecCode::Unauthorized,
            IssueType::Login,
            "an Authorization: Bearer token is required",
        ),
        403 => issue(RecCode::Forbidden, IssueType::Forbidden, "forbidden"),
        404 | 405 => issue(
            RecCode::NotFound,
            IssueType::NotSupported,
            "no such endpoint (or not with this HTTP method)",
        ),
        408 => issue(
            RecCode::Timeout,
            IssueType::Timeout,
            "the request did not arrive within the time the gateway waits for it",
        ),
        409 => issue(
            RecCode::Conflict,
            IssueType::Conflict,
            "the request conflicts with the current state",
        ),
        413 => issue(
            RecCode::PayloadTooLarge,
            IssueType::TooLong,
            "the body is larger than this endpoint accepts",
        ),
        415 => issue(
            RecCode::UnsupportedMediaType,
            IssueType::NotSupported,
            "this Content-Type is not accepted here",
        ),
        422 => issue(
            RecCode::UnprocessableEntity,
            IssueType::BusinessRule,
            "the request could not be processed",
        ),
        429 => issue(
            RecCode::TooManyRequests,
            IssueType::Throttled,
            "too many requests; send again after the Retry-After interval",
        ),
        431 => issue(
            RecCode::HeadersTooLarge,
            IssueType::TooLong,
            "the request headers are larger than the gateway accepts",
        ),
        503 => issue(
            RecCode::ServiceUnavailable,
            IssueType::Transient,
            "the gateway cannot answer just now; send the request again after the \
             Retry-After interval",
        ),
        s if s >= 500 => return server_error(),
        _ => issue(
            RecCode::BadRequest,
            IssueType::Invalid,
            "the request could not be read",
        ),
    })
}

/// Internal failures (a bug, data not in the expected form): the caller gets a plain
/// 500 with no detail; the detail goes to the log (see `From<StoreError>`).
pub fn server_error() -> Rejection {
    Rejection::one(Issue::new(
        RecCode::ServerError,
        IssueType::Exception,
        "the gateway could not complete the request; nothing was stored, and it is safe to send again",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_most_telling_class() {
        let r = Rejection {
            issues: vec![
                Issue::business(IssueType::Value, "a", "x"),
                Issue::structure(IssueType::Required, "b", "y"),
            ],
        };
        assert_eq!(r.rec(), RecCode::BadRequest);
        let body = r.to_operation_outcome();
        assert_eq!(body["issue"].as_array().unwrap().len(), 2);
        // One REC code per answer: the 400's, on the business issue too.
        assert_eq!(
            body["issue"][0]["details"]["coding"][0]["code"],
            "REC_BAD_REQUEST"
        );
        assert_eq!(body["issue"][1]["expression"][0], "b");
    }

    #[test]
    fn an_unavailable_database_is_a_503_to_retry_and_anything_else_a_500() {
        for (error, status) in [
            (StoreError::Database(sqlx::Error::PoolTimedOut), 503),
            (
                StoreError::Database(sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                503,
            ),
            (StoreError::Corrupt("x".into()), 500),
            (StoreError::Database(sqlx::Error::RowNotFound), 500),
        ] {
            let res = Rejection::from(error).error_response();
            assert_eq!(res.status().as_u16(), status);
            let retry = res.headers().get("retry-after");
            if status == 503 {
                assert_eq!(retry.unwrap(), &RETRY_AFTER_SECONDS.to_string());
            } else {
                assert!(retry.is_none());
            }
        }
        let body = unavailable().to_operation_outcome();
        assert_eq!(body["issue"][0]["code"], "transient");
        assert_eq!(
            body["issue"][0]["details"]["coding"][0]["code"],
            "REC_SERVICE_UNAVAILABLE"
        );
    }

    #[test]
    fn statuses_actix_answers_become_outcomes_of_their_class() {
        // status in, (status, REC code, issue code, Retry-After, connection closed) out.
        for (status, want) in [
            (408, (408, "REC_TIMEOUT", "timeout", false, true)),
            (413, (413, "REC_BAD_REQUEST", "too-long", false, true)),
            (429, (429, "REC_BAD_REQUEST", "throttled", true, false)),
            (431, (431, "REC_BAD_REQUEST", "too-long", false, true)),
            (
                503,
                (503, "REC_SERVICE_UNAVAILABLE", "transient", true, false),
            ),
            (405, (404, "REC_NOT_FOUND", "not-supported", false, false)),
            (411, (400, "REC_BAD_REQUEST", "invalid", false, false)),
            (502, (500, "REC_SERVER_ERROR", "exception", false, false)),
        ] {
            let rejection = for_status(StatusCode::from_u16(status).unwrap());
            let res = rejection.error_response();
            let body = rejection.to_operation_outcome();
            let got = (
                res.status().as_u16(),
                body["issue"][0]["details"]["coding"][0]["code"]
                    .as_str()
                    .unwrap(),
                body["issue"][0]["code"].as_str().unwrap(),
                res.headers().contains_key("retry-after"),
                res.head().connection_type() == actix_web::http::ConnectionType::Close,
            );
            assert_eq!(got, want, "for {status}");
        }
    }
}
