//! `GET /v1/rooms/{room}/ws`: hello, backlog after `?cursor=`, then live batches
//! shared by every connection of the room; `gap` and close for a client too slow
//! for its queue; `send` through the ingest checks.

use crate::hub::{encode_batch, RingItem};
use crate::{parse_cursor, Live};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use danmaku_core::auth::{check_read_access, Claims};
use danmaku_core::cursor::Cursor;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_ingest::{check_room, SendRequest, Target};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    cursor: Option<String>,
    token: Option<String>,
}

/// Items per backlog message.
const BACKLOG_CHUNK: usize = 500;

pub(crate) async fn upgrade(
    State(live): State<Arc<Live>>,
    Path(room): Path<String>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let s = &live.ctx.settings;
    check_read_access(
        s.auth.require_token_to_read,
        &live.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    // A token, when given, must be valid: it is what allows sending.
    let claims = match danmaku_core::auth::bearer(&headers, q.token.as_deref()) {
        Some(_) => Some(danmaku_core::auth::authenticate(
            &live.ctx.signer,
            &headers,
            q.token.as_deref(),
        )?),
        None => None,
    };
    let max = s.limits.max_body_bytes;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            metrics::gauge!("danmaku_ws_connections").increment(1.0);
            if let Err(e) = serve(live, room, cursor, claims, socket).await {
                tracing::debug!(error = %e, "websocket ended");
            }
            metrics::gauge!("danmaku_ws_connections").decrement(1.0);
        }))
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

async fn serve(
    live: Arc<Live>,
    room: String,
    cursor: Option<u64>,
    claims: Option<Claims>,
    socket: WebSocket,
) -> Result<(), axum::Error> {
    let (mut sink, mut stream) = socket.split();
    let hub = live.hubs.get(&room);
    // Subscribe before reading any backlog, so nothing falls between the two.
    let mut rx = hub.subscribe();
    let (hello_cursor, backlog): (u64, Vec<RingItem>) = match cursor {
        Some(c) => {
            let mut all = Vec::new();
            let mut at = c;
            loop {
                let page = match live.items_after(&hub, &room, at, BACKLOG_CHUNK).await {
                    Ok(p) => p,
                    Err(_) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: 1011,
                                reason: "backend unavailable".into(),
                            })))
                            .await;
                        return Ok(());
                    }
                };
                let Some(last) = page.last() else { break };
                at = last.seq;
                let full = page.len() == BACKLOG_CHUNK;
                all.extend(page);
                if !full {
                    break;
                }
            }
            (c, all)
        }
        None => {
            let head = live
                .head(&hub, &room)
                .await
                .unwrap_or_else(|_| hub.last_seq());
            let recent = hub.recent(
                danmaku_core::now_ms(),
                live.ctx.settings.live.recent_ms,
                BACKLOG_CHUNK,
            );
            let start = recent.first().map_or(head, |i| i.seq - 1);
            (start, recent)
        }
    };
    sink.send(text(
        json!({"type": "hello", "room": room, "cursor": Cursor(hello_cursor).encode()}).to_string(),
    ))
    .await?;
    let mut last_sent = hello_cursor;
    for chunk in backlog.chunks(BACKLOG_CHUNK) {
        sink.send(text(encode_batch(chunk))).await?;
        last_sent = last_sent.max(chunk.last().map_or(0, |i| i.seq));
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(f) => {
                    if f.last_seq <= last_sent {
                        continue;
                    }
                    if f.first_seq > last_sent {
                        sink.send(Message::Text(f.text.clone())).await?;
                    } else {
                        let rest: Vec<RingItem> = f.items.iter().filter(|i| i.seq > last_sent).cloned().collect();
                        sink.send(text(encode_batch(&rest))).await?;
                    }
                    last_sent = f.last_seq;
                }
                Err(RecvError::Lagged(n)) => {
                    metrics::counter!("danmaku_ws_gaps_total").increment(1);
                    tracing::debug!(room, missed_frames = n, "slow websocket client gets gap");
                    sink.send(text(json!({"type": "gap", "cursor": Cursor(last_sent).encode()}).to_string())).await?;
                    sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: "too slow; resume from the gap cursor".into() }))).await?;
                    return Ok(());
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let reply = handle_client_message(&live, &room, claims.as_ref(), t.as_str()).await;
                    sink.send(text(reply.to_string())).await?;
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            },
            _ = live.shutdown.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                return Ok(());
            }
        }
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
