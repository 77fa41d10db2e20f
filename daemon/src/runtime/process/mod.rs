//! The `process` runtime: workers are processes forked from a warm zygote, each moved into a
//! cgroup of its own while it idles in the pool, and limited to a slot's cpuset and memory
//! when a job takes it.
//!
//! Why a home cgroup per idle worker: moving a process between cgroups (`cgroup.procs`) takes
//! the kernel's threadgroup rwsem for writing, which waits for an RCU grace period once the
//! lock has been idle a while: 5–13 ms measured on a v1 host, on the path of every job that
//! follows a pause. Rewriting an existing cgroup's `cpuset.cpus` and memory limit costs
//! microseconds. So the move happens when the worker joins the pool, and a job only re-limits;
//! when the worker leaves, its home is emptied for the next worker (`homes.rs`).
//!
//! Layout under the state dir: `worker/fleetmap_worker.py` (embedded in the binary, written at
//! start) and `worker.sock` (workers connect here and say HELLO; the pid they claim is checked
//! against the socket's peer credentials).

mod exits;
mod gpu;
mod homes;
pub(crate) mod pool;
mod priority;
pub mod scratch;
mod spares;
pub mod stale;
mod zygote;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::{FrameKind, PoolInfo, WorkerHello, PROTOCOL_VERSION};
use fleetmap_sandbox::{CgroupFlavor, SlotCgroups, SlotLimits};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::exits::Exits;
use self::homes::Homes;
use self::pool::{IdleWorker, Pool};
use self::scratch::ScratchDirs;
use self::spares::Spares;
use crate::env::EnvTarget;
use crate::runtime::accept::accept_workers;
use crate::runtime::{Runtime, RuntimeError, Worker, WorkerConn};

/// The worker module, embedded so the daemon binary is all a node needs besides Python.
pub const WORKER_SOURCE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../images/worker/fleetmap_worker.py"
));

/// What the process runtime is started with.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// The worker Python.
    pub python: PathBuf,
    /// The daemon's state dir.
    pub state_dir: PathBuf,
    /// Where procfs is mounted.
    pub proc_root: PathBuf,
    /// Idle workers to keep.
    pub pool_target: u32,
    /// Largest frame body workers may send and receive.
    pub max_frame_bytes: usize,
    /// How long the zygote may take to become ready.
    pub startup_timeout: Duration,
    /// Where the worker module is written (`<state>/worker/fleetmap_worker.py`).
    pub worker_file: PathBuf,
    /// The socket workers connect to (`<state>/worker.sock`).
    pub socket_path: PathBuf,
    /// Limits of an idle worker's home cgroup (the whole node); `None` leaves idle workers in
    /// the pool cgroup and moves them at job time.
    pub home_limits: Option<SlotLimits>,
    /// A runtime for one environment beside the daemon's main one: it leaves host-wide
    /// cleanup (an earlier run's workers, the daemon's cgroup parent) to the main runtime and
    /// removes only what it made.
    pub environment: bool,
    /// Where slots' scratch spaces are mounted (`<state>/scratch`).
    pub scratch_root: PathBuf,
    /// Most bytes of a slot's scratch space (at most half the slot's RAM is used).
    pub scratch_bytes: u64,
}

impl ProcessOptions {
    /// Options with the protocol's layout under `state_dir`.
    pub fn new(python: PathBuf, state_dir: PathBuf, proc_root: PathBuf, pool_target: u32) -> Self {
        Self {
            worker_file: state_dir.join("worker").join("fleetmap_worker.py"),
            socket_path: state_dir.join("worker.sock"),
            scratch_root: state_dir.join("scratch"),
            scratch_bytes: crate::config::DEFAULT_SCRATCH_BYTES,
            python,
            state_dir,
            proc_root,
            pool_target,
            max_frame_bytes: agent_proto::DEFAULT_MAX_FRAME_BYTES,
            startup_timeout: Duration::from_secs(60),
            home_limits: None,
            environment: false,
        }
    }
}

/// Where [`ProcessRuntime::place`] put a worker.
struct Placed {
    /// The slot cgroup's OOM-kill count when already known.
    oom_kills: Option<u64>,
    /// The worker's home scratch, when it has one.
    home_scratch: Option<String>,
}

/// Shared by the runtime handle, the zygote task and the acceptor.
#[derive(Debug)]
pub(crate) struct Inner {
    opts: ProcessOptions,
    cgroups: Arc<dyn SlotCgroups>,
    pool: Pool,
    scratch: ScratchDirs,
    exits: Exits,
    spares: Spares,
    /// Idle workers' homes, and emptied ones kept for the next workers.
    homes: Homes,
    /// Whether the zygote runs at idle priority (idle workers must be raised back when taken).
    idle_priority: AtomicBool,
    /// Python version the zygote reported. A std `Mutex`: read or replaced, never awaited on.
    python: Mutex<String>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn set_python(&self, version: String) {
        *self.python.lock().unwrap_or_else(|e| e.into_inner()) = version;
    }

