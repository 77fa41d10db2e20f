//! Network namespaces for multi-node tests: a bridge in the root namespace (the coordinator's)
//! and one namespace per node, joined to the bridge by a veth pair, each with its own address.
//! A node's link can be cut and restored (`ip link set … down/up` on its host-side veth), which
//! partitions it without touching its process. Everything is removed on drop, also when a test
//! fails.
//!
//! Needs root, iproute2 and util-linux `nsenter`. Where `ip netns` is impossible the tests skip loudly, unless
//! `FLEETMAP_REQUIRE_NETNS=1` or `FLEETMAP_REQUIRE_CGROUPS=1` (CI runs as root) make that a
//! failure.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// One node's namespace.
#[derive(Debug)]
pub struct Netns {
    /// Namespace name (`ip netns exec NAME …`).
    pub name: String,
    /// The node's address inside it.
    pub addr: String,
    /// Host-side veth (in the root namespace, on the bridge): down = partitioned.
    host_veth: String,
}

impl Netns {
    /// The wrapper that runs a program inside this namespace (it `exec`s, keeping the pid).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Cuts the node off the network (both directions, connections stall without a reset).
    pub fn cut(&self) -> Result<()> {
        ip(&["link", "set", &self.host_veth, "down"])
    }

    /// Gives the node its link back.
    pub fn restore(&self) -> Result<()> {
        ip(&["link", "set", &self.host_veth, "up"])
    }
}

/// A bridge and the nodes' namespaces, removed on drop.
#[derive(Debug)]
pub struct Fabric {
    bridge: String,
    /// The coordinator's address (on the bridge, root namespace).
    pub host_addr: String,
    /// The nodes' namespaces.
    pub nodes: Vec<Netns>,
}

/// Why namespaces cannot be used here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // Creating one is the only reliable test (root alone is not enough in some containers).
    // Unique per call: tests of one process probe at once.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let probe = format!(
        "fleetmap-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(err) => Some(format!(
            "{err:#} (network namespaces need root and iproute2)"
        )),
    }
}

/// True when the test must run (CI): missing namespaces are then a failure, not a skip.
pub fn required() -> bool {
    ["FLEETMAP_REQUIRE_NETNS", "FLEETMAP_REQUIRE_CGROUPS"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| v == "1"))
}

/// `Ok(true)` to run; `Ok(false)` after printing why the test is skipped; an error when
/// namespaces are required but unavailable.
pub fn check(test: &str) -> Result<bool> {
    match unavailable() {
        None => Ok(true),
        Some(reason) if required() => bail!("{test} needs network namespaces: {reason}"),
        Some(reason) => {
            eprintln!(
                "SKIPPED {test}: {reason} (set FLEETMAP_REQUIRE_NETNS=1 to make this a failure)"
            );
            Ok(false)
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("cannot run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Fabric {
    /// A bridge on a fresh /24 and `nodes` namespaces attached to it.
    pub fn create(nodes: usize) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 10.(100..199).(0..249).0/24: distinct per process and per fabric within it.
        let net = format!("10.{}.{}", 100 + pid % 100, (pid / 100 + seq * 7) % 250);
        let tag = format!("{}{}", pid % 100_000, seq);
        let mut fabric = Self {
            bridge: format!("fmb{tag}"),
            host_addr: format!("{net}.1"),
            nodes: Vec::new(),
        };
        ip(&["link", "add", &fabric.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", fabric.host_addr),
            "dev",
            &fabric.bridge,
        ])?;
        ip(&["link", "set", &fabric.bridge, "up"])?;
        for i in 0..nodes {
            let name = format!("fleetmap-{tag}-{i}");
            let host_veth = format!("fmh{tag}{i}");
            let peer = format!("fmn{tag}{i}");
            let addr = format!("{net}.{}", 10 + i);
            ip(&["netns", "add", &name])?;
            fabric.nodes.push(Netns {
                name: name.clone(),
                addr: addr.clone(),
                host_veth: host_veth.clone(),
            });
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &name])?;
            ip(&["link", "set", &host_veth, "master", &fabric.bridge])?;
            ip(&["link", "set", &host_veth, "up"])?;
            let in_ns = |args: &[&str]| {
                let mut full = vec!["netns", "exec", &name, "ip"];
                full.extend_from_slice(args);
                ip(&full)
            };
            in_ns(&["addr", "add", &format!("{addr}/24"), "dev", &peer])?;
            in_ns(&["link", "set", &peer, "up"])?;
            in_ns(&["link", "set", "lo", "up"])?;
        }
        Ok(fabric)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for node in &self.nodes {
            // Deleting the namespace deletes the veth pair with it.
            if let Err(err) = ip(&["netns", "del", &node.name]) {
                eprintln!("cleanup: {err}");
            }
        }
        if let Err(err) = ip(&["link", "del", &self.bridge]) {
            eprintln!("cleanup: {err}");
        }
    }
}

