//! The YAML declaration loader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| redeliver_fuzz::declarations(data));
