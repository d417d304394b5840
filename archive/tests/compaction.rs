//! Compaction of an hour partition: one file afterwards, every row once; reruns
//! change nothing; a crash between the output's `put` and the deletes is finished
//! by the next run; a batch redone after its hour was compacted adds nothing; and
//! compaction running again and again while two archivers write into the same hour
//! keeps every row exactly once.

mod common;

use bytes::Bytes;
use common::*;
use danmaku_archive::compact::{self, COMPACTED_FROM_KEY, COMPACTED_PREFIX};
use danmaku_archive::{archive_once, compact_hour, drain, run, CompactError};
use danmaku_core::model::Danmaku;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const HOUR_16: &str = "2025-11-24T16";
const DIR_16: &str = "date=2025-11-24/hour=16";

fn files_in(dir: &std::path::Path, hour_dir: &str) -> Vec<String> {
    archive_files(dir)
        .into_iter()
        .filter(|f| f.starts_with(hour_dir))
        .collect()
}

#[tokio::test]
async fn compaction_merges_an_hour_into_one_file_and_reruns_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |s| s.archive.batch_slices = 2).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let before = comments(&ctx, "r1", T - 30_000, 1_000, 5);
    let r1 = comments(&ctx, "r1", T + 1_000, 1_500, 60);
    let r2 = comments(&ctx, "r2", T + 500, 2_100, 40);
    append(&ctx, "r1", &before).await;
    append(&ctx, "r1", &r1).await;
    append(&ctx, "r2", &r2).await;
    drain(&ctx, Duration::from_secs(10)).await.unwrap();
    let all: Vec<Danmaku> = before.iter().chain(&r1).chain(&r2).cloned().collect();
    assert_parquet_exactly(dir.path(), &all);
    let parts = files_in(dir.path(), DIR_16);
    assert!(
        parts.len() > 3,
        "several batch files in the hour: {parts:?}"
    );
    let hour_15 = files_in(dir.path(), "date=2025-11-24/hour=15");

    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(report.hour, DIR_16);
    assert_eq!(
        (report.files_merged, report.rows),
        (parts.len(), r1.len() + r2.len())
    );
    let after = files_in(dir.path(), DIR_16);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(Some(after[0].clone()), report.output);
    assert!(after[0].starts_with(&format!("{DIR_16}/{COMPACTED_PREFIX}")));
    assert_eq!(
        files_in(dir.path(), "date=2025-11-24/hour=15"),
        hour_15,
        "other hours untouched"
    );
    let by_id = assert_parquet_exactly(dir.path(), &all);
    assert_eq!(
        by_id[&r1[3].id].vod.as_deref(),
        Some("v1"),
        "columns carried over"
    );

    // The compacted file lists what it holds, next to the schema version.
    let bytes = std::fs::read(dir.path().join("archive").join(&after[0])).unwrap();
    let (_, kv) = danmaku_archive::parquet_file::decode(bytes.clone().into()).unwrap();
    let listed = kv.iter().find(|k| k.key == COMPACTED_FROM_KEY).unwrap();
    let mut names: Vec<String> = parts
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(listed.value.as_deref(), Some(names.join(",").as_str()));

    // Again: nothing to do, nothing changes.
    let again = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(
        (again.files_merged, again.covered_deleted, again.output),
        (0, 0, None)
    );
    assert_eq!(files_in(dir.path(), DIR_16), after);
    assert_eq!(
        std::fs::read(dir.path().join("archive").join(&after[0])).unwrap(),
        bytes
    );

    // New parts in a compacted hour are merged with the compacted file.
    let late = comments(&ctx, "r3", T + 600_000, 700, 12);
    append(&ctx, "r3", &late).await;
    drain(&ctx, Duration::from_secs(10)).await.unwrap();
    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert!(report.files_merged >= 2);
    assert_eq!(report.rows, r1.len() + r2.len() + late.len());
    assert_eq!(files_in(dir.path(), DIR_16).len(), 1);
    let all: Vec<Danmaku> = all.into_iter().chain(late).collect();
    assert_parquet_exactly(dir.path(), &all);

    // Hours are strict; an empty hour is a no-op.
    assert!(matches!(
        compact_hour(&*ctx.objects, "2025-11-24 16").await,
        Err(CompactError::Hour(_))
    ));
    let empty = compact_hour(&*ctx.objects, "2020-01-01T00").await.unwrap();
    assert_eq!((empty.files_merged, empty.rows, empty.output), (0, 0, None));
    assert_eq!(
        compact::list_hours(&*ctx.objects).await.unwrap(),
        vec!["date=2025-11-24/hour=15".to_string(), DIR_16.to_string()]
    );
}

#[tokio::test]
async fn a_crash_between_the_put_and_the_deletes_is_finished_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |s| s.archive.batch_slices = 1).await;
    let c = comments(&ctx, "r1", T + 1_000, 2_000, 50);
    append(&ctx, "r1", &c).await;
    drain(&ctx, Duration::from_secs(10)).await.unwrap();
    let parts = files_in(dir.path(), DIR_16);
    assert!(parts.len() >= 5, "{parts:?}");

    let failing = FailingDeletes {
        inner: ctx.objects.clone(),
        fail_deletes: AtomicBool::new(true),
    };
    let err = compact_hour(&failing, HOUR_16).await.unwrap_err();
    assert!(matches!(err, CompactError::Objects(_)), "{err}");
    // The crashed state: the output is in place, the inputs are still there.
    let crashed = files_in(dir.path(), DIR_16);
    assert_eq!(crashed.len(), parts.len() + 1);

    // The next run deletes the covered inputs and merges nothing again.
    failing.fail_deletes.store(false, Ordering::SeqCst);
    let report = compact_hour(&failing, HOUR_16).await.unwrap();
    assert_eq!(
        (report.files_merged, report.covered_deleted),
        (0, parts.len())
    );
    assert_eq!(files_in(dir.path(), DIR_16).len(), 1);
    assert_parquet_exactly(dir.path(), &c);
}

