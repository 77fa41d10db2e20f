//! Prometheus `/metrics` of a real coordinator, scraped and parsed while a job runs on a real
//! daemon: the running job, its inputs, the node's CPUs and instances in use show up while it
//! runs, and drop back (with the submission counted in the latency histogram) once it ended.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_proto::JobState;
use anyhow::{bail, ensure, Context, Result};
use fleetmap_e2e::{job_id, python, spec, whole_job, Cluster, Collected};

/// Samples of an OpenMetrics exposition by `name{labels}` (labels as written).
fn parse(text: &str) -> Result<HashMap<String, f64>> {
    ensure!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad sample line {line:?}"))?;
        samples.insert(series.to_owned(), value.parse::<f64>()?);
    }
    Ok(samples)
}

async fn scrape(cluster: &Cluster) -> Result<HashMap<String, f64>> {
    scrape_url(cluster, &cluster.coordinator.url).await
}

async fn scrape_url(cluster: &Cluster, base: &str) -> Result<HashMap<String, f64>> {
    let (status, body) = cluster
        .http
        .call(
            http::Method::GET,
            &format!("{base}/metrics"),
            bytes::Bytes::new(),
        )
        .await?;
    ensure!(status.is_success(), "GET /metrics: {status}");
    parse(std::str::from_utf8(&body)?)
}

fn get(samples: &HashMap<String, f64>, series: &str) -> Result<f64> {
    samples
        .get(series)
        .copied()
        .with_context(|| format!("no {series} in {samples:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_move_while_a_job_runs() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let before = scrape(&cluster).await?;
    ensure!(get(&before, "fleetmap_coordinator_jobs_running")? == 0.0);
    ensure!(get(&before, "fleetmap_coordinator_nodes{state=\"alive\"}")? == 1.0);
    ensure!(get(&before, "fleetmap_coordinator_cpus{state=\"total\"}")? >= 1.0);

    let node = cluster.daemons[0].url.clone();
    let node_before = scrape_url(&cluster, &node).await?;
    let payloads = python::payloads(
        "import time\ndef f(x):\n    time.sleep(0.25)\n    return x + 1\n",
        "range(40)",
    )?;
    let id = job_id("metrics");
    let first = whole_job(&spec(&id, 40), &payloads, 0..40, 10);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;

    let own_env = "fleetmap_daemon_env_cache_events_total{event=\"node_default\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_node = scrape_url(&cluster, &node).await?;
        let running = get(&on_node, "fleetmap_daemon_jobs_running")?;
        let queued = get(&on_node, "fleetmap_daemon_inputs{state=\"queued\"}")?;
        let busy = get(&on_node, "fleetmap_daemon_inputs{state=\"running\"}")?;
        let instances = get(&on_node, "fleetmap_daemon_instances")?;
        let cpus = get(&on_node, "fleetmap_daemon_cpus{state=\"in_use\"}")?;
        if running == 1.0 && queued + busy > 0.0 && instances >= 1.0 && cpus >= 1.0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the node never showed the job: running {running} queued {queued} busy {busy} instances {instances} cpus {cpus}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let during = scrape(&cluster).await?;
        let running = get(&during, "fleetmap_coordinator_jobs_running")?;
        let received = get(&during, "fleetmap_coordinator_inputs{state=\"received\"}")?;
        let pending = get(&during, "fleetmap_coordinator_inputs{state=\"pending\"}")?;
        let instances = get(&during, "fleetmap_coordinator_instances")?;
        let busy = get(&during, "fleetmap_coordinator_cpus{state=\"in_use\"}")?;
        if running == 1.0 && received == 40.0 && pending > 0.0 && instances >= 1.0 && busy >= 1.0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the running job never showed: running {running} received {received} pending {pending} instances {instances} cpus in use {busy}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    ensure!(collected.end.as_ref().map(|e| e.state) == Some(JobState::Completed));
    ensure!(python::check_results(&collected.results, "i + 1")? == 40);

    let after = scrape(&cluster).await?;
    ensure!(get(&after, "fleetmap_coordinator_jobs_running")? == 0.0);
    ensure!(get(&after, "fleetmap_coordinator_inputs{state=\"received\"}")? == 0.0);
    let submissions = get(
        &after,
        "fleetmap_coordinator_request_duration_seconds_count{route=\"/v1/jobs\",method=\"POST\",status=\"200\"}",
    )?;
    ensure!(submissions == 1.0, "{submissions}");
    let scrapes = get(
        &after,
        "fleetmap_coordinator_request_duration_seconds_count{route=\"/metrics\",method=\"GET\",status=\"200\"}",
    )?;
    ensure!(scrapes >= 2.0, "earlier scrapes are counted: {scrapes}");

    let node_after = scrape_url(&cluster, &node).await?;
    ensure!(get(&node_after, "fleetmap_daemon_jobs_running")? == 0.0);
    ensure!(get(&node_after, "fleetmap_daemon_instances")? == 0.0);
    ensure!(
        get(&node_after, own_env)? == get(&node_before, own_env).unwrap_or(0.0) + 1.0,
        "the job ran in the node's own environment: {:?} then {:?}",
        node_before.get(own_env),
        node_after.get(own_env)
    );
    ensure!(
        get(
            &node_after,
            "fleetmap_daemon_request_duration_seconds_count{route=\"/v1/jobs\",method=\"POST\",status=\"200\"}"
        )? == 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_and_failures_are_counted_by_state_and_kind() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let node = cluster.daemons[0].url.clone();
    let done = "fleetmap_coordinator_inputs_done_total";
    let exited = "fleetmap_coordinator_input_failures_total{kind=\"exited\"}";
    let completed = "fleetmap_coordinator_jobs_finished_total{state=\"completed\"}";
    let before = scrape(&cluster).await?;
    ensure!(get(&before, completed)? == 0.0 && get(&before, exited)? == 0.0);

    // Every fifth input's worker exits: 4 `exited` failures, 16 results, the job completes.
    let payloads = python::payloads(
        "import os\ndef f(x):\n    if x % 5 == 0:\n        os._exit(3)\n    return x\n",
        "range(20)",
    )?;
    let id = job_id("counted");
    let job = whole_job(&spec(&id, 20), &payloads, 0..20, 5);
    let (_body, mut stream) = cluster.http.submit(&cluster.coordinator.url, &job).await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    ensure!(collected.end.as_ref().map(|e| e.state) == Some(JobState::Completed));

    let after = scrape(&cluster).await?;
    ensure!(get(&after, completed)? == 1.0);
    ensure!(
        get(
            &after,
            "fleetmap_coordinator_jobs_finished_total{state=\"failed\"}"
        )? == 0.0
    );
    ensure!(get(&after, done)? == 16.0, "{:?}", after.get(done));
    ensure!(get(&after, exited)? == 4.0, "{:?}", after.get(exited));
    ensure!(
        get(
            &after,
            "fleetmap_coordinator_input_failures_total{kind=\"oom\"}"
        )? == 0.0
    );

    let on_node = scrape_url(&cluster, &node).await?;
    ensure!(
        get(
            &on_node,
            "fleetmap_daemon_jobs_finished_total{state=\"completed\"}"
        )? == 1.0
    );
    ensure!(get(&on_node, "fleetmap_daemon_inputs_done_total")? == 16.0);
    ensure!(
        get(
            &on_node,
            "fleetmap_daemon_input_failures_total{kind=\"exited\"}"
        )? == 4.0
    );
    Ok(())
}
