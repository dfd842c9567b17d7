//! Graph and token-endpoint JSON decoding, and the client's error-body mapping.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| redeliver_fuzz::graph_json(data));
