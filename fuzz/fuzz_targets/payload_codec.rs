#![no_main]
//! See `fieldgate_payload::fuzzing::codec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate_payload::fuzzing::codec(data));
