//! The archiver and the compactor on `archive.url = s3://bucket/prefix`, against a
//! real S3 API server on loopback: moto's `moto_server` started by
//! `danmaku_object_store::testkit::S3Server` (or the server named by `DANMAKU_TEST_S3`).
//! Without moto installed these tests fail, saying how to install it. moto is
//! not AWS: it implements the S3 API (path-style requests, bulk deletes, ranged
//! reads, listings by prefix) closely enough for object_store's client, which
//! is what the archive's object store adapter (`danmaku-object-store`) uses.
//!
//! - The archiver writes each batch's Parquet under `prefix/date=YYYY-MM-DD/hour=HH/`
//!   and it reads back row for row (through the object store port, and through pyarrow's
//!   own S3 client with Hive partitioning).
//! - A batch redone after a crash before `complete_batch` overwrites its object
//!   with the same rows.
//! - Compaction merges an hour exactly once, reruns change nothing, a batch redone
//!   after compaction adds nothing, a crash between the output's `put` and the
//!   deletes is finished by the next run, and compaction while two archivers
//!   write keeps every row once.

mod common;

use common::*;
use danmaku_archive::compact::{self, COMPACTED_PREFIX};
use danmaku_archive::{archive_once, compact_hour, drain, run, CompactError, Context};
use danmaku_core::config::Settings;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::ObjectStore;
use danmaku_embedded::EmbeddedDb;
use danmaku_object_store::testkit::S3Server;
use futures::TryStreamExt;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const HOUR_16: &str = "2025-11-24T16";
const DIR_15: &str = "date=2025-11-24/hour=15";
const DIR_16: &str = "date=2025-11-24/hour=16";

/// A context on the embedded adapters in `dir` whose Parquet goes to `prefix` of
/// the S3 server's bucket.
async fn s3_context(
    dir: &Path,
    s3: &S3Server,
    prefix: &str,
    tweak: impl FnOnce(&mut Settings),
) -> (Context, EmbeddedDb) {
    let (mut ctx, db) = context(dir, Store::Embedded, |s| {
        s.archive = S3Server::settings(s3, prefix);
        tweak(s)
    })
    .await;
    ctx.objects = s3.store(prefix);
    (ctx, db)
}

/// Every object name under the store's root, sorted.
async fn keys(store: &dyn ObjectStore) -> Vec<String> {
    let mut out: Vec<String> = store
        .list("")
        .map_ok(|m| m.path)
        .try_collect()
        .await
        .unwrap();
    out.sort();
    out
}

/// The object names of one hour directory.
async fn keys_in(store: &dyn ObjectStore, hour_dir: &str) -> Vec<String> {
    keys(store)
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("{hour_dir}/")))
        .collect()
}

/// Copies every object of `store` to `<tempdir>/archive/<name>`, the layout the
/// shared read-back checks ([`assert_parquet_exactly`]) read.
async fn mirror(store: &dyn ObjectStore) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    for key in keys(store).await {
        let bytes = store.get(&key).await.unwrap();
        let path = out.path().join("archive").join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    out
}

/// S3 holds exactly `expected`, each once, in its hour, every column as sent.
async fn assert_s3_exactly(
    store: &dyn ObjectStore,
    expected: &[Danmaku],
) -> std::collections::HashMap<u64, danmaku_archive::parquet_file::ParquetRow> {
    let copy = mirror(store).await;
    assert_parquet_exactly(copy.path(), expected)
}

