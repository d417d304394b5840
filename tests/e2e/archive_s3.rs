//! The binary with `archive.url = s3://bucket/prefix` against moto's S3 server on
//! loopback (`danmaku_object_store::testkit::S3Server`; or the server of
//! `DANMAKU_TEST_S3`): the endpoint from `DANMAKU_ARCHIVE__S3_ENDPOINT`, dummy
//! credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
//!
//! - Comments of an ended VOD are archived to S3 while the server runs; the rest
//!   on SIGTERM; every comment is in the bucket's Parquet exactly once, under
//!   `prefix/date=YYYY-MM-DD/hour=HH/`. `danmaku archive compact --hour` then
//!   merges each hour in the bucket into one file, and a second run changes nothing.
//! - kill -9 right after the first Parquet object of a batch went up: after a
//!   restart every comment is in the bucket exactly once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use danmaku_core::ports::ObjectStore;
use danmaku_object_store::testkit::S3Server;
use futures::TryStreamExt;
use serde_json::json;

use crate::helpers::*;

/// The server's S3 settings and credentials, as `DANMAKU_*` / `AWS_*` variables.
fn s3_env(s3: &S3Server, prefix: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DANMAKU_ARCHIVE__URL".to_string(), s3.url(prefix)),
        (
            "DANMAKU_ARCHIVE__S3_ENDPOINT".to_string(),
            s3.endpoint().to_string(),
        ),
        (
            "DANMAKU_ARCHIVE__S3_ALLOW_HTTP".to_string(),
            s3.endpoint().starts_with("http://").to_string(),
        ),
    ];
    env.extend(s3.aws_env());
    env
}

async fn spawn_s3_app(s3: &S3Server, prefix: &str, extra: &[(&str, &str)]) -> TestApp {
    let env = s3_env(s3, prefix);
    let mut overrides: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.extend_from_slice(extra);
    spawn_app(&overrides).await
}

/// Every object name under the store's root, sorted.
async fn keys(store: &dyn ObjectStore) -> Vec<String> {
    let mut out: Vec<String> = store
        .list("")
        .map_ok(|m| m.path)
        .try_collect()
        .await
        .expect("list the bucket");
    out.sort();
    out
}

