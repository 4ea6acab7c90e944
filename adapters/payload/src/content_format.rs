//! CoAP Content-Format numbers (RFC 7252 §12.3, IANA "CoAP Content-Formats") of the
//! payload formats, for a CoAP adapter's Content-Format and Accept options.

use crate::decode::Format;
use crate::encode::Template;

/// `text/plain; charset=utf-8`.
pub const TEXT_PLAIN: u16 = 0;
/// `application/json`.
pub const JSON: u16 = 50;
/// `application/cbor`.
pub const CBOR: u16 = 60;
/// `application/senml+json`.
pub const SENML_JSON: u16 = 110;
/// `application/sensml+json`: a SenML stream, read as a pack.
pub const SENSML_JSON: u16 = 111;
/// `application/senml+cbor`.
pub const SENML_CBOR: u16 = 112;
/// `application/sensml+cbor`: a SenML stream, read as a pack.
pub const SENSML_CBOR: u16 = 113;

/// The format a payload of Content-Format `cf` is read as, if it is one of them: 0
/// (`text/plain; charset=utf-8`) plain, 50 JSON, 60 CBOR, 110 SenML JSON, 112 SenML CBOR;
/// 111 and 113 (SensML, the same records as a stream) as SenML JSON and SenML CBOR.
pub fn format_for_content_format(cf: u16) -> Option<Format> {
    Some(match cf {
        TEXT_PLAIN => Format::Plain,
        JSON => Format::Json,
        CBOR => Format::Cbor,
        SENML_JSON | SENSML_JSON => Format::Senml,
        SENML_CBOR | SENSML_CBOR => Format::SenmlCbor,
        _ => return None,
    })
}

/// The Content-Format of `format`, to ask for it (Accept) or to label it: the inverse of
/// [`format_for_content_format`] (SenML as 110 and 112, not as SensML).
pub fn content_format_for(format: Format) -> u16 {
    match format {
        Format::Plain => TEXT_PLAIN,
        Format::Json => JSON,
        Format::Cbor => CBOR,
        Format::Senml => SENML_JSON,
        Format::SenmlCbor => SENML_CBOR,
    }
}

impl Template {
    /// The Content-Format of the commands this template writes: 0 (plain), 50 (JSON) or
    /// 60 (CBOR).
    pub fn content_format(&self) -> u16 {
        match self {
            Template::Plain => TEXT_PLAIN,
            Template::Json { .. } => JSON,
            Template::Cbor { .. } => CBOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointer::Pointer;

    #[test]
    fn content_formats_map_both_ways() {
        for (cf, format) in [
            (0, Format::Plain),
            (50, Format::Json),
            (60, Format::Cbor),
            (110, Format::Senml),
            (112, Format::SenmlCbor),
        ] {
            assert_eq!(format_for_content_format(cf), Some(format), "{cf}");
            assert_eq!(content_format_for(format), cf, "{format}");
        }
        assert_eq!(format_for_content_format(111), Some(Format::Senml));
        assert_eq!(format_for_content_format(113), Some(Format::SenmlCbor));
        // application/link-format, xml, octet-stream, exi, senml-exi, unassigned.
        for cf in [40, 41, 42, 47, 61, 62, 63, 114, 310, 320, 11542, u16::MAX] {
            assert_eq!(format_for_content_format(cf), None, "{cf}");
        }
        assert_eq!(Template::Plain.content_format(), 0);
        assert_eq!(
            Template::Json {
                pointer: Pointer::root()
            }
            .content_format(),
            50
        );
        assert_eq!(
            Template::Cbor {
                path: Pointer::root()
            }
            .content_format(),
            60
        );
    }
}
