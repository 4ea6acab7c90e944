//! Configuration: parsing from TOML, defaults, validation messages, and the field
//! catalogue entries derived from Modbus types.

use std::time::Duration;

use fieldgate_api::{FieldType, HumanDuration};
use fieldgate_modbus::{
    plan, ConfigError, DataType, Endpoint, ModbusConnection, ModbusDevice, ModbusField, Parity,
    RegisterKind, SerialSettings, Transport,
};
use serde::Deserialize;

mod common;
use common::Rng;

fn conn(text: &str) -> Result<ModbusConnection, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn endpoint(text: &str) -> Result<Endpoint, String> {
    conn(text)?.endpoint().map_err(|e| e.to_string())
}

#[test]
fn tcp_connections_resolve_with_defaults() {
    let c = conn("name = \"plc\"\ntransport = \"tcp\"\naddress = \"10.0.0.5:1502\"").unwrap();
    assert_eq!(c.timeout, HumanDuration::from_secs(1));
    assert_eq!(c.reconnect_min, HumanDuration::from_millis(500));
    assert_eq!(c.reconnect_max, HumanDuration::from_secs(30));
    assert_eq!(
        c,
        ModbusConnection {
            address: Some("10.0.0.5:1502".into()),
            ..ModbusConnection::new("plc", Transport::Tcp)
        }
    );
    assert_eq!(
        c.endpoint(),
        Ok(Endpoint::Tcp {
            host: "10.0.0.5".into(),
            port: 1502
        })
    );
    let tcp = |a: &str| {
        endpoint(&format!(
            "name = \"x\"\ntransport = \"tcp\"\naddress = {a:?}"
        ))
    };
    let ok = |host: &str, port| {
        Ok(Endpoint::Tcp {
            host: host.into(),
            port,
        })
    };
    assert_eq!(tcp("meter.local"), ok("meter.local", 502));
    assert_eq!(tcp("[::1]:1502"), ok("::1", 1502));
    assert_eq!(tcp("[fe80::1]"), ok("fe80::1", 502));
    assert_eq!(tcp("fe80::1"), ok("fe80::1", 502));
    for (bad, why) in [
        ("plc:0", "port \"0\" is not a number in 1..65535"),
        ("plc:70000", "port \"70000\" is not a number"),
        (":502", "the host is empty"),
        ("", "the host is empty"),
        ("tcp://plc:502", "no scheme"),
        ("[::1", "closing ']'"),
        ("[::1]x", "unexpected"),
    ] {
        let err = tcp(bad).unwrap_err();
        assert!(
            err.starts_with(&format!("invalid address {bad:?}: ")) && err.contains(why),
            "{bad}: {err}"
        );
    }
    let rot = endpoint(
        "name = \"gw\"\ntransport = \"rtu-over-tcp\"\naddress = \"gw:4001\"\nframe_delay = \"5ms\"",
    );
    assert_eq!(
        rot,
        Ok(Endpoint::RtuOverTcp {
            host: "gw".into(),
            port: 4001,
            frame_delay: Duration::from_millis(5)
        })
    );
}

#[test]
fn rtu_connections_resolve_with_defaults_and_frame_gaps() {
    let e = endpoint("name = \"bus\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB0\"").unwrap();
    let Endpoint::Rtu(s) = e else { panic!("{e:?}") };
    assert_eq!(
        (s.path.as_str(), s.baud, s.data_bits, s.parity, s.stop_bits),
        ("/dev/ttyUSB0", 9600, 8, Parity::None, 1)
    );
    // 8N1 is 10 bits per character: 3.5 characters at 9600 baud are 3.6458 ms.
    assert_eq!(s.frame_delay, Duration::from_nanos(3_645_833));
    let fast = SerialSettings {
        baud: 115_200,
        ..s.clone()
    };
    assert_eq!(fast.min_frame_gap(), Duration::from_micros(1750));
    let e = endpoint(
        "name = \"bus\"\ntransport = \"rtu\"\nport = \"/dev/ttyS1\"\nbaud = 19200\nparity = \"even\"\nstop_bits = 2\nframe_delay = \"20ms\"",
    )
    .unwrap();
    let Endpoint::Rtu(s) = e else { panic!() };
    assert_eq!((s.baud, s.parity, s.stop_bits), (19200, Parity::Even, 2));
    assert_eq!(s.frame_delay, Duration::from_millis(20));
    // A configured delay below 3.5 characters is raised to it.
    let e = endpoint("name = \"b\"\ntransport = \"rtu\"\nport = \"/dev/x\"\nframe_delay = \"1ms\"");
    let Ok(Endpoint::Rtu(s)) = e else { panic!() };
    assert_eq!(s.frame_delay, Duration::from_nanos(3_645_833));
}

