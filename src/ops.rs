//! The operations endpoints every node serves whatever its roles: `/healthz`
//! (the process answers), `/readyz` (every store it uses answers) and `/metrics`
//! (Prometheus text, no per-room labels).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use danmaku_core::context::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The process-wide Prometheus recorder. The `metrics` facade has one global
/// recorder per process, so every server in a process (tests run several) shares
/// it; the first call installs it.
pub fn metrics_handle() -> Result<PrometheusHandle, OpsError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race: keep whichever handle got installed.
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle);
        }
        Err(_) if HANDLE.get().is_none() => return Err(OpsError::RecorderTaken),
        Err(_) => {}
    }
    Ok(HANDLE.get().expect("recorder handle set").clone())
}

/// Why the operations endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Something else in this process installed a `metrics` recorder first.
    #[error("a metrics recorder is already installed in this process")]
    RecorderTaken,
}

#[derive(Clone)]
struct Ops {
    ctx: Context,
    metrics: PrometheusHandle,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(ctx: Context, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { ctx, metrics })
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

async fn metrics_text(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
        .into_response()
}
