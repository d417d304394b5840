//! Issue 13, item 6: leases, measured on the real clock.
//!
//! - An archiver renews its lease while it works: a batch taking several leases
//!   is never taken by a second archiver meanwhile (embedded and Redis).
//! - A batch abandoned mid-way by a process that died is redone: at once by the
//!   next process on the same embedded database (it releases its predecessor's
//!   leases), within `archive.lease_ms` (5 s by default) on Redis; either way
//!   every comment is archived once, by the same batch id.

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use danmaku_archive::{archive_once, run, ArchiveRoleError, Context};
use danmaku_core::config::{RedisSettings, Settings};
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, ObjectMeta, ObjectStore, ObjectStoreError, SliceError, SliceItem,
    SliceStat, SliceStore,
};
use danmaku_redis::testkit::RedisServer;
use futures::stream::BoxStream;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// An object store whose writes each take `delay` (a slow S3): a batch then takes
/// longer than a short lease.
struct SlowPuts {
    inner: Arc<dyn ObjectStore>,
    delay: Duration,
}

#[async_trait]
impl ObjectStore for SlowPuts {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ObjectStoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.put(path, bytes).await
    }
    async fn put_multipart(
        &self,
        path: &str,
        bytes: Bytes,
        part_bytes: usize,
    ) -> Result<(), ObjectStoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.put_multipart(path, bytes, part_bytes).await
    }
    async fn get(&self, path: &str) -> Result<Bytes, ObjectStoreError> {
        self.inner.get(path).await
    }
    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, ObjectStoreError> {
        self.inner.get_range(path, range).await
    }
    async fn head(&self, path: &str) -> Result<ObjectMeta, ObjectStoreError> {
        self.inner.head(path).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, ObjectStoreError>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, path: &str) -> Result<(), ObjectStoreError> {
        self.inner.delete(path).await
    }
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), ObjectStoreError> {
        self.inner.delete_many(paths).await
    }
}

/// Any SliceStore, logging every claimed batch id; `complete_batch` fails its
/// first `fail` times (an archiver that died after writing everything but
/// before completing).
struct Logged {
    inner: Arc<dyn SliceStore>,
    fail: AtomicUsize,
    claims: Mutex<Vec<u64>>,
}

impl Logged {
    fn new(inner: Arc<dyn SliceStore>, fail: usize) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fail: AtomicUsize::new(fail),
            claims: Mutex::default(),
        })
    }
    fn claims(&self) -> Vec<u64> {
        self.claims.lock().unwrap().clone()
    }
}

#[async_trait]
impl SliceStore for Logged {
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
        self.inner.ready().await
    }
}

/// A number no other test of this run uses.
fn unique() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ ((NEXT.fetch_add(1, Ordering::Relaxed) as u64) << 48)
}

/// The Redis SliceStore on `server`, in a namespace of its own.
async fn redis_slices(server: &RedisServer) -> Arc<dyn SliceStore> {
    let settings = RedisSettings {
        url: server.url(),
        namespace: format!("a{}", unique()),
        ..RedisSettings::default()
    };
    let (store, _) = danmaku_redis::connect(&settings)
        .await
        .expect("connect")
        .expect("redis configured");
    Arc::new(store)
}

/// Comments of three rooms, one every 1.5 s over 45 s (three to five slices
/// each), appended and made due at once.
async fn due_comments(ctx: &Context) -> Vec<Danmaku> {
    let mut all = Vec::new();
    for room in ["l1", "l2", "l3"] {
        let room = format!("{room}-{}", unique());
        let c = comments(ctx, &room, T + 1_000, 1_500, 30);
        append(ctx, &room, &c).await;
        all.extend(c);
    }
    ctx.slices.expedite_all().await.unwrap();
    all
}

