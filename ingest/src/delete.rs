//! Deleting and recalling comments (API.md, Moderation):
//! `DELETE /v1/rooms/{room}/danmaku/{id}` and `DELETE /v1/vods/{vod}/danmaku/{id}`.
//!
//! A deletion is a record in the room's stream ([`Danmaku::deletes`]),
//! published through the Bus like a comment, so it is ordered with the
//! comments and survives a crash like them: the writer makes the SliceStore
//! stop serving the comment and tells every live node (viewers get
//! `{"type":"delete"}`), the archiver applies it to the ArchiveStore and
//! Parquet. When the comment is archived already, the handler also deletes it
//! from the ArchiveStore at once (idempotent; the archiver does it again), so
//! replay stops serving it as soon as each replay node's view of the VOD is
//! renewed (`replay.meta_ttl_ms`).
//!
//! Finding the comment: its id carries its time; in the SliceStore the room's
//! items are in seq order and their times almost in order, so a binary search
//! by seq finds where that time is, and a bounded scan around it finds the id.
//! A VOD's comment is looked up in the ArchiveStore (the segment its time
//! predicts first, then the others) and, if not archived yet, in the room's
//! SliceStore.

use crate::Ingest;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use danmaku_core::auth::{authenticate, Claims, Role};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::{valid_id, Danmaku, Kind};
use danmaku_core::ports::{ArchivedDeletion, SliceError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Items whose time may be out of order with their seq (several ingest nodes'
/// clocks, Bus order): the scan around the predicted place covers this much.
const SKEW_MS: i64 = 10_000;
/// Items read per page of the scan, and pages at most.
const SCAN_PAGE: usize = 1000;
const SCAN_PAGES: usize = 20;
/// The longest reason kept with a deletion, characters.
const MAX_REASON_CHARS: usize = 200;

#[derive(Default, Deserialize)]
struct DeleteBody {
    #[serde(default)]
    reason: Option<Value>,
}

/// Where a comment to delete was found.
struct Found {
    item: Danmaku,
    /// Its VOD and offset when it is archived (or belongs to a VOD).
    archived: Option<(String, i64)>,
}

/// `DELETE /v1/rooms/{room}/danmaku/{id}`.
pub(crate) async fn delete_in_room(
    State(ingest): State<Arc<Ingest>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    crate::check_room(&room)?;
    let claims = authenticate(&ingest.ctx.signer, &headers, None)?;
    let reason = reason(&ingest, &headers, body).await?;
    let id = parse_id(&id)?;
    viewer_may_try(&ingest, &claims, id)?;
    if ingest
        .ctx
        .slices
        .is_deleted(&room, id)
        .await
        .map_err(store)?
    {
        return Ok(deleted(id));
    }
    let found = match find_hot(&ingest, &room, id).await? {
        Some(item) => Some(Found {
            archived: vod_of_hot(&ingest, &item).await?,
            item,
        }),
        None => {
            let everywhere = claims.role != Role::Viewer;
            find_archived_in_room(&ingest, &room, id, everywhere).await?
        }
    };
    let Some(found) = found else {
        // Deleted meanwhile (a concurrent deletion being stored) is still 200.
        return if ingest
            .ctx
            .slices
            .is_deleted(&room, id)
            .await
            .map_err(store)?
        {
            Ok(deleted(id))
        } else {
            Err(ApiError::not_found("comment"))
        };
    };
    apply(&ingest, &claims, &room, found, reason).await
}

/// `DELETE /v1/vods/{vod}/danmaku/{id}`.
pub(crate) async fn delete_in_vod(
    State(ingest): State<Arc<Ingest>>,
    Path((vod, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    if !valid_id(&vod) {
        return Err(ApiError::new(ErrorCode::InvalidVod, "invalid vod id"));
    }
    let claims = authenticate(&ingest.ctx.signer, &headers, None)?;
    let reason = reason(&ingest, &headers, body).await?;
    let id = parse_id(&id)?;
    viewer_may_try(&ingest, &claims, id)?;
    let session = ingest
        .ctx
        .archive
        .get_session(&vod)
        .await
        .map_err(archive)?
        .ok_or_else(|| ApiError::not_found("vod"))?;
    let room = session.room.clone();
    if ingest
        .ctx
        .slices
        .is_deleted(&room, id)
        .await
        .map_err(store)?
    {
        return Ok(deleted(id));
    }
    let everywhere = claims.role != Role::Viewer;
    let found = match find_in_vod(&ingest, &session, id, everywhere).await? {
        Some(f) => Some(f),
        None => match find_hot(&ingest, &room, id).await? {
            Some(item) => {
                let archived = vod_of_hot(&ingest, &item).await?;
                archived
                    .as_ref()
                    .is_some_and(|(v, _)| *v == vod)
                    .then_some(Found { item, archived })
            }
            None => None,
        },
    };
    let Some(found) = found else {
        return if ingest
            .ctx
            .slices
            .is_deleted(&room, id)
            .await
            .map_err(store)?
        {
            Ok(deleted(id))
        } else {
            Err(ApiError::not_found("comment"))
        };
    };
    apply(&ingest, &claims, &room, found, reason).await
}

/// A viewer may only recall a comment of theirs sent within the recall
/// window, so an id whose time is older cannot be theirs to delete: refused
/// before any lookup (a made-up old id never costs a VOD read).
fn viewer_may_try(ingest: &Ingest, claims: &Claims, id: u64) -> Result<(), ApiError> {
    if claims.role != Role::Viewer {
        return Ok(());
    }
    let window = ingest
        .ctx
        .settings
        .moderation
        .recall_secs
        .saturating_mul(1000) as i64;
    let sent = danmaku_core::id::id_time_ms(id);
    if danmaku_core::now_ms().saturating_sub(sent) > window.saturating_add(SKEW_MS) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a viewer may recall only their own comments within the recall window",
        ));
    }
    Ok(())
}

fn deleted(id: u64) -> Json<Value> {
    Json(json!({"id": id.to_string(), "deleted": true}))
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    // Canonical decimal only: "+1" or "01" name no comment.
    match raw.parse::<u64>() {
        Ok(id) if id.to_string() == raw => Ok(id),
        _ => Err(ApiError::not_found("comment")),
    }
}

async fn reason(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<String, ApiError> {
    let b: DeleteBody =
        crate::read_json(headers, body, ingest.ctx.settings.limits.max_body_bytes).await?;
    match b.reason {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.chars().take(MAX_REASON_CHARS).collect()),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            "reason must be a string",
        )),
    }
}

