#![no_main]
//! See `fieldgate::fuzzing::sensordata`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzzing::sensordata(data));
