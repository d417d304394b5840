//! Helpers shared by the archive tests that came after `archive.rs`: contexts on
//! the embedded adapters (optionally with the ScyllaDB ArchiveStore on the
//! in-process CQL server), comments, Parquet read-back and exactly-once checks.

#![allow(dead_code)]

mod failing;
#[allow(unused_imports)]
pub use failing::FailingDeletes;

use async_trait::async_trait;
use danmaku_archive::parquet_file::{self, ParquetRow};
use danmaku_archive::Context;
use danmaku_core::auth::TokenSigner;
use danmaku_core::config::Settings;
use danmaku_core::id::IdGenerator;
use danmaku_core::memory::MemoryReplayCache;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, ArchiveStore, SliceError, SliceItem, SliceStat, SliceStore,
};
use danmaku_core::vod::{segment_of, Session};
use danmaku_embedded::{EmbeddedArchiveStore, EmbeddedBus, EmbeddedDb, EmbeddedSliceStore};
use danmaku_scylla::testserver::CqlTestServer;
use danmaku_scylla::{migrate, ScyllaArchiveStore};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2025-11-24T16:00:00Z.
pub const T: i64 = 1_764_000_000_000;
pub const SLICE_MS: i64 = 10_000;
pub const HOT_MS: i64 = 3_600_000;
/// A `now` long after every slice here is due.
pub const LATER: i64 = T + 10 * HOT_MS;

/// Which ArchiveStore a test context uses.
pub enum Store<'a> {
    Embedded,
    /// The ScyllaDB adapter on this CQL server, in a fresh keyspace.
    Scylla(&'a CqlTestServer),
}

