//! What a daemon is started with: identity, paths, cgroup settings and resource limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::ClusterToken;
use fleetmap_sandbox::{CgroupConfig, CgroupMode, DEFAULT_CGROUP_ROOT, DEFAULT_PROC_ROOT};
use fleetmap_service_tls::{ClientConfig, ServerConfig};

use crate::drain::Drain;

/// Default size limit of an instance's scratch space: half the smallest `func_ram` (1 GB),
/// since tmpfs pages count against the instance's memory limit.
pub const DEFAULT_SCRATCH_BYTES: u64 = 512 << 20;

/// Everything `run` needs besides the listener and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of this node, unique in the fleet (also names its cgroup parent by default).
    pub node_id: String,
    /// Directory the daemon owns: the worker module, its Unix socket, progress files.
    pub state_dir: PathBuf,
    /// Python interpreter the zygote and workers run on.
    pub worker_python: PathBuf,
    /// Base URL of the coordinator to register with, if any.
    pub coordinator: Option<String>,
    /// Base URL announced to the coordinator; defaults to the listener's address.
    pub advertise: Option<String>,
    /// File the base URL is written to (atomically) once the daemon serves.
    pub addr_file: Option<PathBuf>,
    /// Mount root of the cgroup filesystem(s).
    pub cgroup_root: PathBuf,
    /// Parent cgroup the daemon owns, relative to the root; `fleetmap/<node_id>` if unset.
    pub cgroup_parent: Option<String>,
    /// Whether cgroups are required, used when available, or off.
    pub cgroup_mode: CgroupMode,
    /// Where procfs is mounted (stale-worker cleanup reads it).
    pub proc_root: PathBuf,
    /// Idle workers kept warm; the number of CPUs (at least 2) if unset.
    pub pool_size: Option<u32>,
    /// Where instances run.
    pub runtime: RuntimeKind,
    /// Image the `docker` runtime starts workers from.
    pub docker_image: String,
    /// Pull `docker_image` from its registry when the engine lacks it.
    pub docker_pull: bool,
    /// Network mode of worker containers: `bridge` (own namespace, NAT; functions can reach
    /// the network) or `none`. Never `host`.
    pub container_network: String,
    /// Where the node's GPUs are read from.
    pub gpus: GpuSource,
    /// How often the GPU inventory is read again.
    pub gpu_refresh: Duration,
    /// Bounds on memory and concurrency.
    pub limits: Limits,
    /// Extra CA bundle environment builds trust (pip in images and venvs), for networks that
    /// intercept TLS. It must hold every CA builds need (usually the machine's own bundle).
    pub build_ca_bundle: Option<PathBuf>,
    /// Most bytes built environments may use before the least recently used are removed.
    pub env_disk_budget_bytes: u64,
    /// Built environments whose warm workers are kept at once.
    pub env_warm_max: usize,
    /// Most bytes of an instance's scratch space (a tmpfs that is its cwd and `TMPDIR`).
    pub scratch_bytes: u64,
    /// Warm workers per built environment; the main pool's size if unset.
    pub env_pool_size: Option<u32>,
    /// The fleet's shared secret (`--cluster-token-file` / `FLEETMAP_CLUSTER_TOKEN`).
    pub cluster_token: Option<ClusterToken>,
    /// Drain handle: whoever holds a clone can start a drain and wait for it to finish.
    pub drain: Drain,
    /// TEST ONLY: advertise and allocate this many one-CPU slots instead of the machine's CPUs
    /// (`--test-only-simulated-slots`); instances then share the real CPUs. For scale
    /// benchmarks of the coordinator, never for real work.
    pub simulated_slots: Option<u32>,
    /// TLS the daemon serves with (`--tls-cert-file` and `--tls-key-file`); `None`: plain
    /// HTTP. The handshake counts toward `max_connections` and is bounded by
    /// `header_read_timeout`.
    pub tls: Option<Arc<ServerConfig>>,
    /// What an `https://` coordinator is verified against (`--tls-ca-file`); `None`: the
    /// system's roots.
    pub coordinator_tls: Option<Arc<ClientConfig>>,
    /// The TLS files as configured, for `fleetmapd check`.
    pub tls_files: TlsFiles,
}

