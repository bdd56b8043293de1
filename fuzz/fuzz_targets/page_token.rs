#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vidgate::fuzzing::page_token(data));