/// A context on the embedded adapters in `dir`, with the chosen ArchiveStore, and
/// the embedded database handle (redb opens a file once per process).
pub async fn context(
    dir: &Path,
    store: Store<'_>,
    tweak: impl FnOnce(&mut Settings),
) -> (Context, EmbeddedDb) {
    let db = EmbeddedDb::open(dir).expect("open db");
    let mut settings = Settings::default();
    settings.server.data_dir = dir.to_path_buf();
    tweak(&mut settings);
    let archive: Arc<dyn ArchiveStore> = match store {
        Store::Embedded => Arc::new(EmbeddedArchiveStore::new(db.clone())),
        Store::Scylla(server) => {
            let scylla = server.settings(&format!("a{}", rand_u32()));
            migrate(&scylla).await.expect("migrate");
            settings.scylla = scylla.clone();
            Arc::new(ScyllaArchiveStore::connect(&scylla).await.expect("connect"))
        }
    };
    let ctx = Context {
        settings: Arc::new(settings),
        bus: Arc::new(EmbeddedBus::open(db.clone(), 1).expect("bus")),
        slices: Arc::new(EmbeddedSliceStore::new(db.clone())),
        notifier: Arc::new(danmaku_core::memory::LocalNotifier::new(16)),
        archive,
        presence: Arc::new(danmaku_core::ports::MemoryPresence::default()),
        objects: danmaku_object_store::open_url("", dir).expect("objects"),
        cache: Arc::new(MemoryReplayCache::new(1 << 20)),
        signer: TokenSigner::new(b"k"),
        ids: Arc::new(IdGenerator::new(0)),
    };
    (ctx, db)
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

pub fn comment(id: u64, room: &str, ts_ms: i64, text: &str) -> Danmaku {
    Danmaku {
        id,
        room: room.into(),
        user: format!("user{}", id % 7),
        name: if id % 2 == 1 {
            String::new()
        } else {
            format!("Name {id}")
        },
        ts_ms,
        kind: match id % 10 {
            7 => Kind::Gift,
            8 => Kind::Like,
            _ => Kind::Comment,
        } as i32,
        mode: match id % 5 {
            3 => Mode::Top,
            4 => Mode::Bottom,
            _ => Mode::Scroll,
        } as i32,
        color: (id as u32).wrapping_mul(2_654_435_761) & 0xFF_FFFF,
        text: text.into(),
        stream_pos_ms: None,
        vod: None,
        offset_ms: None,
        hidden: false,
        deletes: None,
    }
}

/// Texts that break naive CSV/JSON/SQL handling.
pub const HOSTILE: &[&str] = &[
    "好耶 \"quoted\" 'single' \\ backslash",
    "<script>alert('x')</script>",
    "🎉🎉 emoji, ZWJ 👨‍👩‍👧 and RTL مرحبا",
    "a,b;c\td",
    "line one\u{2028}line two",
    "",
    "NULL",
];

/// `n` comments `step` ms apart from `from`, ids from `ctx.ids`, hostile texts mixed in.
pub fn comments(ctx: &Context, room: &str, from: i64, step: i64, n: usize) -> Vec<Danmaku> {
    (0..n)
        .map(|i| {
            let ts = from + i as i64 * step;
            let text = if i % 5 == 0 {
                format!("{}{}", HOSTILE[i / 5 % HOSTILE.len()], i)
            } else {
                format!("{room} #{i} 弹幕")
            };
            comment(ctx.ids.next_id(ts), room, ts, &text)
        })
        .collect()
}

/// Appends `comments` of `room`, seqs following the room's last one.
pub async fn append(ctx: &Context, room: &str, comments: &[Danmaku]) {
    let last = ctx.slices.last_seq(room).await.unwrap();
    let items: Vec<SliceItem> = comments
        .iter()
        .enumerate()
        .map(|(i, d)| SliceItem {
            seq: last + 1 + i as u64,
            ts_ms: d.ts_ms,
            data: d.encode_bytes(),
        })
        .collect();
    ctx.slices
        .append(room, SLICE_MS, HOT_MS, &items)
        .await
        .unwrap();
}

pub async fn create_session(
    ctx: &Context,
    vod: &str,
    room: &str,
    started_at: i64,
    latency_ms: i64,
) -> Session {
    let s = Session {
        vod: vod.into(),
        room: room.into(),
        started_at,
        ended_at: None,
        latency_ms,
        video_url: None,
    };
    ctx.archive.create_session(&s).await.unwrap();
    s
}

/// Every comment file under `<dir>/archive` (not `deletions/`), sorted, as
/// paths relative to it.
pub fn archive_files(dir: &Path) -> Vec<String> {
    every_parquet_file(dir)
        .into_iter()
        .filter(|f| !f.starts_with("deletions/"))
        .collect()
}

/// Every deletion file under `<dir>/archive/deletions`, sorted, relative to
/// `<dir>/archive`.
pub fn deletion_files(dir: &Path) -> Vec<String> {
    every_parquet_file(dir)
        .into_iter()
        .filter(|f| f.starts_with("deletions/"))
        .collect()
}

/// Every deletion row of every deletion file.
pub fn deletion_rows(dir: &Path) -> Vec<parquet_file::DeletionRow> {
    let root = dir.join("archive");
    deletion_files(dir)
        .into_iter()
        .flat_map(|file| {
            let bytes = std::fs::read(root.join(&file)).unwrap();
            parquet_file::decode_deletions(bytes.into())
                .unwrap_or_else(|e| panic!("{file} does not read back: {e}"))
        })
        .collect()
}

/// A deletion record (as the DELETE handler appends it) of comment `target`.
pub fn deletion_record(id: u64, target: &Danmaku, vod: Option<(&str, i64)>, ts_ms: i64) -> Danmaku {
    Danmaku {
        id,
        room: target.room.clone(),
        user: "moderator".into(),
        ts_ms,
        kind: Kind::System as i32,
        text: format!("spam {}", target.id),
        vod: vod.map(|(v, _)| v.to_string()),
        offset_ms: vod.map(|(_, o)| o),
        deletes: Some(target.id),
        ..Default::default()
    }
}

fn every_parquet_file(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = dir.join("archive");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// Every row of every archive file, with the file it came from.
pub fn parquet_rows(dir: &Path) -> Vec<(String, ParquetRow)> {
    let root = dir.join("archive");
    let mut out = Vec::new();
    for file in archive_files(dir) {
        let bytes = std::fs::read(root.join(&file)).unwrap();
        let (rows, _) = parquet_file::decode(bytes.into())
            .unwrap_or_else(|e| panic!("{file} does not read back: {e}"));
        let mut sorted = rows.clone();
        parquet_file::sort_rows(&mut sorted);
        assert_eq!(rows, sorted, "{file}: rows sorted by (room, ts, id)");
        out.extend(rows.into_iter().map(|r| (file.clone(), r)));
    }
    out
}

/// Asserts that Parquet holds exactly `expected`, each once, in its hour's
/// directory, every column as sent; returns the rows by id.
pub fn assert_parquet_exactly(dir: &Path, expected: &[Danmaku]) -> HashMap<u64, ParquetRow> {
    let mut by_id: HashMap<u64, ParquetRow> = HashMap::new();
    for (file, r) in parquet_rows(dir) {
        let hour = parquet_file::object_path(r.ts_ms, 0);
        let hour = hour.split("/part-").next().unwrap();
        assert!(
            file.starts_with(hour),
            "{} in {file}, not under {hour}",
            r.id
        );
        let id = r.id;
        assert!(by_id.insert(id, r).is_none(), "id {id} twice in Parquet");
    }
    assert_eq!(by_id.len(), expected.len(), "row count");
    for d in expected {
        let r = by_id
            .get(&d.id)
            .unwrap_or_else(|| panic!("id {} missing from Parquet", d.id));
        assert_eq!(
            (r.room.as_str(), r.ts_ms, r.user.as_str(), r.text.as_str()),
            (d.room.as_str(), d.ts_ms, d.user.as_str(), d.text.as_str())
        );
        assert_eq!(
            r.name.as_deref(),
            (!d.name.is_empty()).then_some(d.name.as_str())
        );
        assert_eq!(
            (r.kind, r.mode, r.color),
            (d.kind().as_str(), d.mode().as_str(), d.color)
        );
    }
    by_id
}

/// Every comment the ArchiveStore holds for `vod`, by id, checked for order, shape
/// and count.
pub async fn archived(ctx: &Context, vod: &str) -> BTreeMap<u64, i64> {
    let mut out = BTreeMap::new();
    let last = ctx.archive.last_segment(vod).await.unwrap();
    for seg in 0..=last.unwrap_or(0) {
        let rows = ctx.archive.read_segment(vod, seg).await.unwrap();
        assert!(rows
            .windows(2)
            .all(|w| (w[0].offset_ms, w[0].item.id) < (w[1].offset_ms, w[1].item.id)));
        for c in rows {
            assert_eq!(
                (c.item.vod.as_deref(), c.item.offset_ms),
                (Some(vod), Some(c.offset_ms))
            );
            assert_eq!(segment_of(c.offset_ms), seg);
            assert!(
                out.insert(c.item.id, c.offset_ms).is_none(),
                "id {} twice in {vod}",
                c.item.id
            );
        }
    }
    assert_eq!(
        ctx.archive.count(vod).await.unwrap(),
        out.len() as u64,
        "count of {vod}"
    );
    out
}

/// The embedded SliceStore, instrumented: `complete_batch` fails its first `fail`
/// times (an archiver that crashed after writing everything but before
/// completing), and every claimed batch id is logged.
pub struct Instrumented {
    pub inner: EmbeddedSliceStore,
    pub fail: AtomicUsize,
    pub claims: std::sync::Mutex<Vec<u64>>,
}

impl Instrumented {
    pub fn new(db: EmbeddedDb, fail: usize) -> Self {
        Self {
            inner: EmbeddedSliceStore::new(db),
            fail: AtomicUsize::new(fail),
            claims: Default::default(),
        }
    }
}

#[async_trait]
impl SliceStore for Instrumented {
    async fn append_at(
        &self,
        room: &str,
        len: i64,
        hot: i64,
        items: &[SliceItem],
        now_ms: Option<i64>,
    ) -> Result<AppendOutcome, SliceError> {
        self.inner.append_at(room, len, hot, items, now_ms).await
    }
    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError> {
        self.inner.read_after(room, after, limit).await
    }
    async fn last_seq(&self, room: &str) -> Result<u64, SliceError> {
        self.inner.last_seq(room).await
    }
    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError> {
        self.inner.expedite(room, up_to_ms).await
    }
    async fn expedite_all(&self) -> Result<(), SliceError> {
        self.inner.expedite_all().await
    }
    async fn claim_batch(
        &self,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError> {
        let b = self.inner.claim_batch(now_ms, max, lease).await?;
        if let Some(b) = &b {
            self.claims.lock().unwrap().push(b.id);
        }
        Ok(b)
    }
    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SliceError::unavailable("simulated crash before complete"));
        }
        self.inner.complete_batch(batch_id).await
    }
    async fn renew_lease(
        &self,
        batch_id: u64,
        now_ms: i64,
        lease: Duration,
    ) -> Result<bool, SliceError> {
        self.inner.renew_lease(batch_id, now_ms, lease).await
    }
    async fn expire_archived(&self, now_ms: i64) -> Result<u64, SliceError> {
        self.inner.expire_archived(now_ms).await
    }
    async fn archived_through(&self, room: &str) -> Result<u64, SliceError> {
        self.inner.archived_through(room).await
    }
    async fn pending(&self) -> Result<u64, SliceError> {
        self.inner.pending().await
    }
    async fn largest_slices(&self, limit: usize) -> Result<Vec<SliceStat>, SliceError> {
        self.inner.largest_slices(limit).await
    }
    async fn ready(&self) -> bool {
        true
    }
}

/// `python3` with pyarrow and duckdb, or a panic saying how to get them (the test
/// command, infra/dev/test.sh, installs them).
pub fn python_with_readers() -> PathBuf {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import pyarrow, duckdb"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests read Parquet back with pyarrow and DuckDB: `python3 -m pip install pyarrow duckdb` \
         (infra/dev/test.sh does it)"
    );
    PathBuf::from("python3")
}

/// Runs `script` with `python3 -c`, `args` as `sys.argv[1:]`; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python_with_readers())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}