/// Two archive loops on one store, batches of one slice whose files take 3
/// leases to write: every batch is claimed once (its archiver kept renewing),
/// and every comment is archived once.
async fn renewed_leases_keep_a_batch_with_its_archiver(slices: Arc<dyn SliceStore>) {
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 200;
    let (mut ctx, _db) = context(dir.path(), Store::Embedded, |s: &mut Settings| {
        s.archive.poll_ms = 10;
        s.archive.batch_slices = 1;
        s.archive.lease_ms = lease_ms;
    })
    .await;
    let logged = Logged::new(slices, 0);
    ctx.slices = logged.clone();
    ctx.objects = Arc::new(SlowPuts {
        inner: ctx.objects.clone(),
        delay: Duration::from_millis(3 * lease_ms),
    });
    let all = due_comments(&ctx).await;
    let shutdown = CancellationToken::new();
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run(ctx.clone(), shutdown.clone())))
        .collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        while ctx.slices.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("archived within 30 s");
    shutdown.cancel();
    for l in loops {
        l.await.unwrap();
    }
    let claims = logged.claims();
    let mut distinct = claims.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 9, "one slice per batch: {claims:?}");
    assert_eq!(
        claims.len(),
        distinct.len(),
        "a batch was handed out again while its archiver renewed its lease: {claims:?}"
    );
    assert_parquet_exactly(dir.path(), &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_at_work_keeps_its_batch_by_renewing_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = danmaku_embedded::EmbeddedDb::open(dir.path()).unwrap();
    renewed_leases_keep_a_batch_with_its_archiver(Arc::new(
        danmaku_embedded::EmbeddedSliceStore::new(db),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn an_archiver_at_work_keeps_its_batch_by_renewing_the_lease_on_redis() {
    let server = RedisServer::start();
    renewed_leases_keep_a_batch_with_its_archiver(redis_slices(&server).await).await;
}

/// Archives everything due with one loop on `ctx`; returns how long it took.
async fn archive_all(ctx: &Context, within: Duration) -> Duration {
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(ctx.clone(), shutdown.clone()));
    tokio::time::timeout(within, async {
        while ctx.slices.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not archived within {within:?}"));
    let took = started.elapsed();
    shutdown.cancel();
    task.await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_abandoned_by_a_dead_process_is_redone_at_once_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |s: &mut Settings| {
        s.archive.poll_ms = 20;
        s.archive.batch_slices = 64;
    };
    let (all, abandoned) = {
        let (mut ctx, db) = context(dir.path(), Store::Embedded, tweak).await;
        assert_eq!(ctx.settings.archive.lease_ms, 5_000, "the default lease");
        let logged = Logged::new(Arc::new(danmaku_embedded::EmbeddedSliceStore::new(db)), 1);
        ctx.slices = logged.clone();
        let all = due_comments(&ctx).await;
        // Everything written, then the process dies before completing.
        let err = archive_once(&ctx, danmaku_core::now_ms())
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveRoleError::Slices(_)), "{err}");
        (all, logged.claims())
    };
    assert_eq!(abandoned.len(), 1);
    // The dead process's Bus thread lets go of the file when it sees its channel
    // close; wait for that.
    for _ in 0..100 {
        if danmaku_embedded::EmbeddedDb::open(dir.path()).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next process on the same data: the batch is taken at once, not after
    // the rest of its 5 s lease.
    let (mut ctx, db) = context(dir.path(), Store::Embedded, tweak).await;
    let logged = Logged::new(Arc::new(danmaku_embedded::EmbeddedSliceStore::new(db)), 0);
    ctx.slices = logged.clone();
    let took = archive_all(&ctx, Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_secs(2),
        "redone {took:?} after the restart"
    );
    assert_eq!(logged.claims(), abandoned, "the same batch, redone once");
    assert_parquet_exactly(dir.path(), &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_batch_abandoned_on_redis_is_redone_within_the_lease() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let slices = redis_slices(&server).await;
    let tweak = |s: &mut Settings| {
        s.archive.poll_ms = 20;
        s.archive.batch_slices = 64;
    };
    let (mut ctx, _db) = context(dir.path(), Store::Embedded, tweak).await;
    let lease = Duration::from_millis(ctx.settings.archive.lease_ms);
    assert_eq!(lease, Duration::from_secs(5), "the default lease");
    let dead = Logged::new(slices.clone(), 1);
    ctx.slices = dead.clone();
    let all = due_comments(&ctx).await;
    // The first archiver writes everything, then dies before completing (its
    // renewals stop with it).
    let died = Instant::now();
    let err = archive_once(&ctx, danmaku_core::now_ms())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveRoleError::Slices(_)), "{err}");
    // Another archiver: nothing while the lease runs, the same batch after it.
    let next = Logged::new(slices, 0);
    ctx.slices = next.clone();
    let took = archive_all(&ctx, Duration::from_secs(10)).await;
    let since_death = died.elapsed();
    assert!(
        since_death >= lease - Duration::from_millis(100),
        "redone {since_death:?} after the archiver died, within its lease"
    );
    assert!(
        since_death < lease + Duration::from_secs(2),
        "redone {since_death:?} after the archiver died ({took:?} for the loop)"
    );
    assert_eq!(next.claims(), dead.claims(), "the same batch, redone once");
    assert_parquet_exactly(dir.path(), &all);
}
