//! The `docker` runtime: one container per worker, started from the job's image through
//! bollard, kept warm (started, worker connected and idle) and put into a slot's limits with
//! the update-container API when a job takes it.
//!
//! - Each container runs `python3 fleetmap_worker.py worker --socket ...` with the daemon's
//!   worker socket, the worker module (read-only) and the progress dir bind-mounted in; no
//!   capabilities, `no-new-privileges`, a pids limit, swap off, a cgroup parent of the
//!   daemon's own (`/<cgroup parent>-containers`), and its own network namespace (`bridge` by
//!   default so functions can reach the network, `none` with `--container-network none`;
//!   never the host's).
//! - Peer check: HELLO's pid is the worker's pid inside the container's pid namespace, so it
//!   cannot be matched against the socket's peer credentials. The kernel reports a peer's pid
//!   in the *daemon's* namespace, and the engine reports each container's init pid in the same
//!   namespace (`State.Pid` from inspect); the worker is the container's init, so a connection
//!   is accepted only when its peer pid is the host pid of a container this run started.
//! - Labels (node, run, role) are fixed at create time, before the container's job is known,
//!   so a taken container is renamed `fleetmap-<node>-<slot>-<n>` to name its slot.
//! - Deaths are learnt from the engine (wait, then inspect): `State.OOMKilled` counts as an
//!   OOM kill of the slot, whatever the exit code.
//! - At start, containers labelled with this node id (an earlier run's) are removed; at
//!   shutdown, every container of this run.
//! - GPU slots do not take a warm container: a GPU reaches a container only through a device
//!   request at create time, so a container is created for the slot when it is acquired,
//!   with its limits and a device request for its GPU's UUID (`gpu.rs`).
//! - Warm containers are started only on CPUs no slot holds (`warmup.rs`): the containers a
//!   job takes are replaced as its slots end, not while it runs on every CPU.

mod base_image;
mod cgroup;
mod gpu;
mod scratch;
mod spec;
mod warmup;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::{FrameKind, PoolInfo, WorkerHello, PROTOCOL_VERSION};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
    RenameContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use fleetmap_sandbox::{CgroupFlavor, Slot};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::env::EnvTarget;
use crate::runtime::accept::{accept_workers, HELLO_TIMEOUT, MAX_HANDSHAKES};
use crate::runtime::process::pool::{IdleWorker, Pool};
use crate::runtime::process::WORKER_SOURCE;
use crate::runtime::{ExitStatus, ExitWatch, Runtime, RuntimeError, Worker, WorkerConn};

pub use spec::{LABEL_NODE, LABEL_ROLE, LABEL_RUN};

/// How long `kill` waits for the engine to report the container gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the engine to finish removing this run's containers.
const REMOVE_WAIT: Duration = Duration::from_secs(20);
/// Pause before asking an engine that did not answer about a container again.
const ENGINE_RETRY: Duration = Duration::from_secs(1);
/// Pause after a failed container start, so a broken engine is not hammered.
const START_BACKOFF: Duration = Duration::from_secs(1);
/// The image label that names the image's Python version (set by `fleetmap-base-image`).
const LABEL_PYTHON: &str = "org.fleetmap.base.python-version";

