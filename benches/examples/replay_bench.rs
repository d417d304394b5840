//! Replay benchmarks' helper (docs/benchmarks/replay.md). Not a test: run it.
//!
//! - `replay_bench seed --data-dir DIR [--bench-comments 110] [--zipf-vods 1000]
//!   [--zipf-comments 110]`: fills an embedded data dir (the server must not be
//!   running on it) with ended VODs: `bench` (segment 0 of about 20 KB of JSON,
//!   like ../shared/bench/make_segment.py's) and `z0`..`z<N-1>` for the Zipf load.
//!   Texts are deterministic, so every run serves the same bytes.
//! - `replay_bench cold [--store embedded|scylla] [--scylla-nodes H:P] [--samples 200]
//!   [--comments 6000] [--runs 3]`: cold segment latency through the replay router
//!   (in-process: session and count lookup, ArchiveStore read, density cap,
//!   encoding, gzip, cache put), every request a distinct VOD so nothing is
//!   cached. `scylla` without `--scylla-nodes` uses the in-process CQL test peer
//!   (kassandra). Prints `store,comments,samples,run,p50_ms,p90_ms,p99_ms,max_ms`
//!   per run and the medians.
//! - `replay_bench serve --data-dir DIR --listen ADDR [--current-thread]`: the
//!   replay router alone on an embedded data dir, without the binary's other
//!   layers (request tracing, the other roles' routes), to tell the replay API's
//!   own cost from the wiring's.

use axum::body::Body;
use axum::http::Request;
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::Session;
use std::time::{Duration, Instant};
use tower::ServiceExt;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// A deterministic generator (xorshift), so seeded bytes never change.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: [&str; 18] = [
    "lol", "233", "666", "gg", "nice", "hahaha", "first", "wow", "ok", "clip it", "replay", "w",
    "???", "lmao", "pog", "kekw", "yyds", "hi",
];
const CJK: &str = "前方高能哈哈哈哈笑死我了这波操作太秀了弹幕护体好家伙名场面泪目awsl";

/// `n` comments of VOD `vod` spread over `[0, span_ms)`, ordered by offset.
fn comments(vod: &str, seed: u64, n: usize, span_ms: i64) -> Vec<ArchivedComment> {
    let mut rng = Rng(seed | 1);
    let cjk: Vec<char> = CJK.chars().collect();
    let mut out: Vec<ArchivedComment> = (0..n)
        .map(|i| {
            let mut parts = Vec::new();
            for _ in 0..1 + rng.below(4) {
                if rng.below(2) == 0 {
                    parts.push(WORDS[rng.below(WORDS.len() as u64) as usize].to_string());
                } else {
                    let k = 2 + rng.below(7) as usize;
                    let o = rng.below((cjk.len() - k) as u64) as usize;
                    parts.push(cjk[o..o + k].iter().collect());
                }
            }
            let offset = rng.below(span_ms as u64) as i64;
            let mode = [
                Mode::Scroll,
                Mode::Scroll,
                Mode::Scroll,
                Mode::Top,
                Mode::Bottom,
            ][rng.below(5) as usize];
            let color = [0xFFFFFF, 0xFFFFFF, 0xFF0000, 0x00FF00, 0xFFFF00][rng.below(5) as usize];
            let id = 400_000_000_000_000_000 + seed * 1_000_000 + i as u64;
            ArchivedComment {
                vod: vod.to_string(),
                offset_ms: offset,
                item: Danmaku {
                    id,
                    room: "bench-room".into(),
                    user: format!("u{}", rng.below(5_000_000)),
                    name: String::new(),
                    ts_ms: 1_764_000_000_000 + offset,
                    kind: Kind::Comment as i32,
                    mode: mode as i32,
                    color,
                    text: parts.join(" "),
                    stream_pos_ms: None,
                    vod: Some(vod.to_string()),
                    offset_ms: Some(offset),
                    hidden: false,
                    deletes: None,
                },
            }
        })
        .collect();
    out.sort_by_key(|c| (c.offset_ms, c.item.id));
    out
}

async fn ended_vod(ctx: &Context, vod: &str, seed: u64, n: usize) {
    let now = danmaku_core::now_ms();
    let session = Session {
        vod: vod.to_string(),
        room: "bench-room".into(),
        started_at: now - 3_600_000,
        ended_at: None,
        latency_ms: 0,
        video_url: None,
    };
    ctx.archive
        .create_session(&session)
        .await
        .unwrap_or_else(|e| panic!("create {vod}: {e}"));
    ctx.archive
        .end_session(vod, now)
        .await
        .unwrap_or_else(|e| panic!("end {vod}: {e}"));
    let rows = comments(vod, seed, n, 360_000);
    for chunk in rows.chunks(2000) {
        ctx.archive
            .upsert_comments(chunk)
            .await
            .unwrap_or_else(|e| panic!("store {vod}: {e}"));
    }
}

