//! The XML Schema (XSD 1.0) datatypes the IoT payloads carry: xs:dateTime, xs:date,
//! xs:time, xs:duration and xs:double, parsed and written without any date library.
//!
//! Written forms are canonical: `Z` for a zero offset, fractional seconds with 3, 6 or 9
//! digits (clients such as Python's `fromisoformat` accept only those), durations as
//! `PnDTnHnMnS` with zero parts left out.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::common::ValueError;

/// An xs:dateTime: a calendar date and a time of day, with an optional time-zone offset.
///
/// Years 0001 to 9999 are supported. Without an offset the time is local to the sender
/// ("undefined" time zone in XEP-0323); [`XsDateTime::to_system_time`] reads it as UTC.
/// Equality is field by field: the same instant written with two offsets is not equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsDateTime {
    /// Year, 1 to 9999.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to 31.
    pub day: u8,
    /// Hour, 0 to 23.
    pub hour: u8,
    /// Minute, 0 to 59.
    pub minute: u8,
    /// Second, 0 to 59.
    pub second: u8,
    /// Fraction of the second in nanoseconds (digits beyond the ninth are dropped).
    pub nanosecond: u32,
    /// Offset from UTC in minutes (`Some(0)` is `Z`); `None` when no time zone was given.
    pub offset_minutes: Option<i16>,
}

/// An xs:date with an optional time-zone offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsDate {
    /// Year, 1 to 9999.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to 31.
    pub day: u8,
    /// Offset from UTC in minutes (`Some(0)` is `Z`); `None` when no time zone was given.
    pub offset_minutes: Option<i16>,
}

/// An xs:time (a time of day) with an optional time-zone offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsTime {
    /// Hour, 0 to 23.
    pub hour: u8,
    /// Minute, 0 to 59.
    pub minute: u8,
    /// Second, 0 to 59.
    pub second: u8,
    /// Fraction of the second in nanoseconds.
    pub nanosecond: u32,
    /// Offset from UTC in minutes (`Some(0)` is `Z`); `None` when no time zone was given.
    pub offset_minutes: Option<i16>,
}

impl XsDateTime {
    /// The instant `t` in UTC (`Z`), truncated to whole milliseconds. Instants outside the
    /// years 0001–9999 are clamped to those bounds.
    pub fn from_system_time(t: SystemTime) -> XsDateTime {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (i128::from(d.as_secs()), d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let mut secs = -i128::from(d.as_secs());
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                (secs, nanos)
            }
        };
        // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z as Unix seconds.
        const MIN: i128 = -62_135_596_800;
        const MAX: i128 = 253_402_300_799;
        let (secs, nanos) = if secs < MIN {
            (MIN, 0)
        } else if secs > MAX {
            (MAX, 999_000_000)
        } else {
            (secs, nanos - nanos % 1_000_000)
        };
        // In range, so the narrowing below is exact.
        let secs = secs as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        XsDateTime {
            year: year as u16,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            nanosecond: nanos,
            offset_minutes: Some(0),
        }
    }

    /// The current time, as [`XsDateTime::from_system_time`].
    pub fn now() -> XsDateTime {
        XsDateTime::from_system_time(SystemTime::now())
    }

    /// Seconds since the Unix epoch (negative before 1970) and the nanosecond fraction.
    /// A value without time zone is read as UTC.
    pub fn unix_time(&self) -> (i64, u32) {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset_minutes.unwrap_or(0)) * 60;
        (secs, self.nanosecond.min(999_999_999))
    }

    /// The instant this denotes; a value without time zone is read as UTC. `None` if the
    /// platform's `SystemTime` cannot hold it.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let (secs, nanos) = self.unix_time();
        if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
                .checked_add(Duration::from_nanos(u64::from(nanos)))
        }
    }

    /// The date part.
    pub fn date(&self) -> XsDate {
        XsDate {
            year: self.year,
            month: self.month,
            day: self.day,
            offset_minutes: self.offset_minutes,
        }
    }

    /// The time-of-day part.
    pub fn time(&self) -> XsTime {
        XsTime {
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            nanosecond: self.nanosecond,
            offset_minutes: self.offset_minutes,
        }
    }
}

impl FromStr for XsDateTime {
    type Err = ValueError;

