//! The NHS number: ten digits whose last is a Modulus 11 check digit.

use std::fmt;

/// UK Core identifier system for NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// An NHS number whose form has been checked. Its `Debug` never prints the digits, so a
/// stray `{:?}` cannot put one in a log line.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NhsNumber(String);

/// Why a value is not an NHS number. Carries no part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("an NHS number has exactly 10 digits (spaces allowed between groups)")]
    NotTenDigits,
    #[error("the NHS number fails the Modulus 11 check digit")]
    CheckDigit,
    #[error("an NHS number cannot be one digit repeated")]
    AllSameDigit,
}

impl NhsNumber {
    /// Parses `9434765919` or `943 476 5919`; stores the digits only.
    pub fn parse(raw: &str) -> Result<Self, NhsNumberError> {
        let digits: Vec<u32> = raw
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_digit(10).unwrap_or(u32::MAX))
            .collect();
        let [rest @ .., check_digit] = digits.as_slice() else {
            return Err(NhsNumberError::NotTenDigits);
        };
        if digits.len() != 10 || digits.contains(&u32::MAX) {
            return Err(NhsNumberError::NotTenDigits);
        }
        if digits.iter().all(|d| Some(d) == digits.first()) {
            return Err(NhsNumberError::AllSameDigit);
        }
        // Ten digits of at most 9, weights of at most 10: no sum here can overflow.
        let sum: u32 = rest
            .iter()
            .zip((2..=10u32).rev())
            .map(|(d, w)| d.saturating_mul(w))
            .fold(0, u32::saturating_add);
        let check = match 11u32.saturating_sub(sum % 11) {
            11 => 0,
            10 => return Err(NhsNumberError::CheckDigit),
            c => c,
        };
        if check != *check_digit {
            return Err(NhsNumberError::CheckDigit);
        }
        Ok(Self(raw.chars().filter(char::is_ascii_digit).collect()))
    }

    /// The ten digits, for storage and for keyed pseudonyms. Never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_data_dictionary_example_with_and_without_spaces() {
        assert_eq!(
            NhsNumber::parse("9434765919").unwrap().expose(),
            "9434765919"
        );
        assert_eq!(
            NhsNumber::parse("943 476 5919").unwrap().expose(),
            "9434765919"
        );
        for n in ["9990000018", "9990000026", "9990000034"] {
            assert!(NhsNumber::parse(n).is_ok(), "{n} is a valid test number");
        }
    }

    #[test]
    fn rejects_bad_check_digit_length_letters_and_repeats() {
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigit)
        );
        assert_eq!(
            NhsNumber::parse("943476591"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(
            NhsNumber::parse("94347659190"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(
            NhsNumber::parse("94347X5919"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::NotTenDigits));
        assert_eq!(
            NhsNumber::parse("1111111111"),
            Err(NhsNumberError::AllSameDigit)
        );
        assert_eq!(
            NhsNumber::parse("0000000000"),
            Err(NhsNumberError::AllSameDigit)
        );
    }

    #[test]
    fn check_digit_ten_is_never_valid() {
        // 000000006: 6 x 2 = 12; 12 mod 11 = 1; 11 - 1 = 10, so no final digit fits.
        for last in 0..=9 {
            let n = format!("000000006{last}");
            assert_eq!(NhsNumber::parse(&n), Err(NhsNumberError::CheckDigit), "{n}");
        }
    }

    #[test]
    fn debug_does_not_print_the_number() {
        let n = NhsNumber::parse("9990000018").unwrap();
        assert!(!format!("{n:?}").contains("999"));
    }

    proptest! {
        /// Exactly one final digit makes any nine-digit prefix valid, unless its check
        /// digit would be 10 or the result repeats one digit.
        #[test]
        fn at_most_one_check_digit_fits(prefix in "[0-9]{9}") {
            let valid: Vec<u8> = (0..=9)
                .filter(|d| NhsNumber::parse(&format!("{prefix}{d}")).is_ok())
                .collect();
            prop_assert!(valid.len() <= 1);
        }

        #[test]
        fn spaces_do_not_change_the_result(prefix in "[0-9]{9}", last in 0u8..10) {
            let plain = format!("{prefix}{last}");
            let spaced = format!("{} {} {}", &plain[..3], &plain[3..6], &plain[6..]);
            prop_assert_eq!(NhsNumber::parse(&plain).is_ok(), NhsNumber::parse(&spaced).is_ok());
        }
    }
}
