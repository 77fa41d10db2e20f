//! Startup, the accept loop and graceful shutdown: [`run`] is what `main` and the black-box
//! tests call with a bound listener and a shutdown future. With TLS configured each accepted
//! connection is handshaken first, holding its connection permit, within the head read timeout.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::JobState;
use fleetmap_sandbox::{detect, Inventory, SlotCgroups, SlotLimits};
use fleetmap_service_tls::Acceptor;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::capacity::Capacity;
use crate::config::{Config, RuntimeKind};
use crate::env::cache::Builder;
use crate::env::docker_build::DockerBuilder;
use crate::env::key::sha256_hex;
use crate::env::venv_build::VenvBuilder;
use crate::env::{EnvCache, EnvConfig, EnvError};
use crate::error::DaemonError;
use crate::job::registry::Registry;
use crate::runtime::docker::{DockerOptions, DockerRuntime};
use crate::runtime::envs::{DockerEnvFactory, EnvRouter, EnvRuntimeFactory, ProcessEnvFactory};
use crate::runtime::process::{ProcessOptions, ProcessRuntime, WORKER_SOURCE};
use crate::runtime::Runtime;
use crate::simulated::SimulatedCpus;
use crate::state::{Daemon, Inner};

/// How long startup waits for the pool to fill before serving anyway.
const POOL_FILL_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for cancelled jobs to send END.
const JOBS_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for open connections to finish.
const CONNECTIONS_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Starts the daemon on `listener` and serves until `shutdown` resolves; then stops accepting,
/// cancels every job, kills every worker, removes its cgroups and its socket.
///
/// At start, workers and cgroups left by an earlier run under the same state dir and cgroup
/// parent are killed and removed. Once the daemon serves, its base URL is written to
/// `config.addr_file` (atomically).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| DaemonError::io("mkdir", &config.state_dir, e))?;
    // Absolute, so that workers (and the stale-worker scan, which matches command lines)
    // see the same paths whatever the daemon's working directory.
    let state_dir = std::fs::canonicalize(&config.state_dir)
        .map_err(|e| DaemonError::io("canonicalize", &config.state_dir, e))?;
    let progress_dir = state_dir.join("progress");
    // Progress files of an earlier run's workers mean nothing now.
    let _ = std::fs::remove_dir_all(&progress_dir);
    std::fs::create_dir_all(&progress_dir)
        .map_err(|e| DaemonError::io("mkdir", &progress_dir, e))?;
    let mut inventory = Inventory::detect_with_roots(&config.cgroup_root, &config.proc_root)?;
    let mut cgroups: Arc<dyn SlotCgroups> =
        Arc::from(detect(&config.cgroup_config(), config.cgroup_mode)?);
    if let Some(slots) = config.simulated_slots {
        cgroups = Arc::new(SimulatedCpus::new(cgroups, inventory.cpus.clone()));
        inventory = simulated(&inventory, slots);
        warn!(
            slots,
            "TEST ONLY: advertising simulated slots that share the real CPUs; never use this for real work"
        );
    }
    let cleanup = {
        let cgroups = cgroups.clone();
        tokio::task::spawn_blocking(move || cgroups.cleanup_stale()).await
    };
    match cleanup {
        Ok(Ok(report)) if report.cgroups_removed > 0 || report.processes_killed > 0 => info!(
            cgroups = report.cgroups_removed,
            processes = report.processes_killed,
            "removed what an earlier run left"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(err)) => warn!(cause = %err, "cannot remove what an earlier run left"),
        Err(err) => warn!(cause = %err, "stale cleanup task failed"),
    }
    // Before any worker starts, so a bad test-only GPU list leaves nothing running.
    let gpu_inventory = crate::gpus::open(&config.gpus, &config.node_id).await?;
    let pool_target = config.pool_target(inventory.cpus.len());
    let (runtime, envs) =
        start_runtime(&config, &state_dir, &inventory, pool_target, cgroups).await?;

    let capacity = Arc::new(Capacity::new(inventory));
    crate::gpus::refresh(&gpu_inventory, &capacity).await;

    let local = listener.local_addr().map_err(DaemonError::Listener)?;
    let acceptor = Acceptor::new(config.tls.clone(), config.limits.header_read_timeout);
    let base_url = format!("{}://{local}", acceptor.scheme());
    let daemon = Daemon::new(Inner {
        node_id: config.node_id.clone(),
        address: config.advertise.clone().unwrap_or_else(|| base_url.clone()),
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        limits: config.limits.clone(),
        capacity: capacity.clone(),
        registry: Arc::new(Registry::new(
            config.limits.max_jobs,
            config.limits.finished_jobs_kept,
        )),
        runtime: runtime.clone(),
        envs,
        progress_dir,
        shutdown: CancellationToken::new(),
        drain: config.drain.clone(),
        cluster_token: config.cluster_token.clone(),
        metrics: crate::metrics::Metrics::new(),
    });
    tokio::spawn(crate::gpus::keep_fresh(
        gpu_inventory.clone(),
        capacity,
        config.gpu_refresh,
        daemon.inner().shutdown.clone(),
    ));
    if let Some(file) = &config.addr_file {
        write_atomically(file, &base_url)?;
    }
    if let Some(coordinator) = config.coordinator.clone() {
        tokio::spawn(crate::coordinator::heartbeat(
            daemon.clone(),
            coordinator,
            config.coordinator_tls.clone(),
            daemon.inner().shutdown.clone(),
        ));
    } else {
        tokio::spawn(crate::drain::finish_when_idle(
            daemon.clone(),
            daemon.inner().shutdown.clone(),
        ));
    }
    info!(
        node = %config.node_id,
        url = %base_url,
        python = %runtime.python_version(),
        cgroup = runtime.cgroup_flavor().as_str(),
        pool = pool_target,
        gpus = daemon.inner().capacity.gpus().len(),
        gpu_source = gpu_inventory.source(),
        tls = acceptor.is_tls(),
        "fleetmapd serving"
    );

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.limits.max_connections));
    let refusals = Arc::new(Semaphore::new(crate::conn::MAX_REFUSALS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(cause = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // At the connection limit, answer 503 instead of serving.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    debug!(%peer, "connection limit reached; refusing with 503");
                    crate::conn::refuse_busy(stream, &acceptor, &config.limits, &refusals);
                    continue;
                };
                let d = daemon.clone();
                let builder = crate::conn::builder(&config.limits);
                let watcher = graceful.watcher();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake holds the permit: it counts toward the connection limit.
                    match acceptor.accept(stream).await {
                        Ok(stream) => {
                            let conn = builder.serve_connection(
                                TokioIo::new(stream),
                                service_fn(move |request| crate::api::handle(d.clone(), request)),
                            );
                            if let Err(err) = watcher.watch(conn).await {
                                debug!(%peer, cause = %err, "connection ended with an error");
                            }
                        }
                        Err(err) => {
                            debug!(%peer, cause = %err, "TLS handshake failed; connection dropped");
                        }
                    }
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    stop(&daemon, graceful).await;
    if let Some(file) = &config.addr_file {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}

/// Starts the configured runtime and the environment cache beside it; returns the runtime
/// jobs use (which routes each environment to warm workers of its own) and the cache.
async fn start_runtime(
    config: &Config,
    state_dir: &Path,
    inventory: &Inventory,
    pool_target: u32,
    cgroups: Arc<dyn SlotCgroups>,
) -> Result<(Arc<dyn Runtime>, EnvCache), DaemonError> {
    let worker_sha = sha256_hex(WORKER_SOURCE.as_bytes());
    let env_dir = state_dir.join("envs");
    let env_pool = config.env_pool_size.unwrap_or(pool_target);
    let ca = match &config.build_ca_bundle {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| DaemonError::io("read the build CA bundle", path, e))?;
            let path = std::fs::canonicalize(path)
                .map_err(|e| DaemonError::io("canonicalize", path, e))?;
            Some((path, bytes))
        }
        None => None,
    };
    let (main, builder, factory): (
        Arc<dyn Runtime>,
        Arc<dyn Builder>,
        Arc<dyn EnvRuntimeFactory>,
    ) = match config.runtime {
        RuntimeKind::Process => {
            let (started, builder) = tokio::join!(
                start_process(config, state_dir, inventory, pool_target, cgroups.clone()),
                VenvBuilder::new(
                    config.worker_python.clone(),
                    env_dir.clone(),
                    worker_sha,
                    ca.map(|(path, _)| path),
                )
            );
            let (main, opts) = started?;
            let factory = ProcessEnvFactory {
                base: opts,
                cgroups,
                pool_target: env_pool,
            };
            (
                main,
                Arc::new(builder?) as Arc<dyn Builder>,
                Arc::new(factory) as Arc<dyn EnvRuntimeFactory>,
            )
        }
        RuntimeKind::Docker => {
            let (main, opts) = start_docker(
                config,
                state_dir,
                pool_target,
                cgroups.flavor(),
                &inventory.cpus,
            )
            .await?;
            let engine = fleetmap_base_image::Engine::connect()
                .await
                .map_err(|e| EnvError::Node(format!("connect to the docker engine: {e}")))?;
            let builder = DockerBuilder::new(
                engine.docker().clone(),
                config.node_id.clone(),
                config.docker_image.clone(),
                main.python_version(),
                worker_sha,
                ca.map(|(_, bytes)| bytes),
            )
            .await?;
            let factory = DockerEnvFactory {
                base: opts,
                all_cpus: inventory.cpus.clone(),
                pool_target: env_pool,
            };
            (
                main,
                Arc::new(builder) as Arc<dyn Builder>,
                Arc::new(factory) as Arc<dyn EnvRuntimeFactory>,
            )
        }
    };
    let envs = EnvCache::start(
        config.runtime,
        builder,
        EnvConfig {
            dir: env_dir,
            budget_bytes: config.env_disk_budget_bytes,
        },
    )
    .await?;
    let router = EnvRouter::new(main, factory, config.env_warm_max);
    envs.set_retire(router.clone());
    let runtime: Arc<dyn Runtime> = router;
    Ok((runtime, envs))
}

