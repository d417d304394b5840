//! `cargo +nightly fuzz run bili_packets`: the body is
//! [`danmaku_fuzz_targets::bili_packets`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::bili_packets(data));
