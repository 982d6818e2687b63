#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgebox::fuzzing::proxy_header(data));
