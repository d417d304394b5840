//! Every fuzz target of `fuzz/` on stable Rust, in plain `cargo test`: each
//! target's function runs over its seed corpus (`fuzz/seeds/<target>/`), then
//! over bounded pseudo-random inputs (fresh bytes, and seeds mutated: bytes
//! flipped, inserted, removed, cut, two seeds spliced) from a fixed seed, so
//! a failure reproduces. A failing input is printed in hex and written to
//! `target/fuzz-failures/<target>-<n>`; `cargo fuzz run <target> <file>` (or
//! this test) replays it.
//!
//! Knobs (environment): `FUZZ_SEED_INPUTS` (random inputs per target, default
//! 3,000), `FUZZ_SEED_SECS` (wall-time bound per target, default 5),
//! `FUZZ_SEED` (the random seed, default fixed).

use danmaku_fuzz_targets::TARGETS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/")
        .to_path_buf()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(name);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("a directory entry").path();
            let data = std::fs::read(&p).expect("a seed");
            (p.file_name().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: no seeds", dir.display());
    out
}

/// Runs `f` on `input`; on a panic, keeps the input and fails naming it.
fn run_one(name: &str, what: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::write(&file, input);
    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
    panic!(
        "fuzz target {name} failed on {what} ({} bytes, kept in {}): {hex}",
        input.len(),
        file.display()
    );
}

fn mutate(rng: &mut StdRng, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    if rng.gen_ratio(1, 5) {
        let len = rng.gen_range(0..300);
        return (0..len).map(|_| rng.gen()).collect();
    }
    let mut v = seeds[rng.gen_range(0..seeds.len())].1.clone();
    for _ in 0..rng.gen_range(1..5) {
        match rng.gen_range(0..6) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let i = rng.gen_range(0..=v.len());
                // Interesting bytes more often than others.
                let b = *[0u8, 0x7e, 0x7f, 0x80, 0xff, b'"', b'{', b'%', b'&', b'=']
                    .get(rng.gen_range(0..14))
                    .unwrap_or(&rng.gen());
                v.insert(i, b);
            }
            2 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v.remove(i);
            }
            3 if !v.is_empty() => {
                let n = rng.gen_range(0..v.len());
                v.truncate(n);
            }
            4 => {
                let other = &seeds[rng.gen_range(0..seeds.len())].1;
                let at = rng.gen_range(0..=v.len());
                let from = rng.gen_range(0..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            _ => v.push(rng.gen()),
        }
    }
    v
}

fn run(name: &str) {
    let f = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1;
    let seeds = seeds(name);
    for (file, data) in &seeds {
        run_one(name, &format!("seed {file}"), f, data);
    }
    let inputs = env_num("FUZZ_SEED_INPUTS", 3_000);
    let deadline = Instant::now() + Duration::from_secs(env_num("FUZZ_SEED_SECS", 5));
    let salt = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = StdRng::seed_from_u64(env_num("FUZZ_SEED", 0x00da_6a4a) ^ salt);
    for i in 0..inputs {
        if Instant::now() > deadline {
            break;
        }
        let input = mutate(&mut rng, &seeds);
        run_one(name, &format!("random input {i}"), f, &input);
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        /// Every target has a test here, a fuzz binary and seeds.
        #[test]
        fn every_target_is_tested_and_fuzzed() {
            let tested = [$(stringify!($name)),*];
            let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "no test for target {name}");
                assert!(
                    fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")).is_file(),
                    "no fuzz/fuzz_targets/{name}.rs"
                );
                assert!(
                    manifest.contains(&format!("name = \"{name}\"")),
                    "no [[bin]] {name} in fuzz/Cargo.toml"
                );
                assert!(!seeds(name).is_empty());
            }
            assert_eq!(tested.len(), TARGETS.len());
        }
    };
}

targets!(
    ws_frames,
    ws_deflate,
    cursor,
    token,
    bearer,
    ingest_json,
    replay_query,
    bili_packets,
    xml_import
);
