//! The TOML configuration: what the gateway runs with ([`Config`]), read and validated
//! with file, line, column and key path in every error. The file's schema
//! ([`schema`]), locating errors ([`location`]), the walk over adapters' parts and
//! unknown keys ([`keys`]) and validation ([`validate`]) each have their module; every
//! adapter validates its own parts through the registry ([`crate::adapters`]).

mod keys;
mod location;
mod schema;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_api::{DeviceId, DeviceSetup, FieldSpec, Reporting};

use crate::access::{Entry, Lists};

pub use location::{ConfigError, Located};
/// The validated configuration the gateway runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (SIGHUP re-reads it).
    pub path: PathBuf,
    /// The component link.
    pub xmpp: XmppConfig,
    /// Gateway-wide access lists.
    pub access: Lists,
    /// Presence subscriptions (device, bare JID) the gateway keeps at most; beyond it a
    /// new `subscribe` is refused, so `subscribe = ["*"]` cannot grow the list and the
    /// state file without bound.
    pub max_subscriptions: usize,
    /// Directory of persistent state.
    pub state_dir: PathBuf,
    /// Sensor-data readouts.
    pub readout: ReadoutConfig,
    /// Change-event subscriptions.
    pub events: EventsConfig,
    /// The history store (`[history]`).
    pub history: crate::history::policy::HistoryConfig,
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
    /// TLS from the first byte, with these settings (file paths resolved against the
    /// configuration file's directory); plaintext when `None`.
    pub tls: Option<fieldgate_tls::Settings>,
}

impl XmppConfig {
    /// The name the server's certificate must carry: `server_name`, or the host of
    /// `server`.
    pub fn tls_name(&self) -> Option<&str> {
        let tls = self.tls.as_ref()?;
        Some(
            tls.server_name
                .as_deref()
                .unwrap_or_else(|| fieldgate_tls::host_of(&self.server)),
        )
    }
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
            .field("tls", &self.tls)
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
    /// Readouts one user (bare JID, all resources together) may have running or queued.
    pub max_per_requester: usize,
    /// Parameters one control `set` may carry.
    pub max_set_params: usize,
    /// Control `set`s one user (bare JID) may have in flight at once.
    pub max_writes_per_requester: usize,
}

/// `[events]`: change-event subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// Subscriptions one user (bare JID, all its resources together) may hold at once.
    pub max_per_requester: usize,
    /// How often a device that reports only when asked is read for subscriptions with
    /// change conditions (when none asks for a longer `minInterval`).
    pub sample_interval: Duration,
    /// The shortest time between two events of one subscription: a `minInterval` or
    /// `maxInterval` below it is raised to it.
    pub min_interval: Duration,
    /// How often a requester holding subscriptions or queued readouts is pinged.
    pub liveness_interval: Duration,
    /// Events kept for delivery while the component link is down (or not yet known to
    /// have reached the server), all subscribers together; beyond it the oldest go.
    pub outage_buffer: usize,
    /// The bytes those events may take (their messages as written), all together.
    pub outage_max_size: u64,
    /// How long an event may wait for the link; older ones are dropped.
    pub outage_max_age: Duration,
}

/// One `[[device]]`.
#[derive(Debug, Clone)]
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
    /// The adapter kind (`adapter = "..."`).
    pub kind: &'static str,
    /// What the adapter kind made of the device's options, for its runtime.
    pub setup: Arc<dyn DeviceSetup>,
    /// How the device's values reach the core (polled, pushed, or on request).
    pub reporting: Reporting,
    /// Whether the entry stands for the devices its adapter discovers (a topic pattern)
    /// rather than for one device: it has no JID of its own, its members do.
    pub discovers: bool,
    /// The field catalogue, shared (not copied) with the running device.
    pub fields: Arc<[FieldSpec]>,
    /// Each field's history (in catalogue order): `None` where it is not kept.
    pub history: Arc<[Option<crate::history::policy::FieldHistory>]>,
}

impl PartialEq for DeviceConfig {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.model == other.model
            && self.serial == other.serial
            && self.vendor == other.vendor
            && self.access == other.access
            && self.max_age == other.max_age
            && self.kind == other.kind
            && self.setup.same_as(&*other.setup)
            && self.fields == other.fields
            && self.history == other.history
    }
}

