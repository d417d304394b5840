//! `GET /v1/rooms/{room}/danmaku`: short and long polling.
//!
//! May import: [`crate::room`] (through [`Live`]) and [`crate::messages`] (the
//! page's JSON); never the WebSocket modules.

use crate::messages;
use crate::{parse_cursor, Live};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use danmaku_core::auth::check_read_access;
use danmaku_core::error::ApiError;
use danmaku_ingest::check_room;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
pub(crate) struct PollQuery {
    cursor: Option<String>,
    wait_ms: Option<String>,
    limit: Option<String>,
    token: Option<String>,
}

/// The server's request for when to poll next: sparse rooms poll rarely.
pub fn next_poll_ms(rate_per_sec: f64) -> u64 {
    if rate_per_sec >= 20.0 {
        500
    } else if rate_per_sec >= 2.0 {
        1000
    } else if rate_per_sec >= 0.2 {
        2000
    } else {
        5000
    }
}

fn number(raw: &Option<String>, default: u64, max: u64) -> u64 {
    raw.as_deref()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(default)
        .min(max)
}

pub(crate) async fn poll(
    State(live): State<Arc<Live>>,
    Path(room): Path<String>,
    Query(q): Query<PollQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let s = &live.ctx.settings;
    check_read_access(
        s.auth.require_token_to_read,
        &live.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let limit = number(&q.limit, 100, s.live.max_poll_limit as u64).max(1) as usize;
    let wait_ms = number(&q.wait_ms, 0, s.live.max_wait_ms);
    let hub = live.hubs.get(&room);
    let (items, more, next_cursor) = match cursor {
        None => {
            let head = live.head(&hub, &room).await?;
            let recent = hub.recent(danmaku_core::now_ms(), s.live.recent_ms, limit);
            (recent, false, head)
        }
        Some(c) => {
            let mut watch = hub.watch_seq();
            let mut items = live.items_after(&hub, &room, c, limit + 1).await?;
            if items.is_empty() && wait_ms > 0 {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
                loop {
                    let woke = tokio::select! {
                        r = watch.changed() => r.is_ok(),
                        _ = tokio::time::sleep_until(deadline) => false,
                        _ = live.shutdown.cancelled() => false,
                    };
                    if !woke {
                        break;
                    }
                    if *watch.borrow_and_update() > c {
                        items = live.items_after(&hub, &room, c, limit + 1).await?;
                        if !items.is_empty() {
                            break;
                        }
                    }
                }
            }
            let more = items.len() > limit;
            items.truncate(limit);
            let next = items.last().map_or(c, |i| i.seq);
            (items, more, next)
        }
    };
    let load = live.poll_load_factor();
    let next_poll = if more || wait_ms > 0 {
        0
    } else {
        (next_poll_ms(hub.rate()) as f64 * load).min(60_000.0) as u64
    };
    let body = messages::poll_page(&items, next_cursor, next_poll);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_rooms_poll_rarely() {
        assert!(next_poll_ms(0.0) > next_poll_ms(1.0));
        assert!(next_poll_ms(1.0) > next_poll_ms(100.0));
    }
}