/// Checks who may delete, then publishes the deletion record and applies it to
/// the archive when the comment is archived.
async fn apply(
    ingest: &Ingest,
    claims: &Claims,
    room: &str,
    found: Found,
    reason: String,
) -> Result<Json<Value>, ApiError> {
    let item = found.item;
    match claims.role {
        Role::Admin | Role::Service => {}
        Role::Viewer => {
            let window = ingest
                .ctx
                .settings
                .moderation
                .recall_secs
                .saturating_mul(1000);
            let age = danmaku_core::now_ms().saturating_sub(item.ts_ms);
            if item.user != claims.sub {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "only the sender, a service or an admin may delete this comment",
                ));
            }
            if age > window as i64 {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "your comment is older than the recall window",
                ));
            }
        }
    }
    let now = danmaku_core::now_ms();
    let (vod, offset_ms) = match &found.archived {
        Some((v, o)) => (Some(v.clone()), Some(*o)),
        None => (None, None),
    };
    let record = Danmaku {
        id: ingest.ctx.ids.next_id(now),
        room: room.to_string(),
        user: claims.sub.clone(),
        ts_ms: now,
        kind: Kind::System as i32,
        text: reason.clone(),
        vod: vod.clone(),
        offset_ms,
        deletes: Some(item.id),
        ..Default::default()
    };
    let timeout = Duration::from_millis(ingest.ctx.settings.limits.publish_timeout_ms.max(1));
    match tokio::time::timeout(timeout, ingest.ctx.bus.publish(room, record.encode_bytes())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, room, "publish of a deletion failed");
            return Err(ApiError::unavailable());
        }
        Err(_) => return Err(ApiError::unavailable()),
    }
    // Accepted: the Bus holds it, so it is applied everywhere even if what
    // follows fails. Reads by cursor stop serving it now, not only once the
    // writer stored the record (the writer does this again: idempotent).
    let keep = ingest
        .ctx
        .settings
        .live
        .hot_retention_ms
        .saturating_mul(2)
        .max(24 * 3600 * 1000);
    if let Err(e) = ingest.ctx.slices.delete_items(room, &[item.id], keep).await {
        tracing::warn!(error = %e, room, "deletion not applied to the slice store yet; the writer will");
    }
    // Replay stops serving an archived comment at once.
    if let (Some(vod), Some(offset_ms)) = (vod, offset_ms) {
        let d = ArchivedDeletion {
            vod: vod.clone(),
            offset_ms,
            id: item.id,
        };
        if let Err(e) = ingest.ctx.archive.delete_comments(&[d]).await {
            tracing::warn!(error = %e, vod, "deletion not applied to the archive yet; the archiver will");
        }
    }
    metrics::counter!("danmaku_deletions_total", "by" => role_name(claims.role)).increment(1);
    tracing::info!(
        target: "audit",
        action = "delete",
        by = %claims.sub,
        role = role_name(claims.role),
        room,
        id = item.id,
        sender = %item.user,
        reason = %reason,
        "comment deleted"
    );
    Ok(deleted(item.id))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Service => "service",
        Role::Viewer => "viewer",
    }
}

