//! Tests against real servers: a `redis-server` and a 3-master Redis Cluster started
//! on free loopback ports (or `DANMAKU_TEST_REDIS` / `DANMAKU_TEST_REDIS_CLUSTER`).

use super::*;
use crate::testkit::{RedisCluster, RedisServer};
use bytes::Bytes;
use danmaku_core::ports::{Notifier, NotifierEvent, SliceErrorKind, SliceItem, SliceStore};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

fn settings_single(url: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        namespace: format!("t{}", rand::random::<u32>()),
        response_timeout_ms: 1000,
        ..RedisSettings::default()
    }
}

fn settings_cluster(urls: &[String]) -> RedisSettings {
    RedisSettings {
        cluster: urls.join(","),
        namespace: format!("t{}", rand::random::<u32>()),
        response_timeout_ms: 1000,
        ..RedisSettings::default()
    }
}

async fn open(settings: &RedisSettings) -> (RedisSliceStore, RedisNotifier) {
    connect(settings)
        .await
        .expect("connect")
        .expect("redis configured")
}

fn item(seq: u64, ts: i64) -> SliceItem {
    SliceItem {
        seq,
        ts_ms: ts,
        data: Bytes::from(format!("c{seq}")),
    }
}

#[test]
fn members_roundtrip() {
    let i = SliceItem {
        seq: 42,
        ts_ms: -5,
        data: Bytes::from_static(b"\x00\xffdata"),
    };
    assert_eq!(
        store::decode_member(&store::encode_member(&i)),
        Some(i.clone())
    );
    assert_eq!(store::decode_member(b"short"), None);
}

/// The server (or cluster) the tests running at the same time share, started by
/// the first and stopped when the last one drops it. Sharing is safe: every test
/// has its own namespace (queues, batches) and random room names.
fn shared<T>(slot: &'static Mutex<Weak<T>>, start: impl FnOnce() -> T) -> Arc<T> {
    let mut held = slot.lock().expect("shared server lock");
    if let Some(running) = held.upgrade() {
        return running;
    }
    let started = Arc::new(start());
    *held = Arc::downgrade(&started);
    started
}

/// A `redis-server` shared by the conformance cases running at the same time.
pub(crate) fn shared_server() -> Arc<RedisServer> {
    static SLOT: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    shared(&SLOT, RedisServer::start)
}

/// A 3-master Redis Cluster shared by the conformance cases running at the same time.
pub(crate) fn shared_cluster() -> Arc<RedisCluster> {
    static SLOT: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    shared(&SLOT, || RedisCluster::start(3))
}

danmaku_core::slice_store_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    slice_store_on_redis,
    async {
        let server = shared_server();
        let (store, _) = open(&settings_single(&server.url())).await;
        (server, store)
    }
);

danmaku_core::slice_store_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    slice_store_on_a_redis_cluster(flavor = "multi_thread", worker_threads = 2),
    async {
        let cluster = shared_cluster();
        let (store, _) = open(&settings_cluster(&cluster.urls())).await;
        (cluster, store)
    }
);

/// A publishing node and a viewing node, each with its own connections.
async fn notifier_pair(settings: &RedisSettings) -> (Arc<RedisNotifier>, Arc<RedisNotifier>) {
    let (_, publisher) = open(settings).await;
    let (_, viewer) = open(settings).await;
    (Arc::new(publisher), Arc::new(viewer))
}

danmaku_core::notifier_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    notifier_on_redis_pubsub(flavor = "multi_thread", worker_threads = 2),
    async {
        let server = shared_server();
        let pair = notifier_pair(&settings_single(&server.url())).await;
        (server, pair)
    }
);

danmaku_core::notifier_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    notifier_on_redis_cluster_sharded_pubsub(flavor = "multi_thread", worker_threads = 2),
    async {
        let cluster = shared_cluster();
        let pair = notifier_pair(&settings_cluster(&cluster.urls())).await;
        (cluster, pair)
    }
);

