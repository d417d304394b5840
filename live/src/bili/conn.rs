//! `GET /sub`: the WebSocket upgrade and the task of each `/sub` connection.
//!
//! The connection speaks WebSocket binary messages of Bilibili packets
//! ([`super::packet`]). Its life:
//!
//! 1. Upgrade (counted against `live.max_connections` with the JSON WebSocket
//!    from here on; over it the connection is closed with 1013).
//! 2. Authentication: the first packet must be operation 7 within 5 s
//!    (`AUTH_TIMEOUT`), else close 1008. Its JSON body names the room
//!    (`roomid`, a number or a string, validated like every room id), an
//!    optional token (`key`; required only with `auth.require_token_to_read`),
//!    `protover` 0/1/2/3 and our extension `cursor`. A bad token, or none where
//!    one is required, gets operation 8 `{"code":-101}` and close 1008; a bad
//!    room, protover or cursor `{"code":-400}`; a node at `live.max_rooms` or
//!    `live.max_concurrent_resumes` `{"code":-503}`.
//! 3. Operation 8 `{"code":0,"cursor":...}`, the cursor being where the
//!    connection's commands continue from. With a `cursor` in the auth body,
//!    the items after it are sent first (page by page, as the JSON WebSocket's
//!    resume: at most `live.resume_max_bytes`, then close 1008, the client
//!    resuming from the last cursor it received), then live. When the cursor is
//!    older than anything the node still holds, nothing of the past is sent:
//!    the reply says `"gap":true` and the connection starts live (its
//!    `cursor` is the room's head), so a client never mistakes a partial
//!    backlog for a complete one.
//! 4. Live: the room's write loop writes each batch's shared `/sub` frame
//!    ([`crate::frames::Frame::sub_wire`]) to the connection; this task wakes
//!    for what it must write itself (a frame only partly new to the client,
//!    its own comments withheld by the display budget, a heartbeat reply), as
//!    the JSON WebSocket's does ([`crate::socket`]). A client too slow for the
//!    room's frame queue is closed (1008); it resumes by cursor.
//!
//! Client packets after authentication: heartbeat (operation 2) is answered
//! with operation 3 (the online count, [`super::online_count`]) and a
//! `WATCHED_CHANGE` command; unknown operations, and a second auth, are
//! ignored (stock clients send nothing else; ignoring keeps future clients
//! working). A message that is not packets closes with 1002 (1009 over
//! `limits.max_body_bytes`); WebSocket pings are answered, and the room's
//! pings find dead peers as for the JSON WebSocket.
//!
//! May import: [`crate::room`], [`crate::socket`], [`crate::frames`],
//! [`crate::messages`], [`super::packet`], [`super::commands`] and [`Live`].

use super::packet::{self, Op, Packet, PacketError, Protover};
use crate::frames::{self, opcode, Frame};
use crate::messages::RingItem;
use crate::room::HubPin;
use crate::socket::{now_secs, Subscriber, Take};
use crate::Live;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_core::auth::Claims;
use danmaku_core::cursor::Cursor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The first packet (auth) must come within this time.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Items per backlog page of a resume.
const BACKLOG_CHUNK: usize = 500;