// ---- loading ----------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Err(location::invalid_utf8(path, e)),
    };
    parse(path, &text)
}

/// Validates configuration text; `path` is used in messages and to resolve `secret_file`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = location::Ctx { path, text };
    let raw: schema::RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        if let Some((key, message)) = location::missing_value(text, span.start) {
            return ctx.error(span, Some(key), message);
        }
        ctx.error(
            span.clone(),
            location::key_at(text, &span),
            e.message().trim_end().to_owned(),
        )
    })?;
    // The same text parsed once more, keeping every position, for the adapters' parts
    // (it parsed above, so it parses here).
    let doc = toml_edit::ImDocument::parse(text)
        .map_err(|e| ctx.error(e.span().unwrap_or(0..0), None, e.message().to_owned()))?;
    keys::check(&ctx, &doc, &raw)?;
    ctx.validate(raw, &doc)
}

/// Every option the gateway reads, by the section it is written in (`xmpp`,
/// `device.field`, `device.field.modbus`, ...): the core's own, and those of each adapter
/// kind compiled in. A test checks that each is documented.
pub fn options() -> Vec<(&'static str, Vec<&'static str>)> {
    use fieldgate_api::config::keys_of;
    use schema::*;

    let mut out = vec![
        ("", keys_of::<RawConfig>().to_vec()),
        ("xmpp", keys_of::<RawXmpp>().to_vec()),
        ("xmpp.tls", keys_of::<RawTlsTable>().to_vec()),
        ("access", keys_of::<RawGatewayAccess>().to_vec()),
        ("state", keys_of::<RawState>().to_vec()),
        ("readout", keys_of::<RawReadout>().to_vec()),
        ("events", keys_of::<RawEvents>().to_vec()),
        ("device", keys_of::<RawDevice>().to_vec()),
        ("device.access", keys_of::<RawAccess>().to_vec()),
        ("device.field", keys_of::<RawField>().to_vec()),
    ];
    for kind in crate::adapters::compiled() {
        out.extend(kind.options());
    }
    out
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
        match (&self.xmpp.tls, self.xmpp.tls_name()) {
            (Some(tls), Some(name)) => {
                let _ = writeln!(
                    s,
                    "xmpp tls: certificate checked for {name} against {}; client certificate: {}",
                    tls.ca_file
                        .as_ref()
                        .map_or("the system's roots".to_owned(), |f| f.display().to_string()),
                    tls.cert_file
                        .as_ref()
                        .map_or("none".to_owned(), |f| f.display().to_string()),
                );
            }
            _ => {
                let _ = writeln!(s, "xmpp tls: off (plaintext component link)");
            }
        }
        let n = |l: &Option<Vec<Entry>>| l.as_ref().map_or(0, Vec::len);
        let _ = writeln!(
            s,
            "access: subscribe {} entries, read {}, control {}; at most {} subscriptions",
            n(&self.access.subscribe),
            n(&self.access.read),
            n(&self.access.control),
            self.max_subscriptions
        );
        let e = &self.events;
        let _ = writeln!(
            s,
            "events through a link outage: at most {} kept, {}, none older than {}",
            e.outage_buffer,
            bytesize::ByteSize::b(e.outage_max_size).display().iec(),
            humantime::format_duration(e.outage_max_age),
        );
        let _ = writeln!(s, "state: {}", self.state_dir.display());
        let kept: usize = self
            .devices
            .iter()
            .map(|d| d.history.iter().flatten().count())
            .sum();
        if kept == 0 {
            let _ = writeln!(s, "history: off (no field keeps history)");
        } else {
            let _ = writeln!(
                s,
                "history: {kept} fields kept in {} (at most {}, written every {})",
                self.history.file.display(),
                bytesize::ByteSize(self.history.max_size),
                humantime::format_duration(self.history.commit_interval)
            );
        }
        let _ = writeln!(s, "devices: {}", self.devices.len());
        for d in &self.devices {
            let writable = d.fields.iter().filter(|f| f.writable).count();
            if d.discovers {
                let _ = writeln!(
                    s,
                    "  entry {} ({}) adapter={} discovers devices, each with fields={} writable={}",
                    d.id,
                    d.name,
                    d.kind,
                    d.fields.len(),
                    writable
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  {}@{} ({}) adapter={} fields={} writable={}",
                d.id,
                self.xmpp.domain,
                d.name,
                d.kind,
                d.fields.len(),
                writable
            );
            for (f, h) in d.fields.iter().zip(d.history.iter()) {
                if let Some(h) = h {
                    let sample = match h.sample {
                        crate::history::policy::Sampling::Change { deadband } if deadband > 0.0 => {
                            format!("on a change of more than {deadband}")
                        }
                        crate::history::policy::Sampling::Change { .. } => "on change".into(),
                        crate::history::policy::Sampling::Every => "every value".into(),
                        crate::history::policy::Sampling::Interval(i) => {
                            format!("every {}", humantime::format_duration(i))
                        }
                    };
                    let _ = writeln!(
                        s,
                        "    history {}: kept {}, {sample}",
                        f.name,
                        humantime::format_duration(h.keep)
                    );
                }
            }
        }
        if self.devices.iter().any(|d| d.discovers) {
            let _ = match crate::discovered::peek(&self.state_dir) {
                Ok(found) => {
                    let n: usize = self
                        .devices
                        .iter()
                        .filter(|d| d.discovers)
                        .map(|d| found.get(&*d.id).map_or(0, Vec::len))
                        .sum();
                    let _ = writeln!(s, "discovered devices (in the state directory): {n}");
                    for d in self.devices.iter().filter(|d| d.discovers) {
                        for m in found.get(&*d.id).into_iter().flatten() {
                            let _ = writeln!(
                                s,
                                "  {}@{} ({}) from entry {}",
                                m.id, self.xmpp.domain, m.name, d.id
                            );
                        }
                    }
                    Ok(())
                }
                Err(e) => writeln!(s, "discovered devices: cannot be read: {e}"),
            };
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
        assert_eq!(c.max_subscriptions, 10_000);
        let e = err(&format!("{BASE}[access]\nmax_subscriptions = 0\n"));
        assert_eq!(e.key.as_deref(), Some("access.max_subscriptions"));
        #[cfg(feature = "sim")]
        {
            let e = err(&format!(
                "{BASE}[[device]]\nid = \"d\"\nadapter = \"sim\"\n[device.access]\nmax_subscriptions = 5\n"
            ));
            assert!(e.message.contains("max_subscriptions"), "{}", e.message);
        }
        assert!(c.devices.is_empty());
        assert!(!format!("{:?}", c.xmpp).contains("\"s\""));
    }

    #[test]
    fn the_outage_buffer_has_defaults_and_ranges() {
        let c = parse(Path::new("t.toml"), BASE).unwrap();
        assert_eq!(c.events.outage_buffer, 10_000);
        assert_eq!(c.events.outage_max_size, 16 << 20);
        assert_eq!(c.events.outage_max_age, Duration::from_secs(3600));
        let c = parse(
            Path::new("t.toml"),
            &format!("{BASE}[events]\noutage_buffer = 0\noutage_max_age = \"10m\"\n"),
        )
        .unwrap();
        assert_eq!(c.events.outage_buffer, 0);
        assert_eq!(c.events.outage_max_age, Duration::from_secs(600));
        assert!(
            c.summary().contains(
                "events through a link outage: at most 0 kept, 16.0 MiB, none older than 10m"
            ),
            "{}",
            c.summary()
        );
        let e = err(&format!("{BASE}[events]\noutage_buffer = -1\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (7, Some("events.outage_buffer"))
        );
        let e = err(&format!("{BASE}[events]\noutage_max_age = \"0s\"\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (7, Some("events.outage_max_age"))
        );
        let e = err(&format!("{BASE}[events]\noutage_max_size = \"1 KiB\"\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (7, Some("events.outage_max_size"))
        );
        assert!(e.message.contains("64 KiB to 4 GiB"), "{}", e.message);
        let c = parse(
            Path::new("t.toml"),
            &format!("{BASE}[events]\noutage_max_size = \"2 MiB\"\n"),
        )
        .unwrap();
        assert_eq!(c.events.outage_max_size, 2 << 20);
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
    #[cfg(feature = "sim")]
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
    #[cfg(feature = "sim")]
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
        for bound in ["min", "max"] {
            let e = err(&format!(
                "{BASE}\n[[device]]\nid = \"b\"\nadapter = \"sim\"\n[[device.field]]\nname = \"t\"\ntype = \"double\"\n{bound} = nan\n"
            ));
            assert_eq!(
                e.key.as_deref(),
                Some(format!("device[0].field[0].{bound}").as_str())
            );
            assert!(e.message.contains("not nan"), "{}", e.message);
        }
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
    fn unknown_keys_are_refused_where_written() {
        let e = err(&format!("{BASE}\n[acess]\nread = []\n"));
        assert_eq!((e.line, e.column), (7, 2));
        assert!(e.message.contains("unknown key `acess`"), "{}", e.message);
        let Some(kind) = crate::adapters::compiled_names().first().copied() else {
            return;
        };
        let dev = format!("\n[[device]]\nid = \"d\"\nadapter = \"{kind}\"\ncolour = \"red\"\n");
        let e = err(&format!("{BASE}{dev}"));
        assert_eq!((e.line, e.column), (10, 1));
        assert_eq!(e.key.as_deref(), Some("device[0].colour"));
    }

    #[test]
    fn an_unknown_adapter_is_refused_with_the_kinds_available() {
        let e = err(&format!(
            "{BASE}\n[[device]]\nid = \"d\"\nadapter = \"opcua\"\n"
        ));
        assert_eq!((e.line, e.key.as_deref()), (9, Some("device[0].adapter")));
        let kinds = crate::adapters::compiled_names().join(", ");
        assert!(
            e.message.ends_with(&format!("this build has: {kinds}")),
            "{}",
            e.message
        );
    }

    #[test]
    #[cfg(all(feature = "sim", feature = "modbus"))]
    fn options_of_another_bus_are_refused_by_one_rule() {
        let dev =
            |extra: &str| format!("{BASE}\n[[device]]\nid = \"d\"\nadapter = \"sim\"\n{extra}");
        let e = err(&dev("[device.modbus]\nconnection = \"x\"\n"));
        assert_eq!(e.key.as_deref(), Some("device[0].modbus"));
        assert_eq!(e.message, "modbus options on a sim device");
        let e = err(&dev(
            "[[device.field]]\nname = \"f\"\ntype = \"int\"\nmodbus = { address = 1 }\n",
        ));
        assert_eq!(e.key.as_deref(), Some("device[0].field[0].modbus"));
        assert_eq!(e.line, 13);
        assert_eq!(e.message, "modbus options on a field of a sim device");
    }

    #[test]
    #[cfg(not(feature = "sim"))]
    fn a_kind_not_compiled_in_is_refused_with_its_feature() {
        let e = err(&format!(
            "{BASE}\n[[device]]\nid = \"d\"\nadapter = \"sim\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("device[0].adapter"));
        assert!(e.message.contains("Cargo feature \"sim\""), "{}", e.message);
    }

    #[test]
    #[cfg(not(feature = "modbus"))]
    fn a_section_of_a_kind_not_compiled_in_is_refused() {
        let e = err(&format!("{BASE}\n[[modbus.connection]]\nname = \"x\"\n"));
        assert!(
            e.message.contains("Cargo feature \"modbus\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn tls_is_off_unless_asked_for() {
        let c = parse(Path::new("t.toml"), BASE).unwrap();
        assert_eq!((c.xmpp.tls.as_ref(), c.xmpp.tls_name()), (None, None));
        let c = parse(Path::new("t.toml"), &format!("{BASE}tls = false\n")).unwrap();
        assert!(c.xmpp.tls.is_none());
        // `true`: the system's roots, and the host of `server` as the name.
        let c = parse(Path::new("t.toml"), &format!("{BASE}tls = true\n")).unwrap();
        assert_eq!(c.xmpp.tls, Some(fieldgate_tls::Settings::default()));
        assert_eq!(c.xmpp.tls_name(), Some("127.0.0.1"));
        assert!(c
            .summary()
            .contains("xmpp tls: certificate checked for 127.0.0.1"));
        let e = err(&format!("{BASE}tls = \"yes\"\n"));
        assert_eq!((e.line, e.key.as_deref()), (6, Some("xmpp.tls")));
        assert!(
            e.message.contains("true, false or a table"),
            "{}",
            e.message
        );
    }

    #[test]
    fn tls_files_are_read_from_the_config_directory_and_their_faults_located() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("gw.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("not.pem"), "hello\n").unwrap();
        let path = dir.path().join("gw.toml");
        let parse_tls = |tls: &str| parse(&path, &format!("{BASE}[xmpp.tls]\n{tls}\n"));
        let err_tls = |tls: &str| match parse_tls(tls) {
            Err(ConfigError::Invalid(l)) => *l,
            other => panic!("expected an error, got {other:?}"),
        };

        let c = parse_tls(
            "ca_file = \"ca.pem\"\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n\
             server_name = \"xmpp.example.org\"",
        )
        .unwrap();
        let tls = c.xmpp.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(&*dir.path().join("ca.pem")));
        assert_eq!(tls.key_file.as_deref(), Some(&*dir.path().join("gw.key")));
        assert_eq!(c.xmpp.tls_name(), Some("xmpp.example.org"));

        let cases = [
            ("ca_file = \"nope.pem\"", "xmpp.tls.ca_file", "nope.pem"),
            (
                "ca_file = \"not.pem\"",
                "xmpp.tls.ca_file",
                "no PEM certificate",
            ),
            (
                "key_file = \"gw.key\"",
                "xmpp.tls.key_file",
                "needs cert_file",
            ),
            (
                "cert_file = \"gw.pem\"",
                "xmpp.tls.cert_file",
                "needs key_file",
            ),
            (
                "cert_file = \"gw.pem\"\nkey_file = \"not.pem\"",
                "xmpp.tls.key_file",
                "no PEM private key",
            ),
            (
                "cert_file = \"not.pem\"\nkey_file = \"gw.key\"",
                "xmpp.tls.cert_file",
                "no PEM certificate",
            ),
            (
                "server_name = \"not a name\"",
                "xmpp.tls.server_name",
                "not a host name",
            ),
            (
                "cafile = \"ca.pem\"",
                "xmpp.tls.cafile",
                "unknown field `cafile`",
            ),
        ];
        for (tls, key, says) in cases {
            let e = err_tls(tls);
            assert_eq!(e.key.as_deref(), Some(key), "{tls}: {e}");
            assert!(e.line >= 7, "{tls}: located in the table: {e}");
            assert!(e.message.contains(says), "{tls}: {e}");
        }
    }

    #[test]
    fn a_key_with_no_value_says_a_value_is_missing() {
        let e = err(&format!("{BASE}keepalive = \n"));
        assert_eq!((e.line, e.key.as_deref()), (6, Some("xmpp.keepalive")));
        assert!(e.message.contains("no value"), "{}", e.message);
        // also at the end of the file without a newline, and before another key
        let e = err(&format!("{BASE}keepalive ="));
        assert_eq!(e.line, 6);
        assert!(e.message.contains("no value"), "{}", e.message);
        let e = err(&format!("{BASE}keepalive =  # seconds\nresource = \"x\"\n"));
        assert_eq!((e.line, e.key.as_deref()), (6, Some("xmpp.keepalive")));
        assert!(e.message.contains("no value"), "{}", e.message);
        let e = err(&format!("{BASE}[[device]]\nid = \"a\"\nadapter =\n"));
        assert_eq!((e.line, e.key.as_deref()), (8, Some("device[0].adapter")));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let mut bytes = BASE.as_bytes().to_vec();
        bytes.extend_from_slice(b"resource = \"gw\xff\"\n");
        std::fs::write(&path, bytes).unwrap();
        let e = match load(&path) {
            Err(ConfigError::Invalid(l)) => *l,
            other => panic!("expected a located error, got {other:?}"),
        };
        assert_eq!((e.line, e.column), (6, 15), "{e}");
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        assert!(e.message.contains("0xff"), "{}", e.message);
        assert_eq!(e.key.as_deref(), Some("xmpp.resource"));
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
