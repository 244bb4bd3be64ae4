//! Request parameters: the query string, ids in the path, and the fields of the
//! gateway's own (non-FHIR) JSON bodies. They are read strictly, after the caller is
//! authenticated, so that a parameter an endpoint does not take, one given twice, or a
//! malformed one is refused (and, where the endpoint audits its refusals, recorded) as
//! an `OperationOutcome` whose `issue.expression` names the parameter or field. A
//! diagnostic never quotes a value.

use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::web;
use serde_json::{Map, Value};

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
            } else if pairs[..n].iter().any(|(earlier, _)| earlier == name) {
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
        let value = self.text(name)?;
        let read = read(value);
        if read.is_none() {
            self.issues.push(Issue::structure(
                IssueType::Value,
                name,
                format!("{name} must be {what}"),
            ));
        }
        read
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
            Some(value) => {
                let read = read(value);
                if read.is_none() {
                    self.issues.push(Issue::structure(
                        IssueType::Value,
                        name,
                        format!("{name} must be {what}"),
                    ));
                }
                read
            }
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
        assert_eq!(page_size(1000)("0"), None);
    }
}
