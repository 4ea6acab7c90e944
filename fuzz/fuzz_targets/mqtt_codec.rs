#![no_main]
//! See `fieldgate_mqtt::fuzzing::codec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate_mqtt::fuzzing::codec(data));