/// Copies every object of `store` to `<dir>/archive/<name>` (replacing what was
/// there), the layout the harness's Parquet readers expect; returns the names.
async fn mirror(store: &dyn ObjectStore, dir: &Path) -> Vec<String> {
    let _ = std::fs::remove_dir_all(dir.join("archive"));
    let names = keys(store).await;
    for name in &names {
        let bytes = store.get(name).await.expect("get");
        let path = dir.join("archive").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn comments_are_archived_to_s3_exactly_once_and_compacted_there() {
    let s3 = S3Server::start();
    let prefix = format!("{}/archive", S3Server::fresh_prefix("e2e"));
    let store = s3.store(&prefix);
    let mut app = spawn_s3_app(&s3, &prefix, &[]).await;
    let svc = app.token("s3-archivist", "service").await;
    let (room, other) = ("s3-room", "s3-other");

    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();

    let mut sent: HashMap<String, String> = HashMap::new();
    let mut in_session: HashMap<String, String> = HashMap::new();
    for i in 0..30 {
        let text = format!("s3 弹幕 #{i} \"q\" <b>");
        let id = app.send_text(&svc, room, &text).await;
        in_session.insert(id.clone(), text.clone());
        sent.insert(id, text);
        if i == 15 {
            // Spread over at least two slices.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    for i in 0..10 {
        let text = format!("s3 outside #{i} 🎉");
        sent.insert(app.send_text(&svc, other, &text).await, text);
    }
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");

    // The ended VOD's slices are due at once: the running archiver puts them in S3.
    let local = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        mirror(&*store, local.path()).await;
        let rows = read_parquet(local.path());
        if rows.iter().filter(|r| r.room == room).count() >= in_session.len() {
            let session_rows: Vec<ParquetRow> =
                rows.into_iter().filter(|r| r.room == room).collect();
            assert_rows_once(&session_rows, &in_session, "while running");
            assert!(session_rows
                .iter()
                .all(|r| r.vod.as_deref() == Some(vod.as_str())));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended VOD's comments did not reach S3 within 30 s; bucket: {:?}\nlog tail:\n{}",
            keys(&*store).await,
            app.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM archives the rest.
    app.stop().await;
    let names = mirror(&*store, local.path()).await;
    let rows = read_parquet(local.path());
    assert_rows_once(&rows, &sent, "after SIGTERM");
    let files = parquet_files(local.path());
    let problems = crate::shutdown::schema_problems(&files);
    assert!(problems.is_empty(), "Parquet schema: {problems:#?}");
    let problems = crate::shutdown::path_problems(local.path(), &rows);
    assert!(problems.is_empty(), "layout in the bucket: {problems:#?}");
    assert!(
        parquet_files(&app.data_dir).is_empty(),
        "nothing went to the local data dir"
    );
    // Nothing outside the prefix.
    let bucket = s3.store("");
    let ours: Vec<String> = keys(&*bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("{prefix}/")))
        .map(|k| k[prefix.len() + 1..].to_string())
        .collect();
    assert_eq!(ours, names);

    // Compact every hour in the bucket through the CLI, twice.
    let hours: HashSet<String> = rows
        .iter()
        .map(|r| {
            let (date, hour) = utc_date_hour(r.ts);
            format!("{date}T{hour}")
        })
        .collect();
    for hour in &hours {
        let out = compact_cli(&app, hour).await;
        assert!(out.contains("merged"), "{out}");
    }
    let compacted = mirror(&*store, local.path()).await;
    assert_eq!(
        compacted.len(),
        hours.len(),
        "one file per hour: {compacted:?}"
    );
    assert!(
        compacted
            .iter()
            .all(|n| n.rsplit('/').next().unwrap().starts_with("compacted-")),
        "{compacted:?}"
    );
    assert_rows_once(&read_parquet(local.path()), &sent, "after compaction");
    for hour in &hours {
        let out = compact_cli(&app, hour).await;
        assert!(out.contains("(nothing to do)"), "second run: {out}");
    }
    assert_eq!(mirror(&*store, local.path()).await, compacted);
    assert_rows_once(&read_parquet(local.path()), &sent, "after compacting again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn kill_9_after_the_first_object_went_up_to_s3_archives_each_comment_once() {
    let s3 = S3Server::start();
    let prefix = S3Server::fresh_prefix("e2e-crash");
    let store: Arc<dyn ObjectStore> = s3.store(&prefix);
    let mut app = spawn_s3_app(
        &s3,
        &prefix,
        &[
            ("DANMAKU_LIVE__HOT_RETENTION_MS", "5000"),
            ("DANMAKU_ARCHIVE__LEASE_MS", "1500"),
            ("DANMAKU_ARCHIVE__POLL_MS", "50"),
            ("DMK_ARCHIVE_CRASH_AT", "after_first_file"),
        ],
    )
    .await;
    let svc = app.token("s3-crasher", "service").await;
    let room = "s3-crash";
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let mut sent: HashMap<String, String> = HashMap::new();
    for i in 0..20 {
        let text = format!("crash #{i}");
        sent.insert(app.send_text(&svc, room, &text).await, text);
    }
    for i in 0..5 {
        let text = format!("crash outside #{i}");
        sent.insert(app.send_text(&svc, "s3-crash-other", &text).await, text);
    }
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");

    let status = app.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the server must have crashed: {status}");
    assert!(
        !keys(&*store).await.is_empty(),
        "the crash came after an object went up"
    );

    app.env.retain(|(k, _)| k != "DMK_ARCHIVE_CRASH_AT");
    app.restart().await;
    let local = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        mirror(&*store, local.path()).await;
        if read_parquet(local.path()).len() >= sent.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not archived to S3 within 30 s of the restart; bucket: {:?}",
            keys(&*store).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_rows_once(&read_parquet(local.path()), &sent, "after the restart");
    app.stop().await;
    mirror(&*store, local.path()).await;
    assert_rows_once(&read_parquet(local.path()), &sent, "after SIGTERM");
}
