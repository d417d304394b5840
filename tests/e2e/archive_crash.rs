//! Exactly-once archiving under kill -9 of the archiver at each step (issue 6).
//! The binary runs with `DMK_ARCHIVE_CRASH_AT=<step>` (debug builds abort the
//! process there, like kill -9, the first time a batch with rows reaches it); the
//! test sends comments to a VOD session and to a room without one, ends the
//! session (its slices become due at once), waits for the abort, restarts the
//! server without the variable on the same data dir, and checks that the replay
//! API and Parquet (read by this harness and by DuckDB) hold every comment exactly
//! once. The same runs with the ScyllaDB ArchiveStore on the in-process CQL server,
//! which outlives the server process like a real cluster would.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use danmaku_scylla::testserver::CqlTestServer;
use serde_json::{json, Value};

use crate::helpers::*;

const CRASH_VAR: &str = "DMK_ARCHIVE_CRASH_AT";
const IN_SESSION: usize = 30;
const OUTSIDE: usize = 10;

/// Every item of the VOD through the range API (pages of 1,000).
async fn replay_items(app: &TestApp, vod: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=86400000&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let resp = app.get(&path).await;
        resp.expect_status(200, &format!("GET {path}"));
        items.extend(resp.json["items"].as_array().unwrap().iter().cloned());
        match &resp.json["next"] {
            Value::String(n) => after = Some(n.clone()),
            _ => return items,
        }
    }
}

/// `(count(*), count(distinct id), ids)` of the Parquet tree, read by DuckDB.
fn duckdb_ids(data_dir: &std::path::Path) -> (u64, u64, HashSet<String>) {
    let script = r#"
import sys, json, duckdb
con = duckdb.connect()
# No progress bar: DuckDB prints one to stdout for queries over 2 s (a busy machine).
con.execute("SET enable_progress_bar = false")
src = "read_parquet('" + sys.argv[1] + "/*/*/*.parquet', hive_partitioning = true, hive_types = {'date': DATE, 'hour': INTEGER})"
n, d = con.execute("SELECT count(*), count(DISTINCT id) FROM " + src).fetchone()
ids = [r[0] for r in con.execute("SELECT id::VARCHAR FROM " + src).fetchall()]
print(json.dumps({"n": n, "d": d, "ids": ids}))
"#;
    let archive = data_dir.join("archive");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&archive)
        .output()
        .expect("run python3 (the test command installs duckdb)");
    assert!(
        out.status.success(),
        "DuckDB read-back failed (pip install duckdb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from python");
    let ids = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    (v["n"].as_u64().unwrap(), v["d"].as_u64().unwrap(), ids)
}

/// Parquet holds exactly `sent` (id -> text), each once.
#[track_caller]
fn assert_parquet_once(app: &TestApp, sent: &HashMap<String, String>, what: &str) {
    assert_rows_once(&read_parquet(&app.data_dir), sent, what);
    let (n, distinct, ids) = duckdb_ids(&app.data_dir);
    assert_eq!(
        (n, distinct),
        (sent.len() as u64, sent.len() as u64),
        "{what}: DuckDB counts"
    );
    assert_eq!(
        ids,
        sent.keys().cloned().collect::<HashSet<_>>(),
        "{what}: DuckDB ids"
    );
}

