//! The daemon's shared state: a cheap cloneable handle (`Arc<Inner>`) given to every request
//! and background task.

use std::path::PathBuf;
use std::sync::Arc;

use agent_proto::ClusterToken;
use tokio_util::sync::CancellationToken;

use crate::capacity::Capacity;
use crate::config::Limits;
use crate::drain::Drain;
use crate::env::EnvCache;
use crate::job::registry::Registry;
use crate::job::supervisor::JobContext;
use crate::runtime::Runtime;

/// Handle on the daemon; clones share it.
#[derive(Debug, Clone)]
pub struct Daemon(Arc<Inner>);

/// What the handle shares. Each field synchronises itself; there is no lock around the whole.
#[derive(Debug)]
pub struct Inner {
    /// This node's name.
    pub node_id: String,
    /// Base URL announced to the coordinator.
    pub address: String,
    /// Host name, for node info.
    pub hostname: String,
    /// Bounds on memory and concurrency.
    pub limits: Limits,
    /// Where instances run.
    pub runtime: Arc<dyn Runtime>,
    /// CPU/RAM slots.
    pub capacity: Arc<Capacity>,
    /// Jobs.
    pub registry: Arc<Registry>,
    /// Where progress files go.
    pub progress_dir: PathBuf,
    /// Built environments.
    pub envs: EnvCache,
    /// Cancelled when the daemon starts shutting down: no new jobs from then on.
    pub shutdown: CancellationToken,
    /// Draining: no new jobs, finish what runs, leave the fleet.
    pub drain: Drain,
    /// The fleet's shared secret: required on every route but health, sent to the
    /// coordinator. `None`: open (local use).
    pub cluster_token: Option<ClusterToken>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl Daemon {
    /// Wraps the parts.
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// The parts.
    pub fn inner(&self) -> &Inner {
        &self.0
    }

    /// What a job supervisor needs.
    pub fn job_context(&self) -> JobContext {
        JobContext {
            runtime: self.0.runtime.clone(),
            capacity: self.0.capacity.clone(),
            registry: self.0.registry.clone(),
            progress_dir: self.0.progress_dir.clone(),
            envs: self.0.envs.clone(),
            node_id: self.0.node_id.clone(),
        }
    }
}
