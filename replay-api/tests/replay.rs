//! The replay API in-process (embedded stores, the router called with `oneshot`):
//! segments with ETag / 304 / Cache-Control, the single-flight cold load, VOD
//! comments and the invalidation they cause in both cache tiers, the Redis tier
//! shared by two nodes (and a dead Redis), and every player format with hostile
//! text. A tiny writer task stands in for the live role (Bus → SliceStore).

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use danmaku_core::auth::Role;
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use danmaku_core::memory::MemoryReplayCache;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{ArchiveError, ArchiveStore, ArchivedComment, ReplayCache, SliceItem};
use danmaku_core::vod::Session;
use danmaku_redis::testkit::RedisServer;
use danmaku_redis::{RedisReplayCache, TieredReplayCache};
use danmaku_replay_api::{router, Replay};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Counts the ArchiveStore reads the cache is meant to save.
struct Counting {
    inner: Arc<dyn ArchiveStore>,
    segment_reads: AtomicUsize,
    slow: Duration,
}

#[async_trait]
impl ArchiveStore for Counting {
    async fn create_session(&self, s: &Session) -> Result<(), ArchiveError> {
        self.inner.create_session(s).await
    }
    async fn end_session(&self, vod: &str, at: i64) -> Result<Session, ArchiveError> {
        self.inner.end_session(vod, at).await
    }
    async fn get_session(&self, vod: &str) -> Result<Option<Session>, ArchiveError> {
        self.inner.get_session(vod).await
    }
    async fn sessions_by_room(&self, room: &str, n: usize) -> Result<Vec<Session>, ArchiveError> {
        self.inner.sessions_by_room(room, n).await
    }
    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError> {
        self.inner.upsert_comments(rows).await
    }
    async fn read_segment(&self, vod: &str, n: u32) -> Result<Vec<ArchivedComment>, ArchiveError> {
        self.segment_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.slow).await;
        self.inner.read_segment(vod, n).await
    }
    async fn count(&self, vod: &str) -> Result<u64, ArchiveError> {
        self.inner.count(vod).await
    }
    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError> {
        self.inner.last_segment(vod).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

struct Node {
    app: Router,
    ctx: Context,
    store: Arc<Counting>,
    _dir: Option<tempfile::TempDir>,
    stop: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.data_dir = dir.to_path_buf();
    s.auth.secret.0 = "test-secret".into();
    s.limits.user_per_sec = 1000;
    s.limits.user_burst = 1000;
    s
}

/// The Bus → SliceStore step of the live writer, enough for VOD comments.
fn spawn_writer(ctx: Context, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut consumer = ctx.bus.consumer("test-writer").await.expect("consumer");
        while !stop.is_cancelled() {
            let records = consumer
                .poll(256, Duration::from_millis(50))
                .await
                .unwrap_or_default();
            let mut by_room: HashMap<String, Vec<SliceItem>> = HashMap::new();
            for r in &records {
                let d = Danmaku::decode_bytes(&r.payload).expect("decodes");
                by_room.entry(r.room.clone()).or_default().push(SliceItem {
                    seq: r.position.seq(),
                    ts_ms: d.ts_ms,
                    data: r.payload.clone(),
                });
            }
            for (room, items) in by_room {
                ctx.slices
                    .append(&room, 10_000, 300_000, &items)
                    .await
                    .expect("append");
            }
            let upto: Vec<_> = records.iter().map(|r| r.position).collect();
            if !upto.is_empty() {
                consumer.commit(&upto).await.expect("commit");
            }
        }
    });
}

async fn node_with(
    dir: Option<tempfile::TempDir>,
    base: Option<&Context>,
    cache: Option<Arc<dyn ReplayCache>>,
    tune: impl FnOnce(&mut Settings),
) -> Node {
    let (ctx, dir) = match base {
        Some(b) => (b.clone(), dir),
        None => {
            let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
            let mut s = settings(dir.path());
            tune(&mut s);
            (danmaku_embedded::testkit::context(s), Some(dir))
        }
    };
    let mut ctx = ctx;
    let store = Arc::new(Counting {
        inner: ctx.archive.clone(),
        segment_reads: AtomicUsize::new(0),
        slow: Duration::from_millis(30),
    });
    ctx.archive = store.clone();
    if let Some(c) = cache {
        ctx.cache = c;
    }
    let stop = CancellationToken::new();
    if base.is_none() {
        spawn_writer(ctx.clone(), stop.clone());
    }
    let ingest = danmaku_ingest::Ingest::new(ctx.clone()).expect("ingest");
    let app = router(Replay::new(ctx.clone(), ingest));
    Node {
        app,
        ctx,
        store,
        _dir: dir,
        stop,
    }
}

