//! Deletions through the archiver (issue 14): deletion records appended to the
//! SliceStore like the DELETE handler appends them, then archived. A comment
//! archived before its deletion leaves the ArchiveStore and is recorded in
//! `deletions/` once; one deleted in the same batch is archived nowhere; a redone
//! batch changes nothing; compaction drops deleted rows; shadow-banned comments
//! reach Parquet with `hidden` and never the ArchiveStore. On the embedded store
//! and on ScyllaDB (the in-process CQL server).

mod common;

use common::*;
use danmaku_archive::{compact_hour, drain, process_batch};
use danmaku_core::model::Danmaku;
use danmaku_core::ports::VodVersion;
use danmaku_scylla::testserver::CqlTestServer;
use std::time::Duration;

const HOUR_16: &str = "2025-11-24T16";

async fn archive_all(ctx: &danmaku_archive::Context) {
    drain(ctx, Duration::from_secs(20)).await.unwrap();
}

/// A comment archived before its deletion arrives: gone from the ArchiveStore
/// (count and version follow), recorded once in `deletions/`, and dropped from
/// its hour by compaction.
async fn an_archived_comment_is_deleted(store: Store<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), store, |_| {}).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T + 1_000, 1_000, 10);
    append(&ctx, "r1", &c).await;
    archive_all(&ctx).await;
    let before = archived(&ctx, "v1").await;
    assert_eq!(before.len(), 10);
    let v0 = ctx.archive.version("v1").await.unwrap();
    assert_eq!(
        v0,
        VodVersion {
            count: 10,
            deleted: 0
        }
    );

    let target = &c[3];
    let del = deletion_record(
        ctx.ids.next_id(T + 120_000),
        target,
        Some(("v1", before[&target.id])),
        T + 120_000,
    );
    append(&ctx, "r1", std::slice::from_ref(&del)).await;
    archive_all(&ctx).await;

    let after = archived(&ctx, "v1").await;
    assert_eq!(after.len(), 9);
    assert!(
        !after.contains_key(&target.id),
        "the deleted comment is gone"
    );
    assert_eq!(
        ctx.archive.version("v1").await.unwrap(),
        VodVersion {
            count: 9,
            deleted: 1
        }
    );
    let rows = deletion_rows(dir.path());
    assert_eq!(rows.len(), 1, "{:?}", deletion_files(dir.path()));
    let d = &rows[0];
    assert_eq!(
        (d.id, d.room.as_str(), d.vod.as_deref(), d.deleted_at_ms),
        (target.id, "r1", Some("v1"), T + 120_000)
    );
    assert_eq!(
        (d.by.as_str(), d.reason.as_deref()),
        ("moderator", Some(format!("spam {}", target.id).as_str()))
    );
    assert!(deletion_files(dir.path())[0].starts_with("deletions/date=2025-11-24/batch-"));
    // The deletion record is not a comment anywhere; the comment file written
    // before the deletion still has the comment, until compaction.
    assert!(parquet_rows(dir.path()).iter().all(|(_, r)| r.id != del.id));
    assert_parquet_exactly(dir.path(), &c);
    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(report.deleted_rows, 1, "{report:?}");
    let kept: Vec<Danmaku> = c.iter().filter(|x| x.id != target.id).cloned().collect();
    assert_parquet_exactly(dir.path(), &kept);
    // Compacting again finds nothing more to drop.
    let again = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!((again.deleted_rows, again.output), (0, None));
    assert_parquet_exactly(dir.path(), &kept);
}

#[tokio::test]
async fn an_archived_comment_is_deleted_on_the_embedded_store() {
    an_archived_comment_is_deleted(Store::Embedded).await;
}

#[tokio::test]
async fn an_archived_comment_is_deleted_on_scylla() {
    let server = CqlTestServer::start();
    an_archived_comment_is_deleted(Store::Scylla(&server)).await;
}