#[test]
fn connection_errors_name_the_option() {
    let cases = [
        ("name = \"\"\ntransport = \"tcp\"\naddress = \"a\"", "name", "connection name must not be empty"),
        ("name = \"a\"\ntransport = \"tcp\"", "address", "transport \"tcp\" needs address: \"host:port\" of the device or gateway"),
        ("name = \"a\"\ntransport = \"rtu-over-tcp\"", "address", "transport \"rtu-over-tcp\" needs address"),
        ("name = \"a\"\ntransport = \"rtu\"", "port", "transport \"rtu\" needs port: the serial device, e.g. \"/dev/ttyUSB0\""),
        ("name = \"a\"\ntransport = \"rtu\"\nport = \" \"", "port", "transport \"rtu\" needs port"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nport = \"/dev/ttyS0\"", "port", "port does not apply to transport \"tcp\""),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nbaud = 9600", "baud", "baud does not apply to transport \"tcp\": it is a serial line setting"),
        ("name = \"a\"\ntransport = \"rtu-over-tcp\"\naddress = \"a\"\nparity = \"odd\"", "parity", "parity does not apply"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nframe_delay = \"1ms\"", "frame_delay", "frame_delay does not apply to transport \"tcp\""),
        ("name = \"a\"\ntransport = \"rtu\"\nport = \"/dev/x\"\naddress = \"a:1\"", "address", "address does not apply to transport \"rtu\""),
        ("name = \"a\"\ntransport = \"rtu\"\nport = \"/dev/x\"\nbaud = 0", "baud", "baud 0 is out of range 1..4000000"),
        ("name = \"a\"\ntransport = \"rtu\"\nport = \"/dev/x\"\ndata_bits = 9", "data_bits", "data_bits 9 is out of range 5..8"),
        ("name = \"a\"\ntransport = \"rtu\"\nport = \"/dev/x\"\nstop_bits = 3", "stop_bits", "stop_bits 3 is out of range 1..2"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\ntimeout = \"0s\"", "timeout", "timeout 0s is out of range 10ms..5m"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\ntimeout = \"6m\"", "timeout", "timeout 6m is out of range"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nreconnect_min = \"0s\"", "reconnect_min", "reconnect_min 0s is out of range"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nreconnect_max = \"1h\"", "reconnect_max", "reconnect_max 1h is out of range"),
        ("name = \"a\"\ntransport = \"tcp\"\naddress = \"a\"\nreconnect_min = \"1m\"\nreconnect_max = \"10s\"", "reconnect_min", "reconnect_min (1m) is longer than reconnect_max (10s)"),
    ];
    for (text, key, msg) in cases {
        let err = conn(text).unwrap().endpoint().unwrap_err();
        assert!(err.to_string().starts_with(msg), "{text}: {err}");
        assert_eq!(err.key(), key, "{text}");
    }
    // Unknown options and transports are refused by the parser.
    let err =
        conn("name = \"a\"\ntransport = \"rtu\"\nport = \"/dev/x\"\nbaudrate = 9600").unwrap_err();
    assert!(err.contains("unknown field `baudrate`"), "{err}");
    let err = conn("name = \"a\"\ntransport = \"udp\"").unwrap_err();
    assert!(err.contains("udp") && err.contains("rtu-over-tcp"), "{err}");
    let err = conn("name = \"a\"\ntransport = \"rtu\"\nparity = \"mark\"").unwrap_err();
    assert!(err.contains("mark"), "{err}");
}

