//! `GET /v1/rooms/{room}/ws`: the WebSocket upgrade and the task of each
//! connection. Our own WebSocket server side runs on the raw TCP stream after
//! hyper's upgrade, so that a room's frames (encoded once by the room) are
//! written to every connection as the same bytes. Per connection: hello, the
//! backlog after `?cursor=`, then live frames; `gap` and close for a client too
//! slow for the room's queue, or whose next items expired before the room's
//! hub had them ([`crate::room::Hub::skip_expired`]); pings from the room's tick with dead-peer
//! detection; `send` through the ingest checks, several in flight at once.
//!
//! The room's frames are written by the room's write loop ([`crate::room`]),
//! not by the connection's task: the task sleeps until the loop hands the socket
//! over ([`crate::socket`]: a full socket, a frame it must re-encode, `gap`),
//! the client sends something, or the server shuts down.
//!
//! Memory: an idle connection is one small task and its [`Subscriber`] (the
//! socket and a few words of state); buffers exist only while a message is
//! being read or a write is blocked, and the handshake's state lives in a boxed
//! future freed once the connection is live.
//!
//! Bounds: before switching protocols a connection pins its room's hub
//! (`live.max_rooms`) and a resume takes one of `live.max_concurrent_resumes`
//! (else `503`). A resume streams its backlog a page at a time, each written
//! before the next is read (a client that does not read holds one page), at
//! most `live.resume_max_bytes` (then `gap` and close); `gap` first when the
//! cursor is older than anything held. Protocol violations close with their
//! RFC 6455 code ([`ProtocolError::close_code`]).
//!
//! May import: every module below it ([`crate::room`], [`crate::socket`],
//! [`crate::frames`], [`crate::messages`]) and the role's state ([`Live`]);
//! nothing imports this module but the router.

use crate::frames::{self, opcode, Frame, ProtocolError, Reassembly};
use crate::messages::{self, RingItem};
use crate::room::HubPin;
use crate::socket::{now_secs, Subscriber, Take};
use crate::{parse_cursor, refused, Live};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_core::auth::{check_read_access, Claims};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_ingest::{check_room, SendRequest, Target};
use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    cursor: Option<String>,
    token: Option<String>,
}

/// Items per backlog message.
const BACKLOG_CHUNK: usize = 500;
/// Sends one connection may have in flight.
const MAX_INFLIGHT: usize = 64;

