//! Values with rules, checked once at the edge and trusted everywhere after.
//!
//! Every type here can only be built through a parser that enforces its rules, so the
//! rest of the pipeline never re-checks an NHS number or an ODS code.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

mod milestone;
mod nhs_number;
mod ods_code;
mod reference;

pub use milestone::{EVENTS, Milestone};
pub use nhs_number::{NHS_NUMBER_SYSTEM, NhsNumber, NhsNumberError};
pub use ods_code::{ODS_SYSTEM, ODS_SYSTEM_LOWER, OdsCode, OdsCodeError};
pub use reference::ReferralReference;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A provider's identifier as declared in the routing mapping (`bchft`, `prospects`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(String);

impl ProviderId {
    /// Accepts lower-case letters, digits and hyphens: the ids are used in
    /// configuration keys (`THRIVE__PROVIDERS__<ID>__...`) and URLs.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "provider id `{s}` must be 1 to 64 lower-case letters, digits, `-` or `_`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
