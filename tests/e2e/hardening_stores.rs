//! Issue 13, items 6 and 7, the stores' side, through the real server:
//!
//! - kill -9 in the middle of archiving (the archiver aborts right after
//!   claiming a batch), then a restart: the replay API holds every comment of the
//!   VOD within 10 s of the restart, each once, with the default lease (5 s): the
//!   embedded store releases its dead predecessor's leases when it opens (so
//!   even a lease of a minute is not waited for), on Redis the lease runs out.
//! - A cursor taken before a restart, SIGTERM (which archives everything) or
//!   kill -9, gets exactly the comments accepted just before it, by polling and
//!   by a WebSocket resume, with no `gap`: archiving copies, and archived slices
//!   stay readable for their hot retention.
//!
//! Each runs on the embedded defaults, and again with the Redis SliceStore.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use danmaku_redis::testkit::RedisServer;
use serde_json::{json, Value};

use crate::helpers::*;

const CRASH_VAR: &str = "DMK_ARCHIVE_CRASH_AT";

/// The environment of a server with the Redis SliceStore on `redis` (the Bus
/// stays embedded).
fn redis_env(redis: &RedisServer) -> Vec<(String, String)> {
    vec![
        ("DANMAKU_REDIS__URL".into(), redis.url()),
        (
            "DANMAKU_REDIS__NAMESPACE".into(),
            format!("e2e{}", now_ms() % 1_000_000_007),
        ),
    ]
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Every item of the VOD through the range API.
async fn replay_ids(app: &TestApp, vod: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=86400000&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let resp = app.get(&path).await;
        resp.expect_status(200, &format!("GET {path}"));
        ids.extend(ids_of(resp.json["items"].as_array().unwrap()));
        match &resp.json["next"] {
            Value::String(n) => after = Some(n.clone()),
            _ => return ids,
        }
    }
}

/// Sends comments to a VOD session, ends it, lets the archiver abort right
/// after claiming their batch, restarts, and asserts the replay API has every
/// one of them, once, within 10 s of the restart.
async fn kill_9_while_archiving(extra: Vec<(String, String)>, what: &str) {
    let mut env = extra;
    env.push((CRASH_VAR.into(), "after_claim".into()));
    let mut app = spawn_app(&refs(&env)).await;
    let svc = app.token("stores-archivist", "service").await;
    let room = "stores-crash";
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let mut sent = HashSet::new();
    for i in 0..30 {
        sent.insert(app.send_text(&svc, room, &format!("{what} #{i}")).await);
        if i == 15 {
            // Over at least two slices.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    // Ending the VOD makes its slices due at once: the archiver claims them and
    // aborts (like kill -9) before writing anything.
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");
    let status = app.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "{what}: the archiver must have crashed");
    let crashed = Instant::now();

    app.env.retain(|(k, _)| k != CRASH_VAR);
    app.restart().await;
    let restarted = Instant::now();
    loop {
        let count = app.get(&format!("/v1/vods/{vod}")).await.json["count"].as_u64();
        if count == Some(sent.len() as u64) {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "{what}: replay not complete 10 s after the restart ({:?} after the crash): count {count:?}",
            crashed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = restarted.elapsed();
    let ids = replay_ids(&app, &vod).await;
    assert_no_duplicates(&ids, what);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        sent,
        "{what}: replay ids"
    );
    eprintln!(
        "{what}: replay complete {took:?} after the restart, {:?} after the crash",
        crashed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_archiving_replay_is_complete_within_10_s_of_the_restart() {
    kill_9_while_archiving(Vec::new(), "embedded").await;
}

/// The embedded store does not wait for the lease at all: with a lease of a
/// minute, the batch is still redone within seconds of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_archiving_the_embedded_store_redoes_the_batch_without_waiting_for_its_lease()
{
    let env = vec![("DANMAKU_ARCHIVE__LEASE_MS".into(), "60000".into())];
    kill_9_while_archiving(env, "embedded, 60 s lease").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn kill_9_while_archiving_on_redis_replay_is_complete_within_10_s_of_the_restart() {
    let redis = RedisServer::start();
    kill_9_while_archiving(redis_env(&redis), "redis").await;
}

/// What a WebSocket resume from `cursor` gets: its item ids and its gaps.
async fn resume(app: &TestApp, room: &str, cursor: &str, want: usize) -> (Vec<String>, usize) {
    let mut ws = app.ws(room, Some(cursor), None).await;
    ws.wait_items(want, Duration::from_secs(5)).await;
    ws.settle(Duration::from_millis(300)).await;
    let gaps = ws.gaps.len();
    let ids = ws.item_ids();
    ws.close().await;
    (ids, gaps)
}

/// For a SIGTERM then a kill -9 restart: comments accepted just before it are
/// what a cursor from before it gets afterwards, by poll and by WebSocket.
async fn cursor_across_restarts(extra: Vec<(String, String)>, what: &str) {
    let mut app = spawn_app(&refs(&extra)).await;
    let room = "stores-restarted";
    let svc = app.token("stores-restart-svc", "service").await;
    for how in ["SIGTERM", "kill -9"] {
        let before = app.room_cursor(room).await;
        let mut want = HashSet::new();
        for i in 0..20 {
            want.insert(app.send_text(&svc, room, &format!("{how} {i}")).await);
        }
        let (got, _) = app
            .poll_until(room, &before, 100, &want, Duration::from_secs(10))
            .await;
        let sent = ids_of(&got);
        assert_eq!(
            sent.iter().cloned().collect::<HashSet<_>>(),
            want,
            "{what}, {how}: stored before the restart"
        );
        if how == "SIGTERM" {
            // Archives everything (every slice made due and archived).
            app.stop().await;
            assert!(
                std::fs::read_to_string(&app.log_path)
                    .unwrap_or_default()
                    .contains("archived everything still live"),
                "{what}: the graceful stop archived\n{}",
                app.log_tail(20)
            );
        } else {
            app.kill9().await;
        }
        app.restart().await;

        // After SIGTERM everything is there at once. After kill -9 the newest
        // comments may come back a moment later: the embedded store's latest
        // appends are lost with the Bus offsets committed after them, so the Bus
        // redelivers them and the writer stores them again, same seqs.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut at = before.clone();
        loop {
            let page = app.poll(room, Some(&at), Some(100), Some(0)).await;
            assert!(page.get("gap").is_none(), "{what}, {how}: no gap: {page}");
            got.extend(ids_of(page["items"].as_array().unwrap()));
            at = page["cursor"].as_str().unwrap().to_string();
            if how == "SIGTERM" || got.len() >= sent.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            got, sent,
            "{what}, {how}: a poll from before the restart gets its items"
        );
        let (ids, gaps) = resume(&app, room, &before, sent.len()).await;
        assert_eq!(
            ids, sent,
            "{what}, {how}: a resume from before the restart gets its items"
        );
        assert_eq!(gaps, 0, "{what}, {how}: no gap on the resume");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_a_restart_gets_the_comments_accepted_just_before_it() {
    cursor_across_restarts(Vec::new(), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_cursor_from_before_a_restart_gets_the_comments_accepted_just_before_it_on_redis() {
    let redis = RedisServer::start();
    cursor_across_restarts(redis_env(&redis), "redis").await;
}
