//! Cancelling: DELETE stops the job on every node within a second and the stream ends with END
//! cancelled; a client that disconnects cancels its job too.

use std::time::{Duration, Instant};

use agent_proto::{FrameKind, JobState};
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};
use http::StatusCode;

const SLOW: &str = "import time\ndef f(x):\n    time.sleep(0.02)\n    return x\n";

async fn daemon_state(cluster: &Cluster, daemon: usize, id: &str) -> anyhow::Result<String> {
    let (_, status) = cluster
        .http
        .get_json(&format!("{}/v1/jobs/{id}", cluster.daemons[daemon].url))
        .await?;
    Ok(status["state"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_on_every_node_within_a_second() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let payloads = python::payloads(SLOW, "range(10000)")?;
    let id = job_id("cancel");
    let first = whole_job(&spec(&id, 10_000), &payloads, 0..10_000, 100);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    collected.read_results(&mut stream, 10).await?;

    let asked = Instant::now();
    let (status, record) = cluster
        .http
        .delete_json(&format!("{}/v1/jobs/{id}", cluster.coordinator.url))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{record}");
    assert_eq!(record["state"], "cancelled");
    let frames = stream.until_end(Duration::from_secs(5)).await?;
    let took = asked.elapsed();
    for frame in &frames {
        collected.add(frame)?;
    }
    collected.each_index_once()?;
    assert_eq!(collected.end.map(|e| e.state), Some(JobState::Cancelled));
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    for daemon in 0..cluster.daemons.len() {
        let state = daemon_state(&cluster, daemon, &id).await?;
        assert_eq!(state, "cancelled", "daemon {daemon}");
    }
    let (status, _) = cluster
        .http
        .delete_json(&format!("{}/v1/jobs/{id}", cluster.coordinator.url))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "already ended");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_job() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let payloads = python::payloads(SLOW, "range(5000)")?;
    let id = job_id("leave");
    let first = whole_job(&spec(&id, 5000), &payloads, 0..5000, 100);
    let (body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frame = stream.next().await?.expect("a first frame");
    assert_ne!(frame.kind, FrameKind::End);
    drop(stream);
    drop(body);

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
        if record["state"] == "cancelled" {
            assert!(
                record["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("disconnected"),
                "{record}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "job still {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon_state(&cluster, 0, &id).await?, "cancelled");
    Ok(())
}