/// What the docker runtime is started with.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Name of this node (labels every container; stale cleanup matches it).
    pub node_id: String,
    /// The image workers run in.
    pub image: String,
    /// The worker module on the host, bind-mounted read-only.
    pub worker_file: PathBuf,
    /// The daemon's worker socket on the host, bind-mounted in.
    pub socket_path: PathBuf,
    /// Where progress files live (mounted at the same path).
    pub progress_dir: PathBuf,
    /// Cgroup parent of every container (an absolute cgroupfs path the daemon owns).
    pub cgroup_parent: String,
    /// Mount root of the cgroup filesystem(s), to remove `cgroup_parent` at the end.
    pub cgroup_root: PathBuf,
    /// The containers' network mode: `none` or `bridge` (never `host`).
    pub network: String,
    /// Most processes (threads included) a container may hold.
    pub pids_limit: i64,
    /// Warm containers to keep.
    pub pool_target: u32,
    /// Largest frame body workers may send and receive.
    pub max_frame_bytes: usize,
    /// Cgroup flavour of the host (reported in node info).
    pub flavor: CgroupFlavor,
    /// The interpreter command inside the image (`/usr/bin/python3` in the base image;
    /// `python3` on the image's PATH for environment images).
    pub python: String,
    /// A runtime for one environment image beside the daemon's main one: it leaves the
    /// removal of an earlier run's containers and of the cgroup parent to the main runtime,
    /// and does not need the image to carry the base image's labels.
    pub environment: bool,
    /// CPUs held by slots of every docker runtime of this node (clones share the count): warm
    /// containers start only on the others.
    pub cpus_in_use: warmup::CpusInUse,
    /// Size of each container's scratch tmpfs at `/tmp` (see `scratch.rs`).
    pub scratch_bytes: u64,
    /// Pull `image` from its registry when the engine lacks it (see `base_image.rs`).
    pub pull_image: bool,
}

impl DockerOptions {
    /// Options with the protocol's layout under `state_dir` and the base image.
    pub fn new(
        node_id: String,
        state_dir: PathBuf,
        cgroup_parent: String,
        pool_target: u32,
    ) -> Self {
        Self {
            node_id,
            image: "fleetmap/base:1".to_string(),
            worker_file: state_dir.join("worker").join("fleetmap_worker.py"),
            socket_path: state_dir.join("docker-worker.sock"),
            progress_dir: state_dir.join("progress"),
            cgroup_parent,
            cgroup_root: PathBuf::from(fleetmap_sandbox::DEFAULT_CGROUP_ROOT),
            network: "bridge".to_string(),
            pids_limit: 1024,
            pool_target,
            max_frame_bytes: agent_proto::DEFAULT_MAX_FRAME_BYTES,
            flavor: CgroupFlavor::None,
            python: spec::PYTHON_IN_CONTAINER.to_string(),
            environment: false,
            cpus_in_use: warmup::CpusInUse::default(),
            scratch_bytes: crate::config::DEFAULT_SCRATCH_BYTES,
            pull_image: false,
        }
    }
}

/// A container this run started and the engine has not yet reported gone.
#[derive(Debug)]
struct Live {
    id: String,
    exit: ExitWatch,
    slot: Option<String>,
}

/// Bookkeeping behind one std `Mutex`: map lookups and inserts, never an await inside.
#[derive(Debug, Default)]
struct Books {
    /// Host pid → the container whose init it is, for containers not yet gone.
    by_pid: HashMap<u32, Live>,
    /// Host pid of a started container → where its HELLO'd connection goes.
    expecting: HashMap<u32, oneshot::Sender<WorkerConn>>,
    /// Connections that said HELLO before their container's pid was known.
    early: HashMap<u32, WorkerConn>,
    /// Slot id → host pid of the container serving it.
    slots: HashMap<String, u32>,
    /// Slot id → OOM kills the engine reported for its containers.
    ooms: HashMap<String, u64>,
    /// Slot id → CPUs it holds in `DockerOptions::cpus_in_use`.
    slot_cpus: HashMap<String, usize>,
}

#[derive(Debug)]
struct Inner {
    opts: DockerOptions,
    docker: Docker,
    /// Where `docker` connects (for messages).
    address: String,
    run_id: String,
    python: String,
    all_cpus: String,
    /// How many CPUs the node has (the warm-up budget's total).
    cpu_count: usize,
    pool: Pool,
    books: Mutex<Books>,
    names: AtomicU64,
    /// Container starts in progress (shutdown waits for them, then removes what they made).
    starting: AtomicU64,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot of `cpus` CPUs now runs in a container of this runtime.
    fn hold_cpus(&self, books: &mut Books, slot_id: &str, cpus: usize) {
        if books.slot_cpus.insert(slot_id.to_string(), cpus).is_none() {
            self.opts.cpus_in_use.hold(cpus);
        }
    }

