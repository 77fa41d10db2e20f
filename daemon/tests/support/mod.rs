//! Shared by the black-box tests: a daemon started with `fleetmapd::run` on `127.0.0.1:0`
//! (real zygote, real Python workers), a frame-speaking HTTP client, pickled test functions
//! and a tiny reader for the pickled ints and strings the test functions return.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_proto::{
    Failure, Frame, FrameKind, Item, ItemBatch, JobEnd, JobSpec, JobState, Output,
    FRAMES_CONTENT_TYPE,
};
use bytes::{Bytes, BytesMut};
use fleetmap_sandbox::CgroupMode;
use fleetmapd::api::body::BodyFrames;
use fleetmapd::Config;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Whether this host can run cgroup tests; `Err` says why not.
pub fn cgroups_available() -> Result<(), String> {
    if !nix_is_root() {
        return Err("not running as root".into());
    }
    let root = Path::new("/sys/fs/cgroup");
    let v1 = root.join("cpuset").is_dir() && root.join("memory").is_dir();
    let v2 = root.join("cgroup.controllers").is_file();
    if !v1 && !v2 {
        return Err("no cgroup v1 cpuset+memory or v2 hierarchy under /sys/fs/cgroup".into());
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether python3 with cloudpickle is here; `Err` says why not.
pub fn python_available() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import cloudpickle"])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err("python3 has no cloudpickle".into())
    }
}

/// Skips the calling test, loudly, unless Python (and cgroups when `cgroups`) are available.
#[macro_export]
macro_rules! require {
    (python) => {
        if let Err(why) = support::python_available() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
    (cgroups) => {
        require!(python);
        if let Err(why) = support::cgroups_available() {
            eprintln!("SKIPPED {}: needs cgroups: {why}", module_path!());
            return;
        }
    };
}

/// A daemon served by `fleetmapd::run` in this process.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub node_id: String,
    pub state: tempfile::TempDir,
    pub cgroup_parent: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), fleetmapd::DaemonError>>>,
}

/// A unique node id for a test.
pub fn node_id(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

impl TestDaemon {
    /// Starts a daemon with cgroups `mode` and a pool of 2.
    pub async fn start(name: &str, mode: CgroupMode) -> Self {
        Self::start_with(name, mode, |_| {}).await
    }

    /// Starts a daemon, letting `tweak` change its config.
    pub async fn start_with(name: &str, mode: CgroupMode, tweak: impl FnOnce(&mut Config)) -> Self {
        let node_id = node_id(name);
        let state = tempfile::tempdir().expect("state dir");
        let mut config = Config::new(&node_id, state.path(), "python3");
        config.cgroup_mode = mode;
        config.cgroup_parent = Some(format!("fleetmap-test/{node_id}"));
        config.pool_size = Some(2);
        tweak(&mut config);
        let cgroup_parent = config.cgroup_config().parent;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(fleetmapd::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let daemon = Self {
            addr,
            node_id,
            state,
            cgroup_parent,
            stop: Some(stop),
            task: Some(task),
        };
        daemon.wait_healthy().await;
        daemon
    }

    async fn wait_healthy(&self) {
        for _ in 0..600 {
            if let Ok((status, _)) =
                tokio::time::timeout(Duration::from_secs(1), get(self.addr, "/v1/health"))
                    .await
                    .unwrap_or(Err("timeout".into()))
            {
                if status == StatusCode::OK {
                    return;
                }
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the daemon stopped during startup");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the daemon did not become healthy");
    }

    /// Stops the daemon gracefully and checks it shut down cleanly.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let outcome = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("daemon stops within 30 s")
                .expect("daemon task");
            outcome.expect("daemon ran without error");
        }
        remove_cgroup_parent(&self.cgroup_parent);
    }

    /// Pids of the processes in this daemon's cgroups (pool and slots), v1 only.
    pub fn cgroup_pids(&self) -> Vec<u32> {
        cgroup_pids(&self.cgroup_parent)
    }
}

impl Drop for TestDaemon {
    /// A test that panicked never called `stop`: kill what its daemon started and remove its
    /// cgroups so that nothing outlives the test.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.task.is_some() {
            let worker_file = std::fs::canonicalize(self.state.path())
                .unwrap_or_else(|_| self.state.path().to_path_buf())
                .join("worker/fleetmap_worker.py");
            fleetmapd::runtime::process::stale::kill_workers_of(Path::new("/proc"), &worker_file);
            let config = fleetmap_sandbox::CgroupConfig {
                root: "/sys/fs/cgroup".into(),
                parent: self.cgroup_parent.clone(),
            };
            if let Ok(cgroups) = fleetmap_sandbox::detect(&config, CgroupMode::Auto) {
                let _ = cgroups.cleanup_stale();
            }
            remove_cgroup_parent(&self.cgroup_parent);
        }
    }
}

