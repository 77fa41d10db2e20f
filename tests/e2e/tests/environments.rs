//! Nodes report the environments they hold, and the coordinator sends a job to a node that
//! holds its environment before one that would have to build it.

use std::time::{Duration, Instant};

use agent_proto::{EnvSpec, JobState};
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected, Daemon, DaemonOptions};

/// `GET {daemon}/v1/environments` counters `(builds, hits)`.
async fn counters(cluster: &Cluster, daemon: &Daemon) -> anyhow::Result<(u64, u64)> {
    let (_, envs) = cluster
        .http
        .get_json(&format!("{}/v1/environments", daemon.url))
        .await?;
    let c = &envs["counters"];
    Ok((
        c["builds"].as_u64().unwrap_or(u64::MAX),
        c["hits"].as_u64().unwrap_or(u64::MAX),
    ))
}

async fn run(cluster: &Cluster, env: &EnvSpec, payloads: &python::Payloads) -> anyhow::Result<()> {
    let mut job = spec(&job_id("held-env"), 4);
    job.environment = env.clone();
    job.parallelism = 1;
    let body = whole_job(&job, payloads, 0..4, 4);
    let (_body, mut stream) = cluster.http.submit(&cluster.coordinator.url, &body).await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(180)).await?)?;
    let end = collected.end.clone();
    assert_eq!(
        end.as_ref().map(|e| e.state),
        Some(JobState::Completed),
        "{end:?}"
    );
    assert_eq!(python::check_results(&collected.results, "i + 1")?, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_to_the_node_that_holds_its_environment() -> anyhow::Result<()> {
    let env = EnvSpec::Packages { packages: vec![] };
    let digest = env.recipe_digest().expect("a digest");
    let payloads = python::payloads("def f(x):\n    return x + 1\n", "range(4)")?;

    // The small node builds the environment first, alone in the fleet.
    let mut cluster = Cluster::start(0).await?;
    let small = Daemon::start_with(
        cluster.dir.path(),
        &cluster.coordinator.url,
        "node-small",
        &DaemonOptions {
            wrapper: vec!["taskset".into(), "-c".into(), "0".into()],
            ..DaemonOptions::default()
        },
    )?;
    cluster.daemons.push(small);
    cluster
        .wait_alive("node-small", Duration::from_secs(20))
        .await?;
    run(&cluster, &env, &payloads).await?;
    assert_eq!(counters(&cluster, &cluster.daemons[0]).await?, (1, 0));

    // The coordinator learns from a heartbeat that the small node holds it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = cluster.get("/v1/nodes").await?;
        let held = nodes.as_array().into_iter().flatten().any(|n| {
            n["node_id"] == "node-small"
                && n["environments"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|d| d == digest.as_str()))
        });
        if held {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the coordinator never listed the environment on node-small: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A bigger node joins: by free capacity alone it would take a one-instance job.
    cluster.add_daemon().await?;
    let big_cpus = cluster.get("/v1/nodes").await?;
    let cpus = |id: &str| {
        big_cpus
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node_id"] == id)
            .and_then(|n| n["cpus"].as_u64())
    };
    let big_id = cluster.daemons[1].node_id.clone();
    if cpus(&big_id) <= cpus("node-small") {
        eprintln!("SKIP a_job_goes_to_the_node_that_holds_its_environment: this machine has one CPU, so no node can be bigger than the holder");
        return Ok(());
    }
    run(&cluster, &env, &payloads).await?;
    assert_eq!(
        counters(&cluster, &cluster.daemons[0]).await?,
        (1, 1),
        "the holder ran the job from its cache"
    );
    assert_eq!(
        counters(&cluster, &cluster.daemons[1]).await?,
        (0, 0),
        "the bigger node built nothing"
    );
    Ok(())
}
