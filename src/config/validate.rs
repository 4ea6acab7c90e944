//! Validation: from the file as written ([`RawConfig`]) to the [`Config`] the gateway
//! runs, the adapters' parts handed to their kinds through the registry.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_api::config::ConfigNode;
use fieldgate_api::{
    AdapterKind, DeviceInput, FieldInput, FieldSpec, FieldType, HumanDuration, WrittenField,
};
use toml::Spanned;
use toml_edit::ImDocument;
use xmpp_parsers::jid::BareJid;

use super::keys::{entries, kind_part};
use super::location::{span_of, Ctx};
use super::schema::{
    RawAccess, RawConfig, RawDevice, RawHistory, RawHistoryOpt, RawTls, RawXmpp, MAX_COUNT,
};
use super::{Config, ConfigError, DeviceConfig, EventsConfig, ReadoutConfig, XmppConfig};
use crate::access::{Entry, Lists};
use crate::adapters;
use crate::history::policy::{FieldHistory, HistoryConfig, Sampling};

/// Range of the stanza size bounds, in bytes: below 4 KiB a JID-addressed error reply
/// might not fit; above 16 MiB no server forwards a stanza.
const MIN_STANZA_SIZE: i64 = 4096;
const MAX_STANZA_SIZE: i64 = 16 * 1024 * 1024;

/// `[history] max_size`: the default, and its bounds.
const DEFAULT_HISTORY_SIZE: u64 = 256 << 20;
const MIN_HISTORY_SIZE: u64 = 16 << 20;
const MAX_HISTORY_SIZE: u64 = 1 << 40;

/// A `sample` rule as written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SampleRule {
    Change,
    Every,
    Interval(Duration),
}

/// History options as resolved so far (gateway, then device, then field).
#[derive(Debug, Clone)]
struct Layer {
    on: bool,
    keep: Option<Duration>,
    sample: Option<SampleRule>,
    deadband: Option<f64>,
}

/// A written field's `stride`, with its span, if given.
type Stride = Option<(u32, Range<usize>)>;

/// A device validated by the core, waiting for its adapter kind.
struct Pending {
    index: usize,
    span: Range<usize>,
    kind: &'static dyn AdapterKind,
    /// The catalogue, repeated fields expanded.
    fields: Vec<FieldInput>,
    /// Each written field's `stride`.
    strides: Vec<Stride>,
    /// Each written field's history.
    history: Vec<Option<FieldHistory>>,
    device: DeviceConfig,
}

