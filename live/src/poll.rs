//! `GET /v1/rooms/{room}/danmaku`: short and long polling. A poll of a room
//! this node has no hub for reads the SliceStore and creates a hub only when
//! the room has data; a long poll pins the room's hub while it waits, within
//! `live.max_long_polls`. `"gap": true` in the answer when what followed the
//! cursor is no longer held.
//!
//! May import: [`crate::room`] (through [`Live`]) and [`crate::messages`] (the
//! page's JSON); never the WebSocket modules.

use crate::messages;
use crate::room::Hub;
use crate::{parse_cursor, refused, Live, Page};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use danmaku_core::auth::check_read_access;
use danmaku_core::error::ApiError;
use danmaku_ingest::check_room;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    // A room without a hub here is answered from the SliceStore; only a room
    // with data gets one (below), so polling made-up rooms creates nothing.
    let hub = live.hubs.find(&room);
    if let Some(h) = &hub {
        h.touch();
    }
    let (items, more, next_cursor, gap, has_data) = match cursor {
        None => {
            let head = live.head(hub.as_deref(), &room).await?;
            let recent = hub.as_ref().map_or_else(Vec::new, |h| {
                h.recent(danmaku_core::now_ms(), s.live.recent_ms, limit)
            });
            (recent, false, head, false, head > 0)
        }
        Some(c) => {
            // Watching before the first read: nothing arriving between the two is missed.
            let watch = hub.as_ref().filter(|_| wait_ms > 0).map(|h| h.watch_seq());
            let mut page = live.page(hub.as_deref(), &room, c, limit + 1).await?;
            if page.items.is_empty() && page.gap.is_none() && wait_ms > 0 {
                page = long_poll(&live, &room, hub.as_ref(), watch, c, limit, wait_ms).await?;
            }
            let more = page.items.len() > limit;
            page.items.truncate(limit);
            let next = page.items.last().map_or(page.gap.unwrap_or(c), |i| i.seq);
            (page.items, more, next, page.gap.is_some(), page.has_data)
        }
    };
    if hub.is_none() && has_data {
        live.hubs.open(&room);
    }
    let load = live.poll_load_factor();
    let next_poll = if more || wait_ms > 0 {
        0
    } else {
        let rate = hub.as_ref().map_or(0.0, |h| h.rate());
        (next_poll_ms(rate) as f64 * load).min(60_000.0) as u64
    };
    // A shadow-banned sender's comments reach only that sender (a poll with
    // their token); everyone else never sees them.
    let mut items = items;
    if items.iter().any(|i| i.hidden) {
        let me = danmaku_core::auth::authenticate(&live.ctx.signer, &headers, q.token.as_deref())
            .ok()
            .map(|c| c.sub);
        items.retain(|i| !i.hidden || me.as_deref() == Some(&*i.user));
    }
    let body = messages::poll_page(&items, next_cursor, next_poll, gap);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Holds a poll that found nothing after `cursor` until an item arrives, the
/// wait is over or the server shuts down. It needs the room's hub (pinned
/// meanwhile) and one of the node's `live.max_long_polls`: `503` past either bound.
async fn long_poll(
    live: &Live,
    room: &str,
    found: Option<&Arc<Hub>>,
    watch: Option<watch::Receiver<u64>>,
    cursor: u64,
    limit: usize,
    wait_ms: u64,
) -> Result<Page, ApiError> {
    let _waiting = live
        .long_polls
        .try_acquire()
        .map_err(|_| refused("long_polls"))?;
    let (_, pin) = live.hubs.pin(room).map_err(|_| refused("rooms"))?;
    let mut watch = match (watch, found) {
        (Some(w), Some(h)) if Arc::ptr_eq(h, pin.hub()) => w,
        _ => {
            // A hub this poll did not read: look again now that it is watched.
            let w = pin.watch_seq();
            let page = live.page(Some(&*pin), room, cursor, limit + 1).await?;
            if !page.items.is_empty() || page.gap.is_some() {
                return Ok(page);
            }
            w
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let woke = tokio::select! {
            r = watch.changed() => r.is_ok(),
            _ = tokio::time::sleep_until(deadline) => false,
            _ = live.shutdown.cancelled() => false,
        };
        if !woke {
            return Ok(Page::default());
        }
        if *watch.borrow_and_update() > cursor {
            let page = live.page(Some(&*pin), room, cursor, limit + 1).await?;
            if !page.items.is_empty() || page.gap.is_some() {
                return Ok(page);
            }
        }
    }
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