    /// Parses `YYYY-MM-DDThh:mm:ss[.f+][Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsDateTime, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let (year, month, day) = c.date()?;
            if !c.eat(b'T') {
                return Err("missing 'T' between date and time");
            }
            let (hour, minute, second, nanosecond) = c.time()?;
            let offset_minutes = c.offset()?;
            c.end()?;
            Ok(XsDateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                nanosecond,
                offset_minutes,
            })
        })();
        parsed.map_err(ValueError::DateTime)
    }
}

impl fmt::Display for XsDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )?;
        write_fraction(f, self.nanosecond)?;
        write_offset(f, self.offset_minutes)
    }
}

impl FromStr for XsDate {
    type Err = ValueError;

    /// Parses `YYYY-MM-DD[Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsDate, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let (year, month, day) = c.date()?;
            let offset_minutes = c.offset()?;
            c.end()?;
            Ok(XsDate {
                year,
                month,
                day,
                offset_minutes,
            })
        })();
        parsed.map_err(ValueError::Date)
    }
}

impl fmt::Display for XsDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)?;
        write_offset(f, self.offset_minutes)
    }
}

impl FromStr for XsTime {
    type Err = ValueError;

    /// Parses `hh:mm:ss[.f+][Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsTime, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let (hour, minute, second, nanosecond) = c.time()?;
            let offset_minutes = c.offset()?;
            c.end()?;
            Ok(XsTime {
                hour,
                minute,
                second,
                nanosecond,
                offset_minutes,
            })
        })();
        parsed.map_err(ValueError::Time)
    }
}

impl fmt::Display for XsTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}:{:02}", self.hour, self.minute, self.second)?;
        write_fraction(f, self.nanosecond)?;
        write_offset(f, self.offset_minutes)
    }
}

/// Parses an xs:duration into a `std::time::Duration`.
///
/// Days count as 24 hours. Rejected because they have no exact `Duration`: negative
/// durations (`-PT1S`) and non-zero years or months (`P1M`, whose length varies; `P0Y` is
/// fine). Digits beyond nanoseconds are dropped.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let b = s.trim().as_bytes();
    let err = ValueError::Duration;
    if b.first() == Some(&b'-') {
        return Err(err("negative durations are not supported"));
    }
    if b.first() != Some(&b'P') {
        return Err(err("must start with 'P'"));
    }
    let mut i = 1;
    let mut in_time = false;
    let mut seen_t_part = false;
    let mut any = false;
    // Designators in the order they must appear, with their length in seconds.
    const DATE: [(u8, u64); 3] = [(b'Y', 0), (b'M', 0), (b'D', 86_400)];
    const TIME: [(u8, u64); 3] = [(b'H', 3600), (b'M', 60), (b'S', 1)];
    let mut next_date = 0;
    let mut next_time = 0;
    let mut secs: u64 = 0;
    let mut nanos: u32 = 0;
    while i < b.len() {
        if b[i] == b'T' {
            if in_time {
                return Err(err("'T' appears twice"));
            }
            in_time = true;
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err("expected digits before each designator"));
        }
        let number = &b[start..i];
        let mut fraction: &[u8] = &[];
        if i < b.len() && b[i] == b'.' {
            let fstart = i + 1;
            i = fstart;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == fstart {
                return Err(err("expected digits after '.'"));
            }
            fraction = &b[fstart..i];
        }
        let Some(&designator) = b.get(i) else {
            return Err(err("number without designator at the end"));
        };
        i += 1;
        let (table, next) = if in_time {
            (&TIME, &mut next_time)
        } else {
            (&DATE, &mut next_date)
        };
        let Some(pos) = table[*next..]
            .iter()
            .position(|(d, _)| *d == designator)
            .map(|p| p + *next)
        else {
            return Err(err("unknown or out-of-order designator"));
        };
        *next = pos + 1;
        let fraction_allowed = in_time && designator == b'S';
        if !fraction.is_empty() && !fraction_allowed {
            return Err(err("only seconds may have a fraction"));
        }
        let n = decimal_u64(number).ok_or(err("too large"))?;
        let unit = table[pos].1;
        if unit == 0 {
            if n != 0 {
                return Err(err(
                    "years and months have no fixed length; use days (P30D) or smaller units",
                ));
            }
        } else {
            secs = n
                .checked_mul(unit)
                .and_then(|v| secs.checked_add(v))
                .ok_or(err("too large"))?;
        }
        if !fraction.is_empty() {
            nanos = fraction_nanos(fraction);
        }
        any = true;
        seen_t_part |= in_time;
    }
    if !any {
        return Err(err("no component given"));
    }
    if in_time && !seen_t_part {
        return Err(err("'T' must be followed by hours, minutes or seconds"));
    }
    Ok(Duration::new(secs, nanos))
}

