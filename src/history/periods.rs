//! The periods of XEP-0323's historical field types, in UTC: where each begins.

use chrono::{DateTime, Datelike, NaiveDate};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;
/// 1969-12-29, the Monday before the epoch (a Thursday): weeks begin on Mondays (ISO 8601).
const A_MONDAY: i64 = -3 * DAY;

/// One period length of the historical types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `historicalMinute`.
    Minute,
    /// `historicalHour`.
    Hour,
    /// `historicalDay`.
    Day,
    /// `historicalWeek`: Monday to Sunday.
    Week,
    /// `historicalMonth`.
    Month,
    /// `historicalQuarter`: January, April, July, October.
    Quarter,
    /// `historicalYear`.
    Year,
}

impl Period {
    /// The start (ms since the epoch) of the period that holds `t` (ms since the epoch).
    pub fn start(self, t: i64) -> i64 {
        let floor = |len: i64, origin: i64| t - (t - origin).rem_euclid(len);
        match self {
            Period::Minute => floor(MINUTE, 0),
            Period::Hour => floor(HOUR, 0),
            Period::Day => floor(DAY, 0),
            Period::Week => floor(WEEK, A_MONDAY),
            Period::Month | Period::Quarter | Period::Year => {
                let Some(d) = DateTime::from_timestamp_millis(t) else {
                    return floor(DAY, 0);
                };
                let month = match self {
                    Period::Month => d.month(),
                    Period::Quarter => (d.month() - 1) / 3 * 3 + 1,
                    _ => 1,
                };
                NaiveDate::from_ymd_opt(d.year(), month, 1)
                    .and_then(|n| n.and_hms_opt(0, 0, 0))
                    .map(|n| n.and_utc().timestamp_millis())
                    .unwrap_or_else(|| floor(DAY, 0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn periods_begin_where_the_calendar_says() {
        let t = ms("2026-11-29T19:22:33.456Z"); // a Sunday
        let cases = [
            (Period::Minute, "2026-11-29T19:22:00Z"),
            (Period::Hour, "2026-11-29T19:00:00Z"),
            (Period::Day, "2026-11-29T00:00:00Z"),
            (Period::Week, "2026-11-23T00:00:00Z"),
            (Period::Month, "2026-11-01T00:00:00Z"),
            (Period::Quarter, "2026-10-01T00:00:00Z"),
            (Period::Year, "2026-01-01T00:00:00Z"),
        ];
        for (p, start) in cases {
            assert_eq!(p.start(t), ms(start), "{p:?}");
            assert_eq!(p.start(ms(start)), ms(start), "{p:?} of its own start");
        }
        assert_eq!(
            Period::Week.start(ms("2026-11-30T00:00:00Z")),
            ms("2026-11-30T00:00:00Z")
        );
        assert_eq!(Period::Minute.start(-1), -60_000);
        assert_eq!(
            Period::Quarter.start(ms("2026-03-31T23:59:59Z")),
            ms("2026-01-01T00:00:00Z")
        );
    }
}
