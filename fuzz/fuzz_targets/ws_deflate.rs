//! `cargo +nightly fuzz run ws_deflate`: the body is
//! [`danmaku_fuzz_targets::ws_deflate`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::ws_deflate(data));
