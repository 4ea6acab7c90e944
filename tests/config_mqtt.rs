//! A whole configuration with MQTT devices, read by the core and resolved by the MQTT
//! adapter kind through the registry: what it accepts, and where it points when it does
//! not.
#![cfg(feature = "mqtt")]

use std::path::Path;

use fieldgate::config::{parse, ConfigError, Located};

const BASE: &str = r#"
[xmpp]
server = "127.0.0.1:5347"
domain = "gw.example.org"
secret = "s"

[[mqtt.broker]]
name = "local"
host = "127.0.0.1"
"#;

fn err(text: &str) -> Located {
    match parse(Path::new("t.toml"), text) {
        Err(ConfigError::Invalid(l)) => *l,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn device(mqtt: &str, fields: &str) -> String {
    format!("{BASE}\n[[device]]\nid = \"d\"\nadapter = \"mqtt\"\n[device.mqtt]\n{mqtt}\n{fields}")
}

const TEMP: &str = "[[device.field]]\nname = \"temperature\"\ntype = \"double\"\n";

#[test]
fn a_json_sensor_and_a_discovering_entry_are_accepted() {
    let c = parse(
        Path::new("t.toml"),
        &device(
            "broker = \"local\"\ntopic = \"s/hall\"\nformat = \"json\"",
            TEMP,
        ),
    )
    .unwrap();
    assert!(!c.devices[0].discovers);
    let c = parse(
        Path::new("t.toml"),
        &device(
            "broker = \"local\"\ntopic = \"z/+\"\nformat = \"json\"\ndiscover = true\n\
             command_topic = \"z/+/set\"\ncommand_format = \"json\"",
            "[[device.field]]\nname = \"state\"\ntype = \"bool\"\nwritable = true\n\
             mqtt = { payload_on = \"ON\", payload_off = \"OFF\", confirm = true }\n",
        ),
    )
    .unwrap();
    assert!(c.devices[0].discovers);
    assert_eq!(c.devices[0].reporting, fieldgate_api::Reporting::Pushed);
}

#[test]
fn mistakes_are_located_and_explained() {
    let e = err(&device("broker = \"nosuch\"\ntopic = \"a\"", TEMP));
    assert_eq!(e.key.as_deref(), Some("device[0].mqtt.broker"));
    assert!(
        e.message.contains("no [[mqtt.broker]] named \"nosuch\""),
        "{}",
        e.message
    );

    let e = err(&device("broker = \"local\"", TEMP));
    assert!(e.message.contains("has no topic"), "{}", e.message);

    let e = err(&device("broker = \"local\"\ntopic = \"a/#/b\"", TEMP));
    assert_eq!(e.key.as_deref(), Some("device[0].mqtt.topic"));
    assert!(e.message.contains("last level"), "{}", e.message);

    let e = err(&device(
        "broker = \"local\"\ntopic = \"z/+/+\"\ndiscover = true",
        TEMP,
    ));
    assert!(e.message.contains("exactly one"), "{}", e.message);

    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"",
        "[[device.field]]\nname = \"sp\"\ntype = \"double\"\nwritable = true\n",
    ));
    assert!(e.message.contains("needs a command topic"), "{}", e.message);

    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"\ncommand_topic = \"a/+/set\"",
        TEMP,
    ));
    assert!(e.message.contains("no wildcard"), "{}", e.message);

    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"\nformat = \"json\"",
        "[[device.field]]\nname = \"t\"\ntype = \"double\"\nmqtt = { pointer = \"t\" }\n",
    ));
    assert_eq!(e.key.as_deref(), Some("device[0].field[0].mqtt.pointer"));

    let e = err(&device("broker = \"local\"\ntopic = \"a\"\nqos = 1", TEMP));
    assert!(
        e.message.contains("qos"),
        "unknown keys are refused: {}",
        e.message
    );

    let e = err(&format!(
        "{BASE}\n[[mqtt.broker]]\nname = \"local\"\nhost = \"h\"\n"
    ));
    assert!(e.message.contains("duplicate broker name"), "{}", e.message);
    assert_eq!(e.line, 12, "the second broker's name: {e:?}");

    let e = err(&format!(
        "{BASE}\n[[mqtt.broker]]\nname = \"x\"\nhost = \"h\"\npassword = \"p\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("mqtt.broker[1].username"));
}

#[test]
fn unreadable_secrets_and_tls_files_are_configuration_errors() {
    let e = err(&format!(
        "{BASE}\n[[mqtt.broker]]\nname = \"x\"\nhost = \"h\"\nusername = \"u\"\n\
         password_file = \"/nonexistent/fieldgate-test-password\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("mqtt.broker[1].password_file"));
    assert_eq!(e.line, 15, "at the key: {e:?}");
    let e = err(&format!(
        "{BASE}\n[[mqtt.broker]]\nname = \"x\"\nhost = \"h\"\nusername = \"u\"\n\
         password_env = \"FIELDGATE_TEST_SURELY_UNSET\"\n"
    ));
    assert!(e.message.contains("is not set"), "{}", e.message);
    let e = err(&format!(
        "{BASE}\n[[mqtt.broker]]\nname = \"x\"\nhost = \"h\"\n\
         tls = {{ ca_file = \"/nonexistent/ca.pem\" }}\n"
    ));
    assert_eq!(e.key.as_deref(), Some("mqtt.broker[1].tls"));
    assert!(e.message.contains("/nonexistent/ca.pem"), "{}", e.message);
}

#[test]
fn cbor_formats_are_not_offered_for_mqtt() {
    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"\nformat = \"cbor\"",
        TEMP,
    ));
    assert_eq!(e.key.as_deref(), Some("device[0].mqtt.format"));
    assert!(
        e.message
            .contains("MQTT payloads are \"plain\", \"json\" or \"senml\", not CBOR"),
        "{}",
        e.message
    );
    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"",
        "[[device.field]]\nname = \"t\"\ntype = \"double\"\n\
         mqtt = { topic = \"b\", format = \"senml-cbor\" }\n",
    ));
    assert_eq!(e.key.as_deref(), Some("device[0].field[0].mqtt.format"));
    let e = err(&device(
        "broker = \"local\"\ntopic = \"a\"\ncommand_topic = \"a/set\"\ncommand_format = \"cbor\"",
        TEMP,
    ));
    assert_eq!(e.key.as_deref(), Some("device[0].mqtt.command_format"));
    assert!(e.message.contains("\"plain\" or \"json\""), "{}", e.message);
}
