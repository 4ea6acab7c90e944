#![no_main]
//! See `fieldgate::fuzzing::stanza_guard`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::stanza_guard(data));
