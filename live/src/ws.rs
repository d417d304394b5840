//! `GET /v1/rooms/{room}/ws`: our own WebSocket server side on the raw TCP stream
//! after hyper's upgrade, so that a room's frames (encoded once by the hub) are
//! written to every connection as the same bytes. Per connection: hello, the
//! backlog after `?cursor=`, then live frames; `gap` and close for a client too
//! slow for the room's queue; pings on the hub's tick with dead-peer detection;
//! `send` through the ingest checks, several in flight at once.
//!
//! Memory: an idle connection is one small task holding the socket, a broadcast
//! receiver and a few words of state; buffers exist only while a message is
//! being read or a write is blocked.

use crate::hub::{encode_batch, Frame, FrameKind, Hub, RingItem};
use crate::wsproto::{self, opcode, ProtocolError};
use crate::{parse_cursor, Live};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_core::auth::{check_read_access, Claims};
use danmaku_core::cursor::Cursor;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_ingest::{check_room, SendRequest, Target};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

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
    if !s.live.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if let Some(o) = origin {
            if !s.live.allowed_origins.iter().any(|a| a == o) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this origin may not open WebSockets here",
                ));
            }
        }
    }
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
    let (Some(key), true, true, true) = (
        key,
        version_ok,
        header_has(&req, header::CONNECTION, "upgrade"),
        header_has(&req, header::UPGRADE, "websocket"),
    ) else {
        let body = json!({"error": {"code": "invalid_json", "message": "this endpoint speaks WebSocket (version 13)"}});
        return Ok((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            axum::Json(body),
        )
            .into_response());
    };
    let deflate = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(wsproto::offers_deflate);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let over_limit = live.connections.load(Ordering::Relaxed) >= s.live.max_connections;
    let conn = Conn::new(live.clone(), room, claims, deflate);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let (stream, leftover) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (parts.io.into_inner(), parts.read_buf),
            Err(_) => {
                tracing::error!("websocket upgrade on an unexpected transport");
                return;
            }
        };
        if over_limit {
            metrics::counter!("danmaku_ws_refused_total").increment(1);
            let _ = write_all(
                &stream,
                &wsproto::close_frame(1013, "too many connections; try again later"),
                Duration::from_secs(1),
            )
            .await;
            return;
        }
        let fut = conn.run(stream, leftover, cursor);
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::debug!(
                bytes = std::mem::size_of_val(&fut),
                "connection future size"
            )
        });
        fut.await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&wsproto::accept_key(&key)).expect("base64 is ascii"),
    );
    if deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(wsproto::DEFLATE_RESPONSE),
        );
    }
    Ok(resp)
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

/// Why a connection ends.
enum End {
    /// Send this close frame, then close.
    Close(u16, &'static str),
    /// Just close (peer gone, or we already sent close).
    Quiet,
}

struct Conn {
    live: Arc<Live>,
    room: String,
    claims: Option<Claims>,
    deflate: bool,
}

impl Conn {
    fn new(live: Arc<Live>, room: String, claims: Option<Claims>, deflate: bool) -> Self {
        Self {
            live,
            room,
            claims,
            deflate,
        }
    }

