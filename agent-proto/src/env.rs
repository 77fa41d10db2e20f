//! Environment cache report (`GET /v1/environments`): what a node holds, what it builds, and
//! how often it built, reused and failed.

use serde::{Deserialize, Serialize};

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvCounters {
    /// Builds started (a build shared by concurrent jobs counts once).
    pub builds: u64,
    /// Jobs that found their environment built already.
    pub hits: u64,
    /// Jobs that joined a build another job had started.
    pub shared: u64,
    /// Builds that failed.
    pub failures: u64,
    /// Environments removed to stay within the disk budget.
    pub evictions: u64,
    /// Jobs that ran in the node's own environment (node default, or a clone it satisfies).
    pub node_default: u64,
}

/// One built environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvEntryInfo {
    /// Its key (hex sha256).
    pub key: String,
    /// `packages`, `clone` or `dockerfile`.
    pub kind: String,
    /// The image tag (docker) or the venv directory (process).
    pub location: String,
    /// Python version inside.
    pub python: String,
    /// Disk use in bytes.
    pub size_bytes: u64,
    /// Last use, seconds since the Unix epoch.
    pub last_used_unix: u64,
    /// Jobs using it now.
    pub in_use: u64,
    /// Warnings of its build (requirements of a clone that could not be installed).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The answer of `GET /v1/environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentsInfo {
    /// `process` or `docker`.
    pub runtime: String,
    /// The base: image tag (docker) or worker interpreter (process).
    pub base: String,
    /// Python version of the base.
    pub python_version: String,
    /// Most bytes built environments may use before the least recently used go.
    pub budget_bytes: u64,
    /// Bytes they use now.
    pub used_bytes: u64,
    /// Keys being built now.
    pub building: Vec<String>,
    /// Counters since start.
    pub counters: EnvCounters,
    /// Built environments, most recently used first.
    pub entries: Vec<EnvEntryInfo>,
}
