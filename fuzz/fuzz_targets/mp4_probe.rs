#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vidgate::fuzzing::mp4_probe(data));
