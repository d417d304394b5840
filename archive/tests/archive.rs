//! The archive role against the embedded adapters in a temporary data dir: what
//! lands in the ArchiveStore and in Parquet, redo after a crash, and concurrent
//! archivers, all checked for exactly-once.

use async_trait::async_trait;
use bytes::Bytes;
use danmaku_archive::{archive_once, drain, process_batch, run, ArchiveRoleError, Context};
use danmaku_core::auth::TokenSigner;
use danmaku_core::config::Settings;
use danmaku_core::id::IdGenerator;
use danmaku_core::memory::MemoryReplayCache;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, SliceError, SliceItem, SliceStat, SliceStore,
};
use danmaku_core::vod::{segment_of, Session};
use danmaku_embedded::{EmbeddedArchiveStore, EmbeddedBus, EmbeddedDb, EmbeddedSliceStore};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// 2025-11-24T16:00:00Z.
const T: i64 = 1_764_000_000_000;
const SLICE_MS: i64 = 10_000;
const HOT_MS: i64 = 3_600_000;
/// A `now` long after every slice here is due.
const LATER: i64 = T + 10 * HOT_MS;

fn context(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Context {
    context_and_db(dir, tweak).0
}

/// The context and its database handle (redb opens a file once per process).
fn context_and_db(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> (Context, EmbeddedDb) {
    let db = EmbeddedDb::open(dir).expect("open db");
    let mut settings = Settings::default();
    settings.server.data_dir = dir.to_path_buf();
    tweak(&mut settings);
    let ctx = Context {
        settings: Arc::new(settings),
        bus: Arc::new(EmbeddedBus::open(db.clone(), 1).expect("bus")),
        slices: Arc::new(EmbeddedSliceStore::new(db.clone())),
        notifier: Arc::new(danmaku_core::memory::LocalNotifier::new(16)),
        archive: Arc::new(EmbeddedArchiveStore::new(db.clone())),
        presence: Arc::new(danmaku_core::ports::MemoryPresence::default()),
        objects: danmaku_object_store::open_url("", dir).expect("objects"),
        cache: Arc::new(MemoryReplayCache::new(1 << 20)),
        signer: TokenSigner::new(b"k"),
        ids: Arc::new(IdGenerator::new(0)),
    };
    (ctx, db)
}

fn comment(id: u64, room: &str, ts_ms: i64, text: &str) -> Danmaku {
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
        kind: if id % 10 == 7 {
            Kind::Gift
        } else {
            Kind::Comment
        } as i32,
        mode: Mode::Scroll as i32,
        color: 0xFFFFFF,
        text: text.into(),
        stream_pos_ms: None,
        vod: None,
        offset_ms: None,
        hidden: false,
        deletes: None,
    }
}

/// Appends `comments` of `room`, seqs following the room's last one.
async fn append(ctx: &Context, room: &str, comments: &[Danmaku]) {
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

/// Comments `ts_ms` apart starting at `from`, with ids from `ctx.ids`.
fn comments(ctx: &Context, room: &str, from: i64, step: i64, n: usize) -> Vec<Danmaku> {
    (0..n)
        .map(|i| {
            let ts = from + i as i64 * step;
            comment(
                ctx.ids.next_id(ts),
                room,
                ts,
                &format!("{room} #{i} 弹幕 \"hi\" <b>🎉</b>"),
            )
        })
        .collect()
}

async fn create_session(
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

/// One row read back from Parquet, with the file it came from.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    file: String,
    id: u64,
    room: String,
    vod: Option<String>,
    offset_ms: Option<i64>,
    ts_ms: i64,
    user: String,
    name: Option<String>,
    kind: String,
    text: String,
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("archive"), &mut out);
    out.sort();
    out
}

fn parquet_rows(dir: &Path) -> Vec<Row> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt64Type};
    let root = dir.join("archive");
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        let file = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let kv = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        assert!(
            kv.iter()
                .any(|k| k.key == "danmaku.schema_version" && k.value.as_deref() == Some("2")),
            "{file}: schema version"
        );
        for batch in builder.build().unwrap() {
            let b = batch.unwrap();
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let (id, room, vod, off, ts) = (
                col("id"),
                col("room"),
                col("vod"),
                col("offset_ms"),
                col("ts"),
            );
            let (user, name, kind, text) = (col("user"), col("name"), col("kind"), col("text"));
            let s = |a: &Arc<dyn Array>, i: usize| a.as_string::<i32>().value(i).to_string();
            for i in 0..b.num_rows() {
                rows.push(Row {
                    file: file.clone(),
                    id: id.as_primitive::<UInt64Type>().value(i),
                    room: s(&room, i),
                    vod: vod.is_valid(i).then(|| s(&vod, i)),
                    offset_ms: off
                        .is_valid(i)
                        .then(|| off.as_primitive::<Int64Type>().value(i)),
                    ts_ms: ts.as_primitive::<TimestampMillisecondType>().value(i),
                    user: s(&user, i),
                    name: name.is_valid(i).then(|| s(&name, i)),
                    kind: s(&kind, i),
                    text: s(&text, i),
                });
            }
        }
    }
    rows
}