    /// Puts the home `name` back for the next worker (blocking: cgroup writes).
    fn vacate(&self, name: &str) {
        match &self.opts.home_limits {
            Some(limits) => self
                .homes
                .vacate(self.cgroups.as_ref(), &self.scratch, name, limits),
            None => {
                self.scratch.remove(name);
                let _ = self.cgroups.remove_slot(name);
            }
        }
    }

    /// Vacates the home of a worker that died while idle.
    fn drop_home(self: &Arc<Self>, pid: u32) {
        if let Some(home) = self.homes.take(pid) {
            let inner = self.clone();
            tokio::task::spawn_blocking(move || inner.vacate(&home.name));
        }
    }

    /// Removes the slot-cgroup `name` and its scratch, or vacates it when it is a home
    /// (blocking: cgroup writes).
    fn retire(&self, name: &str) {
        if Homes::is_home(name) {
            self.vacate(name);
        } else {
            self.scratch.remove(name);
            if let Err(err) = self.cgroups.remove_slot(name) {
                warn!(cgroup = name, cause = %err, "cannot remove a slot cgroup");
            }
        }
    }
}

/// Workers forked from a zygote into per-slot cgroups.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

impl ProcessRuntime {
    /// Kills workers an earlier run left behind, writes the worker module, listens on the
    /// worker socket and starts the zygote; returns once the zygote is ready.
    pub async fn start(
        opts: ProcessOptions,
        cgroups: Arc<dyn SlotCgroups>,
    ) -> Result<Self, RuntimeError> {
        if !opts.environment {
            let stale = stale::kill_workers_of(&opts.proc_root, &opts.worker_file);
            if stale > 0 {
                info!(killed = stale, "killed workers of an earlier run");
            }
            write_worker_file(&opts.worker_file)?;
        }
        let _ = std::fs::remove_file(&opts.socket_path);
        let listener =
            UnixListener::bind(&opts.socket_path).map_err(|source| RuntimeError::Io {
                op: "bind",
                path: opts.socket_path.clone(),
                source,
            })?;
        // Only this user may connect: a worker receives a job's function and inputs.
        std::fs::set_permissions(&opts.socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| RuntimeError::Io {
                op: "chmod",
                path: opts.socket_path.clone(),
                source,
            })?;
        let startup_timeout = opts.startup_timeout;
        // An environment's runtime shares the root with the main one: only the main one
        // removes what an earlier run left there.
        let scratch = ScratchDirs::open(&opts.scratch_root, opts.scratch_bytes, !opts.environment)
            .map_err(|err| RuntimeError::Scratch(err.to_string()))?;
        // Emptied homes kept for the workers to come: twice the pool, so that the jitter
        // between a job's worker leaving and its replacement joining does not remove a home
        // one moment and make a new one the next (with the pool's size kept, about one job in
        // six did both, on a 2-CPU node running one-input jobs back to back).
        let keep_vacant = 2 * opts.pool_target as usize;
        let inner = Arc::new(Inner {
            pool: Pool::new(opts.pool_target),
            scratch,
            opts,
            cgroups,
            exits: Exits::default(),
            spares: Spares::default(),
            homes: Homes::new(keep_vacant),
            idle_priority: AtomicBool::new(false),
            python: Mutex::new(String::new()),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let acceptor = tokio::spawn(accept(inner.clone(), listener));
        let zygote = tokio::spawn(zygote::supervise(inner.clone(), Some(ready_tx)));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([acceptor, zygote]);
        let runtime = Self { inner };
        let python = runtime.inner.opts.python.display().to_string();
        let outcome = match tokio::time::timeout(startup_timeout, ready_rx).await {
            Ok(Ok(Ok(version))) => Ok(version),
            Ok(Ok(Err(err))) => Err(err),
            Ok(Err(_)) => Err(RuntimeError::ShuttingDown),
            Err(_) => Err(RuntimeError::Interpreter {
                python,
                reason: format!(
                    "the zygote did not report ready within {} s",
                    startup_timeout.as_secs()
                ),
            }),
        };
        match outcome {
            Ok(version) => {
                info!(python = %version, "process runtime ready");
                Ok(runtime)
            }
            Err(err) => {
                runtime.stop().await;
                Err(err)
            }
        }
    }

    /// Waits until the pool holds its target of idle workers, or `limit` passes.
    pub async fn wait_pool_full(&self, limit: Duration) -> bool {
        self.inner.pool.wait_full(limit).await
    }

    async fn stop(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        for worker in inner.pool.close() {
            sigkill(worker.pid);
        }
        let tasks: Vec<_> = inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        for pid in inner.exits.live_pids() {
            sigkill(pid);
        }
        if inner.opts.environment {
            // Only what this runtime made: idle workers' home cgroups (slots are released
            // by their instances).
            let homes = inner.homes.drain();
            let cgroups = inner.cgroups.clone();
            let scratch_of = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for name in homes {
                    let _ = cgroups.kill_slot(&name);
                    let _ = cgroups.remove_slot(&name);
                    scratch_of.scratch.remove(&name);
                }
            })
            .await;
            let _ = std::fs::remove_file(&inner.opts.socket_path);
            info!(python = %inner.opts.python.display(), "environment process runtime stopped");
            return;
        }
        let killed = stale::kill_workers_of(&inner.opts.proc_root, &inner.opts.worker_file);
        inner.scratch.remove_all();
        let cgroups = inner.cgroups.clone();
        // On a graceful stop the daemon's parent cgroup goes too, so test and restart cycles
        // leave nothing behind on the host.
        match tokio::task::spawn_blocking(move || cgroups.remove_all()).await {
            Ok(Ok(report)) => debug!(?report, killed, "worker cgroups removed"),
            Ok(Err(err)) => warn!(cause = %err, "cannot remove worker cgroups"),
            Err(err) => warn!(cause = %err, "cgroup cleanup task failed"),
        }
        let _ = std::fs::remove_file(&inner.opts.socket_path);
        info!("process runtime stopped");
    }
}

