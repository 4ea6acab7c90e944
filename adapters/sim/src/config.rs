//! The `sim` adapter's configuration: a device table and one generator per field.

use std::f64::consts::TAU;
use std::time::{SystemTime, UNIX_EPOCH};

use fieldgate_api::{FieldSpec, FieldType, HumanDuration, Value};
use serde::Deserialize;

/// Device-level options of a simulated device (`[device.sim]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDevice {
    /// Report the device as unreachable, with this reason, for as long as it is configured.
    pub unreachable: Option<String>,
    /// Simulate a periodic outage: every `outage_every`, the device is unreachable for
    /// `outage_for`. Both or neither.
    pub outage_every: Option<HumanDuration>,
    /// Length of each simulated outage.
    pub outage_for: Option<HumanDuration>,
    /// Fault injection, for testing the gateway's supervision of adapter tasks: the
    /// device's task panics while serving its Nth read request, counted from each start.
    /// Never set in production.
    pub fault_panic_after_reads: Option<u32>,
}

/// A constant as written in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SimConst {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (text, enum label).
    Str(String),
}

/// The generator behind one simulated field (`sim = { kind = "sine", ... }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SimField {
    /// Always the same value (a writable constant is a setpoint).
    Constant {
        /// The value; it must fit the field's type.
        value: SimConst,
    },
    /// `start + step × ⌊t / every⌋`, t in seconds since the Unix epoch.
    Counter {
        /// Value at the epoch.
        #[serde(default)]
        start: i64,
        /// Increment per tick.
        #[serde(default = "one")]
        step: i64,
        /// Tick length.
        #[serde(default = "one_second")]
        every: HumanDuration,
    },
    /// `offset + amplitude × sin(2π t / period)`.
    Sine {
        /// Length of one full wave.
        #[serde(default = "one_minute")]
        period: HumanDuration,
        /// Half the peak-to-peak swing.
        #[serde(default = "unit")]
        amplitude: f64,
        /// Centre line.
        #[serde(default)]
        offset: f64,
    },
    /// Alternates false / true every `every`.
    Toggle {
        /// Time between flips.
        #[serde(default = "ten_seconds")]
        every: HumanDuration,
    },
}

fn one() -> i64 {
    1
}
fn unit() -> f64 {
    1.0
}
fn one_second() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn ten_seconds() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn one_minute() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for SimField {
    fn default() -> Self {
        SimField::Constant {
            value: SimConst::Int(0),
        }
    }
}

impl SimField {
    /// Checks that the generator can produce values of the field's type.
    pub fn check(&self, spec: &FieldSpec) -> Result<(), String> {
        let zero = |d: &HumanDuration, what: &str| {
            if d.0.is_zero() {
                Err(format!("{what} must not be zero"))
            } else {
                Ok(())
            }
        };
        match self {
            SimField::Counter { every, .. } => zero(every, "every")?,
            SimField::Sine { period, .. } => zero(period, "period")?,
            SimField::Toggle { every } => zero(every, "every")?,
            SimField::Constant { value } => {
                const_value(spec, value)?;
            }
        }
        match (self, spec.kind) {
            (SimField::Sine { .. }, FieldType::Bool | FieldType::Enum | FieldType::Timestamp) => {
                Err(format!("a sine cannot feed a {:?} field", spec.kind).to_lowercase())
            }
            (SimField::Counter { .. }, FieldType::Enum | FieldType::Timestamp) => {
                Err(format!("a counter cannot feed a {:?} field", spec.kind).to_lowercase())
            }
            _ => Ok(()),
        }
    }

    /// The generator's value at `t`, in the field's type.
    pub fn value_at(&self, spec: &FieldSpec, t: SystemTime) -> Value {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        match self {
            SimField::Constant { value } => {
                const_value(spec, value).unwrap_or_else(|_| zero_of(spec))
            }
            SimField::Counter { start, step, every } => {
                let ticks = (secs.as_nanos() / every.0.as_nanos().max(1)) as i64;
                number(spec, start.wrapping_add(step.wrapping_mul(ticks)) as f64)
            }
            SimField::Sine {
                period,
                amplitude,
                offset,
            } => {
                let phase = (secs.as_secs_f64() % period.0.as_secs_f64()) / period.0.as_secs_f64();
                number(spec, offset + amplitude * (TAU * phase).sin())
            }
            SimField::Toggle { every } => {
                let on = (secs.as_nanos() / every.0.as_nanos().max(1)) % 2 == 1;
                match spec.kind {
                    FieldType::Bool => Value::Bool(on),
                    _ => number(spec, if on { 1.0 } else { 0.0 }),
                }
            }
        }
    }
}

/// A number in the field's type.
fn number(spec: &FieldSpec, v: f64) -> Value {
    match spec.kind {
        FieldType::Int => Value::Int(v.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32),
        FieldType::Long => Value::Long(v.round() as i64),
        FieldType::Bool => Value::Bool(v as i64 % 2 != 0),
        FieldType::String => Value::String(v.to_string()),
        _ => Value::Double(v),
    }
}

/// The zero of a field's type: what a field without a generator reads.
fn zero_of(spec: &FieldSpec) -> Value {
    match spec.kind {
        FieldType::Bool => Value::Bool(false),
        FieldType::Int => Value::Int(0),
        FieldType::Long => Value::Long(0),
        FieldType::Double => Value::Double(0.0),
        FieldType::String => Value::String(String::new()),
        FieldType::Enum => Value::Enum(spec.values.first().cloned().unwrap_or_default()),
        FieldType::Timestamp => Value::Timestamp(UNIX_EPOCH),
    }
}

fn const_value(spec: &FieldSpec, c: &SimConst) -> Result<Value, String> {
    let bad = || Err(format!("constant {c:?} does not fit a {:?} field", spec.kind).to_lowercase());
    Ok(match (spec.kind, c) {
        (FieldType::Bool, SimConst::Bool(b)) => Value::Bool(*b),
        (FieldType::Int, SimConst::Int(i)) => match i32::try_from(*i) {
            Ok(v) => Value::Int(v),
            Err(_) => return bad(),
        },
        (FieldType::Long, SimConst::Int(i)) => Value::Long(*i),
        (FieldType::Double, SimConst::Int(i)) => Value::Double(*i as f64),
        (FieldType::Double, SimConst::Float(f)) => Value::Double(*f),
        (FieldType::String, SimConst::Str(s)) => Value::String(s.clone()),
        (FieldType::Enum, SimConst::Str(s)) if spec.values.contains(s) => Value::Enum(s.clone()),
        // A field without a generator reads its type's zero.
        (_, SimConst::Int(0)) => zero_of(spec),
        _ => return bad(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        sim: SimField,
    }

    #[test]
    fn parses_generators_from_toml() {
        let w: Wrap =
            toml::from_str(r#"sim = { kind = "sine", period = "30s", amplitude = 2.5 }"#).unwrap();
        assert_eq!(
            w.sim,
            SimField::Sine {
                period: HumanDuration::from_secs(30),
                amplitude: 2.5,
                offset: 0.0
            }
        );
        let err = toml::from_str::<Wrap>(r#"sim = { kind = "sine", perod = "30s" }"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("perod"), "{err}");
        let err = toml::from_str::<Wrap>(r#"sim = { kind = "square" }"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("square"), "{err}");
    }
}
