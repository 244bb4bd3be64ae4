//! FHIR mechanics shared by every stage that reads a message: how references resolve
//! inside a Bundle, and which resource types the gateway reads.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

pub mod bundle;
pub mod definitions;
pub mod json;
pub mod messages;
pub mod provider;
pub mod types;

/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// BaRS message events (`servicerequest-request`, `servicerequest-response`).
pub const MESSAGE_EVENTS: &str = "https://fhir.nhs.uk/CodeSystem/message-events-bars";
/// BaRS message reasons (`new`, `update`).
pub const MESSAGE_REASONS: &str = "https://fhir.nhs.uk/CodeSystem/message-reason-bars";

/// The gateway's own FHIR base: `MessageHeader.source.endpoint` of what it sends, and
/// the base of the absolute `fullUrl`s of resources whose ids are not UUIDs.
pub const BASE: &str = "https://thrive-gateway.nhs.uk/fhir/r4";

/// Sets `key` on a JSON object the gateway is building; anything but an object is left
/// as it is (where `value[key] = ...` would panic).
pub fn set(object: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

/// An absolute `fullUrl`: `urn:uuid:` for a UUID id, else the gateway's base.
pub fn full_url(resource_type: &str, id: &str) -> String {
    if uuid::Uuid::parse_str(id).is_ok() {
        format!("urn:uuid:{id}")
    } else {
        format!("{BASE}/{resource_type}/{id}")
    }
}

/// Whether a string shaped like an RFC 3339 date-time (`YYYY-MM-DDThh:mm…`) carries a
/// time-zone offset FHIR allows: `Z` or -14:00 to +14:00 (R4's dateTime and instant
/// patterns). The time crate reads offsets up to ±25:59, which no clock uses.
pub fn offset_in_range(text: &str) -> bool {
    let b = text.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let shaped = b.len() >= 16
        && at(4) == Some(b'-')
        && at(7) == Some(b'-')
        && at(10) == Some(b'T')
        && at(13) == Some(b':')
        && b.iter().take(4).all(u8::is_ascii_digit);
    if !shaped || text.ends_with('Z') {
        return true;
    }
    let Some(sign_at) = text.len().checked_sub(6) else {
        return true;
    };
    let (head, offset) = text.split_at(sign_at);
    if head.len() < 16 || !(offset.starts_with('+') || offset.starts_with('-')) {
        return true;
    }
    let hours: Option<u32> = offset.get(1..3).and_then(|h| h.parse().ok());
    let minutes: Option<u32> = offset.get(4..6).and_then(|m| m.parse().ok());
    match (hours, minutes) {
        (Some(h), Some(m)) => m < 60 && (h < 14 || (h == 14 && m == 0)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_beyond_fourteen_hours_are_out_of_range() {
        use super::offset_in_range as ok;
        assert!(ok("2026-12-01T09:00:00Z"));
        assert!(ok("2026-12-01T09:00:00+01:00"));
        assert!(ok("2026-12-01T09:00:00-14:00"));
        assert!(!ok("2026-12-01T09:00:00+25:00"));
        assert!(!ok("2026-12-01T09:00:00+14:30"));
        assert!(!ok("2026-12-01T09:00:00.123-15:00"));
        assert!(ok("2026-12-01"), "a date has no offset");
        assert!(ok("not a date at all, +25:00"));
    }
}
