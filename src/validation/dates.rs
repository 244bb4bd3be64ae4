//! FHIR dates and dateTimes as instants, for "not in the future" and "covers now".
//!
//! A partial date stands for a span: `2026` is all of 2026. Checks that must not let a
//! bad value through use the bound that is strictest for them.

use fhir_sdk::time::{Date as Day, Month, OffsetDateTime, Time};
use fhir_sdk::{Date, DateTime};

fn first_day(d: &Date) -> Day {
    match d {
        Date::Year(y) => Day::from_calendar_date(*y, Month::January, 1),
        Date::YearMonth(y, m) => Day::from_calendar_date(*y, *m, 1),
        Date::Date(d) => Ok(*d),
    }
    .unwrap_or(Day::MIN)
}

/// The last calendar day a (partial) date can mean.
pub fn latest_day(d: &Date) -> Day {
    match d {
        Date::Year(y) => Day::from_calendar_date(*y, Month::December, 31).unwrap_or(Day::MAX),
        Date::YearMonth(y, m) => {
            let days = m.length(*y);
            Day::from_calendar_date(*y, *m, days).unwrap_or(Day::MAX)
        }
        Date::Date(d) => *d,
    }
}

/// The earliest instant a dateTime can mean (dates start at midnight UTC).
pub fn lower_bound(dt: &DateTime) -> OffsetDateTime {
    match dt {
        DateTime::DateTime(i) => i.0,
        DateTime::Date(d) => first_day(d).with_time(Time::MIDNIGHT).assume_utc(),
    }
}

/// The first instant after a dateTime: the day after a date, so an end date is
/// included whole. The last day there is (`9999-12-31`, a common "no end date") ends
/// at the last instant there is, rather than overflowing.
pub fn upper_bound(dt: &DateTime) -> OffsetDateTime {
    match dt {
        DateTime::DateTime(i) => i.0,
        DateTime::Date(d) => match latest_day(d).next_day() {
            Some(next) => next.with_time(Time::MIDNIGHT).assume_utc(),
            None => Day::MAX.with_time(Time::MAX).assume_utc(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_sdk::time::macros::datetime;

    #[test]
    fn partial_dates_span_their_whole_period() {
        let year = DateTime::Date(Date::Year(2026));
        assert_eq!(lower_bound(&year), datetime!(2026-01-01 0:00 UTC));
        assert_eq!(upper_bound(&year), datetime!(2027-01-01 0:00 UTC));
        let feb = DateTime::Date(Date::YearMonth(2028, Month::February));
        assert_eq!(upper_bound(&feb), datetime!(2028-03-01 0:00 UTC));
    }

    #[test]
    fn the_ends_of_the_calendar_are_dates_not_panics() {
        let far = datetime!(9999-12-31 0:00 UTC);
        for end in [
            Date::Year(9999),
            Date::YearMonth(9999, Month::December),
            Date::Date(Day::MAX),
        ] {
            let end = DateTime::Date(end);
            assert!(upper_bound(&end) > far, "{end:?} covers its last day");
        }
        assert_eq!(
            lower_bound(&DateTime::Date(Date::Date(Day::MIN))).date(),
            Day::MIN
        );
    }
}