/// Asserts that Parquet holds exactly `expected`, each once; returns the rows by id.
fn assert_parquet_exactly(dir: &Path, expected: &[Danmaku]) -> HashMap<u64, Row> {
    let rows = parquet_rows(dir);
    let mut by_id: HashMap<u64, Row> = HashMap::new();
    for r in rows {
        let id = r.id;
        if let Some(prev) = by_id.insert(id, r.clone()) {
            panic!("id {id} twice in Parquet: {} and {}", prev.file, r.file);
        }
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
        assert_eq!(r.kind, d.kind().as_str());
        let hour = danmaku_archive::parquet_file::object_path(d.ts_ms, 0);
        assert!(
            r.file.starts_with(hour.split("/part-").next().unwrap()),
            "{} in {}",
            d.id,
            r.file
        );
    }
    by_id
}

/// Every comment the ArchiveStore holds for `vod`, by id.
async fn archived(ctx: &Context, vod: &str) -> BTreeMap<u64, i64> {
    let mut out = BTreeMap::new();
    let last = ctx.archive.last_segment(vod).await.unwrap();
    for seg in 0..=last.unwrap_or(0) {
        for c in ctx.archive.read_segment(vod, seg).await.unwrap() {
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

#[tokio::test]
async fn drain_puts_session_comments_in_the_store_and_every_comment_in_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), |_| {});
    let session = create_session(&ctx, "v1", "r1", T, 700).await;
    // r1: some before the session (hour 15), 50 during it; r2 has no session.
    let before = comments(&ctx, "r1", T - 30_000, 1_000, 5);
    let during = comments(&ctx, "r1", T + 1_000, 1_234, 50);
    let mut on_recording = comment(
        ctx.ids.next_id(T + 90_000),
        "r1",
        T + 90_000,
        "posted on the VOD",
    );
    on_recording.vod = Some("v0".into());
    on_recording.offset_ms = Some(42);
    let r2 = comments(&ctx, "r2", T - 5_000, 777, 20);
    append(&ctx, "r1", &before).await;
    append(&ctx, "r1", &during).await;
    append(&ctx, "r1", std::slice::from_ref(&on_recording)).await;
    append(&ctx, "r2", &r2).await;
    // A record that does not decode is skipped, not fatal.
    let seq = ctx.slices.last_seq("r2").await.unwrap() + 1;
    let garbage = SliceItem {
        seq,
        ts_ms: T,
        data: Bytes::from_static(&[0x0b, 0xff]),
    };
    ctx.slices
        .append("r2", SLICE_MS, HOT_MS, &[garbage])
        .await
        .unwrap();

    let rows = drain(&ctx, Duration::from_secs(5)).await.unwrap();
    let all: Vec<Danmaku> = before
        .iter()
        .chain(&during)
        .chain([&on_recording])
        .chain(&r2)
        .cloned()
        .collect();
    assert_eq!(rows, all.len() as u64);
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);

    let v1 = archived(&ctx, "v1").await;
    let expected: BTreeMap<u64, i64> = during
        .iter()
        .map(|d| (d.id, d.ts_ms - session.started_at - session.latency_ms))
        .collect();
    assert_eq!(
        v1, expected,
        "every in-session comment at ts - started_at - latency"
    );
    assert_eq!(
        archived(&ctx, "v0").await,
        BTreeMap::from([(on_recording.id, 42)])
    );

    let by_id = assert_parquet_exactly(dir.path(), &all);
    for d in &during {
        assert_eq!(
            (by_id[&d.id].vod.as_deref(), by_id[&d.id].offset_ms),
            (Some("v1"), expected.get(&d.id).copied())
        );
    }
    for d in before.iter().chain(&r2) {
        assert_eq!(
            (by_id[&d.id].vod.as_deref(), by_id[&d.id].offset_ms),
            (None, None),
            "outside any session: Parquet only"
        );
    }
    assert_eq!(by_id[&on_recording.id].vod.as_deref(), Some("v0"));
    let hours: std::collections::BTreeSet<&str> = by_id
        .values()
        .map(|r| r.file.split("/part-").next().unwrap())
        .collect();
    assert_eq!(
        hours.into_iter().collect::<Vec<_>>(),
        vec!["date=2025-11-24/hour=15", "date=2025-11-24/hour=16"]
    );

    // Nothing left: a second drain is a no-op.
    assert_eq!(drain(&ctx, Duration::from_secs(1)).await.unwrap(), 0);
}