/// The TLS settings' files, as given.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// `--tls-cert-file`: the PEM certificate chain served.
    pub cert: Option<PathBuf>,
    /// `--tls-key-file`: its private key.
    pub key: Option<PathBuf>,
    /// `--tls-ca-file`: the CA(s) an `https://` coordinator is verified against.
    pub ca: Option<PathBuf>,
}

/// Where the daemon reads its GPUs from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSource {
    /// NVML, loaded at run time (no library or no GPU: no GPUs). What every real node uses.
    #[default]
    Nvml,
    /// TEST ONLY: the GPUs listed (`NAME:MEMORY_MIB[:mig],…`), for black-box and end-to-end
    /// tests on machines without a GPU. Instances get GPU variables but no device.
    TestOnlyFake(String),
}

/// Which [`crate::runtime::Runtime`] the daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// Worker processes forked from a zygote into cgroups (no Docker needed).
    #[default]
    Process,
    /// One container per worker on the local Docker engine.
    Docker,
}

impl Config {
    /// A configuration with defaults for everything but identity and paths.
    pub fn new(
        node_id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        worker_python: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            state_dir: state_dir.into(),
            worker_python: worker_python.into(),
            coordinator: None,
            advertise: None,
            addr_file: None,
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            cgroup_parent: None,
            cgroup_mode: CgroupMode::Auto,
            proc_root: PathBuf::from(DEFAULT_PROC_ROOT),
            pool_size: None,
            runtime: RuntimeKind::Process,
            docker_image: "fleetmap/base:1".to_string(),
            docker_pull: false,
            container_network: "bridge".to_string(),
            gpus: GpuSource::Nvml,
            gpu_refresh: Duration::from_secs(30),
            limits: Limits::default(),
            build_ca_bundle: None,
            env_disk_budget_bytes: 20 << 30,
            env_warm_max: 3,
            scratch_bytes: DEFAULT_SCRATCH_BYTES,
            env_pool_size: None,
            cluster_token: None,
            drain: Drain::new(),
            simulated_slots: None,
            tls: None,
            coordinator_tls: None,
            tls_files: TlsFiles::default(),
        }
    }

    /// The cgroup root and parent the sandbox crate works under.
    pub fn cgroup_config(&self) -> CgroupConfig {
        CgroupConfig {
            root: self.cgroup_root.clone(),
            parent: self
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| format!("fleetmap/{}", self.node_id)),
        }
    }

    /// Idle workers to keep: `pool_size`, or the number of CPUs and at least 2.
    pub fn pool_target(&self, cpus: usize) -> u32 {
        self.pool_size
            .unwrap_or_else(|| u32::try_from(cpus.max(2)).unwrap_or(u32::MAX))
    }
}

/// Bounds that keep the daemon's memory and concurrency finite.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame body accepted from clients and workers.
    pub max_frame_bytes: usize,
    /// Inputs one job may hold queued before its body is read no further.
    pub queue_items: usize,
    /// Payload bytes one job may hold queued before its body is read no further.
    pub queue_bytes: usize,
    /// Frames buffered per result stream before instances wait for the client.
    pub stream_frames: usize,
    /// Jobs that may run at once; more are refused with 429.
    pub max_jobs: usize,
    /// Client connections served at once (each may buffer up to one frame); a connection
    /// beyond it gets one 503 answer and is closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers); a larger one gets 431 from hyper.
    /// Also the largest read buffer of a connection (hyper's `max_buf_size`, at least 8 KiB).
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head; slower ones (slowloris) are
    /// disconnected. Also ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// How long a job submission may take to deliver its SPEC and FUNCTION frames; slower
    /// ones get 408. Input frames after them are not timed: they come at the pace of the
    /// client's iterable.
    pub request_head_timeout: Duration,
    /// Ended jobs remembered for `GET /v1/jobs/{id}`.
    pub finished_jobs_kept: usize,
    /// How long to wait for the zygote to report ready at start.
    pub startup_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: agent_proto::DEFAULT_MAX_FRAME_BYTES,
            queue_items: 262_144,
            queue_bytes: 64 * 1024 * 1024,
            stream_frames: 64,
            max_jobs: 64,
            max_connections: 256,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            request_head_timeout: Duration::from_secs(60),
            finished_jobs_kept: 1024,
            startup_timeout: Duration::from_secs(60),
        }
    }
}