/// A comment deleted by a record of its own batch is archived nowhere, not even
/// by a later redo of its upsert; the deletion is recorded.
async fn a_comment_deleted_in_its_batch_is_never_archived(store: Store<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), store, |_| {}).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T + 1_000, 500, 6);
    // No VOD on the record: the archiver takes its target's.
    let del = deletion_record(ctx.ids.next_id(T + 4_000), &c[1], None, T + 4_000);
    let mut items = c.clone();
    items.push(del);
    append(&ctx, "r1", &items).await;
    archive_all(&ctx).await;
    let kept: Vec<Danmaku> = c.iter().filter(|x| x.id != c[1].id).cloned().collect();
    assert_eq!(archived(&ctx, "v1").await.len(), 5);
    assert_parquet_exactly(dir.path(), &kept);
    assert_eq!(
        deletion_rows(dir.path())
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        vec![c[1].id]
    );
    assert_eq!(deletion_rows(dir.path())[0].vod, None, "as the record said");
    // The store holds the deletion: the comment stays out of a later upsert.
    let row = danmaku_core::ports::ArchivedComment {
        vod: "v1".into(),
        offset_ms: 2_000,
        item: Danmaku {
            vod: Some("v1".into()),
            offset_ms: Some(2_000),
            ..c[1].clone()
        },
    };
    ctx.archive.upsert_comments(&[row]).await.unwrap();
    assert_eq!(archived(&ctx, "v1").await.len(), 5);
}

#[tokio::test]
async fn a_comment_deleted_in_its_batch_is_never_archived_on_the_embedded_store() {
    a_comment_deleted_in_its_batch_is_never_archived(Store::Embedded).await;
}

#[tokio::test]
async fn a_comment_deleted_in_its_batch_is_never_archived_on_scylla() {
    let server = CqlTestServer::start();
    a_comment_deleted_in_its_batch_is_never_archived(Store::Scylla(&server)).await;
}

/// A batch holding a deletion, processed twice (a redo after a crash): the same
/// rows, the same version, one deletion file with one row.
#[tokio::test]
async fn a_redone_batch_applies_and_records_its_deletions_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |_| {}).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T + 1_000, 1_000, 5);
    append(&ctx, "r1", &c).await;
    archive_all(&ctx).await;
    let offsets = archived(&ctx, "v1").await;
    let del = deletion_record(
        ctx.ids.next_id(T + 30_000),
        &c[0],
        Some(("v1", offsets[&c[0].id])),
        T + 30_000,
    );
    append(&ctx, "r1", &[del]).await;
    ctx.slices.expedite_all().await.unwrap();
    let batch = ctx
        .slices
        .claim_batch(LATER, 64, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the deletion's slice is due");
    let first = process_batch(&ctx, batch.clone()).await.unwrap();
    let version = ctx.archive.version("v1").await.unwrap();
    let files = deletion_files(dir.path());
    let second = process_batch(&ctx, batch).await.unwrap();
    assert_eq!(first, second);
    assert_eq!((first.rows, first.deletions), (0, 1));
    assert_eq!(ctx.archive.version("v1").await.unwrap(), version);
    assert_eq!(
        version,
        VodVersion {
            count: 4,
            deleted: 1
        }
    );
    assert_eq!(deletion_files(dir.path()), files);
    assert_eq!(files.len(), 1);
    assert_eq!(deletion_rows(dir.path()).len(), 1);
}

/// Shadow-banned comments reach Parquet with `hidden`, never the ArchiveStore.
#[tokio::test]
async fn hidden_comments_go_to_parquet_flagged_and_never_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |_| {}).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let mut c = comments(&ctx, "r1", T + 1_000, 1_000, 4);
    c[2].hidden = true;
    append(&ctx, "r1", &c).await;
    archive_all(&ctx).await;
    let stored = archived(&ctx, "v1").await;
    assert_eq!(stored.len(), 3);
    assert!(!stored.contains_key(&c[2].id));
    let rows = assert_parquet_exactly(dir.path(), &c);
    assert!(rows[&c[2].id].hidden);
    assert_eq!(
        rows[&c[2].id].vod.as_deref(),
        Some("v1"),
        "aligned like any other"
    );
    assert_eq!(rows.values().filter(|r| r.hidden).count(), 1);
}