/// The comment `id` of `room` in the SliceStore, if it still holds it.
async fn find_hot(ingest: &Ingest, room: &str, id: u64) -> Result<Option<Danmaku>, ApiError> {
    let slices = &ingest.ctx.slices;
    let at = danmaku_core::id::id_time_ms(id);
    let head = slices.last_seq(room).await.map_err(store)?;
    if head == 0 {
        return Ok(None);
    }
    // The last seq whose next item is older than the window: start after it.
    let (mut lo, mut hi) = (0u64, head);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match slices
            .read_after(room, mid, 1)
            .await
            .map_err(store)?
            .first()
        {
            // Clamped below `hi`: the store may change between two probes
            // (an item deleted or expired), and `hi - lo` must stay positive.
            Some(it) if it.ts_ms < at - SKEW_MS => lo = it.seq.max(mid).min(hi - 1),
            _ => hi = mid,
        }
    }
    let mut after = lo;
    for _ in 0..SCAN_PAGES {
        let page = slices
            .read_after(room, after, SCAN_PAGE)
            .await
            .map_err(store)?;
        for it in &page {
            if danmaku_core::model::peek_id(&it.data) == Some(id) {
                let d = Danmaku::decode_bytes(&it.data).map_err(|_| ApiError::unavailable())?;
                if !d.is_deletion() {
                    return Ok(Some(d));
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE && last.ts_ms <= at + SKEW_MS => after = last.seq,
            _ => break,
        }
    }
    Ok(None)
}

/// The VOD and offset a hot comment belongs to: its own (a VOD post), or the
/// room's session that covers its time (as the archiver will place it).
async fn vod_of_hot(ingest: &Ingest, item: &Danmaku) -> Result<Option<(String, i64)>, ApiError> {
    if let (Some(v), Some(o)) = (&item.vod, item.offset_ms) {
        return Ok(Some((v.clone(), o)));
    }
    let sessions = ingest
        .ctx
        .archive
        .sessions_by_room(&item.room, 20)
        .await
        .map_err(archive)?;
    let window = ingest.ctx.settings.archive.plausible_window_ms;
    Ok(
        danmaku_core::vod::session_for(&sessions, item.ts_ms).map(|s| {
            (
                s.vod.clone(),
                s.align(item.ts_ms, item.stream_pos_ms, window),
            )
        }),
    )
}

/// The comment `id` archived in a VOD of `room` whose time covers it.
async fn find_archived_in_room(
    ingest: &Ingest,
    room: &str,
    id: u64,
    everywhere: bool,
) -> Result<Option<Found>, ApiError> {
    let at = danmaku_core::id::id_time_ms(id);
    let sessions = ingest
        .ctx
        .archive
        .sessions_by_room(room, 50)
        .await
        .map_err(archive)?;
    for s in sessions
        .iter()
        .filter(|s| s.started_at - SKEW_MS <= at && s.ended_at.is_none_or(|e| at <= e + SKEW_MS))
    {
        if let Some(f) = find_in_vod(ingest, s, id, everywhere).await? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// The comment `id` archived in `session`'s VOD: the segment its time
/// predicts first, then (`everywhere`) every other one (a VOD post may sit
/// anywhere).
async fn find_in_vod(
    ingest: &Ingest,
    session: &danmaku_core::vod::Session,
    id: u64,
    everywhere: bool,
) -> Result<Option<Found>, ApiError> {
    let store = &ingest.ctx.archive;
    let Some(last) = store.last_segment(&session.vod).await.map_err(archive)? else {
        return Ok(None);
    };
    let at = danmaku_core::id::id_time_ms(id);
    let predicted =
        danmaku_core::vod::segment_of(at - session.started_at - session.latency_ms).min(last);
    // A VOD post may sit at any offset; only service and admin tokens (who
    // may delete any comment) pay for a search past the predicted segment.
    let others = if everywhere { last + 1 } else { 0 };
    let order = std::iter::once(predicted).chain((0..others).filter(|n| *n != predicted));
    for n in order {
        let rows = store.read_segment(&session.vod, n).await.map_err(archive)?;
        if let Some(r) = rows.into_iter().find(|r| r.item.id == id) {
            return Ok(Some(Found {
                archived: Some((r.vod.clone(), r.offset_ms)),
                item: r.item,
            }));
        }
    }
    Ok(None)
}

fn store(e: SliceError) -> ApiError {
    tracing::warn!(error = %e, "slice store failed during a deletion");
    ApiError::unavailable()
}

fn archive(e: danmaku_core::ports::ArchiveError) -> ApiError {
    tracing::warn!(error = %e, "archive store failed during a deletion");
    ApiError::unavailable()
}
