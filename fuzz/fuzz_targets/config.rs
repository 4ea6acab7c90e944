#![no_main]
//! See `fieldgate::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::config(data));
