//! `cargo +nightly fuzz run replay_query`: the body is
//! [`danmaku_fuzz_targets::replay_query`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::replay_query(data));