fn device(text: &str) -> ModbusDevice {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn device_defaults_and_validation() {
    let d = device("connection = \"plc\"");
    assert_eq!(d, ModbusDevice::new("plc"));
    assert_eq!(
        (d.unit, d.poll, d.address_base, d.merge, d.max_gap),
        (1, HumanDuration::from_secs(10), 0, true, 10)
    );
    assert_eq!(
        (
            d.max_registers_per_request,
            d.max_bits_per_request,
            d.read_back,
            d.write_multiple
        ),
        (125, 2000, false, false)
    );
    assert_eq!(d.validate(), Ok(()));
    let l = d.limits();
    assert_eq!(
        (l.merge, l.max_gap, l.max_registers, l.max_bits),
        (true, 10, 125, 2000)
    );

    let tcp = ModbusConnection {
        address: Some("plc".into()),
        ..ModbusConnection::new("plc", Transport::Tcp)
    };
    let rtu = ModbusConnection {
        port: Some("/dev/ttyUSB0".into()),
        ..ModbusConnection::new("plc", Transport::Rtu)
    };
    for unit in [0, 255] {
        let d = ModbusDevice {
            unit,
            ..ModbusDevice::new("plc")
        };
        assert_eq!(d.validate_with(&tcp), Ok(()));
        let err = d.validate_with(&rtu).unwrap_err();
        assert_eq!(err.key(), "unit");
        assert!(
            err.to_string()
                .starts_with(&format!("unit {unit} works over TCP only")),
            "{err}"
        );
    }
    assert_eq!(ModbusDevice::new("plc").validate_with(&rtu), Ok(()));
    assert_eq!(
        ModbusDevice::new("other")
            .validate_with(&rtu)
            .unwrap_err()
            .to_string(),
        "there is no [[modbus.connection]] named \"other\""
    );
    let cases = [
        (
            "connection = \"\"",
            "connection",
            "connection must name a [[modbus.connection]]",
        ),
        (
            "connection = \"a\"\nunit = 250",
            "unit",
            "unit 250 is reserved (248..254); use 1..247",
        ),
        (
            "connection = \"a\"\npoll = \"0s\"",
            "poll",
            "poll 0s is out of range 1ms..any",
        ),
        (
            "connection = \"a\"\naddress_base = 2",
            "address_base",
            "address_base 2 is out of range 0..1",
        ),
        (
            "connection = \"a\"\nmax_registers_per_request = 126",
            "max_registers_per_request",
            "max_registers_per_request 126 is out of range 1..125",
        ),
        (
            "connection = \"a\"\nmax_registers_per_request = 0",
            "max_registers_per_request",
            "max_registers_per_request 0 is out of range 1..125",
        ),
        (
            "connection = \"a\"\nmax_bits_per_request = 2001",
            "max_bits_per_request",
            "max_bits_per_request 2001 is out of range 1..2000",
        ),
    ];
    for (text, key, msg) in cases {
        let err = device(text).validate().unwrap_err();
        assert_eq!(err.to_string(), msg, "{text}");
        assert_eq!(err.key(), key, "{text}");
    }
    let err = toml::from_str::<ModbusDevice>("connection = \"a\"\nslave = 3").unwrap_err();
    assert!(err.to_string().contains("unknown field `slave`"), "{err}");
    let err = toml::from_str::<ModbusDevice>("connection = \"a\"\nunit = 256").unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");
}

#[derive(Deserialize)]
struct Wrap {
    modbus: ModbusField,
}

fn field(inline: &str) -> ModbusField {
    toml::from_str::<Wrap>(&format!("modbus = {{ {inline} }}"))
        .unwrap_or_else(|e| panic!("{inline}: {e}"))
        .modbus
}

/// Resolves a field for a default device, read-only unless `writable`.
fn resolve(inline: &str, writable: bool) -> Result<fieldgate_modbus::Point, ConfigError> {
    field(inline).resolve(&ModbusDevice::new("plc"), writable, None)
}

#[test]
fn fields_parse_with_defaults() {
    let f = field("address = 3");
    assert_eq!(
        (f.register, f.data_type(), f.order, f.scale),
        (RegisterKind::Holding, DataType::U16, None, None)
    );
    let f = field("register = \"coil\", address = 3");
    assert_eq!(f.data_type(), DataType::Bool);
    let f = field(
        "register = \"input\", address = 3, type = \"f32\", order = \"cdab\", scale = 0.001, offset = -1",
    );
    let p = f.resolve(&ModbusDevice::new("m"), false, None).unwrap();
    assert_eq!(
        (
            p.kind(),
            p.address(),
            p.data_type(),
            p.order().name(),
            p.count()
        ),
        (RegisterKind::Input, 3, DataType::F32, "CDAB", 2)
    );
    assert_eq!((p.scale(), p.offset()), (0.001, -1.0));
    for (text, bad) in [
        ("address = 1, byte_order = \"ABCD\"", "byte_order"),
        ("address = 1, data_type = \"f32\"", "data_type"),
        (
            "register = \"holding_register\", address = 1",
            "holding_register",
        ),
        ("address = 1, type = \"float32\"", "float32"),
        ("address = 1, order = \"ACBD\"", "ACBD"),
        ("address = -1", "-1"),
        ("type = \"u16\"", "address"),
    ] {
        let err = toml::from_str::<Wrap>(&format!("modbus = {{ {text} }}"))
            .err()
            .unwrap_or_else(|| panic!("{text} parsed"))
            .to_string();
        assert!(err.contains(bad), "{text}: {err}");
    }
}

#[test]
fn address_bases_and_the_end_of_the_table() {
    let base1 = ModbusDevice {
        address_base: 1,
        ..ModbusDevice::new("plc")
    };
    let p = field("address = 1").resolve(&base1, false, None).unwrap();
    assert_eq!(p.address(), 0);
    let p = field("address = 65536")
        .resolve(&base1, false, None)
        .unwrap();
    assert_eq!(p.address(), 65535);
    let err = field("address = 0")
        .resolve(&base1, false, None)
        .unwrap_err();
    assert_eq!(err.to_string(), "address 0 is out of range 1..65536");
    let err = resolve("address = 65536", false).unwrap_err();
    assert_eq!(err.to_string(), "address 65536 is out of range 0..65535");
    assert_eq!(err.key(), "address");
    assert!(resolve("address = 4294967295", false).is_err());
    assert_eq!(resolve("address = 65535", false).unwrap().address(), 65535);
    let err = resolve("address = 65535, type = \"f32\"", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "f32 at address 65535 needs 2 registers and runs past the last address 65535"
    );
    let err = resolve("address = 65530, type = \"string\", length = 125", false).unwrap_err();
    assert!(matches!(err, ConfigError::PastEnd { .. }), "{err}");
    let p = resolve("address = 65532, type = \"f64\"", false).unwrap();
    assert_eq!(p.span().end(), 65536);
}

#[test]
fn field_errors_explain_themselves() {
    let cases: &[(&str, bool, &str, &str)] = &[
        ("register = \"coil\", address = 1, type = \"f64\"", false, "type", "type f64 needs 4 registers but the field is a coil"),
        ("register = \"discrete\", address = 1, type = \"u16\"", false, "type", "type u16 needs 1 register but the field is a discrete input"),
        ("register = \"coil\", address = 1, type = \"string\"", false, "type", "type string needs registers but the field is a coil"),
        ("register = \"coil\", address = 1, type = \"bit\", bit = 1", false, "type", "type bit selects one bit of a register, but the field is a coil, a single bit already: use type bool"),
        ("address = 1, type = \"bool\"", false, "type", "type bool is for coils and discrete inputs, but the field is a holding register: use type bit with bit = 0..15"),
        ("address = 1, type = \"bit\"", false, "bit", "type bit needs bit: the bit number, 0 (least significant) to 15"),
        ("address = 1, type = \"bit\", bit = 16", false, "bit", "bit 16 is out of range 0..15"),
        ("address = 1, bit = 3", false, "bit", "bit does not apply to type u16"),
        ("address = 1, type = \"string\"", false, "length", "type string needs length: its size in registers (two characters each)"),
        ("address = 1, type = \"string\", length = 0", false, "length", "length 0 is out of range 1..125"),
        ("address = 1, type = \"string\", length = 126", false, "length", "length 126 is out of range 1..125"),
        ("address = 1, type = \"string\", length = 124", true, "length", "a writable string of 124 registers is longer than the 123 registers one write (FC16) can carry"),
        ("address = 1, length = 2", false, "length", "length does not apply to type u16"),
        ("address = 1, type = \"bit\", bit = 0, order = \"BA\"", false, "order", "order does not apply to type bit"),
        ("register = \"coil\", address = 1, order = \"ABCD\"", false, "order", "order does not apply to type bool"),
        ("address = 1, type = \"f32\", order = \"AB\"", false, "order", "order AB does not fit type f32 (2 register(s)): use ABCD, BADC, CDAB or DCBA"),
        ("address = 1, type = \"f32\", order = \"GHEFCDAB\"", false, "order", "order GHEFCDAB does not fit type f32"),
        ("address = 1, type = \"u16\", order = \"ABCDEFGH\"", false, "order", "order ABCDEFGH does not fit type u16 (1 register(s)): use AB or BA (or ABCD, BADC, CDAB, DCBA)"),
        ("address = 1, type = \"string\", length = 4, order = \"ABCDEFGH\"", false, "order", "order ABCDEFGH does not fit type string"),
        ("address = 1, type = \"string\", length = 2, scale = 2.0", false, "scale", "scale does not apply to type string"),
        ("register = \"coil\", address = 1, offset = 1.0", false, "offset", "offset does not apply to type bool"),
        ("address = 1, scale = 0.0", false, "scale", "scale 0 must be a finite number other than 0"),
        ("address = 1, scale = nan", false, "scale", "scale NaN must be a finite number other than 0"),
        ("address = 1, offset = inf", false, "offset", "offset inf must be a finite number"),
        ("address = 1, scale = 0.1, values = { 0 = \"off\" }", false, "values", "scale does not combine with a value map (labels name raw register values)"),
        ("address = 1, type = \"f32\", values = { 0 = \"off\" }", false, "values", "a value map needs an integer type or bit, not f32"),
        ("address = 1, type = \"string\", length = 1, values = { 0 = \"off\" }", false, "values", "a value map needs an integer type or bit, not string"),
        ("address = 1, values = { 70000 = \"x\" }", false, "values", "value map key 70000 is outside the u16 range 0..65535"),
        ("address = 1, values = { \"-1\" = \"x\" }", false, "values", "value map key -1 is outside the u16 range 0..65535"),
        ("register = \"coil\", address = 1, values = { 2 = \"x\" }", false, "values", "value map key 2 is outside the bool range 0..1"),
        ("register = \"input\", address = 1", true, "writable", "writable input register is impossible: the protocol has no function to write one (use a coil or holding register)"),
        ("register = \"discrete\", address = 1", true, "writable", "writable discrete input is impossible"),
    ];
    for &(text, writable, key, msg) in cases {
        let err = resolve(text, writable).unwrap_err();
        assert!(
            err.to_string().starts_with(msg),
            "{text}:\n  {err}\n  {msg}"
        );
        assert_eq!(err.key(), key, "{text}");
    }
    // A device's cap on request size bounds its fields.
    let small = ModbusDevice {
        max_registers_per_request: 2,
        max_bits_per_request: 1,
        ..ModbusDevice::new("plc")
    };
    let err = field("address = 1, type = \"f64\"")
        .resolve(&small, false, None)
        .unwrap_err();
    assert_eq!(
        (err.key(), err.to_string().as_str()),
        (
            "type",
            "the f64 field needs 4 registers but max_registers_per_request is 2"
        )
    );
    let err = field("address = 1, type = \"string\", length = 3")
        .resolve(&small, false, None)
        .unwrap_err();
    assert_eq!(err.key(), "length");
    assert!(field("register = \"coil\", address = 1")
        .resolve(&small, false, None)
        .is_ok());
    // Writable coils, holding registers, bits and 123-register strings are fine.
    for ok in [
        "register = \"coil\", address = 1",
        "address = 1, type = \"f64\", order = \"HGFEDCBA\"",
        "address = 1, type = \"bit\", bit = 15",
        "address = 1, type = \"string\", length = 123, order = \"BA\"",
        "address = 1, type = \"i16\", order = \"DCBA\"",
    ] {
        assert!(resolve(ok, true).is_ok(), "{ok}");
    }
}

#[test]
fn field_specs_follow_the_modbus_type() {
    let spec = |inline: &str, writable: bool| resolve(inline, writable).unwrap().field_spec("f");
    // (field, neutral type, derived min and max)
    type Case<'a> = (&'a str, FieldType, Option<(f64, f64)>);
    let cases: &[Case] = &[
        ("register = \"coil\", address = 1", FieldType::Bool, None),
        (
            "register = \"discrete\", address = 1",
            FieldType::Bool,
            None,
        ),
        (
            "address = 1, type = \"bit\", bit = 2",
            FieldType::Bool,
            None,
        ),
        (
            "address = 1, type = \"i16\"",
            FieldType::Int,
            Some((-32768.0, 32767.0)),
        ),
        ("address = 1", FieldType::Int, Some((0.0, 65535.0))),
        (
            "address = 1, type = \"i32\"",
            FieldType::Int,
            Some((-2147483648.0, 2147483647.0)),
        ),
        (
            "address = 1, type = \"u32\"",
            FieldType::Long,
            Some((0.0, 4294967295.0)),
        ),
        (
            "address = 1, type = \"i64\"",
            FieldType::Long,
            Some((i64::MIN as f64, i64::MAX as f64)),
        ),
        (
            "address = 1, type = \"u64\"",
            FieldType::Long,
            Some((0.0, i64::MAX as f64)),
        ),
        ("address = 1, type = \"f32\"", FieldType::Double, None),
        ("address = 1, type = \"f64\"", FieldType::Double, None),
        (
            "address = 1, type = \"i16\", scale = 0.1",
            FieldType::Double,
            Some((-3276.8, 3276.7)),
        ),
        (
            "address = 1, type = \"u16\", scale = -2.0, offset = 1.0",
            FieldType::Double,
            Some((-131069.0, 1.0)),
        ),
        (
            "address = 1, type = \"string\", length = 8",
            FieldType::String,
            None,
        ),
        (
            "address = 1, values = { 0 = \"off\", 1 = \"on\" }",
            FieldType::Enum,
            None,
        ),
        (
            "register = \"coil\", address = 1, values = { 0 = \"open\", 1 = \"closed\" }",
            FieldType::Enum,
            None,
        ),
    ];
    for &(inline, kind, range) in cases {
        let s = spec(inline, false);
        assert_eq!(s.kind, kind, "{inline}");
        assert_eq!(s.min.zip(s.max), range, "{inline}");
        assert_eq!(&*s.name, "f");
        assert!(!s.writable);
    }
    let s = spec("address = 1, type = \"i16\", scale = 0.1", true);
    assert!(s.writable);
    assert_eq!(s.decimals, Some(1));
    let s = spec(
        "address = 1, values = { 2 = \"manual\", 0 = \"off\", 1 = \"auto\" }",
        true,
    );
    assert_eq!(s.values, ["off", "auto", "manual"]);
    assert_eq!(s.decimals, None);
    // Configured decimals win over the scale's.
    let p = field("address = 1, scale = 0.01")
        .resolve(&ModbusDevice::new("plc"), false, Some(1))
        .unwrap();
    assert_eq!(p.field_spec("t").decimals, Some(1));
    // The core validates writes against the derived range.
    let s = spec("address = 1, type = \"i16\", scale = 0.1", true);
    assert!(s
        .validate_write(&fieldgate_api::Value::Double(3276.7))
        .is_ok());
    assert!(s
        .validate_write(&fieldgate_api::Value::Double(3276.8))
        .is_err());
}