#[tokio::test]
async fn archive_once_reports_the_batch_and_is_none_when_nothing_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), |_| {});
    assert!(archive_once(&ctx, LATER).await.unwrap().is_none());
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T + 100, 100, 10);
    append(&ctx, "r1", &c).await;
    // Not due yet at T: the slice is due at its end plus the hot retention.
    assert!(archive_once(&ctx, T + 1_000).await.unwrap().is_none());
    let report = archive_once(&ctx, LATER).await.unwrap().unwrap();
    assert_eq!((report.rows, report.vod_rows), (10, 10));
    assert_eq!(
        report.files,
        vec![format!(
            "date=2025-11-24/hour=16/part-{:020}.parquet",
            report.batch_id
        )]
    );
    assert!(archive_once(&ctx, LATER).await.unwrap().is_none());
    assert_parquet_exactly(dir.path(), &c);
}

/// The embedded SliceStore, instrumented: `complete_batch` fails its first `fail`
/// times (an archiver that crashed after writing everything but before
/// completing), and every claimed batch id is logged.
struct Instrumented {
    inner: EmbeddedSliceStore,
    fail: AtomicUsize,
    claims: std::sync::Mutex<Vec<u64>>,
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

#[tokio::test]
async fn a_batch_redone_after_its_lease_expires_yields_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = context_and_db(dir.path(), |_| {});
    let inner = EmbeddedSliceStore::new(db);
    ctx.slices = Arc::new(Instrumented {
        inner,
        fail: AtomicUsize::new(1),
        claims: Default::default(),
    });
    create_session(&ctx, "v1", "r1", T - HOT_MS, 250).await;
    // Two hours, so the batch writes two files.
    let c: Vec<Danmaku> = comments(&ctx, "r1", T - 20_000, 997, 40);
    append(&ctx, "r1", &c).await;
    ctx.slices.expedite_all().await.unwrap();

    // First attempt: store and Parquet written, then "crash".
    let err = archive_once(&ctx, LATER).await.unwrap_err();
    assert!(matches!(err, ArchiveRoleError::Slices(_)), "{err}");
    let files_after_crash = parquet_files(dir.path());
    assert_eq!(files_after_crash.len(), 2);
    let first_bytes: Vec<Vec<u8>> = files_after_crash
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(archived(&ctx, "v1").await.len(), 40);
    // Leased: nobody else may take it yet.
    assert!(archive_once(&ctx, LATER + 1).await.unwrap().is_none());
    assert_eq!(ctx.slices.pending().await.unwrap(), 1);

