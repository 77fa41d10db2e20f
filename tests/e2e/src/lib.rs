//! Harness of the cross-component tests in `tests/`: the real `fleetmap-coordinator` and
//! `fleetmapd` binaries as processes on loopback, an HTTP client that streams frames both ways,
//! and payloads pickled (and results checked) by real Python with cloudpickle.
//!
//! The binaries are taken from the `target/debug` the tests were built in (or
//! `FLEETMAP_BIN_DIR`); Cargo does not build another package's binaries for a test, so build
//! them first: `cargo build --workspace --bins` (as `scripts/test` does).

pub mod http;
pub mod netns;
pub mod procs;
pub mod python;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_proto::{Failure, Frame, FrameKind, ItemBatch, JobEnd, JobSpec};
use anyhow::{bail, Context, Result};
use bytes::Bytes;

pub use http::{Http, ResultStream};
pub use procs::{Coordinator, Daemon, DaemonOptions};
pub use python::Payloads;

/// A coordinator and its daemons in one temporary directory.
#[derive(Debug)]
pub struct Cluster {
    /// Daemons (dropped first, so they stop before the coordinator).
    pub daemons: Vec<Daemon>,
    /// The coordinator.
    pub coordinator: Coordinator,
    /// HTTP client.
    pub http: Http,
    /// Logs, databases and state directories.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a coordinator and `nodes` daemons and waits until every daemon is alive there.
    pub async fn start(nodes: usize) -> Result<Self> {
        Self::start_with(nodes, &[]).await
    }

    /// Like [`Cluster::start`], with extra coordinator flags.
    pub async fn start_with(nodes: usize, coordinator_flags: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let coordinator = Coordinator::start(dir.path(), coordinator_flags)?;
        let mut cluster = Self {
            daemons: Vec::new(),
            coordinator,
            http: Http::new(),
            dir,
        };
        for _ in 0..nodes {
            cluster.add_daemon().await?;
        }
        Ok(cluster)
    }

    /// Starts one more daemon and waits until the coordinator lists it alive.
    pub async fn add_daemon(&mut self) -> Result<&Daemon> {
        self.add_daemon_with(&[]).await
    }

    /// Like [`Cluster::add_daemon`], with extra `fleetmapd` flags.
    pub async fn add_daemon_with(&mut self, extra: &[&str]) -> Result<&Daemon> {
        let node_id = procs::unique("node");
        let options = procs::DaemonOptions {
            extra: extra.iter().map(|flag| (*flag).to_owned()).collect(),
            ..procs::DaemonOptions::default()
        };
        let daemon =
            Daemon::start_with(self.dir.path(), &self.coordinator.url, &node_id, &options)?;
        self.daemons.push(daemon);
        self.wait_alive(&node_id, Duration::from_secs(20)).await?;
        self.daemons
            .last()
            .ok_or_else(|| anyhow::anyhow!("daemon just pushed"))
    }

