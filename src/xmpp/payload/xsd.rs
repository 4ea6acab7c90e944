//! The XML Schema (XSD 1.0) datatypes the IoT payloads carry: xs:dateTime, xs:date,
//! xs:time, xs:duration and xs:double.
//!
//! Dates and times are held, checked, converted and written as chrono's `NaiveDate`,
//! `NaiveTime` and `FixedOffset`. Their lexical forms are still read here, by a small
//! scanner: chrono's parser says only what kind of error it met, where we tell the sender
//! which part is wrong, and it accepts what XSD does not (`2013-5-1`, spaces before a
//! number, years of five digits and more, offsets without a colon). The scanner looks at
//! each byte once, so even an 8 KB attribute value costs no more than its length.
//!
//! Written forms are canonical: `Z` for a zero offset, fractional seconds with 3, 6 or 9
//! digits (clients such as Python's `fromisoformat` accept only those), durations as
//! `PnDTnHnMnS` with zero parts left out.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{
    DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, TimeDelta, Timelike,
};

use super::common::ValueError;

/// An xs:dateTime: a calendar date and a time of day, with an optional time-zone offset.
///
/// Years 0001 to 9999 are supported. Without an offset the time is local to the sender
/// ("undefined" time zone in XEP-0323); [`XsDateTime::to_system_time`] reads it as UTC.
/// Equality compares the written date, time and offset: the same instant written with two
/// offsets is not equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsDateTime {
    datetime: NaiveDateTime,
    offset: Option<FixedOffset>,
}

/// An xs:date with an optional time-zone offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsDate {
    date: NaiveDate,
    offset: Option<FixedOffset>,
}

/// An xs:time (a time of day) with an optional time-zone offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsTime {
    time: NaiveTime,
    offset: Option<FixedOffset>,
}

/// The zero offset, written `Z`.
const UTC: FixedOffset = FixedOffset::east_opt(0).expect("zero is a valid offset");

/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999, the bounds of the instants we stamp.
const FIRST: NaiveDateTime = NaiveDate::from_ymd_opt(1, 1, 1)
    .expect("a valid date")
    .and_time(NaiveTime::MIN);
const LAST: NaiveDateTime = NaiveDate::from_ymd_opt(9999, 12, 31)
    .expect("a valid date")
    .and_time(NaiveTime::from_hms_milli_opt(23, 59, 59, 999).expect("a valid time"));

impl XsDateTime {
    /// The instant `t` in UTC (`Z`), truncated to whole milliseconds. Instants outside the
    /// years 0001–9999 are clamped to those bounds.
    pub fn from_system_time(t: SystemTime) -> XsDateTime {
        // Not chrono's `From<SystemTime>`: it panics on instants beyond its range, which a
        // `SystemTime` can hold.
        let utc = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeDelta::from_std(d)
                .ok()
                .and_then(|d| DateTime::UNIX_EPOCH.checked_add_signed(d)),
            Err(e) => TimeDelta::from_std(e.duration())
                .ok()
                .and_then(|d| DateTime::UNIX_EPOCH.checked_sub_signed(d)),
        };
        let datetime = match utc {
            Some(utc) => utc.naive_utc().clamp(FIRST, LAST),
            None if t < UNIX_EPOCH => FIRST,
            None => LAST,
        };
        XsDateTime {
            datetime: datetime.trunc_subsecs(3),
            offset: Some(UTC),
        }
    }

    /// The current time, as [`XsDateTime::from_system_time`].
    pub fn now() -> XsDateTime {
        XsDateTime::from_system_time(SystemTime::now())
    }

    /// The date and time of day as written, in the sender's offset.
    pub fn naive(&self) -> NaiveDateTime {
        self.datetime
    }

    /// The time-zone offset (zero for `Z`); `None` when no time zone was given.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.offset
    }

    /// Seconds since the Unix epoch (negative before 1970) and the nanosecond fraction.
    /// A value without time zone is read as UTC.
    pub fn unix_time(&self) -> (i64, u32) {
        let offset = self.offset.map_or(0, |o| o.local_minus_utc());
        let secs = self.datetime.and_utc().timestamp() - i64::from(offset);
        (secs, self.datetime.nanosecond())
    }

    /// The instant this denotes; a value without time zone is read as UTC. `None` if the
    /// platform's `SystemTime` cannot hold it.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        // Not chrono's `From<DateTime>`: it panics where `SystemTime` cannot hold the year.
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
            date: self.datetime.date(),
            offset: self.offset,
        }
    }

    /// The time-of-day part.
    pub fn time(&self) -> XsTime {
        XsTime {
            time: self.datetime.time(),
            offset: self.offset,
        }
    }
}