/// What pyarrow's own S3 client reads from `s3://bucket/prefix` as a Hive-
/// partitioned dataset: `[id, date, hour, ts_ms]` per row.
fn pyarrow_rows(s3: &S3Server, prefix: &str) -> Vec<(u64, String, i64, i64)> {
    let script = r#"
import sys, json
import pyarrow.fs as pafs, pyarrow.dataset as ds, pyarrow.compute as pc
endpoint, bucket, prefix = sys.argv[1:4]
scheme, host = endpoint.split("://", 1)
fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1")
d = ds.dataset(bucket + "/" + prefix, filesystem=fs, format="parquet", partitioning="hive")
t = d.to_table(columns=["id", "date", "hour", "ts"])
ts = pc.cast(pc.cast(t.column("ts"), "timestamp[ms]"), "int64").to_pylist()
out = [[str(i), str(dt), int(h), s] for i, dt, h, s in zip(
    t.column("id").to_pylist(), t.column("date").to_pylist(), t.column("hour").to_pylist(), ts)]
print(json.dumps(out))
"#;
    python_with_readers();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([s3.endpoint(), s3.bucket(), prefix])
        .envs(s3.aws_env())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pyarrow read-back from S3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from python");
    rows.iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().parse().unwrap(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_i64().unwrap(),
                r[3].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn the_archiver_writes_hive_partitions_to_s3_that_read_back_row_for_row() {
    let s3 = S3Server::start();
    let prefix = format!("{}/archive", S3Server::fresh_prefix("arch"));
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = s3_context(dir.path(), &s3, &prefix, |s| s.archive.batch_slices = 2).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let before = comments(&ctx, "r1", T - 30_000, 1_000, 5);
    let r1 = comments(&ctx, "r1", T + 1_000, 1_500, 60);
    let r2 = comments(&ctx, "r2", T + 500, 2_100, 40);
    append(&ctx, "r1", &before).await;
    append(&ctx, "r1", &r1).await;
    append(&ctx, "r2", &r2).await;
    let rows = drain(&ctx, Duration::from_secs(30)).await.unwrap();
    let all: Vec<Danmaku> = before.iter().chain(&r1).chain(&r2).cloned().collect();
    assert_eq!(rows as usize, all.len());

    // The bucket holds only `prefix/date=YYYY-MM-DD/hour=HH/part-<batch>.parquet`.
    let bucket = s3.store("");
    let everything: Vec<String> = keys(&*bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("{prefix}/")))
        .collect();
    assert!(everything.len() > 3, "several batch files: {everything:?}");
    for key in &everything {
        let rest = key.strip_prefix(&format!("{prefix}/")).unwrap();
        let (hour, file) = rest.rsplit_once('/').unwrap();
        assert!(hour == DIR_15 || hour == DIR_16, "{key}");
        assert!(
            file.starts_with("part-") && file.ends_with(".parquet") && file.len() == 33,
            "{key}"
        );
    }
    assert_eq!(keys_in(&*ctx.objects, DIR_15).await.len(), 1);

    // Row for row, every column, each once, in its hour.
    let by_id = assert_s3_exactly(&*ctx.objects, &all).await;
    assert_eq!(by_id[&r1[3].id].vod.as_deref(), Some("v1"));
    assert_eq!(by_id[&r2[3].id].vod, None);

    // An independent reader with its own S3 client sees the same.
    let read = pyarrow_rows(&s3, &prefix);
    assert_eq!(read.len(), all.len(), "pyarrow row count");
    let expected: std::collections::HashMap<u64, i64> =
        all.iter().map(|d| (d.id, d.ts_ms)).collect();
    for (id, date, hour, ts) in read {
        assert_eq!(expected.get(&id), Some(&ts), "pyarrow: id {id}");
        assert_eq!(date, "2025-11-24");
        assert_eq!(hour, if ts < T { 15 } else { 16 }, "pyarrow: hour of {id}");
    }
}

#[tokio::test]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn a_batch_redone_on_s3_overwrites_its_object_with_the_same_rows() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("redo");
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = s3_context(dir.path(), &s3, &prefix, |s| s.archive.batch_slices = 8).await;
    ctx.slices = Arc::new(Instrumented::new(db, 1));
    let c = comments(&ctx, "r1", T + 1_000, 700, 40);
    append(&ctx, "r1", &c).await;
    ctx.slices.expedite_all().await.unwrap();
    // Writes its object, then "crashes" before completing.
    assert!(archive_once(&ctx, LATER).await.is_err());
    let first = keys(&*ctx.objects).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let bytes =
        |store: Arc<dyn ObjectStore>, key: String| async move { store.get(&key).await.unwrap() };
    let before = bytes(ctx.objects.clone(), first[0].clone()).await;
    assert!(archive_once(&ctx, LATER).await.unwrap().is_none(), "leased");
    let lease = ctx.settings.archive.lease_ms as i64;
    let redo = archive_once(&ctx, LATER + lease + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(redo.rows, c.len());
    assert_eq!(keys(&*ctx.objects).await, first, "the same object again");
    assert_eq!(bytes(ctx.objects.clone(), first[0].clone()).await, before);
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);
    assert_s3_exactly(&*ctx.objects, &c).await;
}

