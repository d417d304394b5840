//! The role lifecycle: start the roles this node runs, serve until told to
//! stop, then stop them in the one order that keeps every acknowledged comment:
//!
//! 1. HTTP: no new connections; open WebSockets closed with 1001; in-flight
//!    requests get up to `server.shutdown_grace_secs`. After this nothing new
//!    can be acknowledged.
//! 2. Writer: the live role's Bus consumer drains what the Bus holds into the
//!    SliceStore and commits its offsets, so every 202 is in the SliceStore.
//! 3. Archiver: its loop stops between batches.
//! 4. Final archive: everything still live in the SliceStore goes to the
//!    ArchiveStore and Parquet (the embedded default's promise that a stopped
//!    laptop node leaves nothing behind).
//!
//! Reordering any two steps loses data: archiving before the writer drained
//! misses the last comments; stopping the writer before HTTP lets a 202 through
//! that nobody writes. `tests/lifecycle.rs` checks the order in-process.

use crate::app::{self, Roles};
use crate::engines::{ContextError, EngineSelection};
use crate::ops::{self, OpsError};
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A step of the shutdown, in the order [`Server::run`] takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The HTTP server stopped accepting and finished its connections.
    HttpStopped,
    /// The live role's writer drained the Bus into the SliceStore.
    WriterDrained,
    /// The archiver's loop stopped.
    ArchiverStopped,
    /// Everything still live was archived (or the attempt ended; see the log).
    FinalArchive,
}

/// What a shutdown did, in order.
#[derive(Clone, Debug, Default)]
pub struct ShutdownReport {
    /// The steps taken, in the order they completed.
    pub stages: Vec<Stage>,
    /// Rows the final archive wrote, when the archive role ran and it succeeded.
    pub archived_rows: Option<u64>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The stores the settings select could not be opened.
    #[error("opening the stores")]
    Engines(#[from] ContextError),
    /// The ingest role could not be built (the word filter).
    #[error("building the ingest role")]
    Ingest(#[from] danmaku_ingest::filter::FilterError),
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The configured `server.listen`.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Ops(#[from] OpsError),
}

/// One node: its stores, its listener, and the roles the settings name.
pub struct Server {
    ctx: Context,
    listener: TcpListener,
    addr: SocketAddr,
}

/// The listen backlog: connections the kernel completes before the accept
/// loop takes them. A reconnect storm (every viewer of a node at once) fills a
/// short one and the kernel drops SYNs, which clients retry only after 1, 3,
/// 7 s (measured: docs/benchmarks/connections.md); the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` (`host:port`, resolved; the first address that binds) with
/// [`LISTEN_BACKLOG`].
async fn bind_listener(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    }))
}

impl Server {
    /// Opens the stores the settings select and binds `server.listen` (port 0
    /// picks a free one). Nothing is served until [`Server::run`].
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let ctx = EngineSelection::build(settings).await?;
        let listen = ctx.settings.server.listen.clone();
        let listener = bind_listener(&listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        Ok(Self {
            ctx,
            listener,
            addr,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The adapters and settings the roles share (tests sign tokens and read
    /// stores through it).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Serves until `shutdown` completes, then stops the roles in the order of
    /// the module documentation.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<ShutdownReport, StartError> {
        let Server {
            ctx,
            listener,
            addr,
        } = self;
        let s = ctx.settings.clone();
        let metrics = ops::metrics_handle()?;
        let http_stop = CancellationToken::new();
        let writer_stop = CancellationToken::new();
        let archive_stop = CancellationToken::new();
        let grace = Duration::from_secs(s.server.shutdown_grace_secs.max(1));
        // Before any role starts, so a bad `server.metrics_listen` stops nothing.
        ops::serve_separately(&ctx, metrics.clone(), http_stop.clone(), grace).await?;

        // Live and replay use ingest's checks (auth, validation, limits) for the
        // sends they take, so it exists whichever roles run.
        let moderation = crate::engines::moderation_store(&s)?;
        let ingest = danmaku_ingest::Ingest::with_moderation(ctx.clone(), moderation)?;
        let mut roles = Roles {
            ingest: None,
            live: None,
            replay: None,
        };
        if s.runs("ingest") {
            roles.ingest = Some(ingest.clone());
            let ingest = ingest.clone();
            let stop = http_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => ingest.housekeeping(),
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        let mut live_task = None;
        if s.runs("live") {
            let live = danmaku_live::Live::new(ctx.clone(), ingest.clone(), http_stop.clone());
            live_task = Some(tokio::spawn(
                live.clone().run_background(writer_stop.clone(), grace),
            ));
            roles.live = Some(live);
        }
        if s.runs("replay-api") {
            roles.replay = Some(danmaku_replay_api::Replay::new(ctx.clone(), ingest.clone()));
        }
        let mut archive_task = None;
        if s.runs("archive") {
            archive_task = Some(tokio::spawn(danmaku_archive::run(
                ctx.clone(),
                archive_stop.clone(),
            )));
        }
        if s.server.demo {
            if let Err(e) = ensure_demo_session(&ctx).await {
                tracing::warn!(error = %e, "could not open the demo session");
            }
        }
        let app = app::build(&ctx, &roles, metrics);
        tracing::info!(%addr, roles = ?s.server.roles, data_dir = %s.server.data_dir.display(), "danmaku serving");

        let stop = http_stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections");
            stop.cancel();
        });
        let server = tokio::spawn(danmaku_core::serve::serve_with(
            listener,
            app,
            http_stop.clone(),
            grace,
            danmaku_core::serve::ServeOptions::from_settings(&s),
        ));
        http_stop.cancelled().await;
        if server.await.is_err() {
            tracing::error!("server task failed");
        }
        let mut report = ShutdownReport::default();
        report.stages.push(Stage::HttpStopped);
        // Everything acknowledged reaches the SliceStore, then the archive.
        writer_stop.cancel();
        if let Some(t) = live_task {
            let _ = t.await;
            report.stages.push(Stage::WriterDrained);
        }
        archive_stop.cancel();
        if let Some(t) = archive_task {
            let _ = t.await;
            report.stages.push(Stage::ArchiverStopped);
            // The embedded default archives everything still live on shutdown.
            match danmaku_archive::drain(&ctx, grace).await {
                Ok(rows) => {
                    tracing::info!(rows, "archived everything still live");
                    report.archived_rows = Some(rows);
                }
                Err(e) => {
                    tracing::error!(error = %e, "final archive incomplete; it resumes on the next start")
                }
            }
            report.stages.push(Stage::FinalArchive);
        }
        tracing::info!("bye");
        Ok(report)
    }
}

/// The demo room `demo` gets an open session, so a fresh laptop node has a VOD
/// to replay.
async fn ensure_demo_session(ctx: &Context) -> Result<(), danmaku_core::ports::ArchiveError> {
    let open = ctx.archive.sessions_by_room("demo", 10).await?;
    if open.iter().any(|s| s.ended_at.is_none()) {
        return Ok(());
    }
    let now = danmaku_core::now_ms();
    ctx.archive
        .create_session(&danmaku_core::vod::Session {
            vod: format!("demo-{now}"),
            room: "demo".into(),
            started_at: now,
            ended_at: None,
            latency_ms: 0,
            video_url: None,
        })
        .await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
