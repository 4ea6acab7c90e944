//! XEP-0325 control (`urn:xmpp:iot:control`, v0.5.1): `<set/>` with typed parameters or a
//! submitted data form, its answer `<setResponse/>`, the `<paramError/>` that goes inside an
//! iq error, `<getForm/>`, and [`ControlForm`], which builds the `jabber:x:data` control form
//! answering `<getForm/>`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_xmpp::minidom::{rxml, Element};
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType, Option_};
use xmpp_parsers::data_forms_validate::{Datatype, Method, Validate};
use xmpp_parsers::ns::{DATA_FORMS, XDATA_VALIDATE};

use super::common::{
    check_element, optional, parse_boolean, parse_int, parse_long, required, required_parsed,
    try_from_owned, NodeRef, ParseError, Tokens, ValueError,
};
use super::xsd::{
    format_double, format_duration, parse_double, parse_duration, XsDate, XsDateTime, XsTime,
};
use crate::xmpp::stanza::BuilderExt;

/// The XEP-0325 namespace.
pub const NS: &str = "urn:xmpp:iot:control";

/// XEP-0336 dynamic forms, whose `<notSame/>` XEP-0325 requires on every control parameter.
pub const NS_XDATA_DYNAMIC: &str = "urn:xmpp:xdata:dynamic";

/// A colour parameter value: `RRGGBB` or `RRGGBBAA` hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Color {
    /// Red component.
    pub red: u8,
    /// Green component.
    pub green: u8,
    /// Blue component.
    pub blue: u8,
    /// Alpha channel, when eight digits were given.
    pub alpha: Option<u8>,
}

impl FromStr for Color {
    type Err = ValueError;

    /// Exactly six or eight hexadecimal digits, either case.
    fn from_str(s: &str) -> Result<Color, ValueError> {
        let b = s.trim().as_bytes();
        if !(b.len() == 6 || b.len() == 8) || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err(ValueError::Color);
        }
        let byte = |i: usize| {
            let hex = |c: u8| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            };
            hex(b[i]) << 4 | hex(b[i + 1])
        };
        Ok(Color {
            red: byte(0),
            green: byte(2),
            blue: byte(4),
            alpha: (b.len() == 8).then(|| byte(6)),
        })
    }
}

impl fmt::Display for Color {
    /// Upper-case hexadecimal, eight digits when there is an alpha channel.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02X}{:02X}{:02X}", self.red, self.green, self.blue)?;
        match self.alpha {
            Some(a) => write!(f, "{a:02X}"),
            None => Ok(()),
        }
    }
}

/// The type of a control parameter, as the device model declares it. `Enum` is a string
/// parameter whose form field lists the allowed options (XEP-0325 has no enum parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `boolean`.
    Bool,
    /// `int` (32-bit).
    Int,
    /// `long` (64-bit).
    Long,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `string` restricted to a list of options.
    Enum,
    /// `date`.
    Date,
    /// `time`.
    Time,
    /// `dateTime`.
    DateTime,
    /// `duration`.
    Duration,
    /// `color`.
    Color,
}

impl ParamKind {
    /// The XEP-0122 validation datatype of the form field (`None` for booleans, whose field
    /// type already says it: xmpp-parsers cannot read `xs:boolean` back).
    fn datatype(self) -> Option<Datatype> {
        let other = |prefix: &str, value: &str| Datatype::Other {
            prefix: prefix.into(),
            value: value.into(),
        };
        Some(match self {
            ParamKind::Bool => return None,
            ParamKind::Int => Datatype::Int,
            ParamKind::Long => Datatype::Long,
            ParamKind::Double => Datatype::Double,
            ParamKind::String | ParamKind::Enum => Datatype::String,
            ParamKind::Date => Datatype::Date,
            ParamKind::Time => Datatype::Time,
            ParamKind::DateTime => Datatype::DateTime,
            ParamKind::Duration => other("xs", "duration"),
            // XEP-0331 colour datatype.
            ParamKind::Color => other("xdc", "color"),
        })
    }

    /// Whether a form field of this kind carries bounds (a `<range/>`).
    fn ranged(self) -> bool {
        !matches!(
            self,
            ParamKind::Bool | ParamKind::String | ParamKind::Enum | ParamKind::Color
        )
    }

    /// The kind a form field declares, from its field type and validation datatype.
    fn from_form(field_type: &str, datatype: Option<&str>) -> Option<ParamKind> {
        match field_type {
            "boolean" => return Some(ParamKind::Bool),
            "list-single" => return Some(ParamKind::Enum),
            _ => {}
        }
        Some(match datatype.unwrap_or("xs:string") {
            "xs:int" | "xs:short" | "xs:byte" => ParamKind::Int,
            "xs:long" | "xs:integer" => ParamKind::Long,
            "xs:double" | "xs:decimal" | "xs:float" => ParamKind::Double,
            "xs:string" => ParamKind::String,
            "xs:date" => ParamKind::Date,
            "xs:time" => ParamKind::Time,
            "xs:dateTime" => ParamKind::DateTime,
            "xs:duration" => ParamKind::Duration,
            "xs:boolean" => ParamKind::Bool,
            "xdc:color" | "xdc:colorAlpha" => ParamKind::Color,
            _ => return None,
        })
    }
}

/// The typed value of a control parameter; the variant decides the element name.
#[derive(Debug, Clone, PartialEq)]
pub enum ParameterValue {
    /// `<boolean/>`.
    Boolean(bool),
    /// `<color/>`.
    Color(Color),
    /// `<date/>`.
    Date(XsDate),
    /// `<dateTime/>`.
    DateTime(XsDateTime),
    /// `<double/>`; always finite (INF and NaN are refused when parsing).
    Double(f64),
    /// `<duration/>`.
    Duration(Duration),
    /// `<int/>`.
    Int(i32),
    /// `<long/>`.
    Long(i64),
    /// `<string/>` (also the value of an enum parameter).
    String(String),
    /// `<time/>`.
    Time(XsTime),
}

