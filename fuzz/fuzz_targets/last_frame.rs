#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vidgate::fuzzing::last_frame(data));
