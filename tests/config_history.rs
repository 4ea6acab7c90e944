//! `[history]` and the `history` option of devices and fields: what each field keeps,
//! how the layers combine, and where a mistake is pointed at.
#![cfg(feature = "sim")]

use std::path::Path;
use std::time::Duration;

use fieldgate::config::{parse, Config, ConfigError, Located};
use fieldgate::history::policy::{FieldHistory, Sampling};

const XMPP: &str = r#"
[xmpp]
server = "127.0.0.1:5347"
domain = "gw.example.org"
secret = "s"
[state]
dir = "/srv/fg"
"#;

const DEVICES: &str = r#"
[[device]]
id = "a"
adapter = "sim"
[[device.field]]
name = "t"
type = "double"
[[device.field]]
name = "state"
type = "string"
history = false
[[device.field]]
name = "p{n}"
type = "double"
count = 2
history = { keep = "90d", sample = "every" }

[[device]]
id = "b"
adapter = "sim"
history = { sample = "10s" }
[[device.field]]
name = "x"
type = "long"

[[device]]
id = "c"
adapter = "sim"
history = false
[[device.field]]
name = "y"
type = "long"
[[device.field]]
name = "z"
type = "long"
history = "1d"
"#;

fn ok(text: &str) -> Config {
    parse(Path::new("t.toml"), text).unwrap()
}

fn err(text: &str) -> Located {
    match parse(Path::new("t.toml"), text) {
        Err(ConfigError::Invalid(l)) => *l,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn kept(c: &Config, dev: usize) -> Vec<Option<FieldHistory>> {
    c.devices[dev].history.to_vec()
}

const DAY: u64 = 86_400;

#[test]
fn gateway_device_and_field_layers() {
    let c = ok(&format!(
        "{XMPP}\n[history]\nkeep = \"30d\"\ndeadband = 0.5\nmax_size = \"64 MiB\"\n{DEVICES}"
    ));
    assert_eq!(c.history.max_size, 64 << 20);
    assert_eq!(c.history.file, Path::new("/srv/fg/history.db"));
    assert_eq!(c.history.commit_interval, Duration::from_secs(1));
    let month = Duration::from_secs(30 * DAY);
    let change = Sampling::Change { deadband: 0.5 };
    assert_eq!(
        kept(&c, 0),
        vec![
            Some(FieldHistory {
                keep: month,
                sample: change
            }),
            None,
            Some(FieldHistory {
                keep: Duration::from_secs(90 * DAY),
                sample: Sampling::Every
            }),
            Some(FieldHistory {
                keep: Duration::from_secs(90 * DAY),
                sample: Sampling::Every
            }),
        ]
    );
    assert_eq!(
        kept(&c, 1),
        vec![Some(FieldHistory {
            keep: month,
            sample: Sampling::Interval(Duration::from_secs(10))
        })]
    );
    assert_eq!(
        kept(&c, 2),
        vec![
            None,
            Some(FieldHistory {
                keep: Duration::from_secs(DAY),
                sample: change
            })
        ]
    );
}

#[test]
fn without_a_gateway_retention_only_what_names_one_is_kept() {
    let text = format!("{XMPP}\n{DEVICES}").replace("history = { sample = \"10s\" }", "");
    let c = ok(&text);
    assert_eq!(kept(&c, 0)[0], None);
    assert_eq!(kept(&c, 0)[2].unwrap().keep, Duration::from_secs(90 * DAY));
    assert_eq!(kept(&c, 1), vec![None]);
    assert_eq!(c.history.max_size, 256 << 20);
}

#[test]
fn mistakes_are_located() {
    // history = true without any retention
    let e = err(&format!("{XMPP}\n[[device]]\nid = \"a\"\nadapter = \"sim\"\nhistory = true\n[[device.field]]\nname = \"t\"\ntype = \"double\"\n"));
    assert!(e.message.contains("retention"), "{e}");
    assert_eq!(e.key.as_deref(), Some("device[0].history"));
    let e = err(&format!(
        "{XMPP}\n[history]\nkeep = \"1d\"\nsample = \"sometimes\"\n"
    ));
    assert!(
        e.message.contains("sometimes") && e.key.as_deref() == Some("history.sample"),
        "{e}"
    );
    assert_eq!(e.line, 11);
    let e = err(&format!("{XMPP}\n[history]\nmax_size = \"1 KiB\"\n"));
    assert!(e.message.contains("out of range"), "{e}");
    let e = err(&format!("{XMPP}\n[history]\nkeep = \"1d\"\nbogus = 1\n"));
    assert!(e.message.contains("bogus"), "{e}");
    let e = err(&format!(
        "{XMPP}\n[[device]]\nid = \"a\"\nadapter = \"sim\"\n[[device.field]]\nname = \"t\"\ntype = \"double\"\nhistory = {{ keep = \"1d\", deadband = -1 }}\n"
    ));
    assert!(
        e.message.contains("deadband") && e.key.as_deref() == Some("device[0].field[0].history"),
        "{e}"
    );
    let e = err(&format!(
        "{XMPP}\n[[device]]\nid = \"a\"\nadapter = \"sim\"\nhistory = \"soon\"\n"
    ));
    assert!(e.message.contains("soon"), "{e}");
}
