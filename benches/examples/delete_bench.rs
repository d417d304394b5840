//! Deletion -> viewer latency across live nodes (issue 14, item 9), next to
//! the comment -> viewer latency of the same deployment in the same run (the
//! peer a deletion is measured against: it takes the same path).
//!
//! Two `danmaku serve` processes (the release binary; roles ingest + live) on
//! librdkafka's mock cluster (this process, 3 brokers) and a `redis-server`
//! started here; one WebSocket viewer on each node. Each round sends a comment
//! through node A and times it to both viewers, then deletes it through A and
//! times the `delete` message to both viewers (from the DELETE request's start,
//! so the lookup and the Bus publish are included).
//!
//! ```text
//! cargo build --release -p danmaku && \
//!   cargo run --release -p danmaku-benches --example delete_bench
//! ```
//!
//! Environment: `ROUNDS` (200), `DANMAKU_BIN` (default `target/release/danmaku`),
//! `FETCH_WAIT_MS` (`kafka.fetch_wait_max_ms` of the nodes; default 100, the
//! server's default).

use danmaku_redis::testkit::RedisServer;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Node {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_node(bin: &str, brokers: &str, topic: &str, redis: &str, node: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        // The server refuses unknown DANMAKU_* variables: not ours.
        .env_remove("DANMAKU_BIN")
        .arg("--data-dir")
        .arg(dir.path())
        .env("DANMAKU_KAFKA__BROKERS", brokers)
        .env("DANMAKU_KAFKA__TOPIC", topic)
        .env("DANMAKU_REDIS__URL", redis)
        .env("DANMAKU_REDIS__NAMESPACE", "delbench")
        .env("DANMAKU_SERVER__NODE_ID", node.to_string())
        .env("DANMAKU_SERVER__ROLES", r#"["ingest","live"]"#)
        .env("DANMAKU_SERVER__DEMO", "false")
        .env("DANMAKU_AUTH__SECRET", "delete-bench")
        // The consumer's fetch wait (kafka.fetch_wait_max_ms, default 100 ms)
        // dominates an idle room's latency on the mock cluster; FETCH_WAIT_MS
        // sets it (as infra/bench/pipeline_latency.sh does).
        .env(
            "DANMAKU_KAFKA__FETCH_WAIT_MAX_MS",
            std::env::var("FETCH_WAIT_MS").unwrap_or_else(|_| "100".into()),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .expect("start danmaku");
    Node {
        child,
        base: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn ready(http: &reqwest::Client, node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://{}/readyz", node.base))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(node._dir.path().join("log")).unwrap_or_default();
            panic!("node {} never ready; its log:\n{log}", node.base);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `ws` until `pick` says a message is the one awaited.
async fn wait_for(ws: &mut Ws, pick: impl Fn(&Value) -> bool) -> Instant {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if pick(&v) {
                return Instant::now();
            }
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn token(bin: &str, user: &str, role: &str) -> String {
    let out = Command::new(bin)
        .args(["token", "--user", user, "--role", role, "--ttl", "1d"])
        .env_remove("DANMAKU_BIN")
        .env("DANMAKU_AUTH__SECRET", "delete-bench")
        .output()
        .expect("danmaku token");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bin = std::env::var("DANMAKU_BIN").unwrap_or_else(|_| "target/release/danmaku".into());
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let topic = "delete-bench";
    mock.create_topic(topic, 4, 3).expect("topic");
    let brokers = mock.bootstrap_servers();
    let redis = RedisServer::start();
    let a = start_node(&bin, &brokers, topic, &redis.url(), 1);
    let b = start_node(&bin, &brokers, topic, &redis.url(), 2);
    let http = reqwest::Client::new();
    ready(&http, &a).await;
    ready(&http, &b).await;
    let admin = token(&bin, "bench-admin", "admin");
    let svc = token(&bin, "bench-svc", "service");
    let room = "delbench";
    let (mut wa, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/rooms/{room}/ws", a.base))
            .await
            .unwrap();
    let (mut wb, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/rooms/{room}/ws", b.base))
            .await
            .unwrap();
    let _ = (
        wa.send(Message::Ping(vec![].into())).await,
        wb.send(Message::Ping(vec![].into())).await,
    );
    let (mut sends, mut deletes) = (Vec::new(), Vec::new());
    for i in 0..rounds + 10 {
        let text = format!("round {i}");
        let t0 = Instant::now();
        let r: Value = http
            .post(format!("http://{}/v1/rooms/{room}/danmaku", a.base))
            .bearer_auth(&svc)
            .json(&json!({"text": text}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["id"].as_str().expect("an id").to_string();
        let has = |v: &Value| {
            v["type"] == "batch"
                && v["items"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str()))
        };
        let (ta, tb) = (wait_for(&mut wa, has).await, wait_for(&mut wb, has).await);
        let t1 = Instant::now();
        let resp = http
            .delete(format!("http://{}/v1/rooms/{room}/danmaku/{id}", a.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let gone = |v: &Value| {
            v["type"] == "delete"
                && v["ids"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == id.as_str()))
        };
        let (da, db) = (wait_for(&mut wa, gone).await, wait_for(&mut wb, gone).await);
        if i >= 10 {
            // The first rounds warm up connections and consumers.
            sends.push((ta.max(tb) - t0).as_secs_f64() * 1000.0);
            deletes.push((da.max(db) - t1).as_secs_f64() * 1000.0);
        }
    }
    let (mut s, mut d) = (sends.clone(), deletes.clone());
    println!("rounds={rounds} (both viewers; ms from the request's start)");
    println!(
        "comment -> viewers: p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut s, 0.5),
        pct(&mut s, 0.99)
    );
    println!(
        "delete  -> viewers: p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut d, 0.5),
        pct(&mut d, 0.99)
    );
    println!(
        "ratio delete/comment p99: {:.2}",
        pct(&mut d, 0.99) / pct(&mut s, 0.99)
    );
}
