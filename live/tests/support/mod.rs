//! What the live tests share: an in-process server over real sockets
//! ([`start`]), its send helpers, a tungstenite client ([`connect`],
//! [`collect`]) and a raw client that shows every frame ([`RawClient`],
//! [`client_frame`]).

#![allow(dead_code, unused_imports)] // each test file uses its own part of it

pub use axum::body::Body;
pub use axum::http::Request;
pub use danmaku_core::auth::{Claims, Role};
pub use danmaku_core::config::{Secret, Settings};
pub use danmaku_ingest::{Ingest, SendRequest, Target};
pub use danmaku_live::{frames, Live};
pub use futures::{SinkExt, StreamExt};
pub use serde_json::{json, Value};
pub use std::net::SocketAddr;
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::TcpStream;
pub use tokio_tungstenite::tungstenite::Message;
pub use tokio_util::sync::CancellationToken;
pub use tower::ServiceExt;

use async_trait::async_trait;
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, KeyScanPage, Notifier, NotifierEvent, NotifyError, SliceError,
    SliceItem, SliceStat, SliceStore,
};
pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct Server {
    pub addr: SocketAddr,
    pub live: Arc<Live>,
    pub ingest: Arc<Ingest>,
    pub stop: CancellationToken,
    pub _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Server {
    start_with(tweak, |ctx| ctx).await
}

/// [`start`] with the server's adapters changed by `wrap` (a SliceStore double).
pub async fn start_with(
    tweak: impl FnOnce(&mut Settings),
    wrap: impl FnOnce(danmaku_core::context::Context) -> danmaku_core::context::Context,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::default();
    s.server.data_dir = dir.path().to_path_buf();
    s.server.demo = false;
    s.auth.secret = Secret("test-secret".into());
    s.limits.user_per_sec = 100_000;
    s.limits.user_burst = 100_000;
    s.limits.room_per_sec = 100_000;
    s.limits.room_burst = 100_000;
    s.live.flush_ms = 5;
    s.live.display_budget_per_sec = 1_000_000;
    tweak(&mut s);
    let ctx = wrap(danmaku_embedded::testkit::context(s));
    let ingest = Ingest::new(ctx.clone()).unwrap();
    let stop = CancellationToken::new();
    let live = Live::new(ctx.clone(), ingest.clone(), stop.clone());
    let app = danmaku_live::router(live.clone()).merge(danmaku_ingest::router(ingest.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(danmaku_core::serve::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    tokio::spawn(
        live.clone()
            .run_background(stop.clone(), Duration::from_secs(1)),
    );
    Server {
        addr,
        live,
        ingest,
        stop,
        _dir: dir,
    }
}

impl Server {
    /// The claims of a token of this server's (built by its signer, so they
    /// carry whatever fields a real token does).
    pub fn claims(&self, user: &str, role: Role) -> Claims {
        let signer = &self.live.ctx.signer;
        let token = signer.issue(user, None, role, danmaku_core::now_ms() / 1000, 3600);
        signer.verify(&token).expect("a token of our own")
    }

    pub async fn send(&self, user: &str, role: Role, room: &str, body: Value) -> u64 {
        let req: SendRequest = serde_json::from_value(body).unwrap();
        self.ingest
            .submit(
                &self.claims(user, role),
                Target::Live { room: room.into() },
                req,
            )
            .await
            .unwrap()
    }

    pub async fn send_many(&self, room: &str, n: usize, text_len: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let futs = chunk.iter().map(|i| {
                let text = format!("{i:05}-{}", "x".repeat(text_len.saturating_sub(6)));
                self.send("pub", Role::Service, room, json!({ "text": text }))
            });
            ids.extend(futures::future::join_all(futs).await);
        }
        ids
    }

    pub fn url(&self, room: &str, query: &str) -> String {
        format!("ws://{}/v1/rooms/{room}/ws{query}", self.addr)
    }

    pub fn token(&self, user: &str) -> String {
        self.live.ctx.signer.issue(
            user,
            None,
            Role::Viewer,
            danmaku_core::now_ms() / 1000,
            3600,
        )
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub async fn connect(url: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_json(&mut ws).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    (ws, hello)
}

pub async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                // Online counts come when viewers change; these tests follow items.
                if v["type"] != "online" {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads batches until `want` items arrived (or 10 s passed); returns item ids
/// and the last cursor.
pub async fn collect(ws: &mut Ws, want: usize) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.len() < want && Instant::now() < deadline {
        let Some(m) = next_json(ws).await else { break };
        if m["type"] == "batch" {
            cursor = m["cursor"].as_str().unwrap().to_string();
            ids.extend(item_ids(&m));
        }
    }
    (ids, cursor)
}

pub fn strs(ids: &[u64]) -> Vec<String> {
    ids.iter().map(u64::to_string).collect()
}

/// The ids of a batch's items.
pub fn item_ids(batch: &Value) -> Vec<String> {
    batch["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// A server whose sockets to clients hold little (4 KiB send buffers), frames
/// flushed at once, writes allowed to block for 20 s, and a room queue of `queue`
/// frames: what a client that stops reading runs into.
pub async fn start_small_buffers(queue: usize) -> Server {
    start(|s| {
        s.live.ws_queue = queue;
        s.live.flush_ms = 0;
        s.live.ws_send_buffer_bytes = 4096;
        s.live.write_timeout_ms = 20_000;
    })
    .await
}

impl Server {
    /// `bursts` bursts of 10 comments of 90 characters into `room`, one after the
    /// other (many separate frames), then 300 ms for them to go out.
    pub async fn send_bursts(&self, room: &str, bursts: usize) -> Vec<u64> {
        let mut sent = Vec::new();
        for _ in 0..bursts {
            sent.extend(self.send_many(room, 10, 90).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        sent
    }
}

/// A minimal client that offers permessage-deflate and inflates what it gets.
pub struct RawClient {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    pub deflate: bool,
}

impl RawClient {
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        offer_deflate: bool,
        rcvbuf: Option<u32>,
    ) -> Self {
        Self::connect_with(addr, path, offer_deflate, rcvbuf, &[]).await
    }

    /// Connects, writing `pipelined` (client frames) right behind the handshake
    /// request, in the same write.
    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        offer_deflate: bool,
        rcvbuf: Option<u32>,
        pipelined: &[u8],
    ) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let ext = if offer_deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        let mut out = req.into_bytes();
        out.extend_from_slice(pipelined);
        stream.write_all(&out).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut tmp = [0u8; 1024];
            let n = stream.read(&mut tmp).await.unwrap();
            assert!(n > 0, "handshake closed");
            buf.extend_from_slice(&tmp[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "accept key");
        let deflate = head.contains("permessage-deflate");
        assert_eq!(
            deflate, offer_deflate,
            "deflate negotiated iff offered: {head}"
        );
        buf.drain(..head_end);
        Self {
            stream,
            buf,
            deflate,
        }
    }

    /// Next message: (opcode, payload inflated if compressed).
    pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                    let payload: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    let payload = if b0 & 0x40 != 0 {
                        assert!(self.deflate, "compressed frame without deflate");
                        frames::inflate_message(&payload, 1 << 24).unwrap()
                    } else {
                        payload
                    };
                    return Some((b0 & 0x0f, payload));
                }
            }
            let mut tmp = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut tmp))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub async fn next_json(&mut self) -> Option<Value> {
        loop {
            let (op, p) = self.next().await?;
            match op {
                1 => {
                    let v: Value = serde_json::from_slice(&p).unwrap();
                    if v["type"] != "online" {
                        return Some(v);
                    }
                }
                8 => return None,
                _ => continue,
            }
        }
    }
}

/// A masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A SliceStore that has dropped every item up to a seq (as an expired hot
/// retention does), over the embedded one.
pub struct Forgetful {
    pub inner: Arc<dyn SliceStore>,
    pub through: Arc<AtomicU64>,
}

#[async_trait]
impl SliceStore for Forgetful {
    async fn append_at(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
        now_ms: Option<i64>,
    ) -> Result<AppendOutcome, SliceError> {
        self.inner
            .append_at(room, slice_len_ms, hot_retention_ms, items, now_ms)
            .await
    }
    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError> {
        let through = self.through.load(Ordering::SeqCst);
        self.inner.read_after(room, after.max(through), limit).await
    }
    async fn expired_through(&self, room: &str) -> Result<u64, SliceError> {
        let through = self.through.load(Ordering::SeqCst);
        Ok(self.inner.expired_through(room).await?.max(through))
    }
    async fn last_seq(&self, room: &str) -> Result<u64, SliceError> {
        self.inner.last_seq(room).await
    }
    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError> {
        self.inner.expedite(room, up_to_ms).await
    }
    async fn expedite_all(&self) -> Result<(), SliceError> {
        self.inner.expedite_all().await
    }
    async fn claim_batch(
        &self,
        now_ms: i64,
        max_slices: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError> {
        self.inner.claim_batch(now_ms, max_slices, lease).await
    }
    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError> {
        self.inner.complete_batch(batch_id).await
    }
    async fn pending(&self) -> Result<u64, SliceError> {
        self.inner.pending().await
    }
    async fn largest_slices(&self, limit: usize) -> Result<Vec<SliceStat>, SliceError> {
        self.inner.largest_slices(limit).await
    }
    async fn scan_keys(&self, cursor: &str, count: usize) -> Result<KeyScanPage, SliceError> {
        self.inner.scan_keys(cursor, count).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

/// A Notifier that drops what is published while `deaf` is set (notices lost
/// on their way to this node).
pub struct Deaf {
    pub inner: Arc<dyn Notifier>,
    pub deaf: Arc<AtomicBool>,
}

#[async_trait]
impl Notifier for Deaf {
    async fn publish(
        &self,
        room: &str,
        prev: Option<u64>,
        items: &[SliceItem],
    ) -> Result<(), NotifyError> {
        if self.deaf.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.publish(room, prev, items).await
    }
    async fn subscribe(&self, room: &str) -> Result<(), NotifyError> {
        self.inner.subscribe(room).await
    }
    async fn unsubscribe(&self, room: &str) -> Result<(), NotifyError> {
        self.inner.unsubscribe(room).await
    }
    fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<NotifierEvent>> {
        self.inner.take_receiver()
    }
}

/// A server whose SliceStore can drop items ([`Forgetful`]) and whose
/// notices can be lost ([`Deaf`]): a live node cut off for a while.
pub struct Lossy {
    pub srv: Server,
    pub through: Arc<AtomicU64>,
    pub deaf: Arc<AtomicBool>,
}

/// Starts a [`Lossy`] server with default test settings.
pub async fn start_lossy() -> Lossy {
    start_lossy_with(|_| {}).await
}

/// Starts a [`Lossy`] server with `tweak` applied to the test settings.
pub async fn start_lossy_with(tweak: impl FnOnce(&mut Settings)) -> Lossy {
    let through = Arc::new(AtomicU64::new(0));
    let deaf = Arc::new(AtomicBool::new(false));
    let (forget, mute) = (through.clone(), deaf.clone());
    let srv = start_with(tweak, move |ctx: danmaku_core::context::Context| {
        danmaku_core::context::Context {
            slices: Arc::new(Forgetful {
                inner: ctx.slices.clone(),
                through: forget,
            }),
            notifier: Arc::new(Deaf {
                inner: ctx.notifier.clone(),
                deaf: mute,
            }),
            ..ctx
        }
    })
    .await;
    Lossy { srv, through, deaf }
}

/// The comment id an item of the SliceStore carries.
pub fn stored_id(item: &SliceItem) -> String {
    danmaku_core::model::Danmaku::decode_bytes(&item.data)
        .unwrap()
        .id
        .to_string()
}

impl Lossy {
    /// Waits (up to 10 s) until the hub of `room` that a viewer opened knows
    /// where the room is (its catch-up after subscribing set its floor), so
    /// that comments sent from here on reach that viewer. A comment stored
    /// while that catch-up runs may be skipped by a viewer who joined just
    /// before (a race of the hub's first catch-up, not what these tests are
    /// about; see the closing note of 2026-12-06).
    pub async fn settled(&self, room: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .srv
            .live
            .hubs
            .find(room)
            .and_then(|h| h.floor())
            .is_none()
        {
            assert!(Instant::now() < deadline, "the hub of {room} never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stores `n` comments of `room` whose notices are lost on their way to
    /// this node, then has the store drop the first `expired` of them (as an
    /// expiry does) and the node catch up (a resync). Returns the ids of the
    /// comments still held, in seq order.
    pub async fn miss_and_expire(&self, room: &str, n: usize, expired: usize) -> Vec<String> {
        let store = &self.srv.live.ctx.slices;
        let before = store.read_after(room, 0, 10_000).await.unwrap().len();
        self.deaf.store(true, Ordering::SeqCst);
        self.srv.send_many(room, n, 20).await;
        let stored = self.stored(room, before + n).await;
        let missed = &stored[before..];
        self.through
            .store(missed[expired - 1].seq, Ordering::SeqCst);
        self.deaf.store(false, Ordering::SeqCst);
        self.srv.live.resync(room).await;
        missed[expired..].iter().map(stored_id).collect()
    }

    /// The items of `room` the store holds once it holds `n` (waiting up to
    /// 10 s for the writer), in seq order; fails if it holds another number.
    pub async fn stored(&self, room: &str, n: usize) -> Vec<SliceItem> {
        let store = self.srv.live.ctx.slices.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.read_after(room, 0, 10_000).await.unwrap().len() < n
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = store.read_after(room, 0, 10_000).await.unwrap();
        assert_eq!(stored.len(), n);
        stored
    }
}
