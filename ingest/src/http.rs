//! HTTP routes of the ingest role.

use crate::{Ingest, SendRequest, Target};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use danmaku_core::auth::{authenticate, Role};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::valid_id;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The ingest routes.
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/rooms/{room}/danmaku", post(send))
        .route("/v1/auth/guest", post(guest))
        .route("/v1/admin/rooms/{room}/bans", post(ban))
        .with_state(ingest)
}

/// Reads a JSON body of at most `limit` bytes: `payload_too_large` past it,
/// `invalid_json` if it does not parse as `T`. An empty body parses as `{}`.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is limited to {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON for this endpoint: {e}"),
        )
    })
}

/// `invalid_room` unless `room` matches `[A-Za-z0-9_-]{1,64}`.
pub fn check_room(room: &str) -> Result<(), ApiError> {
    if valid_id(room) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRoom,
            "room ids match [A-Za-z0-9_-]{1,64}",
        ))
    }
}

async fn send(
    State(ingest): State<Arc<Ingest>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let claims = authenticate(&ingest.ctx.signer, &headers, None)?;
    let req: SendRequest =
        read_json(&headers, body, ingest.ctx.settings.limits.max_body_bytes).await?;
    let id = ingest.submit(&claims, Target::Live { room }, req).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id.to_string()}))).into_response())
}

async fn guest(State(ingest): State<Arc<Ingest>>) -> Result<Response, ApiError> {
    let auth = &ingest.ctx.settings.auth;
    if !auth.guest {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "guest access is disabled",
        ));
    }
    let user = format!("guest-{:08x}", rand::random::<u32>());
    let token = ingest.ctx.signer.issue(
        &user,
        None,
        Role::Viewer,
        danmaku_core::now_ms() / 1000,
        auth.guest_ttl_secs,
    );
    Ok(Json(json!({"token": token, "user": user})).into_response())
}

#[derive(Deserialize)]
struct BanRequest {
    user: String,
    seconds: u64,
}

async fn ban(
    State(ingest): State<Arc<Ingest>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let claims = authenticate(&ingest.ctx.signer, &headers, None)?;
    if claims.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "bans need an admin token",
        ));
    }
    let req: BanRequest =
        read_json(&headers, body, ingest.ctx.settings.limits.max_body_bytes).await?;
    if req.user.is_empty() || req.user.len() > 128 {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "user is a non-empty string",
        ));
    }
    let until = ingest.ban(&room, &req.user, req.seconds);
    tracing::info!(
        room,
        user = req.user,
        seconds = req.seconds,
        by = claims.sub,
        "ban"
    );
    Ok(Json(json!({"room": room, "user": req.user, "until": if req.seconds == 0 { None } else { Some(until) }})).into_response())
}
