//! The ISO 8601 basic timestamps SigV4 signs (`20261125T120000Z`).
//!
//! Hand-rolled rather than pulling a calendar crate: SigV4 needs exactly one
//! UTC format in both directions, and the civil-date arithmetic is a dozen
//! lines (Howard Hinnant's `days_from_civil` / `civil_from_days`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A second-resolution UTC instant, as carried by `X-Amz-Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AmzDate {
    /// Seconds since the Unix epoch; signed so skew arithmetic cannot wrap.
    unix: i64,
}

impl AmzDate {
    /// Parses `YYYYMMDDTHHMMSSZ` strictly: any other shape, or an impossible
    /// date such as `20261131`, is `None` (the request is then malformed).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<i64> {
            let digits = text.get(range)?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        };
        let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
        let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let unix = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
        let date = Self { unix };
        // Round-tripping rejects days past the month's end (Feb 30 would
        // otherwise silently become Mar 2).
        (date.to_string() == text).then_some(date)
    }

    /// Parses an RFC 7231 `Date` header, the fallback SigV4 allows when a
    /// client sends no `X-Amz-Date`.
    pub(crate) fn parse_http_date(text: &str) -> Option<Self> {
        httpdate::parse_http_date(text)
            .ok()
            .map(Self::from_system_time)
    }

    /// Converts a clock reading; times before 1970 clamp to the epoch since
    /// no valid request can be signed then.
    pub(crate) fn from_system_time(time: SystemTime) -> Self {
        let unix = time.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        Self { unix }
    }

    /// The instant `seconds` later (earlier when negative).
    pub(crate) fn offset(self, seconds: i64) -> Self {
        Self {
            unix: self.unix.saturating_add(seconds),
        }
    }

    /// The `YYYYMMDD` part, which the credential scope must repeat.
    pub(crate) fn date_stamp(self) -> String {
        let mut text = self.to_string();
        text.truncate(8);
        text
    }
}

impl fmt::Display for AmzDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.unix.div_euclid(86_400);
        let seconds = self.unix.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let march_based_month = (month + 9) % 12;
    let day_of_year = (153 * march_based_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parse_matches_unix_time_and_round_trips() {
        let date = AmzDate::parse("20150830T123600Z").expect("valid timestamp");
        let expected = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(date, AmzDate::from_system_time(expected));
        assert_eq!(date.to_string(), "20150830T123600Z");
        assert_eq!(date.date_stamp(), "20150830");
    }

    #[test]
    fn leap_days_and_year_ends_round_trip() {
        for text in ["20240229T235959Z", "19700101T000000Z", "20261231T235959Z"] {
            let date = AmzDate::parse(text).expect(text);
            assert_eq!(date.to_string(), text);
        }
    }

    #[test]
    fn impossible_or_misshapen_timestamps_are_rejected() {
        for text in [
            "20250229T000000Z",
            "20261131T000000Z",
            "20261125T240000Z",
            "20261125T120000",
            "20261125 120000Z",
            "2026-11-25T12:00:00Z",
            "+0261125T120000Z",
            "",
        ] {
            assert_eq!(AmzDate::parse(text), None, "{text}");
        }
    }

    #[test]
    fn http_date_header_is_accepted_as_fallback() {
        let date = AmzDate::parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT").expect("RFC 7231");
        assert_eq!(date.to_string(), "20150830T123600Z");
    }
}