/// Slice lengths change between appends and clocks go backwards: every item is
/// still read back once, in seq order, page after page.
#[tokio::test]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn cursor_reads_survive_changing_lengths_and_skewed_clocks() {
    let server = RedisServer::start();
    let (store, _) = open(&settings_single(&server.url())).await;
    let room = format!("skew{}", rand::random::<u32>());
    let base = 1_700_000_000_000i64;
    let mut seq = 0;
    let mut all = Vec::new();
    for (round, len) in [10_000i64, 1_000, 60_000, 2_000, 1_000].iter().enumerate() {
        let mut batch = Vec::new();
        for j in 0..40 {
            seq += 3;
            // Mostly forward, sometimes a second behind (another ingest node's clock).
            let ts = base + round as i64 * 15_000 + j * 250 - if j % 7 == 0 { 1_000 } else { 0 };
            batch.push(item(seq, ts));
        }
        let out = store.append(&room, *len, 600_000, &batch).await.unwrap();
        assert_eq!(out.added, batch.len());
        all.extend(batch);
    }
    for limit in [1usize, 7, 1000] {
        let mut after = 0;
        let mut got = Vec::new();
        loop {
            let page = store.read_after(&room, after, limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = last.seq;
            got.extend(page);
        }
        assert_eq!(got, all, "limit {limit}");
    }
    let sizes = store.largest_slices(1000).await.unwrap();
    let mine: Vec<_> = sizes.iter().filter(|s| s.slice.room == room).collect();
    assert_eq!(
        mine.iter().map(|s| s.members).sum::<u64>(),
        all.len() as u64
    );
    assert!(mine.iter().any(|s| s.slice.len_ms == 1_000));
    assert!(mine.iter().any(|s| s.slice.len_ms == 60_000));
}

