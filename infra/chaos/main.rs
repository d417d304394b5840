//! The chaos suite (issue 17, item 3): a multi-process deployment of the real
//! `danmaku` binary on loopback, a steady send load, viewers on every live
//! node, and faults injected while it runs; the result is checked comment by
//! comment and printed as a report (docs/OPERATIONS.md, "Chaos suite").
//!
//! The deployment:
//!
//! - librdkafka's mock cluster, 3 brokers, in a process of its own
//!   ([`deploy::MockKafka`]: this binary started again as `mock_kafka_process`);
//! - a 3-master Redis Cluster, `appendonly yes`, `appendfsync always`
//!   ([`deploy::AofCluster`]);
//! - 2 ingest nodes, 3 live nodes, and one node with the archive and
//!   replay-api roles together: the embedded ArchiveStore (redb) lives in one
//!   process's data dir and only that process can open it, so a separate
//!   replay-api process would read an empty store of its own; with the
//!   embedded ArchiveStore, archive and replay-api share a process (a
//!   separate replay-api node needs `scylla.nodes`). Parquet is written under
//!   that node's data dir.
//!
//! The faults, one after the other while the load runs: a broker stopped and
//! started again, a Redis master killed (-9) and restarted on its AOF, a live
//! node killed (-9; its viewers resume by cursor on another live node), the
//! archiver killed (-9) and crashed inside a batch, then restarted, an ingest
//! node killed (-9; the senders use the other one, then it is restarted), and,
//! when running as root with iptables, a partition between a live node and
//! Redis ([`PARTITION_HOW`]; otherwise the report says why it was skipped).
//!
//! The checks: every acknowledged (202) comment exactly once in what every
//! viewer received, in the replay range API after the VODs ended, and in
//! Parquet; nothing twice anywhere. The report gives the counts, each fault's
//! heal time and the p99 send->viewer latency outside and during faults.
//!
//! Sizes come from the environment: `CHAOS_COMMENTS` (default 3,000),
//! `CHAOS_RATE` (comments/s, default 50), `CHAOS_ROOMS` (4),
//! `CHAOS_VIEWERS` (viewers per room on each live node, 1). The long run is
//! `infra/chaos/run.sh --long` (1,000,000 comments).

#[path = "../../tests/e2e/helpers.rs"]
mod helpers;

mod deploy;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use deploy::{AofCluster, MockKafka};
use helpers::{now_ms, read_parquet, spawn_app, TestApp};

/// How the partition is made, and why it cannot be a network namespace.
const PARTITION_HOW: &str = "live node 2 runs as uid 65534 (setpriv); iptables drops that uid's \
packets to the 3 Redis masters' ports on loopback for 10 s (a network namespace would not do: the \
mock Kafka brokers listen on 127.0.0.1 only, which another namespace cannot reach)";

/// The run's sizes.
#[derive(Clone, Debug)]
struct Plan {
    comments: u64,
    rate: u64,
    rooms: usize,
    viewers_per_room_per_node: usize,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

impl Plan {
    fn from_env() -> Self {
        Self {
            comments: env_num("CHAOS_COMMENTS", 3_000),
            rate: env_num("CHAOS_RATE", 50).max(1),
            rooms: env_num("CHAOS_ROOMS", 4).max(1) as usize,
            viewers_per_room_per_node: env_num("CHAOS_VIEWERS", 1).max(1) as usize,
        }
    }
}

/// What one viewer received.
#[derive(Default)]
struct Viewer {
    room: usize,
    /// The live node it started on, and the one it is on now.
    first_node: usize,
    node: usize,
    /// The last cursor (hello, batch or gap).
    cursor: Option<String>,
    /// Times each id arrived.
    seen: HashMap<u64, u32>,
    /// (send time, send->viewer latency) in ms, per item.
    latencies: Vec<(i64, i64)>,
    gaps: u64,
    connects: u64,
    moves: u64,
    /// Every batch as (its cursor's seq, its item ids), for the analysis of
    /// a loss: where the room's other viewers got a lost item, and what this
    /// viewer got around it.
    batches: Vec<(u64, Vec<u64>)>,
}

/// An acknowledged comment.
struct Acked {
    room: usize,
    /// When it was sent (ms since the epoch).
    sent_ms: i64,
}

/// One injected fault.
struct Fault {
    name: &'static str,
    injected_ms: i64,
    /// When the suite undid it (restart, broker up), for faults it undoes.
    repaired_ms: Option<i64>,
    /// When a comment sent after it had reached every viewer of every room
    /// (or, for the archiver, the replay API), i.e. everything works again.
    healed_ms: Option<i64>,
    note: String,
    /// Whether it is on the send->viewer path (its window counts as "during
    /// faults" for the latency figures; the archiver's does not).
    live_path: bool,
}

/// State shared by the senders, the viewers and the fault schedule.
struct Shared {
    plan: Plan,
    http: reqwest::Client,
    token: String,
    ingest: RwLock<Vec<Option<String>>>,
    live: RwLock<Vec<Option<String>>>,
    next_ingest: AtomicU64,
    acked: Mutex<HashMap<u64, Acked>>,
    viewers: Vec<Mutex<Viewer>>,
    stop_viewers: AtomicBool,
    faults_done: AtomicBool,
    sends_503: AtomicU64,
    sends_other: AtomicU64,
    sends_unreachable: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    /// The archive node's base URL (it changes when the node restarts).
    archive_url: RwLock<String>,
    /// (time, rows archived, batches) of the archive node, every second;
    /// counters from before a restart are carried over.
    archive_samples: Mutex<Vec<(i64, u64, u64)>>,
}

fn room_name(room: usize) -> String {
    format!("chaos{room}")
}

impl Shared {
    fn pick_ingest(&self) -> Option<String> {
        let nodes = self.ingest.read().unwrap();
        let alive: Vec<&String> = nodes.iter().flatten().collect();
        if alive.is_empty() {
            return None;
        }
        let i = self.next_ingest.fetch_add(1, Ordering::Relaxed) as usize;
        Some(alive[i % alive.len()].clone())
    }