async fn node() -> Node {
    node_with(None, None, None, |_| {}).await
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
    json: Value,
}

impl Node {
    fn token(&self, user: &str, role: Role) -> String {
        self.ctx
            .signer
            .issue(user, None, role, danmaku_core::now_ms() / 1000, 3600)
    }

    async fn call(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// A session of `room` started `ago_ms` ago, ended now if `end`.
    async fn session(&self, vod: &str, room: &str, ago_ms: i64, end: bool) -> Session {
        let now = danmaku_core::now_ms();
        let s = Session {
            vod: vod.into(),
            room: room.into(),
            started_at: now - ago_ms,
            ended_at: None,
            latency_ms: 0,
        };
        self.ctx.archive.create_session(&s).await.unwrap();
        if end {
            return self.ctx.archive.end_session(vod, now).await.unwrap();
        }
        s
    }

    /// Archived comments, as the archiver would store them.
    async fn archive(&self, vod: &str, rows: &[(u64, i64, &str, Kind, Mode)]) {
        let rows: Vec<ArchivedComment> = rows
            .iter()
            .map(|(id, offset, text, kind, mode)| ArchivedComment {
                vod: vod.into(),
                offset_ms: *offset,
                item: Danmaku {
                    id: *id,
                    room: "r".into(),
                    user: format!("user{}", id % 3),
                    name: if id.is_multiple_of(2) {
                        "<Name & \"Co\">".into()
                    } else {
                        String::new()
                    },
                    ts_ms: 1_764_000_000_000 + offset,
                    kind: *kind as i32,
                    mode: *mode as i32,
                    color: 0x123456,
                    text: text.to_string(),
                    stream_pos_ms: None,
                    vod: Some(vod.into()),
                    offset_ms: Some(*offset),
                },
            })
            .collect();
        self.ctx.archive.upsert_comments(&rows).await.unwrap();
    }

    fn reads(&self) -> usize {
        self.store.segment_reads.load(Ordering::SeqCst)
    }
}

fn header(r: &Resp, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn plain(n: u64, offset: i64) -> (u64, i64, &'static str, Kind, Mode) {
    (n, offset, "plain", Kind::Comment, Mode::Scroll)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_reads_the_store_once_and_hits_cost_nothing() {
    let node = node().await;
    node.session("stampede", "r", 600_000, true).await;
    let rows: Vec<_> = (1..=200).map(|i| plain(i, i as i64 * 1000)).collect();
    node.archive("stampede", &rows).await;
    let node = Arc::new(node);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.get("/v1/vods/stampede/segments/0", &[]).await
        }));
    }
    let mut etags = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["items"].as_array().unwrap().len(), 200);
        etags.insert(header(&r, "etag"));
    }
    assert_eq!(etags.len(), 1, "one body, one ETag");
    assert_eq!(node.reads(), 1, "one ArchiveStore read under the stampede");
    for _ in 0..20 {
        node.get(
            "/v1/vods/stampede/segments/0",
            &[("accept-encoding", "gzip")],
        )
        .await;
    }
    assert_eq!(node.reads(), 1, "hits do not read the store");
    // Segments beyond the recording are empty without a store read.
    let far = node.get("/v1/vods/stampede/segments/99", &[]).await;
    assert_eq!(far.status, 200);
    assert_eq!(far.json["items"], json!([]));
    assert_eq!(node.reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_conditional_and_immutable_once_ended() {
    let node = node().await;
    node.session("seg", "r", 60_000, false).await;
    node.archive("seg", &[plain(1, 1_000), plain(2, 2_000)])
        .await;
    let live = node.get("/v1/vods/seg/segments/0", &[]).await;
    assert_eq!(live.status, 200);
    assert_eq!(header(&live, "cache-control"), "public, max-age=5");
    let etag = header(&live, "etag");
    assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
    let again = node
        .get("/v1/vods/seg/segments/0", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.text.is_empty());

    node.post(
        "/v1/vods/seg/end",
        Some(&node.token("svc", Role::Service)),
        json!({}),
    )
    .await;
    let ended = node.get("/v1/vods/seg/segments/0", &[]).await;
    assert_eq!(
        header(&ended, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&ended, "etag"), etag, "same items, same ETag");
    let gz = node
        .get("/v1/vods/seg/segments/0", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    assert_eq!(header(&gz, "vary"), "Accept-Encoding");
    assert_eq!(header(&gz, "etag"), etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_period_delays_immutable() {
    let node = node_with(None, None, None, |s| s.replay.settle_secs = 3600).await;
    node.session("settle", "r", 60_000, true).await;
    let r = node.get("/v1/vods/settle/segments/0", &[]).await;
    assert_eq!(header(&r, "cache-control"), "public, max-age=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vod_comment_invalidates_its_segment_and_changes_the_etag() {
    let node = node().await;
    node.session("post", "room-p", 600_000, true).await;
    node.archive("post", &[plain(1, 1_000), plain(2, 400_000)])
        .await;
    let before = node.get("/v1/vods/post/segments/0", &[]).await;
    let old_etag = header(&before, "etag");
    assert_eq!(before.json["items"].as_array().unwrap().len(), 1);
    let seg1 = node.get("/v1/vods/post/segments/1", &[]).await;
    let reads = node.reads();
    let old_key = "seg:v1:post:0:2:E:6000".to_string();
    assert!(node.ctx.cache.get(&old_key).await.is_some(), "key layout");

    let viewer = node.token("vera", Role::Viewer);
    let posted = node
        .post(
            "/v1/vods/post/danmaku",
            Some(&viewer),
            json!({"text": "<b>late</b> & 'fun' 🎉", "offset_ms": 5_000, "mode": "top"}),
        )
        .await;
    assert_eq!(posted.status, 202, "{}", posted.text);
    let id = posted.json["id"].as_str().unwrap().to_string();

    // Both tiers lost the old key; the very next request serves the comment.
    assert!(node.ctx.cache.get(&old_key).await.is_none());
    let after = node.get("/v1/vods/post/segments/0", &[]).await;
    let items = after.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", after.text);
    let mine = items.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(mine["offset_ms"], 5_000);
    assert_eq!(mine["vod"], "post");
    assert_eq!(mine["user"], "vera");
    assert_eq!(mine["mode"], "top");
    assert_eq!(mine["text"], "<b>late</b> & 'fun' 🎉");
    let new_etag = header(&after, "etag");
    assert_ne!(new_etag, old_etag);
    assert_eq!(
        header(&after, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let stale = node
        .get("/v1/vods/post/segments/0", &[("if-none-match", &old_etag)])
        .await;
    assert_eq!(stale.status, 200, "the old ETag no longer matches");
    assert!(node.reads() > reads);
    // Another segment's bytes (and ETag) are unchanged.
    let seg1_after = node.get("/v1/vods/post/segments/1", &[]).await;
    assert_eq!(header(&seg1_after, "etag"), header(&seg1, "etag"));
    // The VOD's count and the other formats see it too.
    let info = node.get("/v1/vods/post", &[]).await;
    assert_eq!(info.json["count"], 3);
    let xml = node.get("/v1/vods/post/bilibili.xml", &[]).await;
    assert!(xml.text.contains(&format!(",{id}\">")), "{}", xml.text);
    // The archiver's later upsert of the same comment changes nothing.
    let row = node.ctx.archive.read_segment("post", 0).await.unwrap();
    node.ctx.archive.upsert_comments(&row).await.unwrap();
    assert_eq!(node.ctx.archive.count("post").await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vod_comments_are_validated_like_live_ones() {
    let node = node().await;
    node.session("val", "room-v", 60_000, true).await;
    node.session("open", "room-o", 60_000, false).await;
    let viewer = node.token("vic", Role::Viewer);
    let cases: Vec<(Option<&str>, &str, Value, u16, &str)> = vec![
        (
            None,
            "val",
            json!({"text": "x", "offset_ms": 1}),
            401,
            "unauthorized",
        ),
        (
            Some("forged"),
            "val",
            json!({"text": "x", "offset_ms": 1}),
            401,
            "unauthorized",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x"}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": -1}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": "5"}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 120_000}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "open",
            json!({"text": "x", "offset_ms": 3_600_000}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "a\u{1}b", "offset_ms": 1}),
            400,
            "invalid_text",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "", "offset_ms": 1}),
            400,
            "text_empty",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "字".repeat(101), "offset_ms": 1}),
            400,
            "text_too_long",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 1, "mode": "sideways"}),
            400,
            "invalid_mode",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 1, "kind": "gift"}),
            403,
            "forbidden",
        ),
        (
            Some(&viewer),
            "nope",
            json!({"text": "x", "offset_ms": 1}),
            404,
            "not_found",
        ),
        (
            Some(&viewer),
            "bad.vod",
            json!({"text": "x", "offset_ms": 1}),
            400,
            "invalid_vod",
        ),
        (Some(&viewer), "val", json!([1]), 400, "invalid_json"),
    ];
    for (token, vod, body, status, code) in cases {
        let r = node
            .post(&format!("/v1/vods/{vod}/danmaku"), token, body.clone())
            .await;
        assert_eq!(
            (r.status.as_u16(), r.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{vod} {body}: {}",
            r.text
        );
    }
    // The longest allowed text, and an offset at the very end of the recording.
    let ok = node
        .post(
            "/v1/vods/val/danmaku",
            Some(&viewer),
            json!({"text": "字".repeat(100), "offset_ms": 60_000}),
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_read_hostile_text_safely() {
    let node = node().await;
    node.session("fmt", "room-f", 900_000, true).await;
    let hostile = [
        "<script>alert(1)</script>",
        "\"double\" 'single'",
        "a & b &amp; &lt; &#x41;",
        "]]> <!-- --> <![CDATA[",
        "emoji 🎉👨‍👩‍👧 好耶",
        "</d><d p=\"0,1,25,0,0,0,x,1\">x",
    ];
    let longest = "字".repeat(100);
    let mut rows: Vec<(u64, i64, &str, Kind, Mode)> = hostile
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mode = [Mode::Scroll, Mode::Top, Mode::Bottom][i % 3];
            (i as u64 + 1, i as i64 * 1_234 + 7, *t, Kind::Comment, mode)
        })
        .collect();
    rows.push((100, 400_001, longest.as_str(), Kind::Gift, Mode::Bottom));
    node.archive("fmt", &rows).await;

    // Bilibili XML.
    let xml = node.get("/v1/vods/fmt/bilibili.xml", &[]).await;
    assert_eq!(xml.status, 200);
    assert!(header(&xml, "content-type").starts_with("text/xml"));
    assert!(xml
        .text
        .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><d p=\""));
    assert!(xml.text.ends_with("</d></i>"));
    assert_eq!(xml.text.matches("<d p=\"").count(), rows.len());
    assert!(!xml.text.contains("<script"));
    assert!(xml.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(xml.text.contains("&amp;amp;"));
    assert!(xml.text.contains("<d p=\"400.001,4,25,1193046,"));
    assert!(xml.text.contains(&longest));
    let etag = header(&xml, "etag");
    let again = node
        .get("/v1/vods/fmt/bilibili.xml", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);

    // DPlayer.
    let dp = node.get("/dplayer/v3/?id=fmt", &[]).await;
    assert_eq!(dp.json["code"], 0, "{}", dp.text);
    let data = dp.json["data"].as_array().unwrap();
    assert_eq!(data.len(), rows.len());
    for e in data {
        for field in [&e[3], &e[4]] {
            let s = field.as_str().unwrap();
            assert!(!s.contains(['<', '>', '"', '\'']), "{s}");
        }
    }
    assert_eq!(data[0][1], 0);
    assert_eq!(data[1][1], 1);
    assert_eq!(data[2][1], 2);
    assert_eq!(data[0][4], "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;");
    assert_eq!(
        data[1][3], "&lt;Name &amp; &quot;Co&quot;&gt;",
        "names are escaped"
    );
    assert_eq!(data[0][3], "user1", "no name: the user id");
    let capped = node.get("/dplayer/v3/?id=fmt&max=2", &[]).await;
    let capped = capped.json["data"].as_array().unwrap();
    assert_eq!(capped.len(), 2);
    assert!(
        capped.iter().any(|e| e[4] == longest.as_str()),
        "gifts first under max"
    );
    let missing = node.get("/dplayer/v3/?id=nope", &[]).await;
    assert_eq!(missing.status, 200);
    assert_eq!(missing.json["code"], 1);
    assert_eq!(missing.json["error"], "not_found");
    let bad = node.get("/dplayer/v3/?id=fmt&max=lots", &[]).await;
    assert_eq!(bad.json["code"], 1);

    // Native JSON keeps the text verbatim.
    let seg = node.get("/v1/vods/fmt/segments/0", &[]).await;
    let texts: Vec<&str> = seg.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, hostile.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dplayer_posts() {
    let node = node().await;
    node.session("dpp", "room-d", 30_000, true).await;
    let token = node.token("dora", Role::Viewer);
    let r = node
        .post(
            "/dplayer/v3/",
            None,
            json!({"token": token, "id": "dpp", "author": "someone else", "time": 12.3456,
                   "text": "<i>hi</i>", "color": "#ff0000", "type": 1}),
        )
        .await;
    assert_eq!(r.json["code"], 0, "{}", r.text);
    assert_eq!(r.json["data"]["author"], "dora");
    assert_eq!(r.json["data"]["time"], 12.346);
    // Past the end of the recording (the video file may be longer): clamped.
    let r = node
        .post(
            "/dplayer/v3",
            Some(&token),
            json!({"id": "dpp", "time": 99_999, "text": "late", "color": 255, "type": "bottom"}),
        )
        .await;
    assert_eq!(r.json["code"], 0, "{}", r.text);
    assert_eq!(r.json["data"]["time"], 30.0);
    let data = node.get("/dplayer/v3/?id=dpp", &[]).await;
    let data = data.json["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(
        data[0],
        json!([12.346, 1, 0xFF0000, "dora", "&lt;i&gt;hi&lt;&#x2f;i&gt;"])
    );
    assert_eq!(data[1], json!([30.0, 2, 255, "dora", "late"]));
    for (body, code) in [
        (
            json!({"token": "forged", "id": "dpp", "time": 1, "text": "x"}),
            "unauthorized",
        ),
        (
            json!({"token": token, "id": "dpp", "time": -1, "text": "x"}),
            "invalid_offset",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x\u{7}"}),
            "invalid_text",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x", "color": "#zzz"}),
            "invalid_color",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x", "type": 9}),
            "invalid_mode",
        ),
        (
            json!({"token": token, "id": "none", "time": 1, "text": "x"}),
            "not_found",
        ),
        (
            json!({"token": token, "time": 1, "text": "x"}),
            "invalid_vod",
        ),
    ] {
        let r = node.post("/dplayer/v3/", None, body.clone()).await;
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(r.json["code"], 1, "{body}: {}", r.text);
        assert!(r.json["msg"].is_string());
        assert_eq!(r.json["error"], code, "{body}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_tier_is_shared_by_nodes_and_optional() {
    let mut redis = RedisServer::start();
    let prefix = format!("it{}:", rand_suffix());
    let remote = RedisReplayCache::connect(&redis.url(), &prefix, Duration::from_millis(300))
        .await
        .unwrap();
    let tier = |remote: RedisReplayCache| -> Arc<dyn ReplayCache> {
        Arc::new(TieredReplayCache::new(
            MemoryReplayCache::new(1 << 20),
            remote,
        ))
    };
    let a = node_with(None, None, Some(tier(remote.clone())), |s| {
        s.replay.meta_ttl_ms = 200
    })
    .await;
    // Node b shares a's stores and the Redis, with its own in-process tier.
    let b = node_with(None, Some(&a.ctx), Some(tier(remote.clone())), |_| {}).await;
    a.session("shared", "room-s", 600_000, true).await;
    a.archive("shared", &[plain(1, 1_000), plain(2, 2_000)])
        .await;
    let first = a.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(a.reads(), 1);
    let from_redis = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(b.reads(), 0, "b's local miss was a Redis hit");
    assert_eq!(from_redis.text, first.text);
    assert_eq!(header(&from_redis, "etag"), header(&first, "etag"));

    // A comment posted through a is served by b once b's view expires.
    let t = a.token("pat", Role::Viewer);
    let posted = a
        .post(
            "/v1/vods/shared/danmaku",
            Some(&t),
            json!({"text": "via a", "offset_ms": 3_000}),
        )
        .await;
    assert_eq!(posted.status, 202, "{}", posted.text);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let seen = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(
        seen.json["items"].as_array().unwrap().len(),
        3,
        "{}",
        seen.text
    );

    // Redis dies: requests still succeed, from the store.
    redis.kill();
    a.archive("shared", &[plain(9, 9_000)]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let without = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(without.status, 200);
    assert_eq!(without.json["items"].as_array().unwrap().len(), 4);
}

fn rand_suffix() -> u64 {
    (danmaku_core::now_ms() as u64) ^ ((std::process::id() as u64) << 20)
}
