//! The node registry: which daemons exist, what they offer, and whether they are alive.
//!
//! Nodes register (`POST /v1/nodes`) and heartbeat; a node is dead once it misses heartbeats for
//! the node timeout, or at once when a connection to it fails. Every change that matters to
//! running jobs (a node appears, dies or comes back) bumps a generation on a `watch` channel, so
//! jobs waiting for a node or holding inputs on a dead one wake up without polling.

pub mod liveness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agent_proto::{NodeInfo, NodeRegistration, NodeView};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use liveness::Liveness;

/// Longest accepted node id.
const MAX_NODE_ID_LEN: usize = 128;

/// How long a dead node stays listed before it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A live node, as jobs see it when they are placed.
#[derive(Debug, Clone)]
pub struct LiveNode {
    /// Its id.
    pub node_id: String,
    /// Base URL of its daemon, without a trailing slash.
    pub address: String,
    /// What it offered at its last heartbeat.
    pub info: NodeInfo,
}

#[derive(Debug)]
struct Entry {
    address: String,
    info: NodeInfo,
    liveness: Liveness,
}

#[derive(Debug)]
struct Inner {
    /// std Mutex: every critical section is a few map operations and never awaits.
    nodes: Mutex<HashMap<String, Entry>>,
    /// Generation bumped on every change jobs care about.
    changes: watch::Sender<u64>,
    timeout: Duration,
    max_nodes: usize,
}

/// Cheap cloneable handle to the registry.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// An empty registry declaring nodes dead after `timeout` without heartbeat.
    pub fn new(timeout: Duration, max_nodes: usize) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                nodes: Mutex::new(HashMap::new()),
                changes,
                timeout,
                max_nodes,
            }),
        }
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (each critical
        // section is a single insert, update or removal), so a poisoned lock is still usable.
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
    }

    /// Subscribes to changes: the receiver wakes when a node appears, dies or comes back.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Registers (or re-registers) a node, alive as of `now`.
    pub fn register(&self, registration: NodeRegistration, now: Instant) -> Result<(), Error> {
        validate_node_id(&registration.node_id)?;
        let address = normalize_address(&registration.address)?;
        let mut info = registration.info;
        info.node_id.clone_from(&registration.node_id);
        info.address.clone_from(&address);
        {
            let mut nodes = self.nodes();
            if !nodes.contains_key(&registration.node_id) && nodes.len() >= self.inner.max_nodes {
                return Err(Error::TooMany(format!(
                    "the coordinator already knows {} nodes, its limit; remove dead nodes or raise the limit",
                    nodes.len()
                )));
            }
            nodes.insert(
                registration.node_id.clone(),
                Entry {
                    address: address.clone(),
                    info,
                    liveness: Liveness::seen(now),
                },
            );
        }
        info!(node = %registration.node_id, %address, "node registered");
        self.bump();
        Ok(())
    }

    /// Records a heartbeat; `NodeNotFound` tells the node to register again.
    pub fn heartbeat(&self, node_id: &str, mut info: NodeInfo, now: Instant) -> Result<(), Error> {
        let (revived, drains) = {
            let mut nodes = self.nodes();
            let entry = nodes
                .get_mut(node_id)
                .ok_or_else(|| Error::NodeNotFound(node_id.to_owned()))?;
            info.node_id = node_id.to_owned();
            info.address.clone_from(&entry.address);
            let drains = info.draining && !entry.info.draining;
            entry.info = info;
            (entry.liveness.heartbeat(now, self.inner.timeout), drains)
        };
        if revived {
            info!(node = %node_id, "node is alive again");
        }
        if drains {
            info!(node = %node_id, "node is draining: it gets no new inputs");
        }
        if revived || drains {
            self.bump();
        }
        Ok(())
    }

    /// Forgets a node that left the fleet (after draining); `NodeNotFound` if it was unknown.
    pub fn leave(&self, node_id: &str) -> Result<(), Error> {
        self.nodes()
            .remove(node_id)
            .ok_or_else(|| Error::NodeNotFound(node_id.to_owned()))?;
        info!(node = %node_id, "node left the fleet");
        self.bump();
        Ok(())
    }

    /// Marks a node dead at once because a connection to it failed.
    pub fn connection_failed(&self, node_id: &str, reason: &str, now: Instant) {
        let killed = {
            let mut nodes = self.nodes();
            nodes
                .get_mut(node_id)
                .is_some_and(|entry| entry.liveness.connection_failed(now, self.inner.timeout))
        };
        if killed {
            warn!(node = %node_id, cause = %reason, "node is dead: a connection to it failed");
            self.bump();
        }
    }

    /// Announces nodes that stopped heartbeating and forgets long-dead ones; returns the newly
    /// dead.
    pub fn reap(&self, now: Instant) -> Vec<String> {
        let timeout = self.inner.timeout;
        let dead: Vec<String> = {
            let mut nodes = self.nodes();
            nodes.retain(|_, entry| {
                entry.liveness.is_alive(now, timeout)
                    || now.saturating_duration_since(entry.liveness.last_seen) < FORGET_AFTER
            });
            nodes
                .iter_mut()
                .filter_map(|(id, entry)| {
                    entry.liveness.newly_dead(now, timeout).then(|| id.clone())
                })
                .collect()
        };
        for node in &dead {
            warn!(node = %node, timeout_ms = timeout.as_millis() as u64, "node is dead: it missed its heartbeats");
        }
        if !dead.is_empty() {
            self.bump();
        }
        dead
    }

    /// Whether `node_id` is draining (it finishes what it holds and takes nothing new).
    pub fn is_draining(&self, node_id: &str) -> bool {
        self.nodes()
            .get(node_id)
            .is_some_and(|entry| entry.info.draining)
    }

    /// Whether `node_id` is alive at `now`.
    pub fn is_alive(&self, node_id: &str, now: Instant) -> bool {
        self.nodes()
            .get(node_id)
            .is_some_and(|entry| entry.liveness.is_alive(now, self.inner.timeout))
    }

    /// The live nodes that take work (not draining), sorted by id.
    pub fn live(&self, now: Instant) -> Vec<LiveNode> {
        let mut live: Vec<LiveNode> = self
            .nodes()
            .iter()
            .filter(|(_, entry)| entry.liveness.is_alive(now, self.inner.timeout))
            .filter(|(_, entry)| !entry.info.draining)
            .map(|(id, entry)| LiveNode {
                node_id: id.clone(),
                address: entry.address.clone(),
                info: entry.info.clone(),
            })
            .collect();
        live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        live
    }

    /// Every known node with its liveness, sorted by id.
    pub fn views(&self, now: Instant) -> Vec<NodeView> {
        let mut views: Vec<NodeView> = self
            .nodes()
            .values()
            .map(|entry| NodeView {
                info: entry.info.clone(),
                alive: entry.liveness.is_alive(now, self.inner.timeout),
                last_seen_ms: entry.liveness.last_seen_ms(now),
                jobs_running: Vec::new(),
            })
            .collect();
        views.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
        views
    }
}

