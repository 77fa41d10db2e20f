//! `fleetmap-coordinator`: parses the command line, sets up logging, binds the listener and runs
//! the coordinator until SIGTERM or SIGINT; `fleetmap-coordinator keys ...` manages API keys.
//! Errors become exit codes here and nowhere else (2: a refused setting, 1: anything else).

use fleetmap_service_tls::Settings as TlsSettings;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_proto::{ClusterToken, CLUSTER_TOKEN_ENV};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fleetmap_coordinator::{run, Config};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

mod keys_cli;

/// fleetmap coordinator: node registry, job splitting, result streaming.
#[derive(Debug, Parser)]
#[command(
    name = "fleetmap-coordinator",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes, lists and revokes client API keys (in the coordinator's database; a running
    /// coordinator sees the change within a second).
    Keys {
        #[command(subcommand)]
        action: keys_cli::Action,
        /// The coordinator's database (default: the `db` setting of FLEETMAP_COORDINATOR_DB
        /// or of the file FLEETMAP_COORDINATOR_CONFIG names).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
    },
}

/// Flags of the coordinator itself.
#[derive(Debug, clap::Args)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File to write the base URL to once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// SQLite database of job records.
    #[arg(long, required = true)]
    db: Option<PathBuf>,
    /// How long a job waits for a first live node before it is refused.
    #[arg(long, default_value_t = 5000)]
    node_wait_ms: u64,
    /// How often nodes heartbeat.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// A node silent this long is dead (plus at most an eighth of it until the next check).
    #[arg(long, default_value_t = 4000)]
    node_timeout_ms: u64,
    /// How long inputs of lost nodes wait for a node to re-run them.
    #[arg(long, default_value_t = 30_000)]
    redispatch_wait_ms: u64,
    /// Inputs a node may hold per instance of its share before backpressure applies.
    #[arg(long, default_value_t = 4096)]
    window_items_per_instance: usize,
    /// Connections served at once; one beyond it gets 503.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Job result streams one client address may hold open at once; more get 429.
    #[arg(long, default_value_t = 1000)]
    max_jobs_per_client: usize,
    /// File holding the cluster token nodes must present (and that is sent to them); the
    /// environment variable FLEETMAP_CLUSTER_TOKEN is used when no file is given. Without
    /// either, node routes are open (local use only).
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// Payload bytes of detached jobs' results the database may hold.
    #[arg(long, default_value_t = 10 << 30)]
    results_budget_bytes: u64,
    /// Bytes of output (prints, build log) each job keeps for `fleetmap logs JOB`; 0 keeps none.
    #[arg(long, default_value_t = 4 << 20)]
    log_bytes_per_job: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Refuse every client route (all but health and the node routes) without an API key
    /// made by `fleetmap-coordinator keys create`; needs a cluster token as well.
    #[arg(long)]
    require_api_keys: bool,
    #[command(flatten)]
    tls: fleetmap_service_tls::TlsArgs,
}

fn main() -> ExitCode {
    let cli: Cli = fleetmap_service_config::parse("FLEETMAP_COORDINATOR_");
    let args = cli.serve;
    if let Some(Command::Keys { action, db }) = cli.command {
        let Some(db) = db.or(args.db) else {
            eprintln!(
                "error: say which database holds the keys: --db PATH (the coordinator's --db)"
            );
            return ExitCode::from(fleetmap_service_config::EXIT_CONFIG);
        };
        return match keys_cli::run(action, &db) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("fleetmap-coordinator: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(args.log_format);
    let tls = match args.tls.load() {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(fleetmap_service_config::EXIT_CONFIG);
        }
    };
    match serve(args, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), "fleetmap-coordinator failed");
            eprintln!("fleetmap-coordinator: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FLEETMAP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn serve(args: Args, tls: TlsSettings) -> anyhow::Result<()> {
    let Some(db) = &args.db else {
        anyhow::bail!("--db is required to serve");
    };
    let mut config = Config::new(db);
    config.addr_file = args.addr_file;
    config.node_wait = Duration::from_millis(args.node_wait_ms);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.node_timeout = Duration::from_millis(args.node_timeout_ms);
    config.redispatch_wait = Duration::from_millis(args.redispatch_wait_ms);
    config.window_items_per_instance = args.window_items_per_instance.max(1);
    config.max_connections = args.max_connections.max(1);
    config.max_jobs_per_client = args.max_jobs_per_client;
    config.results_budget_bytes = args.results_budget_bytes;
    config.log_bytes_per_job = args.log_bytes_per_job;
    config.cluster_token =
        fleetmap_service_config::secret(args.cluster_token_file.as_deref(), CLUSTER_TOKEN_ENV)?
            .map(|text| ClusterToken::new(&text))
            .transpose()?;
    config.require_api_keys = args.require_api_keys;
    config.tls = tls.server;
    config.node_tls = Some(tls.client);
    if args.require_api_keys && config.cluster_token.is_none() {
        anyhow::bail!("--require-api-keys needs a cluster token as well (--cluster-token-file or FLEETMAP_CLUSTER_TOKEN): without one any host could register as a node");
    }
    if !args.require_api_keys && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "client routes are open: anyone who reaches this port can run code on the fleet; give --require-api-keys");
    }
    if config.cluster_token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "no cluster token: any host that reaches this port can register as a node; give --cluster-token-file");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run(config, listener, shutdown).await?;
    Ok(())
}
