//! The fuzz targets' short run for the regular test suite: every committed corpus input
//! (`fuzz/corpus/<target>/`, seeds, the fuzzers' minimised corpora and regression inputs)
//! goes through its target body, then a few thousand inputs mutated from them with a fixed
//! seed, bounded in time. No fuzzer needed; `fuzz/README.md` says how to run the real ones.
//!
//! `FIELDGATE_FUZZ_SEED` picks another mutation seed, `FIELDGATE_FUZZ_MUTATIONS` another
//! count (per target), to explore further by hand.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Mutated inputs per target, unless the budget runs out first.
const MUTATIONS: usize = 3000;
/// Time per target for the mutated inputs (the corpus itself always runs whole).
const BUDGET: Duration = Duration::from_secs(4);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(target: &str, body: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let seed = env_or("FIELDGATE_FUZZ_SEED", 0x5eed_f00d_u64);
    let mutations = env_or("FIELDGATE_FUZZ_MUTATIONS", MUTATIONS);
    let budget = if mutations == MUTATIONS {
        BUDGET
    } else {
        Duration::MAX
    };
    let start = Instant::now();
    let ran = fieldgate::fuzzing::replay_corpus(&dir, body, seed, mutations, budget);
    assert!(ran > 0, "no corpus in {}", dir.display());
    eprintln!("{target}: {ran} inputs in {:?}", start.elapsed());
}

#[test]
fn sensordata() {
    run("sensordata", fieldgate::fuzzing::sensordata);
}

#[test]
fn control() {
    run("control", fieldgate::fuzzing::control);
}

#[test]
fn events() {
    run("events", fieldgate::fuzzing::events);
}

#[test]
fn presence_disco() {
    run("presence_disco", fieldgate::fuzzing::presence_disco);
}

#[test]
fn stanza_guard() {
    run("stanza_guard", fieldgate::fuzzing::stanza_guard);
}

#[test]
fn config() {
    run("config", fieldgate::fuzzing::config);
}

#[cfg(feature = "modbus")]
#[test]
fn modbus_codec() {
    run("modbus_codec", fieldgate_modbus::fuzzing::codec);
}

#[test]
#[cfg(feature = "mqtt")]
fn mqtt_codec() {
    run("mqtt_codec", fieldgate_mqtt::fuzzing::codec);
}

#[test]
fn payload_codec() {
    run("payload_codec", fieldgate_payload::fuzzing::codec);
}
