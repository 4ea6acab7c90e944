//! The TOML configuration: schema, defaults, and validation with file, line and column
//! in every error.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_api::{DeviceId, FieldSpec, FieldType, HumanDuration};
use fieldgate_modbus::{ModbusConnection, ModbusDevice, ModbusField, Point};
use fieldgate_sim::{SimAdapter, SimDevice, SimField};
use serde::Deserialize;
use toml::Spanned;
use xmpp_parsers::jid::BareJid;

use crate::access::{Entry, Lists};

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or breaks a rule.
    #[error("{}", .0)]
    Invalid(Box<Located>),
}

/// An error at a place in the configuration file.
#[derive(Debug)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// The key concerned (`device[2].id`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The offending source line, for context.
    pub source_line: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl ConfigError {
    /// The offending source line with a caret under the column, for terminals; log lines
    /// keep to the one-line `Display`.
    pub fn snippet(&self) -> Option<String> {
        match self {
            ConfigError::Invalid(l) if !l.source_line.is_empty() => {
                let pad = " ".repeat(l.column.saturating_sub(1));
                Some(format!("    {}\n    {pad}^", l.source_line))
            }
            _ => None,
        }
    }
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (SIGHUP re-reads it).
    pub path: PathBuf,
    /// The component link.
    pub xmpp: XmppConfig,
    /// Gateway-wide access lists.
    pub access: Lists,
    /// Directory of persistent state.
    pub state_dir: PathBuf,
    /// Sensor-data readouts.
    pub readout: ReadoutConfig,
    /// Change-event subscriptions.
    pub events: EventsConfig,
    /// The devices, in file order.
    pub devices: Vec<DeviceConfig>,
}

/// `[xmpp]`: how to reach the server and who we are there.
#[derive(Clone, PartialEq)]
pub struct XmppConfig {
    /// `host:port` of the server's component port.
    pub server: String,
    /// The component domain; devices are `<id>@<domain>`.
    pub domain: String,
    /// The shared component secret, resolved from whichever source was configured.
    pub secret: String,
    /// Interval of keep-alive pings.
    pub keepalive: Duration,
    /// Where keep-alive pings go.
    pub ping_target: String,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Cap of the reconnect back-off.
    pub reconnect_max: Duration,
    /// Resource of device full JIDs.
    pub resource: String,
    /// Bound on every stanza the gateway sends, in bytes: readouts and events are split
    /// into several messages below it, anything else above it is replaced by an error.
    pub max_outbound_stanza_size: usize,
    /// Bound on every stanza the gateway accepts, in bytes.
    pub max_inbound_stanza_size: usize,
    /// Bound on how deep elements may nest below an accepted stanza.
    pub max_inbound_depth: usize,
}

impl fmt::Debug for XmppConfig {
    // The secret must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmppConfig")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("secret", &"<redacted>")
            .field("keepalive", &self.keepalive)
            .field("ping_target", &self.ping_target)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("resource", &self.resource)
            .field("max_outbound_stanza_size", &self.max_outbound_stanza_size)
            .field("max_inbound_stanza_size", &self.max_inbound_stanza_size)
            .field("max_inbound_depth", &self.max_inbound_depth)
            .finish()
    }
}

/// `[readout]`: XEP-0323 readouts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutConfig {
    /// A momentary value younger than this is served from the last reading instead of
    /// asking the device again (per-device `max_age` overrides it).
    pub max_age: Duration,
    /// How long a readout waits for the device before reporting the fields as failed.
    pub timeout: Duration,
    /// Readouts one requester (full JID) may have running at once.
    pub max_per_requester: usize,
    /// Parameters one control `set` may carry.
    pub max_set_params: usize,
}

/// `[events]`: change-event subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// Subscriptions one requester (full JID) may hold at once.
    pub max_per_requester: usize,
    /// How often a device with subscriptions is sampled when the subscription asks for
    /// no `minInterval` (and the lower bound of any `minInterval`).
    pub sample_interval: Duration,
}

/// One `[[device]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// JID localpart.
    pub id: DeviceId,
    /// Human name.
    pub name: String,
    /// Optional identity: model.
    pub model: Option<String>,
    /// Optional identity: serial number.
    pub serial: Option<String>,
    /// Optional identity: vendor.
    pub vendor: Option<String>,
    /// Per-device access overrides.
    pub access: Lists,
    /// Per-device override of `[readout].max_age`.
    pub max_age: Option<Duration>,
    /// The adapter and its device-level options.
    pub adapter: AdapterConfig,
    /// The field catalogue, shared (not copied) with the running device.
    pub fields: Arc<[FieldSpec]>,
}

/// The adapter behind a device, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterConfig {
    /// A simulated device.
    Sim(Box<SimSetup>),
    /// A Modbus unit.
    Modbus(Box<ModbusSetup>),
}

/// A simulated device: its options and a generator per field (in field order).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSetup {
    /// `[device.sim]`.
    pub device: SimDevice,
    /// Each field's `sim = { ... }`, if any.
    pub generators: Vec<Option<SimField>>,
}

