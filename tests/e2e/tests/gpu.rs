//! GPU jobs through the real binaries: a coordinator and two `fleetmapd` processes given
//! test-only GPU inventories (`--test-only-fake-gpus`), jobs with `func_gpu` submitted to the
//! coordinator. Instances report from inside which GPU they see (`CUDA_VISIBLE_DEVICES`).

use std::collections::HashSet;
use std::time::Duration;

use agent_proto::JobState;
use anyhow::Context;
use bytes::BytesMut;
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};
use http::{Method, StatusCode};

const TWO_H100: &str = "NVIDIA H100 80GB HBM3:81559,NVIDIA H100 80GB HBM3:81559";
const ONE_A10G: &str = "NVIDIA A10G:23028";

/// A coordinator with one node holding two H100s and one holding an A10G.
async fn gpu_cluster() -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::start(0).await?;
    cluster
        .add_daemon_with(&["--test-only-fake-gpus", TWO_H100])
        .await?;
    cluster
        .add_daemon_with(&["--test-only-fake-gpus", ONE_A10G])
        .await?;
    Ok(cluster)
}

const SEES_GPU: &str = r#"
import json, os, time
def f(x):
    start = time.time()
    time.sleep(0.1)
    return json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                       "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                       "pid": os.getpid(), "start": start, "end": time.time()})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_run_only_on_nodes_with_the_model_one_gpu_each() -> anyhow::Result<()> {
    let cluster = gpu_cluster().await?;
    let (h100_node, a10g_node) = (&cluster.daemons[0], &cluster.daemons[1]);
    let nodes = cluster.get("/v1/nodes").await?;
    let listed: usize = nodes
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| n["gpus"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        listed, 3,
        "the coordinator lists every node's GPUs: {nodes}"
    );

    let payloads = python::payloads(SEES_GPU, "range(10)")?;
    let id = job_id("gpu");
    let mut job = spec(&id, 10);
    job.func_gpu = Some("H100".into());
    let (_body, mut stream) = cluster
        .http
        .submit(
            &cluster.coordinator.url,
            &whole_job(&job, &payloads, 0..10, 5),
        )
        .await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(120)).await?)?;
    assert_eq!(
        collected.end.as_ref().map(|e| e.state),
        Some(JobState::Completed),
        "{:?}",
        collected.end
    );
    assert_eq!(collected.each_index_once()?, 10);
    let seen = python::results_as_json(&collected.results)?;
    let h100s: HashSet<String> = (0..2)
        .map(|i| format!("GPU-fake-{}-{i}", h100_node.node_id))
        .collect();
    for s in &seen {
        let gpu = s["gpu"].as_str().context("CUDA_VISIBLE_DEVICES set")?;
        assert!(h100s.contains(gpu), "{gpu} is not one of {h100s:?}");
        assert_eq!(s["nvidia"], s["gpu"]);
    }
    // Workers that ran at the same time held different GPUs.
    for a in &seen {
        for b in &seen {
            let overlap =
                a["start"].as_f64() < b["end"].as_f64() && b["start"].as_f64() < a["end"].as_f64();
            if a["pid"] != b["pid"] && overlap {
                assert_ne!(
                    a["gpu"], b["gpu"],
                    "two workers at once on one GPU: {a} {b}"
                );
            }
        }
    }
    // The A10G node never saw the job.
    let (status, _) = cluster
        .http
        .get_json(&format!("{}/v1/jobs/{id}", a10g_node.url))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_no_node_can_run_are_refused_before_any_input() -> anyhow::Result<()> {
    let cluster = gpu_cluster().await?;
    let payloads = python::payloads(SEES_GPU, "range(3)")?;
    let cases = [
        (
            "A100",
            1,
            "no node has a GPU matching \"A100\"; the fleet has: NVIDIA H100 80GB HBM3 (×2), NVIDIA A10G (×1); change func_gpu or add a node with that GPU",
        ),
        (
            "A10",
            1,
            "no node has a GPU matching \"A10\"; the fleet has: ",
        ),
        (
            "H100",
            64,
            "func_cpu=64 and func_ram=1 do not fit any node with a GPU matching \"H100\"",
        ),
    ];
    for (model, cpus, needle) in cases {
        let mut job = spec(&job_id("refused"), 3);
        job.func_gpu = Some(model.into());
        job.func_cpu = cpus;
        let mut body = BytesMut::new();
        for frame in whole_job(&job, &payloads, 0..3, 3) {
            frame.encode_into(&mut body);
        }
        let (status, text) = cluster
            .http
            .call(
                Method::POST,
                &format!("{}/v1/jobs", cluster.coordinator.url),
                body.freeze(),
            )
            .await?;
        let error: agent_proto::ErrorBody = serde_json::from_slice(&text)
            .with_context(|| format!("{model}: {}", String::from_utf8_lossy(&text)))?;
        let text = error.error.message;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{model}: {text}");
        assert!(text.contains(needle), "{model}: {text} lacks {needle:?}");
    }
    // Nothing ran anywhere.
    for daemon in &cluster.daemons {
        let (_, node) = cluster
            .http
            .get_json(&format!("{}/v1/node", daemon.url))
            .await?;
        assert_eq!(node["jobs"], 0, "{node}");
    }
    Ok(())
}
