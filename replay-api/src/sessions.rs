//! VOD sessions: `POST /v1/rooms/{room}/sessions`, `POST /v1/vods/{vod}/end`,
//! `GET /v1/vods/{vod}`, `PATCH /v1/vods/{vod}` (`video_url`),
//! `GET /v1/rooms/{room}/vods`, and `GET /v1/vods` (live and recent sessions of
//! every room, for the home page; the project's own addition, documented in
//! docs/API_CHOICES.md; served from [`crate::listing`]'s snapshot).

use crate::listing::MAX_LIST_LIMIT;
use crate::{check_vod, store_error, Replay};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_core::auth::{check_read_access, require_privileged};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::ArchiveError;
use danmaku_core::vod::Session;
use danmaku_ingest::json::JsonObject;
use danmaku_ingest::{check_room, read_json};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// Most bytes of a session's `video_url`.
pub const MAX_VIDEO_URL_BYTES: usize = 2048;

/// Sessions per list of `GET /v1/vods` unless `limit` says otherwise.
const DEFAULT_LIST_LIMIT: usize = 20;

/// The session as JSON, with `count` when given.
pub(crate) fn session_json(s: &Session, count: Option<u64>) -> serde_json::Value {
    let mut v = json!({
        "vod": s.vod, "room": s.room, "started_at": s.started_at,
        "ended_at": s.ended_at, "latency_ms": s.latency_ms,
        "video_url": s.video_url,
    });
    if let Some(c) = count {
        v["count"] = json!(c);
    }
    v
}

pub(crate) async fn start(
    State(r): State<Arc<Replay>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let claims = require_privileged(&r.ctx.signer, &headers)?;
    let mut obj: JsonObject =
        read_json(&headers, body, r.ctx.settings.limits.max_body_bytes).await?;
    let vod = match obj.take("vod", ErrorCode::InvalidVod)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(v)) => Some(v),
        Some(_) => return Err(ApiError::new(ErrorCode::InvalidJson, "vod is a string")),
    };
    let latency = obj.take("latency_ms", ErrorCode::InvalidOffset)?;
    let latency_ms = match latency {
        None | Some(serde_json::Value::Null) => 0,
        // Any number that is not a whole number in range is an offset error.
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "latency_ms is a number of milliseconds",
            ))
        }
    };
    let video_url = video_url_member(&mut obj)?.flatten();
    if !(0..=3_600_000).contains(&latency_ms) {
        return Err(ApiError::new(
            ErrorCode::InvalidOffset,
            "latency_ms is within 0..=3600000",
        ));
    }
    let now = danmaku_core::now_ms();
    let vod = match vod {
        Some(v) => {
            check_vod(&v)?;
            v
        }
        None => format!("v{}", r.ctx.ids.next_id(now)),
    };
    // Back-to-back sessions: a new session ends the room's open one.
    let open = r
        .ctx
        .archive
        .sessions_by_room(&room, 10)
        .await
        .map_err(store_error)?;
    for s in open.iter().filter(|s| s.ended_at.is_none()) {
        match r.ctx.archive.end_session(&s.vod, now).await {
            Ok(_) | Err(ArchiveError::AlreadyEnded) => {}
            Err(e) => return Err(store_error(e)),
        }
        crate::cache::forget_meta(&r, &s.vod).await;
        r.listing.invalidate();
    }
    let session = Session {
        vod,
        room: room.clone(),
        started_at: now,
        ended_at: None,
        latency_ms,
        video_url,
    };
    match r.ctx.archive.create_session(&session).await {
        Ok(()) => {}
        Err(ArchiveError::AlreadyExists) => {
            return Err(ApiError::new(
                ErrorCode::InvalidVod,
                "a VOD with this id already exists",
            ))
        }
        Err(e) => return Err(store_error(e)),
    }
    r.listing.invalidate();
    tracing::info!(room, vod = session.vod, by = claims.sub, "session started");
    Ok((StatusCode::CREATED, Json(session_json(&session, None))).into_response())
}

pub(crate) async fn end(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    let claims = require_privileged(&r.ctx.signer, &headers)?;
    let session = match r
        .ctx
        .archive
        .end_session(&vod, danmaku_core::now_ms())
        .await
    {
        Ok(s) => s,
        Err(ArchiveError::NotFound) => return Err(ApiError::not_found("vod")),
        Err(ArchiveError::AlreadyEnded) => {
            return Err(ApiError::new(ErrorCode::VodEnded, "this VOD already ended"))
        }
        Err(e) => return Err(store_error(e)),
    };
    // This node's view of the VOD is stale now (others notice within meta_ttl_ms).
    crate::cache::forget_meta(&r, &vod).await;
    r.listing.invalidate();
    // Its comments move to the archive now, not after the hot retention.
    if let Err(e) = r
        .ctx
        .slices
        .expedite(&session.room, session.ended_at.unwrap_or(i64::MAX))
        .await
    {
        tracing::warn!(error = %e, vod, "could not expedite the room's slices; they archive on schedule");
    }
    tracing::info!(vod, by = claims.sub, "session ended");
    Ok(Json(session_json(&session, None)).into_response())
}