impl ParameterValue {
    /// The element name of this parameter type.
    pub fn element_name(&self) -> &'static str {
        match self {
            ParameterValue::Boolean(_) => "boolean",
            ParameterValue::Color(_) => "color",
            ParameterValue::Date(_) => "date",
            ParameterValue::DateTime(_) => "dateTime",
            ParameterValue::Double(_) => "double",
            ParameterValue::Duration(_) => "duration",
            ParameterValue::Int(_) => "int",
            ParameterValue::Long(_) => "long",
            ParameterValue::String(_) => "string",
            ParameterValue::Time(_) => "time",
        }
    }

    /// The value as written in the `value` attribute or a form field.
    pub fn to_text(&self) -> String {
        match self {
            ParameterValue::Boolean(v) => v.to_string(),
            ParameterValue::Color(v) => v.to_string(),
            ParameterValue::Date(v) => v.to_string(),
            ParameterValue::DateTime(v) => v.to_string(),
            ParameterValue::Double(v) => format_double(*v),
            ParameterValue::Duration(v) => format_duration(*v),
            ParameterValue::Int(v) => v.to_string(),
            ParameterValue::Long(v) => v.to_string(),
            ParameterValue::String(v) => v.clone(),
            ParameterValue::Time(v) => v.to_string(),
        }
    }

    /// Parses `text` as a value of `kind`: how a submitted form's text values become typed
    /// parameters. Booleans accept `true false 1 0`; doubles must be finite; enums are
    /// strings (checking the option list is the caller's job).
    pub fn parse(kind: ParamKind, text: &str) -> Result<ParameterValue, ValueError> {
        Ok(match kind {
            ParamKind::Bool => ParameterValue::Boolean(parse_boolean(text)?),
            ParamKind::Int => ParameterValue::Int(parse_int(text)?),
            ParamKind::Long => ParameterValue::Long(parse_long(text)?),
            ParamKind::Double => {
                let v = parse_double(text)?;
                if !v.is_finite() {
                    return Err(ValueError::NotFinite);
                }
                ParameterValue::Double(v)
            }
            ParamKind::String | ParamKind::Enum => ParameterValue::String(text.to_owned()),
            ParamKind::Date => ParameterValue::Date(text.parse()?),
            ParamKind::Time => ParameterValue::Time(text.parse()?),
            ParamKind::DateTime => ParameterValue::DateTime(text.parse()?),
            ParamKind::Duration => ParameterValue::Duration(parse_duration(text)?),
            ParamKind::Color => ParameterValue::Color(text.parse()?),
        })
    }
}

/// One typed parameter of `<set/>`: `<int name='OutputPercent' value='10'/>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// `name`.
    pub name: String,
    /// The typed `value`.
    pub value: ParameterValue,
}

impl Parameter {
    /// A parameter.
    pub fn new(name: impl Into<String>, value: ParameterValue) -> Parameter {
        Parameter {
            name: name.into(),
            value,
        }
    }

    fn parse(el: &Element) -> Result<Parameter, ParseError> {
        let (e, kind): (&'static str, ParamKind) = match el.name() {
            "boolean" => ("boolean", ParamKind::Bool),
            "color" => ("color", ParamKind::Color),
            "date" => ("date", ParamKind::Date),
            "dateTime" => ("dateTime", ParamKind::DateTime),
            "double" => ("double", ParamKind::Double),
            "duration" => ("duration", ParamKind::Duration),
            "int" => ("int", ParamKind::Int),
            "long" => ("long", ParamKind::Long),
            "string" => ("string", ParamKind::String),
            "time" => ("time", ParamKind::Time),
            other => return Err(ParseError::UnknownParameterType(other.to_owned())),
        };
        Ok(Parameter {
            name: required(el, e, "name")?.to_owned(),
            value: required_parsed(el, e, "value", |v| ParameterValue::parse(kind, v))?,
        })
    }

    fn into_element(self) -> Element {
        Element::builder(self.value.element_name(), NS)
            .a("name", self.name)
            .a("value", self.value.to_text())
            .build()
    }
}

/// `<set/>` (iq set, or message for no answer): parameters to apply in document order,
/// and/or a submitted `jabber:x:data` form, optionally for nodes behind the JID.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    /// XEP-0324 provisioning tokens.
    pub tokens: Tokens,
    /// `<node/>` children: the nodes to control (empty: the device itself).
    pub nodes: Vec<NodeRef>,
    /// The typed parameters, in document order (the order they must be applied in).
    pub params: Vec<Parameter>,
    /// A submitted control form (`type='submit'`), when the form variant is used.
    pub form: Option<DataForm>,
}

impl Set {
    /// A `<set/>` of typed parameters for the device itself.
    pub fn new(params: Vec<Parameter>) -> Set {
        Set {
            tokens: Tokens::default(),
            nodes: vec![],
            params,
            form: None,
        }
    }

    /// The submitted form's parameter values as (name, text), in form order: every field
    /// except `FORM_TYPE`, the XEP-0336 `xdd session` field and fields typed hidden or
    /// fixed. A field without value gives an empty text. Empty without a form.
    pub fn form_values(&self) -> Vec<(String, String)> {
        self.form
            .iter()
            .flat_map(|f| f.fields.iter())
            .filter(|f| !matches!(f.type_, FieldType::Hidden | FieldType::Fixed))
            .filter_map(|f| {
                let var = f.var.as_deref()?;
                if var == "FORM_TYPE" || var == "xdd session" {
                    return None;
                }
                Some((
                    var.to_owned(),
                    f.values.first().cloned().unwrap_or_default(),
                ))
            })
            .collect()
    }
}

