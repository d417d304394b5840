//! The send path with shared moderation state (issue 14, item 9): comments per
//! second and latency percentiles of `Ingest::submit` (validation, the local copy
//! of bans/settings/words, rate limits, an idempotency key, the Bus publish) with
//! the ModerationStore in memory (what one process had before: in-process
//! limiters and keys), embedded (`moderation.redb`) and on a `redis-server`
//! started here, the Bus being the embedded one in every case (the only
//! difference is where the moderation state lives).
//!
//! ```text
//! cargo run --release -p danmaku-benches --example moderation_bench
//! ```
//!
//! Environment: `N` (20000 sends per run), `CONC` (64 concurrent senders),
//! `RUNS` (3; medians printed), `KEYS` (1: every send carries an idempotency
//! key; 0: none), `DANMAKU_TEST_REDIS` (an external Redis instead of a fresh one).
#![allow(clippy::field_reassign_with_default)]

use danmaku_core::auth::{Claims, Role};
use danmaku_core::config::{Secret, Settings};
use danmaku_core::ports::{MemoryModerationStore, ModerationStore};
use danmaku_embedded::EmbeddedModerationStore;
use danmaku_ingest::{Ingest, SendRequest, Target};
use danmaku_redis::testkit::RedisServer;
use danmaku_redis::RedisModerationStore;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.data_dir = dir.to_path_buf();
    s.server.demo = false;
    s.auth.secret = Secret("bench-secret".into());
    // Limits are checked (a store call each) but never refuse.
    s.limits.user_per_sec = 1_000_000;
    s.limits.user_burst = 1_000_000;
    s.limits.room_per_sec = 1_000_000;
    s.limits.room_burst = 1_000_000;
    s
}

struct Run {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(ingest: Arc<Ingest>, n: usize, conc: usize, keys: bool, tag: u64) -> Run {
    let started = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let ingest = ingest.clone();
            async move {
                let claims = Claims {
                    sub: format!("u{}", i % 1000),
                    exp: i64::MAX,
                    nbf: None,
                    name: None,
                    role: Role::Viewer,
                    guest: None,
                };
                let req = SendRequest {
                    text: Some(format!("comment {i}").into()),
                    idempotency_key: keys.then(|| format!("k{tag}-{i}").into()),
                    ..Default::default()
                };
                let t = Instant::now();
                ingest
                    .submit(
                        &claims,
                        Target::Live {
                            room: format!("r{}", i % 50),
                        },
                        req,
                    )
                    .await
                    .expect("accepted");
                t.elapsed()
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let total = started.elapsed();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Run {
        per_sec: n as f64 / total.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n = env_num("N", 20_000);
    let conc = env_num("CONC", 64);
    let runs = env_num("RUNS", 3);
    let keys = env_num("KEYS", 1) == 1;
    let redis = RedisServer::start();
    println!("N={n} CONC={conc} RUNS={runs} KEYS={keys}");
    println!(
        "| moderation store | comments/s | p50 202 (ms) | p99 202 (ms) | vs memory | vs embedded |"
    );
    println!("|---|---|---|---|---|---|");
    // (comments/s, p99) of memory and embedded, for the ratios.
    let mut seen: Vec<(f64, f64)> = Vec::new();
    for which in ["memory", "embedded", "redis"] {
        let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..runs {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path());
            let ctx = danmaku_embedded::testkit::context(s.clone());
            let store: Arc<dyn ModerationStore> = match which {
                "memory" => Arc::new(MemoryModerationStore::new()),
                "embedded" => Arc::new(EmbeddedModerationStore::open(dir.path()).unwrap()),
                _ => {
                    let mut rs = s.redis.clone();
                    rs.url = redis.url();
                    rs.namespace = format!("bench{r}{}", rand::random::<u32>());
                    Arc::new(RedisModerationStore::connect(&rs).unwrap().unwrap())
                }
            };
            let ingest = Ingest::with_moderation(ctx, store).unwrap();
            ingest.moderation().sync().await.unwrap();
            // Warm-up (connections, the Bus file).
            run(ingest.clone(), 500.min(n), conc, keys, 1_000 + r as u64).await;
            let out = run(ingest, n, conc, keys, r as u64).await;
            rates.push(out.per_sec);
            p50s.push(out.p50_ms);
            p99s.push(out.p99_ms);
        }
        let (rate, p99) = (median(rates), median(p99s));
        let vs = |base: Option<&(f64, f64)>| {
            base.map_or(String::new(), |(r, p)| {
                format!("{:.2}x, p99 {:+.1} ms", rate / r, p99 - p)
            })
        };
        let (vs_memory, vs_embedded) = match which {
            "memory" => (String::new(), String::new()),
            "embedded" => (vs(seen.first()), String::new()),
            _ => (vs(seen.first()), vs(seen.get(1))),
        };
        println!(
            "| {which} | {rate:.0} | {:.2} | {p99:.2} | {vs_memory} | {vs_embedded} |",
            median(p50s),
        );
        seen.push((rate, p99));
    }
}