#[tokio::test]
async fn a_batch_redone_after_its_hour_was_compacted_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = context(dir.path(), Store::Embedded, |s| s.archive.batch_slices = 1).await;
    ctx.slices = Arc::new(Instrumented::new(db, 1));
    // Two slices of r1 in hour 16: two single-slice batches.
    let first = comments(&ctx, "r1", T + 1_000, 1_000, 5);
    let second = comments(&ctx, "r1", T + 11_000, 1_000, 5);
    append(&ctx, "r1", &first).await;
    append(&ctx, "r1", &second).await;
    ctx.slices.expedite_all().await.unwrap();
    // Batch 1 writes its part, then "crashes" before completing; batch 2 completes.
    assert!(archive_once(&ctx, LATER).await.is_err());
    archive_once(&ctx, LATER).await.unwrap().unwrap();
    assert_eq!(files_in(dir.path(), DIR_16).len(), 2);

    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(report.files_merged, 2);
    let compacted = files_in(dir.path(), DIR_16);
    assert_eq!(compacted.len(), 1);

    // The lease expires; batch 1 is redone and writes its part again, sees that
    // the compacted file holds it, and removes it.
    let lease = ctx.settings.archive.lease_ms as i64;
    let redo = archive_once(&ctx, LATER + lease + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(redo.rows, 5);
    assert_eq!(files_in(dir.path(), DIR_16), compacted);
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);
    let all: Vec<Danmaku> = first.into_iter().chain(second).collect();
    assert_parquet_exactly(dir.path(), &all);
    assert!(
        !compact::superseded(
            &*ctx.objects,
            &format!("{DIR_16}/part-00000000000000000999.parquet")
        )
        .await
        .unwrap(),
        "a part no compacted file lists is not superseded"
    );
}

async fn compaction_while_archiving(lease_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |s| {
        s.archive.poll_ms = 2;
        s.archive.batch_slices = 2;
        s.archive.lease_ms = lease_ms;
    })
    .await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let shutdown = CancellationToken::new();
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run(ctx.clone(), shutdown.clone())))
        .collect();
    let compactions = {
        let (objects, stop) = (ctx.objects.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.is_cancelled() {
                compact_hour(&*objects, HOUR_16).await.expect("compaction");
                runs += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            runs
        })
    };
    // Waves of comments into hour 16, each made due at once.
    let mut all = Vec::new();
    for wave in 0..12i64 {
        for room in ["r1", "r2"] {
            let c = comments(&ctx, room, T + wave * 60_000 + 1_000, 3_000, 15);
            append(&ctx, room, &c).await;
            all.extend(c);
        }
        ctx.slices.expedite_all().await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while ctx.slices.pending().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("archived within 20 s");
    shutdown.cancel();
    for l in loops {
        l.await.unwrap();
    }
    let runs = compactions.await.unwrap();
    assert!(runs > 3, "compaction ran while archiving ({runs} runs)");
    compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(files_in(dir.path(), DIR_16).len(), 1);
    assert_parquet_exactly(dir.path(), &all);
    let v1 = archived(&ctx, "v1").await;
    assert_eq!(v1.len(), all.iter().filter(|d| d.room == "r1").count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_two_archivers_write_keeps_every_row_once() {
    compaction_while_archiving(30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_archivers_redo_each_others_batches_keeps_every_row_once() {
    // Leases far shorter than a batch: batches are redone while being compacted.
    compaction_while_archiving(1).await;
}

#[tokio::test]
async fn merging_overlapping_compacted_files_keeps_each_id_once() {
    // Two compactions of one hour at once can leave two compacted files sharing
    // rows; the next run merges them with each id once.
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = context(dir.path(), Store::Embedded, |s| s.archive.batch_slices = 1).await;
    let c = comments(&ctx, "r1", T + 1_000, 2_500, 30);
    append(&ctx, "r1", &c).await;
    drain(&ctx, Duration::from_secs(10)).await.unwrap();
    let parts = files_in(dir.path(), DIR_16);
    let read = |f: &String| -> Bytes {
        std::fs::read(dir.path().join("archive").join(f))
            .unwrap()
            .into()
    };
    let rows_of = |fs: &[String]| -> Vec<danmaku_archive::parquet_file::ParquetRow> {
        fs.iter()
            .flat_map(|f| danmaku_archive::parquet_file::decode(read(f)).unwrap().0)
            .collect()
    };
    // Hand-made overlapping compacted files, as two racing runs would leave.
    let half = parts.len() / 2 + 1;
    for (name, subset) in [("a", &parts[..half]), ("b", &parts[half - 1..])] {
        let rows = compact::merge_rows(vec![rows_of(subset)]);
        let listed: Vec<String> = subset
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        let bytes = danmaku_archive::parquet_file::encode_sorted(
            &rows,
            vec![parquet::file::metadata::KeyValue::new(
                COMPACTED_FROM_KEY.into(),
                listed.join(","),
            )],
        )
        .unwrap();
        ctx.objects
            .put(&format!("{DIR_16}/{COMPACTED_PREFIX}{name}.parquet"), bytes)
            .await
            .unwrap();
    }
    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(report.files_merged, 2);
    assert_eq!(report.covered_deleted, parts.len());
    assert_eq!(files_in(dir.path(), DIR_16).len(), 1);
    assert_parquet_exactly(dir.path(), &c);
}