impl TryFrom<&Element> for Set {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Set, ParseError> {
        check_element(el, "set", NS)?;
        let mut set = Set {
            tokens: Tokens::parse(el),
            ..Set::new(vec![])
        };
        for child in el.children() {
            if child.ns() == NS {
                if child.name() == "node" {
                    set.nodes.push(NodeRef::parse(child, "node")?);
                } else {
                    set.params.push(Parameter::parse(child)?);
                }
            } else if child.is("x", DATA_FORMS) {
                if set.form.is_some() {
                    return Err(ParseError::DuplicateChild {
                        parent: "set",
                        child: "x",
                    });
                }
                let form = DataForm::try_from(child.clone())
                    .map_err(|e| ParseError::InvalidForm(e.to_string()))?;
                if form.type_ != DataFormType::Submit {
                    return Err(ParseError::InvalidForm(format!(
                        "the form in <set/> must be type='submit', not type='{}'",
                        child.attr("type").unwrap_or_default()
                    )));
                }
                set.form = Some(form);
            }
        }
        Ok(set)
    }
}

impl From<Set> for Element {
    fn from(s: Set) -> Element {
        s.tokens
            .write(Element::builder("set", NS))
            .append_all(s.nodes.iter().map(|n| n.to_element(NS)))
            .append_all(s.params.into_iter().map(Parameter::into_element))
            .append_all(s.form.map(Element::from))
            .build()
    }
}

/// The `responseCode` of `<setResponse/>`. Not in the XEP-0325 schema; slixmpp's plugin
/// expects it (`OK` on success, an error code in the payload beside an iq error).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// `OK`: everything was applied.
    Ok,
    /// `NotFound`: unknown node or parameter.
    NotFound,
    /// `InsufficientPrivileges`.
    InsufficientPrivileges,
    /// `Locked`: held by another user or process.
    Locked,
    /// `NotImplemented`.
    NotImplemented,
    /// `FormError`: invalid parameter values.
    FormError,
    /// `OtherError`.
    OtherError,
    /// Any other code, kept as received.
    Other(String),
}

impl ResponseCode {
    /// The attribute value.
    pub fn as_str(&self) -> &str {
        match self {
            ResponseCode::Ok => "OK",
            ResponseCode::NotFound => "NotFound",
            ResponseCode::InsufficientPrivileges => "InsufficientPrivileges",
            ResponseCode::Locked => "Locked",
            ResponseCode::NotImplemented => "NotImplemented",
            ResponseCode::FormError => "FormError",
            ResponseCode::OtherError => "OtherError",
            ResponseCode::Other(s) => s,
        }
    }

