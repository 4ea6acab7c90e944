//! The `mqtt` kind: `[[mqtt.broker]]`, `[device.mqtt]` and each field's `mqtt = { ... }`
//! resolved into a setup per device; broker sessions shared by the devices that name
//! them and kept across reloads unless their configuration changed.

use std::collections::HashMap;
use std::sync::Arc;

use fieldgate_api::config::{keys_of, section_with_list, ConfigIssue, ConfigNode};
use fieldgate_api::{
    wrong_setup, Adapter, AdapterKind, DeviceId, DeviceInput, DeviceSetup, FieldSpec, KindRuntime,
    Reporting,
};
use fieldgate_payload::{
    default_pointer, Availability, FieldDecoder, Format, Locator, Pointer, Template, TimestampSpec,
    TopicDecoder,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Broker, DeviceOptions, FieldOptions};
use crate::device::MqttAdapter;
use crate::router::check_filter;
use crate::session::{self, Shared};
use crate::setup::{Command, MqttSetup, StateTopic};

/// The `mqtt` adapter kind, for the core's registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttKind;

/// The top-level `[mqtt]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    broker: Vec<Broker>,
}

impl AdapterKind for MqttKind {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn configure(
        &self,
        section: Option<ConfigNode<'_>>,
        devices: &mut [DeviceInput<'_>],
    ) -> Result<Vec<Arc<dyn DeviceSetup>>, ConfigIssue> {
        let (parsed, tables) = section_with_list::<Section>(section.as_ref(), "broker")?;
        let mut brokers: Vec<Broker> = Vec::new();
        for (i, mut b) in parsed.broker.into_iter().enumerate() {
            let table = tables.get(i);
            let span = table.and_then(|t| t.span()).unwrap_or_default();
            let key = |k: &str| format!("mqtt.broker[{i}].{k}");
            if let Err((k, why)) = b.validate().and_then(|()| b.resolve()) {
                // At the key itself where it is written.
                let at = table.and_then(|t| t.get(k)).and_then(|n| n.span());
                return Err(ConfigIssue::at(at.unwrap_or(span), key(k), why));
            }
            if brokers.iter().any(|o| o.name == b.name) {
                return Err(ConfigIssue::at(
                    span,
                    key("name"),
                    format!("duplicate broker name {:?}", b.name),
                ));
            }
            brokers.push(b);
        }
        devices
            .iter_mut()
            .map(|d| device(d, &brokers).map(|s| Arc::new(s) as Arc<dyn DeviceSetup>))
            .collect()
    }

    fn runtime(&self) -> Box<dyn KindRuntime> {
        Box::new(Sessions::default())
    }

    fn reporting(&self, _setup: &dyn DeviceSetup) -> Reporting {
        Reporting::Pushed
    }

    fn discovers(&self, setup: &dyn DeviceSetup) -> bool {
        setup
            .as_any()
            .downcast_ref::<MqttSetup>()
            .is_some_and(|s| s.device.discover)
    }

    fn options(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("mqtt.broker", keys_of::<Broker>().to_vec()),
            ("mqtt.broker.tls", keys_of::<crate::config::Tls>().to_vec()),
            ("device.mqtt", keys_of::<DeviceOptions>().to_vec()),
            ("device.field.mqtt", keys_of::<FieldOptions>().to_vec()),
        ]
    }
}

