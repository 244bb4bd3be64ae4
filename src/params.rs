//! Request parameters: the query string, ids in the path, and the fields of the
//! gateway's own (non-FHIR) JSON bodies. They are read strictly, after the caller is
//! authenticated, so that a parameter an endpoint does not take, one given twice, or a
//! malformed one is refused (and, where the endpoint audits its refusals, recorded) as
//! an `OperationOutcome` whose `issue.expression` names the parameter or field. A
//! diagnostic never quotes a value.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::web;
use serde_json::{Map, Value};

/// What was read of a parameter or field, or (when nothing could be) an issue naming
/// it; its value is never quoted.
fn reported<T>(issues: &mut Vec<Issue>, name: &str, what: &str, read: Option<T>) -> Option<T> {
    if read.is_none() {
        issues.push(Issue::structure(
            IssueType::Value,
            name,
            format!("{name} must be {what}"),
        ));
    }
    read
}

/// A query string being read: each parameter is taken by name, and every problem found
/// is kept until [`Query::finish`] reports them together.
#[derive(Debug)]
pub struct Query {
    pairs: Vec<(String, String)>,
    issues: Vec<Issue>,
}

/// A parameter's name as the caller sent it, shown in a refusal only when it looks like
/// a parameter name (a letter, then letters, digits, `_`, `-` or `.`, at most 40): a
/// value sent in the name's place is never echoed.
pub fn shown(name: &str) -> Option<&str> {
    let mut chars = name.chars();
    let first = chars.next()?;
    let fits = (first.is_ascii_alphabetic() || first == '_')
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    fits.then_some(name)
}

impl Query {
    /// Reads `query_string`; a parameter not in `known`, or one given more than once,
    /// is a problem.
    pub fn parse(query_string: &str, known: &[&str]) -> Self {
        let mut issues = Vec::new();
        let pairs = match web::Query::<Vec<(String, String)>>::from_query(query_string) {
            Ok(pairs) => pairs.into_inner(),
            Err(_) => {
                issues.push(Issue::new(
                    RecCode::BadRequest,
                    IssueType::Structure,
                    "the query string could not be read",
                ));
                Vec::new()
            }
        };
        for (n, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let mut issue = Issue::new(
                    RecCode::BadRequest,
                    IssueType::NotSupported,
                    if known.is_empty() {
                        "this endpoint takes no query parameters".to_owned()
                    } else {
                        format!(
                            "this endpoint does not take this query parameter; it takes: {}",
                            known.join(", ")
                        )
                    },
                );
                if let Some(name) = shown(name) {
                    issue = issue.at(name);
                }
                issues.push(issue);
            } else if pairs.iter().take(n).any(|(earlier, _)| earlier == name) {
                issues.push(Issue::structure(
                    IssueType::Structure,
                    name.clone(),
                    "this query parameter is given more than once",
                ));
            }
        }
        Self { pairs, issues }
    }

    /// The raw value of `name`, when given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` read by `read`, when given; a value `read` refuses is a problem, and
    /// `what` is the sentence saying what it must be.
    pub fn get<T>(
        &mut self,
        name: &str,
        what: &str,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let read = read(self.text(name)?);
        reported(&mut self.issues, name, what, read)
    }

    /// [`Query::get`] for a parameter the endpoint needs: missing is a problem too.
    pub fn required<T>(
        &mut self,
        name: &str,
        what: &str,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        if self.text(name).is_none() {
            self.issues.push(Issue::structure(
                IssueType::Required,
                name,
                format!("{name} is required: {what}"),
            ));
            return None;
        }
        self.get(name, what, read)
    }

    /// Every problem found, or none.
    pub fn finish(self) -> Result<(), Rejection> {
        match Rejection::from_issues(self.issues) {
            Some(rejection) => Err(rejection),
            None => Ok(()),
        }
    }

    /// Refuses any query parameter: for endpoints that take none.
    pub fn none(query_string: &str) -> Result<(), Rejection> {
        Self::parse(query_string, &[]).finish()
    }
}

/// What `from` and `to` bounds must be.
pub const DATE_OR_INSTANT: &str = "a date (YYYY-MM-DD) or an RFC 3339 date-time";

/// A whole number of at least 1; `max` and above read as `max`.
pub fn page_size(max: i64) -> impl FnOnce(&str) -> Option<i64> {
    move |v| {
        v.parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| n.min(max))
    }
}

/// `true` or `false`.
pub fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// 404 for an id in the path (`name`, as the endpoint's path template names it) that
/// is malformed or names nothing; `what` says what has no such id.
pub fn not_found(name: &str, what: &str) -> Rejection {
    Issue::new(RecCode::NotFound, IssueType::NotFound, what)
        .at(name)
        .into()
}

/// A JSON object body being read: each field is taken by name, and every problem found
/// is kept until [`JsonFields::finish`] reports them together.
#[derive(Debug)]
pub struct JsonFields {
    fields: Map<String, Value>,
    issues: Vec<Issue>,
}

