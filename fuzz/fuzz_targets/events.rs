#![no_main]
//! See `fieldgate::fuzzing::events`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::events(data));