    /// The slot `slot_id` gave its CPUs back.
    fn release_cpus(&self, books: &mut Books, slot_id: &str) {
        if let Some(cpus) = books.slot_cpus.remove(slot_id) {
            self.opts.cpus_in_use.release(cpus);
        }
    }

    fn container_of_slot(&self, slot_id: &str) -> Option<(String, ExitWatch)> {
        let books = self.books();
        let pid = books.slots.get(slot_id)?;
        books
            .by_pid
            .get(pid)
            .map(|l| (l.id.clone(), l.exit.clone()))
    }
}

/// Worker containers on the local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

fn engine(action: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    move |err| RuntimeError::Engine {
        action,
        reason: err.to_string(),
    }
}

impl DockerRuntime {
    /// Connects to the engine, removes containers an earlier run of this node left, checks
    /// the image, listens on the worker socket and starts filling the warm pool.
    pub async fn start(opts: DockerOptions, all_cpus: &[u32]) -> Result<Self, RuntimeError> {
        let docker = fleetmap_base_image::Engine::connect()
            .await
            .map_err(|err| RuntimeError::Engine {
                action: "connect",
                reason: err.to_string(),
            })?
            .docker()
            .clone();
        if !opts.environment {
            let stale = remove_labelled(&docker, LABEL_NODE, &opts.node_id).await?;
            if stale > 0 {
                info!(removed = stale, "removed containers of an earlier run");
            }
            cgroup::remove_parent(&opts.cgroup_root, &opts.cgroup_parent);
        }
        let image = base_image::ensure(&docker, &opts.image, opts.pull_image).await?;
        let python = image
            .config
            .and_then(|c| c.labels)
            .and_then(|mut l| l.remove(LABEL_PYTHON))
            .unwrap_or_default();
        if !opts.environment {
            write_worker_file(&opts.worker_file)?;
        }
        let _ = std::fs::remove_file(&opts.socket_path);
        let listener =
            UnixListener::bind(&opts.socket_path).map_err(|source| RuntimeError::Io {
                op: "bind",
                path: opts.socket_path.clone(),
                source,
            })?;
        std::fs::set_permissions(&opts.socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| RuntimeError::Io {
                op: "chmod",
                path: opts.socket_path.clone(),
                source,
            })?;
        let inner = Arc::new(Inner {
            pool: Pool::new(opts.pool_target),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            all_cpus: spec::cpu_list(all_cpus),
            cpu_count: all_cpus.len(),
            python,
            docker,
            address: fleetmap_base_image::engine::local_address(),
            opts,
            books: Mutex::new(Books::default()),
            names: AtomicU64::new(0),
            starting: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept(inner.clone(), listener));
        let filler = tokio::spawn(fill(inner.clone()));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([acceptor, filler]);
        info!(image = %inner.opts.image, python = %inner.python, run = %inner.run_id, "docker runtime ready");
        Ok(Self { inner })
    }

    /// Waits until the pool holds its target of warm containers, or `limit` passes.
    pub async fn wait_pool_full(&self, limit: Duration) -> bool {
        self.inner.pool.wait_full(limit).await
    }

    /// Waits until the pool holds at least one warm container, or `limit` passes.
    pub async fn wait_pool_any(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.inner.pool.info().idle == 0 {
            if tokio::time::Instant::now() >= deadline || self.inner.shutdown.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    async fn stop(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        drop(inner.pool.close());
        let tasks: Vec<_> = inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        while inner.starting.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        remove_all_of_run(inner).await;
        if !inner.opts.environment {
            cgroup::remove_parent(&inner.opts.cgroup_root, &inner.opts.cgroup_parent);
        }
        let _ = std::fs::remove_file(&inner.opts.socket_path);
        info!(image = %inner.opts.image, "docker runtime stopped");
    }
}

/// Removes every container of this run and waits until the engine lists none: a removal
/// another task started (a watcher's) answers 409 at once but takes a while to finish.
async fn remove_all_of_run(inner: &Inner) {
    let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
    let mut removed = None;
    loop {
        match remove_labelled(&inner.docker, LABEL_RUN, &inner.run_id).await {
            Ok(0) => break,
            Ok(found) => {
                removed.get_or_insert(found);
            }
            Err(err) => {
                warn!(cause = %err, "cannot remove worker containers");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(run = %inner.run_id, "worker containers still listed after shutdown");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    debug!(removed = removed.unwrap_or(0), "worker containers removed");
}

/// Removes (force) every container whose label `key` is `value`; returns how many.
async fn remove_labelled(docker: &Docker, key: &str, value: &str) -> Result<usize, RuntimeError> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{key}={value}")],
        )])),
        ..Default::default()
    };
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(engine("list containers"))?;
    let ids: Vec<String> = found.into_iter().filter_map(|c| c.id).collect();
    let removals = ids.iter().map(|id| remove(docker, id));
    futures_util::future::join_all(removals).await;
    Ok(ids.len())
}