/// `GET /sub`: upgrades to a WebSocket (no extension is negotiated: batches
/// are compressed by the protocol itself) and hands the connection to its task.
pub(crate) async fn sub(State(live): State<Arc<Live>>, mut req: Request) -> Response {
    let Some(key) = crate::upgrade::handshake_key(&req) else {
        return crate::upgrade::not_a_handshake();
    };
    if let Err(e) = crate::upgrade::check_origin(&live, &req) {
        return e.into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match danmaku_core::serve::into_tcp(upgraded) {
                Ok((stream, leftover)) => connection(live, stream, leftover.to_vec()).await,
                Err(_) => tracing::error!("/sub upgrade on an unexpected transport"),
            },
            Err(e) => tracing::debug!(error = %e, "/sub upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&frames::accept_key(&key)).expect("base64 is ascii"),
    );
    resp
}

/// One open connection in `live.connections` (released on drop).
struct Counted(Arc<Live>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("danmaku_ws_connections").decrement(1.0);
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// Send this close frame, then close.
    Close(u16, &'static str),
    /// Just close.
    Quiet,
}

/// What a client's bytes amount to so far.
#[derive(Default)]
struct Inbound {
    buf: Vec<u8>,
    message: Vec<u8>,
    /// A fragmented data message is in progress.
    open: bool,
}

/// One complete thing the client sent.
enum Incoming {
    /// A complete data message (its packets).
    Message(Vec<u8>),
    /// A ping to answer with this pong.
    Pong(Bytes),
    /// A close frame: echo its code.
    Close(u16),
    /// A pong of ours answered (the client is alive).
    Heard,
}

impl Inbound {
    /// The next complete thing in the buffer, `Ok(None)` when more bytes are needed.
    fn next(&mut self, max: usize) -> Result<Option<Incoming>, End> {
        let (frame, used) = match frames::parse_client_frame(&self.buf, max) {
            Ok(None) => return Ok(None),
            Err(e) => return Err(End::Close(e.close_code(), e.reason())),
            Ok(Some(f)) => f,
        };
        self.buf.drain(..used);
        if frame.rsv1 {
            return Err(End::Close(1002, "no extension was negotiated"));
        }
        match frame.opcode {
            opcode::PING => Ok(Some(Incoming::Pong(frames::encode_frame(
                opcode::PONG,
                &frame.payload,
                false,
            )))),
            opcode::PONG => Ok(Some(Incoming::Heard)),
            opcode::CLOSE => match frames::parse_close(&frame.payload) {
                Ok(code) => Ok(Some(Incoming::Close(code.unwrap_or(1000)))),
                Err(e) => Err(End::Close(e.close_code(), e.reason())),
            },
            opcode::BINARY | opcode::TEXT | opcode::CONTINUATION => {
                let starts = frame.opcode != opcode::CONTINUATION;
                if starts == self.open {
                    return Err(End::Close(1002, "fragments out of order"));
                }
                self.message.extend_from_slice(&frame.payload);
                if self.message.len() > max {
                    return Err(End::Close(1009, "message too big"));
                }
                self.open = !frame.fin;
                if self.open {
                    return Ok(Some(Incoming::Heard));
                }
                Ok(Some(Incoming::Message(std::mem::take(&mut self.message))))
            }
            _ => Err(End::Close(1002, "protocol error")),
        }
    }
}

/// The close a packet error gets.
fn packet_end(e: PacketError) -> End {
    match e {
        PacketError::TooBig => End::Close(1009, "packet too big"),
        _ => End::Close(1002, "malformed packet"),
    }
}

/// Writes all of `buf`, waiting at most `timeout` whenever the socket is full.
async fn write_all(stream: &TcpStream, mut buf: &[u8], timeout: Duration) -> std::io::Result<()> {
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

/// Reads what the socket has into `into`; `Err` when the peer is gone.
async fn read_some(stream: &TcpStream, into: &mut Vec<u8>) -> Result<(), End> {
    // Polled readiness (not `readable()`), as the JSON WebSocket's task does: it
    // takes over the read waker that still holds hyper's finished task.
    std::future::poll_fn(|cx| stream.poll_read_ready(cx))
        .await
        .map_err(|_| End::Quiet)?;
    let mut tmp = [0u8; 4096];
    match stream.try_read(&mut tmp) {
        Ok(0) => Err(End::Quiet),
        Ok(n) => {
            into.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(_) => Err(End::Quiet),
    }
}

/// The auth body of stock clients, plus our `cursor`.
#[derive(Deserialize)]
struct AuthBody {
    roomid: Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    protover: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
}

/// What a valid auth asks for.
struct Auth {
    room: String,
    claims: Option<Claims>,
    protover: Protover,
    cursor: Option<u64>,
}

/// Checks an auth body: `Err` is the op-8 code to refuse it with.
fn check_auth(live: &Live, body: &[u8]) -> Result<Auth, i32> {
    let a: AuthBody = serde_json::from_slice(body).map_err(|_| -400)?;
    let room = match &a.roomid {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return Err(-400),
    };
    if !danmaku_core::model::valid_id(&room) {
        return Err(-400);
    }
    let protover = Protover::from_number(a.protover.unwrap_or(0)).ok_or(-400)?;
    let cursor = match a.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or(-400)?.0),
    };
    let now = danmaku_core::now_ms() / 1000;
    let claims = match a.key.as_deref() {
        None | Some("") => None,
        Some(token) => Some(live.ctx.signer.verify_at(token, now).map_err(|_| -101)?),
    };
    if claims.is_none() && live.ctx.settings.auth.require_token_to_read {
        return Err(-101);
    }
    Ok(Auth {
        room,
        claims,
        protover,
        cursor,
    })
}

/// The task of one `/sub` connection.
async fn connection(live: Arc<Live>, stream: TcpStream, leftover: Vec<u8>) {
    if live.connections.fetch_add(1, Ordering::Relaxed) >= live.ctx.settings.live.max_connections {
        live.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!("danmaku_ws_refused_total").increment(1);
        let close = frames::close_frame(1013, "too many connections; try again later");
        let _ = write_all(&stream, &close, Duration::from_secs(1)).await;
        return;
    }
    metrics::gauge!("danmaku_ws_connections").increment(1.0);
    let counted = Counted(live.clone());
    let _ = stream.set_nodelay(true);
    let mut inbound = Inbound {
        buf: leftover,
        ..Default::default()
    };
    let opened = tokio::time::timeout(
        AUTH_TIMEOUT,
        Box::pin(authenticate(&live, &stream, &mut inbound)),
    )
    .await;
    let (auth, rest) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(end)) => return close(&stream, end).await,
        Err(_) => {
            metrics::counter!("danmaku_sub_auth_total", "result" => "timeout").increment(1);
            return close(&stream, End::Close(1008, "authenticate within 5 s")).await;
        }
    };
    let auth = match auth {
        Ok(a) => a,
        Err(code) => {
            metrics::counter!("danmaku_sub_auth_total", "result" => "refused").increment(1);
            let reply = packet::auth_reply(&json!({"code": code}).to_string());
            let _ = write_all(
                &stream,
                &frames::encode_frame(opcode::BINARY, &reply, false),
                Duration::from_secs(1),
            )
            .await;
            return close(&stream, End::Close(1008, "authentication refused")).await;
        }
    };
    let Some(session) = Box::pin(open(live, stream, auth, counted, inbound, rest)).await else {
        return;
    };
    let mut session = session;
    let end = session.serve().await;
    session.end(end).await;
}

