//! Node-level control types: what a daemon offers, registration and heartbeats.

use serde::{Deserialize, Serialize};

/// Whether a GPU is split into MIG instances (NVML's current MIG mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigMode {
    /// The GPU has no MIG support (or NVML cannot tell).
    #[default]
    Unsupported,
    /// MIG-capable, not partitioned: handed out as a whole GPU.
    Disabled,
    /// Partitioned into MIG instances: listed, never handed out as a whole GPU.
    Enabled,
}

/// One GPU a node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Stable identifier (`GPU-…`).
    pub uuid: String,
    /// Model name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Whether an instance holds it now.
    #[serde(default)]
    pub in_use: bool,
    /// MIG mode; a GPU with MIG enabled is never handed out whole.
    #[serde(default)]
    pub mig: MigMode,
    /// The slot (instance) holding it, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_id: Option<String>,
}

/// The warm pool of idle workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Idle workers ready for a job.
    pub idle: u32,
    /// How many idle workers the daemon keeps.
    pub target: u32,
}

/// What a daemon offers (`GET /v1/node`, registration, heartbeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Name unique in the fleet.
    pub node_id: String,
    /// Software version.
    pub version: String,
    /// Host name of the machine.
    pub hostname: String,
    /// Base URL the coordinator reaches the daemon at.
    pub address: String,
    /// Instance runtime (`process` or `docker`).
    pub runtime: String,
    /// Version of the worker Python (`3.11.7`).
    pub python_version: String,
    /// Cgroup flavour enforced (`v1`, `v2` or `none`).
    pub cgroup: String,
    /// CPUs the daemon may hand out.
    pub cpus: u32,
    /// RAM the daemon may hand out, in bytes.
    pub ram_bytes: u64,
    /// CPUs not held by an instance.
    pub free_cpus: u32,
    /// RAM not held by an instance, in bytes.
    pub free_ram_bytes: u64,
    /// Instances running.
    pub instances: u32,
    /// Jobs running.
    pub jobs: u32,
    /// Warm pool state.
    #[serde(default)]
    pub pool: PoolInfo,
    /// GPUs found through NVML.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// The node is draining: it takes no new jobs or inputs, finishes what it holds, then
    /// leaves the fleet.
    #[serde(default)]
    pub draining: bool,
    /// Digests ([`crate::EnvSpec::recipe_digest`]) of the environments the node has built and
    /// holds, so the coordinator can prefer nodes that need no build for a job.
    #[serde(default)]
    pub environments: Vec<String>,
}

impl NodeInfo {
    /// Whether one instance of `func_cpu` CPUs and `ram_bytes` could ever run here (on an
    /// idle node), regardless of what runs now.
    pub fn could_fit(&self, func_cpu: u32, ram_bytes: u64) -> bool {
        func_cpu <= self.cpus && ram_bytes <= self.ram_bytes
    }

    /// How many more instances of that size fit now.
    pub fn free_instances(&self, func_cpu: u32, ram_bytes: u64) -> u64 {
        if func_cpu == 0 || ram_bytes == 0 {
            return 0;
        }
        let by_cpu = u64::from(self.free_cpus / func_cpu);
        let by_ram = self.free_ram_bytes / ram_bytes;
        by_cpu.min(by_ram)
    }
}

/// A daemon announcing itself to the coordinator (`POST /v1/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Name unique in the fleet.
    pub node_id: String,
    /// Base URL the coordinator reaches the daemon at.
    pub address: String,
    /// What it offers.
    pub info: NodeInfo,
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// How often the node must heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// A node as the coordinator sees it (`GET /v1/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Latest info the node sent.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Whether it heartbeats in time.
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Jobs the coordinator runs on it now.
    #[serde(default)]
    pub jobs_running: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            node_id: "n".into(),
            version: "0.1.0".into(),
            hostname: "h".into(),
            address: "http://127.0.0.1:1".into(),
            runtime: "process".into(),
            python_version: "3.11.7".into(),
            cgroup: "v1".into(),
            cpus: 8,
            ram_bytes: 16 << 30,
            free_cpus: 5,
            free_ram_bytes: 3 << 30,
            instances: 3,
            jobs: 1,
            pool: PoolInfo::default(),
            gpus: vec![],
            draining: false,
            environments: Vec::new(),
        }
    }

    #[test]
    fn capacity_arithmetic() {
        let node = info();
        assert!(node.could_fit(8, 16 << 30));
        assert!(!node.could_fit(9, 1 << 30));
        assert_eq!(node.free_instances(1, 1 << 30), 3);
        assert_eq!(node.free_instances(2, 1 << 30), 2);
        assert_eq!(node.free_instances(0, 1 << 30), 0);
    }

    #[test]
    fn node_view_flattens_info() {
        let view = NodeView {
            info: info(),
            alive: true,
            last_seen_ms: 12,
            jobs_running: vec!["j".into()],
        };
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(json["node_id"], "n");
        assert_eq!(json["alive"], true);
        let back: NodeView = serde_json::from_value(json).expect("parses");
        assert_eq!(back, view);
    }
}