/// Announces dead nodes every `interval` until `shutdown`.
pub async fn run_reaper(registry: Registry, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                registry.reap(Instant::now());
            }
        }
    }
}

fn validate_node_id(node_id: &str) -> Result<(), Error> {
    let ok = !node_id.is_empty()
        && node_id.len() <= MAX_NODE_ID_LEN
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadNode(format!(
            "node_id {node_id:?} must be 1 to {MAX_NODE_ID_LEN} characters from A-Z, a-z, 0-9, '_', '-' and '.'"
        )))
    }
}

fn normalize_address(address: &str) -> Result<String, Error> {
    let trimmed = address.trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| {
        Error::BadNode(format!(
            "address {address:?} is not a URL; use http://HOST:PORT or https://HOST:PORT"
        ))
    })?;
    let path_ok = uri.path().is_empty() || uri.path() == "/";
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() || !path_ok {
        return Err(Error::BadNode(format!(
            "address {address:?} must be a base URL like http://HOST:PORT or https://HOST:PORT"
        )));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::PoolInfo;

    pub(crate) fn info(node_id: &str, cpus: u32, ram_gb: u64) -> NodeInfo {
        NodeInfo {
            node_id: node_id.into(),
            version: "0.1.0".into(),
            hostname: "h".into(),
            address: String::new(),
            runtime: "process".into(),
            python_version: "3.11.7".into(),
            cgroup: "v1".into(),
            cpus,
            ram_bytes: ram_gb << 30,
            free_cpus: cpus,
            free_ram_bytes: ram_gb << 30,
            instances: 0,
            jobs: 0,
            pool: PoolInfo::default(),
            gpus: vec![],
            draining: false,
            environments: Vec::new(),
        }
    }

    #[test]
    fn addresses_are_http_or_https_base_urls() {
        assert_eq!(
            normalize_address("https://node-1:7071/").expect("https"),
            "https://node-1:7071"
        );
        assert!(normalize_address("http://10.0.0.1:7071").is_ok());
        for bad in ["ftp://node:21", "https://node:7071/v1", "node:7071"] {
            assert!(normalize_address(bad).is_err(), "{bad}");
        }
    }

    fn registration(node_id: &str) -> NodeRegistration {
        NodeRegistration {
            node_id: node_id.into(),
            address: "http://127.0.0.1:7071/".into(),
            info: info(node_id, 2, 4),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_die_without_heartbeats_and_changes_are_announced() {
        let registry = Registry::new(Duration::from_secs(5), 10);
        let mut changes = registry.subscribe();
        registry
            .register(registration("a"), Instant::now())
            .expect("valid");
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        assert_eq!(
            registry.live(Instant::now())[0].address,
            "http://127.0.0.1:7071"
        );

        tokio::time::advance(Duration::from_secs(3)).await;
        registry
            .heartbeat("a", info("a", 2, 4), Instant::now())
            .expect("known");
        assert!(
            !changes.has_changed().expect("open"),
            "a plain heartbeat is no change"
        );

        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(registry.reap(Instant::now()), vec!["a".to_owned()]);
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        assert!(registry.live(Instant::now()).is_empty());
        let views = registry.views(Instant::now());
        assert!(!views[0].alive);
        assert_eq!(views[0].last_seen_ms, 6000);

        registry
            .heartbeat("a", info("a", 2, 4), Instant::now())
            .expect("known");
        assert!(
            changes.has_changed().expect("open"),
            "coming back is a change"
        );
        assert!(registry.is_alive("a", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn reaper_task_announces_deaths_under_paused_time() {
        let registry = Registry::new(Duration::from_millis(500), 10);
        let shutdown = CancellationToken::new();
        let reaper = tokio::spawn(run_reaper(
            registry.clone(),
            Duration::from_millis(100),
            shutdown.clone(),
        ));
        registry
            .register(registration("a"), Instant::now())
            .expect("valid");
        let mut changes = registry.subscribe();
        changes.mark_unchanged();
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(registry.is_alive("a", Instant::now()));
        changes.changed().await.expect("death announced");
        assert!(!registry.is_alive("a", Instant::now()));
        assert!(Instant::now().elapsed() < Duration::from_secs(1));
        shutdown.cancel();
        reaper.await.expect("reaper stops");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_failure_kills_at_once() {
        let registry = Registry::new(Duration::from_secs(5), 10);
        registry
            .register(registration("a"), Instant::now())
            .expect("valid");
        registry.connection_failed("a", "connection refused", Instant::now());
        assert!(!registry.is_alive("a", Instant::now()));
        assert!(registry.reap(Instant::now()).is_empty(), "announced once");
    }

    #[tokio::test(start_paused = true)]
    async fn draining_nodes_take_no_work_and_leaving_forgets_them() {
        let registry = Registry::new(Duration::from_secs(5), 10);
        registry
            .register(registration("a"), Instant::now())
            .expect("valid");
        let mut changes = registry.subscribe();
        changes.mark_unchanged();
        let mut draining = info("a", 2, 4);
        draining.draining = true;
        registry
            .heartbeat("a", draining.clone(), Instant::now())
            .expect("known");
        assert!(changes.has_changed().expect("open"), "draining is a change");
        changes.mark_unchanged();
        assert!(registry.is_draining("a"));
        assert!(registry.is_alive("a", Instant::now()));
        assert!(registry.live(Instant::now()).is_empty(), "not placed on");
        registry
            .heartbeat("a", draining, Instant::now())
            .expect("known");
        assert!(!changes.has_changed().expect("open"), "announced once");
        registry.leave("a").expect("known");
        assert!(changes.has_changed().expect("open"));
        assert!(registry.views(Instant::now()).is_empty());
        assert!(matches!(registry.leave("a"), Err(Error::NodeNotFound(_))));
    }

    #[test]
    fn unknown_heartbeat_and_bad_registrations_are_refused() {
        let registry = Registry::new(Duration::from_secs(5), 1);
        assert!(matches!(
            registry.heartbeat("x", info("x", 1, 1), Instant::now()),
            Err(Error::NodeNotFound(_))
        ));
        let mut bad = registration("a/b");
        assert!(matches!(
            registry.register(bad.clone(), Instant::now()),
            Err(Error::BadNode(_))
        ));
        bad.node_id = "a".into();
        bad.address = "ftp://x".into();
        assert!(matches!(
            registry.register(bad, Instant::now()),
            Err(Error::BadNode(_))
        ));
        registry
            .register(registration("a"), Instant::now())
            .expect("valid");
        assert!(matches!(
            registry.register(registration("b"), Instant::now()),
            Err(Error::TooMany(_))
        ));
    }
}
