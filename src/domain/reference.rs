//! Human-readable referral references, read out over the phone by patients and staff.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Characters that cannot be mistaken for one another when read aloud or handwritten:
/// no 0/O, 1/I/L, 5/S, 2/Z, 8/B or U/V.
const ALPHABET: &[u8] = b"34679ACDEFGHJKMNPQRTWXY";

/// A reference such as `TIW-7K3M-9QX4`: a programme prefix and eight unambiguous
/// characters (23^8, about 7.8e10 values); uniqueness is enforced by the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReferralReference(String);

impl ReferralReference {
    /// A fresh random reference with the programme's prefix.
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 8];
        // The OS random source failing is unrecoverable for the process.
        getrandom::fill(&mut bytes).expect("operating system random source");
        let chars: Vec<char> = bytes
            .iter()
            .filter_map(|b| {
                let at = usize::from(*b).checked_rem(ALPHABET.len())?;
                ALPHABET.get(at).copied().map(char::from)
            })
            .collect();
        let (first, second) = chars.split_at(chars.len().min(4));
        Self(format!(
            "{prefix}-{}-{}",
            first.iter().collect::<String>(),
            second.iter().collect::<String>()
        ))
    }

    /// Wraps a reference read back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReferralReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_prefix_two_groups_of_four_and_only_unambiguous_characters() {
        for _ in 0..200 {
            let r = ReferralReference::generate("TIW");
            let s = r.as_str();
            assert_eq!(s.len(), 13, "{s}");
            assert!(s.starts_with("TIW-"));
            assert_eq!(&s[8..9], "-");
            for c in s[4..8].bytes().chain(s[9..].bytes()) {
                assert!(ALPHABET.contains(&c), "{s} holds {}", c as char);
            }
        }
    }
}
