//! The operations endpoints every node serves whatever its roles: `/healthz`
//! (the process answers), `/readyz` (every store it uses answers) and `/metrics`
//! (Prometheus text, no per-room labels).
//!
//! `/metrics` can be kept from the public: `server.metrics_token` makes it
//! answer only `Authorization: Bearer <token>` (else `401 unauthorized`), and
//! `server.metrics_listen` moves it off the public listener onto an address of
//! its own ([`serve_separately`]; `/healthz` and `/readyz` are served there too).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The process-wide Prometheus recorder. The `metrics` facade has one global
/// recorder per process, so every server in a process (tests run several) shares
/// it; the first call installs it.
pub fn metrics_handle() -> Result<PrometheusHandle, OpsError> {
    // Installing the recorder and remembering its handle happen under one lock,
    // so a second server starting at the same moment in this process (tests)
    // gets the handle instead of seeing the recorder installed but no handle yet.
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*slot {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| OpsError::RecorderTaken)?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Why the operations endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Something else in this process installed a `metrics` recorder first.
    #[error("a metrics recorder is already installed in this process")]
    RecorderTaken,
    /// `server.metrics_listen` could not be bound.
    #[error("binding server.metrics_listen {addr}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Ops {
    ctx: Context,
    metrics: PrometheusHandle,
}

/// `/healthz`, `/readyz` and, unless `server.metrics_listen` gives it an
/// address of its own, `/metrics`.
pub fn router(ctx: Context, metrics: PrometheusHandle) -> Router {
    let separate = !ctx.settings.server.metrics_listen.is_empty();
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if !separate {
        r = r.route("/metrics", get(metrics_text));
    }
    r.with_state(Ops { ctx, metrics })
}

/// With `server.metrics_listen` set: binds it and serves `/metrics`, `/healthz`
/// and `/readyz` there until `stop`. Nothing when it is empty.
pub async fn serve_separately(
    ctx: &Context,
    metrics: PrometheusHandle,
    stop: CancellationToken,
    grace: Duration,
) -> Result<(), OpsError> {
    let addr = ctx.settings.server.metrics_listen.clone();
    if addr.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| OpsError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| OpsError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops {
            ctx: ctx.clone(),
            metrics,
        })
        .fallback(|| async { ApiError::not_found("route") });
    // A few scrapers and probes: a small budget of its own.
    let opts = danmaku_core::serve::ServeOptions {
        max_connections: 64,
        max_connections_per_ip: 0,
        other_fds: 0,
        ..danmaku_core::serve::ServeOptions::from_settings(&ctx.settings)
    };
    tracing::info!(addr = %local, "metrics listening");
    tokio::spawn(danmaku_core::serve::serve_with(
        listener, app, stop, grace, opts,
    ));
    Ok(())
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let ctx = &ops.ctx;
    let (bus, slices, archive) =
        tokio::join!(ctx.bus.ready(), ctx.slices.ready(), ctx.archive.ready());
    let body = serde_json::json!({"bus": bus, "slices": slices, "archive": archive});
    let status = if bus && slices && archive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    let token = &ops.ctx.settings.server.metrics_token.0;
    if !token.is_empty() {
        let given = danmaku_core::auth::bearer(&headers, None).unwrap_or_default();
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(
                ErrorCode::Unauthorized,
                "/metrics needs Authorization: Bearer <server.metrics_token>",
            )
            .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
        .into_response()
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
