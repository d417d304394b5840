//! The `danmaku` binary: command line, configuration and role wiring only.
//! `serve` runs any subset of the roles (ingest, live, archive, replay-api) in one
//! process on one listener; `token` prints a signed token; `config` prints the
//! effective configuration. The roles live in their crates.

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use danmaku::engines::EngineSelection;
use danmaku_core::auth::load_secret;
use danmaku_core::auth::Role;
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "danmaku",
    version,
    about = "Live-stream bullet comments: ingest, live fan-out, archive and VOD replay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (all roles with embedded defaults unless configured otherwise).
    Serve(ServeArgs),
    /// Print a token signed with the configured secret.
    Token(TokenArgs),
    /// Print the effective configuration (secrets masked).
    Config(ConfigArgs),
    /// Archive maintenance: ScyllaDB schema and Parquet compaction.
    #[command(subcommand)]
    Archive(ArchiveCmd),
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Apply infra/cql/schema.cql to the configured ScyllaDB (idempotent).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Merge one hour's Parquet files into one, atomically (safe to rerun, and
    /// while the archiver runs).
    Compact {
        /// The hour, UTC: YYYY-MM-DDTHH.
        #[arg(long)]
        hour: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file (also DANMAKU_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory for the embedded stores.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Comma-separated roles: ingest,live,archive,replay-api (default all).
    #[arg(long, value_delimiter = ',')]
    roles: Option<Vec<String>>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// User id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// viewer, service or admin.
    #[arg(long, default_value = "viewer")]
    role: String,
    /// Lifetime: 90s, 30m, 24h, 7d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding the generated secret, when none is configured.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ConfigArgs {
    #[arg(long)]
    config: Option<PathBuf>,
}

fn load_settings(config: Option<PathBuf>) -> anyhow::Result<Settings> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = config.or_else(|| env.get("DANMAKU_CONFIG").map(PathBuf::from));
    Ok(Settings::load(file.as_deref(), &env)?)
}

fn parse_ttl(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().with_context(|| format!("bad ttl {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad ttl unit in {s:?}: use s, m, h or d"),
    };
    Ok(n * mult)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Serve(ServeArgs::default())) {
        Cmd::Serve(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(args))
        }
        Cmd::Token(args) => {
            let mut settings = load_settings(args.config)?;
            if let Some(d) = args.data_dir {
                settings.server.data_dir = d;
            }
            let role = Role::parse(&args.role).with_context(|| {
                format!("unknown role {:?}: viewer, service or admin", args.role)
            })?;
            let secret = load_secret(&settings.auth.secret.0, &settings.server.data_dir)
                .map_err(|e| anyhow::anyhow!("auth secret: {e}"))?;
            let signer = danmaku_core::auth::TokenSigner::new(secret.as_bytes());
            let token = signer.issue(
                &args.user,
                args.name.as_deref(),
                role,
                danmaku_core::now_ms() / 1000,
                parse_ttl(&args.ttl)?,
            );
            println!("{token}");
            Ok(())
        }
        Cmd::Config(args) => {
            print!("{}", load_settings(args.config)?.to_toml());
            Ok(())
        }
        Cmd::Archive(cmd) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(archive_cmd(cmd))
        }
    }
}

async fn archive_cmd(cmd: ArchiveCmd) -> anyhow::Result<()> {
    match cmd {
        ArchiveCmd::Migrate { config } => {
            let s = load_settings(config)?;
            danmaku_scylla::migrate(&s.scylla).await?;
            println!("schema applied to keyspace {}", s.scylla.keyspace);
        }
        ArchiveCmd::Compact { hour, config } => {
            let s = load_settings(config)?;
            let objects =
                danmaku_core::ports::object_store_from_settings(&s.archive, &s.server.data_dir)?;
            let report = danmaku_archive::compact_hour(&*objects, &hour).await?;
            println!(
                "hour {}: merged {} files, {} rows, output {}",
                report.hour,
                report.files_merged,
                report.rows,
                report.output.as_deref().unwrap_or("(nothing to do)")
            );
        }
    }
    Ok(())
}

#[derive(Clone)]
struct Ops {
    ctx: Context,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut settings = load_settings(args.config)?;
    if let Some(l) = args.listen {
        settings.server.listen = l;
    }
    if let Some(d) = args.data_dir {
        settings.server.data_dir = d;
    }
    if let Some(r) = args.roles {
        settings.server.roles = r;
        let env = BTreeMap::new();
        // Re-validate the roles given on the command line.
        let check = Settings::load(None, &env).map(|mut s| {
            s.server.roles = settings.server.roles.clone();
            s
        })?;
        for role in &check.server.roles {
            if role != "all" && !danmaku_core::config::ALL_ROLES.contains(&role.as_str()) {
                bail!(
                    "unknown role {role:?}; roles are {:?} or all",
                    danmaku_core::config::ALL_ROLES
                );
            }
        }
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let ctx = EngineSelection::build(settings)
        .await
        .context("opening the stores")?;
    let s = ctx.settings.clone();
    let listener = tokio::net::TcpListener::bind(&s.server.listen)
        .await
        .with_context(|| format!("binding {}", s.server.listen))?;
    let addr = listener.local_addr()?;

    let http_stop = CancellationToken::new();
    let writer_stop = CancellationToken::new();
    let archive_stop = CancellationToken::new();
    let grace = Duration::from_secs(s.server.shutdown_grace_secs.max(1));

    let ingest = danmaku_ingest::Ingest::new(ctx.clone())?;
    let mut app = Router::new();
    if s.runs("ingest") {
        app = app.merge(danmaku_ingest::router(ingest.clone()));
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
        app = app.merge(danmaku_live::router(live.clone()));
        live_task = Some(tokio::spawn(
            live.run_background(writer_stop.clone(), grace),
        ));
    }
    if s.runs("replay-api") {
        app = app.merge(danmaku_replay_api::router(danmaku_replay_api::Replay::new(
            ctx.clone(),
            ingest.clone(),
        )));
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
    let ops = Ops {
        ctx: ctx.clone(),
        metrics,
    };
    app = app
        .merge(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics_text))
                .with_state(ops),
        )
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

    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, roles = ?s.server.roles, data_dir = %s.server.data_dir.display(), "danmaku serving");

    let stop = http_stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing connections");
        stop.cancel();
    });
    let server = tokio::spawn(danmaku_core::serve::serve(
        listener,
        app,
        http_stop.clone(),
        grace,
    ));
    http_stop.cancelled().await;
    if server.await.is_err() {
        tracing::error!("server task failed");
    }
    // Everything acknowledged reaches the SliceStore, then the archive.
    writer_stop.cancel();
    if let Some(t) = live_task {
        let _ = t.await;
    }
    archive_stop.cancel();
    if let Some(t) = archive_task {
        let _ = t.await;
        // The embedded default archives everything still live on shutdown.
        match danmaku_archive::drain(&ctx, grace).await {
            Ok(rows) => tracing::info!(rows, "archived everything still live"),
            Err(e) => {
                tracing::error!(error = %e, "final archive incomplete; it resumes on the next start")
            }
        }
    }
    tracing::info!("bye");
    Ok(())
}

async fn ensure_demo_session(ctx: &Context) -> anyhow::Result<()> {
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
        })
        .await?;
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

async fn metrics_text(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
        .into_response()
}

async fn shutdown_signal() {
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