#[tokio::test]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn compaction_on_s3_merges_an_hour_exactly_once_and_is_safe_to_rerun() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("compact");
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, db) = s3_context(dir.path(), &s3, &prefix, |s| s.archive.batch_slices = 1).await;
    ctx.slices = Arc::new(Instrumented::new(db, 1));
    let first = comments(&ctx, "r1", T + 1_000, 1_000, 5);
    let rest = comments(&ctx, "r1", T + 11_000, 2_000, 40);
    append(&ctx, "r1", &first).await;
    append(&ctx, "r1", &rest).await;
    ctx.slices.expedite_all().await.unwrap();
    // The first batch writes its part and "crashes" before completing; the others complete.
    assert!(archive_once(&ctx, LATER).await.is_err());
    while archive_once(&ctx, LATER).await.unwrap().is_some() {}
    let all: Vec<Danmaku> = first.iter().chain(&rest).cloned().collect();
    let parts = keys_in(&*ctx.objects, DIR_16).await;
    assert!(parts.len() >= 5, "{parts:?}");
    assert_s3_exactly(&*ctx.objects, &all).await;

    // One compacted file holding every row once.
    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(
        (report.files_merged, report.rows, report.covered_deleted),
        (parts.len(), all.len(), 0)
    );
    let compacted = keys_in(&*ctx.objects, DIR_16).await;
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    assert_eq!(Some(compacted[0].clone()), report.output);
    assert!(compacted[0].starts_with(&format!("{DIR_16}/{COMPACTED_PREFIX}")));
    assert_s3_exactly(&*ctx.objects, &all).await;
    let location = compacted[0].as_str();
    let meta = ctx.objects.head(location).await.unwrap();

    // Again: nothing to do, the object untouched.
    let again = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(
        (again.files_merged, again.covered_deleted, again.output),
        (0, 0, None)
    );
    assert_eq!(keys_in(&*ctx.objects, DIR_16).await, compacted);
    let meta_again = ctx.objects.head(location).await.unwrap();
    assert_eq!(
        (meta_again.e_tag, meta_again.size),
        (meta.e_tag, meta.size),
        "rerun rewrote nothing"
    );

    // The first batch's lease expires; its redo writes its part again, sees the
    // compacted file holding it, and deletes it.
    let lease = ctx.settings.archive.lease_ms as i64;
    let redo = archive_once(&ctx, LATER + lease + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(redo.rows, first.len());
    assert_eq!(keys_in(&*ctx.objects, DIR_16).await, compacted);
    assert_eq!(ctx.slices.pending().await.unwrap(), 0);
    assert_s3_exactly(&*ctx.objects, &all).await;

    // New parts in the compacted hour; a compaction that crashes between its
    // output's `put` and the deletes; the next run finishes it.
    let late = comments(&ctx, "r2", T + 600_000, 3_000, 30);
    append(&ctx, "r2", &late).await;
    drain(&ctx, Duration::from_secs(30)).await.unwrap();
    let before_crash = keys_in(&*ctx.objects, DIR_16).await;
    assert!(before_crash.len() >= 3, "{before_crash:?}");
    let failing = FailingDeletes {
        inner: ctx.objects.clone(),
        fail_deletes: AtomicBool::new(true),
    };
    let err = compact_hour(&failing, HOUR_16).await.unwrap_err();
    assert!(matches!(err, CompactError::Objects(_)), "{err}");
    assert_eq!(
        keys_in(&*ctx.objects, DIR_16).await.len(),
        before_crash.len() + 1,
        "the output is in place, the inputs still there"
    );
    failing.fail_deletes.store(false, Ordering::SeqCst);
    let report = compact_hour(&failing, HOUR_16).await.unwrap();
    assert_eq!(
        (report.files_merged, report.covered_deleted),
        (0, before_crash.len())
    );
    assert_eq!(keys_in(&*ctx.objects, DIR_16).await.len(), 1);
    let all: Vec<Danmaku> = all.into_iter().chain(late).collect();
    assert_s3_exactly(&*ctx.objects, &all).await;
    assert_eq!(
        compact::list_hours(&*ctx.objects).await.unwrap(),
        vec![DIR_16.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn compaction_on_s3_while_two_archivers_write_keeps_every_row_once() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("race");
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = s3_context(dir.path(), &s3, &prefix, |s| {
        s.archive.poll_ms = 2;
        s.archive.batch_slices = 2;
        // Far shorter than a batch on S3: batches are redone while being compacted.
        s.archive.lease_ms = 1;
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
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            runs
        })
    };
    let mut all = Vec::new();
    for wave in 0..6i64 {
        for room in ["r1", "r2"] {
            let c = comments(&ctx, room, T + wave * 60_000 + 1_000, 3_000, 15);
            append(&ctx, room, &c).await;
            all.extend(c);
        }
        ctx.slices.expedite_all().await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
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
    let runs = compactions.await.unwrap();
    assert!(runs > 2, "compaction ran while archiving ({runs} runs)");
    compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(keys_in(&*ctx.objects, DIR_16).await.len(), 1);
    assert_s3_exactly(&*ctx.objects, &all).await;
    let v1 = archived(&ctx, "v1").await;
    assert_eq!(v1.len(), all.iter().filter(|d| d.room == "r1").count());
}

/// Large objects (a big compacted hour) go up as multipart uploads, on S3 and on
/// the local store, and read back byte for byte; small ones in one `put`.
#[tokio::test]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn large_objects_go_up_in_parts_and_read_back_whole() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("multipart");
    let local_dir = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, Arc<dyn ObjectStore>)> = vec![
        ("s3", s3.store(&prefix)),
        (
            "local",
            danmaku_object_store::open_url("", local_dir.path()).unwrap(),
        ),
    ];
    // 12 MiB and a bit in 5 MiB parts (S3's smallest): three parts.
    let big: bytes::Bytes = (0..(12 << 20) + 123)
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let small = bytes::Bytes::from_static(b"tiny");
    for (name, store) in stores {
        let location = format!("{DIR_16}/compacted-big.parquet");
        compact::put_whole_with(&*store, &location, big.clone(), 5 << 20)
            .await
            .unwrap_or_else(|e| panic!("{name}: multipart put: {e}"));
        let got = store.get(&location).await.unwrap();
        assert!(got == big, "{name}: multipart object reads back whole");
        // Overwriting in parts replaces the object whole.
        let other: bytes::Bytes = big.iter().map(|b| b ^ 0xFF).collect::<Vec<u8>>().into();
        compact::put_whole_with(&*store, &location, other.clone(), 5 << 20)
            .await
            .unwrap();
        let got = store.get(&location).await.unwrap();
        assert!(got == other, "{name}: multipart overwrite");
        let tiny = format!("{DIR_16}/compacted-tiny.parquet");
        compact::put_whole(&*store, &tiny, small.clone())
            .await
            .unwrap();
        assert_eq!(store.get(&tiny).await.unwrap(), small);
        assert_eq!(
            keys(&*store).await,
            vec![location.clone(), tiny.clone()],
            "{name}: no temporary objects left"
        );
    }
}