async fn crash_and_recover(step: &str, scylla: Option<&CqlTestServer>) {
    let keyspace = format!("e2e{}", now_ms() % 1_000_000_000);
    let mut overrides: Vec<(String, String)> = vec![
        // Long enough that nothing is due before the session ends (which makes its
        // slices due at once); the other room's slices come due after the restart.
        ("DANMAKU_LIVE__HOT_RETENTION_MS".into(), "5000".into()),
        ("DANMAKU_ARCHIVE__LEASE_MS".into(), "1500".into()),
        ("DANMAKU_ARCHIVE__POLL_MS".into(), "50".into()),
        (CRASH_VAR.into(), step.into()),
    ];
    if let Some(server) = scylla {
        let settings = server.settings(&keyspace);
        danmaku_scylla::migrate(&settings).await.expect("migrate");
        overrides.push(("DANMAKU_SCYLLA__NODES".into(), server.node()));
        overrides.push(("DANMAKU_SCYLLA__KEYSPACE".into(), keyspace.clone()));
        overrides.push(("DANMAKU_SCYLLA__SCHEMA_AGREEMENT".into(), "false".into()));
    }
    let refs: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut app = spawn_app(&refs).await;
    let what = format!(
        "crash at {step}{}",
        if scylla.is_some() { " (scylla)" } else { "" }
    );
    let svc = app.token("archivist", "service").await;
    let room = "arch-crash";
    let other = "arch-crash-other";

    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let started_at = resp.json["started_at"].as_i64().unwrap();

    let mut sent: HashMap<String, String> = HashMap::new();
    let mut in_session: HashSet<String> = HashSet::new();
    for i in 0..IN_SESSION {
        let text = format!("{step} 弹幕 #{i} \"q\" <b>");
        let id = app.send_text(&svc, room, &text).await;
        in_session.insert(id.clone());
        sent.insert(id, text);
        if i == IN_SESSION / 2 {
            // Spread over at least two slices.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    for i in 0..OUTSIDE {
        let text = format!("{step} outside #{i}");
        sent.insert(app.send_text(&svc, other, &text).await, text);
    }
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    resp.expect_status(200, "POST end");
    let ended_at = resp.json["ended_at"].as_i64().unwrap();

    // The archiver aborts at the step.
    let status = app.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "{what}: the server must have crashed, got {status}"
    );
    assert!(
        std::fs::read_to_string(&app.log_path)
            .unwrap_or_default()
            .contains(&format!("{CRASH_VAR}={step}: aborting")),
        "{what}: no crash message in the log:\n{}",
        app.log_tail(30)
    );

    // Restart without the crash; the crashed batch is redone after its lease.
    app.env.retain(|(k, _)| k != CRASH_VAR);
    app.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = app.get(&format!("/v1/vods/{vod}")).await.json["count"].as_u64();
        let rows = read_parquet(&app.data_dir).len();
        if count == Some(IN_SESSION as u64) && rows >= sent.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not archived within 30 s of the restart: count {count:?}, {rows} Parquet rows; files {:?}",
            archive_listing(&app.data_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The replay API: every in-session comment once, at its offset.
    let items = replay_items(&app, &vod).await;
    let ids = ids_of(&items);
    assert_no_duplicates(&ids, &what);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        in_session,
        "{what}: replay ids"
    );
    for item in &items {
        let ts = item["ts"].as_i64().unwrap();
        let want = (ts - started_at).clamp(0, ended_at - started_at);
        assert_eq!(
            item["offset_ms"].as_i64(),
            Some(want),
            "{what}: offset of {item}"
        );
        assert_eq!(
            item["text"].as_str(),
            sent.get(item["id"].as_str().unwrap()).map(String::as_str)
        );
    }
    assert_parquet_once(&app, &sent, &what);

    // A graceful stop archives nothing twice either.
    app.stop().await;
    assert_parquet_once(&app, &sent, &format!("{what}, after SIGTERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_after_the_store_upsert_archives_each_comment_once() {
    crash_and_recover("after_upsert", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_after_the_first_parquet_file_archives_each_comment_once() {
    crash_and_recover("after_first_file", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_before_the_batch_completes_archives_each_comment_once() {
    crash_and_recover("before_complete", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_after_the_batch_completes_archives_each_comment_once() {
    crash_and_recover("after_complete", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_with_scylla_after_the_store_upsert_archives_each_comment_once() {
    let server = CqlTestServer::start();
    crash_and_recover("after_upsert", Some(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with duckdb (bash infra/dev/test.sh installs it)"]
async fn kill_9_with_scylla_before_the_batch_completes_archives_each_comment_once() {
    let server = CqlTestServer::start();
    crash_and_recover("before_complete", Some(&server)).await;
}