impl XsDate {
    /// The date as written.
    pub fn naive(&self) -> NaiveDate {
        self.date
    }

    /// The time-zone offset (zero for `Z`); `None` when no time zone was given.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.offset
    }
}

impl XsTime {
    /// The time of day as written.
    pub fn naive(&self) -> NaiveTime {
        self.time
    }

    /// The time-zone offset (zero for `Z`); `None` when no time zone was given.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.offset
    }
}

impl FromStr for XsDateTime {
    type Err = ValueError;

    /// Parses `YYYY-MM-DDThh:mm:ss[.f+][Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsDateTime, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let date = c.date()?;
            if !c.eat(b'T') {
                return Err("missing 'T' between date and time");
            }
            let time = c.time()?;
            let offset = c.offset()?;
            c.end()?;
            Ok(XsDateTime {
                datetime: date.and_time(time),
                offset,
            })
        })();
        parsed.map_err(ValueError::DateTime)
    }
}

impl fmt::Display for XsDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // chrono writes a date of the years 0001–9999 as `YYYY-MM-DD` and a time of day as
        // `hh:mm:ss` with 0, 3, 6 or 9 fraction digits: the canonical forms.
        write!(f, "{}T{}", self.datetime.date(), self.datetime.time())?;
        write_offset(f, self.offset)
    }
}

impl FromStr for XsDate {
    type Err = ValueError;

    /// Parses `YYYY-MM-DD[Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsDate, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let date = c.date()?;
            let offset = c.offset()?;
            c.end()?;
            Ok(XsDate { date, offset })
        })();
        parsed.map_err(ValueError::Date)
    }
}

impl fmt::Display for XsDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.date)?;
        write_offset(f, self.offset)
    }
}

impl FromStr for XsTime {
    type Err = ValueError;

    /// Parses `hh:mm:ss[.f+][Z|±hh:mm]`.
    fn from_str(s: &str) -> Result<XsTime, ValueError> {
        let mut c = Cursor::new(s);
        let parsed = (|| {
            let time = c.time()?;
            let offset = c.offset()?;
            c.end()?;
            Ok(XsTime { time, offset })
        })();
        parsed.map_err(ValueError::Time)
    }
}

impl fmt::Display for XsTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.time)?;
        write_offset(f, self.offset)
    }
}

/// Parses an xs:duration into a `std::time::Duration`.
///
/// Days count as 24 hours. Rejected because they have no exact `Duration`: negative
/// durations (`-PT1S`) and non-zero years or months (`P1M`, whose length varies; `P0Y` is
/// fine). Digits beyond nanoseconds are dropped.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    // Hand-written: chrono has no duration parser, `humantime` reads its own "1m 30s"
    // form, and the `iso8601` crate keeps only milliseconds in u32 fields, takes week
    // durations (`P1W`) that XSD lacks, and reports a bare message where we name the bad
    // part.
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

