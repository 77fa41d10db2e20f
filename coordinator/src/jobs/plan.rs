//! Placement arithmetic, pure: which nodes can run a job, how its instances are shared among
//! them (weighted by free capacity, `instance_cap` honoured across the fleet), and the sentence
//! that says why nothing fits.

use agent_proto::{EnvSpec, JobSpec, NodeInfo};

use crate::error::Error;
use crate::registry::LiveNode;

/// One node's part of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node.
    pub node_id: String,
    /// Its daemon's base URL.
    pub address: String,
    /// Instances it runs (sent to it as `parallelism`).
    pub share: u64,
}

/// Environments are built by the nodes' environment caches: every kind is passed on, and a
/// node that cannot build one (a Dockerfile on a process-runtime node) refuses the job with
/// its own sentence.
pub fn check_environment(spec: &JobSpec) -> Result<(), Error> {
    match spec.environment {
        EnvSpec::NodeDefault
        | EnvSpec::Packages { .. }
        | EnvSpec::Dockerfile { .. }
        | EnvSpec::Clone { .. } => Ok(()),
    }
}

/// GPUs of the node an instance of `model` may take (rules in `agent_proto::gpu`).
fn matching_gpus<'a>(
    info: &'a NodeInfo,
    model: &'a str,
) -> impl Iterator<Item = &'a agent_proto::GpuInfo> + 'a {
    super::gpu::matching(info, model)
}

/// Instances of the job the node could run when idle.
pub fn capacity(info: &NodeInfo, spec: &JobSpec) -> u64 {
    let by_cpu = u64::from(info.cpus / spec.func_cpu.max(1));
    let by_ram = info.ram_bytes / spec.ram_bytes().max(1);
    let mut instances = by_cpu.min(by_ram);
    if let Some(model) = &spec.func_gpu {
        instances = instances.min(matching_gpus(info, model).count() as u64);
    }
    instances
}

/// Instances of the job the node could start now.
pub fn free(info: &NodeInfo, spec: &JobSpec) -> u64 {
    let mut instances = info.free_instances(spec.func_cpu, spec.ram_bytes());
    if let Some(model) = &spec.func_gpu {
        let free_gpus = matching_gpus(info, model).filter(|gpu| !gpu.in_use).count() as u64;
        instances = instances.min(free_gpus);
    }
    instances
}

/// Whether the node's worker Python has the client's `major.minor` (unknown matches).
pub fn python_matches(node_python: &str, client_python: Option<&str>) -> bool {
    let Some(want) = client_python else {
        return true;
    };
    if node_python.is_empty() || want.is_empty() {
        return true;
    }
    node_python == want || node_python.starts_with(&format!("{want}."))
}

/// Splits at most `cap` instances over nodes with `(free, capacity)` instances.
///
/// Free instances decide first: shares are proportional to them (remainder to the largest
/// fractions, ties to the bigger node). What `cap` leaves after that is spread over the
/// capacity the nodes do not offer right now, in proportion to it: a node's share is how many
/// instances it may run for this job, and a busy node starts them as its running work ends. A
/// share never exceeds the node's capacity, so a momentarily full fleet (or a stale heartbeat
/// that still counts a finished job's slots) does not shrink a job's parallelism for its whole
/// life.
pub fn split(cap: u64, weights: &[(u64, u64)]) -> Vec<u64> {
    let free: Vec<u64> = weights.iter().map(|(free, _)| *free).collect();
    let mut shares = proportional(cap, &free);
    let left = cap.saturating_sub(shares.iter().sum());
    if left > 0 {
        let headroom: Vec<u64> = weights
            .iter()
            .zip(&shares)
            .map(|((_, capacity), share)| capacity.saturating_sub(*share))
            .collect();
        for (share, extra) in shares.iter_mut().zip(proportional(left, &headroom)) {
            *share += extra;
        }
    }
    shares
}

