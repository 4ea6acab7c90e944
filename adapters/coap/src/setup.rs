//! A CoAP device's resolved configuration: its server, the resources it reads with a
//! decoder per payload format, and how each writable field is written.

use fieldgate_payload::{Format, Template, TopicDecoder};

use crate::address::Address;
use crate::config::{CommandMethod, DeviceOptions};

/// What the `coap` kind made of one `[[device]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CoapSetup {
    /// `[device.coap]`.
    pub device: DeviceOptions,
    /// The server.
    pub address: Address,
    /// The resources read, each feeding one or more fields.
    pub resources: Vec<Resource>,
    /// Per catalogue field, in catalogue order: how a write is sent, if writable.
    pub commands: Vec<Option<Command>>,
}

/// One resource read with GET (or observed).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its path segments.
    pub path: Vec<String>,
    /// The Content-Format asked for with Accept, if any.
    pub accept: Option<u16>,
    /// The catalogue index of each field it feeds, in the decoders' field order.
    pub fields: Vec<usize>,
    /// A decoder per payload format, chosen by each response's Content-Format.
    pub decoders: Vec<(Format, TopicDecoder)>,
}

impl Resource {
    /// The decoder for a response of Content-Format `cf` (`None`: the one asked for with
    /// Accept, else plain text); `Err` names a format no decoder reads.
    pub fn decoder(&self, cf: Option<u16>) -> Result<&TopicDecoder, String> {
        let format = match cf {
            Some(cf) => fieldgate_payload::format_for_content_format(cf)
                .ok_or_else(|| format!("Content-Format {cf} is not one the gateway reads"))?,
            None => self
                .accept
                .and_then(fieldgate_payload::format_for_content_format)
                .unwrap_or(Format::Plain),
        };
        self.decoders
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, d)| d)
            .ok_or_else(|| format!("no decoder for {format}"))
    }

    /// The path as written (`/a/b`).
    pub fn display(&self) -> String {
        format!("/{}", self.path.join("/"))
    }
}

/// How a writable field is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The resource written.
    pub path: Vec<String>,
    /// PUT or POST.
    pub method: CommandMethod,
    /// How the value is encoded.
    pub template: Template,
    /// Its Content-Format option.
    pub content_format: u16,
}