/// Force-removes a container, ignoring one that is already gone.
async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => {}
        Err(err) => warn!(container = id, cause = %err, "cannot remove a container"),
    }
}

fn write_worker_file(path: &Path) -> Result<(), RuntimeError> {
    let io = |op, source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("mkdir", e))?;
    }
    let tmp = path.with_extension("py.tmp");
    std::fs::write(&tmp, WORKER_SOURCE).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

/// Keeps the pool at its target: starts as many containers as it lacks, concurrently.
async fn fill(inner: Arc<Inner>) {
    loop {
        let budget = inner.opts.cpus_in_use.warmup_budget(inner.cpu_count);
        for _ in 0..inner.pool.claim_deficit_within(budget) {
            let inner = inner.clone();
            inner.starting.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let attempted = std::time::Instant::now();
                let started = start_one(&inner).await;
                inner.starting.fetch_sub(1, Ordering::SeqCst);
                match started {
                    Ok(()) => {}
                    Err(_) if inner.shutdown.is_cancelled() => inner.pool.spawn_lost(),
                    Err(err) => {
                        let reason = explain_start_failure(&inner, &err).await;
                        warn!(cause = %reason, "cannot start a worker container");
                        tokio::time::sleep(START_BACKOFF).await;
                        inner.pool.start_failed(attempted, reason);
                    }
                }
            });
        }
        tokio::select! {
            _ = inner.pool.replenish_wanted() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Why a container start failed, in words an operator acts on: an engine that no longer
/// answers (stopped, restarting) is named with its address, anything else is the engine's
/// own answer.
async fn explain_start_failure(inner: &Inner, err: &RuntimeError) -> String {
    if inner.docker.ping().await.is_ok() {
        return err.to_string();
    }
    format!(
        "the Docker engine at {} does not answer ({err}); start dockerd (or point DOCKER_HOST at it) and the node uses it again as soon as it answers",
        inner.address
    )
}

/// Creates and starts one warm container and waits for its worker's HELLO.
async fn start_one(inner: &Arc<Inner>) -> Result<(), RuntimeError> {
    let n = inner.names.fetch_add(1, Ordering::Relaxed);
    let name = format!("fleetmap-{}-{}-{n}", inner.opts.node_id, inner.run_id);
    let body = spec::create_body(
        &inner.opts,
        &inner.opts.image,
        &inner.run_id,
        &inner.all_cpus,
    );
    let (id, worker) = launch(inner, name, body).await?;
    let pid = worker.pid;
    debug!(container = %id, pid, "warm container joined the pool");
    if let Err(worker) = inner.pool.push(worker) {
        drop(worker);
        remove(&inner.docker, &id).await;
    }
    Ok(())
}

/// Creates and starts a container from `body` and waits for its worker's HELLO; returns the
/// container id and its connected, idle worker.
async fn launch(
    inner: &Arc<Inner>,
    name: String,
    body: bollard::models::ContainerCreateBody,
) -> Result<(String, IdleWorker), RuntimeError> {
    let options = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let docker = &inner.docker;
    let id = docker
        .create_container(Some(options), body)
        .await
        .map_err(engine("create container"))?
        .id;
    let started = async {
        docker
            .start_container(&id, None)
            .await
            .map_err(engine("start container"))?;
        let state = docker
            .inspect_container(&id, None)
            .await
            .map_err(engine("inspect container"))?
            .state
            .unwrap_or_default();
        state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| RuntimeError::Engine {
                action: "start container",
                reason: format!("container {id} has no running process"),
            })
    };
    let pid = match started.await {
        Ok(pid) if !inner.shutdown.is_cancelled() => {
            crate::runtime::timer_slack::tighten(pid);
            pid
        }
        Ok(_) => {
            remove(docker, &id).await;
            return Err(RuntimeError::ShuttingDown);
        }
        Err(err) => {
            remove(docker, &id).await;
            return Err(err);
        }
    };
    let exit = ExitWatch::new();
    let (tx, rx) = oneshot::channel();
    let early = {
        let mut books = inner.books();
        books.by_pid.insert(
            pid,
            Live {
                id: id.clone(),
                exit: exit.clone(),
                slot: None,
            },
        );
        match books.early.remove(&pid) {
            Some(conn) => Some(conn),
            None => {
                books.expecting.insert(pid, tx);
                None
            }
        }
    };
    tokio::spawn(watch(inner.clone(), id.clone(), pid));
    let conn = match early {
        Some(conn) => conn,
        None => match tokio::time::timeout(HELLO_TIMEOUT, rx).await {
            Ok(Ok(conn)) => conn,
            _ => {
                inner.books().expecting.remove(&pid);
                remove(docker, &id).await;
                return Err(RuntimeError::Interpreter {
                    python: inner.opts.python.clone(),
                    reason: format!("container {id} sent no HELLO in time"),
                });
            }
        },
    };
    Ok((id, IdleWorker { pid, conn, exit }))
}