/// Resolves one device.
fn device(d: &mut DeviceInput<'_>, brokers: &[Broker]) -> Result<MqttSetup, ConfigIssue> {
    let Some(node) = &d.options else {
        let msg = "an mqtt device needs a [device.mqtt] section naming its broker";
        return Err(match &d.span {
            Some(s) => ConfigIssue::at(s.clone(), d.key("mqtt"), msg),
            None => ConfigIssue::new(d.key("mqtt"), msg),
        });
    };
    let opts: DeviceOptions = node.parse()?;
    let at = |k: &str, msg: String| node.issue(k, msg);
    let Some(broker) = brokers.iter().find(|b| b.name == opts.broker) else {
        let known: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
        return Err(at(
            "broker",
            format!(
                "no [[mqtt.broker]] named {:?} (configured: {known:?})",
                opts.broker
            ),
        ));
    };
    // In a discovering entry every topic has one '+' naming the device; elsewhere a
    // command topic has none (a publish names one topic).
    let check = |k: &str, topic: &str, command: bool| -> Result<(), ConfigIssue> {
        let plus = check_filter(topic).map_err(|e| at(k, format!("{topic:?}: {e}")))?;
        if opts.discover && plus != 1 {
            return Err(at(
                k,
                format!(
                    "{topic:?}: in an entry with discover = true, every topic has exactly one \
                     '+' level, which names the device"
                ),
            ));
        }
        if command && (topic.contains('#') || (!opts.discover && plus > 0)) {
            return Err(at(
                k,
                format!("{topic:?}: a command topic names one topic, no wildcard"),
            ));
        }
        Ok(())
    };
    if let Some(t) = &opts.topic {
        check("topic", t, false)?;
    }
    if let Some(t) = &opts.availability_topic {
        check("availability_topic", t, false)?;
    }
    if let Some(t) = &opts.command_topic {
        check("command_topic", t, true)?;
    }
    if let Some(f) = opts.format.filter(|f| !mqtt_format(*f)) {
        return Err(at("format", not_mqtt(f)));
    }
    if opts
        .command_format
        .is_some_and(|f| !matches!(f, Format::Plain | Format::Json))
    {
        return Err(at(
            "command_format",
            "commands are written \"plain\" or \"json\"".into(),
        ));
    }
    if opts.command_qos > 2 {
        return Err(at(
            "command_qos",
            format!("QoS is 0, 1 or 2, not {}", opts.command_qos),
        ));
    }
    if opts.discover && opts.max_devices == 0 {
        return Err(at("max_devices", "at least 1".into()));
    }
    if !opts.id_prefix.is_empty() {
        crate::localpart::map_segment(&opts.id_prefix, "")
            .ok()
            .filter(|m| *m == opts.id_prefix)
            .ok_or_else(|| {
                at(
                    "id_prefix",
                    "use lowercase letters, digits, '-', '_' or '.'".into(),
                )
            })?;
    }
    let mut per_written: Vec<FieldOptions> = Vec::with_capacity(d.written.len());
    for w in &d.written {
        if let Some((_, span)) = &w.stride {
            return Err(ConfigIssue::at(
                span.clone(),
                w.key("stride"),
                "stride applies to fields with an address (modbus), not to mqtt fields",
            ));
        }
        let o: FieldOptions = match &w.options {
            Some(o) => o.parse()?,
            None => FieldOptions::default(),
        };
        let issue = |k: &str, msg: String| match &w.options {
            Some(o) => o.issue(k, msg),
            None => ConfigIssue::new(w.key("mqtt"), msg),
        };
        if let Some(t) = &o.topic {
            check_filter(t).map_err(|e| issue("topic", format!("{t:?}: {e}")))?;
            if opts.discover && check_filter(t) != Ok(1) {
                return Err(issue(
                    "topic",
                    format!("{t:?}: in an entry with discover = true, every topic has one '+'"),
                ));
            }
        }
        if let Some(t) = &o.command_topic {
            let plus =
                check_filter(t).map_err(|e| issue("command_topic", format!("{t:?}: {e}")))?;
            if t.contains('#') || plus != usize::from(opts.discover) {
                return Err(issue(
                    "command_topic",
                    format!("{t:?}: a command topic names one topic (with the device's '+' in a discovering entry)"),
                ));
            }
        }
        if let Some(f) = o.format.filter(|f| !mqtt_format(*f)) {
            return Err(issue("format", not_mqtt(f)));
        }
        if o.command_format
            .is_some_and(|f| !matches!(f, Format::Plain | Format::Json))
        {
            return Err(issue(
                "command_format",
                "commands are written \"plain\" or \"json\"".into(),
            ));
        }
        if o.payload_on.is_some() != o.payload_off.is_some() {
            return Err(issue(
                "payload_on",
                "give both payload_on and payload_off, or neither".into(),
            ));
        }
        per_written.push(o);
    }

    // Topics in order of first use, each with the fields it feeds.
    struct Pending {
        filter: String,
        format: Option<Format>,
        fields: Vec<usize>,
    }
    let mut topics: Vec<Pending> = Vec::new();
    let mut sources = Vec::with_capacity(d.fields.len());
    let mut commands = Vec::with_capacity(d.fields.len());
    for (idx, f) in d.fields.iter().enumerate() {
        let o = &per_written[f.written];
        let w = &d.written[f.written];
        let Some(topic) = o.topic.as_ref().or(opts.topic.as_ref()) else {
            let msg = format!(
                "field {:?} has no topic: give [device.mqtt] topic, or the field's mqtt.topic",
                f.spec.name
            );
            return Err(match &w.name_span {
                Some(s) => ConfigIssue::at(s.clone(), w.key("mqtt"), msg),
                None => ConfigIssue::new(w.key("mqtt"), msg),
            });
        };
        let own = o.topic.is_some();
        let format = if own { o.format } else { opts.format };
        let t = match topics.iter().position(|p| p.filter == *topic) {
            Some(t) => t,
            None => {
                topics.push(Pending {
                    filter: topic.clone(),
                    format: None,
                    fields: vec![],
                });
                topics.len() - 1
            }
        };
        let p = &mut topics[t];
        match (p.format, format) {
            (Some(a), Some(b)) if a != b => {
                return Err(ConfigIssue::new(
                    w.key("mqtt.format"),
                    format!("topic {topic:?} is read as {a:?} by another field, not {b:?}"),
                ))
            }
            (None, Some(b)) => p.format = Some(b),
            _ => {}
        }
        p.fields.push(idx);
        sources.push(Some(t));
        commands.push(if f.spec.writable {
            let Some(ct) = o.command_topic.as_ref().or(opts.command_topic.as_ref()) else {
                let msg = format!(
                    "writable field {:?} needs a command topic: [device.mqtt] command_topic, \
                     or the field's mqtt.command_topic",
                    f.spec.name
                );
                return Err(match &w.name_span {
                    Some(s) => ConfigIssue::at(s.clone(), w.key("mqtt"), msg),
                    None => ConfigIssue::new(w.key("mqtt"), msg),
                });
            };
            // A field with a command topic of its own is written as it says, not as the
            // device's other commands are.
            let format = match (o.command_format, &o.command_topic) {
                (Some(f), _) => Some(f),
                (None, Some(_)) => None,
                (None, None) => opts.command_format,
            };
            let json = match format {
                Some(Format::Json) => true,
                Some(_) => false,
                None => o.command_pointer.is_some(),
            };
            let template = if json {
                let text = o
                    .command_pointer
                    .clone()
                    .unwrap_or_else(|| default_pointer(&f.spec.name));
                Template::Json {
                    pointer: Pointer::parse(&text).map_err(|e| {
                        ConfigIssue::new(w.key("mqtt.command_pointer"), format!("{text:?}: {e}"))
                    })?,
                }
            } else {
                Template::Plain
            };
            Some(Command {
                topic: ct.clone(),
                template,
                bools: o.payload_on.clone().zip(o.payload_off.clone()),
                confirm: o.confirm,
            })
        } else {
            if o.confirm || o.command_topic.is_some() {
                return Err(ConfigIssue::new(
                    w.key("mqtt"),
                    format!(
                        "field {:?} is not writable: command_topic and confirm apply to \
                         writable fields",
                        f.spec.name
                    ),
                ));
            }
            None
        });
    }
    let timestamp = match &opts.timestamp_pointer {
        Some(text) => Some(TimestampSpec {
            pointer: Pointer::parse(text)
                .map_err(|e| at("timestamp_pointer", format!("{text:?}: {e}")))?,
            unit: opts.timestamp_unit,
        }),
        None => None,
    };
    let mut state = Vec::with_capacity(topics.len());
    for p in topics {
        // A topic with pointers is JSON, with SenML names SenML; else the whole payload.
        let format = p.format.unwrap_or_else(|| {
            let any = |g: &dyn Fn(&FieldOptions) -> bool| {
                p.fields
                    .iter()
                    .any(|i| g(&per_written[d.fields[*i].written]))
            };
            if any(&|o| o.pointer.is_some()) {
                Format::Json
            } else if any(&|o| o.senml_name.is_some()) {
                Format::Senml
            } else {
                Format::Plain
            }
        });
        let mut fields = Vec::with_capacity(p.fields.len());
        for i in &p.fields {
            let f = &d.fields[*i];
            let w = &d.written[f.written];
            let o = &per_written[f.written];
            let locator = Locator::for_field(
                format,
                &f.spec.name,
                o.pointer.as_deref(),
                o.senml_name.as_deref(),
            )
            .map_err(|(text, e)| {
                ConfigIssue::new(w.key("mqtt.pointer"), format!("{text:?}: {e}"))
            })?;
            fields.push(FieldDecoder {
                kind: f.spec.kind,
                locator,
                labels: f.spec.values.clone(),
            });
        }
        let decoder = TopicDecoder {
            format,
            timestamp: if format == Format::Json {
                timestamp.clone()
            } else {
                None
            },
            fields,
        };
        decoder
            .validate()
            .map_err(|e| at("topic", format!("topic {:?}: {e}", p.filter)))?;
        state.push(StateTopic {
            filter: p.filter,
            decoder,
            fields: p.fields,
        });
    }
    let availability = match &opts.availability_topic {
        Some(t) => Some((
            t.clone(),
            Availability {
                pointer: match &opts.availability_pointer {
                    Some(text) => Some(
                        Pointer::parse(text)
                            .map_err(|e| at("availability_pointer", format!("{text:?}: {e}")))?,
                    ),
                    None => None,
                },
                online: opts.payload_online.clone(),
                offline: opts.payload_offline.clone(),
            },
        )),
        None => None,
    };
    Ok(MqttSetup {
        broker: broker.clone(),
        device: opts,
        topics: state,
        availability,
        commands,
        sources,
    })
}

