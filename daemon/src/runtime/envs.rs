//! The runtime the daemon hands jobs: the main runtime for the node's own environment, and a
//! runtime of its own per built environment (warm containers of the environment's image, or
//! a zygote on the environment's venv), started on first use and kept warm for the next job.
//!
//! At most `max_warm` environment runtimes are kept; the least recently used one that no
//! slot uses is stopped when another starts. A slot's kill, OOM count and release go to the
//! runtime that gave it its worker.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_proto::PoolInfo;
use fleetmap_sandbox::{CgroupFlavor, Slot};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::OnceCell;
use tracing::info;

use super::{Runtime, RuntimeError, Worker};
use crate::env::cache::Retire;
use crate::env::EnvTarget;

/// Starts the runtime of one built environment.
pub trait EnvRuntimeFactory: Send + Sync + Debug {
    /// A runtime whose workers run in `target` (never the node default).
    fn start(
        &self,
        target: EnvTarget,
    ) -> BoxFuture<'static, Result<Arc<dyn Runtime>, RuntimeError>>;
}

/// One environment's runtime, started once however many acquirers ask at the same time.
#[derive(Debug, Default)]
struct Warm {
    runtime: OnceCell<Arc<dyn Runtime>>,
    /// Slots holding a worker of it.
    slots: Mutex<u64>,
    last_used: Mutex<Option<Instant>>,
}

impl Warm {
    fn busy(&self) -> bool {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) > 0
    }

    fn idle_since(&self) -> Option<Instant> {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
struct Books {
    /// Environment key → its runtime.
    warm: HashMap<String, Arc<Warm>>,
    /// Slot id → key of the environment runtime that gave it its worker.
    slots: HashMap<String, String>,
}

/// Routes each acquire to the runtime of its environment.
#[derive(Debug)]
pub struct EnvRouter {
    main: Arc<dyn Runtime>,
    factory: Arc<dyn EnvRuntimeFactory>,
    max_warm: usize,
    /// A std `Mutex`: map operations only, never held across an await.
    books: Mutex<Books>,
}

impl EnvRouter {
    /// A router over `main`, starting environment runtimes with `factory`.
    pub fn new(
        main: Arc<dyn Runtime>,
        factory: Arc<dyn EnvRuntimeFactory>,
        max_warm: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            main,
            factory,
            max_warm: max_warm.max(1),
            books: Mutex::new(Books::default()),
        })
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The runtime serving `slot_id`.
    fn runtime_of(&self, slot_id: &str) -> Arc<dyn Runtime> {
        let books = self.books();
        books
            .slots
            .get(slot_id)
            .and_then(|key| books.warm.get(key))
            .and_then(|warm| warm.runtime.get().cloned())
            .unwrap_or_else(|| self.main.clone())
    }

    /// The warm runtime of `target`, starting it when needed.
    async fn warm(&self, key: &str, target: &EnvTarget) -> Result<Arc<Warm>, RuntimeError> {
        let warm = self
            .books()
            .warm
            .entry(key.to_string())
            .or_default()
            .clone();
        let started = warm
            .runtime
            .get_or_try_init(|| async {
                info!(env = %&key[..key.len().min(16)], "starting warm workers of an environment");
                self.factory.start(target.clone()).await
            })
            .await;
        match started {
            Ok(_) => {
                self.make_room(key);
                Ok(warm)
            }
            Err(err) => {
                let mut books = self.books();
                if books.warm.get(key).is_some_and(|w| Arc::ptr_eq(w, &warm)) {
                    books.warm.remove(key);
                }
                Err(err)
            }
        }
    }

    /// Stops least recently used environment runtimes no slot uses, beyond `max_warm`.
    fn make_room(&self, keep: &str) {
        let mut stopping = Vec::new();
        {
            let mut books = self.books();
            while books.warm.len() > self.max_warm {
                let victim = books
                    .warm
                    .iter()
                    .filter(|(k, w)| k.as_str() != keep && !w.busy() && w.runtime.get().is_some())
                    .min_by_key(|(_, w)| w.idle_since())
                    .map(|(k, _)| k.clone());
                let Some(victim) = victim else { break };
                if let Some(warm) = books.warm.remove(&victim) {
                    stopping.push((victim, warm));
                }
            }
        }
        for (key, warm) in stopping {
            if let Some(runtime) = warm.runtime.get().cloned() {
                info!(env = %&key[..key.len().min(16)], "stopping the warm workers of a least recently used environment");
                tokio::spawn(async move { runtime.shutdown().await });
            }
        }
    }

    /// Stops every environment runtime (the main one is stopped by the caller).
    async fn stop_all(&self) {
        let warm: Vec<Arc<Warm>> = self.books().warm.drain().map(|(_, w)| w).collect();
        let stops = warm
            .iter()
            .filter_map(|w| w.runtime.get().cloned())
            .map(|r| async move { r.shutdown().await });
        futures_util::future::join_all(stops).await;
    }
}

impl Retire for EnvRouter {
    fn retire(&self, key: String) -> BoxFuture<'static, ()> {
        let warm = self.books().warm.remove(&key);
        async move {
            if let Some(runtime) = warm.and_then(|w| w.runtime.get().cloned()) {
                runtime.shutdown().await;
            }
        }
        .boxed()
    }
}