    /// Sends one comment into `room` through an ingest node; its text carries
    /// `tag` and the send time. Returns the id when it was acknowledged (202).
    async fn send(&self, room: usize, tag: &str) -> Option<u64> {
        let Some(base) = self.pick_ingest() else {
            self.sends_unreachable.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let sent = now_ms();
        let resp = self
            .http
            .post(format!("{base}/v1/rooms/{}/danmaku", room_name(room)))
            .bearer_auth(&self.token)
            .json(&json!({ "text": format!("{tag} t={sent}") }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                self.sends_unreachable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 202 {
            if status == 503 {
                self.sends_503.fetch_add(1, Ordering::Relaxed);
            } else {
                self.sends_other.fetch_add(1, Ordering::Relaxed);
                eprintln!("chaos: send answered {status}: {body}");
            }
            return None;
        }
        let id: u64 = body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("202 without a numeric id: {body}"));
        self.acked.lock().unwrap().insert(
            id,
            Acked {
                room,
                sent_ms: sent,
            },
        );
        Some(id)
    }

    fn live_url(&self, node: usize) -> Option<String> {
        self.live.read().unwrap()[node].clone()
    }

    /// Whether every viewer of `room` received `id`.
    fn delivered(&self, room: usize, id: u64) -> bool {
        self.viewers.iter().all(|v| {
            let v = v.lock().unwrap();
            v.room != room || v.seen.contains_key(&id)
        })
    }

    /// Sends a probe into every room (retrying until one is acknowledged) and
    /// waits until each reached every viewer of its room; returns the probe
    /// ids, or None when that did not happen within `within`.
    async fn probe_all(&self, tag: &str, within: Duration) -> Option<Vec<(usize, u64)>> {
        let deadline = Instant::now() + within;
        let probes = futures::future::join_all((0..self.plan.rooms).map(|room| async move {
            loop {
                if let Some(id) = self.send(room, tag).await {
                    return Some((room, id));
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
        .await;
        let probes: Option<Vec<(usize, u64)>> = probes.into_iter().collect();
        let probes = probes?;
        loop {
            if probes.iter().all(|&(room, id)| self.delivered(room, id)) {
                return Some(probes);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn record(&self, fault: Fault) {
        eprintln!(
            "chaos: {} healed after {:?} ms",
            fault.name,
            fault.healed_ms.map(|h| h - fault.injected_ms)
        );
        self.faults.lock().unwrap().push(fault);
    }
}

/// One viewer: a WebSocket on its live node; when it closes it resumes by
/// cursor, on another live node when its own is gone.
async fn viewer(sh: Arc<Shared>, v: usize) {
    let room = sh.viewers[v].lock().unwrap().room;
    loop {
        if sh.stop_viewers.load(Ordering::Relaxed) {
            return;
        }
        let (node, cursor) = {
            let st = sh.viewers[v].lock().unwrap();
            (st.node, st.cursor.clone())
        };
        let Some(base) = sh.live_url(node) else {
            // Its node is gone: the next live node that is up.
            let n = sh.live.read().unwrap().len();
            let next = (1..n)
                .map(|k| (node + k) % n)
                .find(|&i| sh.live_url(i).is_some())
                .expect("a live node is up");
            let mut st = sh.viewers[v].lock().unwrap();
            st.node = next;
            st.moves += 1;
            continue;
        };
        let mut url = format!(
            "ws://{}/v1/rooms/{}/ws",
            base.trim_start_matches("http://"),
            room_name(room)
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("?cursor={c}"));
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await;
        let Ok(Ok((mut stream, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        sh.viewers[v].lock().unwrap().connects += 1;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
            let text = match next {
                Err(_) => {
                    if sh.stop_viewers.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(_))) => continue,
            };
            let now = now_ms();
            let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                panic!("a WebSocket frame that is not JSON: {text}");
            };
            let mut st = sh.viewers[v].lock().unwrap();
            match msg["type"].as_str() {
                // A resume keeps its own cursor until the first batch.
                Some("hello") if st.cursor.is_none() => {
                    st.cursor = msg["cursor"].as_str().map(str::to_string);
                }
                Some("batch") => {
                    let seq = msg["cursor"]
                        .as_str()
                        .and_then(danmaku_core::cursor::Cursor::decode)
                        .map_or(0, |c| c.0);
                    let mut ids = Vec::new();
                    for item in msg["items"].as_array().into_iter().flatten() {
                        let Some(id) = item["id"].as_str().and_then(|s| s.parse::<u64>().ok())
                        else {
                            continue;
                        };
                        ids.push(id);
                        *st.seen.entry(id).or_default() += 1;
                        let sent = item["text"]
                            .as_str()
                            .and_then(|t| t.rsplit_once(" t="))
                            .and_then(|(_, t)| t.parse::<i64>().ok());
                        if let Some(sent) = sent {
                            st.latencies.push((sent, now - sent));
                        }
                    }
                    st.cursor = msg["cursor"].as_str().map(str::to_string);
                    st.batches.push((seq, ids));
                }
                Some("gap") => {
                    st.gaps += 1;
                    if let Some(c) = msg["cursor"].as_str() {
                        st.cursor = Some(c.to_string());
                    }
                }
                _ => {}
            }
        }
    }
}

/// The steady load: `plan.comments` comments at `plan.rate` per second over
/// the rooms, and on until the fault schedule is done.
async fn load(sh: Arc<Shared>) -> u64 {
    let permits = 512;
    let sem = Arc::new(tokio::sync::Semaphore::new(permits));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / sh.plan.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while n < sh.plan.comments || !sh.faults_done.load(Ordering::Relaxed) {
        tick.tick().await;
        let permit = sem.clone().acquire_owned().await.unwrap();
        let sh2 = sh.clone();
        let room = (n % sh.plan.rooms as u64) as usize;
        tokio::spawn(async move {
            sh2.send(room, &format!("c{n}")).await;
            drop(permit);
        });
        n += 1;
    }
    let _ = sem.acquire_many(permits as u32).await.unwrap();
    n
}

/// The test environment of one node.
fn node_env(common: &[(String, String)], roles: &str, node_id: u32) -> Vec<(String, String)> {
    let mut env = common.to_vec();
    env.push(("DANMAKU_SERVER__ROLES".into(), roles.into()));
    env.push(("DANMAKU_SERVER__NODE_ID".into(), node_id.to_string()));
    env
}

async fn spawn_node(env: &[(String, String)]) -> TestApp {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app(&refs).await;
    wait_ready(&app).await;
    app
}

/// Waits until `base`/readyz answers 200 (a node started outside the harness).
async fn wait_ready_url(base: &str, log: &std::path::Path) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}/readyz never became 200\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if app.get("/readyz").await.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became 200\nlog tail:\n{}",
            app.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every item of a VOD through the range API, in pages.
async fn read_vod(
    http: &reqwest::Client,
    base: &str,
    vod: &str,
    from_ms: i64,
    to_ms: i64,
) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url =
            format!("{base}/v1/vods/{vod}/danmaku?from_ms={from_ms}&to_ms={to_ms}&limit=500");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let resp = http.get(&url).send().await.expect("GET range");
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let body: Value = resp.json().await.expect("range JSON");
        for item in body["items"].as_array().into_iter().flatten() {
            if let Some(id) = item["id"].as_str().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        match &body["next"] {
            Value::String(n) => after = Some(n.clone()),
            _ => return ids,
        }
    }
}

/// Lost and duplicated acknowledged comments in `ids` (what one reader got)
/// against `want`, and how many unacknowledged ones it holds (a 503 or a
/// dropped connection does not mean "not stored").
fn tally(want: &HashSet<u64>, ids: &HashMap<u64, u32>) -> (usize, usize, usize) {
    let lost = want.iter().filter(|id| !ids.contains_key(id)).count();
    let dup = ids.values().filter(|&&n| n > 1).count();
    let extra = ids.keys().filter(|id| !want.contains(id)).count();
    (lost, dup, extra)
}

fn p99(mut v: Vec<i64>) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_unstable();
    let i = ((v.len() as f64) * 0.99).ceil() as usize;
    format!(
        "{} ms (n = {})",
        v[i.saturating_sub(1).min(v.len() - 1)],
        v.len()
    )
}

/// The entry the suite starts again as the mock Kafka process; a no-op
/// unless `CHAOS_MOCK_KAFKA` is set (by the suite).
#[test]
fn mock_kafka_process() {
    if let Ok(spec) = std::env::var(deploy::MOCK_ENV) {
        deploy::serve_mock(&spec);
    }
}

/// The suite at the sizes of the environment (the short run by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli (bash infra/dev/test.sh installs them)"]
async fn chaos_suite() {
    run_suite(Plan::from_env()).await;
}

/// The suite at 100,000 comments, 500/s, 16 rooms (about 5 minutes, so not
/// in the test command, which skips it by name: `infra/chaos/run.sh --heavy`
/// runs it). Only with `CHAOS_HEAVY=1`: never beside `chaos_suite` in one
/// test binary, whose partition fault uses the same uid's iptables rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 5 minutes: infra/chaos/run.sh --heavy (needs CHAOS_HEAVY=1)"]
async fn chaos_suite_heavy() {
    assert_eq!(
        std::env::var("CHAOS_HEAVY").as_deref(),
        Ok("1"),
        "chaos_suite_heavy runs only with CHAOS_HEAVY=1 (infra/chaos/run.sh --heavy)"
    );
    run_suite(Plan {
        comments: 100_000,
        rate: 500,
        rooms: 16,
        viewers_per_room_per_node: 1,
    })
    .await;
}

async fn run_suite(plan: Plan) {
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("danmaku-chaos-")
        .tempdir()
        .expect("scratch dir");

    // Backends.
    let topic = format!("chaos-{}", std::process::id());
    let mut kafka = tokio::task::block_in_place(|| MockKafka::start(&topic, 6));
    let mut redis = tokio::task::block_in_place(|| AofCluster::start(scratch.path(), 3));
    let common: Vec<(String, String)> = [
        (
            "DANMAKU_AUTH__SECRET",
            format!("chaos-{}", std::process::id()),
        ),
        ("DANMAKU_KAFKA__BROKERS", kafka.brokers.clone()),
        ("DANMAKU_KAFKA__TOPIC", topic.clone()),
        ("DANMAKU_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        ("DANMAKU_KAFKA__MESSAGE_TIMEOUT_MS", "3000".into()),
        ("DANMAKU_LIMITS__PUBLISH_TIMEOUT_MS", "4000".into()),
        ("DANMAKU_REDIS__CLUSTER", redis.urls().join(",")),
        ("DANMAKU_REDIS__NAMESPACE", "chaos".into()),
        ("DANMAKU_REDIS__RESPONSE_TIMEOUT_MS", "1000".into()),
        ("DANMAKU_LIVE__SLICE_MS", "1000".into()),
        // Short hot retention and slices of at most 5 s (adaptive slices
        // aim for 1,000 members, which at this rate would be a minute long):
        // the archiver has a batch to do every few seconds. The retention
        // still outlasts the 10 s partition with room to spare: a live node
        // cut off from Redis catches up from the hot store when it is back,
        // and with a retention shorter than the cut (5 s until 2026-12-06)
        // what it missed is archived and gone from the hot store by then.
        ("DANMAKU_LIVE__HOT_RETENTION_MS", "20000".into()),
        ("DANMAKU_LIVE__SLICE_MAX_MS", "5000".into()),
        ("DANMAKU_ARCHIVE__POLL_MS", "200".into()),
        ("DANMAKU_ARCHIVE__LEASE_MS", "2000".into()),
        // The display budget leaves comments out of live frames on purpose;
        // the suite checks that every comment reaches every viewer.
        ("DANMAKU_LIVE__DISPLAY_BUDGET_PER_SEC", "1000000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    // Nodes: 2 ingest, 3 live, archive + replay-api.
    let mut ingest = Vec::new();
    for i in 0..2 {
        ingest.push(spawn_node(&node_env(&common, r#"["ingest"]"#, 1 + i)).await);
    }
    // Live node 2 runs as another uid when a partition can be made.
    let partition_unavailable = deploy::partition_unavailable();
    let live0 = spawn_node(&node_env(&common, r#"["live"]"#, 10)).await;
    let (live1, live1_uid) = if partition_unavailable.is_none() {
        let node = deploy::UidNode::start(&node_env(&common, r#"["live"]"#, 11)).await;
        wait_ready_url(&node.base_url, &node.log_path).await;
        (None, Some(node))
    } else {
        (
            Some(spawn_node(&node_env(&common, r#"["live"]"#, 11)).await),
            None,
        )
    };
    let mut live2 = spawn_node(&node_env(&common, r#"["live"]"#, 12)).await;
    let live_urls = [
        live0.base_url.clone(),
        live1
            .as_ref()
            .map(|a| a.base_url.clone())
            .or_else(|| live1_uid.as_ref().map(|n| n.base_url.clone()))
            .expect("live node 2"),
        live2.base_url.clone(),
    ];
    let mut archive = spawn_node(&node_env(&common, r#"["archive","replay-api"]"#, 20)).await;
    let token = ingest[0].token("chaos-svc", "service").await;
    let setup_secs = started.elapsed().as_secs_f64();

    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut viewers = Vec::new();
    for room in 0..plan.rooms {
        for node in 0..live_urls.len() {
            for _ in 0..plan.viewers_per_room_per_node {
                viewers.push(Mutex::new(Viewer {
                    room,
                    first_node: node,
                    node,
                    ..Viewer::default()
                }));
            }
        }
    }
    let sh = Arc::new(Shared {
        plan: plan.clone(),
        http: http.clone(),
        token: token.clone(),
        ingest: RwLock::new(ingest.iter().map(|a| Some(a.base_url.clone())).collect()),
        live: RwLock::new(live_urls.iter().cloned().map(Some).collect()),
        next_ingest: AtomicU64::new(0),
        acked: Mutex::new(HashMap::new()),
        viewers,
        stop_viewers: AtomicBool::new(false),
        faults_done: AtomicBool::new(false),
        sends_503: AtomicU64::new(0),
        sends_other: AtomicU64::new(0),
        sends_unreachable: AtomicU64::new(0),
        faults: Mutex::new(Vec::new()),
        archive_url: RwLock::new(archive.base_url.clone()),
        archive_samples: Mutex::new(Vec::new()),
    });
    let sampler = tokio::spawn(sample_archive(sh.clone()));

    // A VOD per room, open for the whole run.
    let mut vods = Vec::new();
    for room in 0..plan.rooms {
        let resp = http
            .post(archive.url(&format!("/v1/rooms/{}/sessions", room_name(room))))
            .bearer_auth(&token)
            .json(&json!({"latency_ms": 0}))
            .send()
            .await
            .expect("POST sessions");
        assert_eq!(resp.status().as_u16(), 201, "POST sessions");
        let body: Value = resp.json().await.unwrap();
        vods.push((
            body["vod"].as_str().unwrap().to_string(),
            body["started_at"].as_i64().unwrap(),
        ));
    }

    // Viewers, connected (hello) before anything is sent.
    let viewer_tasks: Vec<_> = (0..sh.viewers.len())
        .map(|v| tokio::spawn(viewer(sh.clone(), v)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sh
        .viewers
        .iter()
        .all(|v| v.lock().unwrap().cursor.is_some())
    {
        assert!(Instant::now() < deadline, "viewers did not all get hello");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: the writers joined their group and the path works end to end.
    assert!(
        sh.probe_all("warm-up", Duration::from_secs(60))
            .await
            .is_some(),
        "the warm-up comments did not reach every viewer within 60 s"
    );

    let load_started = now_ms();
    let load_task = tokio::spawn(load(sh.clone()));
    let heal_within = Duration::from_secs(120);
    let steady = Duration::from_secs(4);
    tokio::time::sleep(steady).await;

    // 1. A broker stopped for 5 s and started again.
    let injected = now_ms();
    tokio::task::block_in_place(|| kafka.broker_down(1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| kafka.broker_up(1));
    let repaired = now_ms();
    let healed = sh
        .probe_all("probe-broker", heal_within)
        .await
        .map(|_| now_ms());
    sh.record(Fault {
        name: "Kafka broker 1 stopped 5 s, started",
        injected_ms: injected,
        repaired_ms: Some(repaired),
        healed_ms: healed,
        note: "rd_kafka_mock_broker_set_down/up in the mock process".into(),
        live_path: true,
    });
    tokio::time::sleep(steady).await;

    // 2. A Redis master killed and restarted on its AOF.
    let injected = now_ms();
    tokio::task::block_in_place(|| {
        redis.kill(0);
        std::thread::sleep(Duration::from_secs(1));
        redis.start_node(0);
    });
    let repaired = now_ms();
    tokio::task::block_in_place(|| redis.wait_ok(Duration::from_secs(60)));
    let healed = sh
        .probe_all("probe-redis", heal_within)
        .await
        .map(|_| now_ms());
    sh.record(Fault {
        name: "Redis master 0 kill -9, restarted after 1 s (AOF always)",
        injected_ms: injected,
        repaired_ms: Some(repaired),
        healed_ms: healed,
        note: String::new(),
        live_path: true,
    });
    tokio::time::sleep(steady).await;

    // 3. A live node killed; its viewers resume by cursor on the others.
    let injected = now_ms();
    sh.live.write().unwrap()[2] = None;
    live2.kill9().await;
    let healed = sh
        .probe_all("probe-live", heal_within)
        .await
        .map(|_| now_ms());
    let moved = sh
        .viewers
        .iter()
        .filter(|v| v.lock().unwrap().moves > 0)
        .count();
    sh.record(Fault {
        name: "live node 3 kill -9 (not restarted)",
        injected_ms: injected,
        repaired_ms: None,
        healed_ms: healed,
        note: format!("{moved} viewers resumed by cursor on another live node"),
        live_path: true,
    });
    tokio::time::sleep(steady).await;

    // 4. The archiver: kill -9, then a crash in the middle of a batch, then
    // a clean restart (same data dir). Batches are short (tens of ms) and
    // come every few seconds, so an outside kill -9 lands between batches
    // nearly always; the crash inside a batch comes from the archiver's own
    // crash point (`DMK_ARCHIVE_CRASH_AT=after_first_file`, debug builds
    // only: it aborts after the ArchiveStore upsert and the first Parquet
    // file, before the batch is completed; abort, like kill -9, runs no
    // cleanup). The kill follows a finished batch, the one point of the
    // loop visible from outside; release builds have the kill alone.
    let batches_before = metric(&http, &archive, "danmaku_archive_batches_total").await;
    let watch_until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < watch_until
        && metric(&http, &archive, "danmaku_archive_batches_total").await == batches_before
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let injected = now_ms();
    archive.kill9().await;
    let crash_step = cfg!(debug_assertions).then_some("after_first_file");
    let mut crash_note = String::from("kill -9 right after a batch completed");
    if let Some(step) = crash_step {
        let took = crash_mid_batch(&archive, step).await;
        crash_note.push_str(&format!(
            ", started again with the crash point, which aborted its first batch at {step} \
             ({} ms after that start)",
            took.as_millis()
        ));
    }
    archive.restart().await;
    wait_ready(&archive).await;
    *sh.archive_url.write().unwrap() = archive.base_url.clone();
    let repaired = now_ms();
    let probes = sh.probe_all("probe-archive", heal_within).await;
    let mut healed = None;
    if let Some(probes) = probes {
        let deadline = Instant::now() + heal_within;
        'wait: loop {
            let mut all = true;
            for &(room, id) in &probes {
                let (vod, started_at) = &vods[room];
                let at = now_ms() - started_at;
                let ids = read_vod(
                    &http,
                    &archive.base_url,
                    vod,
                    (at - 60_000).max(0),
                    at + 60_000,
                )
                .await;
                all &= ids.contains(&id);
            }
            if all {
                healed = Some(now_ms());
                break 'wait;
            }
            if Instant::now() > deadline {
                break 'wait;
            }
            if let Some(&(t, rows, batches)) = sh.archive_samples.lock().unwrap().last() {
                eprintln!("chaos: waiting for the archiver: rows {rows}, batches {batches} at {t}");
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
    sh.record(Fault {
        name: "archiver (archive + replay-api) kill -9, crash mid-batch, restarted",
        injected_ms: injected,
        repaired_ms: Some(repaired),
        healed_ms: healed,
        note: format!(
            "{crash_note}; healed = a comment sent after the clean restart served by the replay range API"
        ),
        live_path: false,
    });
    tokio::time::sleep(steady).await;

    // 5. An ingest node killed; the senders use the other; then restarted.
    let injected = now_ms();
    sh.ingest.write().unwrap()[0] = None;
    ingest[0].kill9().await;
    let healed = sh
        .probe_all("probe-ingest", heal_within)
        .await
        .map(|_| now_ms());
    ingest[0].restart().await;
    wait_ready(&ingest[0]).await;
    sh.ingest.write().unwrap()[0] = Some(ingest[0].base_url.clone());
    sh.record(Fault {
        name: "ingest node 1 kill -9 (restarted after healing)",
        injected_ms: injected,
        repaired_ms: Some(now_ms()),
        healed_ms: healed,
        note: "sends in flight on it are unacknowledged; new sends go to ingest 2".into(),
        live_path: true,
    });
    tokio::time::sleep(steady).await;

    // 6. A partition between live node 2 and Redis.
    if partition_unavailable.is_none() {
        let injected = now_ms();
        let mut cut = deploy::Partition::cut(&redis.ports());
        tokio::time::sleep(Duration::from_secs(10)).await;
        cut.heal();
        let repaired = now_ms();
        let healed = sh
            .probe_all("probe-partition", heal_within)
            .await
            .map(|_| now_ms());
        sh.record(Fault {
            name: "partition live node 2 <-> Redis, 10 s",
            injected_ms: injected,
            repaired_ms: Some(repaired),
            healed_ms: healed,
            note: PARTITION_HOW.into(),
            live_path: true,
        });
    }
    sh.faults_done.store(true, Ordering::Relaxed);

    let sent_total = load_task.await.expect("load task");
    let load_ended = now_ms();

    // Every acknowledged comment reaches every viewer.
    let acked_by_room: Vec<HashSet<u64>> = {
        let acked = sh.acked.lock().unwrap();
        (0..plan.rooms)
            .map(|r| {
                acked
                    .iter()
                    .filter(|(_, a)| a.room == r)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .collect()
    };
    let acked_total: usize = acked_by_room.iter().map(HashSet::len).sum();
    // Until every viewer has everything, or nothing new arrived for 30 s
    // (a late comment is not a lost one; one that never comes is), at most
    // 10 minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut last_total, mut last_progress) = (0usize, Instant::now());
    let final_wait_started = Instant::now();
    loop {
        let done = sh.viewers.iter().all(|v| {
            let v = v.lock().unwrap();
            acked_by_room[v.room]
                .iter()
                .all(|id| v.seen.contains_key(id))
        });
        let total: usize = sh
            .viewers
            .iter()
            .map(|v| v.lock().unwrap().seen.len())
            .sum();
        if total != last_total {
            (last_total, last_progress) = (total, Instant::now());
        }
        if done || Instant::now() > deadline || last_progress.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let final_wait_secs = final_wait_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await; // late repeats would show now
    sh.stop_viewers.store(true, Ordering::Relaxed);
    for t in viewer_tasks {
        let _ = t.await;
    }

    // The VODs end; their comments in the replay range API.
    for (vod, _) in &vods {
        let resp = http
            .post(archive.url(&format!("/v1/vods/{vod}/end")))
            .bearer_auth(&token)
            .send()
            .await
            .expect("POST end");
        assert_eq!(resp.status().as_u16(), 200, "POST /v1/vods/{vod}/end");
    }
    let mut range: Vec<HashMap<u64, u32>> = vec![HashMap::new(); plan.rooms];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (room, (vod, _)) in vods.iter().enumerate() {
            let mut counts = HashMap::new();
            for id in read_vod(&http, &archive.base_url, vod, 0, 86_400_000).await {
                *counts.entry(id).or_insert(0u32) += 1;
            }
            range[room] = counts;
        }
        let complete =
            (0..plan.rooms).all(|r| acked_by_room[r].iter().all(|id| range[r].contains_key(id)));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // And in Parquet.
    let all_acked: HashSet<u64> = acked_by_room.iter().flatten().copied().collect();
    let mut parquet: HashMap<u64, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        parquet.clear();
        for row in read_parquet(&archive.data_dir) {
            if row.room.starts_with("chaos") {
                *parquet.entry(row.id).or_insert(0) += 1;
            }
        }
        if all_acked.iter().all(|id| parquet.contains_key(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    sampler.abort();
    let secs = metric_f64(
        &http,
        &archive.base_url,
        "danmaku_archive_batch_seconds_sum",
    )
    .await;
    let count = metric_at(
        &http,
        &archive.base_url,
        "danmaku_archive_batch_seconds_count",
    )
    .await;

    // How the live nodes still up caught up: notices found missing (a hole
    // before a notice) and resync retries, summed.
    let mut holes = 0;
    let mut resync_retries = 0;
    let live_up: Vec<String> = sh.live.read().unwrap().iter().flatten().cloned().collect();
    for base in &live_up {
        holes += metric_at(&http, base, "danmaku_live_notice_holes_total")
            .await
            .unwrap_or(0);
        resync_retries += metric_at(&http, base, "danmaku_live_resync_retries_total")
            .await
            .unwrap_or(0);
    }

    // The report.
    let faults = sh.faults.lock().unwrap();
    let during = |sent: i64| {
        faults.iter().any(|f| {
            f.live_path && sent >= f.injected_ms && sent <= f.healed_ms.unwrap_or(i64::MAX)
        })
    };
    let mut out = String::new();
    let w = &mut out;
    use std::fmt::Write as _;
    let _ = writeln!(w, "== chaos suite report ==");
    let _ = writeln!(
        w,
        "deployment: 2 ingest, 3 live, 1 archive+replay-api (embedded ArchiveStore), mock Kafka \
         (3 brokers, own process, 6 partitions), Redis Cluster (3 masters, AOF always); \
         {} rooms, {} viewers; setup {setup_secs:.1} s",
        plan.rooms,
        sh.viewers.len()
    );
    let _ = writeln!(
        w,
        "load: {sent_total} sends at {}/s over {:.1} s: {acked_total} acknowledged (incl. probes), \
         {} answered 503, {} other refusals, {} unreachable/unanswered",
        plan.rate,
        (load_ended - load_started) as f64 / 1000.0,
        sh.sends_503.load(Ordering::Relaxed),
        sh.sends_other.load(Ordering::Relaxed),
        sh.sends_unreachable.load(Ordering::Relaxed),
    );
    let _ = writeln!(w, "faults (heal = from injection until a comment sent afterwards reached every viewer of every room):");
    for f in faults.iter() {
        let _ = writeln!(
            w,
            "  - {}: held {} ms, healed after {} {}",
            f.name,
            f.repaired_ms.map(|r| r - f.injected_ms).unwrap_or(0),
            f.healed_ms
                .map(|h| format!("{} ms", h - f.injected_ms))
                .unwrap_or_else(|| "NEVER (within 120 s)".into()),
            if f.note.is_empty() {
                String::new()
            } else {
                format!("({})", f.note)
            }
        );
    }
    if let Some(why) = &partition_unavailable {
        let _ = writeln!(w, "  - partition live node <-> Redis: skipped: {why}");
    }
    let mut failures = Vec::new();
    let (mut v_lost, mut v_dup, mut v_extra, mut gaps, mut connects) = (0, 0, 0, 0, 0);
    let (mut lat_out, mut lat_in) = (Vec::new(), Vec::new());
    for (i, v) in sh.viewers.iter().enumerate() {
        let v = v.lock().unwrap();
        let (lost, dup, extra) = tally(&acked_by_room[v.room], &v.seen);
        if lost + dup > 0 {
            // Which ones: when they were sent, and whether the room's other
            // viewers got them.
            let acked = sh.acked.lock().unwrap();
            let mut missing: Vec<(i64, u64)> = acked_by_room[v.room]
                .iter()
                .filter(|id| !v.seen.contains_key(id))
                .map(|id| (acked[id].sent_ms, *id))
                .collect();
            missing.sort_unstable();
            let others = |id: u64| {
                sh.viewers
                    .iter()
                    .enumerate()
                    .filter(|(j, o)| *j != i && o.lock().unwrap().room == v.room)
                    .filter(|(_, o)| o.lock().unwrap().seen.contains_key(&id))
                    .count()
            };
            let shown: Vec<String> = missing
                .iter()
                .take(6)
                .map(|&(sent, id)| {
                    format!(
                        "{id} sent at +{:.1} s{} (got by {} other viewers of the room)",
                        (sent - load_started) as f64 / 1000.0,
                        if during(sent) { " during a fault" } else { "" },
                        others(id)
                    )
                })
                .collect();
            // The first lost item: the seq of the batch another viewer got it
            // in, and this viewer's batches around that seq.
            let mut around = String::new();
            if let Some(&(_, first)) = missing.first() {
                let at = sh
                    .viewers
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .find_map(|(_, o)| {
                        let o = o.lock().unwrap();
                        o.batches
                            .iter()
                            .find(|(_, ids)| ids.contains(&first))
                            .map(|(seq, _)| *seq)
                    });
                if let Some(at) = at {
                    let k = v.batches.partition_point(|(seq, _)| *seq < at);
                    let near: Vec<String> = v.batches
                        [k.saturating_sub(3)..(k + 3).min(v.batches.len())]
                        .iter()
                        .map(|(seq, ids)| format!("{seq}:{}", ids.len()))
                        .collect();
                    around = format!(
                        " [the first was in a batch up to seq {at} elsewhere; this viewer's batches (seq:items) around it: {}]",
                        near.join(" ")
                    );
                }
            }
            failures.push(format!(
                "viewer {i} (room {}, started on live {}, now on live {}, {} connections): \
                 {lost} lost, {dup} duplicated{around}; lost: {}",
                v.room,
                v.first_node + 1,
                v.node + 1,
                v.connects,
                shown.join("; ")
            ));
        }
        v_lost += lost;
        v_dup += dup;
        v_extra += extra;
        gaps += v.gaps;
        connects += v.connects;
        for &(sent, lat) in &v.latencies {
            if during(sent) {
                lat_in.push(lat);
            } else {
                lat_out.push(lat);
            }
        }
    }
    let _ = writeln!(
        w,
        "viewers: {} viewers x their room's acknowledged comments (summed over viewers): {v_lost} lost, {v_dup} duplicated, \
         {v_extra} unacknowledged that landed; {gaps} gap messages; {connects} connections",
        sh.viewers.len()
    );
    let (mut r_lost, mut r_dup, mut r_extra) = (0, 0, 0);
    for r in 0..plan.rooms {
        let (lost, dup, extra) = tally(&acked_by_room[r], &range[r]);
        if lost + dup > 0 {
            failures.push(format!(
                "range API, room {r} (vod {}): {lost} lost, {dup} duplicated",
                vods[r].0
            ));
        }
        r_lost += lost;
        r_dup += dup;
        r_extra += extra;
    }
    let _ = writeln!(
        w,
        "ArchiveStore (range API after the VODs ended): {} items: {r_lost} lost, {r_dup} duplicated, {r_extra} unacknowledged that landed",
        range.iter().map(|m| m.values().sum::<u32>()).sum::<u32>()
    );
    let (p_lost, p_dup, p_extra) = tally(&all_acked, &parquet);
    if p_lost + p_dup > 0 {
        failures.push(format!("Parquet: {p_lost} lost, {p_dup} duplicated"));
    }
    let _ = writeln!(
        w,
        "Parquet: {} rows: {p_lost} lost, {p_dup} duplicated, {p_extra} unacknowledged that landed",
        parquet.values().sum::<u32>()
    );
    {
        let samples = sh.archive_samples.lock().unwrap();
        let line: Vec<String> = samples
            .iter()
            .step_by(5)
            .map(|(t, rows, batches)| format!("+{}s {rows}/{batches}", (t - load_started) / 1000))
            .collect();
        let _ = writeln!(
            w,
            "archive rows/batches every 5 s from the load's start: {}",
            line.join(", ")
        );
        if let (Some(secs), Some(count)) = (secs, count) {
            let _ = writeln!(
                w,
                "archive batches since the archiver's restart: {count}, {secs:.1} s in all",
            );
        }
    }
    let _ = writeln!(
        w,
        "live nodes still up ({}): {holes} notices after a hole (caught up from the SliceStore), {resync_retries} resync retries",
        live_up.len()
    );
    let _ = writeln!(w, "send->viewer p99 outside faults: {}", p99(lat_out));
    let _ = writeln!(
        w,
        "send->viewer p99 during faults (sent between injection and heal of a fault on the live path): {}",
        p99(lat_in)
    );
    let _ = writeln!(
        w,
        "final wait for the viewers {final_wait_secs:.1} s; total run time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(faults);
    if !failures.is_empty() {
        let _ = writeln!(out, "FAILED:\n{}", failures.join("\n"));
    }
    println!("{out}");
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos-report.txt");
    let _ = std::fs::write(&report, &out);

    for f in sh.faults.lock().unwrap().iter() {
        assert!(
            f.healed_ms.is_some(),
            "fault {:?} never healed\n{out}",
            f.name
        );
    }
    assert!(
        failures.is_empty(),
        "acknowledged comments lost or duplicated:\n{}\n{out}",
        failures.join("\n")
    );
    drop(ingest);
    drop(live0);
    drop(live1);
    drop(live1_uid);
    drop(live2);
    drop(archive);
    drop(redis);
    drop(kafka);
}

/// Runs the archive node's process (its data dir and environment) once more
/// with `DMK_ARCHIVE_CRASH_AT=step` and waits until it aborts inside its
/// first batch (debug builds of `danmaku` only); returns how long that took.
/// Started by hand rather than through the harness, which would take an
/// abort before `/healthz` answers for a failed start.
async fn crash_mid_batch(app: &TestApp, step: &str) -> Duration {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&app.log_path)
        .expect("the archive node's log");
    let mut cmd = tokio::process::Command::new(helpers::BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&app.data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DANMAKU_") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(app.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DMK_ARCHIVE_CRASH_AT", step)
        .env("RUST_LOG", "info");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .expect("start the archive node with its crash point");
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the archive node did not reach {step} within 120 s\n{}",
                app.log_tail(30)
            )
        })
        .expect("wait for the archive node");
    let log = std::fs::read_to_string(&app.log_path).unwrap_or_default();
    assert!(
        !status.success() && log.contains(&format!("DMK_ARCHIVE_CRASH_AT={step}: aborting")),
        "the archive node exited ({status}) without aborting at {step}\n{}",
        app.log_tail(30)
    );
    started.elapsed()
}

/// Samples the archive node's counters every second (for the report's
/// archive timeline) until aborted.
async fn sample_archive(sh: Arc<Shared>) {
    let (mut base_rows, mut base_batches, mut last) = (0u64, 0u64, (0u64, 0u64));
    loop {
        let url = sh.archive_url.read().unwrap().clone();
        let rows = metric_at(&sh.http, &url, "danmaku_archive_rows_total").await;
        let batches = metric_at(&sh.http, &url, "danmaku_archive_batches_total").await;
        if let (Some(rows), Some(batches)) = (rows, batches) {
            if rows < last.0 || batches < last.1 {
                // A restarted node counts from 0.
                base_rows += last.0;
                base_batches += last.1;
            }
            last = (rows, batches);
            sh.archive_samples.lock().unwrap().push((
                now_ms(),
                base_rows + rows,
                base_batches + batches,
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A counter's value (summed over its labels) on the /metrics of the node at
/// `base`; None when the node does not answer.
async fn metric_at(http: &reqwest::Client, base: &str, name: &str) -> Option<u64> {
    metric_f64(http, base, name).await.map(|v| v as u64)
}

/// [`metric_at`] as a float (for sums of seconds).
async fn metric_f64(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let resp = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let text = resp.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>(),
    )
}

/// A counter's value on `app`'s /metrics (0 when absent).
async fn metric(http: &reqwest::Client, app: &TestApp, name: &str) -> u64 {
    let Ok(resp) = http.get(app.url("/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