async fn close(stream: &TcpStream, end: End) {
    if let End::Close(code, reason) = end {
        let _ = write_all(
            stream,
            &frames::close_frame(code, reason),
            Duration::from_secs(1),
        )
        .await;
    }
}

/// Reads until the first data message; its first packet must be the auth.
/// Returns the auth (or the code refusing it) and the packets after it.
async fn authenticate(
    live: &Live,
    stream: &TcpStream,
    inbound: &mut Inbound,
) -> Result<(Result<Auth, i32>, Vec<Packet>), End> {
    let max = live.ctx.settings.limits.max_body_bytes;
    loop {
        while let Some(incoming) = inbound.next(max)? {
            match incoming {
                Incoming::Message(m) => {
                    let mut packets = packet::decode_message(&m, max).map_err(packet_end)?;
                    if packets.first().map(|p| p.op) != Some(Op::Auth) {
                        return Err(End::Close(1008, "the first packet must be auth (7)"));
                    }
                    let first = packets.remove(0);
                    return Ok((check_auth(live, &first.body), packets));
                }
                Incoming::Pong(p) => write_all(stream, &p, Duration::from_secs(1))
                    .await
                    .map_err(|_| End::Quiet)?,
                Incoming::Close(code) => return Err(End::Close(code, "")),
                Incoming::Heard => {}
            }
        }
        read_some(stream, &mut inbound.buf).await?;
    }
}