/// Shares of `cap` proportional to `w`, each at most its weight: `w` itself when it adds up to
/// no more than `cap`, else floors with the remainder to the largest fractions (ties to the
/// bigger weight, then the first).
fn proportional(cap: u64, w: &[u64]) -> Vec<u64> {
    let total: u64 = w.iter().sum();
    if total <= cap {
        return w.to_vec();
    }
    let (cap128, total128) = (u128::from(cap), u128::from(total));
    let mut shares: Vec<u64> = w
        .iter()
        .map(|wi| (u128::from(*wi) * cap128 / total128) as u64)
        .collect();
    let assigned: u64 = shares.iter().sum();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|a, b| {
        let ra = u128::from(w[*a]) * cap128 % total128;
        let rb = u128::from(w[*b]) * cap128 % total128;
        rb.cmp(&ra).then(w[*b].cmp(&w[*a])).then(a.cmp(b))
    });
    for i in order.into_iter().take((cap - assigned) as usize) {
        shares[i] += 1;
    }
    shares
}

/// Whether the node's runtime can build the job's environment: a Dockerfile needs the docker
/// runtime; package lists and clones are built by either (images or venvs).
pub fn runtime_fits(info: &NodeInfo, spec: &JobSpec) -> bool {
    !matches!(spec.environment, EnvSpec::Dockerfile { .. }) || info.runtime == "docker"
}

/// Whether the node can run an instance of the job at all: size, Python and runtime.
pub fn can_run(info: &NodeInfo, spec: &JobSpec) -> bool {
    capacity(info, spec) > 0
        && python_matches(&info.python_version, spec.python_version.as_deref())
        && runtime_fits(info, spec)
}

/// Whether the node already holds the job's environment (no build needed there).
pub fn holds_environment(info: &NodeInfo, digest: Option<&str>) -> bool {
    digest.is_some_and(|digest| info.environments.iter().any(|held| held == digest))
}

/// Places the job on the live nodes: every node that can run one instance (and has the client's
/// Python and a runtime that builds its environment) may take a share; the error names what
/// the fleet offers when none can. Nodes that hold the job's environment are served first: a
/// job smaller than their capacity runs there without waiting for a build elsewhere.
pub fn place(spec: &JobSpec, nodes: &[LiveNode]) -> Result<Vec<Placement>, Error> {
    super::gpu::check_fleet(spec, nodes)?;
    let fitting: Vec<&LiveNode> = nodes
        .iter()
        .filter(|node| capacity(&node.info, spec) > 0)
        .collect();
    if fitting.is_empty() {
        return Err(Error::NothingFits(nothing_fits(spec, nodes)));
    }
    let same_python: Vec<&LiveNode> = fitting
        .iter()
        .copied()
        .filter(|node| python_matches(&node.info.python_version, spec.python_version.as_deref()))
        .collect();
    if same_python.is_empty() {
        let want = spec.python_version.as_deref().unwrap_or("?");
        let have: Vec<&str> = fitting
            .iter()
            .map(|node| node.info.python_version.as_str())
            .collect();
        return Err(Error::NothingFits(format!(
            "the client runs Python {want} but the nodes that fit the job run Python {}; run the client with that Python or add a node with Python {want}",
            have.join(", ")
        )));
    }
    let candidates: Vec<&LiveNode> = same_python
        .iter()
        .copied()
        .filter(|node| runtime_fits(&node.info, spec))
        .collect();
    if candidates.is_empty() {
        return Err(Error::NothingFits(
            "dockerfile= needs a node running the docker runtime (fleetmapd --runtime docker) but every node that fits the job runs processes; use packages= instead or add a docker node".to_owned(),
        ));
    }
    let digest = spec.environment.recipe_digest();
    let (holders, others): (Vec<&LiveNode>, Vec<&LiveNode>) = candidates
        .into_iter()
        .partition(|node| holds_environment(&node.info, digest.as_deref()));
    let cap = spec.instance_cap();
    if holders.is_empty() || others.is_empty() {
        return Ok(shares(cap, &[holders, others].concat(), spec));
    }
    // The holders' free instances first; the others take the rest, and what they cannot take
    // goes back to the holders (to start as their running work ends).
    let holders_free: u64 = holders.iter().map(|node| free(&node.info, spec)).sum();
    let others_placed = shares(cap.saturating_sub(holders_free.min(cap)), &others, spec);
    let taken: u64 = others_placed.iter().map(|p| p.share).sum();
    let mut placed = shares(cap.saturating_sub(taken), &holders, spec);
    placed.extend(others_placed);
    Ok(placed)
}