#[test]
fn a_device_and_its_fields_plan_together() {
    let dev = device("connection = \"m\"\naddress_base = 1\nmax_gap = 2");
    let points: Vec<_> = [
        "register = \"input\", address = 1, type = \"f32\", order = \"CDAB\"",
        "register = \"input\", address = 3, type = \"f32\", order = \"CDAB\"",
        "register = \"input\", address = 7, type = \"f32\", order = \"CDAB\"",
        "register = \"input\", address = 343, type = \"f64\"",
        "address = 1, type = \"i16\", scale = 0.1",
        "register = \"coil\", address = 1",
        "register = \"coil\", address = 2",
    ]
    .iter()
    .map(|f| field(f).resolve(&dev, false, None).unwrap())
    .collect();
    let spans: Vec<_> = points.iter().map(|p| p.span()).collect();
    let p = plan(&spans, &dev.limits()).unwrap();
    let got: Vec<_> = p
        .requests()
        .iter()
        .map(|r| (r.function_code(), r.address, r.count))
        .collect();
    // Wire addresses are one less; the input registers 0..4 and 6..8 merge across a
    // gap of 2, 342 is alone.
    assert_eq!(got, [(1, 0, 2), (3, 0, 1), (4, 0, 8), (4, 342, 4)]);
    assert_eq!((p.requests_per_cycle(), p.naive_requests()), (4, 7));
    let merged_off = ModbusDevice {
        merge: false,
        ..dev
    };
    assert_eq!(
        plan(&spans, &merged_off.limits())
            .unwrap()
            .requests_per_cycle(),
        7
    );
}

