#![no_main]
//! See `fieldgate::fuzzing::control`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::control(data));