/// Waits for a container to stop, publishes how it ended (OOM kills counted for its slot
/// first, so an instance that sees the exit also sees the count), then removes it.
async fn watch(inner: Arc<Inner>, id: String, pid: u32) {
    let state = loop {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let _ = inner.docker.wait_container(&id, Some(options)).next().await;
        match inner.docker.inspect_container(&id, None).await {
            // The wait is one HTTP request under the client's timeout: a container that
            // outlives it is still running, so wait again.
            Ok(found) if found.state.as_ref().and_then(|s| s.running) == Some(true) => {
                if inner.shutdown.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(found) => break found.state.unwrap_or_default(),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => break Default::default(),
            Err(_) if inner.shutdown.is_cancelled() => break Default::default(),
            // The engine is away (stopped, restarting): its next run knows how the container
            // ended and lets it be removed, so ask again then. The instance does not wait for
            // this: a closed socket is a dead worker to it.
            Err(err) => {
                debug!(container = %id, cause = %err, "the engine does not answer; will ask again");
                tokio::time::sleep(ENGINE_RETRY).await;
            }
        }
    };
    let oom = state.oom_killed.unwrap_or(false);
    let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
    let status = exit_status(oom, code);
    let live = {
        let mut books = inner.books();
        let live = books.by_pid.remove(&pid);
        if let (true, Some(slot)) = (oom, live.as_ref().and_then(|l| l.slot.clone())) {
            // A released slot's count is gone and stays gone.
            if books.slots.contains_key(&slot) {
                *books.ooms.entry(slot).or_default() += 1;
            }
        }
        books.expecting.remove(&pid);
        live
    };
    debug!(container = %id, pid, oom, ?status, "container stopped");
    if let Some(live) = live {
        live.exit.set(status);
    }
    remove(&inner.docker, &id).await;
}

/// How a container ended, from the engine's state: an OOM kill is SIGKILL whatever the code;
/// the engine reports init's death by signal N as 128 + N; no state at all (the container
/// vanished) counts as SIGKILL.
fn exit_status(oom: bool, code: Option<i32>) -> ExitStatus {
    let killed = |signal| ExitStatus {
        code: None,
        signal: Some(signal),
    };
    match code {
        _ if oom => killed(libc::SIGKILL),
        Some(c) if c > 128 && c <= 128 + 64 => killed(c - 128),
        Some(c) => ExitStatus {
            code: Some(c),
            signal: None,
        },
        None => killed(libc::SIGKILL),
    }
}

/// Accepts worker connections until shutdown and hands each HELLO'd one to its container.
async fn accept(inner: Arc<Inner>, listener: UnixListener) {
    let shutdown = inner.shutdown.clone();
    let checking = inner.clone();
    accept_workers(
        listener,
        shutdown,
        move |stream| {
            let inner = checking.clone();
            async move { hello(&inner, stream).await }
        },
        move |(pid, conn): (u32, WorkerConn)| {
            let inner = inner.clone();
            async move { deliver(&inner, pid, conn) }
        },
    )
    .await;
}

/// Hands a HELLO'd connection to the start waiting for its container, or parks it until the
/// start has learnt the container's pid (a fast worker can connect before inspect answers).
fn deliver(inner: &Arc<Inner>, pid: u32, conn: WorkerConn) {
    let mut books = inner.books();
    if let Some(tx) = books.expecting.remove(&pid) {
        if let Err(conn) = tx.send(conn) {
            drop(conn);
        }
        return;
    }
    if books.early.len() >= MAX_HANDSHAKES {
        warn!(pid, "too many unclaimed worker connections; refusing one");
        return;
    }
    books.early.insert(pid, conn);
    drop(books);
    let inner = inner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(HELLO_TIMEOUT).await;
        if inner.books().early.remove(&pid).is_some() {
            warn!(
                pid,
                "a worker connection belongs to no container of this run"
            );
        }
    });
}

