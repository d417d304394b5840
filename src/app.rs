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
//! Every answer speaks CORS ([`cors_layer`], API.md "Additions of 2026-12"):
//! players and pages usually live on another origin than the API.

use crate::ops;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use danmaku_core::context::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

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
        .layer(axum::middleware::map_response(security_headers))
        .layer(cors_layer(&ctx.settings.http))
        .layer(axum::middleware::from_fn(preflight_no_content));
    // Per-request spans cost a clock read and an allocation per request; only
    // pay for them when someone asked to see them (RUST_LOG=tower_http=debug).
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    }
    app
}

/// The Content-Security-Policy of every page: its script, style and
/// connections (fetch and the WebSocket) from this origin only, a session's
/// `video_url` from anywhere (media only), nothing else loaded, and no framing
/// by any site (`frame-ancestors 'none'`).
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; media-src 'self' https: http:; base-uri 'none'; \
     form-action 'self'; \
     frame-ancestors 'none'";

/// How long a browser may reuse a preflight's answer (Chromium caps it at 2 h).
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7200);

/// The CORS layer of every endpoint: `http.cors_origins` (`*` or a list), the
/// methods and request headers the API takes, and the answer headers a page
/// must be able to read (`ETag` for revalidation, `Retry-After` after 429/503,
/// `Location` of a 301 to a segment's current version). No credentials: the
/// API uses no cookies. `Vary` names `Origin` and the preflight headers.
pub fn cors_layer(http: &danmaku_core::config::HttpSettings) -> CorsLayer {
    let origins = if http.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked when the configuration loaded; a value that is still not a
        // header value allows nothing rather than failing the start.
        AllowOrigin::list(
            http.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([header::ETAG, header::RETRY_AFTER, header::LOCATION])
        .max_age(PREFLIGHT_MAX_AGE)
        .vary([
            header::ORIGIN,
            header::ACCESS_CONTROL_REQUEST_METHOD,
            header::ACCESS_CONTROL_REQUEST_HEADERS,
        ])
}

/// The CORS layer answers every `OPTIONS` itself with `200` and no body;
/// API.md asks for `204 No Content` there.
async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

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
