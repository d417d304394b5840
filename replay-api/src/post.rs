//! Comments posted on a recording: `POST /v1/vods/{vod}/danmaku` (and DPlayer's
//! POST, in `players`).
//!
//! Such a comment goes through [`Ingest::submit`](danmaku_ingest::Ingest::submit)
//! with `Target::Vod`, so it gets the same auth, validation, word filter, bans
//! and rate limits as live sending, and the same durable path: Bus → SliceStore
//! → archiver → ArchiveStore + Parquet (the archiver keeps the comment's own VOD
//! and offset).
//!
//! Read your writes, deterministically: once the Bus acknowledged the comment,
//! the handler waits (at most `replay.post_visible_ms`) for the writer to put it
//! in the SliceStore, reads it back from there (the exact bytes the archiver will
//! store) and upserts it into the ArchiveStore itself (idempotent by vod and id,
//! so the archiver's later upsert changes nothing). Then it invalidates, in both
//! cache tiers, the keys this node used for the comment's segment and for the
//! VOD's whole-recording documents, and forgets its view of the VOD; the new
//! archived count gives every body of the VOD a new key and a new ETag. So the
//! next request to any node after the 202 serves the comment (other nodes
//! within `replay.meta_ttl_ms`). If the writer is slower than the wait, the
//! answer is still 202 and the comment appears once the archiver stores it.

use crate::cache::{self, Keys, VodMeta};
use crate::{check_vod, Replay};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_core::auth::{authenticate, Claims};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::id::id_time_ms;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::segment_of;
use danmaku_ingest::json::JsonObject;
use danmaku_ingest::{read_json, SendRequest, Target};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn invalid_offset(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidOffset, message)
}

/// `POST /v1/vods/{vod}/danmaku`: the body of a live send plus `offset_ms`
/// (required, within the recording so far).
pub(crate) async fn post_vod(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    let claims = authenticate(&r.ctx.signer, &headers, None)?;
    let mut obj: JsonObject =
        read_json(&headers, body, r.ctx.settings.limits.max_body_bytes).await?;
    let offset = obj.take("offset_ms", ErrorCode::InvalidOffset)?;
    let mut req = SendRequest::from_object(&mut obj)?;
    // The position is given explicitly; a live stream position means nothing here.
    req.stream_pos_ms = None;
    let offset_ms = match offset {
        None | Some(serde_json::Value::Null) => {
            return Err(invalid_offset("offset_ms is required"))
        }
        Some(v) => v
            .as_i64()
            .filter(|o| *o >= 0)
            .ok_or_else(|| invalid_offset("offset_ms is a non-negative integer"))?,
    };
    let meta = cache::meta(&r, &vod).await?;
    if !meta
        .session
        .accepts_offset(offset_ms, danmaku_core::now_ms())
    {
        return Err(invalid_offset(
            "offset_ms lies beyond the recording (its duration once ended, the time since the start while live)",
        ));
    }
    let id = post_on_recording(&r, &claims, &meta, offset_ms, req).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id.to_string()}))).into_response())
}

/// Submits `req` at `offset_ms` of the VOD in `meta` (already checked to lie in
/// the recording), then makes it visible to replay (see the module doc).
pub(crate) async fn post_on_recording(
    r: &Replay,
    claims: &Claims,
    meta: &VodMeta,
    offset_ms: i64,
    req: SendRequest,
) -> Result<u64, ApiError> {
    let session = &meta.session;
    let room = session.room.clone();
    // Where the room's log stands before ours, to find our comment after it.
    let before = match r.ctx.slices.last_seq(&room).await {
        Ok(seq) => Some(seq),
        Err(e) => {
            tracing::warn!(error = %e, room, "cannot read the room's last seq; the VOD comment will appear once archived");
            None
        }
    };
    let started = danmaku_core::now_ms();
    let target = Target::Vod {
        room: room.clone(),
        vod: session.vod.clone(),
        offset_ms,
    };
    let id = r.ingest.submit(claims, target, req).await?;
    // An idempotent retry returns an id minted earlier: that comment is already
    // on its way (or stored), nothing new to wait for.
    let fresh = id_time_ms(id) >= started;
    if let Some(before) = before.filter(|_| fresh) {
        let wait = Duration::from_millis(r.ctx.settings.replay.post_visible_ms);
        match find_in_slices(r, &room, before, id, wait).await {
            // A shadow-banned poster's comment is never replayed (the archiver
            // keeps it in Parquet only): nothing to store here.
            Some(item) if item.hidden => {}
            Some(item) => {
                let row = ArchivedComment {
                    vod: session.vod.clone(),
                    offset_ms,
                    item,
                };
                if let Err(e) = r.ctx.archive.upsert_comments(&[row]).await {
                    tracing::warn!(error = %e, vod = session.vod, id, "could not store the VOD comment at once; the archiver will");
                }
            }
            None => {
                metrics::counter!("danmaku_replay_post_not_visible_total").increment(1);
                tracing::warn!(
                    vod = session.vod,
                    id,
                    wait_ms = wait.as_millis() as u64,
                    "VOD comment not in the SliceStore in time; it appears once archived"
                );
            }
        }
    }
    invalidate(r, meta, offset_ms).await;
    metrics::counter!("danmaku_replay_vod_comments_total").increment(1);
    Ok(id)
}

/// Waits up to `wait` for comment `id` of `room` to show up in the SliceStore
/// after seq `after`, and returns it as stored.
async fn find_in_slices(
    r: &Replay,
    room: &str,
    mut after: u64,
    id: u64,
    wait: Duration,
) -> Option<Danmaku> {
    const PAGE: usize = 512;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        match r.ctx.slices.read_after(room, after, PAGE).await {
            Ok(items) => {
                let full = items.len() == PAGE;
                for it in &items {
                    after = after.max(it.seq);
                    if let Ok(d) = Danmaku::decode_bytes(&it.data) {
                        if d.id == id {
                            return Some(d);
                        }
                    }
                }
                if full {
                    continue;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, room, "read_after failed while waiting for a VOD comment")
            }
        }
        if tokio::time::Instant::now() + pause > deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Invalidates, in both cache tiers, what this node's view `meta` keyed for the
/// segment holding `offset_ms` and for the whole-recording documents, and drops
/// the view itself.
async fn invalidate(r: &Replay, meta: &VodMeta, offset_ms: i64) {
    let s = &r.ctx.settings.replay;
    let keys = Keys {
        meta,
        density_cap: s.density_cap,
    };
    r.ctx
        .cache
        .invalidate(&keys.segment(segment_of(offset_ms)))
        .await;
    r.ctx
        .cache
        .invalidate(&keys.bilibili(s.document_max_items))
        .await;
    r.ctx
        .cache
        .invalidate(&keys.dplayer(s.document_max_items))
        .await;
    cache::forget_meta(r, &meta.session.vod).await;
}