async fn seed(args: &[String]) {
    let dir = arg(args, "--data-dir").expect("--data-dir DIR");
    let mut s = Settings::default();
    s.server.data_dir = dir.into();
    let ctx = danmaku::engines::EngineSelection::build(s)
        .await
        .expect("embedded stores");
    ended_vod(&ctx, "bench", 1, num(args, "--bench-comments", 110)).await;
    let zipf = num(args, "--zipf-vods", 1000);
    let per = num(args, "--zipf-comments", 110);
    for i in 0..zipf {
        ended_vod(&ctx, &format!("z{i}"), 10 + i as u64, per).await;
    }
    println!("seeded bench and {zipf} Zipf VODs");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn cold(args: &[String]) {
    let store = arg(args, "--store").unwrap_or_else(|| "embedded".into());
    let samples = num(args, "--samples", 200);
    let per = num(args, "--comments", 6000);
    let runs = num(args, "--runs", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = Settings::default();
    s.server.data_dir = dir.path().to_path_buf();
    let mut _peer = None;
    if store == "scylla" {
        s.scylla = match arg(args, "--scylla-nodes") {
            Some(nodes) => danmaku_core::config::ScyllaSettings {
                nodes,
                keyspace: format!("bench{}", std::process::id()),
                ..Default::default()
            },
            None => {
                let peer = danmaku_scylla::testserver::CqlTestServer::start();
                let settings = peer.settings(&format!("bench{}", std::process::id()));
                _peer = Some(peer);
                settings
            }
        };
        danmaku_scylla::migrate(&s.scylla)
            .await
            .expect("schema on the CQL peer");
    }
    let ctx = danmaku::engines::EngineSelection::build(s)
        .await
        .expect("stores");
    let ingest = danmaku_ingest::Ingest::new(ctx.clone()).expect("ingest");
    let app = danmaku_replay_api::router(danmaku_replay_api::Replay::new(ctx.clone(), ingest));
    println!("store,comments,samples,run,p50_ms,p90_ms,p99_ms,max_ms");
    let (mut p50s, mut p90s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let t = Instant::now();
        for i in 0..samples {
            ended_vod(
                &ctx,
                &format!("c{run}x{i}"),
                7 + (run * samples + i) as u64,
                per,
            )
            .await;
        }
        eprintln!("# run {run}: seeded {samples} VODs in {:?}", t.elapsed());
        let mut ms = Vec::with_capacity(samples);
        for i in 0..samples {
            let req = Request::get(format!("/v1/vods/c{run}x{i}/segments/0"))
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let (p50, p90, p99) = (
            percentile(&ms, 0.5),
            percentile(&ms, 0.9),
            percentile(&ms, 0.99),
        );
        println!(
            "{store},{per},{samples},{run},{p50:.3},{p90:.3},{p99:.3},{:.3}",
            ms[ms.len() - 1]
        );
        p50s.push(p50);
        p90s.push(p90);
        p99s.push(p99);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{store},{per},{samples},median,{:.3},{:.3},{:.3},",
        median(p50s),
        median(p90s),
        median(p99s)
    );
}

async fn serve(args: &[String]) {
    let dir = arg(args, "--data-dir").expect("--data-dir DIR");
    let listen = arg(args, "--listen").unwrap_or_else(|| "127.0.0.1:8095".into());
    let mut s = Settings::default();
    s.server.data_dir = dir.into();
    if let Some(bytes) = arg(args, "--cache-bytes") {
        s.replay.cache_bytes = bytes.parse().expect("--cache-bytes takes a number");
    }
    let ctx = danmaku::engines::EngineSelection::build(s)
        .await
        .expect("embedded stores");
    let ingest = danmaku_ingest::Ingest::new(ctx.clone()).expect("ingest");
    let app = danmaku_replay_api::router(danmaku_replay_api::Replay::new(ctx, ingest));
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.expect("serve");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = if args.iter().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("seed") => seed(&args).await,
            Some("cold") => cold(&args).await,
            Some("serve") => serve(&args).await,
            _ => eprintln!(
            "usage: replay_bench seed --data-dir DIR [--bench-comments N] [--zipf-vods N] [--zipf-comments N]\n       replay_bench cold [--store embedded|scylla] [--scylla-nodes H:P] [--samples N] [--comments N] [--runs N]\n       replay_bench serve --data-dir DIR [--listen ADDR] [--cache-bytes N] [--current-thread]"
        ),
        }
    });
}
