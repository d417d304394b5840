//! `cargo +nightly fuzz run bearer`: the body is
//! [`danmaku_fuzz_targets::bearer`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::bearer(data));