/// A live `/sub` connection.
struct Session {
    live: Arc<Live>,
    room: Arc<str>,
    hub: HubPin,
    sub: Arc<Subscriber>,
    protover: Protover,
    inbound: Inbound,
    _counted: Counted,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.sub);
    }
}

/// Subscribes an authenticated connection to its room, answers the auth and
/// sends the backlog of a resume; `None` when the connection ended there.
async fn open(
    live: Arc<Live>,
    stream: TcpStream,
    auth: Auth,
    counted: Counted,
    inbound: Inbound,
    rest: Vec<Packet>,
) -> Option<Session> {
    let refuse = |code: i32| packet::auth_reply(&json!({"code": code}).to_string());
    let Ok((room, hub)) = live.hubs.pin(&auth.room) else {
        crate::refused("rooms");
        let reply = frames::encode_frame(opcode::BINARY, &refuse(-503), false);
        let _ = write_all(&stream, &reply, Duration::from_secs(1)).await;
        close(
            &stream,
            End::Close(1013, "this node serves as many rooms as it may"),
        )
        .await;
        return None;
    };
    let resume = match auth.cursor {
        None => None,
        Some(_) => match live.resumes.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                crate::refused("resumes");
                let reply = frames::encode_frame(opcode::BINARY, &refuse(-503), false);
                let _ = write_all(&stream, &reply, Duration::from_secs(1)).await;
                close(
                    &stream,
                    End::Close(1013, "too many resumes; try again later"),
                )
                .await;
                return None;
            }
        },
    };
    let sndbuf = live.ctx.settings.live.ws_send_buffer_bytes;
    if sndbuf > 0 {
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf);
    }
    // Subscribed before anything is read, so nothing falls between the backlog
    // (or the head) and the live frames; the task owns the socket until then.
    let mut sub = Subscriber::new(
        stream,
        false,
        auth.claims.map(Arc::new),
        hub.next_frame_index(),
        now_secs(),
    );
    sub.sub = Some(auth.protover);
    let sub = Arc::new(sub);
    hub.hub().subscribe(sub.clone());
    metrics::counter!("danmaku_sub_auth_total", "result" => "ok").increment(1);
    let mut session = Session {
        live,
        room,
        hub,
        sub,
        protover: auth.protover,
        inbound,
        _counted: counted,
    };
    let greeted = session.greet(auth.cursor).await;
    drop(resume);
    let end = match greeted {
        Ok(at) => {
            session.sub.state().last_sent = at;
            match session.handle_packets(rest).await {
                Some(end) => end,
                None => match session.catch_up().await {
                    None => return Some(session),
                    Some(end) => end,
                },
            }
        }
        Err(end) => end,
    };
    session.end(end).await;
    None
}