    /// Waits until the coordinator lists `node_id` alive.
    pub async fn wait_alive(&self, node_id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, nodes) = self
                .http
                .get_json(&format!("{}/v1/nodes", self.coordinator.url))
                .await?;
            let alive = nodes.as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["node_id"] == node_id && n["alive"] == true)
            });
            if alive {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {node_id} is not alive on the coordinator after {timeout:?}: {nodes}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET {coordinator}{path}` as JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let (status, value) = self
            .http
            .get_json(&format!("{}{path}", self.coordinator.url))
            .await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {value}");
        }
        Ok(value)
    }
}

/// A fresh job id.
pub fn job_id(prefix: &str) -> String {
    procs::unique(prefix).replace('.', "-")
}

/// A spec for `n` inputs with the contract's defaults.
pub fn spec(job_id: &str, n: u64) -> JobSpec {
    let mut spec = JobSpec::new(job_id);
    spec.expected_inputs = Some(n);
    spec.python_version = Some("3.11".into());
    spec
}

/// SPEC and FUNCTION frames.
pub fn prelude(spec: &JobSpec, function: &Bytes) -> Vec<Frame> {
    vec![
        Frame::json(FrameKind::Spec, spec),
        Frame::new(FrameKind::Function, function.clone()),
    ]
}

/// A whole job in one body: SPEC, FUNCTION, inputs `range` in batches of `batch`, INPUTS_END.
pub fn whole_job(
    spec: &JobSpec,
    payloads: &python::Payloads,
    range: std::ops::Range<usize>,
    batch: usize,
) -> Vec<Frame> {
    let mut frames = prelude(spec, &payloads.function);
    frames.extend(payloads.batches(range, batch));
    frames.push(Frame::empty(FrameKind::InputsEnd));
    frames
}

/// Runs `function` (Python source defining `f`) over `range(n)` as one whole submission to
/// the coordinator at `url` through `http`, in batches of `batch`, and checks that it
/// completed with every input answered once and each result equal to `expected` (a Python
/// expression of `i`).
pub async fn run_whole_python_job(
    http: &Http,
    url: &str,
    id: &str,
    function: &str,
    n: u64,
    batch: usize,
    expected: &str,
) -> Result<()> {
    let payloads = python::payloads(function, &format!("range({n})"))?;
    let count = usize::try_from(n)?;
    let first = whole_job(&spec(id, n), &payloads, 0..count, batch);
    let (_body, mut stream) = http.submit(url, &first).await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    anyhow::ensure!(
        collected.end.as_ref().map(|e| e.state) == Some(agent_proto::JobState::Completed),
        "{:?}",
        collected.end
    );
    anyhow::ensure!(collected.each_index_once()? == count);
    anyhow::ensure!(python::check_results(&collected.results, expected)? == count);
    Ok(())
}

/// What a result stream carried, by kind.
#[derive(Debug, Default)]
pub struct Collected {
    /// Every result, in arrival order.
    pub results: Vec<(u64, Bytes)>,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// OUTPUT frames.
    pub outputs: usize,
    /// STATUS frames.
    pub statuses: usize,
    /// The END frame.
    pub end: Option<JobEnd>,
}

impl Collected {
    /// Sorts a stream's frames by kind.
    pub fn from_frames(frames: &[Frame]) -> Result<Self> {
        let mut collected = Self::default();
        for frame in frames {
            collected.add(frame)?;
        }
        Ok(collected)
    }

    /// Reads `stream` until at least `n` results have arrived.
    pub async fn read_results(&mut self, stream: &mut http::ResultStream, n: usize) -> Result<()> {
        while self.results.len() < n {
            let frame = stream
                .next()
                .await?
                .context("the stream ended before the results")?;
            self.add(&frame)?;
        }
        Ok(())
    }

    /// Adds one frame.
    pub fn add(&mut self, frame: &Frame) -> Result<()> {
        match frame.kind {
            FrameKind::Results => {
                for item in ItemBatch::from_frame(frame)?.items {
                    self.results.push((item.index, item.payload));
                }
            }
            FrameKind::Failure => self.failures.push(Failure::from_frame(frame)?),
            FrameKind::Output => self.outputs += 1,
            FrameKind::Status => self.statuses += 1,
            FrameKind::End => self.end = Some(frame.parse_json()?),
            other => bail!("unexpected {other} frame in a result stream"),
        }
        Ok(())
    }

    /// Fails unless every index answered (result or failure) appears exactly once.
    pub fn each_index_once(&self) -> Result<usize> {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for index in self
            .results
            .iter()
            .map(|(index, _)| *index)
            .chain(self.failures.iter().map(|f| f.index))
        {
            *seen.entry(index).or_default() += 1;
        }
        if let Some((index, count)) = seen.iter().find(|(_, count)| **count > 1) {
            bail!("index {index} answered {count} times");
        }
        Ok(seen.len())
    }
}