impl Runtime for EnvRouter {
    fn kind(&self) -> &'static str {
        self.main.kind()
    }

    fn python_version(&self) -> String {
        self.main.python_version()
    }

    fn cgroup_flavor(&self) -> CgroupFlavor {
        self.main.cgroup_flavor()
    }

    fn pool(&self) -> PoolInfo {
        self.main.pool()
    }

    fn acquire<'a>(
        &'a self,
        slot: &'a Slot,
        env: &'a EnvTarget,
    ) -> BoxFuture<'a, Result<Worker, RuntimeError>> {
        async move {
            let Some(key) = env.key() else {
                return self.main.acquire(slot, env).await;
            };
            let warm = self.warm(key, env).await?;
            let Some(runtime) = warm.runtime.get().cloned() else {
                return Err(RuntimeError::Environment(
                    "the environment's workers are not running".to_string(),
                ));
            };
            *warm.slots.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            *warm.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.books().slots.insert(slot.id.clone(), key.to_string());
            let worker = runtime.acquire(slot, &EnvTarget::NodeDefault).await;
            if worker.is_err() {
                self.unbind(&slot.id);
            }
            worker
        }
        .boxed()
    }

    fn oom_kills(&self, slot_id: &str) -> u64 {
        self.runtime_of(slot_id).oom_kills(slot_id)
    }

    fn kill<'a>(&'a self, slot_id: &'a str, pid: u32) -> BoxFuture<'a, ()> {
        let runtime = self.runtime_of(slot_id);
        async move { runtime.kill(slot_id, pid).await }.boxed()
    }

    fn release(&self, slot_id: String) -> BoxFuture<'static, ()> {
        let runtime = self.runtime_of(&slot_id);
        self.unbind(&slot_id);
        runtime.release(slot_id)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            self.stop_all().await;
            self.main.shutdown().await;
        }
        .boxed()
    }
}

impl EnvRouter {
    /// Forgets which environment runtime served `slot_id`.
    fn unbind(&self, slot_id: &str) {
        let mut books = self.books();
        if let Some(key) = books.slots.remove(slot_id) {
            if let Some(warm) = books.warm.get(&key) {
                let mut slots = warm.slots.lock().unwrap_or_else(|e| e.into_inner());
                *slots = slots.saturating_sub(1);
                *warm.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
        }
    }
}

/// How long an environment runtime may take to have its first warm worker.
pub const ENV_READY_WAIT: Duration = Duration::from_secs(60);

/// Starts docker runtimes of environment images.
#[derive(Debug)]
pub struct DockerEnvFactory {
    /// The main runtime's options (image, socket and pool replaced per environment).
    pub base: super::docker::DockerOptions,
    /// Every CPU of the node.
    pub all_cpus: Vec<u32>,
    /// Warm containers per environment.
    pub pool_target: u32,
}

impl EnvRuntimeFactory for DockerEnvFactory {
    fn start(
        &self,
        target: EnvTarget,
    ) -> BoxFuture<'static, Result<Arc<dyn Runtime>, RuntimeError>> {
        let mut opts = self.base.clone();
        let all_cpus = self.all_cpus.clone();
        let pool_target = self.pool_target;
        async move {
            let EnvTarget::Image { key, image } = target else {
                return Err(RuntimeError::Environment(
                    "the docker runtime runs images, not venvs".to_string(),
                ));
            };
            let dir = opts
                .socket_path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            opts.socket_path = dir.join(format!("d-{}.sock", &key[..key.len().min(12)]));
            opts.image = image.clone();
            opts.python = "python3".to_string();
            opts.environment = true;
            opts.pool_target = pool_target;
            let runtime = super::docker::DockerRuntime::start(opts, &all_cpus).await?;
            if !runtime.wait_pool_any(ENV_READY_WAIT).await {
                runtime.shutdown().await;
                return Err(RuntimeError::Environment(format!(
                    "no worker container of environment image {image} became ready within {} s; the image needs python3 with cloudpickle on its PATH",
                    ENV_READY_WAIT.as_secs()
                )));
            }
            Ok(Arc::new(runtime) as Arc<dyn Runtime>)
        }
        .boxed()
    }
}

/// Starts process runtimes on environment venvs.
#[derive(Debug)]
pub struct ProcessEnvFactory {
    /// The main runtime's options (interpreter, socket and pool replaced per environment).
    pub base: super::process::ProcessOptions,
    /// The daemon's cgroups.
    pub cgroups: Arc<dyn fleetmap_sandbox::SlotCgroups>,
    /// Idle workers per environment.
    pub pool_target: u32,
}

impl EnvRuntimeFactory for ProcessEnvFactory {
    fn start(
        &self,
        target: EnvTarget,
    ) -> BoxFuture<'static, Result<Arc<dyn Runtime>, RuntimeError>> {
        let mut opts = self.base.clone();
        let cgroups = self.cgroups.clone();
        let pool_target = self.pool_target;
        async move {
            let EnvTarget::Venv { key, python } = target else {
                return Err(RuntimeError::Environment(
                    "the process runtime runs venvs, not images".to_string(),
                ));
            };
            let dir = opts
                .socket_path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            opts.socket_path = dir.join(format!("p-{}.sock", &key[..key.len().min(12)]));
            opts.python = python;
            opts.environment = true;
            opts.pool_target = pool_target;
            let runtime = super::process::ProcessRuntime::start(opts, cgroups).await?;
            Ok(Arc::new(runtime) as Arc<dyn Runtime>)
        }
        .boxed()
    }
}
