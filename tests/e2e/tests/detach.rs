//! Detached jobs: the job goes on after its client left, its results are stored in the
//! coordinator's database, survive a coordinator killed with SIGKILL and restarted, and are
//! fetched by job id (each input exactly once), then deleted.

use std::time::{Duration, Instant};

use agent_proto::JobState;
use bytes::Bytes;
use fleetmap_e2e::{
    job_id, python, spec, whole_job, Cluster, Collected, Coordinator, ResultStream,
};
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_results_survive_a_coordinator_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let source = "import time\ndef f(x):\n    time.sleep(0.002)\n    if x == 7:\n        print('seven')\n    return {'x': x, 'sq': x * x}\n";
    let payloads = python::payloads(source, "range(1500)")?;
    let id = job_id("detach");
    let mut job = spec(&id, 1500);
    job.detach = true;
    let first = whole_job(&job, &payloads, 0..1500, 100);
    let (body, stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    // The client leaves at once.
    drop(stream);
    drop(body);

    let coordinator = cluster.coordinator.url.clone();
    let results_url = format!("{coordinator}/v1/jobs/{id}/results");
    let (status, bytes) = cluster
        .http
        .call(Method::GET, &results_url, Bytes::new())
        .await?;
    if status.as_u16() != 200 {
        // Still running: told so, with a sentence.
        assert_eq!(status.as_u16(), 409, "{}", String::from_utf8_lossy(&bytes));
        assert!(String::from_utf8_lossy(&bytes).contains("still running"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
        if record["state"] == "completed" {
            assert_eq!(record["stored_results"], true, "{record}");
            break;
        }
        assert!(
            record["state"] == "running" || record["state"] == "starting",
            "{record}"
        );
        assert!(
            Instant::now() < deadline,
            "detached job did not finish: {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A crash and a restart on the same database lose nothing.
    cluster.coordinator.proc.kill();
    cluster.coordinator = Coordinator::start(cluster.dir.path(), &[])?;
    let results_url = format!("{}/v1/jobs/{id}/results", cluster.coordinator.url);
    let response = cluster
        .http
        .request(
            Method::GET,
            &results_url,
            fleetmap_e2e::http::body_channel().1,
        )
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let mut stored = ResultStream::new(response.into_body());
    let collected = Collected::from_frames(&stored.until_end(Duration::from_secs(60)).await?)?;
    assert_eq!(collected.each_index_once()?, 1500);
    assert!(collected.failures.is_empty(), "{:?}", collected.failures);
    let end = collected.end.as_ref().map(|e| (e.state, e.done));
    assert_eq!(end, Some((JobState::Completed, 1500)));
    assert_eq!(
        python::check_results(&collected.results, "{'x': i, 'sq': i * i}")?,
        1500
    );

    let (status, _) = cluster
        .http
        .call(Method::DELETE, &results_url, Bytes::new())
        .await?;
    assert_eq!(status.as_u16(), 204);
    let (status, bytes) = cluster
        .http
        .call(Method::GET, &results_url, Bytes::new())
        .await?;
    assert_eq!(status.as_u16(), 409, "{}", String::from_utf8_lossy(&bytes));
    assert!(String::from_utf8_lossy(&bytes).contains("no stored results"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_job_over_the_result_budget_fails_with_a_sentence() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(1, &["--results-budget-bytes", "8000"]).await?;
    let payloads = python::payloads("def f(x):\n    return 'y' * 100\n", "range(200)")?;
    let id = job_id("budget");
    let mut job = spec(&id, 200);
    job.detach = true;
    let first = whole_job(&job, &payloads, 0..200, 20);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    let end = collected.end.expect("END");
    assert_eq!(end.state, JobState::Failed);
    let message = end.message.unwrap_or_default();
    assert!(message.contains("--results-budget-bytes"), "{message}");
    Ok(())
}

/// Waits until the job record says `state`, up to `timeout`.
async fn wait_state(
    cluster: &Cluster,
    id: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
        if record["state"] == state {
            return Ok(record);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job never reached {state}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A detached job of `n` slow inputs is submitted, the coordinator is stopped by `stop` once
/// some results are stored, started again on the same database and address, and the job
/// finishes there: every input answered exactly once, with the right value.
async fn resumes_after(stop: impl FnOnce(&mut Coordinator)) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let n = 400;
    let source = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x * 3\n";
    let payloads = python::payloads(source, &format!("range({n})"))?;
    let id = job_id("resume");
    let mut job = spec(&id, n as u64);
    job.detach = true;
    let first = whole_job(&job, &payloads, 0..n, 50);
    let (body, stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    drop(stream);
    drop(body);
    // Some answers stored, most not.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
        let done = record["done"].as_u64().unwrap_or(0);
        if done >= 40 {
            assert!(
                done < n as u64 / 2,
                "the job ran too fast to be interrupted: {record}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listen = cluster
        .coordinator
        .url
        .trim_start_matches("http://")
        .to_owned();
    stop(&mut cluster.coordinator);
    cluster.coordinator = Coordinator::start_on(cluster.dir.path(), &listen, &[])?;
    let record = wait_state(&cluster, &id, "completed", Duration::from_secs(90)).await?;
    assert_eq!(record["done"], n as u64, "{record}");
    assert_eq!(record["failed"], 0, "{record}");

    let response = cluster
        .http
        .request(
            Method::GET,
            &format!("{}/v1/jobs/{id}/results", cluster.coordinator.url),
            fleetmap_e2e::http::body_channel().1,
        )
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let mut stored = ResultStream::new(response.into_body());
    let collected = Collected::from_frames(&stored.until_end(Duration::from_secs(60)).await?)?;
    assert_eq!(collected.each_index_once()?, n);
    assert_eq!(python::check_results(&collected.results, "i * 3")?, n);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_detached_job_resumes_after_the_coordinator_is_killed() -> anyhow::Result<()> {
    resumes_after(|coordinator| coordinator.proc.kill()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_detached_job_resumes_after_the_coordinator_is_stopped() -> anyhow::Result<()> {
    resumes_after(|coordinator| coordinator.proc.stop(Duration::from_secs(10))).await
}
