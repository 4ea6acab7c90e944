//! The `coap` kind: `[device.coap]` and each field's `coap = { ... }` resolved into a
//! setup per device; the UDP endpoints shared by every device, kept across reloads.

use std::sync::Arc;

use fieldgate_api::config::{keys_of, ConfigIssue, ConfigNode};
use fieldgate_api::{AdapterKind, DeviceInput, DeviceSetup, KindRuntime, Reporting};
use fieldgate_payload::{
    content_format_for, default_pointer, FieldDecoder, Format, Locator, Pointer, Template,
    TopicDecoder,
};

use crate::config::{DeviceOptions, FieldOptions, FormatName};
use crate::setup::{CoapSetup, Command, Resource};

/// The `coap` adapter kind, for the core's registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoapKind;

/// The payload format a configured name stands for.
pub fn format_of(name: FormatName) -> Format {
    match name {
        FormatName::Plain => Format::Plain,
        FormatName::Json => Format::Json,
        FormatName::Cbor => Format::Cbor,
        FormatName::Senml => Format::Senml,
        FormatName::SenmlCbor => Format::SenmlCbor,
    }
}

/// A resource path as written (`/sensors/temp`) split into its segments.
pub fn path_segments(path: &str) -> Result<Vec<String>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?}: a path begins with '/'"))?;
    if path.contains(['?', '#']) {
        return Err(format!("{path:?}: a path holds no query or fragment"));
    }
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(s) = segments.iter().find(|s| s.len() > 255) {
        return Err(format!(
            "a path segment is at most 255 bytes ({} here)",
            s.len()
        ));
    }
    Ok(segments)
}

impl AdapterKind for CoapKind {
    fn name(&self) -> &'static str {
        "coap"
    }

    fn configure(
        &self,
        section: Option<ConfigNode<'_>>,
        devices: &mut [DeviceInput<'_>],
    ) -> Result<Vec<Arc<dyn DeviceSetup>>, ConfigIssue> {
        if let Some(s) = section {
            return Err(s.issue(
                "",
                "the coap adapter has no top-level section: each device names its server",
            ));
        }
        devices
            .iter_mut()
            .map(|d| device(d).map(|s| Arc::new(s) as Arc<dyn DeviceSetup>))
            .collect()
    }

    fn runtime(&self) -> Box<dyn KindRuntime> {
        Box::new(crate::runtime::Endpoints::default())
    }

    fn reporting(&self, setup: &dyn DeviceSetup) -> Reporting {
        match setup.as_any().downcast_ref::<CoapSetup>() {
            Some(s) if s.device.observe => Reporting::Pushed,
            Some(s) => Reporting::Polled(s.device.poll.0),
            None => Reporting::OnRequest,
        }
    }

    fn options(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("device.coap", keys_of::<DeviceOptions>().to_vec()),
            ("device.field.coap", keys_of::<FieldOptions>().to_vec()),
        ]
    }
}