/// Writes `d` as a canonical xs:duration: `PT0S`, `PT1M30S`, `P1DT2H`, `PT0.5S`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "PT0S".to_owned();
    }
    let days = secs / 86_400;
    secs %= 86_400;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h > 0 || m > 0 || s > 0 || nanos > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 || nanos > 0 {
            out.push_str(&s.to_string());
            if nanos > 0 {
                let frac = format!("{nanos:09}");
                out.push('.');
                out.push_str(frac.trim_end_matches('0'));
            }
            out.push('S');
        }
    }
    out
}

/// Checks `s` against the xs:double lexical space (`[+-]digits[.digits][(E|e)[+-]digits]`,
/// `INF`, `+INF`, `-INF`, `NaN`; surrounding whitespace allowed) and returns its value.
pub fn parse_double(s: &str) -> Result<f64, ValueError> {
    let t = s.trim();
    match t {
        "INF" | "+INF" => return Ok(f64::INFINITY),
        "-INF" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    if !is_decimal_lexical(t) {
        return Err(ValueError::Double);
    }
    t.parse::<f64>().map_err(|_| ValueError::Double)
}

/// The xs:double lexical form of `v` as Rust writes it (shortest exact form; `INF`, `-INF`,
/// `NaN` for the special values).
pub fn format_double(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "INF".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-INF".to_owned()
    } else {
        v.to_string()
    }
}

/// True for `[+-]?(digits(.digits?)?|.digits)([eE][+-]?digits)?`.
pub(crate) fn is_decimal_lexical(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut mantissa_digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        mantissa_digits += i - frac_start;
    }
    if mantissa_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

fn decimal_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Nanoseconds of a fraction's digits (after the '.'), dropping digits beyond the ninth.
fn fraction_nanos(digits: &[u8]) -> u32 {
    let mut nanos = 0u32;
    for k in 0..9 {
        nanos = nanos * 10 + digits.get(k).map_or(0, |d| u32::from(d - b'0'));
    }
    nanos
}

fn write_fraction(f: &mut fmt::Formatter<'_>, nanos: u32) -> fmt::Result {
    if nanos == 0 {
        Ok(())
    } else if nanos % 1_000_000 == 0 {
        write!(f, ".{:03}", nanos / 1_000_000)
    } else if nanos % 1000 == 0 {
        write!(f, ".{:06}", nanos / 1000)
    } else {
        write!(f, ".{nanos:09}")
    }
}