/// `cap` instances split over `nodes` by [`split`], nodes with no share left out.
fn shares(cap: u64, nodes: &[&LiveNode], spec: &JobSpec) -> Vec<Placement> {
    if cap == 0 || nodes.is_empty() {
        return Vec::new();
    }
    let weights: Vec<(u64, u64)> = nodes
        .iter()
        .map(|node| (free(&node.info, spec), capacity(&node.info, spec)))
        .collect();
    nodes
        .iter()
        .zip(split(cap, &weights))
        .filter(|(_, share)| *share > 0)
        .map(|(node, share)| Placement {
            node_id: node.node_id.clone(),
            address: node.address.clone(),
            share,
        })
        .collect()
}

fn gb(bytes: u64) -> u64 {
    bytes >> 30
}

fn describe(info: &NodeInfo) -> String {
    format!("{} CPUs and {} GB of RAM", info.cpus, gb(info.ram_bytes))
}

/// One sentence saying why no node can run one instance, naming what the largest node offers.
pub fn nothing_fits(spec: &JobSpec, nodes: &[LiveNode]) -> String {
    let by_cpu = nodes
        .iter()
        .map(|n| &n.info)
        .max_by_key(|info| (info.cpus, info.ram_bytes));
    let by_ram = nodes
        .iter()
        .map(|n| &n.info)
        .max_by_key(|info| (info.ram_bytes, info.cpus));
    let (Some(by_cpu), Some(by_ram)) = (by_cpu, by_ram) else {
        return "no node is registered; start fleetmapd on a machine".to_owned();
    };
    let cpu_fits = by_cpu.cpus >= spec.func_cpu;
    let ram_fits = by_ram.ram_bytes >= spec.ram_bytes();
    let (cpu, ram) = (spec.func_cpu, spec.func_ram_gb);
    match (cpu_fits, ram_fits) {
        (false, false) => format!(
            "func_cpu={cpu} and func_ram={ram} do not fit any node: the largest has {}; lower func_cpu and func_ram or add a larger node",
            describe(by_cpu)
        ),
        (false, true) => format!(
            "func_cpu={cpu} does not fit any node: the largest has {}; lower func_cpu or add a larger node",
            describe(by_cpu)
        ),
        (true, false) => format!(
            "func_ram={ram} does not fit any node: the largest has {}; lower func_ram or add a larger node",
            describe(by_ram)
        ),
        (true, true) => match &spec.func_gpu {
            Some(model) => {
                let mut models: Vec<&str> = nodes
                    .iter()
                    .flat_map(|n| n.info.gpus.iter().map(|g| g.name.as_str()))
                    .collect();
                models.sort_unstable();
                models.dedup();
                let have = if models.is_empty() {
                    "no GPUs".to_owned()
                } else {
                    models.join(", ")
                };
                format!(
                    "func_gpu={model:?} does not fit any node: the fleet has {have} (with func_cpu={cpu} and func_ram={ram}); choose a model the fleet has or add a node with one"
                )
            }
            None => format!(
                "func_cpu={cpu} with func_ram={ram} does not fit any node: no node has both (the largest by CPU has {}, the largest by RAM has {}); lower one of them or add a larger node",
                describe(by_cpu),
                describe(by_ram)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{GpuInfo, PoolInfo};

    fn node(id: &str, cpus: u32, ram_gb: u64, free_cpus: u32) -> LiveNode {
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
                ram_bytes: ram_gb << 30,
                free_cpus,
                free_ram_bytes: ram_gb << 30,
                instances: 0,
                jobs: 0,
                pool: PoolInfo::default(),
                gpus: vec![],
                draining: false,
                environments: Vec::new(),
            },
        }
    }

    fn spec(cpu: u32, ram: u32) -> JobSpec {
        let mut spec = JobSpec::new("j");
        spec.func_cpu = cpu;
        spec.func_ram_gb = ram;
        spec
    }

    #[test]
    fn nodes_holding_the_environment_are_served_first() {
        let env = EnvSpec::Packages {
            packages: vec!["six==1.16.0".into()],
        };
        let mut holder = node("holder", 2, 8, 2);
        holder.info.environments = vec![env.recipe_digest().expect("digest")];
        let nodes = vec![node("a", 8, 8, 8), holder];
        let mut s = spec(1, 1);
        s.environment = env;
        s.parallelism = 2;
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.node_id.as_str(), p.share))
                .collect::<Vec<_>>(),
            vec![("holder", 2)],
            "a job the holder can run alone is not sent to a node that must build first"
        );
        s.parallelism = 5;
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.node_id.as_str(), p.share))
                .collect::<Vec<_>>(),
            vec![("holder", 2), ("a", 3)],
            "what the holders cannot run goes to the others"
        );
        let mut busy = nodes.clone();
        busy[1].info.free_cpus = 0;
        s.parallelism = 2;
        let placed = place(&s, &busy).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.node_id.as_str(), p.share))
                .collect::<Vec<_>>(),
            vec![("a", 2)],
            "a busy holder does not hold the job up"
        );
        s.parallelism = 12;
        let placed = place(&s, &busy).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.node_id.as_str(), p.share))
                .collect::<Vec<_>>(),
            vec![("holder", 2), ("a", 8)],
            "beyond the others' capacity the holder's busy slots are used too"
        );
        s.parallelism = 5;
        s.environment = EnvSpec::Packages { packages: vec![] };
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(placed.iter().map(|p| p.share).sum::<u64>(), 5);
        assert_eq!(
            placed[0].node_id, "a",
            "no holder: capacity-weighted as before"
        );
    }

    #[test]
    fn a_dockerfile_goes_only_to_docker_nodes() {
        let mut docker = node("docker", 2, 8, 2);
        docker.info.runtime = "docker".into();
        let mut s = spec(1, 1);
        s.environment = EnvSpec::Dockerfile {
            content: "FROM fleetmap/base:1\n".into(),
            context: vec![],
        };
        let placed = place(&s, &[node("p", 8, 8, 8), docker.clone()]).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>(),
            vec!["docker"]
        );
        let err = place(&s, &[node("p", 8, 8, 8)]).expect_err("no docker node");
        assert_eq!(
            err.to_string(),
            "dockerfile= needs a node running the docker runtime (fleetmapd --runtime docker) but every node that fits the job runs processes; use packages= instead or add a docker node"
        );
        assert!(!can_run(&node("p", 8, 8, 8).info, &s));
        assert!(can_run(&docker.info, &s));
    }

    #[test]
    fn split_is_weighted_by_free_capacity_and_capped() {
        assert_eq!(
            split(4000, &[(2, 2), (6, 8)]),
            vec![2, 8],
            "busy capacity still counts: it frees up during the job"
        );
        assert_eq!(split(4, &[(2, 2), (6, 8)]), vec![1, 3]);
        assert_eq!(split(1, &[(2, 2), (6, 8)]), vec![0, 1]);
        assert_eq!(
            split(1, &[(2, 2), (2, 2)]),
            vec![1, 0],
            "tie goes to the first"
        );
        assert_eq!(
            split(3, &[(1, 1), (1, 1), (1, 1), (1, 1)]),
            vec![1, 1, 1, 0]
        );
        assert_eq!(
            split(10, &[(0, 2), (3, 3)]),
            vec![2, 3],
            "a busy node takes its share once its running work ends"
        );
        assert_eq!(
            split(4, &[(1, 2), (1, 8)]),
            vec![1, 3],
            "free first, then the rest by headroom"
        );
        assert_eq!(
            split(2, &[(1, 2)]),
            vec![2],
            "a stale heartbeat that counts one slot busy does not halve the job"
        );
        assert_eq!(
            split(10, &[(0, 2), (0, 4)]),
            vec![2, 4],
            "all busy: by capacity"
        );
        let shares = split(1000, &[(333, 333), (333, 333), (334, 400), (7, 7)]);
        assert_eq!(shares.iter().sum::<u64>(), 1000);
        for (share, (free, _)) in shares
            .iter()
            .zip([(333u64, 0u64), (333, 0), (334, 0), (7, 0)])
        {
            assert!(*share <= free);
        }
    }

    #[test]
    fn placement_honours_instance_cap_across_the_fleet() {
        let nodes = vec![node("a", 2, 8, 2), node("b", 8, 32, 8)];
        let mut s = spec(1, 1);
        s.expected_inputs = Some(1);
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(placed.len(), 1, "{placed:?}");
        assert_eq!(placed[0].node_id, "b");
        assert_eq!(placed[0].share, 1);

        s.expected_inputs = Some(10_000);
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.node_id.as_str(), p.share))
                .collect::<Vec<_>>(),
            vec![("a", 2), ("b", 8)]
        );

        s.parallelism = 5;
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(placed.iter().map(|p| p.share).sum::<u64>(), 5);
    }

    #[test]
    fn nodes_too_small_for_one_instance_take_no_share() {
        let nodes = vec![node("small", 2, 23, 2), node("big", 16, 64, 16)];
        let placed = place(&spec(4, 1), &nodes).expect("fits big");
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].node_id, "big");
        assert_eq!(placed[0].share, 4);
    }

    #[test]
    fn nothing_fits_names_the_largest_node() {
        let nodes = vec![node("a", 2, 23, 2), node("b", 1, 8, 1)];
        let err = place(&spec(96, 1), &nodes).expect_err("too big");
        assert_eq!(
            err.to_string(),
            "func_cpu=96 does not fit any node: the largest has 2 CPUs and 23 GB of RAM; lower func_cpu or add a larger node"
        );
        let err = place(&spec(1, 100), &nodes).expect_err("too big");
        assert!(
            err.to_string().starts_with(
                "func_ram=100 does not fit any node: the largest has 2 CPUs and 23 GB"
            ),
            "{err}"
        );
        let err = place(&spec(96, 100), &nodes).expect_err("too big");
        assert!(
            err.to_string().contains("lower func_cpu and func_ram"),
            "{err}"
        );
        let nodes = vec![node("cpu", 8, 2, 8), node("ram", 1, 64, 1)];
        let err = place(&spec(4, 32), &nodes).expect_err("no node has both");
        assert!(err.to_string().contains("no node has both"), "{err}");
        assert_eq!(err.code().status(), 422);
    }

    #[test]
    fn gpu_jobs_need_a_node_with_that_model() {
        let mut nodes = vec![node("a", 8, 32, 8)];
        let mut s = spec(1, 1);
        s.func_gpu = Some("H100".into());
        let err = place(&s, &nodes).expect_err("no gpu");
        assert!(err.to_string().contains("the fleet has no GPUs"), "{err}");
        nodes[0].info.gpus = vec![
            GpuInfo {
                index: 0,
                uuid: "GPU-1".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_bytes: 80 << 30,
                in_use: false,
                ..GpuInfo::default()
            },
            GpuInfo {
                index: 1,
                uuid: "GPU-2".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_bytes: 80 << 30,
                in_use: true,
                ..GpuInfo::default()
            },
        ];
        let placed = place(&s, &nodes).expect("fits");
        assert_eq!(
            placed[0].share, 2,
            "both H100s: the busy one is taken when it frees up"
        );
        let mut other = nodes[0].clone();
        other.node_id = "b".into();
        other.info.node_id = "b".into();
        other.info.gpus[1].in_use = false;
        let placed = place(&s, &[nodes[0].clone(), other]).expect("fits");
        let shares: Vec<_> = placed.iter().map(|p| p.share).collect();
        assert_eq!(shares, vec![2, 2], "each node up to its H100s");
    }

    #[test]
    fn python_version_must_match() {
        assert!(python_matches("3.11.7", Some("3.11")));
        assert!(!python_matches("3.11.7", Some("3.1")));
        assert!(python_matches("3.11.7", None));
        let nodes = vec![node("a", 2, 8, 2)];
        let mut s = spec(1, 1);
        s.python_version = Some("3.12".into());
        let err = place(&s, &nodes).expect_err("mismatch");
        assert!(err.to_string().contains("Python 3.12"), "{err}");
    }

    #[test]
    fn every_environment_kind_goes_to_the_nodes() {
        let mut s = spec(1, 1);
        assert!(check_environment(&s).is_ok());
        s.environment = EnvSpec::Packages { packages: vec![] };
        assert!(check_environment(&s).is_ok());
        s.environment = EnvSpec::Clone {
            distributions: vec!["six==1.16.0".into()],
        };
        assert!(check_environment(&s).is_ok());
    }
}
