//! Several daemons: a job is split over every node that fits, and the inputs of a node that dies
//! mid-job are re-dispatched so every index still comes back exactly once.

use std::time::Duration;

use agent_proto::JobState;
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_a_job() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.002)\n    return -x\n";
    let payloads = python::payloads(source, "range(2000)")?;
    let id = job_id("split");
    let first = whole_job(&spec(&id, 2000), &payloads, 0..2000, 50);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frames = stream.until_end(Duration::from_secs(120)).await?;
    let collected = Collected::from_frames(&frames)?;
    assert_eq!(collected.each_index_once()?, 2000);
    assert_eq!(collected.end.map(|e| e.state), Some(JobState::Completed));
    assert_eq!(python::check_results(&collected.results, "-i")?, 2000);

    let mut total = 0;
    for daemon in &cluster.daemons {
        let (_, status) = cluster
            .http
            .get_json(&format!("{}/v1/jobs/{id}", daemon.url))
            .await?;
        let done = status["done"].as_u64().unwrap_or(0);
        assert!(done > 0, "node {} got no work: {status}", daemon.node_id);
        total += done;
    }
    assert_eq!(total, 2000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_inputs_are_redispatched() -> anyhow::Result<()> {
    redispatch_after_a_node_dies(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redispatched_inputs_wait_for_credit_on_full_nodes() -> anyhow::Result<()> {
    // A window of 4 inputs per instance: the survivor is full when the dead node's inputs come
    // back, so they must go out as its credit returns.
    redispatch_after_a_node_dies(&["--window-items-per-instance", "4"]).await
}

async fn redispatch_after_a_node_dies(flags: &[&str]) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(2, flags).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x + 7\n";
    let payloads = python::payloads(source, "range(600)")?;
    let id = job_id("lost");
    let first = whole_job(&spec(&id, 600), &payloads, 0..600, 20);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 60).await?;
    cluster.daemons[1].proc.kill();
    for frame in stream.until_end(Duration::from_secs(60)).await? {
        collected.add(&frame)?;
    }
    assert_eq!(collected.each_index_once()?, 600);
    assert!(collected.failures.is_empty(), "{:?}", collected.failures);
    assert_eq!(collected.end.map(|e| e.state), Some(JobState::Completed));
    assert_eq!(python::check_results(&collected.results, "i + 7")?, 600);
    let nodes = cluster.get("/v1/nodes").await?;
    let dead = &cluster.daemons[1].node_id;
    assert!(
        nodes.as_array().is_some_and(|n| n
            .iter()
            .any(|n| n["node_id"] == dead.as_str() && n["alive"] == false)),
        "{nodes}"
    );
    Ok(())
}