impl ProcessRuntime {
    /// Puts `pid` into the slot's limits: its home cgroup re-limited when it has one (no
    /// process move), else a ready spare of the slot's shape, else a cgroup created now (and a
    /// spare of this shape prepared for the next slot). Returns the slot cgroup's OOM-kill
    /// count when it is already known (the home's, read when the worker moved in).
    fn place(
        &self,
        slot: &fleetmap_sandbox::Slot,
        limits: &SlotLimits,
        pid: u32,
    ) -> Result<Placed, fleetmap_sandbox::SandboxError> {
        let inner = &self.inner;
        // A slot whose worker died gets another one: the dead one's home is vacated (or its
        // slot cgroup and scratch removed).
        if let Some(previous) = inner.spares.rebind(&slot.id) {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || inner.retire(&previous));
        }
        if let Some(home) = inner.homes.take(pid) {
            match inner.homes.fit(inner.cgroups.as_ref(), &home.name, limits) {
                Ok(()) => {
                    let home_scratch = home.scratch.then(|| home.name.clone());
                    inner.spares.bind(&slot.id, home.name);
                    return Ok(Placed {
                        oom_kills: Some(home.oom_kills),
                        home_scratch,
                    });
                }
                Err(err) => {
                    warn!(pid, cause = %err, "cannot re-limit a worker's home cgroup; moving it");
                    let inner = inner.clone();
                    tokio::task::spawn_blocking(move || {
                        inner
                            .homes
                            .remove(inner.cgroups.as_ref(), &inner.scratch, &home.name)
                    });
                }
            }
        }
        let name = match inner.spares.take(&slot.id, limits) {
            Some(name) => name,
            None => {
                inner.cgroups.create_slot(&slot.id, limits)?;
                slot.id.clone()
            }
        };
        inner.cgroups.move_into_slot(&name, pid)?;
        if let Some(plan) = inner.spares.plan(limits) {
            let inner = inner.clone();
            let limits = limits.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(old) = plan.evict {
                    let _ = inner.cgroups.remove_slot(&old);
                }
                let created = match inner.cgroups.create_slot(&plan.name, &limits) {
                    Ok(()) => true,
                    Err(err) => {
                        warn!(cause = %err, "cannot prepare a spare slot cgroup");
                        false
                    }
                };
                inner.spares.done(&limits, plan.name, created);
            });
        }
        Ok(Placed {
            oom_kills: None,
            home_scratch: None,
        })
    }
}

fn sigkill(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
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

/// Accepts worker connections until shutdown: each HELLO'd worker gets its home cgroup (when
/// cgroups are on) and joins the pool.
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
        move |worker: IdleWorker| {
            let inner = inner.clone();
            async move {
                // Without cgroups there is no move to save: affinity is set at job time.
                let homes = inner.cgroups.flavor() != CgroupFlavor::None;
                if let Some(limits) = inner.opts.home_limits.clone().filter(|_| homes) {
                    let settling = inner.clone();
                    let pid = worker.pid;
                    let _ = tokio::task::spawn_blocking(move || {
                        settling.homes.settle(
                            settling.cgroups.as_ref(),
                            &settling.scratch,
                            pid,
                            &limits,
                        )
                    })
                    .await;
                }
                debug!(pid = worker.pid, "worker joined the pool");
                if let Err(worker) = inner.pool.push(worker) {
                    sigkill(worker.pid);
                }
            }
        },
    )
    .await;
}

