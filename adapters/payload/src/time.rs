//! Times in messages: RFC 3339 text, Unix seconds or milliseconds, kept within the years
//! 1970 to 9999.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Number;

use crate::error::quoted;
use crate::tree::Num;

/// The first second of year 10000, in Unix seconds: times are kept below it, where they
/// can still be written as RFC 3339.
pub(crate) const END_OF_TIME: u64 = 253_402_300_800;

/// The unit of a number that is a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds, fractions allowed.
    #[default]
    Seconds,
    /// Unix milliseconds, fractions allowed.
    Millis,
}

/// `t` if it lies within the years 1970 to 9999 (what RFC 3339 and the gateway's
/// formatting can write).
pub(crate) fn in_range(t: SystemTime) -> Option<SystemTime> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() < END_OF_TIME).then_some(t)
}

/// A number as a Unix time in `unit`; whole numbers exactly.
pub(crate) fn number_time(n: Num, unit: TimeUnit) -> Result<SystemTime, String> {
    let out_of_range = || format!("{n} is before 1970 or after 9999");
    let since = match n {
        Num::Int(v) if v >= 0 => u64::try_from(v).ok().map(|v| match unit {
            TimeUnit::Seconds => Duration::from_secs(v),
            TimeUnit::Millis => Duration::from_millis(v),
        }),
        other => float_duration(other.as_f64(), unit),
    };
    since
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .and_then(in_range)
        .ok_or_else(out_of_range)
}

fn float_duration(v: f64, unit: TimeUnit) -> Option<Duration> {
    let secs = match unit {
        TimeUnit::Seconds => v,
        TimeUnit::Millis => v / 1000.0,
    };
    // Refuses negative, NaN and overflowing values.
    Duration::try_from_secs_f64(secs).ok()
}

/// A time as text: a number in `unit`, else RFC 3339.
pub(crate) fn text_time(s: &str, unit: TimeUnit) -> Result<SystemTime, String> {
    let trimmed = s.trim_ascii();
    if let Ok(n) = trimmed.parse::<Number>() {
        return number_time(Num::from(&n), unit)
            .map_err(|_| format!("{} is before 1970 or after 9999", quoted(s)));
    }
    parse_rfc3339(trimmed).map_err(|why| format!("{} {why}", quoted(s)))
}

/// A CBOR date/time (tag 0): RFC 3339 text, as it is.
pub(crate) fn date_time(s: &str) -> Result<SystemTime, String> {
    parse_rfc3339(s).map_err(|why| format!("{} {why}", quoted(s)))
}

/// Parses an RFC 3339 time with `Z` or a numeric offset. humantime reads only UTC times:
/// the offset is taken off here, and applied to its result.
pub(crate) fn parse_rfc3339(s: &str) -> Result<SystemTime, &'static str> {
    // The longest sensible form, with nanoseconds and an offset, is 35 bytes.
    const MAX: usize = 40;
    let b = s.as_bytes();
    if b.len() > MAX || b.len() < 20 {
        return Err("is not an RFC 3339 time");
    }
    let mut buf = [0u8; MAX];
    buf[..b.len()].copy_from_slice(b);
    let mut len = b.len();
    // RFC 3339 allows lowercase separators; humantime does not.
    if buf[10] == b't' {
        buf[10] = b'T';
    }
    let offset: i64 = match buf[len - 1] {
        b'Z' | b'z' => {
            buf[len - 1] = b'Z';
            0
        }
        _ => {
            let tail = &buf[len - 6..len];
            let sign = match tail[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err("has no time zone (Z or ±hh:mm)"),
            };
            let digits = [tail[1], tail[2], tail[4], tail[5]];
            if tail[3] != b':' || !digits.iter().all(u8::is_ascii_digit) {
                return Err("has no time zone (Z or ±hh:mm)");
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let (hours, minutes) = (h1 * 10 + h2, m1 * 10 + m2);
            if hours > 23 || minutes > 59 {
                return Err("has an offset out of range");
            }
            buf[len - 6] = b'Z';
            len -= 5;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let utc = std::str::from_utf8(&buf[..len]).map_err(|_| "is not an RFC 3339 time")?;
    let local = humantime::parse_rfc3339(utc).map_err(|e| match e {
        humantime::TimestampError::OutOfRange => "is before 1970 or after 9999",
        _ => "is not an RFC 3339 time",
    })?;
    let shift = Duration::from_secs(offset.unsigned_abs());
    // Local time = UTC + offset.
    let t = if offset >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    t.and_then(in_range).ok_or("is before 1970 or after 9999")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{at, NOW};

    #[test]
    fn numbers_as_times() {
        assert_eq!(
            number_time(Num::Int(NOW.into()), TimeUnit::Seconds),
            Ok(at(NOW))
        );
        assert_eq!(
            number_time(Num::Int(i128::from(NOW) * 1000 + 250), TimeUnit::Millis),
            Ok(at(NOW) + Duration::from_millis(250))
        );
        assert_eq!(
            number_time(Num::Float(NOW as f64 + 0.5), TimeUnit::Seconds),
            Ok(at(NOW) + Duration::from_millis(500))
        );
        for n in [
            Num::Int(-1),
            Num::Int(END_OF_TIME.into()),
            Num::Int(u64::MAX.into()),
            Num::Int(i128::from(u64::MAX) + 1),
            Num::Int(-(1 << 64)),
            Num::Float(f64::NAN),
            Num::Float(f64::INFINITY),
            Num::Float(-0.5),
        ] {
            assert!(number_time(n, TimeUnit::Seconds).is_err(), "{n}");
        }
        assert_eq!(
            number_time(Num::Int(-1), TimeUnit::Seconds),
            Err("-1 is before 1970 or after 9999".into())
        );
    }

    #[test]
    fn cbor_date_times_are_rfc_3339_only() {
        assert_eq!(date_time("2024-05-01T12:00:00Z"), Ok(at(NOW)));
        assert_eq!(date_time("2024-05-01T14:00:00+02:00"), Ok(at(NOW)));
        assert_eq!(
            date_time("1714564800"),
            Err(r#""1714564800" is not an RFC 3339 time"#.into())
        );
        assert!(date_time(" 2024-05-01T12:00:00Z").is_err());
    }
}
