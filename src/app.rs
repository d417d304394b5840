//! The HTTP app: the routers of the roles this node runs, the operations
//! endpoints, the pages, and the answers for unknown paths and methods.

use crate::ops;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use danmaku_core::context::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// The role values whose routers the app serves; `None` for a role this node
/// does not run.
pub struct Roles {
    /// Intake (`POST .../danmaku`, bans, guest tokens).
    pub ingest: Option<Arc<danmaku_ingest::Ingest>>,
    /// WebSocket, polling, big keys.
    pub live: Option<Arc<danmaku_live::Live>>,
    /// Sessions, replay formats, VOD posts.
    pub replay: Option<Arc<danmaku_replay_api::Replay>>,
}

/// Builds the whole HTTP app of one node.
pub fn build(ctx: &Context, roles: &Roles, metrics: PrometheusHandle) -> Router {
    let mut app = Router::new();
    if let Some(ingest) = &roles.ingest {
        app = app.merge(danmaku_ingest::router(ingest.clone()));
    }
    if let Some(live) = &roles.live {
        app = app.merge(danmaku_live::router(live.clone()));
    }
    if let Some(replay) = &roles.replay {
        app = app.merge(danmaku_replay_api::router(replay.clone()));
    }
    app = app
        .merge(ops::router(ctx.clone(), metrics))
        .route("/", get(|| async { Html(include_str!("web/index.html")) }))
        .fallback(|| async { danmaku_core::error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this path does not take that method"}});
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        });
    // Per-request spans cost a clock read and an allocation per request; only
    // pay for them when someone asked to see them (RUST_LOG=tower_http=debug).
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    }
    app
}
