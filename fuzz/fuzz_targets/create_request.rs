#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vidgate::fuzzing::create_request(data));
