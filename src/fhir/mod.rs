//! FHIR mechanics shared by every stage that reads a message: how references resolve
//! inside a Bundle, and which resource types the gateway reads.

pub mod bundle;
pub mod json;
pub mod types;

/// The gateway's own FHIR base: `MessageHeader.source.endpoint` of what it sends, and
/// the base of the absolute `fullUrl`s of resources whose ids are not UUIDs.
pub const BASE: &str = "https://thrive-gateway.nhs.uk/fhir/r4";

/// An absolute `fullUrl`: `urn:uuid:` for a UUID id, else the gateway's base.
pub fn full_url(resource_type: &str, id: &str) -> String {
    if uuid::Uuid::parse_str(id).is_ok() {
        format!("urn:uuid:{id}")
    } else {
        format!("{BASE}/{resource_type}/{id}")
    }
}
