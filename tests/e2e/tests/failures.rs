//! A raising function stops the job: its FAILURE reaches the client, the job ends failed and
//! the daemon stops running it.

use std::time::{Duration, Instant};

use agent_proto::{FailureKind, JobState};
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_stops_the_job_on_every_node() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let source = "import time\ndef f(x):\n    if x == 17:\n        raise ValueError(f'bad value {x}')\n    time.sleep(0.001)\n    return x\n";
    let payloads = python::payloads(source, "range(10000)")?;
    let id = job_id("raise");
    let first = whole_job(&spec(&id, 10_000), &payloads, 0..10_000, 250);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frames = stream.until_end(Duration::from_secs(60)).await?;
    let ended = Instant::now();
    let collected = Collected::from_frames(&frames)?;
    collected.each_index_once()?;

    let failure = collected
        .failures
        .iter()
        .find(|f| f.info.kind == FailureKind::Exception)
        .expect("the exception is forwarded");
    assert_eq!(failure.index, 17);
    assert_eq!(failure.info.type_name.as_deref(), Some("ValueError"));
    assert!(!failure.exception.is_empty(), "pickled exception travels");
    let end = collected.end.expect("END");
    assert_eq!(end.state, JobState::Failed);
    let message = end.message.unwrap_or_default();
    assert!(message.contains("ValueError"), "{message}");
    assert!(collected.results.len() < 9_999, "the rest did not run");

    let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(record["state"], "failed");
    assert!(record["message"]
        .as_str()
        .unwrap_or("")
        .contains("ValueError"));

    // Neither daemon runs the job a second after its END: the one whose instance raised, and
    // the other one, which the coordinator cancels.
    for daemon in &cluster.daemons {
        loop {
            let (_, status) = cluster
                .http
                .get_json(&format!("{}/v1/jobs/{id}", daemon.url))
                .await?;
            if matches!(status["state"].as_str(), Some("failed" | "cancelled")) {
                break;
            }
            assert!(
                ended.elapsed() < Duration::from_secs(1),
                "daemon {} still runs it 1 s after the job ended: {status}",
                daemon.node_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