/// A Modbus device, resolved: its connection, its own section, and a decoder per field.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusSetup {
    /// The connection it is reached through (a copy: a changed connection changes the
    /// device, so a reload restarts it).
    pub connection: ModbusConnection,
    /// `[device.modbus]`.
    pub device: ModbusDevice,
    /// (field name, decoder) in field order, shared with the running adapter (the names
    /// are those its readings carry).
    pub points: Arc<[(Arc<str>, Point)]>,
}

impl AdapterConfig {
    /// The name as written in `adapter = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            AdapterConfig::Sim(_) => "sim",
            AdapterConfig::Modbus(_) => "modbus",
        }
    }
}

/// One `[[device.field]]` during validation: the catalogue entry and its sim generator.
#[derive(Debug, Clone, PartialEq)]
struct FieldConfig {
    spec: FieldSpec,
    sim: Option<SimField>,
    /// The `[[device.field]]` it comes from, and which repetition of it.
    origin: usize,
    copy: u32,
}

/// Range of the stanza size bounds, in bytes: below 4 KiB a JID-addressed error reply
/// might not fit; above 16 MiB no server forwards a stanza.
const MIN_STANZA_SIZE: i64 = 4096;
const MAX_STANZA_SIZE: i64 = 16 * 1024 * 1024;

// ---- raw schema, as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    xmpp: Spanned<RawXmpp>,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    readout: RawReadout,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    modbus: RawModbus,
    #[serde(default, rename = "device")]
    devices: Vec<Spanned<RawDevice>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXmpp {
    server: Spanned<String>,
    domain: Spanned<String>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<PathBuf>>,
    secret_env: Option<Spanned<String>>,
    keepalive: Option<Spanned<HumanDuration>>,
    ping_target: Option<Spanned<String>>,
    reconnect_min: Option<Spanned<HumanDuration>>,
    reconnect_max: Option<Spanned<HumanDuration>>,
    resource: Option<Spanned<String>>,
    max_outbound_stanza_size: Option<Spanned<i64>>,
    max_inbound_stanza_size: Option<Spanned<i64>>,
    max_inbound_depth: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    subscribe: Option<Vec<Spanned<String>>>,
    read: Option<Vec<Spanned<String>>>,
    control: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReadout {
    max_age: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    max_per_requester: Option<Spanned<i64>>,
    max_set_params: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    max_per_requester: Option<Spanned<i64>>,
    sample_interval: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    #[serde(default)]
    connection: Vec<Spanned<ModbusConnection>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAdapter {
    Sim,
    Modbus,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: Spanned<String>,
    name: Option<String>,
    adapter: Spanned<RawAdapter>,
    model: Option<String>,
    serial: Option<String>,
    vendor: Option<String>,
    #[serde(default)]
    access: RawAccess,
    max_age: Option<Spanned<HumanDuration>>,
    sim: Option<Spanned<SimDevice>>,
    modbus: Option<Spanned<ModbusDevice>>,
    #[serde(default, rename = "field")]
    fields: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: FieldType,
    unit: Option<String>,
    decimals: Option<Spanned<u8>>,
    #[serde(default)]
    writable: bool,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    values: Vec<String>,
    sim: Option<SimField>,
    modbus: Option<Spanned<ModbusField>>,
    /// Repeat the field this many times; `{n}` in the name becomes 0, 1, 2, ...
    count: Option<Spanned<u32>>,
    /// Modbus: address step between repetitions (default: the registers one takes).
    stride: Option<Spanned<u32>>,
}

/// Most repetitions one `count` may ask for.
const MAX_COUNT: u32 = 65_536;

// ---- loading ----------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Validates configuration text; `path` is used in messages and to resolve `secret_file`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.error(
            span.clone(),
            key_at(text, &span),
            e.message().trim_end().to_owned(),
        )
    })?;
    ctx.validate(raw)
}

