//! What this node offers (`NodeInfo`): for `GET /v1/node`, registration and heartbeats.

use agent_proto::{NodeInfo, SOFTWARE_VERSION};

use crate::state::Daemon;

/// The node's current info.
pub fn info(daemon: &Daemon) -> NodeInfo {
    let d = daemon.inner();
    let inventory = d.capacity.inventory();
    NodeInfo {
        node_id: d.node_id.clone(),
        version: SOFTWARE_VERSION.to_string(),
        hostname: d.hostname.clone(),
        address: d.address.clone(),
        runtime: d.runtime.kind().to_string(),
        python_version: d.runtime.python_version(),
        cgroup: d.runtime.cgroup_flavor().as_str().to_string(),
        cpus: inventory.cpu_count(),
        ram_bytes: inventory.ram_bytes,
        free_cpus: d.capacity.free_cpus(),
        free_ram_bytes: d.capacity.free_ram_bytes(),
        instances: u32::try_from(d.capacity.instances()).unwrap_or(u32::MAX),
        jobs: u32::try_from(d.registry.live_count()).unwrap_or(u32::MAX),
        pool: d.runtime.pool(),
        gpus: d.capacity.gpus(),
        draining: d.drain.is_requested(),
        environments: d.envs.recipe_digests(),
    }
}
