//! `cargo +nightly fuzz run xml_import`: the body is
//! [`danmaku_fuzz_targets::xml_import`] (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| danmaku_fuzz_targets::xml_import(data));