/// The source span of the value at a dotted key path (`device[2].modbus.connection`), if
/// the path is written in the file.
fn span_of(text: &str, path: &str) -> Option<Range<usize>> {
    use toml_edit::{Item, Table, Value};

    enum Node<'a> {
        Table(&'a Table),
        Value(&'a Value),
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, Some(rest.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (seg, None),
        };
        node = match (node, index) {
            (Node::Table(t), _) => match (t.get(name)?, index) {
                (Item::Table(sub), None) => Node::Table(sub),
                (Item::ArrayOfTables(a), Some(i)) => Node::Table(a.get(i)?),
                (Item::Value(Value::Array(a)), Some(i)) => Node::Value(a.get(i)?),
                (Item::Value(v), None) => Node::Value(v),
                _ => return None,
            },
            (Node::Value(Value::InlineTable(t)), _) => match (t.get(name)?, index) {
                (Value::Array(a), Some(i)) => Node::Value(a.get(i)?),
                (v, None) => Node::Value(v),
                _ => return None,
            },
            (Node::Value(_), _) => return None,
        };
    }
    match node {
        Node::Table(t) => t.span(),
        Node::Value(v) => v.span(),
    }
}

/// The dotted key path (`device[2].field[0].type`) of the innermost key or value whose
/// source covers `span`; `None` when the text is not TOML at all (a syntax error).
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    use toml_edit::{Item, Table, Value};

    let covers = |s: Option<Range<usize>>| {
        s.is_some_and(|s| s.start <= span.start && (span.start < s.end || s == *span))
    };
    fn value(v: &Value, path: String, at: &dyn Fn(Option<Range<usize>>) -> bool) -> Option<String> {
        match v {
            Value::InlineTable(t) => t.iter().find_map(|(k, v)| {
                let key = t.key(k).and_then(|k| k.span());
                let p = format!("{path}.{k}");
                value(v, p.clone(), at).or_else(|| (at(key) || at(v.span())).then_some(p))
            }),
            Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                let p = format!("{path}[{i}]");
                value(v, p.clone(), at).or_else(|| at(v.span()).then_some(p))
            }),
            _ => None,
        }
    }
    fn table(t: &Table, prefix: &str, at: &dyn Fn(Option<Range<usize>>) -> bool) -> Option<String> {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        let inner = t.iter().find_map(|(k, item)| {
            let p = join(k);
            let key = t.key(k).and_then(|k| k.span());
            match item {
                Item::Table(sub) => {
                    table(sub, &p, at).or_else(|| (at(key) || at(sub.span())).then_some(p))
                }
                Item::ArrayOfTables(arr) => arr.iter().enumerate().find_map(|(i, sub)| {
                    let p = format!("{p}[{i}]");
                    table(sub, &p, at).or_else(|| at(sub.span()).then_some(p))
                }),
                Item::Value(v) => {
                    value(v, p.clone(), at).or_else(|| (at(key) || at(v.span())).then_some(p))
                }
                Item::None => None,
            }
        });
        inner
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    table(doc.as_table(), "", &covers)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn error(&self, span: Range<usize>, key: Option<String>, message: String) -> ConfigError {
        let at = span.start.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..at].chars().count() + 1;
        let source_line = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        ConfigError::Invalid(Box::new(Located {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message,
            source_line,
        }))
    }

    fn at<T>(&self, s: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        // Point at the key itself where it is written, unless the spanned value is
        // already inside it (one entry of a list is more precise than the list).
        let own = s.span();
        let span = match span_of(self.text, key) {
            Some(k) if !(own.start >= k.start && own.end <= k.end) => k,
            _ => own,
        };
        self.error(span, Some(key.to_owned()), message.into())
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let xmpp_span = raw.xmpp.span();
        let x = raw.xmpp.into_inner();

        let server = x.server.get_ref().trim();
        match server.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(self.at(
                    &x.server,
                    "xmpp.server",
                    format!("{server:?} is not host:port (e.g. \"127.0.0.1:5347\")"),
                ))
            }
        }
        let domain = match BareJid::new(x.domain.get_ref()) {
            Ok(j) if j.node().is_none() => j.domain().as_str().to_owned(),
            _ => {
                return Err(self.at(
                    &x.domain,
                    "xmpp.domain",
                    format!("{:?} is not a valid domain", x.domain.get_ref()),
                ))
            }
        };

        let secret = self.secret(&x, xmpp_span)?;

        let dur = |v: &Option<Spanned<HumanDuration>>,
                   key: &str,
                   default: Duration,
                   min: Duration,
                   max: Duration|
         -> Result<Duration, ConfigError> {
            let Some(s) = v else { return Ok(default) };
            let d = s.get_ref().0;
            if d < min || d > max {
                return Err(self.at(
                    s,
                    key,
                    format!(
                        "{} is out of range ({} to {})",
                        s.get_ref(),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(d)
        };
        let keepalive = dur(
            &x.keepalive,
            "xmpp.keepalive",
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        let reconnect_min = dur(
            &x.reconnect_min,
            "xmpp.reconnect_min",
            Duration::from_millis(250),
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        let reconnect_max = dur(
            &x.reconnect_max,
            "xmpp.reconnect_max",
            Duration::from_secs(3),
            reconnect_min,
            Duration::from_secs(600),
        )?;

        let ping_target = match &x.ping_target {
            Some(t) => match BareJid::new(t.get_ref()) {
                Ok(j) => j.to_string(),
                Err(e) => return Err(self.at(t, "xmpp.ping_target", format!("not a JID: {e}"))),
            },
            None => domain
                .split_once('.')
                .map(|(_, parent)| parent)
                .filter(|p| p.contains('.') || *p == "localhost")
                .unwrap_or(&domain)
                .to_owned(),
        };
        let resource = match &x.resource {
            Some(r) => {
                if BareJid::new(&domain)
                    .and_then(|b| b.with_resource_str(r.get_ref()))
                    .is_err()
                {
                    return Err(self.at(r, "xmpp.resource", "not a valid JID resource"));
                }
                r.get_ref().clone()
            }
            None => "gw".to_owned(),
        };
        let max_outbound_stanza_size = self.count(
            &x.max_outbound_stanza_size,
            "xmpp.max_outbound_stanza_size",
            64 * 1024,
            MIN_STANZA_SIZE..=MAX_STANZA_SIZE,
        )?;
        let max_inbound_stanza_size = self.count(
            &x.max_inbound_stanza_size,
            "xmpp.max_inbound_stanza_size",
            256 * 1024,
            MIN_STANZA_SIZE..=MAX_STANZA_SIZE,
        )?;
        // Past a few hundred levels, code that walks a tree recursively (minidom's
        // builder, `Drop`, serialiser) could exhaust a thread's stack.
        let max_inbound_depth =
            self.count(&x.max_inbound_depth, "xmpp.max_inbound_depth", 64, 8..=256)?;

        let access = self.lists(&raw.access, "access")?;
        let state_dir = raw
            .state
            .dir
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/fieldgate"));

        let readout = ReadoutConfig {
            max_age: dur(
                &raw.readout.max_age,
                "readout.max_age",
                Duration::from_secs(1),
                Duration::ZERO,
                Duration::from_secs(86_400),
            )?,
            timeout: dur(
                &raw.readout.timeout,
                "readout.timeout",
                Duration::from_secs(5),
                Duration::from_millis(10),
                Duration::from_secs(600),
            )?,
            max_per_requester: self.count(
                &raw.readout.max_per_requester,
                "readout.max_per_requester",
                64,
                1..=100_000,
            )?,
            max_set_params: self.count(
                &raw.readout.max_set_params,
                "readout.max_set_params",
                256,
                1..=100_000,
            )?,
        };
        let events = EventsConfig {
            max_per_requester: self.count(
                &raw.events.max_per_requester,
                "events.max_per_requester",
                16,
                1..=10_000,
            )?,
            sample_interval: dur(
                &raw.events.sample_interval,
                "events.sample_interval",
                Duration::from_secs(1),
                Duration::from_millis(50),
                Duration::from_secs(3600),
            )?,
        };

        let mut connections: Vec<&Spanned<ModbusConnection>> = Vec::new();
        for (i, c) in raw.modbus.connection.iter().enumerate() {
            let key = |k: &str| format!("modbus.connection[{i}].{k}");
            if let Err(e) = c.get_ref().validate() {
                return Err(self.at(c, &key(e.key()), e.to_string()));
            }
            if connections
                .iter()
                .any(|o| o.get_ref().name == c.get_ref().name)
            {
                return Err(self.at(
                    c,
                    &key("name"),
                    format!("duplicate connection name {:?}", c.get_ref().name),
                ));
            }
            connections.push(c);
        }

        let mut seen = HashSet::new();
        let mut devices = Vec::with_capacity(raw.devices.len());
        for (i, d) in raw.devices.into_iter().enumerate() {
            let span = d.span();
            let d = d.into_inner();
            let key = |k: &str| format!("device[{i}].{k}");
            let id = d.id.get_ref();
            match BareJid::new(&format!("{id}@{domain}")) {
                Ok(j) if j.node().map(|n| n.as_str()) == Some(id.as_str()) => {}
                Ok(j) => {
                    return Err(self.at(
                        &d.id,
                        &key("id"),
                        format!(
                            "{id:?} is not in normalised JID localpart form; write {:?}",
                            j.node().map(|n| n.as_str()).unwrap_or_default()
                        ),
                    ))
                }
                Err(e) => {
                    return Err(self.at(
                        &d.id,
                        &key("id"),
                        format!(
                            "{id:?} is not a valid JID localpart ({e}); use lowercase letters, \
                             digits, '-', '_' or '.'"
                        ),
                    ))
                }
            }
            if !seen.insert(id.clone()) {
                return Err(self.at(&d.id, &key("id"), format!("duplicate device id {id:?}")));
            }
            let fields = self.fields(&d, i)?;
            let adapter = match d.adapter.get_ref() {
                RawAdapter::Sim => {
                    if let Some(m) = &d.modbus {
                        return Err(self.at(m, &key("modbus"), "modbus options on a sim device"));
                    }
                    if let Some((j, f)) = d
                        .fields
                        .iter()
                        .enumerate()
                        .find_map(|(j, f)| f.get_ref().modbus.as_ref().map(|m| (j, m)))
                    {
                        return Err(self.at(
                            f,
                            &format!("device[{i}].field[{j}].modbus"),
                            "modbus options on a field of a sim device",
                        ));
                    }
                    let sim = d
                        .sim
                        .as_ref()
                        .map(|s| s.get_ref().clone())
                        .unwrap_or_default();
                    let pairs = fields
                        .iter()
                        .map(|f| (f.spec.clone(), f.sim.clone()))
                        .collect();
                    if let Err(e) = SimAdapter::new(id.as_str().into(), sim.clone(), pairs) {
                        let at = d.sim.as_ref().map_or(span.clone(), |s| s.span());
                        return Err(self.error(at, Some(key("sim")), e));
                    }
                    AdapterConfig::Sim(Box::new(SimSetup {
                        device: sim,
                        generators: fields.iter().map(|f| f.sim.clone()).collect(),
                    }))
                }
                RawAdapter::Modbus => {
                    self.modbus_device(&d, i, span.clone(), &connections, &fields)?
                }
            };
            let fields = match &adapter {
                // Enum labels come from the register's value map unless listed again.
                AdapterConfig::Modbus(m) => fields
                    .into_iter()
                    .zip(m.points.iter())
                    .map(|(mut f, (_, p))| {
                        let natural = p.field_spec(f.spec.name.clone());
                        if f.spec.values.is_empty() {
                            f.spec.values = natural.values;
                        }
                        // The register's own range bounds writes; min/max narrow it.
                        f.spec.min = f.spec.min.or(natural.min);
                        f.spec.max = f.spec.max.or(natural.max);
                        f
                    })
                    .collect(),
                AdapterConfig::Sim(_) => fields,
            };
            devices.push(DeviceConfig {
                id: id.as_str().into(),
                name: d.name.clone().unwrap_or_else(|| id.clone()),
                model: d.model.clone(),
                serial: d.serial.clone(),
                vendor: d.vendor.clone(),
                access: self.lists(&d.access, &key("access"))?,
                max_age: match &d.max_age {
                    Some(m) => Some(dur(
                        &Some(m.clone()),
                        &key("max_age"),
                        Duration::ZERO,
                        Duration::ZERO,
                        Duration::from_secs(86_400),
                    )?),
                    None => None,
                },
                adapter,
                fields: fields.into_iter().map(|f| f.spec).collect(),
            });
        }

        Ok(Config {
            path: self.path.to_owned(),
            xmpp: XmppConfig {
                server: server.to_owned(),
                domain,
                secret,
                keepalive,
                ping_target,
                reconnect_min,
                reconnect_max,
                resource,
                max_outbound_stanza_size,
                max_inbound_stanza_size,
                max_inbound_depth,
            },
            access,
            state_dir,
            readout,
            events,
            devices,
        })
    }

    fn count(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<usize, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        if !range.contains(s.get_ref()) {
            return Err(self.at(
                s,
                key,
                format!(
                    "{} is out of range ({} to {})",
                    s.get_ref(),
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(*s.get_ref() as usize)
    }

    fn modbus_device(
        &self,
        d: &RawDevice,
        i: usize,
        span: Range<usize>,
        connections: &[&Spanned<ModbusConnection>],
        fields: &[FieldConfig],
    ) -> Result<AdapterConfig, ConfigError> {
        let key = |k: &str| format!("device[{i}].{k}");
        let Some(m) = &d.modbus else {
            return Err(self.error(
                span,
                Some(key("modbus")),
                "adapter = \"modbus\" needs a [device.modbus] section (connection, unit, ...)"
                    .into(),
            ));
        };
        if let Some(s) = &d.sim {
            return Err(self.at(s, &key("sim"), "sim options on a modbus device"));
        }
        let dev = m.get_ref();
        let Some(conn) = connections
            .iter()
            .find(|c| c.get_ref().name == dev.connection)
        else {
            let known: Vec<_> = connections
                .iter()
                .map(|c| c.get_ref().name.as_str())
                .collect();
            return Err(self.at(
                m,
                &key("modbus.connection"),
                format!(
                    "no [[modbus.connection]] named {:?} (defined: {})",
                    dev.connection,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if let Err(e) = dev.validate_with(conn.get_ref()) {
            return Err(self.at(m, &key(&format!("modbus.{}", e.key())), e.to_string()));
        }
        let mut points = Vec::with_capacity(fields.len());
        for f in fields {
            let j = f.origin;
            let fkey = |k: &str| format!("device[{i}].field[{j}].{k}");
            let raw = d.fields[j].get_ref();
            if raw.sim.is_some() {
                return Err(self.at(&raw.name, &fkey("sim"), "sim options on a modbus field"));
            }
            let Some(mf) = &raw.modbus else {
                return Err(self.at(
                    &raw.name,
                    &fkey("modbus"),
                    "a field of a modbus device needs modbus = { register = ..., address = ... }",
                ));
            };
            let mut field = mf.get_ref().clone();
            if f.copy > 0 {
                // Repetitions follow each other: by `stride`, or by the registers one takes.
                let stride = match &raw.stride {
                    Some(st) => *st.get_ref(),
                    None => field
                        .resolve(dev, f.spec.writable, f.spec.decimals)
                        .map(|p| u32::from(p.span().count))
                        .unwrap_or(1),
                };
                field.address = field.address.saturating_add(stride.saturating_mul(f.copy));
            }
            let point = field
                .resolve(dev, f.spec.writable, f.spec.decimals)
                .map_err(|e| {
                    let msg = if f.copy > 0 {
                        format!("{} (repetition {} of {:?})", e, f.copy, f.spec.name)
                    } else {
                        e.to_string()
                    };
                    self.at(mf, &fkey(&format!("modbus.{}", e.key())), msg)
                })?;
            let natural = point.field_type();
            if natural != f.spec.kind {
                return Err(self.at(
                    mf,
                    &fkey("type"),
                    format!(
                        "type {:?} does not match the register's value, which reads as {:?}; \
                         write type = \"{}\"",
                        f.spec.kind,
                        natural,
                        format!("{natural:?}").to_lowercase()
                    ),
                ));
            }
            points.push((f.spec.name.clone(), point));
        }
        Ok(AdapterConfig::Modbus(Box::new(ModbusSetup {
            connection: conn.get_ref().clone(),
            device: dev.clone(),
            points: points.into(),
        })))
    }

    fn secret(&self, x: &RawXmpp, xmpp_span: Range<usize>) -> Result<String, ConfigError> {
        let given = [
            x.secret.is_some(),
            x.secret_file.is_some(),
            x.secret_env.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(self.error(
                    xmpp_span,
                    Some("xmpp".into()),
                    "missing component secret: set one of secret, secret_file or secret_env".into(),
                ))
            }
            1 => {}
            _ => {
                return Err(self.error(
                    xmpp_span,
                    Some("xmpp".into()),
                    "set only one of secret, secret_file and secret_env".into(),
                ))
            }
        }
        let secret = if let Some(s) = &x.secret {
            s.get_ref().clone()
        } else if let Some(f) = &x.secret_file {
            let p = self
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join(f.get_ref());
            std::fs::read_to_string(&p)
                .map_err(|e| {
                    self.at(
                        f,
                        "xmpp.secret_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        } else if let Some(v) = &x.secret_env {
            std::env::var(v.get_ref()).map_err(|_| {
                self.at(
                    v,
                    "xmpp.secret_env",
                    format!("environment variable {} is not set", v.get_ref()),
                )
            })?
        } else {
            unreachable!("one source was counted above")
        };
        if secret.is_empty() {
            return Err(self.error(xmpp_span, Some("xmpp".into()), "the secret is empty".into()));
        }
        Ok(secret)
    }

    fn lists(&self, raw: &RawAccess, scope: &str) -> Result<Lists, ConfigError> {
        let one = |l: &Option<Vec<Spanned<String>>>, right: &str| {
            l.as_ref()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            Entry::parse(e.get_ref())
                                .map_err(|m| self.at(e, &format!("{scope}.{right}"), m))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
        };
        Ok(Lists {
            subscribe: one(&raw.subscribe, "subscribe")?,
            read: one(&raw.read, "read")?,
            control: one(&raw.control, "control")?,
        })
    }

    fn fields(&self, d: &RawDevice, i: usize) -> Result<Vec<FieldConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(d.fields.len());
        for (j, f) in d.fields.iter().enumerate() {
            let span = f.span();
            let f = f.get_ref();
            let key = |k: &str| format!("device[{i}].field[{j}].{k}");
            let name = f.name.get_ref();
            if name.trim().is_empty() {
                return Err(self.at(&f.name, &key("name"), "a field needs a name"));
            }
            let count = match &f.count {
                None => 1,
                Some(c) if (1..=MAX_COUNT).contains(c.get_ref()) => *c.get_ref(),
                Some(c) => {
                    return Err(self.at(
                        c,
                        &key("count"),
                        format!("count must be 1 to {MAX_COUNT}"),
                    ))
                }
            };
            if count > 1 && !name.contains("{n}") {
                return Err(self.at(
                    &f.name,
                    &key("name"),
                    "a repeated field (count > 1) needs {n} in its name, e.g. \"reg{n}\"",
                ));
            }
            if let Some(st) = &f.stride {
                if f.modbus.is_none() {
                    return Err(self.at(st, &key("stride"), "stride applies to modbus fields"));
                }
            }
            let expanded: Vec<String> = (0..count)
                .map(|k| name.replace("{n}", &k.to_string()))
                .collect();
            for n in &expanded {
                if !names.insert(n.clone()) {
                    return Err(self.at(
                        &f.name,
                        &key("name"),
                        format!("duplicate field name {n:?}"),
                    ));
                }
            }
            let err = |k: &str, m: String| Err(self.error(span.clone(), Some(key(k)), m));
            if let Some(dec) = &f.decimals {
                if f.kind != FieldType::Double {
                    return Err(self.at(dec, &key("decimals"), "decimals apply to double fields"));
                }
                if *dec.get_ref() > 15 {
                    return Err(self.at(dec, &key("decimals"), "at most 15 decimals"));
                }
            }
            if (f.min.is_some() || f.max.is_some()) && !f.kind.is_numeric() {
                return err(
                    "min",
                    format!("min/max apply to numeric fields, not {:?}", f.kind),
                );
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max) {
                if lo > hi {
                    return err("min", format!("min {lo} is above max {hi}"));
                }
            }
            // A Modbus field may take its labels from its register's value map instead.
            let labels_from_map = f
                .modbus
                .as_ref()
                .is_some_and(|m| !m.get_ref().values.is_empty());
            if f.kind == FieldType::Enum && f.values.is_empty() && !labels_from_map {
                return err("values", "an enum field lists its values".into());
            }
            if f.kind != FieldType::Enum && !f.values.is_empty() {
                return err("values", "values apply to enum fields".into());
            }
            // One unit string for all copies of a repeated field.
            let unit: Option<Arc<str>> = f.unit.as_deref().map(Arc::from);
            for (k, name) in expanded.into_iter().enumerate() {
                out.push(FieldConfig {
                    spec: FieldSpec {
                        name: name.into(),
                        kind: f.kind,
                        unit: unit.clone(),
                        decimals: f.decimals.as_ref().map(|d| *d.get_ref()),
                        writable: f.writable,
                        min: f.min,
                        max: f.max,
                        values: f.values.clone(),
                    },
                    sim: f.sim.clone(),
                    origin: j,
                    copy: k as u32,
                });
            }
        }
        Ok(out)
    }
}

impl Config {
    /// A human summary for `fieldgate check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.path.display());
        let _ = writeln!(
            s,
            "xmpp: component {} via {} (keep-alive {}, ping {}, reconnect {}..{})",
            self.xmpp.domain,
            self.xmpp.server,
            humantime::format_duration(self.xmpp.keepalive),
            self.xmpp.ping_target,
            humantime::format_duration(self.xmpp.reconnect_min),
            humantime::format_duration(self.xmpp.reconnect_max),
        );
        let n = |l: &Option<Vec<Entry>>| l.as_ref().map_or(0, Vec::len);
        let _ = writeln!(
            s,
            "access: subscribe {} entries, read {}, control {}",
            n(&self.access.subscribe),
            n(&self.access.read),
            n(&self.access.control)
        );
        let _ = writeln!(s, "state: {}", self.state_dir.display());
        let _ = writeln!(s, "devices: {}", self.devices.len());
        for d in &self.devices {
            let writable = d.fields.iter().filter(|f| f.writable).count();
            let _ = writeln!(
                s,
                "  {}@{} ({}) adapter={} fields={} writable={}",
                d.id,
                self.xmpp.domain,
                d.name,
                d.adapter.kind(),
                d.fields.len(),
                writable
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[xmpp]
server = "127.0.0.1:5347"
domain = "gw.example.org"
secret = "s"
"#;

    fn err(text: &str) -> Located {
        match parse(Path::new("t.toml"), text) {
            Err(ConfigError::Invalid(l)) => *l,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_has_sensible_defaults() {
        let c = parse(Path::new("t.toml"), BASE).unwrap();
        assert_eq!(c.xmpp.keepalive, Duration::from_secs(30));
        assert_eq!(c.xmpp.ping_target, "example.org");
        assert_eq!(c.xmpp.resource, "gw");
        assert_eq!(c.access, Lists::default());
        assert!(c.devices.is_empty());
        assert!(!format!("{:?}", c.xmpp).contains("\"s\""));
    }

    #[test]
    fn unknown_key_is_located() {
        let e = err(&format!("{BASE}keepalvie = \"3s\"\n"));
        assert_eq!((e.line, e.column), (6, 1));
        assert_eq!(e.key.as_deref(), Some("xmpp.keepalvie"));
        assert!(e.message.contains("keepalvie"), "{}", e.message);
        assert!(e.to_string().starts_with("t.toml:6:1: "), "{e}");
    }

    #[test]
    fn bad_localpart_duplicate_and_range_are_located() {
        let dev = |id: &str| format!("\n[[device]]\nid = \"{id}\"\nadapter = \"sim\"\n");
        let e = err(&format!("{BASE}{}", dev("Pump 3")));
        assert_eq!((e.line, e.column), (8, 6));
        assert_eq!(e.key.as_deref(), Some("device[0].id"));
        let e = err(&format!("{BASE}{}", dev("Pump3")));
        assert!(e.message.contains("\"pump3\""), "{}", e.message);
        let e = err(&format!("{BASE}{}{}", dev("a"), dev("a")));
        assert_eq!(e.line, 12);
        assert!(e.message.contains("duplicate"));
        let e = err(&BASE.replace("secret = \"s\"", "secret = \"s\"\nkeepalive = \"0s\""));
        assert_eq!((e.line, e.key.as_deref()), (6, Some("xmpp.keepalive")));
        let e = err(&BASE.replace("secret = \"s\"", "keepalive = \"3 parsecs\""));
        assert_eq!(e.line, 5);
        assert_eq!(e.key.as_deref(), Some("xmpp.keepalive"));
        assert!(e.message.contains("invalid duration"), "{}", e.message);
    }

    #[test]
    fn stanza_bounds_have_defaults_and_ranges() {
        let c = parse(Path::new("t.toml"), BASE).unwrap();
        assert_eq!(c.xmpp.max_outbound_stanza_size, 65536);
        assert_eq!(c.xmpp.max_inbound_stanza_size, 262144);
        assert_eq!(c.xmpp.max_inbound_depth, 64);
        let c = parse(
            Path::new("t.toml"),
            &BASE.replace(
                "secret = \"s\"",
                "secret = \"s\"\nmax_outbound_stanza_size = 4096\nmax_inbound_depth = 256",
            ),
        )
        .unwrap();
        assert_eq!(c.xmpp.max_outbound_stanza_size, 4096);
        assert_eq!(c.xmpp.max_inbound_depth, 256);
        let e = err(&BASE.replace(
            "secret = \"s\"",
            "secret = \"s\"\nmax_inbound_depth = 100000",
        ));
        assert_eq!((e.line, e.column), (6, 21));
        assert_eq!(e.key.as_deref(), Some("xmpp.max_inbound_depth"));
        assert!(
            e.message.contains("out of range (8 to 256)"),
            "{}",
            e.message
        );
        let e = err(&BASE.replace(
            "secret = \"s\"",
            "secret = \"s\"\nmax_inbound_stanza_size = 100",
        ));
        assert_eq!(e.key.as_deref(), Some("xmpp.max_inbound_stanza_size"));
    }

    #[test]
    fn missing_secret_and_unset_env_are_refused() {
        let e = err(&BASE.replace("secret = \"s\"", ""));
        assert!(
            e.message.contains("missing component secret"),
            "{}",
            e.message
        );
        assert_eq!(e.line, 2);
        let e = err(&BASE.replace(
            "secret = \"s\"",
            "secret_env = \"FIELDGATE_TEST_SURELY_UNSET\"",
        ));
        assert!(e.message.contains("FIELDGATE_TEST_SURELY_UNSET"));
    }

    #[test]
    fn fields_are_validated() {
        let text = format!(
            "{BASE}\n[[device]]\nid = \"b\"\nadapter = \"sim\"\n[[device.field]]\nname = \"t\"\ntype = \"bool\"\nmin = 1.0\n"
        );
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("device[0].field[0].min"));
        let text = format!(
            "{BASE}\n[[device]]\nid = \"b\"\nadapter = \"sim\"\n[[device.field]]\nname = \"t\"\ntype = \"double\"\nsim = {{ kind = \"constant\", value = \"x\" }}\n"
        );
        let e = err(&text);
        assert!(e.message.contains("does not fit"), "{}", e.message);
        let text = format!("{BASE}\n[[device]]\nid = \"b\"\nadapter = \"opcua\"\n");
        let e = err(&text);
        assert_eq!(e.line, 9);
        assert_eq!(e.key.as_deref(), Some("device[0].adapter"));
        assert!(e.message.contains("opcua"), "{}", e.message);
        let text = format!(
            "{BASE}\n[[device]]\nid = \"b\"\nadapter = \"sim\"\n[[device.field]]\nname = \"t\"\ntype = \"double\"\nsim = {{ kind = \"square\" }}\n"
        );
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("device[0].field[0].sim.kind"), "{e}");
    }

    #[test]
    fn repeated_fields_expand_with_consecutive_addresses() {
        let text = format!(
            "{BASE}
[[modbus.connection]]
name = \"plc\"
transport = \"tcp\"
address = \"127.0.0.1:502\"

[[device]]
id = \"m\"
adapter = \"modbus\"
[device.modbus]
connection = \"plc\"
[[device.field]]
name = \"r{{n}}\"
type = \"int\"
count = 1000
modbus = {{ register = \"holding\", address = 0, type = \"u16\" }}
[[device.field]]
name = \"f{{n}}\"
type = \"double\"
unit = \"kW\"
count = 3
modbus = {{ register = \"holding\", address = 2000, type = \"f32\" }}
[[device.field]]
name = \"s{{n}}\"
type = \"int\"
count = 2
stride = 10
modbus = {{ register = \"input\", address = 5, type = \"u16\" }}
"
        );
        let c = parse(Path::new("t.toml"), &text).unwrap();
        let d = &c.devices[0];
        assert_eq!(d.fields.len(), 1005);
        assert_eq!(&*d.fields[999].name, "r999");
        let AdapterConfig::Modbus(m) = &d.adapter else {
            panic!()
        };
        let addr = |i: usize| m.points[i].1.span().address;
        assert_eq!((addr(0), addr(999)), (0, 999));
        assert_eq!((addr(1000), addr(1001), addr(1002)), (2000, 2002, 2004));
        assert_eq!((addr(1003), addr(1004)), (5, 15));
        // one name per field, shared by the catalogue and the Modbus point (and so by
        // every reading): a register map of thousands of fields holds each name once
        assert!(d
            .fields
            .iter()
            .zip(m.points.iter())
            .all(|(f, (name, _))| Arc::ptr_eq(&f.name, name)));
        // and one unit for all copies of a repeated field
        let unit = |i: usize| d.fields[i].unit.clone().unwrap();
        assert!(Arc::ptr_eq(&unit(1000), &unit(1002)));

        let e = err(&text.replace("name = \"f{n}\"", "name = \"f\""));
        assert!(e.message.contains("{n}"), "{}", e.message);
        let e = err(&text.replace("count = 1000", "count = 70000"));
        assert_eq!(e.key.as_deref(), Some("device[0].field[0].count"));
    }

    #[test]
    fn access_entries_are_checked() {
        let e = err(&format!(
            "{BASE}[access]\nread = [\"ok@example.org\", \"a/b\"]\n"
        ));
        assert_eq!((e.line, e.column), (7, 27));
        assert_eq!(e.key.as_deref(), Some("access.read"));
    }
}
