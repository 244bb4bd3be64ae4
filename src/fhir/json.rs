//! Reading a JSON body into one meaning: a key given twice in an object is an error
//! with its path, where serde_json's own `Value` would keep the last silently (and
//! anything upstream that kept the first would read another patient's message).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a body is not one JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Syntax, at a line and column.
    Syntax { line: usize, column: usize },
    /// Nested deeper than the parser's recursion limit.
    TooDeep,
    /// A key given twice; `path` is FHIRPath-like from `root`, with element names only
    /// where they are element-like (never other sender text).
    DuplicateKey { path: String },
}

/// Parses `body` as JSON, refusing duplicate keys anywhere. `root` names the top of
/// the paths reported (e.g. `Bundle`).
pub fn parse(body: &[u8], root: &str) -> Result<Value, JsonError> {
    // Paths cost an allocation at every key and index; they are built only to report a
    // key given twice, in a second reading.
    match read(body, root, false) {
        Err(JsonError::DuplicateKey { .. }) => read(body, root, true),
        other => other,
    }
}

fn read(body: &[u8], root: &str, track: bool) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut path = vec![root.to_owned()];
    let mut duplicate = None;
    let result = Strict {
        path: &mut path,
        duplicate: &mut duplicate,
        track,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (result, duplicate) {
        (_, Some(path)) => Err(JsonError::DuplicateKey { path }),
        (Ok(v), None) => Ok(v),
        (Err(e), None) if e.to_string().contains("recursion limit") => Err(JsonError::TooDeep),
        (Err(e), None) => Err(JsonError::Syntax {
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// A key shown in a path: element names only; anything else stands as `?`.
pub(crate) fn element(key: &str) -> &str {
    let ok = key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok && !key.is_empty() { key } else { "?" }
}

struct Strict<'a> {
    path: &'a mut Vec<String>,
    duplicate: &'a mut Option<String>,
    /// Whether `path` follows the reading; when not, a duplicate's path is left empty.
    track: bool,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            // The path always holds its root; an index extends its last element.
            let at = self.path.last().map_or(0, String::len);
            if self.track
                && let Some(last) = self.path.last_mut()
            {
                last.push_str(&format!("[{}]", items.len()));
            }
            let next = seq.next_element_seed(Strict {
                path: self.path,
                duplicate: self.duplicate,
                track: self.track,
            });
            if let Some(last) = self.path.last_mut() {
                last.truncate(at);
            }
            match next? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let mut at = String::new();
                if self.track {
                    at = self.path.join(".");
                    at.push('.');
                    at.push_str(element(&key));
                }
                *self.duplicate = Some(at);
                return Err(de::Error::custom("duplicate key"));
            }
            if self.track {
                self.path.push(element(&key).to_owned());
            }
            let value = map.next_value_seed(Strict {
                path: self.path,
                duplicate: self.duplicate,
                track: self.track,
            });
            if self.track {
                self.path.pop();
            }
            out.insert(key, value?);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_refused_with_its_path() {
        let body = br#"{"entry":[{"resource":{"identifier":[{"value":"9990000018","value":"9434765919"}]}}]}"#;
        assert_eq!(
            parse(body, "Bundle"),
            Err(JsonError::DuplicateKey {
                path: "Bundle.entry[0].resource.identifier[0].value".into()
            })
        );
    }

    #[test]
    fn values_read_as_serde_json_reads_them() {
        let body = br#"{"a":[1,-2,3.5,true,null,"x\u00e9"],"b":{"c":{}}}"#;
        let strict = parse(body, "$").unwrap();
        let plain: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn syntax_depth_and_trailing_text_are_errors_without_content() {
        assert!(matches!(
            parse(b"{\"a\":", "$"),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(
            parse(b"{} {}", "$"),
            Err(JsonError::Syntax { .. })
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse(deep.as_bytes(), "$"), Err(JsonError::TooDeep));
        // A key that is not element-like is not echoed.
        let err = parse(br#"{"Jane Doe":1,"Jane Doe":2}"#, "$").unwrap_err();
        assert_eq!(err, JsonError::DuplicateKey { path: "$.?".into() });
    }
}
