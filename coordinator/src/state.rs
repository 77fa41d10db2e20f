//! The coordinator's shared state: a cheap cloneable handle every connection and job task holds.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::jobs::Jobs;
use crate::keys::ApiKeys;
use crate::metrics::Metrics;
use crate::node_client::NodeClient;
use crate::registry::Registry;
use crate::store::Store;

/// What the handle points to.
#[derive(Debug)]
pub struct Inner {
    /// Settings.
    pub config: Config,
    /// Known nodes.
    pub registry: Registry,
    /// Running jobs.
    pub jobs: Jobs,
    /// Job records.
    pub store: Store,
    /// Pooled client to the nodes.
    pub nodes: NodeClient,
    /// Every connection and job task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Fired once when the coordinator starts shutting down.
    pub shutdown: CancellationToken,
    /// The API key checker of a keyed coordinator (`None`: client routes are open).
    pub api_keys: Option<ApiKeys>,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// Cloneable handle to the shared state.
#[derive(Debug, Clone)]
pub struct State {
    inner: Arc<Inner>,
}

impl State {
    /// State for `config`, recording jobs in `store`.
    pub fn new(config: Config, store: Store) -> Self {
        Self::with_api_keys(config, store, None)
    }

    /// State whose client routes need a key `api_keys` accepts (when given).
    pub fn with_api_keys(config: Config, store: Store, api_keys: Option<ApiKeys>) -> Self {
        let registry = Registry::new(config.node_timeout, config.max_nodes);
        let jobs = Jobs::new(config.max_jobs);
        let nodes = NodeClient::new(config.cluster_token.clone(), config.node_tls.clone());
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                jobs,
                store,
                nodes,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                api_keys,
                metrics: Metrics::new(),
            }),
        }
    }
}

impl Deref for State {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}