#[test]
fn hostile_configurations_and_data_never_panic() {
    use fieldgate_api::Value;
    use fieldgate_modbus::{ByteOrder, ValueMap};
    let types = [
        None,
        Some(DataType::Bool),
        Some(DataType::Bit),
        Some(DataType::I16),
        Some(DataType::U16),
        Some(DataType::I32),
        Some(DataType::U32),
        Some(DataType::I64),
        Some(DataType::U64),
        Some(DataType::F32),
        Some(DataType::F64),
        Some(DataType::String),
    ];
    let numbers = [
        0.0,
        1.0,
        -1.0,
        0.1,
        1e-300,
        1e300,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        -0.0,
    ];
    let mut rng = Rng(99);
    let mut resolved = 0;
    for _ in 0..40_000 {
        // Mostly sane, sometimes hostile: each option is off its sane value one time in 4.
        let odd = |rng: &mut Rng| rng.next() % 4 == 0;
        let device = ModbusDevice {
            address_base: if odd(&mut rng) {
                rng.pick(&[2, 255])
            } else {
                rng.pick(&[0, 1])
            },
            max_registers_per_request: if odd(&mut rng) {
                rng.pick(&[0, 1, 4, 126, u16::MAX])
            } else {
                125
            },
            max_bits_per_request: if odd(&mut rng) {
                rng.pick(&[0, 1, u16::MAX])
            } else {
                2000
            },
            max_gap: rng.pick(&[0, 1, 10, u16::MAX]),
            merge: rng.next() % 2 == 0,
            ..ModbusDevice::new("d")
        };
        let f = ModbusField {
            register: rng.pick(&RegisterKind::ALL),
            address: if odd(&mut rng) {
                rng.pick(&[65532, 65534, 65535, 65536, 65537, u32::MAX])
            } else {
                rng.pick(&[1, 100])
            },
            data_type: rng.pick(&types),
            order: rng.pick(&[
                None,
                Some(ByteOrder::AB),
                Some(ByteOrder::CDAB),
                Some(ByteOrder::HGFEDCBA),
            ]),
            bit: if odd(&mut rng) {
                rng.pick(&[Some(16), Some(255), None])
            } else {
                Some(rng.pick(&[0, 15]))
            },
            length: if odd(&mut rng) {
                rng.pick(&[Some(0), Some(123), Some(125), Some(126), Some(u16::MAX)])
            } else {
                Some(rng.pick(&[1, 2]))
            },
            scale: if odd(&mut rng) {
                Some(rng.pick(&numbers))
            } else {
                None
            },
            offset: if odd(&mut rng) {
                Some(rng.pick(&numbers))
            } else {
                None
            },
            values: if odd(&mut rng) {
                rng.pick(&[
                    ValueMap::new([(0, "a"), (1, "b")]).unwrap(),
                    ValueMap::new([(i128::MIN, "lo"), (i128::MAX, "hi")]).unwrap(),
                ])
            } else {
                ValueMap::default()
            },
        };
        // Options a type does not take are dropped unless hostile.
        let dt = f.data_type();
        let f = ModbusField {
            bit: if dt == DataType::Bit || odd(&mut rng) {
                f.bit
            } else {
                None
            },
            length: if dt == DataType::String || odd(&mut rng) {
                f.length
            } else {
                None
            },
            order: if dt.registers(2) > 0 || odd(&mut rng) {
                f.order
            } else {
                None
            },
            ..f
        };
        let writable = rng.next() % 2 == 0;
        let decimals = rng.pick(&[None, Some(0), Some(3), Some(255)]);
        let Ok(p) = f.resolve(&device, writable, decimals) else {
            continue;
        };
        resolved += 1;
        let _ = p.field_spec("x");
        for len in [
            0,
            1,
            2,
            4,
            usize::from(p.count()),
            usize::from(p.count()) + 1,
        ] {
            let regs: Vec<u16> = (0..len).map(|_| rng.next() as u16).collect();
            let bits: Vec<bool> = (0..len).map(|_| rng.next() % 2 == 0).collect();
            let _ = p.decode_registers(&regs);
            let _ = p.decode_bits(&bits);
        }
        for v in [
            Value::Bool(true),
            Value::Int(i32::MIN),
            Value::Long(i64::MAX),
            Value::Double(rng.pick(&numbers)),
            Value::Double(-rng.pick(&numbers)),
            Value::String("a".repeat(300)),
            Value::Enum("b".into()),
            Value::Timestamp(std::time::UNIX_EPOCH),
        ] {
            if let Ok(op) = p.encode(&v) {
                let _ = (op.function_code(true), op.apply_to(0xFFFF));
            }
        }
        let _ = plan(&[p.span(), p.span()], &device.limits());
    }
    assert!(resolved > 2000, "{resolved}");
}