/// Deletions on S3: the deletion file lands under `prefix/deletions/`, once, and
/// compaction of the hour (listing that prefix on S3) drops the deleted row.
#[tokio::test]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn deletions_on_s3_are_recorded_once_and_compaction_drops_them() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("deletions");
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _db) = s3_context(dir.path(), &s3, &prefix, |s| s.archive.batch_slices = 1).await;
    create_session(&ctx, "v1", "r1", T, 0).await;
    let c = comments(&ctx, "r1", T + 1_000, 3_000, 8);
    append(&ctx, "r1", &c).await;
    drain(&ctx, Duration::from_secs(20)).await.unwrap();
    let offsets = archived(&ctx, "v1").await;
    let target = &c[2];
    let del = deletion_record(
        ctx.ids.next_id(T + 90_000),
        target,
        Some(("v1", offsets[&target.id])),
        T + 90_000,
    );
    append(&ctx, "r1", &[del]).await;
    drain(&ctx, Duration::from_secs(20)).await.unwrap();
    let deletions: Vec<String> = keys(&*ctx.objects)
        .await
        .into_iter()
        .filter(|k| k.starts_with("deletions/"))
        .collect();
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert!(deletions[0].starts_with("deletions/date=2025-11-24/batch-"));
    assert!(!archived(&ctx, "v1").await.contains_key(&target.id));
    assert_eq!(
        compact::list_hours(&*ctx.objects).await.unwrap(),
        vec![DIR_16.to_string()],
        "deletions/ is not an hour"
    );
    let report = compact_hour(&*ctx.objects, HOUR_16).await.unwrap();
    assert_eq!(report.deleted_rows, 1, "{report:?}");
    let kept: Vec<Danmaku> = c.iter().filter(|d| d.id != target.id).cloned().collect();
    assert_s3_exactly(&*ctx.objects, &kept).await;
}
