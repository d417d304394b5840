//! The HTTP app: the routers of the roles this node runs, the operations
//! endpoints, the pages, and the answers for unknown paths and methods.
//!
//! Every answer carries `X-Content-Type-Options: nosniff`; pages (HTML) also a
//! Content-Security-Policy ([`PAGE_CSP`]: scripts, styles and connections from
//! this origin only, no framing) and `X-Frame-Options: DENY` for browsers older
//! than `frame-ancestors`. The page's script and style are files of their own
//! (`/app.js`, `/app.css`) so that the policy needs no `'unsafe-inline'`.

use crate::ops;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
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
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("web/app.js")) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("web/app.css")) }),
        )
        .fallback(|| async { danmaku_core::error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this path does not take that method"}});
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        .layer(axum::middleware::map_response(security_headers));
    // Per-request spans cost a clock read and an allocation per request; only
    // pay for them when someone asked to see them (RUST_LOG=tower_http=debug).
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    }
    app
}

/// The Content-Security-Policy of every page: its script, style and
/// connections (fetch and the WebSocket) from this origin only, nothing else
/// loaded, and no framing by any site (`frame-ancestors 'none'`).
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response()
}

/// `nosniff` on every answer; the page policy on HTML ones.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}
