#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgebox::fuzzing::acme_answers(data));