fn header_has(req: &Request, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Key` of a version-13 WebSocket handshake; `None` for a
/// request that is not one (answer [`not_a_handshake`]). The JSON WebSocket
/// and `/sub` alike.
pub(crate) fn handshake_key(req: &Request) -> Option<String> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let version_ok = req
        .headers()
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        == Some("13");
    match (
        key,
        version_ok,
        header_has(req, header::CONNECTION, "upgrade"),
        header_has(req, header::UPGRADE, "websocket"),
    ) {
        (Some(key), true, true, true) => Some(key),
        _ => None,
    }
}

/// The `426` answer to a request that is not a WebSocket handshake.
pub(crate) fn not_a_handshake() -> Response {
    (
        StatusCode::UPGRADE_REQUIRED,
        [(header::UPGRADE, "websocket")],
        axum::Json(messages::upgrade_required()),
    )
        .into_response()
}

/// `403 forbidden` when `live.allowed_origins` is set and the request's
/// `Origin` is not in it (a request without one is not a browser's).
pub(crate) fn check_origin(live: &Live, req: &Request) -> Result<(), ApiError> {
    let allowed = &live.ctx.settings.live.allowed_origins;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if !allowed.is_empty() && !allowed.iter().any(|a| a == o) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this origin may not open WebSockets here",
        )),
        _ => Ok(()),
    }
}

pub(crate) async fn upgrade(
    State(live): State<Arc<Live>>,
    Path(room): Path<String>,
    Query(q): Query<WsQuery>,
    mut req: Request,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let s = &live.ctx.settings;
    check_read_access(
        s.auth.require_token_to_read,
        &live.ctx.signer,
        req.headers(),
        q.token.as_deref(),
    )?;
    // A token, when given, must be valid: it is what allows sending.
    let claims = match danmaku_core::auth::bearer(req.headers(), q.token.as_deref()) {
        Some(_) => Some(danmaku_core::auth::authenticate(
            &live.ctx.signer,
            req.headers(),
            q.token.as_deref(),
        )?),
        None => None,
    };
    check_origin(&live, &req)?;
    let Some(key) = handshake_key(&req) else {
        return Ok(not_a_handshake());
    };
    let deflate = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(frames::offers_deflate);
    let over_limit = live.connections.load(Ordering::Relaxed) >= s.live.max_connections;
    // The bounds that answer 503 are checked before switching protocols: a
    // resume holds one of `live.max_concurrent_resumes` until its backlog is
    // out, and a connection pins its room's hub (`live.max_rooms`).
    let resume = match cursor {
        Some(_) if !over_limit => Some(
            live.resumes
                .clone()
                .try_acquire_owned()
                .map_err(|_| refused("resumes"))?,
        ),
        _ => None,
    };
    let (room, hub) = if over_limit {
        (Arc::from(room), None)
    } else {
        let (name, pin) = live.hubs.pin(&room).map_err(|_| refused("rooms"))?;
        (name, Some(pin))
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn = Conn {
        live: live.clone(),
        room,
        claims: claims.map(Arc::new),
        deflate,
    };
    tokio::spawn(connection(Box::new(Start {
        on_upgrade,
        conn,
        cursor,
        hub,
        resume,
    })));
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&frames::accept_key(&key)).expect("base64 is ascii"),
    );
    if deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(frames::DEFLATE_RESPONSE),
        );
    }
    Ok(resp)
}

/// What a connection starts from (boxed: the task keeps one pointer to it until
/// the connection is live, then nothing).
struct Start {
    on_upgrade: OnUpgrade,
    conn: Conn,
    cursor: Option<u64>,
    /// The room's hub, pinned; `None` for a connection over
    /// `live.max_connections` (it is refused with 1013).
    hub: Option<HubPin>,
    /// One of `live.max_concurrent_resumes`, held until the backlog is out.
    resume: Option<OwnedSemaphorePermit>,
}

/// The task of one WebSocket connection. Its size is what an idle connection
/// costs, so everything before the live loop (the upgrade, the hello and the
/// backlog) runs in a boxed future that is gone once the connection is live.
async fn connection(start: Box<Start>) {
    let Some(mut session) = Box::pin(open(start)).await else {
        return;
    };
    let end = session.serve().await;
    session.end(end).await;
}

/// Waits for the upgrade, refuses a connection over the limit, subscribes to the
/// room and sends hello and the backlog.
async fn open(start: Box<Start>) -> Option<Session> {
    let Start {
        on_upgrade,
        conn,
        cursor,
        hub,
        resume,
    } = *start;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return None;
        }
    };
    let (stream, leftover) = match danmaku_core::serve::into_tcp(upgraded) {
        // The leftover is a view of hyper's whole read buffer: copy what it holds.
        Ok((stream, read_buf)) => (stream, read_buf.to_vec()),
        Err(_) => {
            tracing::error!("websocket upgrade on an unexpected transport");
            return None;
        }
    };
    let Some(hub) = hub else {
        metrics::counter!("danmaku_ws_refused_total").increment(1);
        let _ = write_all(
            &stream,
            &frames::close_frame(1013, "too many connections; try again later"),
            Duration::from_secs(1),
        )
        .await;
        return None;
    };
    let _ = stream.set_nodelay(true);
    let sndbuf = conn.live.ctx.settings.live.ws_send_buffer_bytes;
    if sndbuf > 0 {
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf);
    }
    // Subscribe before reading any backlog, so nothing falls between the two;
    // the task owns the socket until hello and the backlog are out.
    let sub = Arc::new(Subscriber::new(
        stream,
        conn.deflate,
        conn.claims,
        hub.next_frame_index(),
        now_secs(),
    ));
    hub.hub().subscribe(sub.clone());
    conn.live.connections.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("danmaku_ws_connections").increment(1.0);
    let mut session = Session {
        live: conn.live,
        room: conn.room,
        hub,
        sub,
        inbound: None,
    };
    if !leftover.is_empty() {
        session.inbound().buf = leftover;
    }
    let greeted = session.greet(cursor).await;
    drop(resume);
    let end = match greeted {
        Ok(c) => {
            session.sub.state().last_sent = c;
            match session.catch_up().await {
                None => return Some(session),
                Some(end) => end,
            }
        }
        Err(end) => end,
    };
    session.end(end).await;
    None
}

/// Writes all of `buf`, waiting at most `timeout` whenever the socket is full.
async fn write_all(stream: &TcpStream, buf: &[u8], timeout: Duration) -> std::io::Result<()> {
    // Fast path without any future state: the socket usually takes it all at once.
    let written = match stream.try_write(buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == buf.len() {
        return Ok(());
    }
    // Slow path, boxed so that its timer does not make every idle connection's
    // future larger.
    Box::pin(write_rest(stream, &buf[written..], timeout)).await
}

async fn write_rest(stream: &TcpStream, mut buf: &[u8], timeout: Duration) -> std::io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::timeout(timeout, stream.writable())
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The close a protocol violation of the client's gets.
fn violation(e: ProtocolError) -> End {
    End::Close(e.close_code(), e.reason())
}

/// Why a connection ends.
enum End {
    /// Send this close frame, then close.
    Close(u16, &'static str),
    /// Just close (peer gone, or we already sent close).
    Quiet,
}

/// Who is connected where: what the handshake established.
struct Conn {
    live: Arc<Live>,
    /// The room's name, shared with its hub.
    room: Arc<str>,
    claims: Option<Arc<Claims>>,
    deflate: bool,
}

/// A live connection: its [`Subscriber`] (the socket and where the client is in
/// the room's frames), the room, and what the client is sending. This (plus the
/// small state of [`Session::serve`]) is all an idle connection holds: no read
/// buffer, no timer (the room loop pings), no write buffer (the room loop writes
/// the shared frames; the task's own writes box their slow path).
struct Session {
    live: Arc<Live>,
    /// The room's name, shared with its hub.
    room: Arc<str>,
    /// The room's hub, pinned while the connection lasts.
    hub: HubPin,
    sub: Arc<Subscriber>,
    /// What the client is sending; `None` (nothing allocated) while it is silent.
    inbound: Option<Box<Inbound>>,
}

/// The state of a client that sends: bytes read and not parsed yet, the message
/// being reassembled, and the replies of its sends in flight.
#[derive(Default)]
struct Inbound {
    buf: Vec<u8>,
    message: Vec<u8>,
    /// Where the client is in a fragmented message.
    reassembly: Reassembly,
    acks: Option<Acks>,
    inflight: usize,
}

impl Inbound {
    fn is_idle(&self) -> bool {
        self.buf.is_empty()
            && self.message.is_empty()
            && !self.reassembly.is_open()
            && self.acks.is_none()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.sub);
        self.live.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("danmaku_ws_connections").decrement(1.0);
    }
}

impl Session {
    /// Takes the socket from the room loop for good and sends the close frame
    /// `end` asks for.
    async fn end(&self, end: End) {
        self.sub.dead.store(true, Ordering::Relaxed);
        if let End::Close(code, reason) = end {
            if self.take_socket(Duration::from_secs(1)).await.is_ok() {
                let _ = write_all(
                    &self.sub.stream,
                    &frames::close_frame(code, reason),
                    Duration::from_secs(1),
                )
                .await;
            }
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.live.ctx.settings.live.write_timeout_ms.max(100))
    }

    /// Writes a text message (the task must own the socket).
    async fn send_text(&self, text: &str) -> std::io::Result<()> {
        write_all(
            &self.sub.stream,
            &frames::text_frame(text),
            self.write_timeout(),
        )
        .await
    }

    /// Takes the socket from the room loop: from here on only this task writes,
    /// starting with whatever the loop could not finish.
    async fn take_socket(&self, timeout: Duration) -> std::io::Result<()> {
        let pending = {
            let mut st = self.sub.state();
            st.task_owns = true;
            st.pending.take()
        };
        match pending {
            Some(p) => write_all(&self.sub.stream, &p, timeout).await,
            None => Ok(()),
        }
    }

    /// Writes a message of the task's own (a pong, a send's reply) between the
    /// room's frames, then gives the socket back.
    async fn write_own(&mut self, bytes: &[u8]) -> Option<End> {
        let t = self.write_timeout();
        if self.take_socket(t).await.is_err()
            || write_all(&self.sub.stream, bytes, t).await.is_err()
        {
            return Some(End::Quiet);
        }
        self.catch_up().await
    }

    /// The room loop woke this task: shutdown, a dead peer, or the socket is ours.
    async fn on_wake(&mut self) -> Option<End> {
        if self.hub.is_closing() {
            return Some(End::Close(1001, "server shutting down"));
        }
        if self.sub.dead.load(Ordering::Relaxed) {
            return Some(End::Quiet);
        }
        if self.sub.expired.load(Ordering::Acquire) {
            return Some(self.gap_after_expiry().await);
        }
        self.catch_up().await
    }

    /// Items after this connection's cursor expired before the room's hub had
    /// them: what the room loop left is written, then `gap` at the cursor
    /// reached, and close (a resume from it gets `gap` at the store's watermark).
    async fn gap_after_expiry(&self) -> End {
        if self.take_socket(self.write_timeout()).await.is_err() {
            return End::Quiet;
        }
        let last_sent = self.sub.state().last_sent;
        self.expired_gap(last_sent).await
    }

    /// `gap` at `last_sent` for a connection whose next items expired before
    /// the room's hub had them, then close.
    async fn expired_gap(&self, last_sent: u64) -> End {
        metrics::counter!("danmaku_ws_gaps_total").increment(1);
        let _ = self.send_text(&messages::gap(last_sent)).await;
        End::Close(
            1008,
            "items expired before they reached this node; resume from the gap cursor",
        )
    }

    /// While the task owns the socket: writes what the room loop left, then every
    /// frame of the ring this connection has not had (re-encoded where it
    /// already has some items, with its own withheld comments), and gives the
    /// socket back once it is level with the ring. `gap` if the ring moved past it.
    async fn catch_up(&mut self) -> Option<End> {
        let t = self.write_timeout();
        loop {
            let (pending, next, mut last_sent) = {
                let mut st = self.sub.state();
                if !st.task_owns {
                    return None;
                }
                (st.pending.take(), st.next, st.last_sent)
            };
            if let Some(p) = pending {
                if write_all(&self.sub.stream, &p, t).await.is_err() {
                    return Some(End::Quiet);
                }
            }
            let Some(frames) = self.hub.frames_from(next) else {
                return Some(Box::pin(self.gap(last_sent)).await);
            };
            // Checked after taking the frames: any frame of items after an
            // expired hole was published after the flag was set.
            if self.sub.expired.load(Ordering::Acquire) {
                return Some(Box::pin(self.expired_gap(last_sent)).await);
            }
            if frames.is_empty() {
                let mut st = self.sub.state();
                // Under the lock: a frame published after this check is the room
                // loop's to write (it sees `task_owns` false when it gets here).
                if st.pending.is_none() && self.hub.next_frame_index() <= st.next {
                    st.task_owns = false;
                    return None;
                }
                continue;
            }
            if let Err(e) = self.write_frames(&frames, &mut last_sent).await {
                tracing::debug!(error = %e, "websocket write failed");
                return Some(End::Quiet);
            }
            let mut st = self.sub.state();
            st.next = next + frames.len() as u64;
            st.last_sent = last_sent;
        }
    }

    /// Writes `frames` after `last_sent`: runs of frames the client takes as the
    /// room's shared bytes in one write (≤ 256 KiB: a client that fell behind
    /// catches up instead of falling further behind), the others re-encoded.
    async fn write_frames(
        &self,
        frames: &[Arc<Frame>],
        last_sent: &mut u64,
    ) -> std::io::Result<()> {
        let t = self.write_timeout();
        let mut i = 0;
        while i < frames.len() {
            let mut parts: Vec<Bytes> = Vec::new();
            let mut size = 0;
            while i < frames.len() && size < 256 * 1024 {
                let f = &frames[i];
                match self.sub.take(f, *last_sent) {
                    Take::Skip => {}
                    Take::Shared => {
                        let b = self.sub.bytes_of(f).clone();
                        size += b.len();
                        parts.push(b);
                        *last_sent = f.last_seq;
                    }
                    Take::Own => break,
                }
                i += 1;
            }
            match parts.len() {
                0 => {}
                1 => write_all(&self.sub.stream, &parts[0], t).await?,
                _ => write_all(&self.sub.stream, &parts.concat(), t).await?,
            }
            if let Some(f) = frames.get(i) {
                if self.sub.take(f, *last_sent) == Take::Own {
                    Box::pin(self.write_data_slow(f, last_sent)).await?;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn inbound(&mut self) -> &mut Inbound {
        self.inbound.get_or_insert_with(Default::default)
    }

    async fn serve(&mut self) -> End {
        loop {
            if let Some(end) = self.parse_inbound() {
                return end;
            }
            if let Some(pong) = self.take_pong() {
                if let Some(end) = Box::pin(self.write_own(&pong)).await {
                    return end;
                }
                continue;
            }
            let (reading, acking) = match &self.inbound {
                None => (true, false),
                Some(i) => (i.inflight < MAX_INFLIGHT, i.acks.is_some()),
            };
            let stream = &self.sub.stream;
            let inbound = &mut self.inbound;
            tokio::select! {
                _ = self.sub.wake.notified() => {
                    if let Some(end) = Box::pin(self.on_wake()).await {
                        return end;
                    }
                },
                // Polled readiness (not `readable()`): it takes over the socket's
                // read waker slot, which still holds hyper's finished connection
                // task after the upgrade and would keep that task's memory
                // allocated for as long as the client stays silent.
                ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)), if reading => {
                    if ready.is_err() {
                        return End::Quiet;
                    }
                    let mut tmp = [0u8; 4096];
                    match stream.try_read(&mut tmp) {
                        Ok(0) => return End::Quiet,
                        Ok(n) => self.inbound().buf.extend_from_slice(&tmp[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::Quiet,
                    }
                },
                reply = std::future::poll_fn(|cx| {
                    inbound.as_mut().and_then(|i| i.acks.as_mut()).expect("guarded").rx.poll_recv(cx)
                }), if acking => {
                    if let Some(reply) = reply {
                        if let Some(end) = Box::pin(self.write_own(&frames::text_frame(&reply))).await {
                            return end;
                        }
                    }
                    let i = self.inbound();
                    i.inflight = i.inflight.saturating_sub(1);
                    if i.inflight == 0 {
                        i.acks = None; // free the channel while idle
                    }
                },
            }
        }
    }

    /// Handles the complete frames read so far (sends are spawned, pongs queued
    /// for [`Session::take_pong`]); `Some` when the connection must end. Frees the
    /// inbound state once nothing is pending.
    fn parse_inbound(&mut self) -> Option<End> {
        let inb = self.inbound.as_mut()?;
        let max_msg = self.live.ctx.settings.limits.max_body_bytes;
        let deflate = self.sub.deflate;
        let mut heard = false;
        let mut result = None;
        while !inb.buf.is_empty() && result.is_none() {
            let (frame, used) = match frames::parse_client_frame(&inb.buf, max_msg) {
                Ok(None) => break,
                Err(e) => return Some(violation(e)),
                Ok(Some(f)) => f,
            };
            heard = true;
            match frame.opcode {
                opcode::PING => {
                    // Leave it at the front of the buffer: `take_pong` answers it.
                    break;
                }
                opcode::PONG => {}
                opcode::CLOSE => {
                    // Echo a valid code (RFC 6455 §5.5.1); a bad payload is a violation.
                    result = Some(match frames::parse_close(&frame.payload) {
                        Ok(code) => End::Close(code.unwrap_or(1000), ""),
                        Err(e) => violation(e),
                    });
                }
                _ => {
                    if let Err(e) = inb.reassembly.accept(&frame, deflate) {
                        return Some(violation(e));
                    }
                    inb.message.extend_from_slice(&frame.payload);
                    if inb.message.len() > max_msg {
                        return Some(violation(ProtocolError::TooBig));
                    }
                    if frame.fin {
                        let raw = std::mem::take(&mut inb.message);
                        let raw = if inb.reassembly.compressed() {
                            match frames::inflate_message(&raw, max_msg) {
                                Ok(r) => r,
                                Err(e) => return Some(violation(e)),
                            }
                        } else {
                            raw
                        };
                        let Ok(text) = String::from_utf8(raw) else {
                            return Some(violation(ProtocolError::InvalidData));
                        };
                        let acks = inb.acks.get_or_insert_with(|| {
                            let (tx, rx) = mpsc::channel(MAX_INFLIGHT);
                            Acks { tx, rx }
                        });
                        inb.inflight += 1;
                        let (live, room, claims, tx) = (
                            self.live.clone(),
                            self.room.clone(),
                            self.sub.claims.clone(),
                            acks.tx.clone(),
                        );
                        tokio::spawn(async move {
                            let reply =
                                handle_client_message(&live, &room, claims.as_deref(), &text).await;
                            let _ = tx.send(reply.to_string()).await;
                        });
                    }
                }
            }
            inb.buf.drain(..used);
        }
        if heard {
            self.sub.last_heard.store(now_secs(), Ordering::Relaxed);
        }
        if result.is_none() && inb.is_idle() {
            self.inbound = None; // an idle connection holds no buffer
        }
        result
    }

    /// The pong for a ping at the front of the inbound buffer, if there is one.
    fn take_pong(&mut self) -> Option<bytes::Bytes> {
        let max_msg = self.live.ctx.settings.limits.max_body_bytes;
        let inb = self.inbound.as_mut()?;
        match frames::parse_client_frame(&inb.buf, max_msg) {
            Ok(Some((frame, used))) if frame.opcode == opcode::PING => {
                inb.buf.drain(..used);
                Some(frames::encode_frame(opcode::PONG, &frame.payload, false))
            }
            _ => None,
        }
    }

    /// A client too slow for the room's queue: `gap` with its cursor (the last
    /// item it was sent), then close.
    async fn gap(&self, last_sent: u64) -> End {
        metrics::counter!("danmaku_ws_gaps_total").increment(1);
        tracing::debug!(room = &*self.room, "slow websocket client gets gap");
        let _ = self.send_text(&messages::gap(last_sent)).await;
        End::Close(1008, "too slow; resume from the gap cursor")
    }

    /// Sends hello and the backlog; returns the cursor the live frames continue from.
    async fn greet(&self, cursor: Option<u64>) -> Result<u64, End> {
        match cursor {
            Some(c) => {
                if self
                    .send_text(&messages::hello(&self.room, c))
                    .await
                    .is_err()
                {
                    return Err(End::Quiet);
                }
                self.backlog(c).await
            }
            None => {
                let live = &self.live;
                let head = live
                    .head(Some(&self.hub), &self.room)
                    .await
                    .unwrap_or_else(|_| self.hub.last_seq());
                let recent = self.hub.recent(
                    danmaku_core::now_ms(),
                    live.ctx.settings.live.recent_ms,
                    BACKLOG_CHUNK,
                );
                let start = recent.first().map_or(head, |i| i.seq - 1);
                if self
                    .send_text(&messages::hello(&self.room, start))
                    .await
                    .is_err()
                {
                    return Err(End::Quiet);
                }
                if recent.is_empty() {
                    return Ok(start);
                }
                let last = recent.last().map_or(start, |i| i.seq);
                let me = self.sub.claims.as_ref().map(|c| c.sub.as_str());
                let shown: Vec<RingItem> = recent
                    .into_iter()
                    .filter(|i| !i.hidden || me == Some(&*i.user))
                    .collect();
                if shown.iter().any(RingItem::is_shown)
                    && self
                        .send_text(&messages::batch(&shown, last, 0))
                        .await
                        .is_err()
                {
                    return Err(End::Quiet);
                }
                Ok(last)
            }
        }
    }

    /// The items after `cursor`, page by page (the ring's, else the
    /// SliceStore's), each page written before the next is read: a client that
    /// does not read holds one page here (plus its socket's buffer), never the
    /// whole backlog. `gap` first when the cursor is older than anything held;
    /// past `live.resume_max_bytes`, `gap` with the cursor reached and close.
    async fn backlog(&self, cursor: u64) -> Result<u64, End> {
        let live = &self.live;
        let budget = live.ctx.settings.live.resume_max_bytes;
        let mut sent = 0u64;
        let mut at = cursor;
        loop {
            let Ok(page) = live
                .page(Some(&self.hub), &self.room, at, BACKLOG_CHUNK)
                .await
            else {
                return Err(End::Close(1011, "backend unavailable"));
            };
            if let Some(from) = page.gap {
                if self.send_text(&messages::gap(from)).await.is_err() {
                    return Err(End::Quiet);
                }
                at = from;
            }
            let (Some(last), full) = (
                page.items.last().map(|i| i.seq),
                page.items.len() == BACKLOG_CHUNK,
            ) else {
                return Ok(at);
            };
            // A shadow-banned sender's comments go to that sender only; the
            // page's deletions follow its batch as a `delete` message.
            let me = self.sub.claims.as_ref().map(|c| c.sub.as_str());
            let shown: Vec<RingItem> = page
                .items
                .iter()
                .filter(|i| !i.hidden || me == Some(&*i.user))
                .cloned()
                .collect();
            let mut frame = Vec::new();
            if shown.iter().any(RingItem::is_shown) {
                frame = frames::text_frame(&messages::batch(&shown, last, 0)).to_vec();
            }
            if let Some(d) = messages::deletes_of(&page.items) {
                frame.extend_from_slice(&frames::text_frame(&d));
            }
            let frame = bytes::Bytes::from(frame);
            drop(page);
            let size = frame.len() as u64;
            if sent > 0 && sent.saturating_add(size) > budget {
                metrics::counter!("danmaku_ws_resume_over_budget_total").increment(1);
                return Err(Box::pin(self.gap_after_budget(at)).await);
            }
            live.hold_resume_bytes(frame.len() as isize);
            let written = write_all(&self.sub.stream, &frame, self.write_timeout()).await;
            live.hold_resume_bytes(-(frame.len() as isize));
            if written.is_err() {
                return Err(End::Quiet);
            }
            sent += size;
            at = last;
            if !full {
                return Ok(at);
            }
        }
    }

    /// The backlog is over the resume budget: `gap` at the cursor reached, close.
    async fn gap_after_budget(&self, at: u64) -> End {
        let _ = self.send_text(&messages::gap(at)).await;
        End::Close(
            1008,
            "backlog over the resume budget; resume from the gap cursor",
        )
    }

    /// A re-encoded remainder when the client already has part of the frame (right
    /// after a resume), plus its own comments the display budget held back.
    async fn write_data_slow(&self, f: &Frame, last_sent: &mut u64) -> std::io::Result<()> {
        if f.last_seq > *last_sent {
            if f.first_seq > *last_sent {
                let bytes = self.sub.bytes_of(f);
                write_all(&self.sub.stream, bytes, self.write_timeout()).await?;
            } else {
                let rest: Vec<RingItem> = f
                    .items
                    .iter()
                    .filter(|i| i.seq > *last_sent)
                    .cloned()
                    .collect();
                let text = messages::batch(&rest, f.last_seq, 0);
                self.send_text(&text).await?;
                if let Some(after) = &f.after {
                    self.send_text(std::str::from_utf8(after).unwrap_or_default())
                        .await?;
                }
            }
            *last_sent = f.last_seq;
        }
        if let Some(me) = &self.sub.claims {
            let mine: Vec<RingItem> = f
                .withheld
                .iter()
                .filter(|i| &*i.user == me.sub.as_str())
                .cloned()
                .collect();
            if !mine.is_empty() {
                self.send_text(&messages::batch(&mine, f.last_seq, 0))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Replies of a connection's sends in flight (allocated only while some are).
struct Acks {
    tx: mpsc::Sender<String>,
    rx: mpsc::Receiver<String>,
}

/// A client's message: its `type`, `ref` and the send fields.
struct ClientMessage {
    kind: String,
    reference: Option<serde_json::Value>,
    send: SendRequest,
}

async fn handle_client_message(
    live: &Live,
    room: &str,
    claims: Option<&Claims>,
    raw: &str,
) -> serde_json::Value {
    // Member by member, as the HTTP body is: each bad send field gets the code
    // of its field (a color of 1e400 is invalid_color, not invalid_json).
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidJson,
            "messages are JSON objects with a type",
        )
    };
    let mut obj = match danmaku_ingest::json::JsonObject::parse(raw) {
        Ok(o) => o,
        Err(_) => return error_reply(None, bad()),
    };
    let reference = obj.take("ref", ErrorCode::InvalidJson).ok().flatten();
    let kind = match obj.take("type", ErrorCode::InvalidJson) {
        Ok(Some(serde_json::Value::String(k))) => k,
        _ => return error_reply(reference, bad()),
    };
    let send = match SendRequest::from_object(&mut obj) {
        Ok(s) => s,
        Err(e) => return error_reply(reference, e),
    };
    let msg = ClientMessage {
        kind,
        reference,
        send,
    };
    let reference = msg.reference.clone();
    if msg.kind != "send" {
        return error_reply(
            reference,
            ApiError::new(ErrorCode::InvalidJson, "unknown message type"),
        );
    }
    let Some(claims) = claims else {
        return error_reply(
            reference,
            ApiError::new(
                ErrorCode::Unauthorized,
                "open the WebSocket with ?token= to send",
            ),
        );
    };
    if let Err(e) = claims.check_time(danmaku_core::now_ms() / 1000) {
        return error_reply(reference, e);
    }
    match live
        .ingest
        .submit(
            claims,
            Target::Live {
                room: room.to_string(),
            },
            msg.send,
        )
        .await
    {
        Ok(id) => messages::ack(reference, id),
        Err(e) => error_reply(reference, e),
    }
}

fn error_reply(reference: Option<serde_json::Value>, e: ApiError) -> serde_json::Value {
    metrics::counter!("danmaku_api_errors_total", "code" => e.code.as_str()).increment(1);
    messages::error(reference, &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of the future returned by `f` (without calling it).
    fn future_size<A, F: std::future::Future>(_f: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// One connection's task future is what an idle connection costs (with
    /// tokio's task header and the socket's registration): it must stay small.
    #[test]
    fn an_idle_connection_future_stays_small() {
        let n = future_size(connection);
        let session = std::mem::size_of::<Session>();
        let sub = std::mem::size_of::<Subscriber>();
        assert!(
            n <= 640,
            "connection future is {n} bytes (session {session} B, subscriber {sub} B)"
        );
    }
}
