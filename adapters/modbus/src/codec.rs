//! Decoding registers and bits into [`Value`]s, and encoding values for writes: the exact
//! inverse, with the same type, byte order, scale and offset.

use fieldgate_api::{AdapterError, FieldSpec, FieldType, Value};

use crate::plan::Span;
use crate::types::{ByteOrder, DataType, RegisterKind, ValueMap};

/// A validated field: where its value lives on the device and how it is encoded.
///
/// Built by [`ModbusField::resolve`](crate::ModbusField::resolve); it decodes what a
/// read returned, encodes what a write must send, and tells the planner what to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub(crate) kind: RegisterKind,
    /// Wire address (0-based) of the first coil or register.
    pub(crate) address: u16,
    pub(crate) data_type: DataType,
    pub(crate) order: ByteOrder,
    pub(crate) bit: u8,
    /// Registers (or bits) the value occupies.
    pub(crate) count: u16,
    pub(crate) scale: f64,
    pub(crate) offset: f64,
    pub(crate) values: ValueMap,
    /// Configured decimals, or those implied by scale and offset.
    pub(crate) decimals: Option<u8>,
    pub(crate) writable: bool,
}

/// A raw number as stored on the device, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Int(i128),
    F32(f32),
    F64(f64),
}

/// Why registers or bits could not be turned into a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The caller passed a slice of the wrong size.
    #[error("expected {expected} {unit}(s), got {got}")]
    WrongLength {
        /// Registers or bits the field occupies.
        expected: usize,
        /// Registers or bits passed.
        got: usize,
        /// "register" or "bit".
        unit: &'static str,
    },
    /// Registers passed for a coil, or bits for a register.
    #[error("a {kind} is not decoded from {}", if .0.is_bit() { "registers" } else { "bits" }, kind = .0)]
    WrongKind(RegisterKind),
    /// A float register holds NaN or infinity, or scaling overflowed.
    #[error("the device reported {0}, which is not a finite number")]
    NotFinite(f64),
    /// An enum-like register holds a value the map has no label for.
    #[error("register value {0} has no label in the field's value map")]
    Unmapped(i128),
    /// An unscaled u64 above the largest long.
    #[error("u64 value {0} exceeds the largest long (9223372036854775807); set a scale to read it as a double")]
    TooLarge(u64),
}

/// Why a value cannot be written to a field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// Discrete inputs and input registers cannot be written.
    #[error("a {0} cannot be written")]
    ReadOnly(RegisterKind),
    /// The value has the wrong type for the field.
    #[error("expected {expected}, got {got}")]
    WrongType {
        /// What the field takes.
        expected: &'static str,
        /// What was given.
        got: String,
    },
    /// NaN or infinity.
    #[error("{0} cannot be written: not a finite number")]
    NotFinite(String),
    /// The value does not fit the type once scale and offset are inverted.
    #[error("{}", out_of_range(.value, .raw, *.data_type, .min, .max))]
    OutOfRange {
        /// The value given.
        value: String,
        /// The value in register units (after inverting scale and offset), if it differs.
        raw: Option<String>,
        /// The register type.
        data_type: DataType,
        /// Smallest value the type holds.
        min: String,
        /// Largest value the type holds.
        max: String,
    },
    /// An integer register cannot hold the value exactly.
    #[error(
        "{value} cannot be written exactly: {} but {data_type} registers hold whole numbers",
        match .raw { Some(r) => format!("it is {r} in register units (scale and offset inverted),"), None => "it is not a whole number,".to_owned() }
    )]
    NotIntegral {
        /// The value given.
        value: String,
        /// The value in register units, if scaled.
        raw: Option<String>,
        /// The register type.
        data_type: DataType,
    },
    /// A label the value map does not know.
    #[error("{label:?} is not one of {labels}")]
    UnknownLabel {
        /// The label given.
        label: String,
        /// The labels the field knows.
        labels: String,
    },
    /// A string longer than its registers.
    #[error(
        "a string of {len} bytes is too long: the field holds {max} bytes ({registers} registers)"
    )]
    StringTooLong {
        /// UTF-8 bytes given.
        len: usize,
        /// Bytes the field holds.
        max: usize,
        /// Registers of the field.
        registers: u16,
    },
    /// Strings end at the first NUL byte on reads, so one cannot be written.
    #[error("a string with a NUL character cannot be written (reads end at the first NUL)")]
    StringNul,
}

