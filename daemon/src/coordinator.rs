//! Registration with the coordinator and heartbeats (`docs/protocol.md` §3 "Coordinator"),
//! each carrying the cluster token when one is configured, over HTTPS (verified against
//! `--tls-ca-file` or the system's roots) when the coordinator's URL is `https://`. An unreachable coordinator is
//! retried with backoff for as long as the daemon runs; a 404 to a heartbeat (the coordinator
//! forgot this node) means registering again; a 401 is logged with the coordinator's sentence.
//! When the node drains, a heartbeat saying so goes out at once, heartbeats continue until the
//! last job ended, then the node leaves (`DELETE /v1/nodes/{id}`) and the drain is finished.

use std::sync::Arc;
use std::time::Duration;

use agent_proto::{HeartbeatAnswer, NodeRegistration};
use bytes::Bytes;
use fleetmap_service_tls::{ClientConfig, HttpsConnector};
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
/// Heartbeat interval while draining, so the node leaves soon after its last job ends.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// Why one request to the coordinator failed.
#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Status(StatusCode, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::Status(status, body) if body.is_empty() => write!(f, "answered {status}"),
            Self::Status(status, body) => write!(f, "answered {status}: {body}"),
        }
    }
}

/// How to reach the coordinator: its base URL, the HTTP client and the token header.
struct Link {
    base: String,
    client: HttpClient,
    authorization: Option<String>,
}

/// Registers and heartbeats until `shutdown` is cancelled, or until a drain finished; an
/// `https://` coordinator is verified with `tls` (`None`: against the system's roots).
pub async fn heartbeat(
    daemon: Daemon,
    coordinator: String,
    tls: Option<Arc<ClientConfig>>,
    shutdown: CancellationToken,
) {
    let tls = tls.unwrap_or_else(fleetmap_service_tls::system_client_config);
    let link = Link {
        base: coordinator.trim_end_matches('/').to_string(),
        client: Client::builder(TokioExecutor::new()).build(fleetmap_service_tls::https_connector(
            HttpConnector::new(),
            &tls,
        )),
        authorization: daemon
            .inner()
            .cluster_token
            .as_ref()
            .map(|token| token.header_value().to_owned()),
    };
    let base = link.base.clone();
    let node_id = daemon.inner().node_id.clone();
    let beat_url = format!("{base}/v1/nodes/{node_id}/heartbeat");
    let drain = daemon.inner().drain.clone();
    loop {
        let Some(mut interval) = register(&daemon, &link, &shutdown).await else {
            return;
        };
        info!(coordinator = %base, interval_ms = interval.as_millis() as u64, "registered with the coordinator");
        let mut failing = false;
        loop {
            let draining = drain.is_requested();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                // Tell the coordinator at once, so it stops sending inputs.
                _ = drain.requested(), if !draining => {
                    interval = interval.min(DRAIN_INTERVAL);
                }
                _ = shutdown.cancelled() => return,
            }
            if drain.is_requested() && daemon.inner().registry.live_count() == 0 {
                leave(&link, &node_id).await;
                drain.finish();
                return;
            }
            let info = crate::node::info(&daemon);
            match call(&link, Method::POST, &beat_url, Some(&info)).await {
                Ok(_) => {
                    if failing {
                        info!("heartbeats reach the coordinator again");
                    }
                    failing = false;
                }
                Err(CallError::Status(StatusCode::NOT_FOUND, _)) => {
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

/// Tells the coordinator this drained node leaves the fleet (best effort: a coordinator that
/// cannot be told declares the node dead once its heartbeats stop).
async fn leave(link: &Link, node_id: &str) {
    let url = format!("{}/v1/nodes/{node_id}", link.base);
    match call::<()>(link, Method::DELETE, &url, None).await {
        Ok(_) => info!(coordinator = %link.base, "drained; left the fleet"),
        Err(err) => {
            warn!(coordinator = %link.base, cause = %err, "drained, but could not tell the coordinator; it will see the heartbeats stop")
        }
    }
}

/// Registers until it works; `None` on shutdown.
async fn register(daemon: &Daemon, link: &Link, shutdown: &CancellationToken) -> Option<Duration> {
    let base = &link.base;
    let url = format!("{base}/v1/nodes");
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        let registration = NodeRegistration {
            node_id: daemon.inner().node_id.clone(),
            address: daemon.inner().address.clone(),
            info: crate::node::info(daemon),
        };
        match call(link, Method::POST, &url, Some(&registration)).await {
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
            Err(err @ CallError::Status(StatusCode::UNAUTHORIZED, _)) if attempts == 0 => {
                warn!(coordinator = %base, cause = %err, "the coordinator refused this node's cluster token; give fleetmapd the fleet's --cluster-token-file (retrying)")
            }
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

/// Sends `body` as JSON (or nothing) with the token; the answer's body on a 2xx.
async fn call<T: serde::Serialize>(
    link: &Link,
    method: Method,
    url: &str,
    body: Option<&T>,
) -> Result<Bytes, CallError> {
    let json = body
        .map(|body| serde_json::to_vec(body).unwrap_or_default())
        .unwrap_or_default();
    let mut builder = Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(authorization) = &link.authorization {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    let request = builder
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| CallError::Unreachable(format!("bad coordinator URL {url}: {e}")))?;
    let exchange = async {
        let response = link
            .client
            .request(request)
            .await
            .map_err(|e| CallError::Unreachable(fleetmap_service_tls::error_chain(&e)))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            let message = serde_json::from_slice::<agent_proto::ErrorBody>(&body)
                .map(|body| body.error.message)
                .unwrap_or_default();
            Err(CallError::Status(status, message))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(CallError::Unreachable("timed out".into())))
}
