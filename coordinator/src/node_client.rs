//! HTTP/1.1 client to the node daemons: one pool of keep-alive connections shared by every job,
//! streaming request bodies (inputs go out while results come back on the same request) and
//! the cancel call. Nodes advertising `https://` are verified against `--tls-ca-file`, or the
//! system's roots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::{ClusterToken, Frame, FRAMES_CONTENT_TYPE};
use fleetmap_service_tls::{ClientConfig, HttpsConnector};
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::api::body::Body;

/// Why a call to a node failed.
#[derive(Debug, Error)]
pub enum NodeCallError {
    /// The URL built from the node's address is invalid.
    #[error("invalid node URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection could not be made or broke.
    #[error("{0}")]
    Connection(String),
    /// The node did not answer in time.
    #[error("the node did not answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with an error status.
    #[error("the node answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body, as text.
        body: String,
    },
}

/// The answer to a request whose body is still streaming.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, NodeCallError>> + Send>>;

/// Cheap cloneable client (the pool is shared by clones).
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: Client<HttpsConnector, Body>,
    /// `Authorization` value sent on every call (the cluster token), if one is configured.
    authorization: Option<HeaderValue>,
}

impl NodeClient {
    /// A client with keep-alive pooling and no Nagle delay (single-input jobs are latency-bound),
    /// sending `token` on every call when given; `https://` nodes are verified with `tls`
    /// (`None`: against the system's roots).
    pub fn new(token: Option<ClusterToken>, tls: Option<Arc<ClientConfig>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let tls = tls.unwrap_or_else(fleetmap_service_tls::system_client_config);
        let connector = fleetmap_service_tls::https_connector(connector, &tls);
        let http = Client::builder(TokioExecutor::new())
            // Below hyper servers' 30 s idle (header read) timeout, so the pool does not hand
            // out a connection the daemon is about to close.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(256)
            .build(connector);
        // A validated token is visible ASCII, always a valid header value.
        let authorization = token.and_then(|token| {
            let mut value = HeaderValue::from_str(token.header_value()).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self {
            http,
            authorization,
        }
    }

    /// Opens `POST {address}/v1/jobs` with a body streamed from the returned sender; the
    /// response (status, then frames) arrives while the body is still being written.
    pub fn open_job(
        &self,
        address: &str,
    ) -> Result<(mpsc::UnboundedSender<Frame>, ResponseFuture), NodeCallError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let request = self.build(
            Method::POST,
            &format!("{address}/v1/jobs"),
            Body::frames_unbounded(rx),
        )?;
        let response = self.http.request(request);
        Ok((
            tx,
            Box::pin(async move {
                response.await.map_err(|err| {
                    NodeCallError::Connection(fleetmap_service_tls::error_chain(&err))
                })
            }),
        ))
    }

    /// `POST {address}/v1/jobs/{job_id}/release?max_items=N`: the node gives back up to `max`
    /// queued (never started) inputs; their indices, answered within `timeout`.
    pub async fn release_inputs(
        &self,
        address: &str,
        job_id: &str,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<u64>, NodeCallError> {
        #[derive(serde::Deserialize)]
        struct Released {
            indices: Vec<u64>,
        }
        let request = self.build(
            Method::POST,
            &format!("{address}/v1/jobs/{job_id}/release?max_items={max}"),
            Body::empty(),
        )?;
        let call = async {
            let response = self.http.request(request).await.map_err(|err| {
                NodeCallError::Connection(fleetmap_service_tls::error_chain(&err))
            })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), 64 << 20)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|err| NodeCallError::Connection(err.to_string()))?;
            if !status.is_success() {
                return Err(NodeCallError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            serde_json::from_slice::<Released>(&body)
                .map(|released| released.indices)
                .map_err(|err| NodeCallError::Status {
                    status: status.as_u16(),
                    body: format!("not a release answer: {err}"),
                })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| NodeCallError::Timeout(timeout))?
    }

    /// `DELETE {address}/v1/jobs/{job_id}`, answered within `timeout`.
    pub async fn cancel_job(
        &self,
        address: &str,
        job_id: &str,
        timeout: Duration,
    ) -> Result<(), NodeCallError> {
        let request = self.build(
            Method::DELETE,
            &format!("{address}/v1/jobs/{job_id}"),
            Body::empty(),
        )?;
        let call = async {
            let response = self.http.request(request).await.map_err(|err| {
                NodeCallError::Connection(fleetmap_service_tls::error_chain(&err))
            })?;
            let status = response.status();
            // Reading the body to its end puts the connection back in the pool.
            let body = response
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            // 404: the job already ended there (its stream ended first); nothing to cancel.
            if status.is_success() || status.as_u16() == 404 {
                Ok(())
            } else {
                Err(NodeCallError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| NodeCallError::Timeout(timeout))?
    }

    fn build(&self, method: Method, url: &str, body: Body) -> Result<Request<Body>, NodeCallError> {
        let mut request = build(method, url, body)?;
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

fn build(method: Method, url: &str, body: Body) -> Result<Request<Body>, NodeCallError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|err: http::uri::InvalidUri| NodeCallError::Url {
            url: url.to_owned(),
            reason: err.to_string(),
        })?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FRAMES_CONTENT_TYPE),
    );
    Ok(request)
}