pub(crate) async fn get(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let s = r
        .ctx
        .archive
        .get_session(&vod)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("vod"))?;
    // Read fresh (not the cached view): a page loads this first, then the
    // segments by their versioned URLs (API.md, Segment versions).
    let version = r.ctx.archive.version(&vod).await.map_err(store_error)?;
    let segments = r.ctx.archive.segments(&vod).await.map_err(store_error)?;
    let segment_version =
        crate::cache::segment_version(&version, r.ctx.settings.replay.density_cap);
    let mut v = session_json(&s, Some(version.count));
    v["segments"] = segments
        .iter()
        .map(|n| json!({"n": n, "version": segment_version}))
        .collect();
    Ok(Json(v).into_response())
}

pub(crate) async fn list(
    State(r): State<Arc<Replay>>,
    Path(room): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let sessions = r
        .ctx
        .archive
        .sessions_by_room(&room, 100)
        .await
        .map_err(store_error)?;
    let vods: Vec<_> = sessions.iter().map(|s| session_json(s, None)).collect();
    Ok(Json(json!({ "vods": vods })).into_response())
}

/// Member `video_url` of a body: `None` when absent, `Some(None)` for `null`,
/// `Some(Some(url))` for a valid URL; `400 invalid_json` for anything else.
fn video_url_member(obj: &mut JsonObject) -> Result<Option<Option<String>>, ApiError> {
    match obj.take("video_url", ErrorCode::InvalidJson)? {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        Some(serde_json::Value::String(url)) if valid_video_url(&url) => Ok(Some(Some(url))),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            "video_url is null or an http(s) URL of at most 2048 bytes",
        )),
    }
}

/// Whether `url` may be a session's `video_url`: at most
/// [`MAX_VIDEO_URL_BYTES`], `http://` or `https://` (any case) and a host, no
/// user info, no whitespace, control characters or characters a URL never
/// holds unescaped (double quote, angle brackets, backslash, caret, backtick,
/// braces, bar). The pages put it in a `<video src>`, so nothing else
/// (`javascript:`, `data:`) gets through.
pub fn valid_video_url(url: &str) -> bool {
    if url.len() > MAX_VIDEO_URL_BYTES {
        return false;
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    });
    !host.is_empty()
        && !host.starts_with(':')
        && !authority.contains('@')
        && !url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "\"<>\\^`{|}".contains(c))
}

/// `PATCH /v1/vods/{vod}` (service/admin), body `{"video_url": "..."}` (or
/// `null` to clear it): sets the session's `video_url`, live or ended; `200`
/// the session.
pub(crate) async fn patch(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    let claims = require_privileged(&r.ctx.signer, &headers)?;
    let mut obj: JsonObject =
        read_json(&headers, body, r.ctx.settings.limits.max_body_bytes).await?;
    let Some(video_url) = video_url_member(&mut obj)? else {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body sets video_url (a URL, or null to clear it)",
        ));
    };
    let session = match r
        .ctx
        .archive
        .set_video_url(&vod, video_url.as_deref())
        .await
    {
        Ok(s) => s,
        Err(ArchiveError::NotFound) => return Err(ApiError::not_found("vod")),
        Err(e) => return Err(store_error(e)),
    };
    crate::cache::forget_meta(&r, &vod).await;
    r.listing.invalidate();
    tracing::info!(
        vod,
        by = claims.sub,
        set = session.video_url.is_some(),
        "video_url changed"
    );
    Ok(Json(session_json(&session, None)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    token: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/vods[?limit=1..100]` → `{"live": [session...], "recent":
/// [session...]}`: the sessions not ended (the live rooms) and the recent
/// ended ones of every room, newest first, at most `limit` (default 20) each,
/// from this node's snapshot ([`crate::listing`], `replay.list_ttl_ms`).
pub(crate) async fn list_all(
    State(r): State<Arc<Replay>>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let limit = q
        .limit
        .as_deref()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    // One snapshot (`replay.list_ttl_ms`) serves every limit.
    let snap = r
        .listing
        .get(r.ctx.archive.as_ref())
        .await
        .map_err(store_error)?;
    let live: Vec<_> = snap
        .live
        .iter()
        .take(limit)
        .map(|s| session_json(s, None))
        .collect();
    let recent: Vec<_> = snap
        .recent
        .iter()
        .take(limit)
        .map(|s| session_json(s, None))
        .collect();
    Ok(Json(json!({ "live": live, "recent": recent })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_urls() {
        for ok in [
            "https://cdn.example/live/a.m3u8",
            "HTTP://cdn.example:8080/a.mp4?x=1&y=2#t=3",
            "http://127.0.0.1/v.mp4",
            "http://[::1]:8080/v.mp4",
            "https://example.com",
            "https://例え.jp/動画.mp4",
        ] {
            assert!(valid_video_url(ok), "{ok}");
        }
        let long = format!("https://a.example/{}", "x".repeat(MAX_VIDEO_URL_BYTES));
        let just = format!("https://a.example/{}", "x".repeat(MAX_VIDEO_URL_BYTES - 18));
        assert_eq!(just.len(), MAX_VIDEO_URL_BYTES);
        assert!(valid_video_url(&just));
        for bad in [
            "",
            "javascript:alert(1)",
            "data:video/mp4;base64,AAAA",
            "ftp://a.example/v.mp4",
            "//a.example/v.mp4",
            "https://",
            "https:///path",
            "https://:80/x",
            "https://user:pw@a.example/v.mp4",
            "https://a.example/a b.mp4",
            "https://a.example/\n",
            "https://a.example/\"onerror=\"x",
            "https://a.example/<script>",
            "https://a.example/\u{7f}",
            long.as_str(),
        ] {
            assert!(!valid_video_url(bad), "{bad:?}");
        }
    }
}
