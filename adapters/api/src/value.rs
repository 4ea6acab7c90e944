//! Values and readings.

use std::fmt;
use std::time::{Instant, SystemTime};

/// A typed value read from or written to a device field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A boolean (coil, toggle, switch).
    Bool(bool),
    /// A 32-bit signed integer.
    Int(i32),
    /// A 64-bit signed integer (counters).
    Long(i64),
    /// A floating-point quantity; the field's `decimals` decide how it is written.
    Double(f64),
    /// Free text.
    String(String),
    /// One of a field's enumerated labels.
    Enum(String),
    /// A point in time.
    Timestamp(SystemTime),
}

impl Value {
    /// The value as a float, for numeric range checks; `None` for non-numeric values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(f64::from(*v)),
            Value::Long(v) => Some(*v as f64),
            Value::Double(v) => Some(*v),
            _ => None,
        }
    }

    /// Formats the value as XMPP IoT payloads write it, with `decimals` digits after the
    /// point for doubles (precision is part of the value: "10.00" is not "10").
    pub fn display_with(&self, decimals: Option<u8>) -> String {
        match (self, decimals) {
            (Value::Double(v), Some(d)) => format!("{:.*}", usize::from(d), v),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Long(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::String(v) | Value::Enum(v) => f.write_str(v),
            Value::Timestamp(t) => write!(f, "{}", humantime::format_rfc3339_seconds(*t)),
        }
    }
}

/// How trustworthy a reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quality {
    /// Read from the device just now or by its own report.
    #[default]
    Good,
    /// The last known value; the device has not confirmed it recently.
    Stale,
    /// The device flagged the value as faulty.
    Bad,
}

/// One field's value at one moment, as an adapter reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The field's name in the device's catalogue (shared: adapters hand out the same
    /// name with every reading of the field, at the cost of a reference count).
    pub field: std::sync::Arc<str>,
    /// The value.
    pub value: Value,
    /// When the value was taken, as people read it (the stamp sent to XMPP peers). The
    /// wall clock may step (NTP on a box without a real-time clock): never compare it.
    pub timestamp: SystemTime,
    /// When the value reached the gateway, on the monotonic clock: ages, freshness and
    /// the order of readings and writes are judged by this.
    pub taken: Instant,
    /// Its quality.
    pub quality: Quality,
}

impl Reading {
    /// A good reading stamped `timestamp`, reaching the gateway now.
    pub fn new(field: impl Into<std::sync::Arc<str>>, value: Value, timestamp: SystemTime) -> Self {
        Reading {
            field: field.into(),
            value,
            timestamp,
            taken: Instant::now(),
            quality: Quality::Good,
        }
    }

    /// How long ago the value reached the gateway.
    pub fn age(&self) -> std::time::Duration {
        self.taken.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_keep_configured_precision() {
        assert_eq!(Value::Double(10.0).display_with(Some(2)), "10.00");
        assert_eq!(Value::Double(4.199).display_with(Some(1)), "4.2");
        assert_eq!(Value::Double(4.5).display_with(None), "4.5");
        assert_eq!(Value::Int(7).display_with(Some(2)), "7");
    }

    #[test]
    fn numeric_views() {
        assert_eq!(Value::Long(-3).as_f64(), Some(-3.0));
        assert_eq!(Value::Bool(true).as_f64(), None);
    }
}