impl Ctx<'_> {
    /// Checks `raw` (read from `doc`) and builds the configuration the gateway runs.
    pub(super) fn validate(
        &self,
        raw: RawConfig,
        doc: &ImDocument<&str>,
    ) -> Result<Config, ConfigError> {
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
                   max: Duration| self.duration(v, key, default, min, max);
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
        let tls = self.tls(&x)?;

        let access = self.lists(&raw.access.lists(), "access")?;
        let max_subscriptions = self.count(
            &raw.access.max_subscriptions,
            "access.max_subscriptions",
            10_000,
            1..=1_000_000,
        )?;
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
            max_writes_per_requester: self.count(
                &raw.readout.max_writes_per_requester,
                "readout.max_writes_per_requester",
                16,
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
            min_interval: dur(
                &raw.events.min_interval,
                "events.min_interval",
                Duration::from_secs(1),
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?,
            liveness_interval: dur(
                &raw.events.liveness_interval,
                "events.liveness_interval",
                Duration::from_secs(30),
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            outage_buffer: self.count(
                &raw.events.outage_buffer,
                "events.outage_buffer",
                10_000,
                0..=1_000_000,
            )?,
            outage_max_size: match &raw.events.outage_max_size {
                None => 16 << 20,
                Some(m) => {
                    let b = m.get_ref().as_u64();
                    if !((64 << 10)..=(4 << 30)).contains(&b) {
                        return Err(self.at(
                            m,
                            "events.outage_max_size",
                            format!("{} is out of range (64 KiB to 4 GiB)", m.get_ref()),
                        ));
                    }
                    b
                }
            },
            outage_max_age: dur(
                &raw.events.outage_max_age,
                "events.outage_max_age",
                Duration::from_secs(3600),
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            )?,
        };

        let (history, history_defaults) = self.history_section(&raw.history, &state_dir)?;

        let mut seen = HashSet::new();
        let mut pending = Vec::with_capacity(raw.devices.len());
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
            let (fields, strides) = self.fields(&d, i)?;
            let kind = self.kind(&d, i)?;
            let device_history =
                self.history_layer(&history_defaults, d.history.as_ref(), &key("history"))?;
            let history = d
                .fields
                .iter()
                .enumerate()
                .map(|(j, f)| {
                    let layer = self.history_layer(
                        &device_history,
                        f.get_ref().history.as_ref(),
                        &format!("device[{i}].field[{j}].history"),
                    )?;
                    self.field_history(
                        &layer,
                        f.get_ref().history.as_ref().or(d.history.as_ref()),
                        &key("history"),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            pending.push(Pending {
                index: i,
                span,
                kind,
                fields,
                strides,
                history,
                device: DeviceConfig {
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
                    kind: kind.name(),
                    setup: Arc::new(()),
                    reporting: Default::default(),
                    discovers: false,
                    fields: Arc::from([]),
                    history: Arc::from([]),
                },
            });
        }
        let devices = self.configure_adapters(doc, pending)?;

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
                tls,
            },
            access,
            max_subscriptions,
            state_dir,
            readout,
            events,
            history,
            devices,
        })
    }

    /// The compiled-in kind of `d`'s `adapter = "..."`.
    fn kind(&self, d: &RawDevice, i: usize) -> Result<&'static dyn AdapterKind, ConfigError> {
        let name = d.adapter.get_ref();
        match adapters::find(name) {
            Some(r) => r.kind.ok_or_else(|| {
                self.at(
                    &d.adapter,
                    &format!("device[{i}].adapter"),
                    format!(
                        "the {name:?} adapter is not compiled into this build \
                         (rebuild with the Cargo feature \"{}\")",
                        r.feature
                    ),
                )
            }),
            None => Err(self.at(
                &d.adapter,
                &format!("device[{i}].adapter"),
                format!(
                    "unknown adapter {name:?}; this build has: {}",
                    adapters::compiled_names().join(", ")
                ),
            )),
        }
    }

    /// Hands every compiled-in kind its part of the file: its top-level section and its
    /// devices (a kind with neither is not asked). Returns the devices in file order,
    /// each with its setup and its catalogue as the adapter refined it.
    fn configure_adapters(
        &self,
        doc: &ImDocument<&str>,
        pending: Vec<Pending>,
    ) -> Result<Vec<DeviceConfig>, ConfigError> {
        let root = doc.as_table();
        let devices = doc.get("device").map(entries).unwrap_or_default();
        let mut done: Vec<Option<DeviceConfig>> = vec![None; pending.len()];
        let mut pending: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
        for kind in adapters::compiled() {
            let name = kind.name();
            let section = root.get(name).map(|s| ConfigNode::new(s, name));
            let slots: Vec<usize> = (0..pending.len())
                .filter(|&k| pending[k].as_ref().is_some_and(|p| p.kind.name() == name))
                .collect();
            if section.is_none() && slots.is_empty() {
                continue;
            }
            let mut mine: Vec<(usize, Pending)> = slots
                .into_iter()
                .filter_map(|k| Some((k, pending[k].take()?)))
                .collect();
            // The catalogues move to the adapter and back: a register map can hold
            // a hundred thousand fields.
            let mut inputs: Vec<DeviceInput<'_>> = mine
                .iter_mut()
                .map(|(_, p)| {
                    let i = p.index;
                    let table = devices.get(i).copied();
                    let written = table
                        .and_then(|t| t.get("field"))
                        .map(entries)
                        .unwrap_or_default()
                        .into_iter()
                        .zip(std::mem::take(&mut p.strides))
                        .enumerate()
                        .map(|(j, (ft, stride))| {
                            let path = format!("device[{i}].field[{j}]");
                            WrittenField {
                                options: kind_part(Some(ft), name, &path),
                                path,
                                stride,
                                name_span: ft.get("name").and_then(|n| n.span()),
                            }
                        })
                        .collect();
                    DeviceInput {
                        id: p.device.id.clone(),
                        path: format!("device[{i}]"),
                        options: table
                            .and_then(|t| t.get(name))
                            .map(|o| ConfigNode::new(o, format!("device[{i}].{name}"))),
                        span: Some(p.span.clone()),
                        written,
                        fields: std::mem::take(&mut p.fields),
                    }
                })
                .collect();
            let setups = kind
                .configure(section, &mut inputs)
                .map_err(|issue| self.issue(issue))?;
            if setups.len() != inputs.len() {
                // A bug in the adapter; never drop a device silently.
                return Err(self.error(
                    0..0,
                    None,
                    format!(
                        "internal error: the {name} adapter configured {} of {} devices",
                        setups.len(),
                        inputs.len()
                    ),
                ));
            }
            for (((slot, p), input), setup) in mine.into_iter().zip(inputs).zip(setups) {
                // An enum's labels may come from the device (a register's value map).
                if let Some(f) = input
                    .fields
                    .iter()
                    .find(|f| f.spec.kind == FieldType::Enum && f.spec.values.is_empty())
                {
                    let field = format!("device[{}].field[{}]", p.index, f.written);
                    let span = span_of(self.text, &field).unwrap_or(0..0);
                    return Err(self.error(
                        span,
                        Some(format!("{field}.values")),
                        format!(
                            "an enum field lists its values ({:?} has none)",
                            f.spec.name
                        ),
                    ));
                }
                let mut device = p.device;
                device.reporting = kind.reporting(&*setup);
                device.discovers = kind.discovers(&*setup);
                device.setup = setup;
                device.history = input
                    .fields
                    .iter()
                    .map(|f| p.history.get(f.written).copied().flatten())
                    .collect();
                device.fields = input.fields.into_iter().map(|f| f.spec).collect();
                done[slot] = Some(device);
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// A duration option: `default` when absent, refused (located) outside `min..=max`.
    fn duration(
        &self,
        v: &Option<Spanned<HumanDuration>>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
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
    }

    /// The `[history]` section, and the defaults it gives devices and fields.
    fn history_section(
        &self,
        h: &RawHistory,
        state_dir: &Path,
    ) -> Result<(HistoryConfig, Layer), ConfigError> {
        let max_size = match &h.max_size {
            None => DEFAULT_HISTORY_SIZE,
            Some(m) => {
                let b = m.get_ref().as_u64();
                if !(MIN_HISTORY_SIZE..=MAX_HISTORY_SIZE).contains(&b) {
                    return Err(self.at(
                        m,
                        "history.max_size",
                        format!("{} is out of range (16 MiB to 1 TiB)", m.get_ref()),
                    ));
                }
                b
            }
        };
        let file = match &h.file {
            Some(f) if f.is_absolute() => f.clone(),
            Some(f) => state_dir.join(f),
            None => state_dir.join("history.db"),
        };
        let cfg = HistoryConfig {
            file,
            max_size,
            commit_interval: self.duration(
                &h.commit_interval,
                "history.commit_interval",
                Duration::from_secs(1),
                Duration::from_millis(10),
                Duration::from_secs(60),
            )?,
            read_interval: self.duration(
                &h.read_interval,
                "history.read_interval",
                Duration::from_secs(10),
                Duration::from_millis(100),
                Duration::from_secs(86_400),
            )?,
        };
        let mut layer = Layer {
            on: h.keep.is_some(),
            keep: h.keep.as_ref().map(|k| k.get_ref().0),
            sample: None,
            deadband: None,
        };
        if let Some(s) = &h.sample {
            layer.sample = Some(
                self.sampling(s.get_ref())
                    .map_err(|m| self.at(s, "history.sample", m))?,
            );
        }
        if let Some(d) = &h.deadband {
            if !(d.get_ref().is_finite() && *d.get_ref() >= 0.0) {
                return Err(self.at(d, "history.deadband", "a deadband is a number, 0 or more"));
            }
            layer.deadband = Some(*d.get_ref());
        }
        Ok((cfg, layer))
    }

    /// `"change"`, `"every"`, or an interval.
    fn sampling(&self, text: &str) -> Result<SampleRule, String> {
        match text.trim() {
            "change" => Ok(SampleRule::Change),
            "every" => Ok(SampleRule::Every),
            other => match humantime::parse_duration(other) {
                Ok(d) if d >= Duration::from_millis(100) => Ok(SampleRule::Interval(d)),
                Ok(_) => Err("a sampling interval is 100ms or more".into()),
                Err(_) => Err(format!(
                    "{other:?} is not a sampling rule: write \"change\", \"every\" or an interval such as \"10s\""
                )),
            },
        }
    }

    /// `over` overridden by a device's or field's `history` option.
    fn history_layer(
        &self,
        over: &Layer,
        opt: Option<&Spanned<RawHistoryOpt>>,
        key: &str,
    ) -> Result<Layer, ConfigError> {
        let Some(o) = opt else {
            return Ok(over.clone());
        };
        let r = o.get_ref();
        let mut l = over.clone();
        l.on = r.on.unwrap_or(true);
        if let Some(k) = &r.keep {
            if k.0.is_zero() {
                return Err(self.at(
                    o,
                    key,
                    "keep is a duration greater than zero (or write history = false)",
                ));
            }
            l.keep = Some(k.0);
        }
        if let Some(s) = &r.sample {
            l.sample = Some(self.sampling(s).map_err(|m| self.at(o, key, m))?);
        }
        if let Some(d) = r.deadband {
            if !(d.is_finite() && d >= 0.0) {
                return Err(self.at(o, key, "a deadband is a number, 0 or more"));
            }
            l.deadband = Some(d);
        }
        Ok(l)
    }

    /// A field's history from its resolved layer.
    fn field_history(
        &self,
        l: &Layer,
        opt: Option<&Spanned<RawHistoryOpt>>,
        key: &str,
    ) -> Result<Option<FieldHistory>, ConfigError> {
        if !l.on {
            return Ok(None);
        }
        let Some(keep) = l.keep else {
            let msg =
                "history = true needs a retention: write history = \"30d\" or set [history] keep";
            return Err(match opt {
                Some(o) => self.at(o, key, msg),
                None => self.error(0..0, Some(key.into()), msg.into()),
            });
        };
        let sample = match l.sample.unwrap_or(SampleRule::Change) {
            SampleRule::Change => Sampling::Change {
                deadband: l.deadband.unwrap_or(0.0),
            },
            SampleRule::Every => Sampling::Every,
            SampleRule::Interval(d) => Sampling::Interval(d),
        };
        Ok(Some(FieldHistory { keep, sample }))
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

    /// `[xmpp] tls`: the settings, with the files read once here so that a mistake in
    /// them is a configuration error with its place rather than a link that never
    /// comes up.
    fn tls(&self, x: &RawXmpp) -> Result<Option<fieldgate_tls::Settings>, ConfigError> {
        let Some(raw) = &x.tls else { return Ok(None) };
        let RawTls::On(t) = raw.get_ref() else {
            return Ok(None);
        };
        // Relative paths are read from the configuration file's directory, as
        // `secret_file` is, so that `fieldgate check` and the service agree.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|p| dir.join(p.get_ref()));
        let settings = fieldgate_tls::Settings {
            ca_file: path(&t.ca_file),
            cert_file: path(&t.cert_file),
            key_file: path(&t.key_file),
            server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
        };
        match (&t.cert_file, &t.key_file) {
            (Some(c), None) => {
                return Err(self.at(
                    c,
                    "xmpp.tls.cert_file",
                    "a client certificate needs key_file too",
                ))
            }
            (None, Some(k)) => {
                return Err(self.at(k, "xmpp.tls.key_file", "a client key needs cert_file too"))
            }
            _ => {}
        }
        if let Some(n) = &t.server_name {
            if let Err(e) = fieldgate_tls::server_name(n.get_ref()) {
                return Err(self.at(n, "xmpp.tls.server_name", e.to_string()));
            }
        } else if let Err(e) =
            fieldgate_tls::server_name(fieldgate_tls::host_of(x.server.get_ref().trim()))
        {
            return Err(self.at(
                &x.server,
                "xmpp.server",
                format!("{e}: with TLS, the host must be a name or address the certificate can carry (or set tls.server_name)"),
            ));
        }
        if let Err(e) = fieldgate_tls::client_config(&settings) {
            let spanned = |k: &str| match k {
                "ca_file" => t.ca_file.as_ref().map(Spanned::span),
                "cert_file" => t.cert_file.as_ref().map(Spanned::span),
                "key_file" => t.key_file.as_ref().map(Spanned::span),
                "server_name" => t.server_name.as_ref().map(Spanned::span),
                _ => None,
            };
            let message = format!("cannot set up TLS: {e}");
            return Err(match e.key().and_then(|k| spanned(k).map(|s| (k, s))) {
                Some((k, span)) => self.at_span(span, &format!("xmpp.tls.{k}"), message),
                None => self.at(raw, "xmpp.tls", message),
            });
        }
        Ok(Some(settings))
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

    /// The catalogue of `d`, repeated fields expanded, and each written field's stride.
    fn fields(
        &self,
        d: &RawDevice,
        i: usize,
    ) -> Result<(Vec<FieldInput>, Vec<Stride>), ConfigError> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(d.fields.len());
        let strides = d
            .fields
            .iter()
            .map(|f| {
                f.get_ref()
                    .stride
                    .as_ref()
                    .map(|s| (*s.get_ref(), s.span()))
            })
            .collect();
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
            for (k, bound) in [("min", f.min), ("max", f.max)] {
                // nan compares false with everything: it would switch the bound off.
                if bound.is_some_and(f64::is_nan) {
                    return err(k, format!("{k} must be a number, not nan"));
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
            if f.kind != FieldType::Enum && !f.values.is_empty() {
                return err("values", "values apply to enum fields".into());
            }
            // One unit string for all copies of a repeated field.
            let unit: Option<Arc<str>> = f.unit.as_deref().map(Arc::from);
            for (k, name) in expanded.into_iter().enumerate() {
                out.push(FieldInput {
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
                    written: j,
                    copy: k as u32,
                });
            }
        }
        Ok((out, strides))
    }
}