/// Resolves one device.
fn device(d: &mut DeviceInput<'_>) -> Result<CoapSetup, ConfigIssue> {
    let Some(node) = &d.options else {
        let msg = "a coap device needs a [device.coap] section with its address";
        return Err(match &d.span {
            Some(s) => ConfigIssue::at(s.clone(), d.key("coap"), msg),
            None => ConfigIssue::new(d.key("coap"), msg),
        });
    };
    let opts: DeviceOptions = node.parse()?;
    if let Err((k, why)) = opts.validate() {
        return Err(node.issue(k, why));
    }
    let address = crate::address::parse(&opts.address).map_err(|e| node.issue("address", e))?;
    let mut per_written = Vec::with_capacity(d.written.len());
    for w in &d.written {
        if let Some((_, span)) = &w.stride {
            return Err(ConfigIssue::at(
                span.clone(),
                w.key("stride"),
                "stride applies to fields with an address (modbus), not to coap fields",
            ));
        }
        let o: FieldOptions = match &w.options {
            Some(o) => o.parse()?,
            None => FieldOptions::default(),
        };
        per_written.push(o);
    }
    let mut resources: Vec<Resource> = Vec::new();
    let mut commands = Vec::with_capacity(d.fields.len());
    for (idx, f) in d.fields.iter().enumerate() {
        let o = &per_written[f.written];
        let w = &d.written[f.written];
        let issue = |k: &str, msg: String| match &w.options {
            Some(node) => node.issue(k, msg),
            None => ConfigIssue::new(w.key("coap"), msg),
        };
        let Some(path) = &o.path else {
            return Err(issue(
                "path",
                format!("field {:?} needs coap = {{ path = \"/...\" }}", f.spec.name),
            ));
        };
        let segments = path_segments(path).map_err(|e| issue("path", e))?;
        let accept = o
            .accept
            .or(opts.accept)
            .map(|a| content_format_for(format_of(a)));
        let r = match resources.iter().position(|r| r.path == segments) {
            Some(r) => {
                if resources[r].accept != accept {
                    return Err(issue(
                        "accept",
                        format!("the fields of {path} ask for different formats with accept"),
                    ));
                }
                r
            }
            None => {
                resources.push(Resource {
                    path: segments.clone(),
                    accept,
                    fields: vec![],
                    decoders: vec![],
                });
                resources.len() - 1
            }
        };
        resources[r].fields.push(idx);
        commands.push(if f.spec.writable {
            let format = o.command_format.map(format_of).unwrap_or(Format::Plain);
            let pointer = |text: &Option<String>| {
                let t = text
                    .clone()
                    .unwrap_or_else(|| default_pointer(&f.spec.name));
                Pointer::parse(&t).map_err(|e| issue("command_pointer", format!("{t:?}: {e}")))
            };
            let template = match format {
                Format::Plain => Template::Plain,
                Format::Json => Template::Json {
                    pointer: pointer(&o.command_pointer)?,
                },
                Format::Cbor => Template::Cbor {
                    path: pointer(&o.command_pointer)?,
                },
                _ => {
                    return Err(issue(
                        "command_format",
                        "commands are written \"plain\", \"json\" or \"cbor\"".into(),
                    ))
                }
            };
            let cpath = match &o.command_path {
                Some(p) => path_segments(p).map_err(|e| issue("command_path", e))?,
                None => segments,
            };
            Some(Command {
                path: cpath,
                method: o.method.unwrap_or_default(),
                template,
                content_format: content_format_for(format),
            })
        } else {
            if o.command_path.is_some() || o.method.is_some() || o.command_format.is_some() {
                return Err(issue(
                    "command_path",
                    format!(
                        "field {:?} is not writable: command_path, method and command_format \
                         apply to writable fields",
                        f.spec.name
                    ),
                ));
            }
            None
        });
    }
    // Every resource gets a decoder per format: the server says which it sent.
    for r in &mut resources {
        for format in [
            Format::Plain,
            Format::Json,
            Format::Cbor,
            Format::Senml,
            Format::SenmlCbor,
        ] {
            let mut fields = Vec::with_capacity(r.fields.len());
            for i in &r.fields {
                let f = &d.fields[*i];
                let o = &per_written[f.written];
                let w = &d.written[f.written];
                let locator = Locator::for_field(
                    format,
                    &f.spec.name,
                    o.pointer.as_deref(),
                    o.senml_name.as_deref(),
                )
                .map_err(|(t, e)| ConfigIssue::new(w.key("coap.pointer"), format!("{t:?}: {e}")))?;
                fields.push(FieldDecoder {
                    kind: f.spec.kind,
                    locator,
                    labels: f.spec.values.clone(),
                });
            }
            r.decoders.push((
                format,
                TopicDecoder {
                    format,
                    timestamp: None,
                    fields,
                },
            ));
        }
    }
    Ok(CoapSetup {
        device: opts,
        address,
        resources,
        commands,
    })
}