impl JsonFields {
    /// Reads `body` as a JSON object whose fields are among `known`; `shape` describes
    /// the whole object for a body that is not one. A field not in `known` is a problem.
    pub fn parse(body: &[u8], known: &[&str], shape: &str) -> Result<Self, Rejection> {
        let not_an_object = || {
            Rejection::one(Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                format!("the body must be a JSON object: {shape}"),
            ))
        };
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return Err(not_an_object());
        };
        let issues = fields
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| {
                let issue = Issue::new(
                    RecCode::BadRequest,
                    IssueType::Structure,
                    format!("this field is not one the body takes: {}", known.join(", ")),
                );
                match shown(k) {
                    Some(k) => issue.at(k),
                    None => issue,
                }
            })
            .collect();
        Ok(Self { fields, issues })
    }

    fn take<T>(
        &mut self,
        name: &str,
        required: bool,
        what: &str,
        read: impl FnOnce(&Value) -> Option<T>,
    ) -> Option<T> {
        match self.fields.get(name) {
            None | Some(Value::Null) if required => {
                self.issues.push(Issue::structure(
                    IssueType::Required,
                    name,
                    format!("{name} is required ({what})"),
                ));
                None
            }
            None | Some(Value::Null) => None,
            Some(value) => reported(&mut self.issues, name, what, read(value)),
        }
    }

    /// A string field; `what` says what it holds.
    pub fn string(&mut self, name: &str, required: bool, what: &str) -> Option<String> {
        self.take(name, required, what, |v| v.as_str().map(str::to_owned))
    }

    /// An optional number field.
    pub fn number(&mut self, name: &str, what: &str) -> Option<f64> {
        self.take(name, false, what, Value::as_f64)
    }

    /// Every problem found, or none.
    pub fn finish(self) -> Result<(), Rejection> {
        match Rejection::from_issues(self.issues) {
            Some(rejection) => Err(rejection),
            None => Ok(()),
        }
    }
}

/// The field a serde error names, when it names one from the type's own schema:
/// `missing field `x`` (true) or `unknown field `x`` (false, from the request, so only
/// shown when it looks like a name).
fn named_field(error: &str) -> Option<(bool, String)> {
    let (missing, rest) = if let Some(rest) = error.strip_prefix("missing field `") {
        (true, rest)
    } else {
        (false, error.strip_prefix("unknown field `")?)
    };
    let name = rest.split('`').next()?;
    let name = if missing { Some(name) } else { shown(name) };
    name.map(|n| (missing, n.to_owned()))
}

/// The issue for a value actix's extractors could not deserialise (`what`: query
/// parameter or field), from serde's message, whose text (it may quote the value) is
/// never passed on.
fn deserialize_issue(message: &str, what: &str) -> Issue {
    match named_field(message) {
        Some((true, name)) => Issue::structure(
            IssueType::Required,
            name,
            format!("this {what} is required"),
        ),
        Some((false, name)) => Issue::structure(
            IssueType::NotSupported,
            name,
            format!("this endpoint does not take this {what}"),
        ),
        None => Issue::new(
            RecCode::BadRequest,
            IssueType::Value,
            format!("a {what} is missing, not taken by this endpoint, or malformed"),
        ),
    }
}

/// Refusals by actix's own extractors (`web::Query`, `web::Path`, `web::Json`), for
/// any handler that uses them: OperationOutcomes like the gateway's own, never actix's
/// plain text. Registered on the whole application by [`crate::startup`].
pub mod extractors {
    use super::*;
    use actix_web::{
        HttpRequest,
        error::{JsonPayloadError, PathError, QueryPayloadError},
    };

    pub fn query_config() -> web::QueryConfig {
        web::QueryConfig::default().error_handler(query_error)
    }

    pub fn path_config() -> web::PathConfig {
        web::PathConfig::default().error_handler(path_error)
    }

    pub fn json_config() -> web::JsonConfig {
        web::JsonConfig::default().error_handler(json_error)
    }

