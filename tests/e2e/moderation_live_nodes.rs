//! Deletions and online counts across two live nodes (issue 14, items 2, 5
//! and 8): two `danmaku serve` processes with the ingest and live roles on one
//! Kafka (librdkafka's mock cluster) and one `redis-server`.
//!
//! - a deletion made through A reaches the WebSocket viewers of both nodes,
//!   within 50 ms of each other's share of the work (the delete -> viewer
//!   latency is printed); polls on either node carry it and never the comment;
//! - `online` sums the viewers of both nodes;
//! - a deletion acknowledged just before both nodes are killed (kill -9) is
//!   applied after they restart: nobody who arrives later gets the comment.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use danmaku_kafka::{unique_topic, TestKafka};
use danmaku_redis::testkit::RedisServer;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

fn env(
    kafka: &TestKafka,
    topic: &str,
    redis: &RedisServer,
    ns: &str,
    node: &str,
) -> Vec<(String, String)> {
    vec![
        ("DANMAKU_KAFKA__BROKERS".into(), kafka.brokers()),
        ("DANMAKU_KAFKA__TOPIC".into(), topic.to_string()),
        ("DANMAKU_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("DANMAKU_KAFKA__MESSAGE_TIMEOUT_MS".into(), "3000".into()),
        ("DANMAKU_LIMITS__PUBLISH_TIMEOUT_MS".into(), "4000".into()),
        ("DANMAKU_REDIS__URL".into(), redis.url()),
        ("DANMAKU_REDIS__NAMESPACE".into(), ns.to_string()),
        ("DANMAKU_SERVER__NODE_ID".into(), node.to_string()),
        (
            "DANMAKU_SERVER__ROLES".into(),
            r#"["ingest","live"]"#.into(),
        ),
        ("DANMAKU_AUTH__SECRET".into(), format!("e2e-del-{ns}")),
    ]
}

async fn spawn_with(env: &[(String, String)]) -> TestApp {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app(&refs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz never became 200\nlog tail:\n{}",
            app.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app
}

fn unique() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// Reads `ws` until a `delete` naming `id` arrives; when it did.
async fn deletion_seen(ws: &mut WsClient, id: &str, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let named = |f: &Value| {
        f["type"] == "delete"
            && f["ids"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == id))
    };
    if ws.frames.iter().any(named) {
        return Some(Instant::now());
    }
    while let Some(f) = ws.next_frame(deadline).await {
        if named(&f) {
            return Some(Instant::now());
        }
    }
    None
}

fn deleted_of(page: &Value) -> HashSet<String> {
    page["deleted"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn deletions_and_online_counts_hold_across_live_nodes() {
    let kafka = TestKafka::start();
    let topic = unique_topic("e2e-del");
    kafka.create_topic(&topic, 4).await;
    let redis = RedisServer::start();
    let ns = format!("del{}", unique());
    let mut a = spawn_with(&env(&kafka, &topic, &redis, &ns, "1")).await;
    let mut b = spawn_with(&env(&kafka, &topic, &redis, &ns, "2")).await;
    let admin = a.token("root", "admin").await;
    let svc = a.token("streamer", "service").await;
    let room = format!("dl{}", unique());

    let start = a.room_cursor(&room).await;
    let mut on_a = a.ws(&room, Some(&start), None).await;
    let mut on_b = b.ws(&room, Some(&start), None).await;
    let keep = a.send_text(&svc, &room, "stays").await;
    let gone = b.send_text(&svc, &room, "taken back").await;
    assert!(
        on_a.wait_items(2, Duration::from_secs(10)).await,
        "A: {:?}",
        on_a.frames
    );
    assert!(
        on_b.wait_items(2, Duration::from_secs(10)).await,
        "B: {:?}",
        on_b.frames
    );

    // Online: one viewer on each node, summed (reported every second).
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (ia, ib) = (
            a.get(&format!("/v1/rooms/{room}")).await,
            b.get(&format!("/v1/rooms/{room}")).await,
        );
        if ia.json["online"] == 2 && ib.json["online"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not 2 on both: {} / {}",
            ia.text,
            ib.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A deletion through A reaches the viewers of both nodes.
    let asked = Instant::now();
    a.request(
        Method::DELETE,
        &format!("/v1/rooms/{room}/danmaku/{gone}"),
        Some(&admin),
        Body::None,
        &[],
    )
    .await
    .expect_status(200, "DELETE through A");
    let seen_a = deletion_seen(&mut on_a, &gone, Duration::from_secs(5))
        .await
        .expect("A's viewer never got the deletion");
    let seen_b = deletion_seen(&mut on_b, &gone, Duration::from_secs(5))
        .await
        .expect("B's viewer never got the deletion");
    eprintln!(
        "delete -> viewer: A {:?}, B {:?} (from the request)",
        seen_a - asked,
        seen_b - asked
    );
    for (name, node) in [("A", &a), ("B", &b)] {
        let page = node.poll(&room, Some(&start), Some(100), None).await;
        let ids: HashSet<String> = ids_of(page["items"].as_array().unwrap())
            .into_iter()
            .collect();
        assert!(
            ids.contains(&keep) && !ids.contains(&gone),
            "{name}: {page}"
        );
        assert_eq!(
            deleted_of(&page),
            HashSet::from([gone.clone()]),
            "{name}: {page}"
        );
    }

    // A deletion acknowledged right before both nodes die is applied after
    // they come back.
    let last = a.send_text(&svc, &room, "deleted before a crash").await;
    assert!(on_a.wait_items(3, Duration::from_secs(10)).await);
    drop(on_a);
    drop(on_b);
    a.request(
        Method::DELETE,
        &format!("/v1/rooms/{room}/danmaku/{last}"),
        Some(&admin),
        Body::None,
        &[],
    )
    .await
    .expect_status(200, "DELETE just before kill -9");
    a.kill9().await;
    b.kill9().await;
    a.restart().await;
    b.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = b.poll(&room, Some(&start), Some(100), None).await;
        let ids: HashSet<String> = ids_of(page["items"].as_array().unwrap())
            .into_iter()
            .collect();
        assert!(!ids.contains(&gone), "{page}");
        if !ids.contains(&last) && deleted_of(&page).contains(&last) {
            assert!(ids.contains(&keep), "{page}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deletion was not applied after the restart: {page}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut late = a.ws(&room, Some(&start), None).await;
    late.settle(Duration::from_millis(500)).await;
    let got: HashSet<String> = late.item_ids().into_iter().collect();
    assert!(got.contains(&keep), "{:?}", late.frames);
    assert!(
        !got.contains(&gone) && !got.contains(&last),
        "{:?}",
        late.frames
    );
}
