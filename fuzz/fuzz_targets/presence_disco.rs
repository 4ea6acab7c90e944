#![no_main]
//! See `fieldgate::fuzzing::presence_disco`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::presence_disco(data));
