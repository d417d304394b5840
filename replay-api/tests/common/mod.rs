//! Fixtures of the replay API's in-process tests: a node (embedded stores, the
//! router called with `oneshot`) whose ArchiveStore counts its reads, and a tiny
//! writer task standing in for the live role (Bus → SliceStore).
// Each test binary uses its own part of these.
#![allow(dead_code)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use danmaku_core::auth::Role;
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{
    ArchiveError, ArchiveStore, ArchivedComment, ArchivedDeletion, ReplayCache, SliceItem,
    VodVersion,
};
use danmaku_core::vod::Session;
use danmaku_replay_api::{router, Replay};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Counts the ArchiveStore reads the cache is meant to save, and the rows they
/// return; each segment read takes `slow_ms` longer.
pub struct Counting {
    pub inner: Arc<dyn ArchiveStore>,
    pub segment_reads: AtomicUsize,
    pub rows_read: AtomicUsize,
    pub slow_ms: AtomicU64,
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
    async fn set_video_url(&self, vod: &str, url: Option<&str>) -> Result<Session, ArchiveError> {
        self.inner.set_video_url(vod, url).await
    }
    async fn recent_sessions(&self, n: usize) -> Result<Vec<Session>, ArchiveError> {
        self.inner.recent_sessions(n).await
    }
    async fn open_sessions(&self, n: usize) -> Result<Vec<Session>, ArchiveError> {
        self.inner.open_sessions(n).await
    }
    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError> {
        self.inner.upsert_comments(rows).await
    }
    async fn read_segment(&self, vod: &str, n: u32) -> Result<Vec<ArchivedComment>, ArchiveError> {
        self.segment_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.slow_ms.load(Ordering::SeqCst))).await;
        let rows = self.inner.read_segment(vod, n).await?;
        self.rows_read.fetch_add(rows.len(), Ordering::SeqCst);
        Ok(rows)
    }
    async fn count(&self, vod: &str) -> Result<u64, ArchiveError> {
        self.inner.count(vod).await
    }
    async fn delete_comments(&self, d: &[ArchivedDeletion]) -> Result<u64, ArchiveError> {
        self.inner.delete_comments(d).await
    }
    async fn version(&self, vod: &str) -> Result<VodVersion, ArchiveError> {
        self.inner.version(vod).await
    }
    async fn segments(&self, vod: &str) -> Result<Vec<u32>, ArchiveError> {
        self.inner.segments(vod).await
    }
    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError> {
        self.inner.last_segment(vod).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

pub struct Node {
    pub app: Router,
    pub ctx: Context,
    pub replay: Arc<Replay>,
    pub store: Arc<Counting>,
    _dir: Option<tempfile::TempDir>,
    stop: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.data_dir = dir.to_path_buf();
    s.auth.secret.0 = "test-secret".into();
    s.limits.user_per_sec = 1000;
    s.limits.user_burst = 1000;
    s
}

/// The Bus → SliceStore step of the live writer, enough for VOD comments.
pub fn spawn_writer(ctx: Context, stop: CancellationToken) {
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

pub async fn node_with(
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
        rows_read: AtomicUsize::new(0),
        slow_ms: AtomicU64::new(30),
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
    let replay = Replay::new(ctx.clone(), ingest);
    let app = router(replay.clone());
    Node {
        app,
        ctx,
        replay,
        store,
        _dir: dir,
        stop,
    }
}

pub async fn node() -> Node {
    node_with(None, None, None, |_| {}).await
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Node {
    pub fn token(&self, user: &str, role: Role) -> String {
        self.ctx
            .signer
            .issue(user, None, role, danmaku_core::now_ms() / 1000, 3600)
    }

    pub async fn call(&self, req: Request<Body>) -> Resp {
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

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// A POST of `body` as it is (not necessarily JSON).
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: &str) -> Resp {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// A session of `room` started `ago_ms` ago, ended now if `end`.
    pub async fn session(&self, vod: &str, room: &str, ago_ms: i64, end: bool) -> Session {
        let now = danmaku_core::now_ms();
        let s = Session {
            vod: vod.into(),
            room: room.into(),
            started_at: now - ago_ms,
            ended_at: None,
            latency_ms: 0,
            video_url: None,
        };
        self.ctx.archive.create_session(&s).await.unwrap();
        if end {
            return self.ctx.archive.end_session(vod, now).await.unwrap();
        }
        s
    }

    /// Archived comments, as the archiver would store them.
    pub async fn archive(&self, vod: &str, rows: &[(u64, i64, &str, Kind, Mode)]) {
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
                    hidden: false,
                    deletes: None,
                },
            })
            .collect();
        self.ctx.archive.upsert_comments(&rows).await.unwrap();
    }

    /// The `segments` of `GET /v1/vods/{vod}`: (n, version).
    pub async fn segment_versions(&self, vod: &str) -> Vec<(u64, String)> {
        let r = self.get(&format!("/v1/vods/{vod}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["segments"]
            .as_array()
            .unwrap_or_else(|| panic!("no segments: {}", r.text))
            .iter()
            .map(|s| {
                (
                    s["n"].as_u64().unwrap(),
                    s["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The versioned URL of segment `n` as `GET /v1/vods/{vod}` lists it.
    pub async fn versioned(&self, vod: &str, n: u64) -> String {
        let (_, v) = self
            .segment_versions(vod)
            .await
            .into_iter()
            .find(|(m, _)| *m == n)
            .unwrap_or_else(|| panic!("segment {n} of {vod} not listed"));
        format!("/v1/vods/{vod}/segments/{n}?v={v}")
    }

    pub fn reads(&self) -> usize {
        self.store.segment_reads.load(Ordering::SeqCst)
    }
}

pub fn header(r: &Resp, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub fn plain(n: u64, offset: i64) -> (u64, i64, &'static str, Kind, Mode) {
    (n, offset, "plain", Kind::Comment, Mode::Scroll)
}
