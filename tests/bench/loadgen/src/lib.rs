//! Code shared by the load generator (`fieldgate-loadgen`, src/main.rs) and the ideal
//! component it is compared against (`fieldgate-null-component`, src/bin/null_component.rs):
//! namespaces, `--name value` option parsing, durations, `key: value` output.

use std::collections::HashMap;
use std::time::Duration;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_COMPONENT: &str = "jabber:component:accept";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_SENSORDATA: &str = "urn:xmpp:iot:sensordata";

/// `10s`, `250ms`, `1.5m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (s, ms, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The command line as `--name value` pairs; `-h`/`--help` prints `usage` and exits.
pub struct Opts(HashMap<String, String>);

impl Opts {
    pub fn from_env(usage: &str) -> Result<Opts, String> {
        let mut kv = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            if k == "-h" || k == "--help" {
                print!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = k.strip_prefix("--") else {
                return Err(format!("unexpected argument {k:?}"));
            };
            let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            kv.insert(name.to_owned(), v);
        }
        Ok(Opts(kv))
    }

    /// Removes and returns `--k`.
    pub fn take(&mut self, k: &str) -> Option<String> {
        self.0.remove(k)
    }

    pub fn need(&mut self, k: &str) -> Result<String, String> {
        self.take(k).ok_or_else(|| format!("--{k} is required"))
    }

    /// `--k` as a number, `default` when absent.
    pub fn num(&mut self, k: &str, default: usize) -> Result<usize, String> {
        self.take(k).map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("--{k}: not a number: {s:?}"))
        })
    }

    /// Fails on an option nobody took.
    pub fn finish(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(k) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }
}

pub fn print_kv(k: &str, v: impl std::fmt::Display) {
    println!("{k}: {v}");
}
