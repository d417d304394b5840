//! `cargo +nightly fuzz run token`: the body is
//! [`danmaku_fuzz_targets::token`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::token(data));
