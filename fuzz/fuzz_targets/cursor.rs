//! `cargo +nightly fuzz run cursor`: the body is
//! [`danmaku_fuzz_targets::cursor`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::cursor(data));
