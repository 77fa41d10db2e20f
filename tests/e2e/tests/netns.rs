//! Several nodes, each a `fleetmapd` in its own network namespace with its own address, the
//! coordinator in the root namespace, all sharing a cluster token: a 10,000-input job split by
//! real capacity, a node killed with SIGKILL, a node partitioned (its link cut, then restored),
//! and a node drained mid-job (SIGTERM, or the drain API). Every case must end with each input
//! answered exactly once.
//!
//! Skips loudly where `ip netns` is impossible (not root), fails instead under CI
//! (`FLEETMAP_REQUIRE_NETNS=1` or `FLEETMAP_REQUIRE_CGROUPS=1`).

use std::time::{Duration, Instant};

use agent_proto::JobState;
use fleetmap_e2e::netns::{self, NetCluster};
use fleetmap_e2e::{job_id, python, spec, whole_job, Collected, ResultStream};
use nix::sys::signal::Signal;

/// The longest a lost node may go unnoticed (the bound).
const DETECTION_BOUND: Duration = Duration::from_secs(5);

/// Reads a result stream to its END in a task, so the job never waits on this test.
fn read_in_background(
    mut stream: ResultStream,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<agent_proto::Frame>>> {
    tokio::spawn(async move { stream.until_end(Duration::from_secs(240)).await })
}

fn check_complete(collected: &Collected, inputs: usize, expected: &str) -> anyhow::Result<()> {
    assert!(collected.failures.is_empty(), "{:?}", collected.failures);
    assert_eq!(collected.each_index_once()?, inputs);
    assert_eq!(
        collected.end.as_ref().map(|e| e.state),
        Some(JobState::Completed),
        "{:?}",
        collected.end
    );
    assert_eq!(python::check_results(&collected.results, expected)?, inputs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_namespaced_nodes_run_10k_inputs_split_by_capacity() -> anyhow::Result<()> {
    if !netns::check("three_namespaced_nodes_run_10k_inputs_split_by_capacity")? {
        return Ok(());
    }
    // Nodes 0 and 1 get one CPU each, node 2 every CPU (two here): shares 1, 1, 2.
    let cluster = NetCluster::start(&[Some("0"), Some("1"), None], &[]).await?;
    let cpus: Vec<u64> = {
        let mut cpus = Vec::new();
        for daemon in &cluster.daemons {
            let view = cluster.node(&daemon.node_id).await?.unwrap_or_default();
            cpus.push(view["cpus"].as_u64().unwrap_or(0));
        }
        cpus
    };
    assert_eq!(cpus[0], 1, "taskset pins node 0 to one CPU");
    let source = "def f(x):\n    return x * 3\n";
    let payloads = python::payloads(source, "range(10000)")?;
    let id = job_id("ns-split");
    let first = whole_job(&spec(&id, 10_000), &payloads, 0..10_000, 100);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frames = stream.until_end(Duration::from_secs(240)).await?;
    let collected = Collected::from_frames(&frames)?;
    check_complete(&collected, 10_000, "i * 3")?;

    let mut done = Vec::new();
    for i in 0..3 {
        let status = cluster.node_job(i, &id).await?;
        done.push(status["done"].as_u64().unwrap_or(0));
    }
    eprintln!("inputs done per node (cpus {cpus:?}): {done:?}");
    assert_eq!(done.iter().sum::<u64>(), 10_000, "{done:?}");
    assert!(done.iter().all(|d| *d > 0), "every node worked: {done:?}");
    // The split is by capacity: the coordinator opens each node's stream with a share of
    // instances equal to its free CPUs. (Inputs done per node are not: the nodes' CPU sets
    // overlap on this machine's cores and tail rebalancing moves queued inputs to whoever is
    // faster.)
    let log = cluster.coordinator.proc.log_text();
    let shares: Vec<u64> = cluster
        .daemons
        .iter()
        .map(|daemon| share_in_log(&log, &id, &daemon.node_id))
        .collect();
    eprintln!("shares opened per node (cpus {cpus:?}): {shares:?}");
    for (share, cpu) in shares.iter().zip(&cpus) {
        assert_eq!(share, cpu, "shares {shares:?} for cpus {cpus:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_is_detected_at_once_and_every_input_answered_once(
) -> anyhow::Result<()> {
    if !netns::check("a_node_killed_mid_job_is_detected_at_once")? {
        return Ok(());
    }
    let mut cluster = NetCluster::start(&[None, None, None], &[]).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.005)\n    return x + 1\n";
    let payloads = python::payloads(source, "range(3000)")?;
    let id = job_id("ns-kill");
    let first = whole_job(&spec(&id, 3000), &payloads, 0..3000, 50);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 300).await?;
    let reader = read_in_background(stream);
    let victim = cluster.daemons[2].node_id.clone();
    cluster.daemons[2].proc.kill();
    let detected = cluster
        .wait_node(&victim, |n| n["alive"] == false, Duration::from_secs(15))
        .await?;
    eprintln!("SIGKILLed node declared dead after {detected:?}");
    assert!(detected <= DETECTION_BOUND, "detection took {detected:?}");
    for frame in reader.await?? {
        collected.add(&frame)?;
    }
    check_complete(&collected, 3000, "i + 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_declared_dead_and_its_late_results_are_ignored() -> anyhow::Result<()>
{
    if !netns::check("a_partitioned_node_is_declared_dead")? {
        return Ok(());
    }
    let cluster = NetCluster::start(&[None, None, None], &[]).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x * 5\n";
    let payloads = python::payloads(source, "range(2400)")?;
    let id = job_id("ns-cut");
    let first = whole_job(&spec(&id, 2400), &payloads, 0..2400, 50);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 200).await?;
    let reader = read_in_background(stream);
    let cut = cluster.daemons[1].node_id.clone();
    let cut_at = Instant::now();
    cluster.fabric.nodes[1].cut()?;
    let detected = cluster
        .wait_node(&cut, |n| n["alive"] == false, Duration::from_secs(15))
        .await?;
    eprintln!("partitioned node declared dead after {detected:?}");
    assert!(detected <= DETECTION_BOUND, "detection took {detected:?}");
    // The node kept running its inputs behind the cut; once the link is back its answers
    // (to a stream the coordinator gave up) must not reach the client.
    cluster.fabric.nodes[1].restore()?;
    cluster
        .wait_node(&cut, |n| n["alive"] == true, Duration::from_secs(15))
        .await?;
    eprintln!("partitioned node back after {:?}", cut_at.elapsed());
    for frame in reader.await?? {
        collected.add(&frame)?;
    }
    check_complete(&collected, 2400, "i * 5")?;
    let behind_cut = cluster.node_job(1, &id).await?;
    eprintln!("the cut node's own view of its part: {behind_cut}");
    Ok(())
}

async fn drain_mid_job(by_signal: bool) -> anyhow::Result<()> {
    let mut cluster = NetCluster::start(&[None, None, None], &[]).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x - 2\n";
    let payloads = python::payloads(source, "range(1500)")?;
    let id = job_id("ns-drain");
    let first = whole_job(&spec(&id, 1500), &payloads, 0..1500, 50);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 150).await?;
    let reader = read_in_background(stream);
    let drained = cluster.daemons[0].node_id.clone();
    if by_signal {
        cluster.daemons[0].proc.signal(Signal::SIGTERM)?;
    } else {
        let (status, body) = cluster
            .http
            .call(
                http::Method::POST,
                &format!("{}/v1/drain", cluster.daemons[0].url),
                bytes::Bytes::new(),
            )
            .await?;
        assert_eq!(status.as_u16(), 202, "{}", String::from_utf8_lossy(&body));
        let info: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(info["draining"], true);
    }
    cluster
        .wait_node(
            &drained,
            |n| n.is_null() || n["draining"] == true,
            Duration::from_secs(5),
        )
        .await?;
    let left = cluster
        .wait_node(
            &drained,
            serde_json::Value::is_null,
            Duration::from_secs(60),
        )
        .await?;
    eprintln!("drained node left the fleet after {left:?}");
    cluster.daemons[0].proc.wait(Duration::from_secs(30))?;
    for frame in reader.await?? {
        collected.add(&frame)?;
    }
    check_complete(&collected, 1500, "i - 2")?;
    assert_eq!(cluster.nodes().await?.len(), 2, "the drained node is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_mid_job_and_it_leaves() -> anyhow::Result<()> {
    if !netns::check("sigterm_drains_a_node_mid_job_and_it_leaves")? {
        return Ok(());
    }
    drain_mid_job(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_api_drains_a_node_mid_job_and_it_leaves() -> anyhow::Result<()> {
    if !netns::check("the_drain_api_drains_a_node_mid_job_and_it_leaves")? {
        return Ok(());
    }
    drain_mid_job(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_slow_instances_gives_its_queued_inputs_to_idle_ones() -> anyhow::Result<()> {
    if !netns::check("a_node_with_slow_instances_gives_its_queued_inputs_to_idle_ones")? {
        return Ok(());
    }
    let cluster = NetCluster::start(&[None, None, None], &[]).await?;
    // The function is 100 times slower inside node 0's network namespace.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cluster.fabric.nodes[0].name])
        .args(["readlink", "/proc/self/ns/net"])
        .output()?;
    let slow_ns = String::from_utf8(out.stdout)?.trim().to_owned();
    assert!(slow_ns.starts_with("net:["), "{slow_ns:?}");
    let source = format!(
        "import os, time\ndef f(x):\n    slow = os.readlink('/proc/self/ns/net') == {slow_ns:?}\n    time.sleep(0.3 if slow else 0.003)\n    return x + 11\n"
    );
    let inputs = 600;
    let payloads = python::payloads(&source, "range(600)")?;
    let id = job_id("ns-slow");
    let first = whole_job(&spec(&id, inputs), &payloads, 0..600, 5);
    let started = Instant::now();
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frames = match stream.until_end(Duration::from_secs(120)).await {
        Ok(frames) => frames,
        Err(err) => {
            eprintln!("coordinator log:\n{}", cluster.coordinator.proc.log_tail());
            for daemon in &cluster.daemons {
                eprintln!("{} log:\n{}", daemon.node_id, daemon.proc.log_tail());
            }
            return Err(err);
        }
    };
    let took = started.elapsed();
    let collected = Collected::from_frames(&frames)?;
    check_complete(&collected, 600, "i + 11")?;
    let slow_done = cluster.node_job(0, &id).await?["done"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("job took {took:?}; the slow node ran {slow_done} of its ~200 inputs");
    // Its first share was a third (about 200 inputs, 30 s of work on its two instances); what
    // it kept is what it had started or queued for its instances when the others ran dry.
    assert!(slow_done <= 40, "the slow node kept {slow_done} inputs");
    assert!(
        took < Duration::from_secs(20),
        "the slow node held the job: {took:?}"
    );
    Ok(())
}

/// The share the coordinator's "stream opened" log line gives `node` for `job`.
fn share_in_log(log: &str, job: &str, node: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("stream opened"))
        .filter(|line| {
            line.contains(&format!("job={job}")) && line.contains(&format!("node={node}"))
        })
        .find_map(|line| {
            let rest = line.split("share=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
