//! `danmaku-replay-api`: VOD sessions and replay.
//!
//! - `sessions`: start, end, get and list VOD sessions (API.md, VODs); ending one
//!   makes its room's slices due for archiving at once.
//! - `replay`: the range API and immutable 6-minute segments, with ETag / 304 /
//!   Cache-Control, served from the [`danmaku_core::ports::ReplayCache`].
//! - [`density`]: the per-segment density cap (pure, unit-tested).

pub mod density;
mod replay;
mod sessions;

use axum::routing::{get, post};
use axum::Router;
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::valid_id;
use danmaku_ingest::Ingest;
use std::sync::Arc;

/// The replay role's shared state.
pub struct Replay {
    pub ctx: Context,
    pub ingest: Arc<Ingest>,
    /// Serialises cold loads per segment key (one ArchiveStore read under a stampede).
    loads: moka::future::Cache<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Replay {
    pub fn new(ctx: Context, ingest: Arc<Ingest>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            ingest,
            loads: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(60))
                .build(),
        })
    }
}

/// The replay-api routes.
pub fn router(replay: Arc<Replay>) -> Router {
    Router::new()
        .route("/v1/rooms/{room}/sessions", post(sessions::start))
        .route("/v1/rooms/{room}/vods", get(sessions::list))
        .route("/v1/vods/{vod}", get(sessions::get))
        .route("/v1/vods/{vod}/end", post(sessions::end))
        .route("/v1/vods/{vod}/danmaku", get(replay::range))
        .route("/v1/vods/{vod}/segments/{n}", get(replay::segment))
        .with_state(replay)
}

pub(crate) fn check_vod(vod: &str) -> Result<(), ApiError> {
    if valid_id(vod) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidVod,
            "vod ids match [A-Za-z0-9_-]{1,64}",
        ))
    }
}

pub(crate) fn store_error(e: danmaku_core::ports::ArchiveError) -> ApiError {
    tracing::warn!(error = %e, "archive store failed");
    ApiError::unavailable()
}