fn write_offset(f: &mut fmt::Formatter<'_>, offset: Option<i16>) -> fmt::Result {
    match offset {
        None => Ok(()),
        Some(0) => f.write_str("Z"),
        Some(m) => {
            let sign = if m < 0 { '-' } else { '+' };
            let m = m.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
        }
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let m = i64::from(month.clamp(1, 12));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A byte cursor over trimmed input; parse errors are static descriptions of the bad part.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Cursor<'a> {
        Cursor {
            b: s.trim().as_bytes(),
            i: 0,
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let slice = self.b.get(self.i..self.i + n)?;
        if !slice.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(
            slice
                .iter()
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0')),
        )
    }

    fn date(&mut self) -> Result<(u16, u8, u8), &'static str> {
        if self.b.get(self.i) == Some(&b'-') {
            return Err("years before 0001 are not supported");
        }
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        match self.i - start {
            4 => {}
            n if n > 4 => return Err("years after 9999 are not supported"),
            _ => return Err("the year must have four digits"),
        }
        self.i = start;
        let year = self.digits(4).ok_or("the year must have four digits")?;
        if year == 0 {
            return Err("there is no year 0000");
        }
        if !self.eat(b'-') {
            return Err("expected '-' after the year");
        }
        let month = self.digits(2).ok_or("the month must have two digits")?;
        if !(1..=12).contains(&month) {
            return Err("the month must be 01 to 12");
        }
        if !self.eat(b'-') {
            return Err("expected '-' after the month");
        }
        let day = self.digits(2).ok_or("the day must have two digits")?;
        if day == 0 || day > u32::from(days_in_month(i64::from(year), month as u8)) {
            return Err("that day does not exist in that month");
        }
        Ok((year as u16, month as u8, day as u8))
    }

    fn time(&mut self) -> Result<(u8, u8, u8, u32), &'static str> {
        let hour = self.digits(2).ok_or("the hour must have two digits")?;
        if hour > 23 {
            return Err("the hour must be 00 to 23");
        }
        if !self.eat(b':') {
            return Err("expected ':' after the hour");
        }
        let minute = self.digits(2).ok_or("the minutes must have two digits")?;
        if minute > 59 {
            return Err("the minutes must be 00 to 59");
        }
        if !self.eat(b':') {
            return Err("expected ':' after the minutes");
        }
        let second = self.digits(2).ok_or("the seconds must have two digits")?;
        if second > 59 {
            return Err("the seconds must be 00 to 59");
        }
        let mut nanos = 0;
        if self.eat(b'.') {
            let start = self.i;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == start {
                return Err("expected digits after '.'");
            }
            nanos = fraction_nanos(&self.b[start..self.i]);
        }
        Ok((hour as u8, minute as u8, second as u8, nanos))
    }

    fn offset(&mut self) -> Result<Option<i16>, &'static str> {
        if self.eat(b'Z') {
            return Ok(Some(0));
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return Ok(None);
        };
        let h = self
            .digits(2)
            .ok_or("the time-zone hours must have two digits")?;
        if !self.eat(b':') {
            return Err("expected ':' in the time-zone offset");
        }
        let m = self
            .digits(2)
            .ok_or("the time-zone minutes must have two digits")?;
        if m > 59 || h > 14 || (h == 14 && m > 0) {
            return Err("the time-zone offset must be within ±14:00");
        }
        Ok(Some(sign * (h * 60 + m) as i16))
    }

    fn end(&self) -> Result<(), &'static str> {
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err("unexpected characters after the value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> XsDateTime {
        s.parse().unwrap()
    }

    #[test]
    fn date_times_round_trip_in_canonical_form() {
        for s in [
            "2013-03-07T16:24:30",
            "2026-11-21T20:15:03Z",
            "2026-11-21T20:15:03.250Z",
            "2026-11-21T20:15:03.000001+02:00",
            "2000-02-29T00:00:00.123456789-05:30",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+14:00",
        ] {
            assert_eq!(dt(s).to_string(), s);
        }
        assert_eq!(
            dt(" 2013-03-07T16:24:30+00:00 ").to_string(),
            "2013-03-07T16:24:30Z"
        );
        assert_eq!(
            dt("2013-03-07T16:24:30.5Z").to_string(),
            "2013-03-07T16:24:30.500Z"
        );
        assert_eq!(
            dt("2013-03-07T16:24:30.1234567891Z").nanosecond,
            123_456_789
        );
        let v = dt("2013-03-07T16:24:30-01:30");
        assert_eq!(v.offset_minutes, Some(-90));
        assert_eq!((v.hour, v.minute, v.second), (16, 24, 30));
    }

    #[test]
    fn bad_date_times_say_what_is_wrong() {
        let cases = [
            ("", "the year must have four digits"),
            ("2013-03-07", "missing 'T' between date and time"),
            ("2013-03-07 16:24:30", "missing 'T' between date and time"),
            ("13-03-07T16:24:30", "the year must have four digits"),
            ("12013-03-07T16:24:30", "years after 9999 are not supported"),
            (
                "-2013-03-07T16:24:30",
                "years before 0001 are not supported",
            ),
            ("0000-03-07T16:24:30", "there is no year 0000"),
            ("2013-13-07T16:24:30", "the month must be 01 to 12"),
            (
                "2013-02-29T16:24:30",
                "that day does not exist in that month",
            ),
            (
                "2013-04-31T16:24:30",
                "that day does not exist in that month",
            ),
            ("2013-03-07T24:00:00", "the hour must be 00 to 23"),
            ("2013-03-07T16:60:00", "the minutes must be 00 to 59"),
            ("2013-03-07T16:24:60", "the seconds must be 00 to 59"),
            ("2013-03-07T16:24", "expected ':' after the minutes"),
            ("2013-03-07T16:24:30.", "expected digits after '.'"),
            (
                "2013-03-07T16:24:30+15:00",
                "the time-zone offset must be within ±14:00",
            ),
            (
                "2013-03-07T16:24:30+0100",
                "expected ':' in the time-zone offset",
            ),
            (
                "2013-03-07T16:24:30ZZ",
                "unexpected characters after the value",
            ),
            (
                "2013-03-07T16:24:30 CET",
                "unexpected characters after the value",
            ),
            ("2013-03-0７T16:24:30", "the day must have two digits"),
        ];
        for (s, why) in cases {
            assert_eq!(
                s.parse::<XsDateTime>(),
                Err(ValueError::DateTime(why)),
                "{s}"
            );
        }
    }

    #[test]
    fn system_time_conversions_agree() {
        let t = dt("2026-11-21T20:15:03.250Z");
        let st = t.to_system_time().unwrap();
        assert_eq!(
            st.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_292_103, 250_000_000)
        );
        assert_eq!(XsDateTime::from_system_time(st), t);
        // Offsets move the instant, local times are read as UTC.
        let plus2 = dt("2026-11-21T22:15:03.250+02:00");
        assert_eq!(plus2.to_system_time(), Some(st));
        let local = dt("2026-11-21T20:15:03.250");
        assert_eq!(local.to_system_time(), Some(st));
        // Before 1970, with a fraction.
        let old = dt("1969-12-31T23:59:59.500Z");
        let st_old = old.to_system_time().unwrap();
        assert_eq!(
            UNIX_EPOCH.duration_since(st_old).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(XsDateTime::from_system_time(st_old), old);
        assert_eq!(dt("1970-01-01T00:00:00Z").unix_time(), (0, 0));
        assert_eq!(dt("2000-03-01T00:00:00Z").unix_time().0, 951_868_800);
        // Sub-millisecond precision is dropped when stamping.
        let fine = UNIX_EPOCH + Duration::new(10, 123_456_789);
        assert_eq!(
            XsDateTime::from_system_time(fine).to_string(),
            "1970-01-01T00:00:10.123Z"
        );
        assert_eq!(XsDateTime::now().offset_minutes, Some(0));
    }

    #[test]
    fn dates_and_times() {
        let d: XsDate = "2013-05-01".parse().unwrap();
        assert_eq!(
            (d.year, d.month, d.day, d.offset_minutes),
            (2013, 5, 1, None)
        );
        assert_eq!(d.to_string(), "2013-05-01");
        assert_eq!(
            "2013-05-01Z".parse::<XsDate>().unwrap().to_string(),
            "2013-05-01Z"
        );
        assert_eq!(
            "2013-05-01T00:00:00".parse::<XsDate>(),
            Err(ValueError::Date("unexpected characters after the value"))
        );
        assert_eq!(
            "2013-5-1".parse::<XsDate>(),
            Err(ValueError::Date("the month must have two digits"))
        );
        let t: XsTime = "08:00:00".parse().unwrap();
        assert_eq!((t.hour, t.minute, t.second), (8, 0, 0));
        assert_eq!(t.to_string(), "08:00:00");
        assert_eq!(
            "23:59:59.75-03:00".parse::<XsTime>().unwrap().to_string(),
            "23:59:59.750-03:00"
        );
        assert_eq!(
            "8:00".parse::<XsTime>(),
            Err(ValueError::Time("the hour must have two digits"))
        );
        let both = dt("2013-04-02T08:00:00Z");
        assert_eq!(both.date().to_string(), "2013-04-02Z");
        assert_eq!(both.time().to_string(), "08:00:00Z");
    }

    #[test]
    fn durations_parse_and_format() {
        let ok = [
            ("PT1M30S", 90, 0, "PT1M30S"),
            ("P1DT2H", 93_600, 0, "P1DT2H"),
            ("PT3M30S", 210, 0, "PT3M30S"),
            ("PT5M", 300, 0, "PT5M"),
            ("PT90S", 90, 0, "PT1M30S"),
            ("P0Y0M2D", 172_800, 0, "P2D"),
            ("PT0S", 0, 0, "PT0S"),
            ("P0D", 0, 0, "PT0S"),
            ("PT0.5S", 0, 500_000_000, "PT0.5S"),
            ("PT1.000000001S", 1, 1, "PT1.000000001S"),
            ("P1DT1H1M1.25S", 90_061, 250_000_000, "P1DT1H1M1.25S"),
        ];
        for (s, secs, nanos, canonical) in ok {
            let d = parse_duration(s).unwrap();
            assert_eq!(d, Duration::new(secs, nanos), "{s}");
            assert_eq!(format_duration(d), canonical, "{s}");
        }
        let bad = [
            ("-PT1S", "negative durations are not supported"),
            (
                "P1Y",
                "years and months have no fixed length; use days (P30D) or smaller units",
            ),
            (
                "P2M",
                "years and months have no fixed length; use days (P30D) or smaller units",
            ),
            ("PT", "no component given"),
            ("P", "no component given"),
            ("P1DT", "'T' must be followed by hours, minutes or seconds"),
            ("1M", "must start with 'P'"),
            ("", "must start with 'P'"),
            ("PT1H2H", "unknown or out-of-order designator"),
            ("PT1S1M", "unknown or out-of-order designator"),
            ("P1H", "unknown or out-of-order designator"),
            ("PT1.5M", "only seconds may have a fraction"),
            ("PT1.S", "expected digits after '.'"),
            ("PT10", "number without designator at the end"),
            ("PTS", "expected digits before each designator"),
            ("PT1HT1M", "'T' appears twice"),
            ("P99999999999999999999D", "too large"),
            ("P999999999999999D", "too large"),
            ("PT1Mx", "expected digits before each designator"),
            ("PT1M°", "expected digits before each designator"),
        ];
        for (s, why) in bad {
            assert_eq!(parse_duration(s), Err(ValueError::Duration(why)), "{s}");
        }
    }

    #[test]
    fn truncated_and_mutated_values_never_panic() {
        let seeds = [
            "2026-11-21T20:15:03.250+02:00",
            "2013-05-01Z",
            "23:59:59.75-03:00",
            "P1DT1H1M1.25S",
            "-1.5E+3",
        ];
        let inserts = ['9', '-', ':', '.', 'T', 'Z', 'P', 'S', 'é', '\u{663}', ' '];
        for seed in seeds {
            let mut variants = vec![];
            for (i, _) in seed.char_indices().chain([(seed.len(), ' ')]) {
                variants.push(seed[..i].to_owned());
                variants.push(seed[i..].to_owned());
                for c in inserts {
                    let mut v = seed.to_owned();
                    v.insert(i, c);
                    variants.push(v);
                }
            }
            for v in &variants {
                // Only the absence of panics matters here; results are checked elsewhere.
                let _ = v.parse::<XsDateTime>();
                let _ = v.parse::<XsDate>();
                let _ = v.parse::<XsTime>();
                let _ = parse_duration(v);
                let _ = parse_double(v);
                if let Ok(t) = v.parse::<XsDateTime>() {
                    let _ = t.to_system_time();
                    assert_eq!(t.to_string().parse::<XsDateTime>(), Ok(t), "{v}");
                }
                if let Ok(d) = parse_duration(v) {
                    assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{v}");
                }
            }
        }
    }

    #[test]
    fn doubles_follow_the_xs_lexical_space() {
        for (s, v) in [
            ("4.20", 4.2),
            ("-1.5E3", -1500.0),
            ("+.5", 0.5),
            ("10.", 10.0),
            ("1e-2", 0.01),
            (" 7 ", 7.0),
        ] {
            assert_eq!(parse_double(s), Ok(v), "{s}");
        }
        assert_eq!(parse_double("INF"), Ok(f64::INFINITY));
        assert_eq!(parse_double("-INF"), Ok(f64::NEG_INFINITY));
        assert!(parse_double("NaN").unwrap().is_nan());
        for s in [
            "", "inf", "nan", "Infinity", "1,5", "1.5.2", "e5", ".", "1e", "0x10", "1_000",
        ] {
            assert_eq!(parse_double(s), Err(ValueError::Double), "{s}");
        }
        assert_eq!(format_double(8.192), "8.192");
        assert_eq!(format_double(f64::NEG_INFINITY), "-INF");
    }
}
