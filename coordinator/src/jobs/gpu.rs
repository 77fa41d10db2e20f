//! GPU placement rules: which of a node's GPUs a `func_gpu` job may use (the model-name rules
//! of `agent_proto::gpu`, shared with the daemons), and the one sentence that refuses a job no
//! node can give such a GPU, before any input runs.

use agent_proto::{describe_models, GpuInfo, GpuModel, JobSpec, NodeInfo};

use crate::error::Error;
use crate::registry::LiveNode;

/// GPUs of the node that an instance asking for `model` may take: matching, not in MIG mode.
/// A `model` that names no model (refused earlier by `JobSpec::validate`) matches none.
pub fn matching<'a>(info: &'a NodeInfo, model: &str) -> impl Iterator<Item = &'a GpuInfo> + 'a {
    let model = GpuModel::parse(model).ok();
    info.gpus.iter().filter(move |gpu| {
        gpu.mig != agent_proto::MigMode::Enabled
            && model
                .as_ref()
                .is_some_and(|m| m.matches(&gpu.name, gpu.memory_bytes))
    })
}

/// Refuses a `func_gpu` job that no live node can run: no node has a GPU of that model
/// (naming the models the fleet has), or none of the nodes that have one can also fit
/// `func_cpu` and `func_ram`. Jobs without `func_gpu` pass.
pub fn check_fleet(spec: &JobSpec, nodes: &[LiveNode]) -> Result<(), Error> {
    let Some(model) = spec.func_gpu.as_deref() else {
        return Ok(());
    };
    let with_gpu: Vec<&NodeInfo> = nodes
        .iter()
        .map(|node| &node.info)
        .filter(|info| matching(info, model).next().is_some())
        .collect();
    if with_gpu.is_empty() {
        let names = nodes
            .iter()
            .flat_map(|node| node.info.gpus.iter().map(|gpu| gpu.name.as_str()));
        let models = describe_models(names);
        let fleet = if nodes.iter().all(|node| node.info.gpus.is_empty()) {
            format!("the fleet has {models}")
        } else {
            format!("the fleet has: {models}")
        };
        return Err(Error::NothingFits(format!(
            "no node has a GPU matching {model:?}; {fleet}; change func_gpu or add a node with that GPU"
        )));
    }
    if with_gpu
        .iter()
        .any(|info| info.could_fit(spec.func_cpu, spec.ram_bytes()))
    {
        return Ok(());
    }
    let largest = with_gpu
        .iter()
        .max_by_key(|info| (info.cpus, info.ram_bytes))
        .map(|info| format!("{} CPUs and {} GB of RAM", info.cpus, info.ram_bytes >> 30))
        .unwrap_or_default();
    Err(Error::NothingFits(format!(
        "func_cpu={} and func_ram={} do not fit any node with a GPU matching {model:?}: the largest has {largest}; lower func_cpu or func_ram, or add a larger node with that GPU",
        spec.func_cpu, spec.func_ram_gb
    )))
}

#[cfg(test)]
mod tests {
    use agent_proto::{MigMode, PoolInfo};

    use super::*;

    fn node(id: &str, cpus: u32, gpus: &[(&str, u64)]) -> LiveNode {
        LiveNode {
            node_id: id.into(),
            address: format!("http://{id}"),
            info: NodeInfo {
                node_id: id.into(),
                version: "0.1.0".into(),
                hostname: id.into(),
                address: format!("http://{id}"),
                runtime: "process".into(),
                python_version: "3.11.7".into(),
                cgroup: "v1".into(),
                cpus,
                ram_bytes: 64 << 30,
                free_cpus: cpus,
                free_ram_bytes: 64 << 30,
                instances: 0,
                jobs: 0,
                pool: PoolInfo::default(),
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(i, (name, mib))| GpuInfo {
                        index: i as u32,
                        uuid: format!("GPU-{id}-{i}"),
                        name: (*name).into(),
                        memory_bytes: mib << 20,
                        ..GpuInfo::default()
                    })
                    .collect(),
                draining: false,
                environments: Vec::new(),
            },
        }
    }

    fn spec(model: &str, cpus: u32) -> JobSpec {
        let mut spec = JobSpec::new("j");
        spec.func_gpu = Some(model.into());
        spec.func_cpu = cpus;
        spec
    }

    const H100: (&str, u64) = ("NVIDIA H100 80GB HBM3", 81559);

    #[test]
    fn unknown_model_names_the_fleet_models() {
        let nodes = vec![node("a", 8, &[H100; 8]), node("b", 8, &[])];
        let err = check_fleet(&spec("A100", 1), &nodes).expect_err("no A100");
        assert_eq!(
            err.to_string(),
            "no node has a GPU matching \"A100\"; the fleet has: NVIDIA H100 80GB HBM3 (×8); change func_gpu or add a node with that GPU"
        );
        assert_eq!(err.code().status(), 422);
        let err = check_fleet(&spec("H100", 1), &[node("c", 8, &[])]).expect_err("none");
        assert!(
            err.to_string().contains("; the fleet has no GPUs;"),
            "{err}"
        );
        assert!(check_fleet(&spec("H100", 1), &nodes).is_ok());
        assert!(check_fleet(&JobSpec::new("j"), &[]).is_ok());
    }

    #[test]
    fn a_gpu_node_too_small_for_cpu_and_ram_is_named() {
        let nodes = vec![node("gpu", 2, &[H100; 2]), node("big", 64, &[])];
        let err = check_fleet(&spec("H100", 4), &nodes).expect_err("too small");
        assert!(
            err.to_string().starts_with(
                "func_cpu=4 and func_ram=1 do not fit any node with a GPU matching \"H100\": the largest has 2 CPUs"
            ),
            "{err}"
        );
    }

    #[test]
    fn mig_gpus_and_other_models_do_not_match() {
        let mut n = node("a", 8, &[H100, ("NVIDIA A10G", 23028)]);
        assert_eq!(matching(&n.info, "H100").count(), 1);
        assert_eq!(matching(&n.info, "A10").count(), 0);
        assert_eq!(matching(&n.info, "A10G").count(), 1);
        n.info.gpus[0].mig = MigMode::Enabled;
        assert_eq!(matching(&n.info, "H100").count(), 0);
        let err = check_fleet(&spec("H100", 1), &[n]).expect_err("mig only");
        assert!(err.to_string().contains("the fleet has: "), "{err}");
    }
}