    /// 400 at the query parameter serde names, where it names one.
    pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        let message = match &err {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            _ => String::new(),
        };
        Rejection::one(deserialize_issue(&message, "query parameter")).into()
    }

    /// 404 at the path's id: a malformed id names nothing.
    pub fn path_error(_err: PathError, req: &HttpRequest) -> actix_web::Error {
        let mut names = req.match_info().iter().map(|(name, _)| name);
        let issue = Issue::new(
            RecCode::NotFound,
            IssueType::NotFound,
            "nothing has this id: it is not in the form this endpoint's ids take",
        );
        let issue = match (names.next(), names.next()) {
            (Some(name), None) => issue.at(name),
            _ => issue,
        };
        Rejection::one(issue).into()
    }

    /// 415 for another content type, 413 past the limit, 400 for a body that is not
    /// JSON or not the JSON expected (at the field serde names, where it names one).
    pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        let issue = match &err {
            JsonPayloadError::ContentType => Issue::new(
                RecCode::UnsupportedMediaType,
                IssueType::NotSupported,
                "Content-Type must be application/json",
            ),
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                Issue::new(
                    RecCode::PayloadTooLarge,
                    IssueType::TooLong,
                    "the body is larger than this endpoint accepts",
                )
            }
            JsonPayloadError::Deserialize(e) if e.is_data() => {
                deserialize_issue(&e.to_string(), "field")
            }
            JsonPayloadError::Deserialize(_) => Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                "the body is not JSON",
            ),
            _ => Issue::new(
                RecCode::BadRequest,
                IssueType::Structure,
                "the body could not be read",
            ),
        };
        Rejection::one(issue).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_and_no_value_is_quoted() {
        let mut q = Query::parse(
            "limit=abc&colour=9990000018&9990000018=x&limit=2&from=2026-01-01",
            &["from", "limit"],
        );
        assert_eq!(q.text("from"), Some("2026-01-01"));
        assert_eq!(
            q.get("limit", "a whole number", |v| v.parse::<i64>().ok()),
            None
        );
        let issues = q.finish().unwrap_err().issues;
        let at: Vec<_> = issues.iter().map(|i| i.expression.as_deref()).collect();
        assert_eq!(at, [Some("colour"), None, Some("limit"), Some("limit")]);
        for i in &issues {
            assert!(
                !i.diagnostics.contains("9990000018") && !i.diagnostics.contains("abc"),
                "{i:?}"
            );
        }
        let missing = {
            let mut q = Query::parse("", &["from"]);
            q.required("from", DATE_OR_INSTANT, |_| Some(()));
            q.finish().unwrap_err().issues
        };
        assert_eq!(missing[0].code, IssueType::Required);
        assert!(Query::none("x=1").is_err() && Query::none("").is_ok());
        assert_eq!(page_size(1000)("5000"), Some(1000));

        let mut body = JsonFields::parse(
            br#"{"event": 5, "hours": 16, "9990000018": 1}"#,
            &["event", "occurred_at"],
            "an event",
        )
        .unwrap();
        assert_eq!(body.string("event", true, "a string"), None);
        assert_eq!(body.string("occurred_at", true, "a date"), None);
        let issues = body.finish().unwrap_err().issues;
        let mut at: Vec<_> = issues.iter().map(|i| i.expression.as_deref()).collect();
        at.sort_unstable();
        assert_eq!(
            at,
            [None, Some("event"), Some("hours"), Some("occurred_at")]
        );
        assert!(JsonFields::parse(b"[1]", &[], "x").is_err());
    }

    /// What an extractor's refusal answers: status, content type and the outcome.
    fn answered(e: actix_web::Error) -> (u16, String, Value) {
        let res = e.error_response();
        let content_type = res
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let status = res.status().as_u16();
        let body = actix_web::body::to_bytes(res.into_body());
        let body = futures_util::FutureExt::now_or_never(body)
            .unwrap()
            .unwrap();
        (status, content_type, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn actix_extractors_refuse_with_outcomes_naming_the_parameter() {
        use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
        use serde::de::Error as _;
        let req = actix_web::test::TestRequest::default().to_http_request();
        let de = |m: &str| serde::de::value::Error::custom(m);

        let (status, content_type, body) = answered(extractors::query_error(
            QueryPayloadError::Deserialize(de("missing field `since`")),
            &req,
        ));
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/fhir+json")
        );
        assert_eq!(body["issue"][0]["expression"][0], "since");
        assert_eq!(body["issue"][0]["code"], "required");
        let (_, _, body) = answered(extractors::query_error(
            QueryPayloadError::Deserialize(de("invalid digit found in string `9990000018`")),
            &req,
        ));
        assert!(!body.to_string().contains("9990000018"), "{body}");

        let req = actix_web::test::TestRequest::default()
            .param("referral_id", "x")
            .to_http_request();
        let (status, _, body) = answered(extractors::path_error(
            PathError::Deserialize(de("bad")),
            &req,
        ));
        assert_eq!(status, 404);
        assert_eq!(body["issue"][0]["expression"][0], "referral_id");

        let (status, content_type, _) =
            answered(extractors::json_error(JsonPayloadError::ContentType, &req));
        assert_eq!(
            (status, content_type.as_str()),
            (415, "application/fhir+json")
        );
        let (status, _, _) = answered(extractors::json_error(
            JsonPayloadError::Overflow { limit: 1 },
            &req,
        ));
        assert_eq!(status, 413);
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code, reason = "only deserialised")]
        struct Shape {
            hours: f64,
        }
        let wrong = serde_json::from_str::<Shape>(r#"{"hours": "sixteen"}"#).unwrap_err();
        let (status, _, body) = answered(extractors::json_error(
            JsonPayloadError::Deserialize(wrong),
            &req,
        ));
        assert_eq!(status, 400);
        assert!(!body.to_string().contains("sixteen"), "{body}");
        let missing = serde_json::from_str::<Shape>("{}").unwrap_err();
        let (_, _, body) = answered(extractors::json_error(
            JsonPayloadError::Deserialize(missing),
            &req,
        ));
        assert_eq!(body["issue"][0]["expression"][0], "hours");
        assert_eq!(page_size(1000)("0"), None);
    }
}