fn out_of_range(value: &str, raw: &Option<String>, dt: DataType, min: &str, max: &str) -> String {
    match raw {
        Some(raw) => format!(
            "{value} is out of range: it is {raw} in register units (scale and offset inverted), outside the {dt} range {min}..{max}"
        ),
        None => format!("{value} is outside the {dt} range {min}..{max}"),
    }
}

impl EncodeError {
    /// The error as the core reports it for `field`.
    pub fn into_adapter_error(self, field: &str) -> AdapterError {
        match self {
            EncodeError::ReadOnly(_) => AdapterError::NotWritable(field.to_owned()),
            other => AdapterError::InvalidValue {
                field: field.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

/// What a write sends: the result of [`Point::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// One coil: FC05, or FC15 with one coil when the device wants `write_multiple`.
    Coil {
        /// Wire address.
        address: u16,
        /// The new state.
        value: bool,
    },
    /// Registers: FC06 for one register, FC16 for more (or always, with
    /// `write_multiple`).
    Registers {
        /// Wire address of the first register.
        address: u16,
        /// The registers, in wire order.
        values: Vec<u16>,
    },
    /// One bit of a holding register, leaving the other 15 bits as they are: FC22 (mask
    /// write register) with [`masks`](WriteOp::masks), or for devices without FC22 a read
    /// (FC03) and [`apply_to`](WriteOp::apply_to) and a write (FC06), which is not atomic.
    RegisterBit {
        /// Wire address.
        address: u16,
        /// Bit number, 0 = least significant.
        bit: u8,
        /// The new state.
        value: bool,
    },
}

impl WriteOp {
    /// Wire address of the first coil or register written.
    pub fn address(&self) -> u16 {
        match self {
            WriteOp::Coil { address, .. }
            | WriteOp::Registers { address, .. }
            | WriteOp::RegisterBit { address, .. } => *address,
        }
    }

    /// The function code to use: 5 or 15 for a coil, 6 or 16 for registers, 22 for a bit
    /// of a register.
    pub fn function_code(&self, write_multiple: bool) -> u8 {
        match self {
            WriteOp::Coil { .. } if write_multiple => 15,
            WriteOp::Coil { .. } => 5,
            WriteOp::Registers { values, .. } if values.len() == 1 && !write_multiple => 6,
            WriteOp::Registers { .. } => 16,
            WriteOp::RegisterBit { .. } => 22,
        }
    }

    /// For a register bit: the AND and OR masks of FC22, which computes
    /// `(current & and) | (or & !and)`.
    pub fn masks(&self) -> Option<(u16, u16)> {
        match *self {
            WriteOp::RegisterBit { bit, value, .. } => {
                let b = 1u16.checked_shl(bit.into()).unwrap_or(0);
                Some((!b, if value { b } else { 0 }))
            }
            _ => None,
        }
    }

    /// For a register bit: the register's new content, given its current content.
    pub fn apply_to(&self, current: u16) -> Option<u16> {
        let (and, or) = self.masks()?;
        Some((current & and) | (or & !and))
    }

    /// Whether registers read back after the write show it took effect.
    pub fn confirmed_by_registers(&self, read: &[u16]) -> bool {
        match self {
            WriteOp::Registers { values, .. } => read == values.as_slice(),
            WriteOp::RegisterBit { .. } => match read {
                [current] => self.apply_to(*current) == Some(*current),
                _ => false,
            },
            WriteOp::Coil { .. } => false,
        }
    }

    /// Whether a coil read back after the write shows it took effect.
    pub fn confirmed_by_bits(&self, read: &[bool]) -> bool {
        matches!((self, read), (WriteOp::Coil { value, .. }, [b]) if b == value)
    }
}

/// Decimal digits that make `x` exact (0.1 → 1, 0.25 → 2, 10 → 0), up to 9.
fn decimals_of(x: f64) -> Option<u8> {
    (0..=9u8).find(|&d| {
        let y = x * 10f64.powi(d.into());
        // A non-zero x must not round to 0 at d digits: 1e-13 has no decimals up to 9,
        // it is not "0 with no decimals" (which would show every reading as 0).
        (y - y.round()).abs() <= 1e-12 * y.abs().max(1.0) && (x == 0.0 || y.round() != 0.0)
    })
}

/// The decimals a scaled integer needs to show every value exactly.
pub(crate) fn implied_decimals(dt: DataType, scale: f64, offset: f64) -> Option<u8> {
    if !dt.is_integer() || (scale == 1.0 && offset == 0.0) {
        return None;
    }
    Some(decimals_of(scale)?.max(decimals_of(offset)?))
}

/// `v` rounded to `d` decimals (unchanged where rounding would overflow).
fn round_to(v: f64, d: u8) -> f64 {
    let p = 10f64.powi(i32::from(d.min(15)));
    let r = (v * p).round() / p;
    if r.is_finite() {
        r
    } else {
        v
    }
}

/// The f64 closest to the shortest decimal that identifies `x`: 1.1f32 reads as 1.1,
/// not 1.100000023841858.
fn f32_to_f64(x: f32) -> f64 {
    format!("{x:e}").parse().unwrap_or(f64::from(x))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Long(i) => format!("long {i}"),
        Value::Double(d) => format!("double {d}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Enum(s) => format!("enum {s:?}"),
        Value::Timestamp(_) => format!("timestamp {v}"),
    }
}

impl Point {
    /// The register kind.
    pub fn kind(&self) -> RegisterKind {
        self.kind
    }

    /// Wire (0-based) address of the first coil or register.
    pub fn address(&self) -> u16 {
        self.address
    }

    /// The storage type.
    pub fn data_type(&self) -> DataType {
        self.data_type
    }

    /// The byte order.
    pub fn order(&self) -> ByteOrder {
        self.order
    }

    /// The bit number of a `bit` field.
    pub fn bit(&self) -> Option<u8> {
        (self.data_type == DataType::Bit).then_some(self.bit)
    }

    /// Coils or registers the value occupies.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The scale (1 if none).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The offset (0 if none).
    pub fn offset(&self) -> f64 {
        self.offset
    }

    /// The value map (empty if none).
    pub fn values(&self) -> &ValueMap {
        &self.values
    }

    /// Decimals a double value is rounded to: configured, or implied by the scale.
    pub fn decimals(&self) -> Option<u8> {
        self.decimals
    }

    /// Whether the field may be written.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// What the planner must read for this field.
    pub fn span(&self) -> Span {
        Span {
            kind: self.kind,
            address: self.address,
            count: self.count,
        }
    }

    fn scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// The neutral type of the field's values: `bool` for bool and bit, `enum` with a
    /// value map, `string`, `double` for floats and scaled integers, `int` for 16-bit
    /// integers and i32, `long` for u32, i64 and u64.
    pub fn field_type(&self) -> FieldType {
        let dt = self.data_type;
        if !self.values.is_empty() {
            return FieldType::Enum;
        }
        match dt {
            DataType::Bool | DataType::Bit => FieldType::Bool,
            DataType::String => FieldType::String,
            DataType::F32 | DataType::F64 => FieldType::Double,
            _ if self.scaled() => FieldType::Double,
            DataType::I16 | DataType::U16 | DataType::I32 => FieldType::Int,
            _ => FieldType::Long,
        }
    }

    /// The field's catalogue entry as far as Modbus determines it: type, labels,
    /// writability, decimals of a double, and for integer types the range the register
    /// can hold (after scale and offset). The caller adds the unit and narrows the range
    /// with the field's own `min` / `max`.
    pub fn field_spec(&self, name: impl Into<std::sync::Arc<str>>) -> FieldSpec {
        let kind = self.field_type();
        let mut spec = FieldSpec::new(name, kind);
        spec.writable = self.writable;
        spec.values = self.values.labels().map(str::to_owned).collect();
        if kind == FieldType::Double {
            spec.decimals = self.decimals;
        }
        if let (FieldType::Int | FieldType::Long | FieldType::Double, Some((lo, hi))) =
            (kind, self.data_type.raw_range())
        {
            // An unscaled u64 reads as a long, so it is capped there.
            let hi = if kind == FieldType::Long {
                hi.min(i64::MAX.into())
            } else {
                hi
            };
            // Scaled limits are exact decimals; drop the binary noise (3276.7, not
            // 3276.7000000000003).
            let exact = |raw: i128| {
                let v = raw as f64 * self.scale + self.offset;
                match implied_decimals(self.data_type, self.scale, self.offset) {
                    Some(d) => round_to(v, d),
                    None => v,
                }
            };
            let (a, b) = (exact(lo), exact(hi));
            spec.min = Some(a.min(b));
            spec.max = Some(a.max(b));
        }
        spec
    }

    /// Decodes a register field from its registers, as read (`count()` of them).
    pub fn decode_registers(&self, regs: &[u16]) -> Result<Value, DecodeError> {
        if self.kind.is_bit() {
            return Err(DecodeError::WrongKind(self.kind));
        }
        if regs.len() != usize::from(self.count) {
            return Err(DecodeError::WrongLength {
                expected: self.count.into(),
                got: regs.len(),
                unit: "register",
            });
        }
        let dt = self.data_type;
        match dt {
            DataType::Bit => {
                let on = regs[0].checked_shr(self.bit.into()).unwrap_or(0) & 1 == 1;
                self.finish_bool(on)
            }
            DataType::String => {
                let mut bytes = Vec::with_capacity(regs.len() * 2);
                for &r in regs {
                    let w = if self.order.byte_swap() {
                        r.swap_bytes()
                    } else {
                        r
                    };
                    bytes.extend_from_slice(&w.to_be_bytes());
                }
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Ok(Value::String(
                    String::from_utf8_lossy(&bytes[..end]).into_owned(),
                ))
            }
            DataType::Bool => Err(DecodeError::WrongKind(self.kind)),
            _ => {
                let bits = self.order.join_registers(regs);
                let raw = match dt {
                    DataType::I16 => Raw::Int((bits as u16 as i16).into()),
                    DataType::U16 => Raw::Int((bits as u16).into()),
                    DataType::I32 => Raw::Int((bits as u32 as i32).into()),
                    DataType::U32 => Raw::Int((bits as u32).into()),
                    DataType::I64 => Raw::Int((bits as i64).into()),
                    DataType::U64 => Raw::Int(bits.into()),
                    DataType::F32 => Raw::F32(f32::from_bits(bits as u32)),
                    _ => Raw::F64(f64::from_bits(bits)),
                };
                self.finish_number(raw)
            }
        }
    }

    /// Decodes a coil or discrete input from the one bit read.
    pub fn decode_bits(&self, bits: &[bool]) -> Result<Value, DecodeError> {
        if !self.kind.is_bit() {
            return Err(DecodeError::WrongKind(self.kind));
        }
        match bits {
            [b] => self.finish_bool(*b),
            _ => Err(DecodeError::WrongLength {
                expected: 1,
                got: bits.len(),
                unit: "bit",
            }),
        }
    }

    fn finish_bool(&self, on: bool) -> Result<Value, DecodeError> {
        if self.values.is_empty() {
            return Ok(Value::Bool(on));
        }
        let raw = i128::from(on);
        self.values
            .label(raw)
            .map(|l| Value::Enum(l.to_owned()))
            .ok_or(DecodeError::Unmapped(raw))
    }

    fn finish_number(&self, raw: Raw) -> Result<Value, DecodeError> {
        let f = match raw {
            Raw::Int(i) if !self.values.is_empty() => {
                return self
                    .values
                    .label(i)
                    .map(|l| Value::Enum(l.to_owned()))
                    .ok_or(DecodeError::Unmapped(i));
            }
            Raw::Int(i) if !self.scaled() => {
                return Ok(match self.data_type {
                    DataType::I16 | DataType::U16 | DataType::I32 => {
                        Value::Int(i32::try_from(i).unwrap_or_default())
                    }
                    _ => match i64::try_from(i) {
                        Ok(v) => Value::Long(v),
                        Err(_) => return Err(DecodeError::TooLarge(i as u64)),
                    },
                });
            }
            Raw::Int(i) => i as f64,
            Raw::F32(x) if x.is_finite() => f32_to_f64(x),
            Raw::F32(x) => return Err(DecodeError::NotFinite(x.into())),
            Raw::F64(x) if x.is_finite() => x,
            Raw::F64(x) => return Err(DecodeError::NotFinite(x)),
        };
        let v = f * self.scale + self.offset;
        if !v.is_finite() {
            return Err(DecodeError::NotFinite(v));
        }
        Ok(Value::Double(match self.decimals {
            Some(d) => round_to(v, d),
            None => v,
        }))
    }

    /// Encodes `value` for a write: the exact inverse of decoding, with scale and offset
    /// inverted, the byte order applied, and the range checked.
    pub fn encode(&self, value: &Value) -> Result<WriteOp, EncodeError> {
        if !self.kind.is_writable() {
            return Err(EncodeError::ReadOnly(self.kind));
        }
        let address = self.address;
        match self.data_type {
            DataType::Bool => Ok(WriteOp::Coil {
                address,
                value: self.bool_of(value)?,
            }),
            DataType::Bit => Ok(WriteOp::RegisterBit {
                address,
                bit: self.bit,
                value: self.bool_of(value)?,
            }),
            DataType::String => {
                let Value::String(s) = value else {
                    return Err(EncodeError::WrongType {
                        expected: "a string",
                        got: describe(value),
                    });
                };
                let bytes = s.as_bytes();
                if bytes.contains(&0) {
                    return Err(EncodeError::StringNul);
                }
                let max = usize::from(self.count) * 2;
                if bytes.len() > max {
                    return Err(EncodeError::StringTooLong {
                        len: bytes.len(),
                        max,
                        registers: self.count,
                    });
                }
                let values = (0..usize::from(self.count))
                    .map(|i| {
                        let hi = bytes.get(2 * i).copied().unwrap_or(0);
                        let lo = bytes.get(2 * i + 1).copied().unwrap_or(0);
                        let w = u16::from_be_bytes([hi, lo]);
                        if self.order.byte_swap() {
                            w.swap_bytes()
                        } else {
                            w
                        }
                    })
                    .collect();
                Ok(WriteOp::Registers { address, values })
            }
            dt => {
                let bits = match self.raw_of(value)? {
                    Raw::Int(i) => {
                        let width = 16 * u32::from(self.count);
                        let mask = u64::MAX.checked_shr(64 - width).unwrap_or(u64::MAX);
                        (i as u64) & mask
                    }
                    Raw::F32(x) => x.to_bits().into(),
                    Raw::F64(x) => x.to_bits(),
                };
                let n = usize::from(dt.registers(0));
                Ok(WriteOp::Registers {
                    address,
                    values: self.order.split_registers(bits, n),
                })
            }
        }
    }

    /// The raw value of a label of the value map.
    fn raw_of_label(&self, value: &Value) -> Result<i128, EncodeError> {
        let (Value::Enum(label) | Value::String(label)) = value else {
            return Err(EncodeError::WrongType {
                expected: "one of the field's labels",
                got: describe(value),
            });
        };
        self.values
            .raw(label)
            .ok_or_else(|| EncodeError::UnknownLabel {
                label: label.clone(),
                labels: self.values.labels().collect::<Vec<_>>().join(", "),
            })
    }

    fn bool_of(&self, value: &Value) -> Result<bool, EncodeError> {
        if !self.values.is_empty() {
            return Ok(self.raw_of_label(value)? != 0);
        }
        match value {
            Value::Bool(b) => Ok(*b),
            _ => Err(EncodeError::WrongType {
                expected: "a bool",
                got: describe(value),
            }),
        }
    }

    fn raw_of(&self, value: &Value) -> Result<Raw, EncodeError> {
        let dt = self.data_type;
        if !self.values.is_empty() {
            // Keys were checked against the type's range when the field was resolved.
            return self.raw_of_label(value).map(Raw::Int);
        }
        let shown = value.to_string();
        let range = |raw: Option<String>| {
            let (min, max) = match dt.raw_range() {
                Some((lo, hi)) => (lo.to_string(), hi.to_string()),
                None if dt == DataType::F32 => (f32::MIN.to_string(), f32::MAX.to_string()),
                None => (f64::MIN.to_string(), f64::MAX.to_string()),
            };
            EncodeError::OutOfRange {
                value: shown.clone(),
                raw,
                data_type: dt,
                min,
                max,
            }
        };
        let scaled = self.scaled();
        let (lo, hi) = dt.raw_range().unwrap_or((0, 0));
        // Integers into an unscaled integer register: exact, no float on the way.
        if dt.is_integer() && !scaled {
            let exact = match value {
                Value::Int(i) => Some(i128::from(*i)),
                Value::Long(i) => Some(i128::from(*i)),
                _ => None,
            };
            if let Some(i) = exact {
                return if (lo..=hi).contains(&i) {
                    Ok(Raw::Int(i))
                } else {
                    Err(range(None))
                };
            }
        }
        let v = match value {
            Value::Int(i) => f64::from(*i),
            Value::Long(i) => *i as f64,
            Value::Double(d) => *d,
            _ => {
                return Err(EncodeError::WrongType {
                    expected: "a number",
                    got: describe(value),
                })
            }
        };
        if !v.is_finite() {
            return Err(EncodeError::NotFinite(shown));
        }
        let raw = (v - self.offset) / self.scale;
        let raw_shown = scaled.then(|| raw.to_string());
        if !raw.is_finite() {
            return Err(range(raw_shown));
        }
        match dt {
            DataType::F32 => {
                let x = raw as f32;
                if x.is_finite() {
                    Ok(Raw::F32(x))
                } else {
                    Err(range(raw_shown))
                }
            }
            DataType::F64 => Ok(Raw::F64(raw)),
            _ => {
                let r = raw.round();
                // Scaling divides in binary floating point: 23.4 / 0.1 is
                // 233.99999999999997. Only that rounding noise is forgiven, including what
                // taking away a large offset leaves, in register units (with an offset of 58
                // and a scale of 1e-9, 58.000000255 is 255.0000033 registers). Never half a
                // step or more: that would round a value between two steps instead of
                // refusing it (1e-9 of 5e8 registers is 0.5).
                let noise = 4.0 * f64::EPSILON * v.abs().max(self.offset.abs()) / self.scale.abs();
                let tolerance = if scaled {
                    (1e-9 * raw.abs().max(1.0)).max(noise).min(0.25)
                } else {
                    0.0
                };
                if (raw - r).abs() > tolerance {
                    return Err(EncodeError::NotIntegral {
                        value: shown,
                        raw: raw_shown,
                        data_type: dt,
                    });
                }
                // Saturating conversion: anything beyond i128 is out of range anyway.
                let i = r as i128;
                if (lo..=hi).contains(&i) {
                    Ok(Raw::Int(i))
                } else {
                    Err(range(raw_shown))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implied_decimals_follow_scale_and_offset() {
        assert_eq!(implied_decimals(DataType::I16, 0.1, 0.0), Some(1));
        assert_eq!(implied_decimals(DataType::U16, 0.01, -40.0), Some(2));
        assert_eq!(implied_decimals(DataType::U16, 0.5, 0.25), Some(2));
        assert_eq!(implied_decimals(DataType::U32, 10.0, 0.0), Some(0));
        assert_eq!(implied_decimals(DataType::U16, 1.0 / 3.0, 0.0), None);
        assert_eq!(implied_decimals(DataType::U16, 1.0, 0.0), None);
        assert_eq!(implied_decimals(DataType::F32, 0.1, 0.0), None);
        // Found by fuzzing: a tiny scale or offset implied 0 decimals, so every reading
        // showed as 0 and writing that 0 back failed.
        assert_eq!(implied_decimals(DataType::U16, 1e-13, 0.0), None);
        assert_eq!(implied_decimals(DataType::U64, 8.6e-217, 8.6e-217), None);
        assert_eq!(implied_decimals(DataType::U16, 1.0, 1e-13), None);
    }

    #[test]
    fn a_value_read_with_a_large_offset_writes_back() {
        // Found by fuzzing: the offset's rounding noise exceeded the tolerance, so a value
        // just read could not be written back.
        let field = crate::ModbusField {
            register: RegisterKind::Holding,
            address: 0,
            data_type: Some(DataType::I16),
            order: None,
            bit: None,
            length: None,
            scale: Some(1e-9),
            offset: Some(58.0),
            values: ValueMap::default(),
        };
        let point = field
            .resolve(&crate::ModbusDevice::new("c"), true, None)
            .unwrap();
        let v = point.decode_registers(&[255]).unwrap();
        assert_eq!(v, Value::Double(58.000000255));
        assert_eq!(
            point.encode(&v),
            Ok(WriteOp::Registers {
                address: 0,
                values: vec![255]
            })
        );
        // Still no value between two register steps.
        assert!(point.encode(&Value::Double(58.0000002555)).is_err());

        // Found by fuzzing: the tolerance grew with the value to half a step and more, so
        // 539820035 with an offset of 2.5 (539820032.5 registers) was rounded, not refused.
        let field = crate::ModbusField {
            data_type: Some(DataType::I32),
            scale: None,
            offset: Some(2.5),
            ..field
        };
        let point = field
            .resolve(&crate::ModbusDevice::new("c"), true, Some(0))
            .unwrap();
        assert!(matches!(
            point.encode(&Value::Double(539820035.0)),
            Err(EncodeError::NotIntegral { .. })
        ));
        assert!(point.encode(&Value::Double(539820034.5)).is_ok());
    }

    #[test]
    fn rounding_never_overflows() {
        assert_eq!(round_to(f64::MAX, 15), f64::MAX);
        assert_eq!(round_to(23.400000000000002, 1), 23.4);
    }

    #[test]
    fn f32_values_read_as_their_shortest_decimal() {
        assert_eq!(f32_to_f64(1.1), 1.1);
        assert_eq!(f32_to_f64(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(f32_to_f64(f32::MAX) as f32, f32::MAX);
        assert_eq!(f32_to_f64(f32::from_bits(1)) as f32, f32::from_bits(1));
    }

    #[test]
    fn bit_writes_keep_the_other_bits() {
        let op = WriteOp::RegisterBit {
            address: 7,
            bit: 3,
            value: true,
        };
        assert_eq!(op.masks(), Some((0xFFF7, 0x0008)));
        assert_eq!(op.apply_to(0xA5A0), Some(0xA5A8));
        assert!(op.confirmed_by_registers(&[0xA5A8]));
        assert!(!op.confirmed_by_registers(&[0xA5A0]));
        let off = WriteOp::RegisterBit {
            address: 7,
            bit: 15,
            value: false,
        };
        assert_eq!(off.apply_to(0xFFFF), Some(0x7FFF));
        assert_eq!(off.function_code(false), 22);
        assert_eq!(
            WriteOp::Registers {
                address: 0,
                values: vec![1]
            }
            .function_code(false),
            6
        );
        assert_eq!(
            WriteOp::Registers {
                address: 0,
                values: vec![1]
            }
            .function_code(true),
            16
        );
        let coil = WriteOp::Coil {
            address: 1,
            value: true,
        };
        assert_eq!(
            (coil.function_code(false), coil.function_code(true)),
            (5, 15)
        );
        assert!(coil.confirmed_by_bits(&[true]));
        assert!(!coil.confirmed_by_bits(&[false]));
        assert!(!coil.confirmed_by_bits(&[]));
    }
}
