//! The NHS identity headers a BaRS sender may add (`NHSD-End-User-Organisation`,
//! `NHSD-Requesting-Software`, `NHSD-Requesting-Practitioner`: base64 JSON FHIR
//! resources). They are accepted, never required, and kept in the audit record as the
//! actor's identity: the resource type and its identifiers, the organisation or device
//! name, nothing else. They describe staff and systems, not the patient.

use actix_web::http::header::HeaderMap;
use base64::Engine;
use serde_json::{Map, Value, json};

/// The headers, with the key each is kept under and the resource it must hold.
const HEADERS: [(&str, &str, &str); 3] = [
    ("nhsd-end-user-organisation", "organisation", "Organization"),
    ("nhsd-requesting-software", "software", "Device"),
    (
        "nhsd-requesting-practitioner",
        "practitioner",
        "PractitionerRole",
    ),
];

/// Longest header value read; a longer one is recorded as too long.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// At most this many identifiers are kept per resource, each value at most 64 chars.
const MAX_IDENTIFIERS: usize = 4;
const MAX_TEXT: usize = 64;

/// The identity headers present on a request, summarised as a compact JSON object
/// (`None` when none was sent).
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    let mut out = Map::new();
    for (header, key, resource_type) in HEADERS {
        if let Some(value) = headers.get(header) {
            out.insert(key.to_owned(), summarise(value.as_bytes(), resource_type));
        }
    }
    (!out.is_empty()).then(|| Value::Object(out).to_string())
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

fn summarise(raw: &[u8], resource_type: &str) -> Value {
    if raw.len() > MAX_HEADER_BYTES {
        return json!({"invalid": "too long"});
    }
    let raw = raw.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw));
    let Ok(decoded) = decoded else {
        return json!({"invalid": "not base64"});
    };
    let Ok(resource) = serde_json::from_slice::<Value>(&decoded) else {
        return json!({"invalid": "not JSON"});
    };
    if resource["resourceType"] != resource_type {
        return json!({"invalid": format!("not a {resource_type}")});
    }
    let identifiers: Vec<Value> = resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_IDENTIFIERS)
        .map(|i| {
            json!({
                "system": i["system"].as_str().map(clip),
                "value": i["value"].as_str().map(clip),
            })
        })
        .collect();
    let mut summary = json!({"resourceType": resource_type, "identifier": identifiers});
    let name = match resource_type {
        "Organization" => resource["name"].as_str(),
        "Device" => resource["deviceName"][0]["name"].as_str(),
        _ => None,
    };
    if let Some(name) = name {
        summary["name"] = json!(clip(name));
    }
    if resource_type == "Device"
        && let Some(version) = resource["version"][0]["value"].as_str()
    {
        summary["version"] = json!(clip(version));
    }
    if resource_type == "PractitionerRole" {
        for (key, field) in [
            ("practitioner", "practitioner"),
            ("organization", "organization"),
        ] {
            if let Some(v) = resource[field]["identifier"]["value"].as_str() {
                summary[key] = json!({
                    "system": resource[field]["identifier"]["system"].as_str().map(clip),
                    "value": clip(v),
                });
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn b64(v: Value) -> String {
        base64::engine::general_purpose::STANDARD.encode(v.to_string())
    }

    #[test]
    fn keeps_identifiers_and_names_of_each_header() {
        let org = b64(
            json!({"resourceType": "Organization", "name": "Dudley Practice",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "M85001"}],
            "telecom": [{"value": "01234 567890"}]}),
        );
        let device = b64(
            json!({"resourceType": "Device", "deviceName": [{"name": "GP System"}],
            "version": [{"value": "4.2"}]}),
        );
        let role = b64(json!({"resourceType": "PractitionerRole",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "555"}],
            "practitioner": {"identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "123"}}}));
        let got = from_headers(&headers(&[
            ("NHSD-End-User-Organisation", &org),
            ("NHSD-Requesting-Software", &device),
            ("NHSD-Requesting-Practitioner", &role),
        ]))
        .unwrap();
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["organisation"]["identifier"][0]["value"], "M85001");
        assert_eq!(v["organisation"]["name"], "Dudley Practice");
        assert!(!got.contains("01234"), "telecom is not kept");
        assert_eq!(v["software"]["name"], "GP System");
        assert_eq!(v["software"]["version"], "4.2");
        assert_eq!(v["practitioner"]["practitioner"]["value"], "123");
    }

    #[test]
    fn bad_headers_are_recorded_as_invalid_and_absent_ones_not_at_all() {
        assert_eq!(from_headers(&headers(&[])), None);
        let got = from_headers(&headers(&[
            ("NHSD-End-User-Organisation", "%%%"),
            (
                "NHSD-Requesting-Software",
                &b64(json!({"resourceType": "Patient"})),
            ),
        ]))
        .unwrap();
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["organisation"]["invalid"], "not base64");
        assert_eq!(v["software"]["invalid"], "not a Device");
    }
}