/// Reads a worker's HELLO; returns the peer's host pid (HELLO's own pid is namespaced).
async fn hello(inner: &Inner, stream: UnixStream) -> Result<(u32, WorkerConn), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let own_uid = nix::unistd::geteuid().as_raw();
    if cred.uid() != own_uid {
        return Err(format!(
            "the peer runs as uid {} but workers run as uid {own_uid}",
            cred.uid()
        ));
    }
    let peer = cred
        .pid()
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or("the peer's pid is not visible to the daemon")?;
    let mut conn = WorkerConn::new(stream, inner.opts.max_frame_bytes);
    let frame = conn
        .read_frame()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("closed before HELLO")?;
    frame
        .expect_kind(FrameKind::Hello)
        .map_err(|e| e.to_string())?;
    let hello: WorkerHello = frame.parse_json().map_err(|e| e.to_string())?;
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "worker speaks protocol {} but the daemon speaks {PROTOCOL_VERSION}",
            hello.version
        ));
    }
    Ok((peer, conn))
}

impl DockerRuntime {
    /// Takes a warm container for `slot` and puts it into the slot's limits.
    async fn take_for_slot(
        &self,
        slot: &Slot,
        update: bollard::models::ContainerUpdateBody,
    ) -> Result<Worker, RuntimeError> {
        let inner = &self.inner;
        loop {
            let idle = inner
                .pool
                .take(|dead| {
                    debug!(pid = dead.pid, "dropping a warm container that is gone");
                    let id = inner.books().by_pid.get(&dead.pid).map(|l| l.id.clone());
                    if let Some(id) = id {
                        let docker = inner.docker.clone();
                        tokio::spawn(async move { remove(&docker, &id).await });
                    }
                })
                .await?;
            let Some(id) = inner.books().by_pid.get(&idle.pid).map(|l| l.id.clone()) else {
                continue;
            };
            if let Err(err) = inner.docker.update_container(&id, update.clone()).await {
                remove(&inner.docker, &id).await;
                if idle.exit.get().is_some() || !idle.conn.looks_alive() {
                    continue;
                }
                return Err(engine("update container")(err));
            }
            {
                let mut books = inner.books();
                if let Some(live) = books.by_pid.get_mut(&idle.pid) {
                    live.slot = Some(slot.id.clone());
                }
                books.slots.insert(slot.id.clone(), idle.pid);
            }
            // Off the hot path: the name records which slot took the container.
            let n = inner.names.fetch_add(1, Ordering::Relaxed);
            let name = format!("fleetmap-{}-{}-{n}", inner.opts.node_id, slot.id);
            let docker = inner.docker.clone();
            tokio::spawn(async move {
                let _ = docker
                    .rename_container(&id, RenameContainerOptions { name })
                    .await;
            });
            return Ok(Worker {
                pid: idle.pid,
                conn: idle.conn,
                exit: idle.exit,
                scratch: Some(scratch::in_container(&inner.opts)),
                oom_kills_before: None,
            });
        }
    }
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn python_version(&self) -> String {
        self.inner.python.clone()
    }