    async fn run(self, stream: TcpStream, leftover: Bytes, cursor: Option<u64>) {
        let _ = stream.set_nodelay(true);
        let sndbuf = self.live.ctx.settings.live.ws_send_buffer_bytes;
        if sndbuf > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf);
        }
        self.live.connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("danmaku_ws_connections").increment(1.0);
        let end = self.serve(&stream, leftover, cursor).await;
        if let End::Close(code, reason) = end {
            let _ = write_all(
                &stream,
                &wsproto::close_frame(code, reason),
                Duration::from_secs(1),
            )
            .await;
        }
        self.live.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("danmaku_ws_connections").decrement(1.0);
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.live.ctx.settings.live.write_timeout_ms.max(100))
    }

    async fn send_text(&self, stream: &TcpStream, text: &str) -> std::io::Result<()> {
        write_all(stream, &wsproto::text_frame(text), self.write_timeout()).await
    }

    async fn serve(&self, stream: &TcpStream, leftover: Bytes, cursor: Option<u64>) -> End {
        let live = &self.live;
        let hub = live.hubs.get(&self.room);
        // Subscribe before reading any backlog, so nothing falls between the two.
        let mut rx = hub.subscribe();
        // Boxed: its buffers are gone once the connection is live.
        let mut last_sent = match Box::pin(self.greet(stream, &hub, cursor)).await {
            Ok(c) => c,
            Err(end) => return end,
        };
        drop(hub);

        let max_msg = live.ctx.settings.limits.max_body_bytes;
        let ping_every = Duration::from_secs(live.ctx.settings.live.ping_interval_secs.max(1));
        let mut inbuf: Vec<u8> = leftover.to_vec();
        drop(leftover);
        let mut message: Vec<u8> = Vec::new();
        let mut message_compressed = false;
        let mut last_heard = Instant::now();
        let mut acks: Option<(mpsc::Sender<String>, mpsc::Receiver<String>)> = None;
        let mut inflight = 0usize;
        loop {
            // Parse whatever complete frames we have.
            loop {
                match wsproto::parse_client_frame(&inbuf, max_msg) {
                    Ok(None) => break,
                    Err(ProtocolError::TooBig) => return End::Close(1009, "message too big"),
                    Err(ProtocolError::Invalid) => return End::Close(1002, "protocol error"),
                    Ok(Some((frame, used))) => {
                        inbuf.drain(..used);
                        last_heard = Instant::now();
                        match frame.opcode {
                            opcode::PING => {
                                let pong =
                                    wsproto::encode_frame(opcode::PONG, &frame.payload, false);
                                if write_all(stream, &pong, self.write_timeout())
                                    .await
                                    .is_err()
                                {
                                    return End::Quiet;
                                }
                            }
                            opcode::PONG => {}
                            opcode::CLOSE => return End::Close(1000, ""),
                            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {
                                if frame.opcode != opcode::CONTINUATION {
                                    message.clear();
                                    message_compressed = frame.rsv1 && self.deflate;
                                } else if frame.rsv1 {
                                    return End::Close(1002, "protocol error");
                                }
                                if frame.rsv1 && !self.deflate {
                                    return End::Close(1002, "protocol error");
                                }
                                message.extend_from_slice(&frame.payload);
                                if message.len() > max_msg {
                                    return End::Close(1009, "message too big");
                                }
                                if frame.fin {
                                    let raw = std::mem::take(&mut message);
                                    let raw = if message_compressed {
                                        match wsproto::inflate_message(&raw, max_msg) {
                                            Some(r) => r,
                                            None => return End::Close(1009, "message too big"),
                                        }
                                    } else {
                                        raw
                                    };
                                    let Ok(text) = String::from_utf8(raw) else {
                                        return End::Close(1007, "invalid utf-8");
                                    };
                                    let (tx, _) =
                                        acks.get_or_insert_with(|| mpsc::channel(MAX_INFLIGHT));
                                    inflight += 1;
                                    let (live, room, claims, tx) = (
                                        live.clone(),
                                        self.room.clone(),
                                        self.claims.clone(),
                                        tx.clone(),
                                    );
                                    tokio::spawn(async move {
                                        let reply = handle_client_message(
                                            &live,
                                            &room,
                                            claims.as_ref(),
                                            &text,
                                        )
                                        .await;
                                        let _ = tx.send(reply.to_string()).await;
                                    });
                                }
                            }
                            _ => return End::Close(1002, "protocol error"),
                        }
                    }
                }
            }
            if inbuf.is_empty() {
                inbuf = Vec::new(); // an idle connection holds no buffer
            }

            tokio::select! {
                frame = rx.recv() => match frame {
                    Ok(f) => match f.kind {
                        FrameKind::Data => {
                            if let Err(e) = self.write_data(stream, &f, &mut last_sent).await {
                                tracing::debug!(error = %e, "websocket write failed");
                                return End::Quiet;
                            }
                        }
                        FrameKind::Ping => {
                            if last_heard.elapsed() > ping_every * 2 {
                                metrics::counter!("danmaku_ws_dead_peers_total").increment(1);
                                return End::Quiet;
                            }
                            if write_all(stream, &f.wire, self.write_timeout()).await.is_err() {
                                return End::Quiet;
                            }
                        }
                        FrameKind::Close => {
                            let _ = write_all(stream, &f.wire, Duration::from_secs(1)).await;
                            return End::Quiet;
                        }
                    },
                    Err(RecvError::Lagged(n)) => {
                        metrics::counter!("danmaku_ws_gaps_total").increment(1);
                        tracing::debug!(room = self.room, missed_frames = n, "slow websocket client gets gap");
                        let gap = json!({"type": "gap", "cursor": Cursor(last_sent).encode()}).to_string();
                        let _ = self.send_text(stream, &gap).await;
                        return End::Close(1008, "too slow; resume from the gap cursor");
                    }
                    Err(RecvError::Closed) => return End::Close(1001, "room closed"),
                },
                ready = stream.readable(), if inflight < MAX_INFLIGHT => {
                    if ready.is_err() {
                        return End::Quiet;
                    }
                    let mut tmp = [0u8; 4096];
                    match stream.try_read(&mut tmp) {
                        Ok(0) => return End::Quiet,
                        Ok(n) => inbuf.extend_from_slice(&tmp[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::Quiet,
                    }
                },
                reply = async { acks.as_mut().expect("guarded").1.recv().await }, if acks.is_some() => {
                    if let Some(reply) = reply {
                        inflight = inflight.saturating_sub(1);
                        if self.send_text(stream, &reply).await.is_err() {
                            return End::Quiet;
                        }
                    }
                    if inflight == 0 {
                        acks = None; // free the channel while idle
                    }
                },
            }
        }
    }

    /// Sends hello and the backlog; returns the cursor the live frames continue from.
    async fn greet(&self, stream: &TcpStream, hub: &Hub, cursor: Option<u64>) -> Result<u64, End> {
        let Ok((hello_cursor, backlog)) = self.start(hub, cursor).await else {
            return Err(End::Close(1011, "backend unavailable"));
        };
        let hello =
            json!({"type": "hello", "room": self.room, "cursor": Cursor(hello_cursor).encode()})
                .to_string();
        if self.send_text(stream, &hello).await.is_err() {
            return Err(End::Quiet);
        }
        let mut last_sent = hello_cursor;
        for chunk in backlog.chunks(BACKLOG_CHUNK) {
            if self.send_text(stream, &encode_batch(chunk)).await.is_err() {
                return Err(End::Quiet);
            }
            last_sent = last_sent.max(chunk.last().map_or(0, |i| i.seq));
        }
        Ok(last_sent)
    }

    /// Where this connection starts: the hello cursor and the backlog to send.
    async fn start(
        &self,
        hub: &Hub,
        cursor: Option<u64>,
    ) -> Result<(u64, Vec<RingItem>), ApiError> {
        let live = &self.live;
        match cursor {
            Some(c) => {
                let mut all = Vec::new();
                let mut at = c;
                loop {
                    let page = live.items_after(hub, &self.room, at, BACKLOG_CHUNK).await?;
                    let Some(last) = page.last() else { break };
                    at = last.seq;
                    let full = page.len() == BACKLOG_CHUNK;
                    all.extend(page);
                    if !full {
                        break;
                    }
                }
                Ok((c, all))
            }
            None => {
                let head = live
                    .head(hub, &self.room)
                    .await
                    .unwrap_or_else(|_| hub.last_seq());
                let recent = hub.recent(
                    danmaku_core::now_ms(),
                    live.ctx.settings.live.recent_ms,
                    BACKLOG_CHUNK,
                );
                let start = recent.first().map_or(head, |i| i.seq - 1);
                Ok((start, recent))
            }
        }
    }

    /// Writes a data frame: the shared bytes when the client has none of it yet,
    /// a re-encoded remainder when it already has part of it (right after a
    /// resume), plus its own comments the display budget held back.
    async fn write_data(
        &self,
        stream: &TcpStream,
        f: &Frame,
        last_sent: &mut u64,
    ) -> std::io::Result<()> {
        let timeout = self.write_timeout();
        if f.last_seq > *last_sent {
            if f.first_seq > *last_sent {
                let bytes = if self.deflate { f.deflated() } else { &f.wire };
                write_all(stream, bytes, timeout).await?;
            } else {
                let rest: Vec<RingItem> = f
                    .items
                    .iter()
                    .filter(|i| i.seq > *last_sent)
                    .cloned()
                    .collect();
                let text = crate::hub::encode_batch_with(&rest, f.last_seq, 0);
                self.send_text(stream, &text).await?;
            }
            *last_sent = f.last_seq;
        }
        if let Some(me) = &self.claims {
            let mine: Vec<RingItem> = f
                .withheld
                .iter()
                .filter(|i| &*i.user == me.sub.as_str())
                .cloned()
                .collect();
            if !mine.is_empty() {
                self.send_text(stream, &crate::hub::encode_batch_with(&mine, f.last_seq, 0))
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, rename = "ref")]
    reference: Option<serde_json::Value>,
    #[serde(flatten)]
    send: SendRequest,
}

async fn handle_client_message(
    live: &Live,
    room: &str,
    claims: Option<&Claims>,
    raw: &str,
) -> serde_json::Value {
    let msg: ClientMessage = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(_) => {
            return error_reply(
                None,
                ApiError::new(
                    ErrorCode::InvalidJson,
                    "messages are JSON objects with a type",
                ),
            )
        }
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
    if claims.exp < danmaku_core::now_ms() / 1000 {
        return error_reply(
            reference,
            ApiError::new(ErrorCode::Unauthorized, "the token expired"),
        );
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
        Ok(id) => json!({"type": "ack", "ref": reference, "id": id.to_string()}),
        Err(e) => error_reply(reference, e),
    }
}

fn error_reply(reference: Option<serde_json::Value>, e: ApiError) -> serde_json::Value {
    metrics::counter!("danmaku_api_errors_total", "code" => e.code.as_str()).increment(1);
    json!({"type": "error", "ref": reference, "error": {"code": e.code.as_str(), "message": e.message}})
}
