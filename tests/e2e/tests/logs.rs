//! A job's output log, kept by a real coordinator from a real daemon's OUTPUT frames: what each
//! input printed comes back from `GET /v1/jobs/{id}/logs` after the job ended, attributed to its
//! input and stream, in order, filtered by input on request, and cut at the coordinator's
//! `--log-bytes-per-job` with one line saying so.

use std::time::Duration;

use agent_proto::JobState;
use anyhow::{ensure, Result};
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};
use serde_json::Value;

const PRINTER: &str = "import sys\ndef f(x):\n    print(f'out {x}')\n    print(f'err {x}', file=sys.stderr)\n    return x\n";

async fn run_job(cluster: &Cluster, id: &str, n: usize) -> Result<()> {
    let payloads = python::payloads(PRINTER, &format!("range({n})"))?;
    let job = whole_job(&spec(id, n as u64), &payloads, 0..n, 5);
    let (_body, mut stream) = cluster.http.submit(&cluster.coordinator.url, &job).await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    ensure!(collected.end.as_ref().map(|e| e.state) == Some(JobState::Completed));
    Ok(())
}

fn entries(page: &Value) -> Vec<Value> {
    page["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_each_input_printed_is_kept_and_read_back_by_input() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let id = job_id("logs");
    run_job(&cluster, &id, 20).await?;

    let page = cluster.get(&format!("/v1/jobs/{id}/logs")).await?;
    ensure!(page["state"] == "completed", "{page}");
    ensure!(page["next_seq"].is_null(), "{page}");
    let all = entries(&page);
    for x in 0..20u64 {
        for (stream, word) in [("stdout", "out"), ("stderr", "err")] {
            let text: String = all
                .iter()
                .filter(|e| e["index"] == x && e["stream"] == stream)
                .filter_map(|e| e["text"].as_str())
                .collect();
            ensure!(
                text == format!("{word} {x}\n"),
                "input {x} {stream}: {text:?} in {page}"
            );
        }
    }
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");

    let only = cluster.get(&format!("/v1/jobs/{id}/logs?input=7")).await?;
    let only = entries(&only);
    ensure!(
        !only.is_empty() && only.iter().all(|e| e["index"] == 7),
        "{only:?}"
    );
    let later = cluster
        .get(&format!(
            "/v1/jobs/{id}/logs?from_seq={}",
            seqs[seqs.len() - 2]
        ))
        .await?;
    ensure!(entries(&later).len() == 2, "{later}");

    let (status, body) = cluster
        .http
        .get_json(&format!("{}/v1/jobs/nope/logs", cluster.coordinator.url))
        .await?;
    ensure!(status.as_u16() == 404, "{status} {body}");
    let (status, body) = cluster
        .http
        .get_json(&format!(
            "{}/v1/jobs/{id}/logs?from_seq=x",
            cluster.coordinator.url
        ))
        .await?;
    ensure!(status.as_u16() == 400, "{status} {body}");
    ensure!(
        body.to_string()
            .contains("from_seq=x must be a whole number"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_printing_past_the_cap_keeps_its_first_bytes_and_says_so() -> Result<()> {
    let cluster = Cluster::start_with(1, &["--log-bytes-per-job", "64"]).await?;
    let id = job_id("logcap");
    run_job(&cluster, &id, 30).await?;
    let all = entries(&cluster.get(&format!("/v1/jobs/{id}/logs")).await?);
    let kept: usize = all
        .iter()
        .filter(|e| !e["index"].is_null())
        .filter_map(|e| e["text"].as_str())
        .map(str::len)
        .sum();
    ensure!(kept > 0 && kept <= 64, "kept {kept} bytes: {all:?}");
    let last = all.last().cloned().unwrap_or_default();
    ensure!(last["index"].is_null(), "{last}");
    ensure!(
        last["text"]
            .as_str()
            .unwrap_or("")
            .contains("--log-bytes-per-job"),
        "{last}"
    );
    Ok(())
}
