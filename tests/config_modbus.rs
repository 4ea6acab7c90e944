//! A whole configuration with Modbus devices, read by the core and resolved by the Modbus
//! adapter kind through the registry.
#![cfg(feature = "modbus")]

use std::path::Path;
use std::sync::Arc;

use fieldgate::config::{parse, ConfigError, Located};
use fieldgate_modbus::ModbusSetup;

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
    let m = d
        .setup
        .as_any()
        .downcast_ref::<ModbusSetup>()
        .expect("a modbus setup");
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
