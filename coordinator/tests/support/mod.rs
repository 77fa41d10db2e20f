//! Black-box test support: a coordinator started with `run` on 127.0.0.1:0 in this process, and
//! a small HTTP client speaking JSON and frames to it.

#![allow(dead_code)]

use std::time::Duration;

use agent_proto::{Frame, FrameDecoder, FrameKind, JobSpec, NodeInfo, NodeRegistration, PoolInfo};
use bytes::Bytes;
use fleetmap_coordinator::{run, Config};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running coordinator; dropping it leaves the task to the test runtime's end.
pub struct TestCoordinator {
    /// Base URL.
    pub url: String,
    /// Keeps the database directory alive.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status and whole body.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.body))
    }

    /// The ErrorBody message.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an ErrorBody: {:?}", self.body))
            .to_owned()
    }

    /// The ErrorBody code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an ErrorBody: {:?}", self.body))
            .to_owned()
    }
}

impl TestCoordinator {
    /// Starts a coordinator with `tweak` applied to the default config.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().join("jobs.db"));
        config.node_wait = Duration::from_millis(300);
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("coordinator runs");
        });
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Self {
            url,
            dir,
            stop: Some(stop),
            task: Some(task),
            client,
        }
    }

    /// Shuts the coordinator down and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("shuts down in time")
                .expect("no panic");
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
        self.send_authorized(method, path, body, None).await
    }

    /// Sends a request with an `Authorization` header value (if any) and reads the answer.
    pub async fn send_authorized(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        authorization: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("answer in time")
            .expect("connects");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer { status, body }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Answer {
        let body = serde_json::to_vec(value).expect("serializes");
        self.send(Method::POST, path, body).await
    }

    /// Registers a node with the given capacity at `address`.
    pub async fn register(&self, node_id: &str, address: &str, cpus: u32, ram_gb: u64) -> Answer {
        self.post_json("/v1/nodes", &registration(node_id, address, cpus, ram_gb))
            .await
    }
}

/// A registration of a node with `cpus` and `ram_gb`, all free.
pub fn registration(node_id: &str, address: &str, cpus: u32, ram_gb: u64) -> NodeRegistration {
    NodeRegistration {
        node_id: node_id.into(),
        address: address.into(),
        info: node_info(node_id, address, cpus, ram_gb),
    }
}

/// NodeInfo of an idle node.
pub fn node_info(node_id: &str, address: &str, cpus: u32, ram_gb: u64) -> NodeInfo {
    NodeInfo {
        node_id: node_id.into(),
        version: "0.1.0".into(),
        hostname: "test".into(),
        address: address.into(),
        runtime: "process".into(),
        python_version: "3.11.7".into(),
        cgroup: "v1".into(),
        cpus,
        ram_bytes: ram_gb << 30,
        free_cpus: cpus,
        free_ram_bytes: ram_gb << 30,
        instances: 0,
        jobs: 0,
        pool: PoolInfo { idle: 2, target: 2 },
        gpus: vec![],
        draining: false,
        environments: Vec::new(),
    }
}

/// A job submission body: SPEC, FUNCTION, one INPUTS batch, INPUTS_END.
pub fn submission(spec: &JobSpec) -> Bytes {
    let mut wire = Vec::new();
    wire.extend_from_slice(&Frame::json(FrameKind::Spec, spec).encode());
    wire.extend_from_slice(&Frame::new(FrameKind::Function, &b"fn"[..]).encode());
    let batch = agent_proto::ItemBatch::new(vec![agent_proto::Item::new(0, &b"in"[..])]);
    wire.extend_from_slice(&batch.into_frame(FrameKind::Inputs).encode());
    wire.extend_from_slice(&Frame::empty(FrameKind::InputsEnd).encode());
    Bytes::from(wire)
}

/// Decodes a whole frame-stream body.
pub fn frames(body: &Bytes) -> Vec<Frame> {
    let mut decoder = FrameDecoder::default();
    decoder.extend(body);
    let mut out = Vec::new();
    while let Some(frame) = decoder.next_frame().expect("valid frames") {
        out.push(frame);
    }
    decoder.finish().expect("whole frames");
    out
}
