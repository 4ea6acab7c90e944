//! XEP-0325 control on the core side: mapping parameters onto a device's field catalogue,
//! validating every one before any is applied, and the getForm data form.

use fieldgate_api::{FieldSpec, FieldType, Reading, Value};

use crate::xmpp::payload::control::{
    ControlForm, FormOption, FormParam, ParamKind, ParameterValue, ResponseCode, Set,
};
use crate::xmpp::payload::xsd::format_double;
use crate::xmpp::stanza::clip;

/// Why one parameter was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamFailure {
    /// The parameter name (`var` of the `paramError`).
    pub name: String,
    /// What is wrong with it.
    pub text: String,
    /// Which kind of failure: decides the RFC 6120 condition of the whole reply.
    pub kind: FailureKind,
}

/// The classes of parameter failure, in order of precedence for the reply's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// No such parameter: `item-not-found`.
    Unknown,
    /// The parameter exists but is read-only: `bad-request` (the requester holds the
    /// control right; the parameter just cannot be set).
    ReadOnly,
    /// Wrong type or out of range: `bad-request`.
    Invalid,
}

impl FailureKind {
    /// The slixmpp-compatible response code for this failure.
    pub fn response_code(self) -> ResponseCode {
        match self {
            FailureKind::Unknown => ResponseCode::NotFound,
            FailureKind::ReadOnly | FailureKind::Invalid => ResponseCode::FormError,
        }
    }
}

/// The parameter kind a field is written with.
pub fn param_kind(kind: FieldType) -> ParamKind {
    match kind {
        FieldType::Bool => ParamKind::Bool,
        FieldType::Int => ParamKind::Int,
        FieldType::Long => ParamKind::Long,
        FieldType::Double => ParamKind::Double,
        FieldType::String => ParamKind::String,
        FieldType::Enum => ParamKind::Enum,
        FieldType::Timestamp => ParamKind::DateTime,
    }
}

/// Converts one typed parameter into a value of the field's type, if the types agree.
fn to_value(spec: &FieldSpec, p: &ParameterValue) -> Result<Value, String> {
    let v = match (spec.kind, p) {
        (FieldType::Bool, ParameterValue::Boolean(b)) => Value::Bool(*b),
        (FieldType::Int, ParameterValue::Int(i)) => Value::Int(*i),
        (FieldType::Int, ParameterValue::Long(l)) => {
            Value::Int(i32::try_from(*l).map_err(|_| format!("{l} does not fit a 32-bit int"))?)
        }
        (FieldType::Long, ParameterValue::Int(i)) => Value::Long(i64::from(*i)),
        (FieldType::Long, ParameterValue::Long(l)) => Value::Long(*l),
        (FieldType::Double, ParameterValue::Double(d)) => Value::Double(*d),
        (FieldType::Double, ParameterValue::Int(i)) => Value::Double(f64::from(*i)),
        (FieldType::Double, ParameterValue::Long(l)) => Value::Double(*l as f64),
        (FieldType::String, ParameterValue::String(s)) => Value::String(s.clone()),
        (FieldType::Enum, ParameterValue::String(s)) => Value::Enum(s.clone()),
        (FieldType::Timestamp, ParameterValue::DateTime(t)) => Value::Timestamp(
            t.to_system_time()
                .ok_or_else(|| format!("{t} is outside the supported time range"))?,
        ),
        (kind, p) => {
            return Err(format!(
                "expected a {} parameter, got <{}>",
                param_kind_name(param_kind(kind)),
                p.element_name()
            ))
        }
    };
    Ok(v)
}

fn param_kind_name(k: ParamKind) -> &'static str {
    match k {
        ParamKind::Bool => "boolean",
        ParamKind::Int => "int",
        ParamKind::Long => "long",
        ParamKind::Double => "double",
        ParamKind::String | ParamKind::Enum => "string",
        ParamKind::Date => "date",
        ParamKind::Time => "time",
        ParamKind::DateTime => "dateTime",
        ParamKind::Duration => "duration",
        ParamKind::Color => "color",
    }
}

