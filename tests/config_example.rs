//! The shipped example must stay valid and must show every option. It configures a
//! device of every adapter kind, so it needs them all compiled in.
#![cfg(all(feature = "sim", feature = "modbus"))]

use std::path::Path;

use fieldgate::config;

#[test]
fn example_config_parses_and_documents_every_option() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let cfg = config::load(&path).expect("config.example.toml must be valid");
    assert_eq!(cfg.xmpp.domain, "gw.example.org");
    assert_eq!(cfg.devices.len(), 2);
    assert!(cfg.devices[0].fields.iter().any(|f| f.writable));

    // Every key of the schema appears in the example, set or commented out.
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "server",
        "domain",
        "secret",
        "secret_file",
        "secret_env",
        "keepalive",
        "ping_target",
        "reconnect_min",
        "reconnect_max",
        "resource",
        "subscribe",
        "read",
        "control",
        "dir",
        "id",
        "name",
        "adapter",
        "model",
        "serial",
        "vendor",
        "unreachable",
        "outage_every",
        "outage_for",
        "type",
        "unit",
        "decimals",
        "writable",
        "min",
        "max",
        "values",
        "sim",
    ] {
        assert!(
            text.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))),
            "config.example.toml does not document `{key}`"
        );
    }
}
