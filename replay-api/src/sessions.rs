//! VOD sessions: `POST /v1/rooms/{room}/sessions`, `POST /v1/vods/{vod}/end`,
//! `GET /v1/vods/{vod}`, `GET /v1/rooms/{room}/vods`.

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

/// The session as JSON, with `count` when given.
pub(crate) fn session_json(s: &Session, count: Option<u64>) -> serde_json::Value {
    let mut v = json!({
        "vod": s.vod, "room": s.room, "started_at": s.started_at,
        "ended_at": s.ended_at, "latency_ms": s.latency_ms,
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
    }
    let session = Session {
        vod,
        room: room.clone(),
        started_at: now,
        ended_at: None,
        latency_ms,
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
