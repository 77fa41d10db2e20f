//! Settings of one coordinator, filled from the command line by `main` or directly by tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::ClusterToken;
use fleetmap_service_tls::{ClientConfig, ServerConfig};

/// Everything [`crate::run`] needs besides the listener and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite database holding job records.
    pub db_path: PathBuf,
    /// Where to write the base URL once listening (tmp file + rename), for launchers.
    pub addr_file: Option<PathBuf>,
    /// How long a job waits for a first live node before it is refused with 503.
    pub node_wait: Duration,
    /// How often nodes are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A node that has not heartbeaten for this long is dead.
    pub node_timeout: Duration,
    /// How long inputs of a lost node wait for some node to re-run them before they fail `lost`.
    pub redispatch_wait: Duration,
    /// Largest frame body accepted from clients and nodes.
    pub max_frame_bytes: usize,
    /// Largest JSON request body (registrations, heartbeats).
    pub max_json_bytes: usize,
    /// Connections served at once; one beyond it gets a 503 answer and is closed.
    pub max_connections: usize,
    /// Jobs running at once; more are refused with 429.
    pub max_jobs: usize,
    /// Job result streams one client address may hold open at once; more are refused with 429.
    pub max_jobs_per_client: usize,
    /// Largest request head (request line and headers); a larger one gets 431 from hyper.
    /// Also the largest read buffer of a connection (hyper's `max_buf_size`, at least 8 KiB).
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head; slower ones (slowloris) are
    /// disconnected. Also ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// How long a JSON body, or a job submission's SPEC and FUNCTION, may take to arrive;
    /// slower ones get 408. Input frames are not timed: they come at the client's pace.
    pub request_head_timeout: Duration,
    /// Nodes registered at once; more are refused with 429.
    pub max_nodes: usize,
    /// Input items a node may hold per instance of its share before backpressure applies.
    pub window_items_per_instance: usize,
    /// Payload bytes a node may hold before backpressure applies.
    pub window_bytes: usize,
    /// How long a cancel request to a node may take.
    pub node_cancel_timeout: Duration,
    /// How long shutdown waits for connections and jobs to finish.
    pub shutdown_grace: Duration,
    /// Shared secret of the fleet: nodes must send it to register and heartbeat, and the
    /// coordinator sends it on every call to a node. `None`: no authentication (local use).
    pub cluster_token: Option<ClusterToken>,
    /// Payload bytes of detached jobs' results the database may hold; a detached job whose
    /// results would go beyond it fails with a sentence naming this limit.
    pub results_budget_bytes: u64,
    /// Bytes of output (prints and build log) each job keeps in the database for
    /// `GET /v1/jobs/{id}/logs`; past it one line says the rest was not kept. 0 keeps none.
    pub log_bytes_per_job: u64,
    /// Whether every client route (all but health and the node routes) needs an API key made
    /// with `fleetmap-coordinator keys create`. Off by default so the local cluster needs no
    /// configuration; a fleet's coordinator turns it on (`--require-api-keys`).
    pub require_api_keys: bool,
    /// TLS the coordinator serves with (`--tls-cert-file` and `--tls-key-file`); `None`: plain
    /// HTTP. The handshake counts toward `max_connections` and is bounded by
    /// `header_read_timeout`.
    pub tls: Option<Arc<ServerConfig>>,
    /// What calls to `https://` nodes trust (`--tls-ca-file`); `None`: the system's roots.
    pub node_tls: Option<Arc<ClientConfig>>,
}

impl Config {
    /// The defaults of `fleetmap-coordinator`, storing records in `db_path`.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Self {
            db_path: db_path.into(),
            addr_file: None,
            node_wait: Duration::from_millis(5000),
            heartbeat_interval: Duration::from_millis(1000),
            // With 1 s heartbeats and reaping every 500 ms, a silent node is declared dead
            // at most 4.5 s after its last heartbeat: within the 5 s the fleet promises.
            node_timeout: Duration::from_millis(4000),
            redispatch_wait: Duration::from_secs(30),
            max_frame_bytes: agent_proto::DEFAULT_MAX_FRAME_BYTES,
            max_json_bytes: 1024 * 1024,
            max_connections: 4096,
            max_jobs: 10_000,
            max_jobs_per_client: 1_000,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            request_head_timeout: Duration::from_secs(60),
            max_nodes: 10_000,
            window_items_per_instance: 4096,
            window_bytes: 64 * 1024 * 1024,
            node_cancel_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            cluster_token: None,
            results_budget_bytes: 10 << 30,
            log_bytes_per_job: 4 << 20,
            require_api_keys: false,
            tls: None,
            node_tls: None,
        }
    }

    /// How often the registry looks for nodes that stopped heartbeating.
    pub fn reap_interval(&self) -> Duration {
        (self.node_timeout / 8)
            .min(self.heartbeat_interval)
            .max(Duration::from_millis(10))
    }
}
