//! The HTTP app: the routers of the roles this node runs, the operations
//! endpoints, the pages, and the answers for unknown paths and methods.
//!
//! Every answer carries `X-Content-Type-Options: nosniff`; pages (HTML) also a
//! Content-Security-Policy ([`PAGE_CSP`]: scripts, styles and connections from
//! this origin only, no framing) and `X-Frame-Options: DENY` for browsers older
//! than `frame-ancestors`. The pages' scripts and styles are files of their
//! own (`/assets/*`, built by `web/build.mjs`), so the policy needs no
//! `'unsafe-inline'`.
//!
//! Every answer speaks CORS (API.md "Additions of 2026-12"): players and pages
//! usually live on another origin than the API. Both, and the preflights'
//! `204`, come from one layer, [`HeadersLayer`] (`src/headers.rs`).

use crate::headers::HeadersLayer;
use crate::ops;
use axum::http::{header, StatusCode};
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
        .merge(pages(&ctx.settings))
        .fallback(|| async { danmaku_core::error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this path does not take that method"}});
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        // Security headers, CORS and the preflights' 204, in one pass with
        // constant values (src/headers.rs).
        .layer(HeadersLayer::new(&ctx.settings.http));
    // Per-request spans cost a clock read and an allocation per request; only
    // pay for them when someone asked to see them (RUST_LOG=tower_http=debug).
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    }
    app
}

pub use crate::headers::PAGE_CSP;

// The pages built by web/build.mjs from web/src/pages (committed under
// web/dist/pages, so building the binary needs no Node).
include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/web/dist/pages/assets.rs"
));

/// Cache policy of the HTML pages: always revalidated, so a new binary's
/// pages (naming new hashed assets) are seen at once.
const HTML_CACHE: &str = "no-cache";
/// Cache policy of the hashed assets: their names change with their bytes.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

/// The pages for people (API.md "Pages for people"): `/`, `/rooms/{room}`,
/// `/vods/{vod}`, `/admin` (asks for an admin token), their assets under `/assets/` and `/favicon.ico`. The
/// sender limits are written into the pages once, here, so the send box can
/// show them before anything is sent.
fn pages(settings: &danmaku_core::config::Settings) -> Router {
    let fill = |template: &str| -> Arc<str> {
        let limits = &settings.limits;
        template
            .replace("{{max_text_chars}}", &limits.max_text_chars.to_string())
            .replace("{{user_per_sec}}", &limits.user_per_sec.to_string())
            .replace("{{user_burst}}", &limits.user_burst.to_string())
            .into()
    };
    let home = fill(WEB_HOME_HTML);
    let room = fill(WEB_ROOM_HTML);
    let vod = fill(WEB_VOD_HTML);
    let admin = fill(WEB_ADMIN_HTML);
    Router::new()
        .route("/", get(move || html_page(home.clone())))
        .route("/rooms/{room}", get(move || html_page(room.clone())))
        .route("/vods/{vod}", get(move || html_page(vod.clone())))
        .route("/admin", get(move || html_page(admin.clone())))
        .route("/assets/{file}", get(web_asset))
        .route(
            "/favicon.ico",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "image/x-icon"),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    WEB_FAVICON,
                )
            }),
        )
}

async fn html_page(page: Arc<str>) -> Response {
    (
        [(header::CACHE_CONTROL, HTML_CACHE)],
        Html(page.to_string()),
    )
        .into_response()
}

async fn web_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match WEB_ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, ASSET_CACHE),
            ],
            *body,
        )
            .into_response(),
        None => danmaku_core::error::ApiError::not_found("asset").into_response(),
    }
}
