//! A device's field catalogue.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{AdapterError, Value};

/// The type of a field, as configured and as advertised over XMPP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// true / false.
    Bool,
    /// 32-bit signed integer.
    Int,
    /// 64-bit signed integer.
    Long,
    /// Floating point, written with the field's `decimals`.
    Double,
    /// Free text.
    String,
    /// One label out of the field's `values`.
    Enum,
    /// A date and time.
    Timestamp,
}

impl FieldType {
    /// Whether values of this type are numbers (and so may carry a range and a unit).
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int | FieldType::Long | FieldType::Double)
    }
}

/// One entry of a device's field catalogue: what the core advertises and validates.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// Field name, unique within the device. Shared: the readings of the field and an
    /// adapter's own tables carry the same name (a register map has thousands of fields).
    pub name: Arc<str>,
    /// Value type.
    pub kind: FieldType,
    /// Unit of a numeric value ("bar", "°C"), if any; shared by repeated fields.
    pub unit: Option<Arc<str>>,
    /// Digits after the decimal point for doubles.
    pub decimals: Option<u8>,
    /// Whether a control command may set it.
    pub writable: bool,
    /// Smallest accepted value of a numeric field.
    pub min: Option<f64>,
    /// Largest accepted value of a numeric field.
    pub max: Option<f64>,
    /// Allowed labels of an enum field.
    pub values: Vec<String>,
}

impl FieldSpec {
    /// A read-only field of the given type with no unit or range.
    pub fn new(name: impl Into<Arc<str>>, kind: FieldType) -> Self {
        FieldSpec {
            name: name.into(),
            kind,
            unit: None,
            decimals: None,
            writable: false,
            min: None,
            max: None,
            values: Vec::new(),
        }
    }

    /// Checks that `value` may be written to this field: writable, right type, in range.
    pub fn validate_write(&self, value: &Value) -> Result<(), AdapterError> {
        if !self.writable {
            return Err(AdapterError::NotWritable(self.name.to_string()));
        }
        let invalid = |reason: String| AdapterError::InvalidValue {
            field: self.name.to_string(),
            reason,
        };
        let type_ok = matches!(
            (self.kind, value),
            (FieldType::Bool, Value::Bool(_))
                | (FieldType::Int, Value::Int(_))
                | (FieldType::Long, Value::Long(_) | Value::Int(_))
                | (
                    FieldType::Double,
                    Value::Double(_) | Value::Int(_) | Value::Long(_)
                )
                | (FieldType::String, Value::String(_))
                | (FieldType::Enum, Value::Enum(_) | Value::String(_))
                | (FieldType::Timestamp, Value::Timestamp(_))
        );
        if !type_ok {
            return Err(invalid(
                format!("expected a {:?} value", self.kind).to_lowercase(),
            ));
        }
        if let Some(v) = value.as_f64() {
            if !v.is_finite() {
                return Err(invalid("not a finite number".into()));
            }
            if let Some(min) = self.min.filter(|min| v < *min) {
                return Err(invalid(format!("{v} is below the minimum {min}")));
            }
            if let Some(max) = self.max.filter(|max| v > *max) {
                return Err(invalid(format!("{v} is above the maximum {max}")));
            }
        }
        if let (FieldType::Enum, Value::Enum(label) | Value::String(label)) = (self.kind, value) {
            if !self.values.iter().any(|v| v == label) {
                return Err(invalid(format!(
                    "{label:?} is not one of {}",
                    self.values.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setpoint() -> FieldSpec {
        FieldSpec {
            writable: true,
            min: Some(0.0),
            max: Some(10.0),
            ..FieldSpec::new("setpoint", FieldType::Double)
        }
    }

    #[test]
    fn write_validation_checks_writable_type_and_range() {
        let f = setpoint();
        assert!(f.validate_write(&Value::Double(5.0)).is_ok());
        assert!(f.validate_write(&Value::Int(3)).is_ok());
        assert!(matches!(
            f.validate_write(&Value::Double(10.5)),
            Err(AdapterError::InvalidValue { .. })
        ));
        assert!(matches!(
            f.validate_write(&Value::Bool(true)),
            Err(AdapterError::InvalidValue { .. })
        ));
        assert!(f.validate_write(&Value::Double(f64::NAN)).is_err());
        let ro = FieldSpec::new("temp", FieldType::Double);
        assert_eq!(
            ro.validate_write(&Value::Double(1.0)),
            Err(AdapterError::NotWritable("temp".into()))
        );
    }

    #[test]
    fn enum_labels_are_checked() {
        let f = FieldSpec {
            writable: true,
            values: vec!["auto".into(), "manual".into()],
            ..FieldSpec::new("mode", FieldType::Enum)
        };
        assert!(f.validate_write(&Value::Enum("auto".into())).is_ok());
        assert!(f.validate_write(&Value::Enum("off".into())).is_err());
    }
}
