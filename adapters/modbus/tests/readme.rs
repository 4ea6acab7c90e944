//! The README's TOML blocks parse and validate, their fields' declared types match what
//! the Modbus types imply, and the request counts the README states are the planner's.

use fieldgate_api::FieldType;
use fieldgate_modbus::{plan, ModbusConnection, ModbusDevice, ModbusField};
use serde::Deserialize;

/// The shape the gateway embeds the adapter's sections in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Root {
    modbus: Section,
    #[serde(rename = "device")]
    devices: Vec<Device>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    connection: Vec<ModbusConnection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Device {
    id: String,
    #[allow(dead_code)]
    name: Option<String>,
    adapter: String,
    modbus: ModbusDevice,
    #[serde(rename = "field")]
    fields: Vec<Field>,
}

/// The gateway's generic field options, plus the Modbus section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    #[serde(rename = "type")]
    kind: FieldType,
    #[allow(dead_code)]
    unit: Option<String>,
    decimals: Option<u8>,
    #[serde(default)]
    writable: bool,
    min: Option<f64>,
    max: Option<f64>,
    modbus: ModbusField,
}

fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Parses and validates one block; returns (device id, requests per cycle, fields).
fn check(block: &str) -> Vec<(String, usize, usize)> {
    let root: Root = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    for c in &root.modbus.connection {
        c.validate()
            .unwrap_or_else(|e| panic!("connection {}: {e}", c.name));
    }
    root.devices
        .iter()
        .map(|d| {
            assert_eq!(d.adapter, "modbus");
            let conn = root
                .modbus
                .connection
                .iter()
                .find(|c| c.name == d.modbus.connection)
                .unwrap_or_else(|| panic!("{}: no connection", d.id));
            d.modbus
                .validate_with(conn)
                .unwrap_or_else(|e| panic!("{}: {e}", d.id));
            let spans: Vec<_> = d
                .fields
                .iter()
                .map(|f| {
                    let p = f
                        .modbus
                        .resolve(&d.modbus, f.writable, f.decimals)
                        .unwrap_or_else(|e| panic!("{}.{}: {e}", d.id, f.name));
                    assert_eq!(p.field_type(), f.kind, "{}.{}", d.id, f.name);
                    let spec = p.field_spec(f.name.as_str());
                    if let (Some(min), Some(lo)) = (f.min, spec.min) {
                        assert!(min >= lo, "{}.{}", d.id, f.name);
                    }
                    if let (Some(max), Some(hi)) = (f.max, spec.max) {
                        assert!(max <= hi, "{}.{}", d.id, f.name);
                    }
                    p.span()
                })
                .collect();
            let p = plan(&spans, &d.modbus.limits()).unwrap();
            (d.id.clone(), p.requests_per_cycle(), p.naive_requests())
        })
        .collect()
}

#[test]
fn readme_examples_are_valid_and_plan_as_described() {
    let blocks = toml_blocks(include_str!("../README.md"));
    assert_eq!(blocks.len(), 3, "the reference and two examples");
    let mut devices = Vec::new();
    for b in &blocks {
        devices.extend(check(b));
    }
    assert_eq!(
        devices,
        [
            ("plc1".to_owned(), 1, 1),
            ("meter1".to_owned(), 4, 6),
            ("boiler".to_owned(), 3, 6),
        ]
    );
}