/// An archiver that dies after opening a batch, and one that dies after claiming
/// it: the batch comes back after the lease with the same id, and everything is
/// archived once.
#[tokio::test]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn interrupted_claims_and_completions_are_finished_by_the_next_archiver() {
    let server = RedisServer::start();
    let (store, _) = open(&settings_single(&server.url())).await;
    let room = format!("crash{}", rand::random::<u32>());
    let base = 1_700_000_000_000i64;
    let items: Vec<_> = (1..=20).map(|s| item(s, base + s as i64 * 1000)).collect();
    store.append(&room, 10_000, 0, &items).await.unwrap();
    let lease = Duration::from_secs(10);
    let now = base + 40_000;

    // Dies after opening: a `claiming` record with the rooms, nothing moved.
    let mut c = store.conn.clone();
    let rooms = vec![room.clone()];
    let record = serde_json::json!({"state": "claiming", "rooms": rooms}).to_string();
    let keys = |s: &str| format!("dm:{{{}b}}:{s}", &store.ns[4..]);
    let id: u64 = ::redis::Script::new(scripts::BATCH_NEW)
        .key(keys("next"))
        .key(keys("leases"))
        .arg(keys("batch:"))
        .arg(now + 10_000)
        .arg(record)
        .invoke_async(&mut c)
        .await
        .unwrap();
    // Within the lease nobody else can take the rooms' slices: the batch is leased,
    // but the slices are still in the queue, so a concurrent claim takes them into
    // its own batch. That is fine: the interrupted batch then finds nothing.
    let redo = store
        .claim_batch(now + 10_001, 100, lease)
        .await
        .unwrap()
        .expect("the interrupted batch is redone");
    assert_eq!(redo.id, id, "same id");
    assert_eq!(redo.items.len(), 20);
    // Dies before completing: handed out again, same contents.
    let again = store
        .claim_batch(now + 30_000, 100, lease)
        .await
        .unwrap()
        .expect("handed out again");
    assert_eq!(again, redo);
    // Dies in the middle of completing: the lease is gone, the rooms not marked
    // archived yet; the next claim finishes that and never hands the batch out
    // again.
    let raw: Option<String> = ::redis::Script::new(scripts::BATCH_COMPLETE)
        .key(keys("leases"))
        .key(keys("gc"))
        .arg(keys("batch:"))
        .arg(id)
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert!(raw.is_some());
    assert!(store
        .claim_batch(now + 60_000, 100, lease)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.pending().await.unwrap(), 0);
    assert_eq!(store.archived_through(&room).await.unwrap(), 20);
    // Its slices stay readable until their retention (0 here) ends, then expire
    // with every key of the batch.
    assert_eq!(store.read_after(&room, 0, 100).await.unwrap(), items);
    assert_eq!(store.expire_archived(now + 60_000).await.unwrap(), 3);
    assert!(store.read_after(&room, 0, 100).await.unwrap().is_empty());
    let left: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("dm:{{{room}}}:[abc]:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "batch keys deleted: {left:?}");
    let record: bool = ::redis::cmd("EXISTS")
        .arg(format!("{}{id}", keys("batch:")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!record, "the batch record is gone");
    let kept: u64 = ::redis::cmd("ZCARD")
        .arg(keys("kept"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

/// A durable Redis (`appendonly yes`, fsync always) restarted in the middle of
/// appends keeps everything; appends during the outage fail (the writer retries)
/// and succeed once it is back, each item stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_durable_redis_restart_loses_nothing() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    server.assert_local();
    let (store, _) = open(&settings_single(&server.url())).await;
    let room = format!("dur{}", rand::random::<u32>());
    let base = danmaku_core::now_ms();
    let mut stored = Vec::new();
    for s in 1..=50u64 {
        if s == 25 {
            server.kill();
        }
        let it = item(s, base + s as i64);
        loop {
            match store
                .append(&room, 10_000, 600_000, std::slice::from_ref(&it))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.kind(), SliceErrorKind::Unavailable, "{e}");
                    if s == 25 && !store.ready().await {
                        server.restart();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        stored.push(it);
    }
    // Redelivery after the restart changes nothing.
    let out = store
        .append(&room, 10_000, 600_000, &stored[20..30])
        .await
        .unwrap();
    assert_eq!(out.added, 0);
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), stored);
    assert_eq!(store.last_seq(&room).await.unwrap(), 50);
}

/// Without persistence a restart empties Redis: the high-water mark goes with the
/// data, so redelivered items are stored again (once).
#[tokio::test]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn a_restart_without_persistence_takes_redeliveries_again() {
    let mut server = RedisServer::start();
    server.assert_local();
    let (store, _) = open(&settings_single(&server.url())).await;
    let room = format!("eph{}", rand::random::<u32>());
    let base = danmaku_core::now_ms();
    let items: Vec<_> = (1..=10).map(|s| item(s, base + s as i64)).collect();
    store.append(&room, 10_000, 600_000, &items).await.unwrap();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        match store.append(&room, 10_000, 600_000, &items[5..]).await {
            Ok(o) => break o,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(out.added, 5);
    assert_eq!(
        store.read_after(&room, 0, 100).await.unwrap(),
        items[5..].to_vec()
    );
    // The room is in the expiry queue again, so it will be archived.
    store.expedite_all().await.unwrap();
    let b = store
        .claim_batch(base, 10, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("due");
    assert_eq!(b.items.len(), 5);
}

/// The key walk finds keys the writer does not know about, with their sizes.
#[tokio::test]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn the_key_walk_finds_foreign_big_keys() {
    let server = RedisServer::start();
    let (store, _) = open(&settings_single(&server.url())).await;
    let mut c = store.conn.clone();
    let key = format!("foreign:{}", rand::random::<u32>());
    let mut cmd = ::redis::cmd("HSET");
    cmd.arg(&key);
    for i in 0..3000 {
        cmd.arg(i).arg("x".repeat(100));
    }
    cmd.query_async::<i64>(&mut c).await.unwrap();
    let mut cursor = String::new();
    let mut found = None;
    for _ in 0..100_000 {
        let page = store.scan_keys(&cursor, 50).await.unwrap();
        if let Some(k) = page.keys.into_iter().find(|k| k.key == key) {
            found = Some(k);
        }
        match page.next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    let k = found.expect("found");
    assert_eq!(k.members, 3000);
    assert!(k.bytes > 300_000, "{k:?}");
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::Receiver<NotifierEvent>,
    want: impl Fn(&NotifierEvent) -> bool,
) -> NotifierEvent {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => continue,
            _ => panic!("no matching notifier event within 15 s"),
        }
    }
}

/// After Redis comes back, the subscription is re-established and the room gets a
/// resync (the hub then catches up from the store), and notices flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn subscriptions_come_back_after_a_restart_with_a_resync() {
    let mut server = RedisServer::start();
    server.assert_local();
    let settings = settings_single(&server.url());
    let (_, publisher) = open(&settings).await;
    let (_, viewer) = open(&settings).await;
    let mut rx = viewer.take_receiver().unwrap();
    let room = format!("rs{}", rand::random::<u32>());
    viewer.subscribe(&room).await.unwrap();
    next_event(&mut rx, |e| matches!(e, NotifierEvent::Resync(_))).await;
    server.restart();
    next_event(
        &mut rx,
        |e| matches!(e, NotifierEvent::Resync(r) if *r == room),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.publish(&room, None, &[item(9, 1)]).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = next_event(&mut rx, |e| matches!(e, NotifierEvent::Notice(_))).await;
    assert!(matches!(ev, NotifierEvent::Notice(n) if n.items[0].seq == 9));
}

#[tokio::test]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn ready_follows_the_server() {
    let mut server = RedisServer::start();
    server.assert_local();
    let (store, _) = open(&settings_single(&server.url())).await;
    assert!(store.ready().await);
    server.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!store.ready().await);
}

