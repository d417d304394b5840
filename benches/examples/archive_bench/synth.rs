//! Synthetic comments for the archive benchmark (`archive/examples/bench.rs`,
//! figures in `docs/benchmarks/archive.md`) and for tests: deterministic (seeded),
//! shaped like live-stream traffic: a few busy rooms and a long tail, many users,
//! short texts drawn from a vocabulary of common danmaku (CJK, Latin, emoji), mostly
//! white scrolling comments with some gifts and colors.

use danmaku_archive::parquet_file::ParquetRow;
use danmaku_core::model::{Danmaku, Kind, Mode};

/// A small deterministic generator (splitmix64), so the benchmark needs no RNG crate
/// and every run encodes the same comments.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Common danmaku: the texts are drawn from (and combined out of) these.
const VOCABULARY: &[&str] = &[
    "哈哈哈哈哈",
    "好耶",
    "awsl",
    "666",
    "前方高能",
    "？？？",
    "草",
    "泪目",
    "来了来了",
    "打卡",
    "yyds",
    "这也太强了",
    "主播加油",
    "笑死",
    "gg",
    "nice",
    "lol",
    "🎉🎉",
    "👍",
    "😂😂😂",
    "第一",
    "高能预警",
    "妙啊",
    "再来一次",
    "wow",
    "clip it",
    "破防了",
    "名场面",
    "hhhhhh",
    "awsl awsl",
];

/// `n` comments starting at `start_ms`, `rate` per second on average, over `rooms`
/// rooms (room `r0` the busiest: a quarter of the traffic, the rest spread) and
/// 50,000 users. Ids grow with time like real ones (milliseconds << 22 | sequence).
pub fn synthetic(n: usize, seed: u64, start_ms: i64, rate: u32, rooms: u32) -> Vec<Danmaku> {
    let mut rng = Rng::new(seed);
    let rooms = rooms.max(1) as u64;
    let step_us = 1_000_000 / rate.max(1) as i64;
    let mut out = Vec::with_capacity(n);
    let mut t_us = start_ms * 1_000;
    for i in 0..n {
        t_us += (rng.below(2 * step_us.max(1) as u64)) as i64;
        let ts_ms = t_us / 1_000;
        let room = if rng.below(4) == 0 {
            0
        } else {
            rng.below(rooms)
        };
        let user = rng.below(50_000);
        let words = 1 + rng.below(3);
        let mut text = String::new();
        for w in 0..words {
            if w > 0 && rng.below(2) == 0 {
                text.push(' ');
            }
            text.push_str(VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize]);
        }
        let roll = rng.below(100);
        let kind = match roll {
            0..=2 => Kind::Gift,
            3 => Kind::Like,
            4 => Kind::System,
            _ => Kind::Comment,
        };
        let mode = match rng.below(20) {
            0 => Mode::Top,
            1 => Mode::Bottom,
            _ => Mode::Scroll,
        };
        let color = match rng.below(10) {
            0 => 0xFE0302,
            1 => 0x00CD00,
            2 => 0xFFFF00,
            _ => 0xFFFFFF,
        };
        out.push(Danmaku {
            id: ((ts_ms as u64) << 22) | (i as u64 & 0x3F_FFFF),
            room: format!("r{room}"),
            user: format!("u{user}"),
            name: if user.is_multiple_of(3) {
                String::new()
            } else {
                format!("viewer{user}")
            },
            ts_ms,
            kind: kind as i32,
            mode: mode as i32,
            color,
            text,
            stream_pos_ms: None,
            vod: None,
            offset_ms: None,
            hidden: false,
            deletes: None,
        });
    }
    out
}

/// What [`prepare_batch`] returns: rows written to Parquet, rows for the
/// ArchiveStore, and the `(object name, Parquet bytes)` files.
pub type Prepared = (usize, usize, Vec<(String, bytes::Bytes)>);

/// The archiver's pure step for one batch, as `process_batch` runs it on the
/// blocking pool: decode each slice item, align it to its room's session, encode
/// the hour files.
pub fn prepare_batch(
    batch_id: u64,
    items: Vec<(String, danmaku_core::ports::SliceItem)>,
    sessions: &std::collections::HashMap<String, Vec<danmaku_core::vod::Session>>,
    plausible_window_ms: i64,
) -> Result<Prepared, danmaku_archive::parquet_file::EncodeError> {
    let aligned = danmaku_archive::batch::align(batch_id, items, sessions, plausible_window_ms);
    let files = danmaku_archive::batch::encode(batch_id, &aligned)?;
    Ok((aligned.rows(), aligned.archived.len(), files))
}

/// A batch decoded and aligned to its sessions ([`align_batch`]): the archiver's
/// first pure step, kept apart so the benchmark can time each step.
#[derive(Debug)]
pub struct AlignedBatch(danmaku_archive::batch::Aligned);

impl AlignedBatch {
    /// The comments that belong to a VOD, as the ArchiveStore gets them.
    pub fn archived(&self) -> &[danmaku_core::ports::ArchivedComment] {
        &self.0.archived
    }
    /// Comments that go to Parquet.
    pub fn rows(&self) -> usize {
        self.0.rows()
    }
}

/// Decodes a batch's slice items and aligns each to its room's session.
pub fn align_batch(
    batch_id: u64,
    items: Vec<(String, danmaku_core::ports::SliceItem)>,
    sessions: &std::collections::HashMap<String, Vec<danmaku_core::vod::Session>>,
    plausible_window_ms: i64,
) -> AlignedBatch {
    AlignedBatch(danmaku_archive::batch::align(
        batch_id,
        items,
        sessions,
        plausible_window_ms,
    ))
}

/// The hour files of an aligned batch.
pub fn encode_aligned(
    batch_id: u64,
    batch: &AlignedBatch,
) -> Result<Vec<(String, bytes::Bytes)>, danmaku_archive::parquet_file::EncodeError> {
    danmaku_archive::batch::encode(batch_id, &batch.0)
}

/// The Parquet rows of `comments` (no VOD).
pub fn rows(comments: &[Danmaku]) -> Vec<ParquetRow> {
    comments
        .iter()
        .map(|d| ParquetRow::from_danmaku(d.clone(), &d.room, None, None))
        .collect()
}

/// `comments` as JSON lines of the API's item JSON (the baseline an archive of raw
/// events would store).
pub fn json_lines(comments: &[Danmaku]) -> Vec<u8> {
    let mut out = Vec::with_capacity(comments.len() * 160);
    for d in comments {
        out.extend_from_slice(d.to_json().as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_comments_are_deterministic_and_plausible() {
        let a = synthetic(2_000, 7, 1_764_000_000_000, 1_000, 50);
        let b = synthetic(2_000, 7, 1_764_000_000_000, 1_000, 50);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let ids: std::collections::HashSet<u64> = a.iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), a.len(), "ids unique");
        let span = a.last().unwrap().ts_ms - a[0].ts_ms;
        assert!(
            (1_000..4_000).contains(&span),
            "about 2 s at 1,000/s: {span}"
        );
        let r0 = a.iter().filter(|d| d.room == "r0").count();
        assert!(r0 > 400, "room r0 is busy: {r0}");
        assert!(a.iter().any(|d| d.kind() == Kind::Gift));
        let jl = json_lines(&a[..2]);
        assert_eq!(jl.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(rows(&a).len(), 2_000);
    }
}