/// Starts the `process` runtime (idle workers' home cgroups get the whole `inventory`) and
/// waits (bounded) for its pool to fill.
async fn start_process(
    config: &Config,
    state_dir: &Path,
    inventory: &Inventory,
    pool_target: u32,
    cgroups: Arc<dyn SlotCgroups>,
) -> Result<(Arc<dyn Runtime>, ProcessOptions), DaemonError> {
    let mut opts = ProcessOptions::new(
        config.worker_python.clone(),
        state_dir.to_path_buf(),
        config.proc_root.clone(),
        pool_target,
    );
    opts.max_frame_bytes = config.limits.max_frame_bytes;
    opts.startup_timeout = config.limits.startup_timeout;
    opts.scratch_bytes = config.scratch_bytes;
    opts.home_limits = Some(SlotLimits {
        cpus: inventory.cpus.clone(),
        ram_bytes: inventory.ram_bytes,
    });
    let process = ProcessRuntime::start(opts.clone(), cgroups).await?;
    if !process.wait_pool_full(POOL_FILL_WAIT).await {
        warn!(
            target = pool_target,
            "the worker pool is not full yet; serving anyway"
        );
    }
    Ok((Arc::new(process), opts))
}

/// Starts the `docker` runtime and waits (bounded) for its warm containers.
async fn start_docker(
    config: &Config,
    state_dir: &Path,
    pool_target: u32,
    flavor: fleetmap_sandbox::CgroupFlavor,
    all_cpus: &[u32],
) -> Result<(Arc<dyn Runtime>, DockerOptions), DaemonError> {
    // A sibling of the slot cgroups' parent: the stale-slot cleanup below that parent must
    // not reach into containers the engine manages.
    let parent = format!(
        "/{}-containers",
        config.cgroup_config().parent.trim_matches('/')
    );
    let mut opts = DockerOptions::new(
        config.node_id.clone(),
        state_dir.to_path_buf(),
        parent,
        pool_target,
    );
    opts.image = config.docker_image.clone();
    opts.pull_image = config.docker_pull;
    opts.network = config.container_network.clone();
    opts.cgroup_root = config.cgroup_root.clone();
    opts.max_frame_bytes = config.limits.max_frame_bytes;
    opts.flavor = flavor;
    opts.scratch_bytes = config.scratch_bytes;
    let docker = DockerRuntime::start(opts.clone(), all_cpus).await?;
    if !docker.wait_pool_full(POOL_FILL_WAIT).await {
        warn!(
            target = pool_target,
            "the warm container pool is not full yet; serving anyway"
        );
    }
    Ok((Arc::new(docker), opts))
}

/// The shutdown sequence after the listener is closed.
async fn stop(daemon: &Daemon, graceful: GracefulShutdown) {
    let d = daemon.inner();
    info!(jobs = d.registry.live_count(), "shutting down");
    d.shutdown.cancel();
    for job in d.registry.live() {
        job.finish(JobState::Cancelled, "the node is shutting down".to_string());
    }
    let deadline = tokio::time::Instant::now() + JOBS_DRAIN_WAIT;
    while d.registry.live_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if tokio::time::timeout(CONNECTIONS_DRAIN_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the drain period; closing them");
    }
    d.runtime.shutdown().await;
    info!("fleetmapd stopped");
}

/// TEST ONLY (`--test-only-simulated-slots`): `slots` one-CPU slots of 1 GiB each (at least
/// the real RAM), with CPU ids that need not exist; only valid with cgroups off.
fn simulated(real: &Inventory, slots: u32) -> Inventory {
    Inventory {
        cpus: (0..slots).collect(),
        ram_bytes: real.ram_bytes.max(u64::from(slots) << 30),
    }
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, contents: &str) -> Result<(), DaemonError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| DaemonError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DaemonError::io("rename", path, e))
}