#[test]
fn slices_are_assigned_in_order_and_never_backwards() {
    let items: Vec<SliceItem> = [
        (1, 500),
        (2, 9_999),
        (3, 10_000),
        (4, 9_000),
        (5, 25_500),
        (6, 100),
    ]
    .iter()
    .map(|&(s, t)| item(s, t))
    .collect();
    let refs: Vec<&SliceItem> = items.iter().collect();
    let (groups, head) = store::assign_slices("r", 0, None, 10_000, &refs);
    let layout: Vec<(i64, i64, Vec<u64>)> = groups
        .iter()
        .map(|g| {
            (
                g.slice.start_ms,
                g.slice.len_ms,
                g.items.iter().map(|i| i.seq).collect(),
            )
        })
        .collect();
    assert_eq!(
        layout,
        vec![
            (0, 10_000, vec![1, 2]),
            // 4 is a second late: it stays in the newest slice, never an older one.
            (10_000, 10_000, vec![3, 4]),
            (20_000, 10_000, vec![5, 6]),
        ]
    );
    assert_eq!(head.last, 6);
    // A shorter length later: aligned, but starting after the newest slice's end.
    let more = [item(7, 29_000), item(8, 30_500), item(6, 31_000)];
    let refs: Vec<&SliceItem> = more.iter().collect();
    let (groups, head2) = store::assign_slices("r", head.last, head.newest.as_ref(), 1_000, &refs);
    let layout: Vec<(i64, i64, Vec<u64>)> = groups
        .iter()
        .map(|g| {
            (
                g.slice.start_ms,
                g.slice.len_ms,
                g.items.iter().map(|i| i.seq).collect(),
            )
        })
        .collect();
    assert_eq!(
        layout,
        vec![(20_000, 10_000, vec![7]), (30_000, 1_000, vec![8])]
    );
    assert_eq!(head2.last, 8, "6 was a redelivery");
}

danmaku_core::presence_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    presence_on_redis,
    async {
        let server = shared_server();
        let p = crate::RedisPresence::connect(&settings_single(&server.url()))
            .expect("settings")
            .expect("redis.url set");
        (server, p)
    }
);

danmaku_core::presence_suite!(
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    presence_on_a_redis_cluster(flavor = "multi_thread", worker_threads = 2),
    async {
        let cluster = shared_cluster();
        let p = crate::RedisPresence::connect(&settings_cluster(&cluster.urls()))
            .expect("settings")
            .expect("redis.cluster set");
        (cluster, p)
    }
);
