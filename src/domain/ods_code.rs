//! ODS organisation codes: GP practices, trusts and other NHS bodies.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Canonical UK Core system for ODS codes.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// The lower-case `id` spelling some NHS examples use; accepted, never emitted.
pub const ODS_SYSTEM_LOWER: &str = "https://fhir.nhs.uk/id/ods-organization-code";

/// An ODS code in canonical (upper-case) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OdsCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an ODS code is 3 to 10 letters and digits")]
pub struct OdsCodeError;

impl OdsCode {
    /// Accepts either case and stores upper case, as ODS publishes codes.
    pub fn parse(raw: &str) -> Result<Self, OdsCodeError> {
        let trimmed = raw.trim();
        if (3..=10).contains(&trimmed.len()) && trimmed.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(trimmed.to_ascii_uppercase()))
        } else {
            Err(OdsCodeError)
        }
    }

    /// True for either spelling of the ODS identifier system.
    pub fn is_ods_system(system: &str) -> bool {
        system == ODS_SYSTEM || system == ODS_SYSTEM_LOWER
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OdsCode {
    type Error = OdsCodeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OdsCode> for String {
    fn from(value: OdsCode) -> Self {
        value.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_case_and_rejects_junk() {
        assert_eq!(OdsCode::parse("y90001").unwrap().as_str(), "Y90001");
        assert_eq!(OdsCode::parse("TAJ").unwrap().as_str(), "TAJ");
        assert!(OdsCode::parse("AB").is_err());
        assert!(OdsCode::parse("Y9-0001").is_err());
        assert!(OdsCode::parse("ABCDEFGHIJK").is_err());
    }

    #[test]
    fn both_system_spellings_are_ods() {
        assert!(OdsCode::is_ods_system(ODS_SYSTEM));
        assert!(OdsCode::is_ods_system(ODS_SYSTEM_LOWER));
        assert!(!OdsCode::is_ods_system("https://fhir.nhs.uk/Id/nhs-number"));
    }
}
