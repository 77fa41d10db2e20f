//! `fleetmapd`: parses flags, sets up logging, binds, and runs the daemon. SIGTERM drains (no
//! new work, finish what runs, leave the fleet, then exit; bounded by `--drain-timeout-s`, and a
//! second SIGTERM or SIGINT stops at once); SIGINT stops at once. Errors become exit codes here
//! and nowhere else.

use fleetmap_service_tls::Settings as TlsSettings;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_proto::{ClusterToken, CLUSTER_TOKEN_ENV};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fleetmap_sandbox::CgroupMode;
use fleetmapd::{Config, Drain};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

mod envs_cli;

/// fleetmap node daemon: runs Python functions over inputs in cgroup-pinned worker slots.
#[derive(Debug, Parser)]
#[command(
    name = "fleetmapd",
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
    /// Shows a running daemon's runtime, base, built environments and cache counters.
    Envs {
        /// The daemon's base URL (`http://127.0.0.1:7071`).
        #[arg(long, required_unless_present = "addr_file")]
        url: Option<String>,
        /// A file holding the daemon's base URL (what `--addr-file` wrote).
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Print the raw JSON answer of `GET /v1/environments`.
        #[arg(long)]
        json: bool,
        /// PEM CA certificate(s) an `https://` daemon is verified against (default: the
        /// daemon's own `tls_ca_file` setting, else the system's roots).
        #[arg(long, value_name = "PATH")]
        tls_ca_file: Option<PathBuf>,
    },
}