    fn parse(s: &str) -> ResponseCode {
        match s {
            "OK" => ResponseCode::Ok,
            "NotFound" => ResponseCode::NotFound,
            "InsufficientPrivileges" => ResponseCode::InsufficientPrivileges,
            "Locked" => ResponseCode::Locked,
            "NotImplemented" => ResponseCode::NotImplemented,
            "FormError" => ResponseCode::FormError,
            "OtherError" => ResponseCode::OtherError,
            other => ResponseCode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<setResponse/>`: the answer to an iq `<set/>`. Empty means everything was applied as
/// requested; otherwise it lists the nodes and parameters the command was finally
/// restricted to (XEP-0325 §3.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetResponse {
    /// `responseCode` (slixmpp compatibility).
    pub response_code: Option<ResponseCode>,
    /// `<node/>` children.
    pub nodes: Vec<NodeRef>,
    /// `<parameter name/>` children.
    pub params: Vec<String>,
}

impl SetResponse {
    /// `<setResponse responseCode='OK'/>`: all applied, understood by spec clients and slixmpp.
    pub fn ok() -> SetResponse {
        SetResponse::with_code(ResponseCode::Ok)
    }

    /// A response with `code` and no children (e.g. the payload slixmpp looks for inside an
    /// iq error).
    pub fn with_code(code: ResponseCode) -> SetResponse {
        SetResponse {
            response_code: Some(code),
            nodes: vec![],
            params: vec![],
        }
    }
}

impl TryFrom<&Element> for SetResponse {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<SetResponse, ParseError> {
        check_element(el, "setResponse", NS)?;
        let mut r = SetResponse {
            response_code: el.attr("responseCode").map(ResponseCode::parse),
            nodes: vec![],
            params: vec![],
        };
        for child in el.children().filter(|c| c.ns() == NS) {
            match child.name() {
                "node" => r.nodes.push(NodeRef::parse(child, "node")?),
                "parameter" => r
                    .params
                    .push(required(child, "parameter", "name")?.to_owned()),
                other => {
                    return Err(ParseError::UnexpectedChild {
                        parent: "setResponse",
                        child: other.to_owned(),
                    })
                }
            }
        }
        Ok(r)
    }
}

impl From<SetResponse> for Element {
    fn from(r: SetResponse) -> Element {
        Element::builder("setResponse", NS)
            .a(
                "responseCode",
                r.response_code.as_ref().map(ResponseCode::as_str),
            )
            .append_all(r.nodes.iter().map(|n| n.to_element(NS)))
            .append_all(r.params.iter().map(|p| {
                Element::builder("parameter", NS)
                    .a("name", p.as_str())
                    .build()
            }))
            .build()
    }
}

/// `<paramError var='Name'>text</paramError>`: why one parameter was refused. It goes
/// inside the iq `<error/>` (as `StanzaError::other`), one per failing parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// `var`: the parameter name.
    pub var: String,
    /// Human-readable reason.
    pub text: String,
}

impl ParamError {
    /// An error for parameter `var`.
    pub fn new(var: impl Into<String>, text: impl Into<String>) -> ParamError {
        ParamError {
            var: var.into(),
            text: text.into(),
        }
    }
}

impl TryFrom<&Element> for ParamError {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<ParamError, ParseError> {
        check_element(el, "paramError", NS)?;
        Ok(ParamError {
            var: required(el, "paramError", "var")?.to_owned(),
            text: el.text(),
        })
    }
}

impl From<ParamError> for Element {
    fn from(p: ParamError) -> Element {
        Element::builder("paramError", NS)
            .a("var", p.var)
            .append(p.text)
            .build()
    }
}

/// `<getForm/>` (iq get): asks for the control form, optionally of nodes behind the JID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetForm {
    /// XEP-0324 provisioning tokens.
    pub tokens: Tokens,
    /// `<node/>` children (empty: the device itself).
    pub nodes: Vec<NodeRef>,
}

impl TryFrom<&Element> for GetForm {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<GetForm, ParseError> {
        check_element(el, "getForm", NS)?;
        let mut nodes = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            if child.name() != "node" {
                return Err(ParseError::UnexpectedChild {
                    parent: "getForm",
                    child: child.name().to_owned(),
                });
            }
            nodes.push(NodeRef::parse(child, "node")?);
        }
        Ok(GetForm {
            tokens: Tokens::parse(el),
            nodes,
        })
    }
}

impl From<GetForm> for Element {
    fn from(g: GetForm) -> Element {
        g.tokens
            .write(Element::builder("getForm", NS))
            .append_all(g.nodes.iter().map(|n| n.to_element(NS)))
            .build()
    }
}

/// One option of an enum parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormOption {
    /// The value written back.
    pub value: String,
    /// What to show, if not the value.
    pub label: Option<String>,
}

impl FormOption {
    /// An option shown as `label`.
    pub fn new(value: impl Into<String>, label: Option<String>) -> FormOption {
        FormOption {
            value: value.into(),
            label,
        }
    }
}

impl From<&str> for FormOption {
    fn from(value: &str) -> FormOption {
        FormOption::new(value, None)
    }
}

/// One writable parameter as the control form shows it: the input of [`ControlForm`],
/// independent of the device model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormParam {
    /// Field `var`: the parameter name.
    pub name: String,
    /// Field label (omitted when empty).
    pub label: String,
    /// The parameter type.
    pub kind: ParamKind,
    /// Current value in the parameter's lexical form, when known.
    pub value: Option<String>,
    /// Lower bound in the parameter's lexical form (numbers, dates, times, durations).
    pub min: Option<String>,
    /// Upper bound in the parameter's lexical form.
    pub max: Option<String>,
    /// Allowed values of an `Enum` parameter (ignored for other kinds).
    pub options: Vec<FormOption>,
    /// Longer description (`<desc/>`).
    pub desc: Option<String>,
}

impl FormParam {
    /// A parameter with no value, bounds, options or description.
    pub fn new(name: impl Into<String>, label: impl Into<String>, kind: ParamKind) -> FormParam {
        FormParam {
            name: name.into(),
            label: label.into(),
            kind,
            value: None,
            min: None,
            max: None,
            options: vec![],
            desc: None,
        }
    }

    fn to_field(&self) -> Field {
        let (type_, options) = match self.kind {
            ParamKind::Bool => (FieldType::Boolean, vec![]),
            ParamKind::Enum => (
                FieldType::ListSingle,
                self.options
                    .iter()
                    .map(|o| Option_ {
                        label: o.label.clone(),
                        value: o.value.clone(),
                    })
                    .collect(),
            ),
            _ => (FieldType::TextSingle, vec![]),
        };
        let method =
            (self.kind.ranged() && (self.min.is_some() || self.max.is_some())).then(|| {
                Method::Range {
                    min: self.min.clone(),
                    max: self.max.clone(),
                }
            });
        Field {
            var: Some(self.name.clone()),
            type_,
            label: (!self.label.is_empty()).then(|| self.label.clone()),
            required: false,
            desc: self.desc.clone(),
            options,
            values: self.value.iter().cloned().collect(),
            media: vec![],
            validate: self.kind.datatype().map(|datatype| Validate {
                datatype: Some(datatype),
                method,
                list_range: None,
            }),
        }
    }
}

/// The control form returned for `<getForm/>`: a `jabber:x:data` form of type `form` with
/// one field per writable parameter, in the order they should be written back. Booleans are
/// `boolean` fields, enums `list-single` with options, everything else `text-single` with a
/// XEP-0122 `<validate/>` datatype (`xs:int`, `xs:long`, `xs:double`, `xs:string`,
/// `xs:date`, `xs:time`, `xs:dateTime`, `xs:duration`, XEP-0331 `xdc:color`) and a
/// `<range/>` when bounds are given. As an element every field also carries the XEP-0336
/// `<notSame/>` XEP-0325 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlForm {
    /// Form title (the device name).
    pub title: Option<String>,
    /// The writable parameters, in write order.
    pub params: Vec<FormParam>,
}

impl ControlForm {
    /// The form as an xmpp-parsers data form (without the `<notSame/>` markers, which it
    /// cannot hold).
    pub fn to_data_form(&self) -> DataForm {
        DataForm {
            type_: DataFormType::Form,
            title: self.title.clone(),
            instructions: None,
            fields: self.params.iter().map(FormParam::to_field).collect(),
        }
    }
}

impl From<ControlForm> for Element {
    fn from(form: ControlForm) -> Element {
        let mut el = Element::from(form.to_data_form());
        for field in el.children_mut().filter(|c| c.is("field", DATA_FORMS)) {
            // xmpp-parsers leaves out the default type; the XEP-0325 examples spell it.
            if field.attr("type").is_none() {
                field.set_attr(
                    rxml::Namespace::NONE,
                    rxml::xml_ncname!("type").to_owned(),
                    "text-single",
                );
            }
            field.append_child(Element::builder("notSame", NS_XDATA_DYNAMIC).build());
        }
        el
    }
}

impl TryFrom<&Element> for ControlForm {
    type Error = ParseError;

    /// Reads a control form back (hidden and fixed fields are skipped). Parsed by hand
    /// because xmpp-parsers refuses the `xs:duration` datatype.
    fn try_from(el: &Element) -> Result<ControlForm, ParseError> {
        check_element(el, "x", DATA_FORMS)?;
        let text_of = |e: &Element, name: &str| e.get_child(name, DATA_FORMS).map(Element::text);
        let mut params = vec![];
        for field in el.children().filter(|c| c.is("field", DATA_FORMS)) {
            let type_ = field.attr("type").unwrap_or("text-single");
            if matches!(type_, "hidden" | "fixed") {
                continue;
            }
            let name = required(field, "field", "var")?;
            let validate = field.get_child("validate", XDATA_VALIDATE);
            let datatype = validate.and_then(|v| v.attr("datatype"));
            let kind = ParamKind::from_form(type_, datatype).ok_or_else(|| {
                ParseError::InvalidAttribute {
                    element: "validate",
                    attribute: "datatype",
                    value: datatype.unwrap_or_default().to_owned(),
                    reason: ValueError::Datatype,
                }
            })?;
            // Bounds and options only where the builder writes them (found by fuzzing: a
            // text field's range or options were read, then lost when written back).
            let range = validate
                .and_then(|v| v.get_child("range", XDATA_VALIDATE))
                .filter(|_| kind.ranged());
            params.push(FormParam {
                name: name.to_owned(),
                label: optional(field, "label").unwrap_or_default(),
                kind,
                value: text_of(field, "value"),
                min: range.and_then(|r| optional(r, "min")),
                max: range.and_then(|r| optional(r, "max")),
                options: field
                    .children()
                    .filter(|c| kind == ParamKind::Enum && c.is("option", DATA_FORMS))
                    .map(|o| {
                        FormOption::new(
                            text_of(o, "value").unwrap_or_default(),
                            optional(o, "label"),
                        )
                    })
                    .collect(),
                desc: text_of(field, "desc"),
            });
        }
        Ok(ControlForm {
            title: text_of(el, "title"),
            params,
        })
    }
}

try_from_owned!(Set, SetResponse, ParamError, GetForm, ControlForm);

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn set(xml: &str) -> Result<Set, ParseError> {
        Set::try_from(el(xml))
    }

    fn p(name: &str, value: ParameterValue) -> Parameter {
        Parameter::new(name, value)
    }

    #[test]
    fn spec_single_parameter_examples() {
        let cases = [
            (
                "<boolean name='Output' value='true'/>",
                p("Output", ParameterValue::Boolean(true)),
            ),
            (
                "<int name='Output' value='50000'/>",
                p("Output", ParameterValue::Int(50_000)),
            ),
            (
                "<long name='Output' value='500000000000000'/>",
                p("Output", ParameterValue::Long(500_000_000_000_000)),
            ),
            (
                "<string name='Row1' value='Temperature: 21.4 °C'/>",
                p(
                    "Row1",
                    ParameterValue::String("Temperature: 21.4 °C".into()),
                ),
            ),
            (
                "<double name='4-20mA' value='8.192'/>",
                p("4-20mA", ParameterValue::Double(8.192)),
            ),
            (
                "<date name='TariffStartDate' value='2013-05-01'/>",
                p(
                    "TariffStartDate",
                    ParameterValue::Date("2013-05-01".parse().unwrap()),
                ),
            ),
            (
                "<time name='Alarm Time' value='08:00:00'/>",
                p(
                    "Alarm Time",
                    ParameterValue::Time("08:00:00".parse().unwrap()),
                ),
            ),
            (
                "<dateTime name='Alarm Time' value='2013-04-02T08:00:00'/>",
                p(
                    "Alarm Time",
                    ParameterValue::DateTime("2013-04-02T08:00:00".parse().unwrap()),
                ),
            ),
            (
                "<duration name='Alarm Duration' value='PT3M30S'/>",
                p(
                    "Alarm Duration",
                    ParameterValue::Duration(Duration::from_secs(210)),
                ),
            ),
            (
                "<color name='Color' value='3399FF'/>",
                p(
                    "Color",
                    ParameterValue::Color(Color {
                        red: 0x33,
                        green: 0x99,
                        blue: 0xFF,
                        alpha: None,
                    }),
                ),
            ),
        ];
        for (param, expected) in cases {
            let xml = format!("<set xmlns='urn:xmpp:iot:control'>{param}</set>");
            let parsed = set(&xml).unwrap();
            assert_eq!(parsed, Set::new(vec![expected]), "{param}");
            // Written back identically.
            assert_eq!(Element::from(parsed), el(&xml), "{param}");
        }
    }

    #[test]
    fn parameters_keep_document_order_and_nodes() {
        // §3.2.11 multiple parameters; order matters for the device.
        let s = set("<set xmlns='urn:xmpp:iot:control' xml:lang='en'>
                <int name='FadeTimeMilliseconds' value='500'/>
                <int name='OutputPercent' value='10'/>
            </set>")
        .unwrap();
        let names: Vec<_> = s.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["FadeTimeMilliseconds", "OutputPercent"]);

        // §3.4.2 several nodes behind a concentrator, plus tokens; round trip.
        let xml = "<set xmlns='urn:xmpp:iot:control' serviceToken='st' userToken='ut'>\
                   <node nodeId='DigitalOutput1'/><node nodeId='DigitalOutput2' sourceId='MeteringTopology'/>\
                   <boolean name='Output' value='false'/><color name='C' value='3399FF80'/>\
                   <int name='Z' value='-1'/></set>";
        let s = set(xml).unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.tokens.service_token.as_deref(), Some("st"));
        assert_eq!(s.params[1].value.to_text(), "3399FF80");
        assert_eq!(Element::from(s.clone()), el(xml));

        let built = Set {
            nodes: vec![NodeRef::new("n")],
            ..Set::new(vec![
                p("A", ParameterValue::Double(-0.25)),
                p("B", ParameterValue::Duration(Duration::from_millis(1500))),
                p("C", ParameterValue::DateTime(XsDateTime::now())),
                p("D", ParameterValue::Long(i64::MIN)),
            ])
        };
        assert_eq!(Set::try_from(Element::from(built.clone())).unwrap(), built);
    }

    #[test]
    fn invalid_sets_are_refused_precisely() {
        let one = |param: &str| set(&format!("<set xmlns='urn:xmpp:iot:control'>{param}</set>"));
        assert_eq!(
            one("<float name='x' value='1'/>").unwrap_err(),
            ParseError::UnknownParameterType("float".into())
        );
        assert_eq!(
            one("<int value='1'/>").unwrap_err(),
            ParseError::MissingAttribute {
                element: "int",
                attribute: "name"
            }
        );
        assert_eq!(
            one("<int name='x'/>").unwrap_err(),
            ParseError::MissingAttribute {
                element: "int",
                attribute: "value"
            }
        );
        assert_eq!(
            one("<int name='x' value='50000000000'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "int",
                attribute: "value",
                value: "50000000000".into(),
                reason: ValueError::Int
            }
        );
        assert_eq!(
            one("<boolean name='Output' value='yes'/>").unwrap_err().to_string(),
            "<boolean/> has an invalid value='yes': expected xs:boolean: 'true', 'false', '1' or '0'"
        );
        for bad in ["abc", "1,5", ""] {
            assert!(matches!(
                one(&format!("<double name='x' value='{bad}'/>")).unwrap_err(),
                ParseError::InvalidAttribute {
                    reason: ValueError::Double,
                    ..
                }
            ));
        }
        for bad in ["NaN", "INF", "-INF"] {
            assert!(matches!(
                one(&format!("<double name='x' value='{bad}'/>")).unwrap_err(),
                ParseError::InvalidAttribute {
                    reason: ValueError::NotFinite,
                    ..
                }
            ));
        }
        for bad in [
            "GG99FF",
            "3399F",
            "3399FF8",
            "#3399FF",
            "3399FF80FF",
            "３３99FF",
        ] {
            assert_eq!(
                one(&format!("<color name='c' value='{bad}'/>")).unwrap_err(),
                ParseError::InvalidAttribute {
                    element: "color",
                    attribute: "value",
                    value: bad.into(),
                    reason: ValueError::Color
                },
                "{bad}"
            );
        }
        assert!(matches!(
            one("<date name='d' value='2013-02-29'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "date",
                reason: ValueError::Date("that day does not exist in that month"),
                ..
            }
        ));
        assert!(matches!(
            one("<duration name='d' value='P1Y'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "duration",
                reason: ValueError::Duration(_),
                ..
            }
        ));
        assert_eq!(
            one("<node/>").unwrap_err(),
            ParseError::MissingAttribute {
                element: "node",
                attribute: "nodeId"
            }
        );
        assert!(matches!(
            set("<set xmlns='urn:xmpp:iot:sensordata'/>").unwrap_err(),
            ParseError::WrongElement {
                expected: "set",
                ..
            }
        ));
    }

    #[test]
    fn form_variant_of_set() {
        // §3.3.3, with the hidden session field.
        let s = set("<set xmlns='urn:xmpp:iot:control' xml:lang='en'>
                <node nodeId='DigitalOutput1'/>
                <x type='submit' xmlns='jabber:x:data'>
                  <field var='xdd session' type='hidden'>
                    <value>325ED0F3-9A9A-45A4-9634-4E0D41C5EA06</value>
                  </field>
                  <field var='FadeTimeMilliseconds' type='text-single'><value>500</value></field>
                  <field var='OutputPercent'><value>10</value></field>
                  <field var='Empty'/>
                </x>
              </set>")
        .unwrap();
        assert!(s.params.is_empty());
        assert_eq!(s.nodes, vec![NodeRef::new("DigitalOutput1")]);
        assert_eq!(
            s.form_values(),
            vec![
                ("FadeTimeMilliseconds".to_owned(), "500".to_owned()),
                ("OutputPercent".to_owned(), "10".to_owned()),
                ("Empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(
            ParameterValue::parse(ParamKind::Int, "500"),
            Ok(ParameterValue::Int(500))
        );
        assert_eq!(
            ParameterValue::parse(ParamKind::Bool, "1"),
            Ok(ParameterValue::Boolean(true))
        );
        assert_eq!(
            ParameterValue::parse(ParamKind::Int, "fast"),
            Err(ValueError::Int)
        );
        // Build → parse gives the same struct.
        assert_eq!(Set::try_from(Element::from(s.clone())).unwrap(), s);

        assert_eq!(
            set("<set xmlns='urn:xmpp:iot:control'><x xmlns='jabber:x:data' type='form'/></set>")
                .unwrap_err(),
            ParseError::InvalidForm(
                "the form in <set/> must be type='submit', not type='form'".into()
            )
        );
        assert_eq!(
            set(
                "<set xmlns='urn:xmpp:iot:control'><x xmlns='jabber:x:data' type='submit'/>\
                 <x xmlns='jabber:x:data' type='submit'/></set>"
            )
            .unwrap_err(),
            ParseError::DuplicateChild {
                parent: "set",
                child: "x"
            }
        );
        assert!(matches!(
            set("<set xmlns='urn:xmpp:iot:control'><x xmlns='jabber:x:data'/></set>").unwrap_err(),
            ParseError::InvalidForm(_)
        ));
        assert!(matches!(
            set(
                "<set xmlns='urn:xmpp:iot:control'><x xmlns='jabber:x:data' type='submit'>\
                 <field type='text-single'><value>1</value></field></x></set>"
            )
            .unwrap_err(),
            ParseError::InvalidForm(_)
        ));
    }

    #[test]
    fn set_responses_and_param_errors() {
        assert_eq!(
            SetResponse::try_from(el("<setResponse xmlns='urn:xmpp:iot:control' />")).unwrap(),
            SetResponse {
                response_code: None,
                nodes: vec![],
                params: vec![]
            }
        );
        assert_eq!(
            Element::from(SetResponse::ok()),
            el("<setResponse xmlns='urn:xmpp:iot:control' responseCode='OK'/>")
        );
        let xml = "<setResponse xmlns='urn:xmpp:iot:control' responseCode='NotFound'>\
                   <node nodeId='n1'/><parameter name='Output'/></setResponse>";
        let r = SetResponse::try_from(el(xml)).unwrap();
        assert_eq!(r.response_code, Some(ResponseCode::NotFound));
        assert_eq!(r.params, vec!["Output".to_owned()]);
        assert_eq!(Element::from(r), el(xml));
        let odd = SetResponse::try_from(el(
            "<setResponse xmlns='urn:xmpp:iot:control' responseCode='Busy'/>",
        ))
        .unwrap();
        assert_eq!(odd.response_code, Some(ResponseCode::Other("Busy".into())));
        assert_eq!(
            SetResponse::try_from(el(
                "<setResponse xmlns='urn:xmpp:iot:control'><parameter/></setResponse>"
            ))
            .unwrap_err(),
            ParseError::MissingAttribute {
                element: "parameter",
                attribute: "name"
            }
        );
        assert!(matches!(
            SetResponse::try_from(el(
                "<setResponse xmlns='urn:xmpp:iot:control'><boolean name='x' value='1'/></setResponse>"
            )),
            Err(ParseError::UnexpectedChild { .. })
        ));

        // The spec's examples close <paramError> with </error>; this is the well-formed form.
        let xml = "<paramError xmlns='urn:xmpp:iot:control' var='OutputPercent'>Invalid parameter value.</paramError>";
        let pe = ParamError::try_from(el(xml)).unwrap();
        assert_eq!(
            pe,
            ParamError::new("OutputPercent", "Invalid parameter value.")
        );
        assert_eq!(Element::from(pe), el(xml));
        assert_eq!(
            ParamError::try_from(el(
                "<paramError xmlns='urn:xmpp:iot:control'>x</paramError>"
            ))
            .unwrap_err(),
            ParseError::MissingAttribute {
                element: "paramError",
                attribute: "var"
            }
        );
        // It fits in a StanzaError as the application-specific condition.
        let mut err = xmpp_parsers::stanza_error::StanzaError::new(
            xmpp_parsers::stanza_error::ErrorType::Modify,
            xmpp_parsers::stanza_error::DefinedCondition::BadRequest,
            "en",
            "out of range",
        );
        err.other = Some(ParamError::new("X", "too big").into());
        let err_el = Element::from(err);
        assert!(err_el.has_child("paramError", NS));
    }

    #[test]
    fn get_form_requests() {
        let g =
            GetForm::try_from(el("<getForm xmlns='urn:xmpp:iot:control' xml:lang='en'/>")).unwrap();
        assert_eq!(g, GetForm::default());
        let xml = "<getForm xmlns='urn:xmpp:iot:control' deviceToken='d'>\
                   <node nodeId='DigitalOutput1'/><node nodeId='DigitalOutput2'/></getForm>";
        let g = GetForm::try_from(el(xml)).unwrap();
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(Element::from(g), el(xml));
        assert!(matches!(
            GetForm::try_from(el(
                "<getForm xmlns='urn:xmpp:iot:control'><field name='x'/></getForm>"
            )),
            Err(ParseError::UnexpectedChild { .. })
        ));
    }

    fn dimmer() -> ControlForm {
        ControlForm {
            title: Some("Dimmer".into()),
            params: vec![
                FormParam {
                    value: Some("300".into()),
                    min: Some("0".into()),
                    max: Some("4095".into()),
                    desc: Some("Time in milliseconds used to fade the light.".into()),
                    ..FormParam::new("FadeTimeMilliseconds", "Fade Time (ms):", ParamKind::Int)
                },
                FormParam {
                    value: Some("true".into()),
                    ..FormParam::new("MainSwitch", "Main switch", ParamKind::Bool)
                },
                FormParam {
                    value: Some("0".into()),
                    min: Some("-180".into()),
                    max: Some("180".into()),
                    ..FormParam::new("HorizontalAngle", "Horizontal angle:", ParamKind::Double)
                },
                FormParam {
                    value: Some("Auto".into()),
                    options: vec![
                        "Auto".into(),
                        FormOption::new("Off", Some("Switched off".into())),
                    ],
                    ..FormParam::new("Mode", "Mode", ParamKind::Enum)
                },
                FormParam {
                    min: Some("PT1S".into()),
                    ..FormParam::new("Hold", "", ParamKind::Duration)
                },
                FormParam::new("Colour", "Colour", ParamKind::Color),
                FormParam::new("Text", "Display text", ParamKind::String),
            ],
        }
    }

    #[test]
    fn control_form_matches_xep_0325_and_0122() {
        let form = Element::from(dimmer());
        let expected = el("<x xmlns='jabber:x:data' type='form'><title>Dimmer</title>\
            <field var='FadeTimeMilliseconds' type='text-single' label='Fade Time (ms):'>\
              <desc>Time in milliseconds used to fade the light.</desc><value>300</value>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:int'>\
                <range min='0' max='4095'/></validate>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='MainSwitch' type='boolean' label='Main switch'><value>true</value>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='HorizontalAngle' type='text-single' label='Horizontal angle:'><value>0</value>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:double'>\
                <range min='-180' max='180'/></validate>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='Mode' type='list-single' label='Mode'>\
              <option><value>Auto</value></option><option label='Switched off'><value>Off</value></option>\
              <value>Auto</value>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'/>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='Hold' type='text-single'>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:duration'>\
                <range min='PT1S'/></validate>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='Colour' type='text-single' label='Colour'>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xdc:color'/>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            <field var='Text' type='text-single' label='Display text'>\
              <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'/>\
              <notSame xmlns='urn:xmpp:xdata:dynamic'/></field>\
            </x>");
        assert_eq!(form, expected, "\n{}\n", String::from(&form));
        // Read back into the same input.
        assert_eq!(ControlForm::try_from(&form).unwrap(), dimmer());
        // xmpp-parsers itself reads the form when no xs:duration is in it.
        let mut no_duration = dimmer();
        no_duration.params.retain(|p| p.kind != ParamKind::Duration);
        let df = DataForm::try_from(Element::from(no_duration.clone())).unwrap();
        assert_eq!(df, no_duration.to_data_form());
        assert_eq!(df.fields[3].options.len(), 2);
    }

    #[test]
    fn control_forms_read_back_or_say_why_not() {
        // The spec's §3.5 example (its malformed prefix declarations and xdl page removed).
        let f = ControlForm::try_from(el("<x type='form' xmlns='jabber:x:data'
                xmlns:xdv='http://jabber.org/protocol/xdata-validate'
                xmlns:xdd='urn:xmpp:xdata:dynamic'>
              <title>Spotlight</title>
              <field var='xdd session' type='hidden'><value>325ED0F3</value></field>
              <field var='ElevationAngle' type='text-single' label='Elevation angle:'>
                <desc>Elevation angle of the spotlight.</desc>
                <value>0</value>
                <xdv:validate datatype='xs:double'><xdv:range min='-90' max='90'/></xdv:validate>
                <xdd:notSame/>
                <parameterGroup xmlns='urn:xmpp:iot:control' name='direction'/>
              </field>
            </x>"))
        .unwrap();
        assert_eq!(f.title.as_deref(), Some("Spotlight"));
        assert_eq!(
            f.params,
            vec![FormParam {
                value: Some("0".into()),
                min: Some("-90".into()),
                max: Some("90".into()),
                desc: Some("Elevation angle of the spotlight.".into()),
                ..FormParam::new("ElevationAngle", "Elevation angle:", ParamKind::Double)
            }]
        );
        assert_eq!(
            ControlForm::try_from(el("<x xmlns='jabber:x:data' type='form'><field var='g'>\
                 <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='geo:lat'/>\
                 </field></x>"))
            .unwrap_err(),
            ParseError::InvalidAttribute {
                element: "validate",
                attribute: "datatype",
                value: "geo:lat".into(),
                reason: ValueError::Datatype
            }
        );
        assert_eq!(
            ControlForm::try_from(el(
                "<x xmlns='jabber:x:data' type='form'><field type='text-single'/></x>"
            ))
            .unwrap_err(),
            ParseError::MissingAttribute {
                element: "field",
                attribute: "var"
            }
        );
    }

    #[test]
    fn bounds_and_options_only_where_the_kind_has_them() {
        // Found by fuzzing: a text field's range or options were read, then lost when
        // written back.
        let f = ControlForm::try_from(el("<x xmlns='jabber:x:data' type='form'>\
             <field var='m' type='list-single'><option label='A'><value>a</value></option></field>\
             <field var='t' type='text-multi'><option><value>b</value></option></field></x>"))
        .unwrap();
        assert_eq!(
            f.params[0].options,
            vec![FormOption::new("a", Some("A".into()))]
        );
        assert_eq!(f.params[1].kind, ParamKind::String);
        assert!(f.params[1].options.is_empty());
        let f = ControlForm::try_from(el("<x xmlns='jabber:x:data' type='form'><field var='s'>\
             <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'>\
             <range min='0' max='10'/></validate></field></x>"))
        .unwrap();
        assert_eq!((&f.params[0].min, &f.params[0].max), (&None, &None));
        assert_eq!(ControlForm::try_from(Element::from(f.clone())).unwrap(), f);
    }

    #[test]
    fn colours() {
        let c: Color = "3399ff80".parse().unwrap();
        assert_eq!(c.alpha, Some(0x80));
        assert_eq!(c.to_string(), "3399FF80");
        assert_eq!("000000".parse::<Color>().unwrap().to_string(), "000000");
    }

    #[test]
    fn malformed_elements_never_panic() {
        let docs = [
            "<set xmlns='urn:xmpp:iot:control'><color name='c' value='é9FF00'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><duration name='d' value='PT99999999999999999999S'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><time name='t' value='08:00:00+99:00'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><dateTime name='t' value='2013-04-02T08:00:00.'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><long name='l' value='+'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><double name='d' value='1e'/></set>",
            "<set xmlns='urn:xmpp:iot:control'><x xmlns='jabber:x:data' type='bogus'/></set>",
            "<setResponse xmlns='urn:xmpp:iot:control'><node/></setResponse>",
            "<getForm xmlns='urn:xmpp:iot:control'><node sourceId='s'/></getForm>",
            "<paramError xmlns='urn:xmpp:iot:events' var='x'/>",
            "<x xmlns='jabber:x:data' type='form'><field var='a'><validate xmlns='http://jabber.org/protocol/xdata-validate' datatype=''/></field></x>",
        ];
        for xml in docs {
            let e = el(xml);
            let results = [
                Set::try_from(&e).is_err(),
                SetResponse::try_from(&e).is_err(),
                GetForm::try_from(&e).is_err(),
                ParamError::try_from(&e).is_err(),
                ControlForm::try_from(&e).is_err(),
            ];
            assert!(results.iter().all(|&failed| failed), "{xml}");
        }
    }
}
