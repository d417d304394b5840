//! The live path on the real engines: the binary runs with `kafka.brokers` (a
//! librdkafka mock cluster of 3 brokers living in this test process, on loopback
//! ports the child process connects to; or `DANMAKU_TEST_KAFKA`) and `redis.url`
//! (a `redis-server` started here; or `DANMAKU_TEST_REDIS`), and once with
//! `redis.cluster` (a 3-master Redis Cluster).
//!
//! - the foundation's flows again: fan-out to several viewers, cursor polling,
//!   resume, a VOD replayed after its end, SIGTERM archiving to Parquet once, kill -9;
//! - faults: brokers down (503 + Retry-After in bounded time, no acknowledged
//!   comment lost), a Redis restart during a stream (a durable Redis loses nothing;
//!   one without persistence loses nothing the writer had not committed, and
//!   nobody sees a duplicate);
//! - big keys: a flood into one room raises the big-key event and shortens the
//!   room's slices (`GET /v1/admin/bigkeys`, `/metrics`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danmaku_kafka::{unique_topic, TestKafka};
use danmaku_redis::testkit::{RedisCluster, RedisServer};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// The engines of one test; they live as long as the value.
struct Engines {
    kafka: TestKafka,
    topic: String,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

enum Redis {
    Plain,
    Durable,
    Cluster,
}

impl Engines {
    async fn start(redis: Redis) -> Self {
        let kafka = TestKafka::start();
        let topic = unique_topic("e2e");
        kafka.create_topic(&topic, 4).await;
        let (redis, cluster) = match redis {
            Redis::Plain => (Some(RedisServer::start()), None),
            Redis::Durable => (
                Some(RedisServer::start_with(&[
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])),
                None,
            ),
            Redis::Cluster => (None, Some(RedisCluster::start(3))),
        };
        Self {
            kafka,
            topic,
            redis,
            cluster,
        }
    }

