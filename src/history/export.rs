//! `fieldgate history`: stored samples as CSV (`timestamp,device,field,value`) or JSON
//! lines, read through a read-only connection (WAL: neither blocks nor is blocked by a
//! running gateway).

use std::io::Write;
use std::path::PathBuf;

use super::store::{from_millis, millis, Reader, Stored};
use crate::xmpp::payload::xsd::XsDateTime;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `timestamp,device,field,value`, a header line first.
    Csv,
    /// One JSON object per line: `{"timestamp", "device", "field", "value"}`.
    Json,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Query {
    /// The store.
    pub file: PathBuf,
    /// The device id.
    pub device: String,
    /// One field, or all of the device's.
    pub field: Option<String>,
    /// RFC 3339 bounds.
    pub from: Option<String>,
    /// See `from`.
    pub to: Option<String>,
    /// The format.
    pub format: Format,
}

/// Export errors, in words.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A bound is not RFC 3339.
    #[error("--{which} {text:?} is not an RFC 3339 time (e.g. 2026-11-29T00:00:00Z)")]
    Time {
        /// `from` or `to`.
        which: &'static str,
        /// As given.
        text: String,
    },
    /// The store.
    #[error("{0}")]
    Store(#[from] super::store::StoreError),
    /// Writing the output.
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

fn bound(which: &'static str, t: &Option<String>, default: i64) -> Result<i64, ExportError> {
    match t {
        None => Ok(default),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|d| d.timestamp_millis())
            .map_err(|_| ExportError::Time {
                which,
                text: text.clone(),
            }),
    }
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Writes the samples to `out`; how many.
pub fn export(q: &Query, out: &mut dyn Write) -> Result<u64, ExportError> {
    let from = bound("from", &q.from, i64::MIN)?;
    let to = bound("to", &q.to, millis(std::time::SystemTime::now()))?;
    let mut out = std::io::BufWriter::new(out);
    if q.format == Format::Csv {
        writeln!(out, "timestamp,device,field,value")?;
    }
    let Some(reader) = Reader::open(&q.file)? else {
        out.flush()?;
        return Ok(0); // nothing was ever kept
    };
    let fields: Vec<(i64, String)> = reader
        .fields_of(&q.device)?
        .into_iter()
        .filter(|(_, f)| q.field.as_ref().is_none_or(|w| w == f))
        .collect();
    let ids: Vec<i64> = fields.iter().map(|(id, _)| *id).collect();
    let mut err = None;
    let n = reader.merged(&ids, from, to, |k, t, v| {
        let stamp = XsDateTime::from_system_time(from_millis(t)).to_string();
        let field = &fields[k].1;
        let r = match q.format {
            Format::Csv => {
                let value = match &v {
                    Stored::Int(i) => i.to_string(),
                    Stored::Real(f) => f.to_string(),
                    Stored::Text(s) => csv_quote(s),
                };
                writeln!(
                    out,
                    "{stamp},{},{},{value}",
                    csv_quote(&q.device),
                    csv_quote(field)
                )
            }
            Format::Json => {
                let value = match v {
                    Stored::Int(i) => serde_json::Value::from(i),
                    Stored::Real(f) => serde_json::Value::from(f),
                    Stored::Text(s) => serde_json::Value::from(s),
                };
                let line = serde_json::json!({
                    "timestamp": stamp, "device": q.device, "field": field, "value": value,
                });
                writeln!(out, "{line}")
            }
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::store::{Sample, Store};
    use super::*;

    #[test]
    fn csv_and_json_in_time_order_within_the_bounds() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("h.db");
        let (mut s, _) = Store::open(&file).unwrap();
        let a = s.series_id("pump", "p").unwrap();
        let b = s.series_id("pump", "label, \"x\"").unwrap();
        let t0 = 1_795_000_000_000;
        s.write(&[
            Sample {
                series: a,
                t: t0,
                value: Stored::Real(1.5),
            },
            Sample {
                series: b,
                t: t0 + 500,
                value: Stored::Text("on".into()),
            },
            Sample {
                series: a,
                t: t0 + 1000,
                value: Stored::Int(2),
            },
            Sample {
                series: a,
                t: t0 + 9000,
                value: Stored::Int(3),
            },
        ])
        .unwrap();
        let mut q = Query {
            file: file.clone(),
            device: "pump".into(),
            field: None,
            from: None,
            to: Some("2026-11-18T11:06:41Z".into()),
            format: Format::Csv,
        };
        let mut out = Vec::new();
        assert_eq!(export(&q, &mut out).unwrap(), 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "timestamp,device,field,value\n\
             2026-11-18T11:06:40Z,pump,p,1.5\n\
             2026-11-18T11:06:40.500Z,pump,\"label, \"\"x\"\"\",on\n\
             2026-11-18T11:06:41Z,pump,p,2\n"
        );
        q.format = Format::Json;
        q.field = Some("p".into());
        q.from = Some("2026-11-18T11:06:41Z".into());
        q.to = None;
        let mut out = Vec::new();
        export(&q, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["value"], 3);
        assert_eq!(lines[0]["timestamp"], "2026-11-18T11:06:41Z");
        q.from = Some("yesterday".into());
        assert!(export(&q, &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
        // No store yet: the header alone.
        q.file = d.path().join("none.db");
        q.from = None;
        q.format = Format::Csv;
        let mut out = Vec::new();
        assert_eq!(export(&q, &mut out).unwrap(), 0);
        assert_eq!(out, b"timestamp,device,field,value\n");
    }
}
