//! Seeds an embedded data dir with one long ended recording for the replay
//! page's benchmark (web/e2e/bench.mjs, docs/BENCHMARKS.md "The pages in
//! Chromium"): the API cannot make a 3-hour recording without waiting three
//! hours, so the session and its comments go into the ArchiveStore directly
//! (the server must not be running on the dir).
//!
//! `web_seed --data-dir DIR [--vod perf-vod] [--room perf-room] [--hours 3]
//! [--per-segment 6000]`: a session that started `--hours` ago and ended now,
//! with `--per-segment` comments in every 6-minute segment (the default density
//! cap), at random offsets, in random modes and colors. Deterministic texts.

use danmaku_core::config::Settings;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::Session;

const SEGMENT_MS: i64 = 360_000;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const PHRASES: [&str; 16] = [
    "好耶",
    "前方高能",
    "哈哈哈哈哈",
    "名场面",
    "this is the part",
    "gg",
    "8888888",
    "what a play",
    "clip it!",
    "泪目",
    "弹幕护体",
    "lol",
    "replay that",
    "awsl",
    "第一次来",
    "???",
];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = arg(&args, "--data-dir").expect("--data-dir DIR");
    let vod = arg(&args, "--vod").unwrap_or_else(|| "perf-vod".into());
    let room = arg(&args, "--room").unwrap_or_else(|| "perf-room".into());
    let hours: f64 = arg(&args, "--hours").map_or(3.0, |v| v.parse().expect("--hours"));
    let per: usize =
        arg(&args, "--per-segment").map_or(6000, |v| v.parse().expect("--per-segment"));

    let mut s = Settings::default();
    s.server.data_dir = dir.into();
    let ctx = danmaku::engines::EngineSelection::build(s)
        .await
        .expect("embedded stores");
    let now = danmaku_core::now_ms();
    let span = (hours * 3_600_000.0) as i64;
    let session = Session {
        vod: vod.clone(),
        room: room.clone(),
        started_at: now - span,
        ended_at: None,
        latency_ms: 0,
        video_url: None,
    };
    ctx.archive.create_session(&session).await.expect("session");
    ctx.archive.end_session(&vod, now).await.expect("end");

    let mut rng = Rng(15);
    let segments = (span + SEGMENT_MS - 1) / SEGMENT_MS;
    let mut total = 0usize;
    for n in 0..segments {
        let from = n * SEGMENT_MS;
        let len = SEGMENT_MS.min(span - from);
        let mut rows: Vec<ArchivedComment> = (0..per)
            .map(|i| {
                let offset = from + rng.below(len as u64) as i64;
                let text = format!(
                    "{} {}",
                    PHRASES[rng.below(PHRASES.len() as u64) as usize],
                    rng.below(1000)
                );
                let mode = [
                    Mode::Scroll,
                    Mode::Scroll,
                    Mode::Scroll,
                    Mode::Top,
                    Mode::Bottom,
                ][rng.below(5) as usize];
                ArchivedComment {
                    vod: vod.clone(),
                    offset_ms: offset,
                    item: Danmaku {
                        id: 500_000_000_000_000_000 + (n as u64) * 1_000_000 + i as u64,
                        room: room.clone(),
                        user: format!("u{}", rng.below(100_000)),
                        name: String::new(),
                        ts_ms: session.started_at + offset,
                        kind: Kind::Comment as i32,
                        mode: mode as i32,
                        color: (rng.next() & 0xff_ffff) as u32,
                        text,
                        stream_pos_ms: None,
                        vod: Some(vod.clone()),
                        offset_ms: Some(offset),
                        hidden: false,
                        deletes: None,
                    },
                }
            })
            .collect();
        rows.sort_by_key(|c| (c.offset_ms, c.item.id));
        for chunk in rows.chunks(3000) {
            ctx.archive.upsert_comments(chunk).await.expect("store");
        }
        total += rows.len();
    }
    println!("seeded {vod}: {hours} h, {segments} segments, {total} comments");
}
