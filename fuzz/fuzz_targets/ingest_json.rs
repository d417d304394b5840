//! `cargo +nightly fuzz run ingest_json`: the body is
//! [`danmaku_fuzz_targets::ingest_json`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::ingest_json(data));
