//! How fast, how many at once and when a recipient takes deliveries: per-recipient
//! rate and concurrency limits, and quiet hours in UK local time.

use fhir_sdk::time::{Duration, OffsetDateTime};
use serde::Deserialize;

/// One quiet window, `HH:MM-HH:MM` in UK local time (Europe/London, British Summer
/// Time included). A window whose end is before its start runs past midnight
/// (`22:00-06:00`); the start is quiet, the end is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct QuietWindow {
    /// Minutes after local midnight.
    start: u16,
    end: u16,
}

impl TryFrom<String> for QuietWindow {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a window of UK local time like \"22:00-06:00\"");
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let minutes = |hm: &str| -> Option<u16> {
            let (h, m) = hm.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (
            minutes(start).ok_or_else(bad)?,
            minutes(end).ok_or_else(bad)?,
        );
        if start == end {
            return Err(format!("`{text}` is empty: its start and end are the same"));
        }
        Ok(Self { start, end })
    }
}

impl QuietWindow {
    /// True when `minute` (after local midnight) falls inside the window.
    fn holds(self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// True when `now` falls in any of `windows`, read as UK local time.
pub fn is_quiet(windows: &[QuietWindow], now: OffsetDateTime) -> bool {
    if windows.is_empty() {
        return false;
    }
    let Ok(instant) = jiff::Timestamp::from_second(now.unix_timestamp()) else {
        return false;
    };
    let Ok(london) = jiff::tz::TimeZone::get("Europe/London") else {
        // The zone is bundled into the binary: this cannot happen, and if it did,
        // sending in a quiet window is better than never sending.
        return false;
    };
    let local = instant.to_zoned(london);
    let minute =
        u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
    windows.iter().any(|w| w.holds(minute))
}

/// A recipient's limits, as configured for its provider or GP callback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pace {
    /// Deliveries started per second at most, across every gateway on the database.
    pub max_per_second: Option<f64>,
    /// Deliveries in flight at once at most, across every gateway on the database.
    pub max_in_flight: Option<u32>,
    pub quiet_hours: Vec<QuietWindow>,
}

impl Pace {
    /// The time between two deliveries' starts under the rate limit.
    pub fn interval(&self) -> Option<Duration> {
        self.max_per_second
            .filter(|r| *r > 0.0)
            .map(|r| Duration::seconds_f64(1.0 / r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_sdk::time::macros::datetime;

    fn window(s: &str) -> QuietWindow {
        QuietWindow::try_from(s.to_owned()).expect("a window")
    }

    #[test]
    fn windows_are_read_strictly() {
        for bad in [
            "22:00",
            "22-06",
            "24:00-06:00",
            "22:60-06:00",
            "2:00-06:00",
            "06:00-06:00",
            "",
        ] {
            assert!(QuietWindow::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert_eq!(
            window("22:00-06:00"),
            QuietWindow {
                start: 1320,
                end: 360
            }
        );
    }

    #[test]
    fn quiet_hours_follow_uk_local_time_through_british_summer_time() {
        let night = [window("22:00-06:00")];
        // Winter: local time is UTC.
        assert!(is_quiet(&night, datetime!(2026-12-01 22:30 UTC)));
        assert!(!is_quiet(&night, datetime!(2026-12-01 21:30 UTC)));
        assert!(is_quiet(&night, datetime!(2026-12-02 05:59 UTC)));
        assert!(!is_quiet(&night, datetime!(2026-12-02 06:00 UTC)));
        // Summer: 21:30 UTC is 22:30 BST, quiet; 05:30 UTC is 06:30 BST, not.
        assert!(is_quiet(&night, datetime!(2026-07-01 21:30 UTC)));
        assert!(!is_quiet(&night, datetime!(2026-07-02 05:30 UTC)));
        // The last Sunday of March: 01:00 UTC becomes 02:00 BST.
        let early = [window("00:30-01:30")];
        assert!(
            is_quiet(&early, datetime!(2026-03-29 00:45 UTC)),
            "00:45 GMT"
        );
        assert!(
            !is_quiet(&early, datetime!(2026-03-29 01:15 UTC)),
            "02:15 BST"
        );
        // A daytime window does not wrap.
        let lunch = [window("12:00-13:00")];
        assert!(is_quiet(&lunch, datetime!(2026-12-01 12:15 UTC)));
        assert!(!is_quiet(&lunch, datetime!(2026-12-01 23:15 UTC)));
        assert!(!is_quiet(&[], datetime!(2026-12-01 12:15 UTC)));
    }
}