/// Validates every parameter of `set` (typed parameters, then the submitted form's
/// fields) against the catalogue: exists, writable, type, range. Returns the values to
/// apply in document order, or every failure.
pub fn validate(specs: &[FieldSpec], set: &Set) -> Result<Vec<(String, Value)>, Vec<ParamFailure>> {
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    let fail = |name: &str, text: String, kind: FailureKind| ParamFailure {
        name: name.to_owned(),
        text,
        kind,
    };
    let find = |name: &str| specs.iter().find(|s| &*s.name == name);
    let mut check = |name: &str, value: Result<Value, String>| {
        let Some(spec) = find(name) else {
            // Not one of ours: repeat no more of it than needed to recognise it.
            let name = clip(name);
            failures.push(fail(
                &name,
                format!("no parameter named {name:?}"),
                FailureKind::Unknown,
            ));
            return;
        };
        if !spec.writable {
            failures.push(fail(
                name,
                format!("{name:?} is read-only"),
                FailureKind::ReadOnly,
            ));
            return;
        }
        match value.and_then(|v| {
            spec.validate_write(&v)
                .map(|()| v)
                .map_err(|e| e.to_string())
        }) {
            Ok(v) => ok.push((name.to_owned(), v)),
            Err(text) => failures.push(fail(name, text, FailureKind::Invalid)),
        }
    };
    for p in &set.params {
        let value = find(&p.name).map_or(Err(String::new()), |spec| to_value(spec, &p.value));
        check(&p.name, value);
    }
    for (name, text) in set.form_values() {
        let value = find(&name).map_or(Err(String::new()), |spec| {
            ParameterValue::parse(param_kind(spec.kind), &text)
                .map_err(|e| format!("{:?}: {e}", clip(&text)))
                .and_then(|p| to_value(spec, &p))
        });
        check(&name, value);
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(failures)
    }
}

/// The getForm answer: one form field per writable field, with its type, range, options
/// and the current value when one is known.
pub fn form(
    title: &str,
    specs: &[FieldSpec],
    current: impl Fn(&str) -> Option<Reading>,
) -> ControlForm {
    let params = specs
        .iter()
        .filter(|s| s.writable)
        .map(|s| {
            let mut p = FormParam::new(s.name.to_string(), label(s), param_kind(s.kind));
            let bound = |b: Option<f64>| {
                b.map(|v| match s.kind {
                    FieldType::Int | FieldType::Long => format!("{}", v as i64),
                    _ => format_double(v),
                })
            };
            p.min = bound(s.min);
            p.max = bound(s.max);
            p.options = s
                .values
                .iter()
                .map(|v| FormOption::new(v.clone(), None))
                .collect();
            p.value = current(&s.name).map(|r| match r.value {
                Value::Double(d) => match s.decimals {
                    Some(dec) => format!("{:.*}", usize::from(dec), d),
                    None => format_double(d),
                },
                Value::Timestamp(t) => {
                    crate::xmpp::payload::xsd::XsDateTime::from_system_time(t).to_string()
                }
                v => v.to_string(),
            });
            p
        })
        .collect();
    ControlForm {
        title: Some(title.to_owned()),
        params,
    }
}

fn label(s: &FieldSpec) -> String {
    match &s.unit {
        Some(u) if !u.is_empty() => format!("{} ({u})", s.name),
        _ => s.name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::payload::control::Parameter;

    fn specs() -> Vec<FieldSpec> {
        vec![
            FieldSpec {
                writable: true,
                min: Some(0.0),
                max: Some(10.0),
                unit: Some("bar".into()),
                ..FieldSpec::new("setpoint", FieldType::Double)
            },
            FieldSpec {
                writable: true,
                ..FieldSpec::new("running", FieldType::Bool)
            },
            FieldSpec::new("pressure", FieldType::Double),
        ]
    }

    #[test]
    fn every_parameter_is_checked_before_any_is_applied() {
        let set = Set::new(vec![
            Parameter::new("setpoint", ParameterValue::Double(4.5)),
            Parameter::new("running", ParameterValue::Int(1)),
            Parameter::new("pressure", ParameterValue::Double(1.0)),
            Parameter::new("nope", ParameterValue::Boolean(true)),
            Parameter::new("setpoint", ParameterValue::Double(11.0)),
        ]);
        let errs = validate(&specs(), &set).unwrap_err();
        let kinds: Vec<_> = errs.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("running", FailureKind::Invalid),
                ("pressure", FailureKind::ReadOnly),
                ("nope", FailureKind::Unknown),
                ("setpoint", FailureKind::Invalid),
            ]
        );
        assert!(
            errs[3].text.contains("above the maximum"),
            "{}",
            errs[3].text
        );
    }

    #[test]
    fn valid_sets_keep_document_order() {
        let set = Set::new(vec![
            Parameter::new("running", ParameterValue::Boolean(true)),
            Parameter::new("setpoint", ParameterValue::Int(3)),
        ]);
        assert_eq!(
            validate(&specs(), &set).unwrap(),
            vec![
                ("running".to_string(), Value::Bool(true)),
                ("setpoint".to_string(), Value::Double(3.0))
            ]
        );
    }

    #[test]
    fn form_lists_writable_fields_with_ranges() {
        let f = form("Pump", &specs(), |_| None);
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[0].label, "setpoint (bar)");
        assert_eq!(f.params[0].max.as_deref(), Some("10"));
    }
}