/// `Z` for a zero offset; chrono writes any other whole-minute offset as `±hh:mm`.
fn write_offset(f: &mut fmt::Formatter<'_>, offset: Option<FixedOffset>) -> fmt::Result {
    match offset {
        None => Ok(()),
        Some(o) if o == UTC => f.write_str("Z"),
        Some(o) => write!(f, "{o}"),
    }
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

    fn date(&mut self) -> Result<NaiveDate, &'static str> {
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
        // Four digits fit an i32.
        NaiveDate::from_ymd_opt(year as i32, month, day)
            .ok_or("that day does not exist in that month")
    }

    fn time(&mut self) -> Result<NaiveTime, &'static str> {
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
        // XSD 1.0 has no leap second (chrono would take 60 as one).
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
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or("no such time of day")
    }

    fn offset(&mut self) -> Result<Option<FixedOffset>, &'static str> {
        if self.eat(b'Z') {
            return Ok(Some(UTC));
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
        const BEYOND: &str = "the time-zone offset must be within ±14:00";
        if m > 59 || h > 14 || (h == 14 && m > 0) {
            return Err(BEYOND);
        }
        // Two digits each, so the seconds fit an i32.
        FixedOffset::east_opt(sign * (h * 3600 + m * 60) as i32)
            .map(Some)
            .ok_or(BEYOND)
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
    use chrono::Datelike;

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
            dt("2013-03-07T16:24:30.1234567891Z").naive().nanosecond(),
            123_456_789
        );
        let v = dt("2013-03-07T16:24:30-01:30");
        assert_eq!(v.offset(), FixedOffset::west_opt(90 * 60));
        let t = v.naive();
        assert_eq!((t.hour(), t.minute(), t.second()), (16, 24, 30));
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
        assert_eq!(XsDateTime::now().offset(), Some(UTC));
    }

    #[test]
    fn stamps_are_clamped_to_the_supported_years() {
        let year = Duration::from_secs(365 * 86_400);
        let last = "9999-12-31T23:59:59.999Z";
        let first = "0001-01-01T00:00:00Z";
        let stamp = |t| XsDateTime::from_system_time(t).to_string();
        assert_eq!(stamp(UNIX_EPOCH + year * 20_000), last);
        assert_eq!(stamp(UNIX_EPOCH - year * 2_000), first);
        // Beyond chrono's range (about ±262,000 years) too, where the platform has them.
        if let Some(t) = UNIX_EPOCH.checked_add(year * 1_000_000) {
            assert_eq!(stamp(t), last);
        }
        if let Some(t) = UNIX_EPOCH.checked_sub(year * 1_000_000) {
            assert_eq!(stamp(t), first);
        }
        for bound in [first, last] {
            assert_eq!(stamp(dt(bound).to_system_time().unwrap()), bound);
        }
    }

    #[test]
    fn attribute_sized_values_are_cut_or_refused() {
        // Attribute values reach 8 KB: long runs of digits are read once, never summed.
        let fraction = format!("2013-03-07T16:24:30.{}Z", "9".repeat(5000));
        assert_eq!(dt(&fraction).to_string(), "2013-03-07T16:24:30.999999999Z");
        let t: XsTime = format!("23:59:59.{}", "1".repeat(8000)).parse().unwrap();
        assert_eq!(t.to_string(), "23:59:59.111111111");
        assert_eq!(
            format!("{}-01-01T00:00:00Z", "1".repeat(8000)).parse::<XsDateTime>(),
            Err(ValueError::DateTime("years after 9999 are not supported"))
        );
        assert_eq!(
            format!("2013-03-07Z{}", "0".repeat(8000)).parse::<XsDate>(),
            Err(ValueError::Date("unexpected characters after the value"))
        );
    }

    #[test]
    fn dates_and_times() {
        let d: XsDate = "2013-05-01".parse().unwrap();
        let n = d.naive();
        assert_eq!(
            (n.year(), n.month(), n.day(), d.offset()),
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
        let n = t.naive();
        assert_eq!((n.hour(), n.minute(), n.second()), (8, 0, 0));
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
