//! Transforms: the coarsening a dataset field applies to its source value before it
//! leaves (a year instead of a date, an age band instead of a birth date, a postcode
//! district instead of an address). Pure functions over one value; `None` means the
//! value is not in a form the transform understands.

use fhir_sdk::time::{Date, Month};
use std::fmt;

/// A transform as named in a dataset file's `transform = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformKind {
    Copy,
    Pseudonym,
    Category,
    Year,
    AgeBand,
    PostcodeDistrict,
    Constant,
    FirstOf,
    Date,
}

impl TransformKind {
    pub const ALL: [Self; 9] = [
        Self::Copy,
        Self::Pseudonym,
        Self::Category,
        Self::Year,
        Self::AgeBand,
        Self::PostcodeDistrict,
        Self::Constant,
        Self::FirstOf,
        Self::Date,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Pseudonym => "pseudonym",
            Self::Category => "category",
            Self::Year => "year",
            Self::AgeBand => "age_band",
            Self::PostcodeDistrict => "postcode_district",
            Self::Constant => "constant",
            Self::FirstOf => "first_of",
            Self::Date => "date",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for TransformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The calendar date at the start of a FHIR `date` or `dateTime` (`YYYY-MM-DD`, optionally
/// followed by `T...`). Partial dates (`1973`, `1973-04`) give `None`.
pub fn date(text: &str) -> Option<Date> {
    let (day, rest) = text.split_at_checked(10)?;
    if !(rest.is_empty() || rest.starts_with('T')) {
        return None;
    }
    let b = day.as_bytes();
    if !day.is_ascii() || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i32 = digits(&day[..4])?.try_into().ok()?;
    let month = Month::try_from(u8::try_from(digits(&day[5..7])?).ok()?).ok()?;
    let dom = u8::try_from(digits(&day[8..10])?).ok()?;
    Date::from_calendar_date(year, month, dom).ok()
}

/// The year of a FHIR `date` or `dateTime`, partial dates included (`1973`, `1973-04`).
pub fn year(text: &str) -> Option<i32> {
    let (y, rest) = text.split_at_checked(4)?;
    if !(rest.is_empty() || rest.starts_with('-')) {
        return None;
    }
    if rest.len() > 3 {
        // Longer than `YYYY-MM`: must be a real date, not `1973-99-99`.
        date(text)?;
    }
    digits(y)?.try_into().ok()
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Age band on `on` of someone born on `birth`. Bands follow the usual employment
/// statistics groups; a birth date after `on` gives `None`.
pub fn age_band(birth: Date, on: Date) -> Option<&'static str> {
    if birth > on {
        return None;
    }
    let birthday_passed =
        (u8::from(on.month()), on.day()) >= (u8::from(birth.month()), birth.day());
    let age = on.year() - birth.year() - i32::from(!birthday_passed);
    Some(match age {
        ..18 => "under-18",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    })
}

/// The outward code (postcode district) of a UK postcode, enough to match a local
/// specialist without disclosing the address: `"B69 4AA"` -> `"B69"`,
/// `"wv10 1aa"` -> `"WV10"`. Anything not shaped like a full postcode gives `None`.
pub fn postcode_district(text: &str) -> Option<String> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !compact.is_ascii() || !(5..=7).contains(&compact.len()) {
        return None;
    }
    let (outward, inward) = compact.split_at(compact.len() - 3);
    let i = inward.as_bytes();
    let inward_ok =
        i[0].is_ascii_digit() && i[1].is_ascii_alphabetic() && i[2].is_ascii_alphabetic();
    // Outward forms: A9, A99, AA9, AA99, A9A, AA9A.
    let o = outward.as_bytes();
    let letters = o.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let tail = &o[letters..];
    let outward_ok = (1..=2).contains(&letters)
        && match tail {
            [d] => d.is_ascii_digit(),
            [d, x] => d.is_ascii_digit() && x.is_ascii_alphanumeric(),
            _ => false,
        };
    (inward_ok && outward_ok).then(|| outward.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_sdk::time::macros::date;

    #[test]
    fn transform_names_round_trip() {
        for t in TransformKind::ALL {
            assert_eq!(TransformKind::parse(t.as_str()), Some(t));
        }
        assert_eq!(TransformKind::parse("Copy"), None);
        assert_eq!(TransformKind::parse("phone"), None);
    }

    #[test]
    fn date_takes_the_day_of_a_date_or_date_time() {
        assert_eq!(super::date("1973-04-12"), Some(date!(1973 - 04 - 12)));
        assert_eq!(
            super::date("2026-11-20T10:10:00+00:00"),
            Some(date!(2026 - 11 - 20))
        );
        for bad in [
            "1973",
            "1973-04",
            "1973-02-30",
            "1973-13-01",
            "73-04-12",
            "1973/04/12",
            "1973-04-12x",
            "",
            "１９７３-04-12",
        ] {
            assert_eq!(super::date(bad), None, "{bad}");
        }
    }

    #[test]
    fn year_accepts_partial_dates_and_date_times() {
        assert_eq!(year("1973"), Some(1973));
        assert_eq!(year("1973-04"), Some(1973));
        assert_eq!(year("1973-04-12"), Some(1973));
        assert_eq!(year("2026-11-20T10:10:00Z"), Some(2026));
        for bad in ["", "197", "19733", "abcd", "1973-99-99", "1973x"] {
            assert_eq!(year(bad), None, "{bad}");
        }
    }

    #[test]
    fn age_band_counts_whole_years_at_the_referral_date() {
        let on = date!(2026 - 11 - 20);
        let cases = [
            (date!(2008 - 11 - 21), "under-18"),
            (date!(2008 - 11 - 20), "18-24"),
            (date!(2002 - 11 - 20), "18-24"),
            (date!(2001 - 11 - 21), "18-24"),
            (date!(2001 - 11 - 20), "25-34"),
            (date!(1991 - 11 - 21), "25-34"),
            (date!(1991 - 11 - 20), "35-44"),
            (date!(1973 - 04 - 12), "45-54"),
            (date!(1971 - 11 - 20), "55-64"),
            (date!(1961 - 11 - 21), "55-64"),
            (date!(1961 - 11 - 20), "65+"),
            (date!(1940 - 01 - 01), "65+"),
            (on, "under-18"),
        ];
        for (birth, band) in cases {
            assert_eq!(age_band(birth, on), Some(band), "{birth}");
        }
        assert_eq!(age_band(date!(2027 - 01 - 01), on), None);
        // Born on 29 February: 18 on 1 March in a common year.
        assert_eq!(
            age_band(date!(2008 - 02 - 29), date!(2026 - 02 - 28)),
            Some("under-18")
        );
        assert_eq!(
            age_band(date!(2008 - 02 - 29), date!(2026 - 03 - 01)),
            Some("18-24")
        );
    }

    #[test]
    fn postcode_district_is_the_outward_code() {
        let cases = [
            ("B69 4AA", "B69"),
            ("WV101AA", "WV10"),
            ("wv10 1aa", "WV10"),
            (" b69  4aa ", "B69"),
            ("M1 1AE", "M1"),
            ("CR2 6XH", "CR2"),
            ("DN55 1PT", "DN55"),
            ("W1A 0AX", "W1A"),
            ("EC1A 1BB", "EC1A"),
            ("B\u{a0}69 4AA", "B69"),
        ];
        for (postcode, district) in cases {
            assert_eq!(
                postcode_district(postcode).as_deref(),
                Some(district),
                "{postcode}"
            );
        }
        for bad in [
            "",
            "B69",
            "B69 4A",
            "1B9 4AA",
            "B69 AAA",
            "ABC1 1AA",
            "B6999 4AA",
            "B69 4AAA",
            "B6é 4AA",
            "B69-4AA",
        ] {
            assert_eq!(postcode_district(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn postcode_district_never_panics_and_is_a_prefix(text in "\\PC{0,12}") {
            if let Some(district) = postcode_district(&text) {
                let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                proptest::prop_assert!(compact.to_ascii_uppercase().starts_with(&district));
                proptest::prop_assert!((2..=4).contains(&district.len()));
            }
        }

        #[test]
        fn postcode_district_finds_every_generated_postcode(
            area in "[A-Z]{1,2}", district in "[0-9][0-9A-Z]?", sector in "[0-9]", unit in "[A-Z]{2}",
        ) {
            let outward = format!("{area}{district}");
            let postcode = format!("{outward} {sector}{unit}");
            proptest::prop_assert_eq!(postcode_district(&postcode), Some(outward));
        }

        #[test]
        fn date_and_year_never_panic(text in "\\PC{0,30}") {
            let _ = super::date(&text);
            let _ = year(&text);
        }
    }
}