    // The lease expires; the same batch is handed out again and redone.
    let lease = ctx.settings.archive.lease_ms as i64;
    let report = archive_once(&ctx, LATER + lease + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.rows, report.vod_rows, report.files.len()),
        (40, 40, 2)
    );
    assert_eq!(parquet_files(dir.path()), files_after_crash, "same names");
    let redo_bytes: Vec<Vec<u8>> = files_after_crash
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(redo_bytes, first_bytes, "same bytes");
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);
    let v1 = archived(&ctx, "v1").await;
    assert_eq!(v1.len(), 40);
    for d in &c {
        assert_eq!(v1[&d.id], d.ts_ms - (T - HOT_MS) - 250);
    }
    assert_parquet_exactly(dir.path(), &c);
}

#[tokio::test]
async fn processing_the_same_batch_twice_writes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), |_| {});
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T - 3_000, 100, 60);
    append(&ctx, "r1", &c).await;
    ctx.slices.expedite_all().await.unwrap();
    let batch = ctx
        .slices
        .claim_batch(LATER, 64, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let first = process_batch(&ctx, batch.clone()).await.unwrap();
    let second = process_batch(&ctx, batch).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        archived(&ctx, "v1").await.len(),
        30,
        "only the comments from T on"
    );
    assert_parquet_exactly(dir.path(), &c);
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);
}

async fn concurrent_loops(lease_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = context_and_db(dir.path(), |s| {
        s.archive.poll_ms = 5;
        s.archive.batch_slices = 4;
        s.archive.lease_ms = lease_ms;
    });
    let slices = Arc::new(Instrumented {
        inner: EmbeddedSliceStore::new(db),
        fail: AtomicUsize::new(0),
        claims: Default::default(),
    });
    ctx.slices = slices.clone();
    create_session(&ctx, "v1", "r1", T, 100).await;
    let mut all = Vec::new();
    for room in ["r1", "r2", "r3"] {
        // One comment every 1.5 s over 150 s: 15 slices of 10 s per room.
        let c = comments(&ctx, room, T + 1_000, 1_500, 100);
        for chunk in c.chunks(17) {
            append(&ctx, room, chunk).await;
        }
        all.extend(c);
    }
    ctx.slices.expedite_all().await.unwrap();
    let shutdown = CancellationToken::new();
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run(ctx.clone(), shutdown.clone())))
        .collect();
    tokio::time::timeout(Duration::from_secs(5), async {
        while ctx.slices.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("archived within 5 s");
    shutdown.cancel();
    for l in loops {
        tokio::time::timeout(Duration::from_secs(2), l)
            .await
            .expect("loop stops")
            .unwrap();
    }
    let claims = slices.claims.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<_> = claims.iter().collect();
    if lease_ms >= 30_000 {
        // No lease can expire in this test: each batch was held by one loop only.
        assert_eq!(
            claims.len(),
            distinct.len(),
            "a batch claimed twice under a live lease"
        );
    }
    assert_parquet_exactly(dir.path(), &all);
    let v1 = archived(&ctx, "v1").await;
    assert_eq!(v1.len(), 100);
    assert!(all
        .iter()
        .filter(|d| d.room == "r1")
        .all(|d| v1[&d.id] == d.ts_ms - T - 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_loops_archive_every_item_exactly_once() {
    concurrent_loops(30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_redoing_each_others_batches_still_archive_each_item_once() {
    // A lease far shorter than a batch takes: the other loop re-claims batches in
    // progress and both write them.
    concurrent_loops(1).await;
}

#[tokio::test]
async fn run_stops_promptly_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), |s| s.archive.poll_ms = 60_000);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(ctx, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops at once")
        .unwrap();
}