    fn cgroup_flavor(&self) -> CgroupFlavor {
        self.inner.opts.flavor
    }

    fn pool(&self) -> PoolInfo {
        self.inner.pool.info()
    }

    fn acquire<'a>(
        &'a self,
        slot: &'a Slot,
        env: &'a EnvTarget,
    ) -> BoxFuture<'a, Result<Worker, RuntimeError>> {
        async move {
            let inner = &self.inner;
            if *env != EnvTarget::NodeDefault {
                return Err(RuntimeError::Environment(format!(
                    "the docker runtime of image {} serves only that image",
                    inner.opts.image
                )));
            }
            if let Some(gpu) = &slot.gpu {
                return gpu::acquire(inner, slot, gpu).await;
            }
            let update = spec::slot_update(&slot.limits());
            // Held before the pool is asked, so the replacement the take wakes up does not
            // start on this slot's CPUs; given back if no container comes of it.
            inner.hold_cpus(&mut inner.books(), &slot.id, slot.cpus.len());
            let taken = self.take_for_slot(slot, update).await;
            if taken.is_err() {
                inner.release_cpus(&mut inner.books(), &slot.id);
            }
            taken
        }
        .boxed()
    }

    fn oom_kills(&self, slot_id: &str) -> u64 {
        self.inner.books().ooms.get(slot_id).copied().unwrap_or(0)
    }

    fn kill<'a>(&'a self, slot_id: &'a str, _pid: u32) -> BoxFuture<'a, ()> {
        async move {
            let inner = &self.inner;
            let Some((id, exit)) = inner.container_of_slot(slot_id) else {
                return;
            };
            let options = KillContainerOptions {
                signal: "SIGKILL".to_string(),
            };
            if let Err(err) = inner.docker.kill_container(&id, Some(options)).await {
                debug!(container = %id, cause = %err, "kill refused (already stopped?)");
            }
            if exit.wait(KILL_WAIT).await.is_none() {
                warn!(container = %id, slot = slot_id, "the engine did not report a killed container gone");
            }
        }
        .boxed()
    }

    fn release(&self, slot_id: String) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            let id = {
                let mut books = inner.books();
                books.ooms.remove(&slot_id);
                inner.release_cpus(&mut books, &slot_id);
                let pid = books.slots.remove(&slot_id);
                pid.and_then(|p| books.by_pid.get(&p).map(|l| l.id.clone()))
            };
            if let Some(id) = id {
                remove(&inner.docker, &id).await;
            }
            // Its CPUs are free again: replacements may start on them now.
            inner.pool.request_replenish();
            debug!(slot = %slot_id, "slot released");
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.stop().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_states_map_to_exits() {
        assert_eq!(exit_status(true, Some(0)).signal, Some(libc::SIGKILL));
        assert_eq!(exit_status(false, Some(137)).signal, Some(9));
        assert_eq!(exit_status(false, Some(139)).signal, Some(11));
        assert_eq!(exit_status(false, Some(3)).code, Some(3));
        assert_eq!(exit_status(false, Some(0)).code, Some(0));
        assert_eq!(exit_status(false, None).signal, Some(libc::SIGKILL));
    }
}