/// Pids in every cgroup below `parent` in the v1 cpuset hierarchy.
pub fn cgroup_pids(parent: &str) -> Vec<u32> {
    let dir = Path::new("/sys/fs/cgroup/cpuset").join(parent);
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return pids;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            if let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids
}

/// Child cgroups below `parent` in the v1 cpuset and memory hierarchies.
pub fn child_cgroups(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for controller in ["cpuset", "memory"] {
        let dir = Path::new("/sys/fs/cgroup").join(controller).join(parent);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            found.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    found
}

/// Removes a test's (empty) cgroup parent and its `fleetmap-test` ancestor if empty.
pub fn remove_cgroup_parent(parent: &str) {
    for controller in [
        "cpuset", "memory", "devices", "cpu", "cpuacct", "pids", "unified", "",
    ] {
        let base = Path::new("/sys/fs/cgroup").join(controller);
        let _ = std::fs::remove_dir(base.join(parent));
        if let Some(up) = Path::new(parent).parent() {
            let _ = std::fs::remove_dir(base.join(up));
        }
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// Sends one request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<hyper::Response<Incoming>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, FRAMES_CONTENT_TYPE)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// A request and its whole answer.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let response = request(addr, method, path, body).await.expect("request");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// `GET path` and its answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
    let response = request(addr, Method::GET, path, Bytes::new()).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// `GET path` parsed as JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).await.expect("get");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

/// Encodes frames into one body.
pub fn frames(frames: &[Frame]) -> Bytes {
    let mut wire = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut wire);
    }
    wire.freeze()
}

/// A spec with the test defaults.
pub fn spec(job_id: &str) -> JobSpec {
    let mut spec = JobSpec::new(job_id);
    spec.python_version = Some("3.11".into());
    spec
}

/// INPUTS frames of pickled ints `range`, `per_batch` items each.
pub fn int_inputs(range: std::ops::Range<u64>, per_batch: usize) -> Vec<Frame> {
    let items: Vec<u64> = range.collect();
    items
        .chunks(per_batch.max(1))
        .map(|chunk| {
            ItemBatch::new(
                chunk
                    .iter()
                    .map(|i| Item::new(*i, pickle_int(*i as i64)))
                    .collect(),
            )
            .into_frame(FrameKind::Inputs)
        })
        .collect()
}

/// A whole submission body: SPEC, FUNCTION, INPUTS of `range`, INPUTS_END.
pub fn submission(spec: &JobSpec, function: &Bytes, range: std::ops::Range<u64>) -> Bytes {
    let mut all = vec![
        Frame::json(FrameKind::Spec, spec),
        Frame::new(FrameKind::Function, function.clone()),
    ];
    all.extend(int_inputs(range, 1000));
    all.push(Frame::empty(FrameKind::InputsEnd));
    frames(&all)
}

/// Everything a result stream carried.
#[derive(Debug, Default)]
pub struct Collected {
    pub results: HashMap<u64, Bytes>,
    pub failures: Vec<Failure>,
    pub outputs: Vec<Output>,
    pub statuses: usize,
    pub end: Option<JobEnd>,
}

impl Collected {
    /// The result of `index` as an int.
    pub fn int(&self, index: u64) -> Option<i64> {
        self.results.get(&index).and_then(|p| unpickle_int(p))
    }

    /// The END frame (panics if none came).
    pub fn end(&self) -> &JobEnd {
        self.end.as_ref().expect("END frame")
    }
}

/// Reads a result stream to its END, checking each index comes at most once.
pub async fn collect(response: hyper::Response<Incoming>) -> Collected {
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = BodyFrames::new(response.into_body(), 1 << 30);
    let mut out = Collected::default();
    while let Some(frame) = reader.next().await.expect("valid frames") {
        assert!(out.end.is_none(), "a frame after END: {:?}", frame.kind);
        match frame.kind {
            FrameKind::Results => {
                for item in ItemBatch::from_frame(&frame).expect("batch").items {
                    assert!(
                        out.results.insert(item.index, item.payload).is_none(),
                        "index {} twice",
                        item.index
                    );
                }
            }
            FrameKind::Failure => out
                .failures
                .push(Failure::from_frame(&frame).expect("failure")),
            FrameKind::Output => out
                .outputs
                .push(Output::from_frame(&frame).expect("output")),
            FrameKind::Status => out.statuses += 1,
            FrameKind::End => out.end = Some(frame.parse_json().expect("end")),
            other => panic!("unexpected {other} in a result stream"),
        }
    }
    for failure in &out.failures {
        assert!(
            !out.results.contains_key(&failure.index),
            "index {} has a result and a failure",
            failure.index
        );
    }
    out
}

/// Submits a whole job and collects its stream.
pub async fn run_job(
    addr: SocketAddr,
    spec: &JobSpec,
    function: &Bytes,
    range: std::ops::Range<u64>,
) -> Collected {
    let body = submission(spec, function, range);
    let response = request(addr, Method::POST, "/v1/jobs", body)
        .await
        .expect("submit");
    collect(response).await
}

// ---------------------------------------------------------------------------------------
// Python functions and pickles
// ---------------------------------------------------------------------------------------

/// Runs `double` over `0..n` as job `job_id` within `limit` and checks that it completed
/// with every result: a daemon that should be serving normally again.
pub async fn run_doubles(addr: SocketAddr, job_id: &str, n: u64, limit: Duration) {
    let out = tokio::time::timeout(
        limit,
        run_job(addr, &spec(job_id), &function("double", None), 0..n),
    )
    .await
    .unwrap_or_else(|_| panic!("job {job_id} did not end within {limit:?}"));
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    for i in 0..n {
        assert_eq!(out.int(i), Some(2 * i as i64), "input {i}");
    }
}

/// Runs `double` over `range` as `spec` within `limit` and checks that the job failed: a job
/// that must end with one sentence instead of hanging. Returns its stream and END message.
pub async fn failed_job(
    addr: SocketAddr,
    spec: &JobSpec,
    range: std::ops::Range<u64>,
    limit: Duration,
) -> (Collected, String) {
    let out = tokio::time::timeout(limit, run_job(addr, spec, &function("double", None), range))
        .await
        .unwrap_or_else(|_| panic!("job {} did not end within {limit:?}", spec.job_id));
    let end = out.end();
    assert_eq!(end.state, JobState::Failed, "{end:?}");
    let message = end.message.clone().unwrap_or_default();
    (out, message)
}

/// `cloudpickle.dumps` of the test function `name` (see `fns.py`), with an optional arg.
pub fn function(name: &str, arg: Option<&str>) -> Bytes {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fns.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(name);
    if let Some(arg) = arg {
        command.arg(arg);
    }
    let out = command.output().expect("python3");
    assert!(
        out.status.success(),
        "fns.py {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Bytes::from(out.stdout)
}

/// `pickle.dumps(v, 5)` of a small int.
pub fn pickle_int(v: i64) -> Vec<u8> {
    let mut out = vec![0x80, 5];
    match v {
        0..=255 => out.extend_from_slice(&[b'K', v as u8]),
        256..=65535 => {
            out.push(b'M');
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        _ => {
            out.push(b'J');
            out.extend_from_slice(&(v as i32).to_le_bytes());
        }
    }
    out.push(b'.');
    out
}

fn skip_header(p: &[u8]) -> Option<&[u8]> {
    let p = p
        .strip_prefix(&[0x80, 5][..])
        .or_else(|| p.strip_prefix(&[0x80, 4][..]))?;
    Some(match p.first() {
        Some(0x95) => p.get(9..)?,
        _ => p,
    })
}

/// Reads a pickled int (K, M, J or LONG1).
pub fn unpickle_int(p: &[u8]) -> Option<i64> {
    let p = skip_header(p)?;
    Some(match *p.first()? {
        b'K' => i64::from(*p.get(1)?),
        b'M' => i64::from(u16::from_le_bytes([*p.get(1)?, *p.get(2)?])),
        b'J' => i64::from(i32::from_le_bytes(p.get(1..5)?.try_into().ok()?)),
        0x8a => {
            let n = *p.get(1)? as usize;
            let bytes = p.get(2..2 + n)?;
            let mut v: i64 = 0;
            for (i, b) in bytes.iter().enumerate() {
                v |= i64::from(*b) << (8 * i);
            }
            v
        }
        _ => return None,
    })
}

/// Reads a pickled str.
pub fn unpickle_str(p: &[u8]) -> Option<String> {
    let p = skip_header(p)?;
    let (len, rest) = match *p.first()? {
        0x8c => (*p.get(1)? as usize, p.get(2..)?),
        b'X' => (
            u32::from_le_bytes(p.get(1..5)?.try_into().ok()?) as usize,
            p.get(5..)?,
        ),
        _ => return None,
    };
    String::from_utf8(rest.get(..len)?.to_vec()).ok()
}