/// A coordinator in the root namespace and daemons each in their own namespace, sharing a
/// cluster token; fields drop in order (daemons, coordinator, then the namespaces).
#[derive(Debug)]
pub struct NetCluster {
    /// The daemons, `daemons[i]` in `fabric.nodes[i]`.
    pub daemons: Vec<crate::Daemon>,
    /// The coordinator, on the bridge address.
    pub coordinator: crate::Coordinator,
    /// HTTP client sending the cluster token.
    pub http: crate::Http,
    /// The namespaces.
    pub fabric: Fabric,
    /// The cluster token.
    pub token: String,
    /// Logs, databases, state directories.
    pub dir: tempfile::TempDir,
}

impl NetCluster {
    /// One node per entry of `cpu_lists`, its daemon pinned to those CPUs (`taskset -c`;
    /// `None`: every CPU), so nodes offer different real capacities; `coordinator_flags` are
    /// added to the coordinator's.
    pub async fn start(cpu_lists: &[Option<&str>], coordinator_flags: &[&str]) -> Result<Self> {
        let fabric = Fabric::create(cpu_lists.len())?;
        let dir = tempfile::tempdir()?;
        let token = format!("e2e-token-{}-0123456789abcdef", std::process::id());
        let token_file = dir.path().join("cluster.token");
        std::fs::write(&token_file, format!("{token}\n"))?;
        let token_path = token_file.to_string_lossy().into_owned();
        let mut flags = vec!["--cluster-token-file", token_path.as_str()];
        flags.extend_from_slice(coordinator_flags);
        let coordinator =
            crate::Coordinator::start_on(dir.path(), &format!("{}:0", fabric.host_addr), &flags)?;
        let mut cluster = Self {
            daemons: Vec::new(),
            coordinator,
            http: crate::Http::with_token(&token),
            fabric,
            token,
            dir,
        };
        for (i, cpus) in cpu_lists.iter().enumerate() {
            let node = &cluster.fabric.nodes[i];
            let mut wrapper = node.wrapper();
            if let Some(cpus) = cpus {
                wrapper.extend(["taskset".into(), "-c".into(), (*cpus).to_owned()]);
            }
            let options = crate::DaemonOptions {
                wrapper,
                listen: Some(format!("{}:0", node.addr)),
                extra: vec!["--cluster-token-file".into(), token_path.clone()],
            };
            let node_id = crate::procs::unique(&format!("ns{i}"));
            let daemon = crate::Daemon::start_with(
                cluster.dir.path(),
                &cluster.coordinator.url,
                &node_id,
                &options,
            )?;
            cluster.daemons.push(daemon);
            cluster
                .wait_node(
                    &node_id,
                    |n| n["alive"] == true,
                    std::time::Duration::from_secs(20),
                )
                .await?;
        }
        Ok(cluster)
    }

    /// `GET {coordinator}/v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>> {
        let (status, nodes) = self
            .http
            .get_json(&format!("{}/v1/nodes", self.coordinator.url))
            .await?;
        if !status.is_success() {
            bail!("GET /v1/nodes answered {status}: {nodes}");
        }
        Ok(nodes.as_array().cloned().unwrap_or_default())
    }

    /// The coordinator's view of `node_id`, if it lists it.
    pub async fn node(&self, node_id: &str) -> Result<Option<serde_json::Value>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .find(|n| n["node_id"] == node_id))
    }

    /// Waits until the coordinator's view of `node_id` satisfies `test` (`Value::Null` when it
    /// does not list the node); returns how long that took.
    pub async fn wait_node(
        &self,
        node_id: &str,
        test: impl Fn(&serde_json::Value) -> bool,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration> {
        let started = std::time::Instant::now();
        loop {
            let view = self.node(node_id).await?.unwrap_or(serde_json::Value::Null);
            if test(&view) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("node {node_id} did not reach the expected state within {timeout:?}: {view}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `GET {daemon}/v1/jobs/{job}` on node `i` (with the token).
    pub async fn node_job(&self, i: usize, job: &str) -> Result<serde_json::Value> {
        let (_, status) = self
            .http
            .get_json(&format!("{}/v1/jobs/{job}", self.daemons[i].url))
            .await?;
        Ok(status)
    }
}
