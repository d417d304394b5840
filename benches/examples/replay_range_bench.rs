//! Issue 13's replay attack as a benchmark (docs/BENCHMARKS.md, "Replay range
//! pages under attack"): 64 concurrent `limit=1` range requests on a segment of
//! 100,000 comments, against the release server. Not a test: run it.
//!
//! `replay_range_bench [--bin target/release/danmaku] [--comments 100000]
//! [--concurrency 64] [--rounds 100] [--port 8097] [--after-secs 60]`:
//!
//! 1. seeds a fresh data dir (this binary again, `seed`, in its own process so
//!    the embedded store is closed before the server opens it) with one ended
//!    VOD, `huge`, whose segment 0 holds `--comments` comments;
//! 2. starts `danmaku serve --roles replay-api` on it and waits for `/healthz`;
//! 3. reads the server's RSS idle, times the first (cold) page, then sends
//!    `--rounds` rounds of `--concurrency` concurrent `limit=1` pages at random
//!    offsets (keep-alive connections), sampling the server's RSS every 10 ms;
//! 4. waits `--after-secs` with no request (the decoded rows go after
//!    `replay.rows_idle_secs`, jemalloc returns freed pages after its decay time);
//! 5. prints the RSS (idle, after the cold load, peak during the rounds, the
//!    growth over idle, and after the wait) and the latency percentiles of the
//!    concurrent pages, then stops the server it started.

use danmaku_core::config::Settings;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::Session;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// xorshift: the same comments every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const WORDS: [&str; 12] = [
    "lol",
    "233",
    "666",
    "gg",
    "nice",
    "hahaha",
    "前方高能",
    "笑死",
    "名场面",
    "awsl",
    "yyds",
    "泪目",
];

/// `n` comments of `vod` spread over segment 0, ordered by (offset, id).
fn comments(vod: &str, n: u64) -> Vec<ArchivedComment> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out: Vec<ArchivedComment> = (0..n)
        .map(|i| {
            let offset = rng.below(360_000) as i64;
            let words: Vec<&str> = (0..1 + rng.below(4))
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            ArchivedComment {
                vod: vod.into(),
                offset_ms: offset,
                item: Danmaku {
                    id: 500_000_000_000_000_000 + i,
                    room: "bench-room".into(),
                    user: format!("u{}", rng.below(1_000_000)),
                    ts_ms: 1_764_000_000_000 + offset,
                    kind: Kind::Comment as i32,
                    mode: Mode::Scroll as i32,
                    color: 0xFFFFFF,
                    text: words.join(" "),
                    vod: Some(vod.into()),
                    offset_ms: Some(offset),
                    ..Default::default()
                },
            }
        })
        .collect();
    out.sort_by_key(|c| (c.offset_ms, c.item.id));
    out
}

async fn seed(args: &[String]) {
    let dir = arg(args, "--data-dir").expect("--data-dir DIR");
    let n = num(args, "--comments", 100_000);
    let mut s = Settings::default();
    s.server.data_dir = dir.into();
    let ctx = danmaku::engines::EngineSelection::build(s)
        .await
        .expect("embedded stores");
    let now = danmaku_core::now_ms();
    let session = Session {
        vod: "huge".into(),
        room: "bench-room".into(),
        started_at: now - 600_000,
        ended_at: None,
        latency_ms: 0,
        video_url: None,
    };
    ctx.archive.create_session(&session).await.expect("session");
    ctx.archive.end_session("huge", now).await.expect("end");
    for chunk in comments("huge", n).chunks(5_000) {
        ctx.archive.upsert_comments(chunk).await.expect("store");
    }
    println!("seeded {n} comments in segment 0 of VOD huge");
}

/// VmRSS of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The server this run started; stopped (by its own PID) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(args: &[String]) {
    let bin = arg(args, "--bin").unwrap_or_else(|| "target/release/danmaku".into());
    let comments = num(args, "--comments", 100_000);
    let concurrency = num(args, "--concurrency", 64) as usize;
    let rounds = num(args, "--rounds", 100) as usize;
    let port = num(args, "--port", 8097);
    let after_secs = num(args, "--after-secs", 60);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path").to_string();

    let t = Instant::now();
    let status = Command::new(std::env::current_exe().expect("this binary"))
        .args([
            "seed",
            "--data-dir",
            &data,
            "--comments",
            &comments.to_string(),
        ])
        .status()
        .expect("seed");
    assert!(status.success(), "seeding failed");
    eprintln!("# seeded in {:.1} s", t.elapsed().as_secs_f64());

    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "serve",
            "--roles",
            "replay-api",
            "--data-dir",
            &data,
            "--listen",
            &listen,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release -p danmaku)"));
    let pid = child.id();
    let _server = Server(child);
    let base = format!("http://{listen}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss(pid);

    let page = |offset: u64| format!("{base}/v1/vods/huge/danmaku?from_ms={offset}&limit=1");
    let t = Instant::now();
    let first = client.get(page(0)).send().await.expect("first page");
    assert!(
        first.status().is_success(),
        "first page: {}",
        first.status()
    );
    first.bytes().await.expect("first body");
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warm = rss(pid);

    // RSS sampled while the rounds run.
    let peak = Arc::new(AtomicU64::new(warm));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut rng = Rng(42);
    let mut ms = Vec::with_capacity(rounds * concurrency);
    let t = Instant::now();
    for _ in 0..rounds {
        let batch: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url) = (client.clone(), page(rng.below(360_000)));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = client.get(url).send().await.expect("page");
                    let ok = r.status().is_success();
                    let body = r.bytes().await.expect("body");
                    assert!(ok, "{}", String::from_utf8_lossy(&body));
                    t.elapsed().as_secs_f64() * 1000.0
                })
            })
            .collect();
        for task in batch {
            ms.push(task.await.expect("request task"));
        }
    }
    let wall = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed).max(rss(pid));
    tokio::time::sleep(Duration::from_secs(after_secs)).await;
    let later = rss(pid);
    ms.sort_by(|a, b| a.total_cmp(b));
    println!("comments,concurrency,requests,cold_first_ms,p50_ms,p90_ms,p99_ms,max_ms,req_per_s,rss_idle_mib,rss_after_cold_mib,rss_peak_mib,rss_growth_mib,rss_{after_secs}s_later_mib");
    println!(
        "{comments},{concurrency},{},{cold_ms:.1},{:.3},{:.3},{:.3},{:.3},{:.0},{:.1},{:.1},{:.1},{:.1},{:.1}",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len() as f64 / wall,
        mib(idle),
        mib(warm),
        mib(peak),
        mib(peak.saturating_sub(idle)),
        mib(later),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("seed") => seed(&args).await,
            _ => run(&args).await,
        }
    });
}
