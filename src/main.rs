//! The `danmaku` binary: the command line only. `serve` runs any subset of the
//! roles in one process (the library's [`danmaku::lifecycle::Server`]); `token`
//! prints a signed token; `config` prints the effective configuration; `archive`
//! runs archive maintenance; `import` sends a recording's comments (Bilibili or
//! BililiveRecorder XML) to a running server. The work lives in the library (`src/commands.rs`).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use danmaku::commands;
use danmaku::lifecycle::{shutdown_signal, Server};
use std::io::Write;
use std::path::PathBuf;

/// jemalloc, with background threads purging freed pages after its decay time,
/// so memory taken by a spike goes back to the OS while the server idles
/// (docs/OPERATIONS.md, "Memory"; docs/BENCHMARKS.md, "Recovery after attacks").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Import a Bilibili or BililiveRecorder XML file into a VOD of a running
    /// server (POST /v1/vods/{vod}/import).
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The XML document.
    file: PathBuf,
    /// The VOD to add the comments to.
    #[arg(long)]
    vod: String,
    /// The server, http://host:port (default: server.listen of the configuration).
    #[arg(long)]
    server: Option<String>,
    /// A service or admin token (default: one minted from the configured secret).
    #[arg(long, env = "DANMAKU_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding the generated secret, when none is configured.
    #[arg(long)]
    data_dir: Option<PathBuf>,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Serve(ServeArgs::default())) {
        Cmd::Serve(args) => tokio::runtime::Runtime::new()?.block_on(serve(args)),
        Cmd::Token(args) => {
            let mut settings = commands::load_settings(args.config)?;
            if let Some(d) = args.data_dir {
                settings.server.data_dir = d;
            }
            let token = commands::token(
                &settings,
                &args.user,
                args.name.as_deref(),
                &args.role,
                &args.ttl,
            )?;
            println!("{token}");
            Ok(())
        }
        Cmd::Config(args) => {
            print!("{}", commands::load_settings(args.config)?.to_toml());
            Ok(())
        }
        Cmd::Import(args) => {
            let mut settings = commands::load_settings(args.config)?;
            if let Some(d) = args.data_dir {
                settings.server.data_dir = d;
            }
            let answer = tokio::runtime::Runtime::new()?.block_on(commands::import(
                &settings,
                &args.file,
                &args.vod,
                args.server.as_deref(),
                args.token,
            ))?;
            println!("{answer}");
            Ok(())
        }
        Cmd::Archive(cmd) => tokio::runtime::Runtime::new()?.block_on(async {
            match cmd {
                ArchiveCmd::Migrate { config } => {
                    commands::archive_migrate(&commands::load_settings(config)?).await
                }
                ArchiveCmd::Compact { hour, config } => {
                    commands::archive_compact(&commands::load_settings(config)?, &hour).await
                }
            }
        }),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut settings = commands::load_settings(args.config)?;
    commands::apply_serve_flags(
        &mut settings,
        args.listen,
        args.data_dir.as_deref(),
        args.roles,
    )?;
    let server = Server::build(settings).await.context("starting")?;
    println!("listening on http://{}", server.local_addr());
    std::io::stdout().flush()?;
    server.run(shutdown_signal()).await?;
    Ok(())
}