    /// The server environment selecting these engines, plus `extra`.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("DANMAKU_KAFKA__BROKERS".to_string(), self.kafka.brokers()),
            ("DANMAKU_KAFKA__TOPIC".to_string(), self.topic.clone()),
            ("DANMAKU_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("DANMAKU_KAFKA__MESSAGE_TIMEOUT_MS".into(), "3000".into()),
            ("DANMAKU_LIMITS__PUBLISH_TIMEOUT_MS".into(), "4000".into()),
            (
                "DANMAKU_REDIS__NAMESPACE".into(),
                format!("e2e{}", rand_suffix()),
            ),
            ("DANMAKU_REDIS__RESPONSE_TIMEOUT_MS".into(), "1000".into()),
        ];
        if let Some(r) = &self.redis {
            env.push(("DANMAKU_REDIS__URL".into(), r.url()));
        }
        if let Some(c) = &self.cluster {
            env.push(("DANMAKU_REDIS__CLUSTER".into(), c.urls().join(",")));
        }
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    async fn spawn(&self, extra: &[(&str, &str)]) -> TestApp {
        let env = self.env(extra);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = spawn_app(&refs).await;
        wait_ready(&app).await;
        app
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// Waits until `/readyz` answers 200 (Kafka and Redis reachable).
async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.get("/readyz").await;
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became 200: {}\nlog tail:\n{}",
            r.text,
            app.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends until the writer has joined its consumer group and a comment made it
/// through to polling (the mock cluster delays a new group's first assignment by
/// 3 s). Returns the room's cursor after that comment.
async fn warm_up(app: &TestApp, token: &str, room: &str) -> String {
    let start = app.room_cursor(room).await;
    let id = app.send_text(token, room, "warm-up").await;
    let want: HashSet<String> = [id].into_iter().collect();
    let (items, cursor) = app
        .poll_until(room, &start, 100, &want, Duration::from_secs(30))
        .await;
    assert!(
        ids_of(&items).iter().any(|i| want.contains(i)),
        "the warm-up comment never came through\nlog tail:\n{}",
        app.log_tail(60)
    );
    cursor
}

/// Every item after `cursor`, polling until `expected` are all seen or `within`.
async fn poll_all(
    app: &TestApp,
    room: &str,
    cursor: &str,
    expected: &HashSet<String>,
    within: Duration,
) -> Vec<String> {
    let (items, _) = app.poll_until(room, cursor, 1000, expected, within).await;
    ids_of(&items)
}

async fn read_range(app: &TestApp, vod: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=360000&limit=500");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let resp = app.get(&path).await;
        resp.expect_status(200, &format!("GET {path}"));
        items.extend(resp.json["items"].as_array().cloned().unwrap_or_default());
        match &resp.json["next"] {
            Value::String(n) => after = Some(n.clone()),
            _ => return items,
        }
    }
    panic!("the range API never ended");
}

/// The foundation's flows on one set of engines.
async fn live_flows(engines: &Engines) {
    let mut app = engines.spawn(&[]).await;
    let room = "pipe";
    let svc = app.token("pipe-svc", "service").await;
    let admin = app.token("pipe-admin", "admin").await;
    let start = warm_up(&app, &svc, room).await;

    // A VOD session around the stream.
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();

    // Fan-out: three viewers, connected before the stream.
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(app.ws(room, Some(&start), None).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let app_ref = &app;
    let svc_ref = &svc;
    let first: Vec<String> = futures::stream::iter(0..120usize)
        .map(|i| async move { app_ref.send_text(svc_ref, room, &format!("p-{i}")).await })
        .buffered(8)
        .collect()
        .await;
    let first_set: HashSet<String> = first.iter().cloned().collect();
    for (n, v) in viewers.iter_mut().enumerate() {
        assert!(
            v.wait_items(first.len(), Duration::from_secs(20)).await,
            "viewer {n} got {} of {}\nlog tail:\n{}",
            v.items.len(),
            first.len(),
            app.log_tail(40)
        );
    }
    let mut orders = Vec::new();
    for v in viewers.iter_mut() {
        v.settle(Duration::from_millis(300)).await;
        let ids = v.item_ids();
        assert_no_duplicates(&ids, "viewer");
        let got: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(got, first_set, "a viewer gets every comment");
        for item in &v.items {
            assert_item_shape(item, room);
        }
        orders.push(ids);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every viewer sees the same order"
    );

    // Polling from the start cursor: all, once, in the viewers' order.
    let polled = poll_all(&app, room, &start, &first_set, Duration::from_secs(20)).await;
    assert_no_duplicates(&polled, "polling");
    assert_eq!(polled, orders[0], "polling order is the live order");

    // Resume: a viewer leaves, comments arrive meanwhile, it comes back with its cursor.
    let leaver = viewers.pop().unwrap();
    let cursor = leaver.cursor.clone();
    leaver.close().await;
    let mut missed = Vec::new();
    for i in 0..15 {
        missed.push(app.send_text(&svc, room, &format!("away-{i}")).await);
    }
    let mut back = app.ws(room, Some(&cursor), None).await;
    assert!(
        back.wait_items(missed.len(), Duration::from_secs(15)).await,
        "resumed viewer got {} of {}",
        back.items.len(),
        missed.len()
    );
    back.settle(Duration::from_millis(300)).await;
    assert_eq!(back.item_ids(), missed, "exactly what was missed, in order");

    // The VOD: ended, then every comment replays.
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    resp.expect_status(200, "end the VOD");
    let vod_ids: HashSet<String> = first.iter().chain(&missed).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: HashSet<String> = ids_of(&read_range(&app, &vod).await).into_iter().collect();
        if vod_ids.is_subset(&got) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VOD replays {} of {} comments after its end",
            vod_ids.intersection(&got).count(),
            vod_ids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Operations: ready, metrics without per-room labels, the big-key report.
    app.get("/readyz").await.expect_status(200, "/readyz");
    let metrics = app.get("/metrics").await.text;
    for name in [
        "danmaku_kafka_produce_seconds",
        "danmaku_writer_batch_size",
        "danmaku_ingest_accepted_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert!(!metrics.contains("room=\""), "no per-room labels");
    let report = app
        .request(
            reqwest::Method::GET,
            "/v1/admin/bigkeys",
            Some(&admin),
            Body::None,
            &[],
        )
        .await;
    report.expect_status(200, "GET /v1/admin/bigkeys");
    assert!(report.json["keys"].is_array(), "{}", report.text);
    assert_eq!(report.json["thresholds"]["members"], 5000);

    // SIGTERM: every comment lands in Parquet exactly once.
    let all: HashSet<u64> = vod_ids.iter().map(|i| i.parse().unwrap()).collect();
    app.stop().await;
    let rows = read_parquet(&app.data_dir);
    let mut count: HashMap<u64, usize> = HashMap::new();
    for r in rows.iter().filter(|r| r.room == room) {
        *count.entry(r.id).or_default() += 1;
    }
    for id in &all {
        assert_eq!(
            count.get(id),
            Some(&1),
            "comment {id} in Parquet exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn live_flows_on_kafka_and_redis() {
    let engines = Engines::start(Redis::Plain).await;
    live_flows(&engines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn live_flows_on_kafka_and_a_redis_cluster() {
    let engines = Engines::start(Redis::Cluster).await;
    live_flows(&engines).await;
}

/// kill -9 in the middle of a stream, restart: every acknowledged comment is read
/// back from the start cursor, once (Kafka holds them; the writer resumes from the
/// committed offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn kill_9_on_kafka_and_redis_loses_no_acknowledged_comment() {
    let engines = Engines::start(Redis::Plain).await;
    let mut app = engines.spawn(&[]).await;
    let room = "crash-k";
    let svc = app.token("crash-svc", "service").await;
    let start = warm_up(&app, &svc, room).await;
    let url = app.url(&format!("/v1/rooms/{room}/danmaku"));
    let http = app.http.clone();
    let pid = app.pid();
    let killed = Arc::new(AtomicBool::new(false));
    let acked: Vec<Option<String>> = futures::stream::iter(0..200usize)
        .map(|i| {
            let (http, url, svc, killed) = (http.clone(), url.clone(), svc.clone(), killed.clone());
            async move {
                if i == 150 && !killed.swap(true, Ordering::SeqCst) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                let r = http
                    .post(&url)
                    .bearer_auth(&svc)
                    .json(&json!({"text": format!("k-{i}")}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .ok()?;
                if r.status().as_u16() != 202 {
                    return None;
                }
                let v: Value = r.json().await.ok()?;
                v["id"].as_str().map(str::to_string)
            }
        })
        .buffered(4)
        .collect()
        .await;
    let acked: HashSet<String> = acked.into_iter().flatten().collect();
    assert!(
        acked.len() >= 100,
        "{} acknowledged before the kill",
        acked.len()
    );
    app.kill9().await;
    app.restart().await;
    wait_ready(&app).await;
    let polled = poll_all(&app, room, &start, &acked, Duration::from_secs(40)).await;
    assert_no_duplicates(&polled, "after restart");
    let got: HashSet<String> = polled.into_iter().collect();
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged comments lost: {lost:?}",
        lost.len()
    );
}

/// Every broker down: sends fail with 503 + Retry-After within the publish
/// timeout, `/readyz` fails; back up, sends succeed. A broker failure in the middle
/// of a stream loses no acknowledged comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn broker_failures_answer_503_in_bounded_time_and_lose_nothing_acknowledged() {
    let engines = Engines::start(Redis::Plain).await;
    if !engines.kafka.is_mock() {
        return;
    }
    // Broker 2 leads half the partitions (set before any client reads metadata).
    for p in 0..4 {
        engines
            .kafka
            .set_leader(&engines.topic, p, if p < 2 { 2 } else { 3 });
    }
    let app = engines.spawn(&[]).await;
    let room = "brokers";
    const ROOMS: usize = 8;
    let svc = app.token("broker-svc", "service").await;
    warm_up(&app, &svc, room).await;

    engines.kafka.broker_down(-1);
    let t = Instant::now();
    let resp = app
        .send(Some(&svc), room, json!({"text": "into the void"}))
        .await;
    let took = t.elapsed();
    resp.expect_error(503, "unavailable", "send while every broker is down");
    assert!(
        resp.header("retry-after").is_some(),
        "503 carries Retry-After"
    );
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/readyz").await.status != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stays 200 with every broker down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engines.kafka.broker_up(-1);
    wait_ready(&app).await;

    // Broker 2 fails during a stream.
    let mut starts = Vec::new();
    for k in 0..ROOMS {
        starts.push(app.room_cursor(&format!("{room}{k}")).await);
    }
    let app_ref = &app;
    let svc_ref = &svc;
    let send = |i: usize| async move {
        let r = app_ref
            .send(
                Some(svc_ref),
                &format!("{room}{}", i % ROOMS),
                json!({"text": format!("b-{i}")}),
            )
            .await;
        (i % ROOMS, r)
    };
    let mut results = Vec::new();
    results.extend(
        futures::stream::iter(0..30)
            .map(send)
            .buffered(10)
            .collect::<Vec<_>>()
            .await,
    );
    engines.kafka.broker_down(2);
    results.extend(
        futures::stream::iter(30..90)
            .map(send)
            .buffered(20)
            .collect::<Vec<_>>()
            .await,
    );
    engines.kafka.broker_up(2);
    results.extend(
        futures::stream::iter(90..120)
            .map(send)
            .buffered(10)
            .collect::<Vec<_>>()
            .await,
    );
    let mut acked = HashSet::new();
    let mut unavailable = 0;
    for (k, r) in results {
        match r.status {
            202 => {
                acked.insert((k, r.json["id"].as_str().unwrap().to_string()));
            }
            503 => {
                assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
                unavailable += 1;
            }
            s => panic!("unexpected status {s}: {}", r.text),
        }
    }
    assert!(
        unavailable > 0,
        "sends to the partitions of the downed broker fail (got {} acknowledged)",
        acked.len()
    );
    for (k, begin) in starts.iter().enumerate() {
        let room_k = format!("{room}{k}");
        let want: HashSet<String> = acked
            .iter()
            .filter(|(r, _)| *r == k)
            .map(|(_, id)| id.clone())
            .collect();
        let polled = poll_all(&app, &room_k, begin, &want, Duration::from_secs(40)).await;
        assert_no_duplicates(&polled, &room_k);
        let got: HashSet<String> = polled.into_iter().collect();
        let lost: Vec<_> = want.difference(&got).collect();
        assert!(
            lost.is_empty(),
            "{room_k}: {} acknowledged comments lost ({unavailable} sends got 503)",
            lost.len()
        );
    }
}

/// A Redis restart during a stream. A durable Redis (`appendonly yes`): every
/// acknowledged comment is read back once. Viewers see no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_durable_redis_restart_during_a_stream_loses_and_duplicates_nothing() {
    redis_restart(Redis::Durable).await;
}

/// Without persistence the restart empties Redis: what the writer had committed
/// before is gone from the hot store (it stays in Kafka), but every comment the
/// writer had not committed yet, and every later one, arrives, and nobody sees a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_redis_restart_without_persistence_loses_nothing_uncommitted() {
    redis_restart(Redis::Plain).await;
}

async fn redis_restart(kind: Redis) {
    let durable = matches!(kind, Redis::Durable);
    let mut engines = Engines::start(kind).await;
    if let Some(r) = &engines.redis {
        r.assert_local();
    }
    let app = engines.spawn(&[]).await;
    let room = "restart";
    let svc = app.token("restart-svc", "service").await;
    let start = warm_up(&app, &svc, room).await;
    let mut viewer = app.ws(room, Some(&start), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut before = Vec::new();
    let mut after = Vec::new();
    for i in 0..160 {
        if i == 60 {
            engines.redis.as_mut().unwrap().kill();
        }
        if i == 100 {
            engines.redis.as_mut().unwrap().restart();
        }
        let id = app.send_text(&svc, room, &format!("r-{i}")).await;
        if i < 60 {
            before.push(id);
        } else {
            after.push(id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    assert!(
        viewer.wait_items(all.len(), Duration::from_secs(40)).await,
        "the viewer got {} of {}\nlog tail:\n{}",
        viewer.items.len(),
        all.len(),
        app.log_tail(60)
    );
    viewer.settle(Duration::from_millis(500)).await;
    assert_no_duplicates(&viewer.item_ids(), "viewer across the restart");
    assert_eq!(
        viewer.item_ids(),
        all,
        "the viewer sees every comment once, in order"
    );

    let (want, from): (HashSet<String>, &str) = if durable {
        (all.iter().cloned().collect(), start.as_str())
    } else {
        // The hot store lost what was committed before the restart; everything sent
        // while Redis was down or after it came back is there.
        (after.iter().cloned().collect(), start.as_str())
    };
    let polled = poll_all(&app, room, from, &want, Duration::from_secs(30)).await;
    assert_no_duplicates(&polled, "polling across the restart");
    let got: HashSet<String> = polled.iter().cloned().collect();
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(lost.is_empty(), "{} comments lost: {lost:?}", lost.len());
    if durable {
        assert_eq!(polled, all, "a durable Redis keeps everything, in order");
    }
}

/// A flood into one room: the slice it fills crosses the (lowered) big-key
/// threshold, the event is counted and listed, and the room's next slices are
/// shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_flood_raises_the_big_key_event_and_shortens_the_rooms_slices() {
    let engines = Engines::start(Redis::Plain).await;
    let app = engines
        .spawn(&[
            ("DANMAKU_LIVE__SLICE_MS", "2000"),
            ("DANMAKU_LIVE__BIGKEY_MEMBERS", "150"),
            ("DANMAKU_LIVE__BIGKEY_SCAN_INTERVAL_MS", "1000"),
        ])
        .await;
    let room = "flood";
    let svc = app.token("flood-svc", "service").await;
    let admin = app.token("flood-admin", "admin").await;
    warm_up(&app, &svc, "flood-warm").await;

    // Non-admins are refused.
    let viewer = app.token("flood-viewer", "viewer").await;
    let r = app
        .request(
            reqwest::Method::GET,
            "/v1/admin/bigkeys",
            Some(&viewer),
            Body::None,
            &[],
        )
        .await;
    r.expect_error(403, "forbidden", "big-key report for a viewer");
    let r = app.get("/v1/admin/bigkeys").await;
    r.expect_error(401, "unauthorized", "big-key report without a token");

    // ~250 comments/s for 5 s.
    let app_ref = &app;
    let svc_ref = &svc;
    let began = Instant::now();
    let sent: Vec<String> = futures::stream::iter(0..1250usize)
        .map(|i| async move {
            let due = began + Duration::from_millis(i as u64 * 4);
            tokio::time::sleep_until(due.into()).await;
            app_ref.send_text(svc_ref, room, &format!("f-{i}")).await
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(sent.len(), 1250);

    let deadline = Instant::now() + Duration::from_secs(20);
    let (big, shorter) = loop {
        let r = app
            .request(
                reqwest::Method::GET,
                "/v1/admin/bigkeys?limit=1000",
                Some(&admin),
                Body::None,
                &[],
            )
            .await;
        r.expect_status(200, "GET /v1/admin/bigkeys");
        let keys = r.json["keys"].as_array().cloned().unwrap_or_default();
        let mine: Vec<&Value> = keys.iter().filter(|k| k["room"] == room).collect();
        let big = mine
            .iter()
            .any(|k| k["big"] == true && k["members"].as_u64().unwrap_or(0) >= 150);
        let shorter = mine.iter().any(|k| k["slice_ms"].as_i64() == Some(1000));
        let event = r.json["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["room"] == room));
        if big && shorter && event {
            break (big, shorter);
        }
        assert!(
            Instant::now() < deadline,
            "no big key / shorter slices for {room}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(big && shorter);
    let metrics = app.get("/metrics").await.text;
    let events = metrics
        .lines()
        .find(|l| l.starts_with("danmaku_bigkey_events_total") && l.contains("writer"))
        .unwrap_or_else(|| panic!("no big-key event metric in /metrics"));
    let n: f64 = events.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{events}");
    assert!(metrics.contains("danmaku_slice_length_changes_total"));
}
