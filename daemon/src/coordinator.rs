//! Registration with the coordinator and heartbeats (`docs/protocol.md` §3 "Coordinator").
//! An unreachable coordinator is retried with backoff for as long as the daemon runs; a 404
//! to a heartbeat (the coordinator forgot this node) means registering again.

use std::time::Duration;

use agent_proto::{HeartbeatAnswer, NodeRegistration};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::Daemon;

/// Longest one request to the coordinator may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval accepted from a coordinator.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Largest coordinator answer read.
const MAX_ANSWER: usize = 64 * 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Why one request to the coordinator failed.
#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Status(StatusCode),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::Status(status) => write!(f, "answered {status}"),
        }
    }
}

/// Registers and heartbeats until `shutdown` is cancelled.
pub async fn heartbeat(daemon: Daemon, coordinator: String, shutdown: CancellationToken) {
    let base = coordinator.trim_end_matches('/').to_string();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let node_id = daemon.inner().node_id.clone();
    let beat_url = format!("{base}/v1/nodes/{node_id}/heartbeat");
    loop {
        let Some(interval) = register(&daemon, &client, &base, &shutdown).await else {
            return;
        };
        info!(coordinator = %base, interval_ms = interval.as_millis() as u64, "registered with the coordinator");
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let info = crate::node::info(&daemon);
            match call(&client, &beat_url, &info).await {
                Ok(_) => {
                    if failing {
                        info!("heartbeats reach the coordinator again");
                    }
                    failing = false;
                }
                Err(CallError::Status(StatusCode::NOT_FOUND)) => {
                    info!("the coordinator does not know this node; registering again");
                    break;
                }
                Err(err) => {
                    if !failing {
                        warn!(coordinator = %base, cause = %err, "heartbeat failed; retrying");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// Registers until it works; `None` on shutdown.
async fn register(
    daemon: &Daemon,
    client: &HttpClient,
    base: &str,
    shutdown: &CancellationToken,
) -> Option<Duration> {
    let url = format!("{base}/v1/nodes");
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        let registration = NodeRegistration {
            node_id: daemon.inner().node_id.clone(),
            address: daemon.inner().address.clone(),
            info: crate::node::info(daemon),
        };
        match call(client, &url, &registration).await {
            Ok(body) => match serde_json::from_slice::<HeartbeatAnswer>(&body) {
                Ok(answer) => {
                    return Some(
                        Duration::from_millis(answer.heartbeat_interval_ms).max(MIN_INTERVAL),
                    )
                }
                Err(err) => {
                    warn!(cause = %err, "the coordinator's registration answer is not valid")
                }
            },
            Err(err) if attempts == 0 => {
                warn!(coordinator = %base, cause = %err, "cannot register with the coordinator; retrying with backoff")
            }
            Err(err) => debug!(cause = %err, attempts, "registration failed again"),
        }
        attempts += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// POSTs `body` as JSON; the answer's body on a 2xx.
async fn call<T: serde::Serialize>(
    client: &HttpClient,
    url: &str,
    body: &T,
) -> Result<Bytes, CallError> {
    let json = serde_json::to_vec(body).unwrap_or_default();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| CallError::Unreachable(format!("bad coordinator URL {url}: {e}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(CallError::Status(status))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(CallError::Unreachable("timed out".into())))
}