/// Reads and checks a worker's HELLO.
async fn hello(inner: &Inner, stream: UnixStream) -> Result<IdleWorker, String> {
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
    let peer = cred.pid().and_then(|pid| u32::try_from(pid).ok());
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
    if peer != Some(hello.pid) {
        return Err(format!(
            "HELLO claims pid {} but the socket's peer is {peer:?}",
            hello.pid
        ));
    }
    Ok(IdleWorker {
        pid: hello.pid,
        exit: inner.exits.helloed(hello.pid),
        conn,
    })
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn python_version(&self) -> String {
        self.inner
            .python
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn cgroup_flavor(&self) -> CgroupFlavor {
        self.inner.cgroups.flavor()
    }

    fn pool(&self) -> PoolInfo {
        self.inner.pool.info()
    }

    fn acquire<'a>(
        &'a self,
        slot: &'a fleetmap_sandbox::Slot,
        env: &'a EnvTarget,
    ) -> BoxFuture<'a, Result<Worker, RuntimeError>> {
        async move {
            let inner = &self.inner;
            if *env != EnvTarget::NodeDefault {
                return Err(RuntimeError::Environment(format!(
                    "the process runtime on {} serves only its own environment",
                    inner.opts.python.display()
                )));
            }
            let limits = slot.limits();
            loop {
                let idle = inner
                    .pool
                    .take(|dead| {
                        sigkill(dead.pid);
                        inner.exits.forget(dead.pid, &dead.exit);
                        inner.drop_home(dead.pid);
                    })
                    .await?;
                if inner.idle_priority.load(Ordering::Relaxed) {
                    priority::raise(idle.pid);
                }
                let placed = self.place(slot, &limits, idle.pid).and_then(|placed| {
                    gpu::fence(inner.cgroups.as_ref(), slot, idle.pid).map(|()| placed)
                });
                match placed {
                    Ok(placed) => {
                        let oom_kills_before = placed.oom_kills;
                        let scratch = match &placed.home_scratch {
                            Some(home) => inner.scratch.adopt(home, slot.ram_bytes),
                            None => inner.scratch.prepare(&slot.id, slot.ram_bytes),
                        };
                        let scratch = match scratch {
                            Ok(scratch) => scratch,
                            Err(err) => {
                                sigkill(idle.pid);
                                return Err(RuntimeError::Scratch(err.to_string()));
                            }
                        };
                        return Ok(Worker {
                            pid: idle.pid,
                            conn: idle.conn,
                            exit: idle.exit,
                            scratch: Some(scratch),
                            oom_kills_before,
                        });
                    }
                    Err(err) if idle.exit.get().is_some() || !idle.conn.looks_alive() => {
                        debug!(pid = idle.pid, cause = %err, "worker died while being placed; taking another");
                        inner.exits.forget(idle.pid, &idle.exit);
                    }
                    Err(err) => {
                        sigkill(idle.pid);
                        return Err(err.into());
                    }
                }
            }
        }
        .boxed()
    }

    fn oom_kills(&self, slot_id: &str) -> u64 {
        let name = self.inner.spares.name(slot_id);
        self.inner.cgroups.oom_kills(&name).unwrap_or(0)
    }

    fn kill<'a>(&'a self, slot_id: &'a str, pid: u32) -> BoxFuture<'a, ()> {
        sigkill(pid);
        let cgroups = self.inner.cgroups.clone();
        let name = self.inner.spares.name(slot_id);
        async move {
            match tokio::task::spawn_blocking(move || cgroups.kill_slot(&name)).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    warn!(slot = slot_id, cause = %err, "cannot kill the slot's processes")
                }
                Err(err) => warn!(slot = slot_id, cause = %err, "slot kill task failed"),
            }
        }
        .boxed()
    }

    fn release(&self, slot_id: String) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let name = self.inner.spares.unbind(&slot_id);
        async move {
            let id = slot_id.clone();
            let released = tokio::task::spawn_blocking(move || {
                inner.retire(&name);
                if name != id {
                    inner.scratch.remove(&id);
                }
                if let Err(err) = inner.cgroups.remove_devices(&id) {
                    warn!(slot = %id, cause = %err, "cannot remove the slot's device cgroup");
                }
            });
            match released.await {
                Ok(()) => debug!(slot = %slot_id, "slot released"),
                Err(err) => warn!(slot = %slot_id, cause = %err, "slot release task failed"),
            }
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.stop().boxed()
    }
}