/// Flags of the daemon itself.
#[derive(Debug, clap::Args)]
struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File to write the base URL to once serving.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Base URL of the coordinator to register with.
    #[arg(long, value_parser = base_url)]
    coordinator: Option<String>,
    /// Name of this node, unique in the fleet.
    #[arg(long, required = true)]
    node_id: Option<String>,
    /// Directory the daemon owns (worker module, socket, progress files).
    #[arg(long, required = true)]
    state_dir: Option<PathBuf>,
    /// Python interpreter for the zygote and workers.
    #[arg(long, required = true)]
    worker_python: Option<PathBuf>,
    /// Mount root of the cgroup filesystem(s).
    #[arg(long, default_value = fleetmap_sandbox::DEFAULT_CGROUP_ROOT)]
    cgroup_root: PathBuf,
    /// Parent cgroup the daemon owns, relative to the root (default `fleetmap/<node-id>`).
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Idle workers kept warm (default: number of CPUs, at least 2).
    #[arg(long)]
    pool_size: Option<u32>,
    /// Whether cgroups are required, used when available, or off.
    #[arg(long, value_enum, default_value_t = Cgroups::Auto)]
    cgroups: Cgroups,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Base URL announced to the coordinator (default: the listening address).
    #[arg(long, value_parser = base_url)]
    advertise: Option<String>,
    /// Where instances run: forked processes, or one Docker container each.
    #[arg(long, value_enum, default_value_t = RuntimeArg::Process)]
    runtime: RuntimeArg,
    /// Image worker containers start from (`docker` runtime).
    #[arg(long, default_value = "fleetmap/base:1")]
    docker_image: String,
    /// Pull `--docker-image` from its registry when the engine lacks it (cloud VMs that reach
    /// a registry); without it the image must be built here (`fleetmap-base-image ensure`).
    #[arg(long)]
    docker_pull: bool,
    /// Network of worker containers (`docker` runtime): `bridge` lets functions reach the
    /// network through NAT, `none` cuts them off; never the host's.
    #[arg(long, value_enum, default_value_t = NetworkArg::Bridge)]
    container_network: NetworkArg,
    /// Client connections served at once; one beyond it gets 503.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Jobs that may run at once; more get 429.
    #[arg(long, default_value_t = 64)]
    max_jobs: usize,
    /// Seconds between two reads of the GPU inventory (NVML).
    #[arg(long, default_value_t = 30)]
    gpu_refresh_s: u64,
    /// TEST ONLY: pretend this node has these GPUs instead of reading NVML
    /// (`NAME:MEMORY_MIB[:mig]` entries separated by commas, e.g.
    /// `NVIDIA H100 80GB HBM3:81559,NVIDIA H100 80GB HBM3:81559`). Instances get the
    /// GPU variables and slots a real GPU would give them, but no device: for black-box and
    /// end-to-end tests on machines without a GPU, never for real nodes.
    #[arg(long, value_name = "LIST")]
    test_only_fake_gpus: Option<String>,
    /// Extra CA bundle that environment builds trust (pip in images and venvs), for networks
    /// that intercept TLS; it must hold every CA builds need (e.g. the machine's own bundle).
    #[arg(long, env = "FLEETMAP_BUILD_CA_BUNDLE")]
    build_ca_bundle: Option<PathBuf>,
    /// Disk budget of built environments in GB; the least recently used beyond it are removed.
    #[arg(long, default_value_t = 20)]
    env_disk_budget_gb: u64,
    /// Most MiB of each instance's scratch space (its cwd and TMPDIR: a tmpfs that counts
    /// against its RAM, so at most half of `func_ram` is used with the process runtime).
    #[arg(long, default_value_t = fleetmapd::config::DEFAULT_SCRATCH_BYTES >> 20)]
    scratch_mib: u64,
    /// Built environments whose warm workers are kept at once.
    #[arg(long, default_value_t = 3)]
    env_warm_max: usize,
    /// Warm workers per built environment (default: the pool size).
    #[arg(long)]
    env_pool_size: Option<u32>,
    /// File holding the fleet's cluster token (sent to the coordinator, required from it);
    /// FLEETMAP_CLUSTER_TOKEN is used when no file is given. Without either the API is open.
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// How long SIGTERM waits for running jobs to finish before stopping them.
    #[arg(long, default_value_t = 300)]
    drain_timeout_s: u64,
    /// Probe what this machine offers this configuration (CPUs/RAM, state dir, cgroups,
    /// worker Python, Docker, GPUs) and exit: 0 when it can serve it, 1 when not. Also
    /// spelled `fleetmapd check [FLAGS]`.
    #[arg(long)]
    check: bool,
    /// TEST ONLY: advertise N simulated one-CPU, 1-GiB slots that share the real CPUs (needs
    /// --cgroups off). For coordinator scale benchmarks; never for real work.
    #[arg(long, value_name = "N")]
    test_only_simulated_slots: Option<u32>,
    #[command(flatten)]
    tls: fleetmap_service_tls::TlsArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeArg {
    Process,
    Docker,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetworkArg {
    Bridge,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cgroups {
    Auto,
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli: Cli = parse_cli();
    let args = cli.serve;
    if cli.command.is_none() && !args.check {
        init_tracing(args.log_format);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fleetmapd: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let outcome = match cli.command {
        Some(Command::Envs {
            url,
            addr_file,
            json,
            tls_ca_file,
        }) => runtime.block_on(envs_cli::show(
            url,
            addr_file,
            json,
            tls_ca_file.or(args.tls.tls_ca_file),
        )),
        None if args.check => {
            return match runtime.block_on(check(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(err) => {
                    eprintln!("fleetmapd: {err:#}");
                    ExitCode::from(1)
                }
            };
        }
        None => {
            // A TLS setting that cannot serve is refused like any other bad setting.
            let tls = match args.tls.load() {
                Ok(tls) => tls,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(fleetmap_service_config::EXIT_CONFIG);
                }
            };
            runtime.block_on(serve(args, tls))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "fleetmapd failed");
            eprintln!("fleetmapd: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// The command line, layered over the settings file and the environment; a leading `check`
/// word is `--check` (`fleetmapd check --config /etc/fleetmap/fleetmapd.toml`).
fn parse_cli() -> Cli {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|word| word == "check") {
        argv[1] = "--check".into();
    }
    let lookup = |name: &str| std::env::var(name).ok();
    match fleetmap_service_config::try_parse_from(argv, &lookup, "FLEETMAPD_") {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    }
}

/// Prints what this machine offers the configuration; whether it can serve it.
async fn check(args: Args) -> anyhow::Result<bool> {
    let (config, _) = config_from(args)?;
    let report = fleetmapd::check::check(&config).await;
    print!("{}", report.render());
    Ok(report.passed())
}

/// The daemon's configuration from its flags, and the drain timeout.
fn config_from(args: Args) -> anyhow::Result<(Config, Duration)> {
    let (Some(node_id), Some(state_dir), Some(worker_python)) =
        (args.node_id, args.state_dir, args.worker_python)
    else {
        anyhow::bail!("--node-id, --state-dir and --worker-python are required to serve");
    };
    let mut config = Config::new(node_id, state_dir, worker_python);
    config.addr_file = args.addr_file;
    config.coordinator = args.coordinator;
    config.advertise = args.advertise;
    config.cgroup_root = args.cgroup_root;
    config.cgroup_parent = args.cgroup_parent;
    config.pool_size = args.pool_size;
    config.cgroup_mode = match args.cgroups {
        Cgroups::Auto => CgroupMode::Auto,
        Cgroups::Required => CgroupMode::Required,
        Cgroups::Off => CgroupMode::Off,
    };
    config.runtime = match args.runtime {
        RuntimeArg::Process => fleetmapd::RuntimeKind::Process,
        RuntimeArg::Docker => fleetmapd::RuntimeKind::Docker,
    };
    config.docker_image = args.docker_image;
    config.docker_pull = args.docker_pull;
    config.limits.max_connections = args.max_connections.max(1);
    config.limits.max_jobs = args.max_jobs.max(1);
    config.gpu_refresh = std::time::Duration::from_secs(args.gpu_refresh_s.max(1));
    if let Some(list) = args.test_only_fake_gpus {
        config.gpus = fleetmapd::GpuSource::TestOnlyFake(list);
    }
    config.cluster_token =
        fleetmap_service_config::secret(args.cluster_token_file.as_deref(), CLUSTER_TOKEN_ENV)?
            .map(|text| ClusterToken::new(&text))
            .transpose()?;
    if let Some(slots) = args.test_only_simulated_slots {
        if !matches!(args.cgroups, Cgroups::Off) || slots == 0 {
            anyhow::bail!("--test-only-simulated-slots needs --cgroups off and at least one slot: simulated CPU ids cannot be enforced");
        }
        config.simulated_slots = Some(slots);
    }
    let drain_timeout = Duration::from_secs(args.drain_timeout_s);
    config.container_network = match args.container_network {
        NetworkArg::Bridge => "bridge".to_string(),
        NetworkArg::None => "none".to_string(),
    };
    config.build_ca_bundle = args.build_ca_bundle;
    config.env_disk_budget_bytes = args.env_disk_budget_gb.saturating_mul(1 << 30);
    config.env_warm_max = args.env_warm_max;
    config.scratch_bytes = args.scratch_mib.saturating_mul(1 << 20);
    config.env_pool_size = args.env_pool_size;
    config.tls_files = fleetmapd::TlsFiles {
        cert: args.tls.tls_cert_file,
        key: args.tls.tls_key_file,
        ca: args.tls.tls_ca_file,
    };
    Ok((config, drain_timeout))
}

async fn serve(args: Args, tls: TlsSettings) -> anyhow::Result<()> {
    let listen = args.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let (mut config, drain_timeout) = config_from(args)?;
    config.tls = tls.server;
    config.coordinator_tls = Some(tls.client);
    let drain = Drain::new();
    config.drain = drain.clone();
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: draining"),
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                return;
            }
            _ = drain.requested() => tracing::info!("drain requested"),
        }
        drain.request();
        tokio::select! {
            _ = drain.finished() => tracing::info!("drained"),
            _ = tokio::time::sleep(drain_timeout) => {
                tracing::warn!(timeout_s = drain_timeout.as_secs(), "drain timed out; stopping the jobs left");
            }
            _ = term.recv() => tracing::info!("second SIGTERM: stopping now"),
            _ = int.recv() => tracing::info!("SIGINT: stopping now"),
        }
    };
    fleetmapd::run(config, listener, shutdown).await?;
    Ok(())
}

/// An `http://host:port` or `https://host:port` base URL (no path, query or fragment).
fn base_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|err| format!("not a URL ({err}); write it as http://host:port"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.path() == "/" || uri.path().is_empty() => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => Err("write it as http://host:port or https://host:port, with no path".to_string()),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
