//! Request parameters outside the body: the query string and ids in the path. They
//! are read strictly, after the caller is authenticated, so that a parameter an
//! endpoint does not take, one given twice, or a malformed one is refused (and, where
//! the endpoint audits its refusals, recorded) as an `OperationOutcome` whose
//! `issue.expression` names the parameter. A diagnostic never quotes a value.

use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::web;

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
fn shown(name: &str) -> Option<&str> {
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
        assert_eq!(page_size(1000)("0"), None);
    }
}
