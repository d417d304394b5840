//! The archiver with the ScyllaDB ArchiveStore, against the in-process CQL server
//! (kassandra; see `danmaku_scylla::testserver` for what it cannot
//! exercise): every in-session comment lands in the store at its offset and every
//! comment in Parquet, exactly once, after a redo and with two archivers at once.

mod common;

use common::*;
use danmaku_archive::{archive_once, drain, run, ArchiveRoleError};
use danmaku_core::model::Danmaku;
use danmaku_scylla::testserver::CqlTestServer;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn drain_with_scylla_stores_session_comments_and_writes_every_comment_to_parquet() {
    let server = CqlTestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Scylla(&server), |_| {}).await;
    let session = create_session(&ctx, "v1", "r1", T, 700).await;
    let before = comments(&ctx, "r1", T - 30_000, 1_000, 5);
    // 400 comments over 8 minutes: two segments.
    let during = comments(&ctx, "r1", T + 1_000, 1_234, 400);
    let r2 = comments(&ctx, "r2", T - 5_000, 777, 20);
    append(&ctx, "r1", &before).await;
    append(&ctx, "r1", &during).await;
    append(&ctx, "r2", &r2).await;
    let rows = drain(&ctx, Duration::from_secs(30)).await.unwrap();
    let all: Vec<Danmaku> = before.iter().chain(&during).chain(&r2).cloned().collect();
    assert_eq!(rows, all.len() as u64);

    let v1 = archived(&ctx, "v1").await;
    let expected: BTreeMap<u64, i64> = during
        .iter()
        .map(|d| (d.id, d.ts_ms - session.started_at - session.latency_ms))
        .collect();
    assert_eq!(v1, expected);
    assert_eq!(ctx.archive.last_segment("v1").await.unwrap(), Some(1));
    // Every column comes back from the store as sent.
    let seg0 = ctx.archive.read_segment("v1", 0).await.unwrap();
    for c in &seg0 {
        let sent = during.iter().find(|d| d.id == c.item.id).unwrap();
        let mut want = sent.clone();
        want.vod = Some("v1".into());
        want.offset_ms = Some(c.offset_ms);
        assert_eq!(c.item, want);
    }
    assert_parquet_exactly(dir.path(), &all);
}

#[tokio::test]
async fn a_batch_redone_with_scylla_yields_each_row_once() {
    let server = CqlTestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = context(dir.path(), Store::Scylla(&server), |_| {}).await;
    ctx.slices = Arc::new(Instrumented::new(db, 1));
    create_session(&ctx, "v1", "r1", T - HOT_MS, 250).await;
    let c = comments(&ctx, "r1", T - 20_000, 997, 40);
    append(&ctx, "r1", &c).await;
    ctx.slices.expedite_all().await.unwrap();
    let err = archive_once(&ctx, LATER).await.unwrap_err();
    assert!(matches!(err, ArchiveRoleError::Slices(_)), "{err}");
    assert_eq!(archived(&ctx, "v1").await.len(), 40);
    let lease = ctx.settings.archive.lease_ms as i64;
    let report = archive_once(&ctx, LATER + lease + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.rows, report.vod_rows), (40, 40));
    let v1 = archived(&ctx, "v1").await;
    assert_eq!(v1.len(), 40);
    for d in &c {
        assert_eq!(v1[&d.id], d.ts_ms - (T - HOT_MS) - 250);
    }
    assert_parquet_exactly(dir.path(), &c);
}

async fn two_loops_with_scylla(lease_ms: u64) {
    let server = CqlTestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Scylla(&server), |s| {
        s.archive.poll_ms = 5;
        s.archive.batch_slices = 4;
        s.archive.lease_ms = lease_ms;
        // Small partitions, so concurrent batches also open shard generations.
        s.scylla.partition_rows = 40;
    })
    .await;
    create_session(&ctx, "v1", "r1", T, 100).await;
    let mut all = Vec::new();
    for room in ["r1", "r2", "r3"] {
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
    tokio::time::timeout(Duration::from_secs(30), async {
        while ctx.slices.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("archived within 30 s");
    shutdown.cancel();
    for l in loops {
        l.await.unwrap();
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
async fn two_archivers_with_scylla_archive_every_item_exactly_once() {
    two_loops_with_scylla(30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archivers_redoing_each_others_batches_with_scylla_archive_every_item_once() {
    two_loops_with_scylla(1).await;
}
