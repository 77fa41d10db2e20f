//! The environment cache: keys to built environments, with single-flight builds (jobs that
//! need a key being built wait for that build and share its outcome, failure included),
//! counters, leases that keep an environment from eviction while a job uses it, and a
//! least-recently-used disk budget.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agent_proto::{EnvCounters, EnvEntryInfo, EnvSpec, EnvironmentsInfo};
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn, Instrument};

use super::build_log::BuildLog;
use super::index::{now_unix, Index, IndexEntry};
use super::key::{env_key, KeyBase};
use super::recipe::{self, Recipe};
use super::{EnvError, EnvTarget};
use crate::config::RuntimeKind;

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// Image tag or venv directory.
    pub location: String,
    /// Image id (docker).
    pub image_id: Option<String>,
    /// Python version inside.
    pub python: String,
    /// Disk use.
    pub size_bytes: u64,
    /// Warnings to repeat to every job using it.
    pub notes: Vec<String>,
}

/// Builds and removes environments of one runtime (docker images or venvs).
pub trait Builder: Send + Sync + Debug {
    /// What besides the recipe decides an environment here.
    fn key_base(&self) -> &KeyBase;
    /// The base, for reports (image tag or interpreter path).
    fn base_name(&self) -> String;
    /// Whether the runtime's own environment already is what `recipe` asks for (a clone
    /// whose every pin the node's interpreter has).
    fn default_satisfies(&self, recipe: &Recipe) -> bool;
    /// Builds `recipe` under `key`, writing progress to `log`.
    fn build<'a>(
        &'a self,
        key: &'a str,
        recipe: &'a Recipe,
        log: &'a BuildLog,
    ) -> BoxFuture<'a, Result<Built, EnvError>>;
    /// Whether a built environment is still there (checked at start).
    fn exists<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, bool>;
    /// Removes a built environment.
    fn remove<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, ()>;
    /// Removes environments of this node the index does not list (an earlier run that died
    /// between building and indexing, or whose index was lost); returns how many.
    fn remove_unindexed<'a>(&'a self, indexed: &'a [IndexEntry]) -> BoxFuture<'a, usize>;
    /// What the runtime needs to run in a built environment.
    fn target(&self, entry: &IndexEntry) -> EnvTarget;
}

/// Told when an environment is evicted, so warm workers of it are stopped first.
pub trait Retire: Send + Sync + Debug {
    /// Stops whatever runs from environment `key`.
    fn retire(&self, key: String) -> BoxFuture<'static, ()>;
}

/// What the cache is started with.
#[derive(Debug, Clone)]
pub struct EnvConfig {
    /// Where the index (and, on the process runtime, the venvs) live: `<state>/envs`.
    pub dir: PathBuf,
    /// Most bytes of built environments kept.
    pub budget_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    builds: AtomicU64,
    hits: AtomicU64,
    shared: AtomicU64,
    failures: AtomicU64,
    evictions: AtomicU64,
    node_default: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One build in progress.
#[derive(Debug)]
struct Flight {
    log: BuildLog,
    done: watch::Sender<Option<Result<(), EnvError>>>,
}

#[derive(Debug)]
struct Inner {
    runtime: RuntimeKind,
    builder: Arc<dyn Builder>,
    budget: u64,
    /// A std `Mutex`: map reads and writes (and the small index file write), never held
    /// across an await.
    index: Mutex<Index>,
    /// Builds in progress by key. A std `Mutex`, never held across an await.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Leases held per key. A std `Mutex`, never held across an await.
    leases: Mutex<HashMap<String, u64>>,
    retire: Mutex<Option<Arc<dyn Retire>>>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache; clones share it.
#[derive(Debug, Clone)]
pub struct EnvCache {
    inner: Arc<Inner>,
}

/// A job's hold on its environment: while it lives, the environment is not evicted.
#[derive(Debug)]
pub struct EnvLease {
    target: EnvTarget,
    notes: Vec<String>,
    /// Python version inside a built environment; `None` for the node's own.
    python: Option<String>,
    cache: Option<Arc<Inner>>,
}

impl EnvLease {
    /// The node's own environment (no cache involved).
    pub fn node_default() -> Self {
        Self {
            target: EnvTarget::NodeDefault,
            notes: Vec::new(),
            python: None,
            cache: None,
        }
    }

