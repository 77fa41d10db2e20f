//! Lifecycle across processes: a job whose only node dies finishes on the node that takes its
//! place, and a coordinator stopped with SIGTERM ends its jobs (END cancelled) and exits cleanly.

use std::time::{Duration, Instant};

use agent_proto::JobState;
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_the_only_node_wait_for_the_next_one() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x * x\n";
    let payloads = python::payloads(source, "range(300)")?;
    let id = job_id("handover");
    let first = whole_job(&spec(&id, 300), &payloads, 0..300, 30);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 30).await?;
    cluster.daemons[0].proc.kill();
    // Nothing can run the rest now; a new node appears a moment later and takes it over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.add_daemon().await?;
    for frame in stream.until_end(Duration::from_secs(60)).await? {
        collected.add(&frame)?;
    }
    assert_eq!(collected.each_index_once()?, 300);
    assert!(collected.failures.is_empty(), "{:?}", collected.failures);
    assert_eq!(collected.end.map(|e| e.state), Some(JobState::Completed));
    assert_eq!(python::check_results(&collected.results, "i * i")?, 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_running_jobs_and_the_coordinator_exits() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let payloads = python::payloads(
        "import time\ndef f(x):\n    time.sleep(0.02)\n    return x\n",
        "range(5000)",
    )?;
    let id = job_id("term");
    let first = whole_job(&spec(&id, 5000), &payloads, 0..5000, 100);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    while collected.results.is_empty() {
        let frame = stream.next().await?.expect("results before END");
        collected.add(&frame)?;
    }
    let pid = cluster.coordinator.proc.pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let asked = Instant::now();
    for frame in stream.until_end(Duration::from_secs(10)).await? {
        collected.add(&frame)?;
    }
    collected.each_index_once()?;
    let end = collected.end.expect("END");
    assert_eq!(end.state, JobState::Cancelled);
    assert!(end.message.unwrap_or_default().contains("shutting down"));
    let status = cluster.coordinator.proc.wait(Duration::from_secs(10))?;
    assert!(status.success(), "coordinator exit status {status}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    let (_, on_node) = cluster
        .http
        .get_json(&format!("{}/v1/jobs/{id}", cluster.daemons[0].url))
        .await?;
    assert_eq!(on_node["state"], "cancelled", "{on_node}");
    Ok(())
}