impl Session {
    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.live.ctx.settings.live.write_timeout_ms.max(100))
    }

    fn binary(&self, packets: &[u8]) -> Bytes {
        frames::encode_frame(opcode::BINARY, packets, false)
    }

    /// Takes the socket from the room loop for good and closes.
    async fn end(&self, end: End) {
        self.sub.dead.store(true, Ordering::Relaxed);
        if let End::Close(..) = end {
            if self.take_socket(Duration::from_secs(1)).await.is_ok() {
                close(&self.sub.stream, end).await;
            }
        }
    }

    /// Takes the socket from the room loop, writing what it left first.
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

    /// Answers the auth and sends the backlog after `cursor`; returns the seq
    /// the live frames continue after.
    async fn greet(&self, cursor: Option<u64>) -> Result<u64, End> {
        let live = &self.live;
        let unavailable = || End::Close(1011, "backend unavailable");
        let first = match cursor {
            Some(c) => Some(
                live.page(Some(&self.hub), &self.room, c, BACKLOG_CHUNK)
                    .await
                    .map_err(|_| unavailable())?,
            ),
            None => None,
        };
        let gap = first.as_ref().is_some_and(|p| p.gap.is_some());
        let start = match (cursor, gap) {
            (Some(c), false) => c,
            _ => live
                .head(Some(&self.hub), &self.room)
                .await
                .unwrap_or_else(|_| self.hub.last_seq()),
        };
        let mut reply = json!({"code": 0, "cursor": Cursor(start).encode()});
        if gap {
            metrics::counter!("danmaku_sub_gaps_total").increment(1);
            reply["gap"] = Value::Bool(true);
        }
        let online = super::online_count(&self.hub);
        let mut packets = packet::auth_reply(&reply.to_string());
        packets.extend(packet::encode_batch(
            Protover::Plain,
            [super::commands::watched_change(online.into()).as_bytes()],
        ));
        write_all(
            &self.sub.stream,
            &self.binary(&packets),
            self.write_timeout(),
        )
        .await
        .map_err(|_| End::Quiet)?;
        match first {
            Some(page) if !gap => self.backlog(start, page).await,
            _ => Ok(start),
        }
    }

    /// The items after `cursor`, page by page, each written before the next is
    /// read; past `live.resume_max_bytes`, close (the client resumes from the
    /// last cursor it got).
    async fn backlog(&self, cursor: u64, first: crate::Page) -> Result<u64, End> {
        let live = &self.live;
        let budget = live.ctx.settings.live.resume_max_bytes;
        let mut sent = 0u64;
        let mut at = cursor;
        let mut page = first;
        loop {
            if page.gap.is_some() {
                // Dropped while this resume read: the client resumes again and
                // is told.
                return Err(End::Close(1008, "resume again from your last cursor"));
            }
            let (Some(last), full) = (
                page.items.last().map(|i| i.seq),
                page.items.len() == BACKLOG_CHUNK,
            ) else {
                return Ok(at);
            };
            let frame = frames::sub_frame(self.protover, &page.items);
            drop(page);
            let size = frame.len() as u64;
            if sent > 0 && sent.saturating_add(size) > budget {
                metrics::counter!("danmaku_ws_resume_over_budget_total").increment(1);
                return Err(End::Close(
                    1008,
                    "backlog over the resume budget; resume from your last cursor",
                ));
            }
            live.hold_resume_bytes(frame.len() as isize);
            let written = write_all(&self.sub.stream, &frame, self.write_timeout()).await;
            live.hold_resume_bytes(-(frame.len() as isize));
            written.map_err(|_| End::Quiet)?;
            sent += size;
            at = last;
            if !full {
                return Ok(at);
            }
            page = live
                .page(Some(&self.hub), &self.room, at, BACKLOG_CHUNK)
                .await
                .map_err(|_| End::Close(1011, "backend unavailable"))?;
        }
    }

    /// While the task owns the socket: writes what the room loop left and every
    /// frame of the ring this connection has not had, then gives the socket
    /// back. Close 1008 when the ring moved past it (too slow).
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
                metrics::counter!("danmaku_ws_gaps_total").increment(1);
                return Some(End::Close(1008, "too slow; resume from your last cursor"));
            };
            // Checked after taking the frames: any frame of items after an
            // expired hole was published after the flag was set.
            if self.sub.expired.load(Ordering::Acquire) {
                return Some(self.end_after_expiry());
            }
            if frames.is_empty() {
                let mut st = self.sub.state();
                if st.pending.is_none() && self.hub.next_frame_index() <= st.next {
                    st.task_owns = false;
                    return None;
                }
                continue;
            }
            for f in &frames {
                let bytes = match self.sub.take(f, last_sent) {
                    Take::Skip => continue,
                    Take::Shared => self.sub.bytes_of(f).clone(),
                    Take::Own => self.own_bytes(f, last_sent),
                };
                last_sent = last_sent.max(f.last_seq);
                if !bytes.is_empty() && write_all(&self.sub.stream, &bytes, t).await.is_err() {
                    return Some(End::Quiet);
                }
            }
            let mut st = self.sub.state();
            st.next = next + frames.len() as u64;
            st.last_sent = last_sent;
        }
    }

    /// `f` for this connection alone: the items it has not had yet and its own
    /// comments the display budget withheld, in seq order.
    fn own_bytes(&self, f: &Frame, last_sent: u64) -> Bytes {
        let me = self.sub.claims.as_ref().map(|c| c.sub.as_str());
        let mut items: Vec<RingItem> = f
            .items
            .iter()
            .filter(|i| i.seq > last_sent)
            .chain(f.withheld.iter().filter(|i| Some(&*i.user) == me))
            .cloned()
            .collect();
        items.sort_by_key(|i| i.seq);
        frames::sub_frame(self.protover, &items)
    }

    /// Writes bytes of the task's own between the room's frames.
    async fn write_own(&mut self, bytes: &[u8]) -> Option<End> {
        let t = self.write_timeout();
        if self.take_socket(t).await.is_err()
            || write_all(&self.sub.stream, bytes, t).await.is_err()
        {
            return Some(End::Quiet);
        }
        self.catch_up().await
    }

    /// Answers the client's packets: heartbeats; everything else is ignored.
    async fn handle_packets(&mut self, packets: Vec<Packet>) -> Option<End> {
        let mut out = Vec::new();
        for p in packets {
            match p.op {
                Op::Heartbeat => {
                    let online = super::online_count(&self.hub);
                    out.extend(packet::heartbeat_reply(online));
                    out.extend(packet::encode_batch(
                        Protover::Plain,
                        [super::commands::watched_change(online.into()).as_bytes()],
                    ));
                }
                op => {
                    metrics::counter!("danmaku_sub_ignored_packets_total").increment(1);
                    tracing::debug!(op = op.code(), "/sub: packet ignored");
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        let frame = self.binary(&out);
        self.write_own(&frame).await
    }

    async fn on_wake(&mut self) -> Option<End> {
        if self.hub.is_closing() {
            return Some(End::Close(1001, "server shutting down"));
        }
        if self.sub.dead.load(Ordering::Relaxed) {
            return Some(End::Quiet);
        }
        if self.sub.expired.load(Ordering::Acquire) {
            if self.take_socket(self.write_timeout()).await.is_err() {
                return Some(End::Quiet);
            }
            return Some(self.end_after_expiry());
        }
        self.catch_up().await
    }

    /// Items after this connection's cursor expired before the room's hub had
    /// them: closed as a client too slow for the queue is (1008; a resume by
    /// cursor gets `"gap":true`).
    fn end_after_expiry(&self) -> End {
        metrics::counter!("danmaku_ws_gaps_total").increment(1);
        End::Close(
            1008,
            "items expired before they reached this node; resume from your last cursor",
        )
    }

    async fn serve(&mut self) -> End {
        let max = self.live.ctx.settings.limits.max_body_bytes;
        loop {
            loop {
                let incoming = match self.inbound.next(max) {
                    Ok(Some(i)) => i,
                    Ok(None) => break,
                    Err(end) => return end,
                };
                self.sub.last_heard.store(now_secs(), Ordering::Relaxed);
                let end = match incoming {
                    Incoming::Message(m) => match packet::decode_message(&m, max) {
                        Ok(packets) => self.handle_packets(packets).await,
                        Err(e) => Some(packet_end(e)),
                    },
                    Incoming::Pong(p) => self.write_own(&p).await,
                    Incoming::Close(code) => Some(End::Close(code, "")),
                    Incoming::Heard => None,
                };
                if let Some(end) = end {
                    return end;
                }
            }
            // An idle connection holds no buffer (a heartbeat every 30 s
            // would otherwise keep 4 KiB per viewer).
            if self.inbound.buf.is_empty() && !self.inbound.open {
                self.inbound.buf = Vec::new();
                self.inbound.message = Vec::new();
            }
            let stream = &self.sub.stream;
            let buf = &mut self.inbound.buf;
            tokio::select! {
                _ = self.sub.wake.notified() => {
                    if let Some(end) = Box::pin(self.on_wake()).await {
                        return end;
                    }
                }
                read = read_some(stream, buf) => {
                    if let Err(end) = read {
                        return end;
                    }
                }
            }
        }
    }
}
