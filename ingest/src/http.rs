//! HTTP routes of the ingest role (the admin API is in `admin`).

use crate::json::JsonObject;
use crate::{Ingest, SendRequest, Target};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use danmaku_core::auth::authenticate;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::valid_id;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

/// The client address of a request (see [`crate::client`]); `None` only when
/// the router runs without the server loop and no trusted header names one.
struct ClientIp(Option<IpAddr>);

impl FromRequestParts<Arc<Ingest>> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        ingest: &Arc<Ingest>,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(crate::client::client_ip(
            &parts.headers,
            &parts.extensions,
            &ingest.ctx.settings.limits.trusted_proxy_header,
        )))
    }
}

/// The ingest routes.
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/rooms/{room}/danmaku", post(send))
        .route("/v1/auth/guest", post(guest))
        .route(
            "/v1/rooms/{room}/danmaku/{id}",
            axum::routing::delete(crate::delete::delete_in_room),
        )
        .route(
            "/v1/vods/{vod}/danmaku/{id}",
            axum::routing::delete(crate::delete::delete_in_vod),
        )
        .merge(crate::admin::routes())
        .with_state(ingest)
}

/// Reads a JSON body of at most `limit` bytes: `payload_too_large` past it,
/// `invalid_json` if it is not a JSON object that parses as `T`. An empty body
/// parses as `{}`.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    use danmaku_core::body::{read_limited, BodyError};
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
    // One buffer, each frame copied and dropped as it arrives (frames kept
    // alive would pin hyper's read buffer). The server loop answers a body that
    // came too slowly with 408 whatever this returns.
    let bytes = read_limited(body, limit).await.map_err(|e| match e {
        BodyError::TooLarge { .. } => too_large(),
        BodyError::TimedOut => ApiError::new(
            ErrorCode::InvalidJson,
            "the body did not arrive in time; send it at once",
        ),
        BodyError::Failed(m) => ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body could not be read: {m}"),
        ),
    })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    // Every body of the API is an object; serde would take an array for a struct.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body is a JSON object",
        ));
    }
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
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let claims = authenticate(&ingest.ctx.signer, &headers, None)?;
    let mut obj: JsonObject =
        read_json(&headers, body, ingest.ctx.settings.limits.max_body_bytes).await?;
    let req = SendRequest::from_object(&mut obj)?;
    let id = ingest
        .submit_from(&claims, client, Target::Live { room }, req)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id.to_string()}))).into_response())
}

async fn guest(
    State(ingest): State<Arc<Ingest>>,
    ClientIp(client): ClientIp,
) -> Result<Response, ApiError> {
    let (token, user) = ingest.mint_guest(client).await?;
    Ok(Json(json!({"token": token, "user": user})).into_response())
}