    /// What the runtime needs.
    pub fn target(&self) -> &EnvTarget {
        &self.target
    }

    /// Warnings of the environment's build (shown to the job's client).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The Python version inside a built environment (`None`: the node's own interpreter).
    pub fn python(&self) -> Option<&str> {
        self.python.as_deref()
    }
}

impl Drop for EnvLease {
    fn drop(&mut self) {
        if let (Some(cache), Some(key)) = (&self.cache, self.target.key()) {
            let mut leases = lock(&cache.leases);
            if let Some(count) = leases.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    leases.remove(key);
                }
            }
        }
    }
}

impl EnvCache {
    /// A cache over `builder`'s environments; reads the index and drops entries whose
    /// environment is gone.
    pub async fn start(
        runtime: RuntimeKind,
        builder: Arc<dyn Builder>,
        config: EnvConfig,
    ) -> Result<Self, EnvError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| EnvError::Node(format!("mkdir {}: {e}", config.dir.display())))?;
        let mut index = Index::load(&config.dir.join("index.json"));
        let mut gone = Vec::new();
        for entry in index.entries.values() {
            if !builder.exists(entry).await {
                gone.push(entry.key.clone());
            }
        }
        for key in &gone {
            index.entries.remove(key);
        }
        if !gone.is_empty() {
            warn!(
                count = gone.len(),
                "indexed environments are gone; forgot them"
            );
            index.save();
        }
        let indexed: Vec<IndexEntry> = index.entries.values().cloned().collect();
        let orphans = builder.remove_unindexed(&indexed).await;
        if orphans > 0 {
            info!(
                removed = orphans,
                "removed environments the index did not list"
            );
        }
        info!(
            environments = index.entries.len(),
            used_bytes = index.used_bytes(),
            budget_bytes = config.budget_bytes,
            "environment cache ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                runtime,
                builder,
                budget: config.budget_bytes,
                index: Mutex::new(index),
                flights: Mutex::new(HashMap::new()),
                leases: Mutex::new(HashMap::new()),
                retire: Mutex::new(None),
                counters: Counters::default(),
            }),
        })
    }

    /// Sets who stops warm workers of an evicted environment.
    pub fn set_retire(&self, retire: Arc<dyn Retire>) {
        *lock(&self.inner.retire) = Some(retire);
    }

    /// The runtime the cache builds for.
    pub fn runtime(&self) -> RuntimeKind {
        self.inner.runtime
    }

    /// The environment at once when it needs no build (node default, a satisfied clone, a
    /// cached key); `None` when a build (or a build in progress) is needed.
    pub fn resolve_ready(&self, spec: &EnvSpec) -> Option<Result<EnvLease, EnvError>> {
        let recipe = match recipe::from_spec(spec, self.inner.runtime) {
            Ok(recipe) => recipe,
            Err(err) => return Some(Err(err)),
        };
        self.ready(&recipe).map(Ok)
    }

    fn ready(&self, recipe: &Recipe) -> Option<EnvLease> {
        let inner = &self.inner;
        if *recipe == Recipe::NodeDefault || inner.builder.default_satisfies(recipe) {
            Counters::bump(&inner.counters.node_default);
            return Some(EnvLease::node_default());
        }
        let key = env_key(inner.builder.key_base(), recipe);
        let lease = self.lease(&key)?;
        Counters::bump(&inner.counters.hits);
        Some(lease)
    }

    /// A lease on built environment `key`, touching its last use.
    fn lease(&self, key: &str) -> Option<EnvLease> {
        let inner = &self.inner;
        let (target, notes, python) = {
            let mut index = lock(&inner.index);
            let entry = index.entries.get_mut(key)?;
            entry.last_used_unix = now_unix();
            let found = (
                inner.builder.target(entry),
                entry.notes.clone(),
                entry.python.clone(),
            );
            index.save();
            found
        };
        *lock(&inner.leases).entry(key.to_string()).or_default() += 1;
        Some(EnvLease {
            target,
            notes,
            python: Some(python),
            cache: Some(inner.clone()),
        })
    }

    /// The environment of `spec`, building it when needed (one build per key however many
    /// jobs ask); each line of the build log goes to `on_line`.
    pub async fn resolve(
        &self,
        spec: &EnvSpec,
        mut on_line: impl FnMut(String),
    ) -> Result<EnvLease, EnvError> {
        let recipe = recipe::from_spec(spec, self.inner.runtime)?;
        if let Some(lease) = self.ready(&recipe) {
            return Ok(lease);
        }
        let key = env_key(self.inner.builder.key_base(), &recipe);
        let (flight, mut lines) = self.join_or_start(&key, recipe, spec.recipe_digest());
        let mut done = flight.done.subscribe();
        drop(flight);
        loop {
            if done.borrow_and_update().is_some() {
                break;
            }
            tokio::select! {
                line = lines.recv() => match line {
                    Ok(line) => on_line(line),
                    Err(broadcast::error::RecvError::Lagged(n)) => on_line(format!("… {n} build log lines skipped")),
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                changed = done.changed() => if changed.is_err() { break },
            }
        }
        while let Ok(line) = lines.try_recv() {
            on_line(line);
        }
        let outcome = done.borrow().clone();
        match outcome {
            Some(Ok(())) => self.lease(&key).ok_or_else(|| {
                EnvError::Node(format!(
                    "environment {key} was built but is gone again (evicted under disk pressure); retry the job or raise --env-disk-budget-gb"
                ))
            }),
            Some(Err(err)) => Err(err),
            None => Err(EnvError::Node(format!(
                "the build of environment {key} ended without an outcome"
            ))),
        }
    }

    /// Joins the build of `key` in progress, or starts it on a task of its own (so a job
    /// that goes away does not stop a build others wait for).
    fn join_or_start(
        &self,
        key: &str,
        recipe: Recipe,
        recipe_digest: Option<String>,
    ) -> (Arc<Flight>, broadcast::Receiver<String>) {
        let inner = &self.inner;
        let mut flights = lock(&inner.flights);
        if let Some(flight) = flights.get(key) {
            Counters::bump(&inner.counters.shared);
            let lines = flight.log.subscribe();
            return (flight.clone(), lines);
        }
        Counters::bump(&inner.counters.builds);
        let (done, _) = watch::channel(None);
        let flight = Arc::new(Flight {
            log: BuildLog::new(),
            done,
        });
        let lines = flight.log.subscribe();
        flights.insert(key.to_string(), flight.clone());
        drop(flights);
        let cache = self.clone();
        let key = key.to_string();
        let span = tracing::info_span!("env_build", key = %&key[..16], kind = recipe.kind_name());
        let building = flight.clone();
        tokio::spawn(
            async move { cache.run_build(key, recipe, recipe_digest, building).await }
                .instrument(span),
        );
        (flight, lines)
    }

    async fn run_build(
        &self,
        key: String,
        recipe: Recipe,
        recipe_digest: Option<String>,
        flight: Arc<Flight>,
    ) {
        let inner = &self.inner;
        info!("environment build started");
        let started = std::time::Instant::now();
        let outcome = inner.builder.build(&key, &recipe, &flight.log).await;
        let outcome = match outcome {
            Ok(built) => {
                info!(
                    location = %built.location,
                    size_bytes = built.size_bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "environment built"
                );
                let now = now_unix();
                let mut index = lock(&inner.index);
                index.entries.insert(
                    key.clone(),
                    IndexEntry {
                        key: key.clone(),
                        kind: recipe.kind_name().to_string(),
                        location: built.location,
                        image_id: built.image_id,
                        python: built.python,
                        size_bytes: built.size_bytes,
                        created_unix: now,
                        last_used_unix: now,
                        notes: built.notes,
                        recipe_digest,
                    },
                );
                index.save();
                Ok(())
            }
            Err(err) => {
                Counters::bump(&inner.counters.failures);
                warn!(cause = %err, "environment build failed");
                Err(err)
            }
        };
        lock(&inner.flights).remove(&key);
        let built = outcome.is_ok();
        flight.done.send_replace(Some(outcome));
        if built {
            self.evict_over_budget(&key).await;
        }
    }

    /// Removes least-recently-used environments no job holds until the rest fit the budget
    /// (`keep` is never removed).
    pub async fn evict_over_budget(&self, keep: &str) {
        let inner = &self.inner;
        loop {
            let victim = {
                let index = lock(&inner.index);
                if index.used_bytes() <= inner.budget {
                    return;
                }
                let leases = lock(&inner.leases);
                index
                    .entries
                    .values()
                    .filter(|e| e.key != keep && !leases.contains_key(&e.key))
                    .min_by_key(|e| e.last_used_unix)
                    .cloned()
            };
            let Some(victim) = victim else {
                warn!(
                    budget_bytes = inner.budget,
                    "environments in use exceed the disk budget"
                );
                return;
            };
            {
                let mut index = lock(&inner.index);
                index.entries.remove(&victim.key);
                index.save();
            }
            let retire = lock(&inner.retire).clone();
            if let Some(retire) = retire {
                retire.retire(victim.key.clone()).await;
            }
            inner.builder.remove(&victim).await;
            Counters::bump(&inner.counters.evictions);
            info!(key = %victim.key, location = %victim.location, size_bytes = victim.size_bytes, "environment evicted (least recently used)");
        }
    }

    /// Recipe digests of the environments built here (for registration and heartbeats).
    pub fn recipe_digests(&self) -> Vec<String> {
        let index = lock(&self.inner.index);
        let mut digests: Vec<String> = index
            .entries
            .values()
            .filter_map(|e| e.recipe_digest.clone())
            .collect();
        digests.sort();
        digests.dedup();
        digests
    }

    /// The report of `GET /v1/environments`.
    pub fn info(&self) -> EnvironmentsInfo {
        let inner = &self.inner;
        let c = &inner.counters;
        let leases = lock(&inner.leases).clone();
        let index = lock(&inner.index);
        let mut entries: Vec<EnvEntryInfo> = index
            .entries
            .values()
            .map(|e| EnvEntryInfo {
                key: e.key.clone(),
                kind: e.kind.clone(),
                location: e.location.clone(),
                python: e.python.clone(),
                size_bytes: e.size_bytes,
                last_used_unix: e.last_used_unix,
                in_use: leases.get(&e.key).copied().unwrap_or(0),
                notes: e.notes.clone(),
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used_unix));
        let mut building: Vec<String> = lock(&inner.flights).keys().cloned().collect();
        building.sort();
        EnvironmentsInfo {
            runtime: match inner.runtime {
                RuntimeKind::Process => "process",
                RuntimeKind::Docker => "docker",
            }
            .to_string(),
            base: inner.builder.base_name(),
            python_version: inner.builder.key_base().python.clone(),
            budget_bytes: inner.budget,
            used_bytes: index.used_bytes(),
            building,
            counters: EnvCounters {
                builds: c.builds.load(Ordering::Relaxed),
                hits: c.hits.load(Ordering::Relaxed),
                shared: c.shared.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
                evictions: c.evictions.load(Ordering::Relaxed),
                node_default: c.node_default.load(Ordering::Relaxed),
            },
            entries,
        }
    }
}