/// Whether the MQTT adapter reads payloads of `format`: CBOR and SenML CBOR, which the
/// payload codecs know for CoAP, are not offered here (yet).
fn mqtt_format(format: Format) -> bool {
    matches!(format, Format::Plain | Format::Json | Format::Senml)
}

fn not_mqtt(format: Format) -> String {
    format!("MQTT payloads are \"plain\", \"json\" or \"senml\", not {format}")
}

/// The broker sessions in use.
#[derive(Default)]
struct Sessions {
    running: HashMap<String, (Broker, Arc<Shared>, CancellationToken)>,
    tasks: Vec<JoinHandle<()>>,
}

impl KindRuntime for Sessions {
    fn build(
        &mut self,
        device: &DeviceId,
        fields: &Arc<[FieldSpec]>,
        setup: &dyn DeviceSetup,
        shutdown: &CancellationToken,
    ) -> Result<Box<dyn Adapter>, String> {
        let m = setup
            .as_any()
            .downcast_ref::<MqttSetup>()
            .ok_or_else(|| wrong_setup("mqtt", setup))?;
        let b = &m.broker;
        let reuse = self
            .running
            .get(&b.name)
            .filter(|(cfg, _, cancel)| cfg == b && !cancel.is_cancelled())
            .map(|(_, s, _)| s.clone());
        let shared = match reuse {
            Some(s) => s,
            None => {
                let cancel = shutdown.child_token();
                let (shared, task) = session::start(b.clone(), cancel.clone());
                self.tasks.retain(|t| !t.is_finished());
                self.tasks.push(task);
                // A session of the same name with other settings stops once the devices
                // on it have been reconfigured (they restart onto the new one).
                if let Some((_, _, old)) = self
                    .running
                    .insert(b.name.clone(), (b.clone(), shared.clone(), cancel))
                {
                    old.cancel();
                }
                shared
            }
        };
        Ok(Box::new(MqttAdapter {
            id: device.clone(),
            setup: Arc::new(m.clone()),
            fields: fields.clone(),
            shared,
        }))
    }

    /// Called with every device of the configuration once they have all been started (at
    /// start-up and after each reload): sessions connect only then.
    fn retain(&mut self, setups: &[&dyn DeviceSetup]) {
        let used: Vec<&Broker> = setups
            .iter()
            .filter_map(|s| s.as_any().downcast_ref::<MqttSetup>())
            .map(|m| &m.broker)
            .collect();
        self.running.retain(|_, (cfg, shared, cancel)| {
            let keep = used.iter().any(|u| *u == cfg);
            if keep {
                // Every device of the configuration has been started: connect.
                shared.release();
            } else {
                cancel.cancel();
            }
            keep
        });
    }

    fn join(self: Box<Self>) -> BoxFuture<'static, ()> {
        let Sessions { running, tasks } = *self;
        for (_, _, cancel) in running.values() {
            cancel.cancel();
        }
        async move {
            for t in tasks {
                let _ = t.await;
            }
        }
        .boxed()
    }
}
