//! A small HTTP/1.1 client for the tests: JSON calls, and job submissions whose request body is
//! streamed from a channel while the result stream is read; `https://` URLs are verified
//! against a given CA file, or the system's roots.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use agent_proto::{Frame, FrameDecoder, FrameKind};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use fleetmap_service_tls::HttpsConnector;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// A request body fed by a channel of byte chunks; ends when the sender is dropped.
#[derive(Debug)]
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

/// The sending side of a streamed request body.
#[derive(Debug, Clone)]
pub struct BodySender(mpsc::Sender<Bytes>);

impl BodySender {
    /// Sends one frame.
    pub async fn frame(&self, frame: &Frame) -> Result<()> {
        self.0
            .send(frame.encode())
            .await
            .map_err(|_| anyhow::anyhow!("the request body was dropped"))
    }
}

/// A body channel: the sender for the test, the body for the request.
pub fn body_channel() -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(64);
    (BodySender(tx), ChannelBody(rx))
}

/// The test's HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpsConnector, ChannelBody>,
    /// `Authorization` value sent on every request (a cluster token), if any.
    authorization: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A pooled client (`https://` verified against the system's roots).
    pub fn new() -> Self {
        Self::with_tls(&fleetmap_service_tls::system_client_config())
    }

    /// A pooled client that verifies `https://` servers against the CA certificates in `ca`.
    pub fn trusting(ca: &Path) -> Result<Self> {
        let tls = fleetmap_service_tls::client_config(Some(ca))?;
        Ok(Self::with_tls(&tls))
    }

    fn with_tls(tls: &fleetmap_service_tls::ClientConfig) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(
                fleetmap_service_tls::https_connector(HttpConnector::new(), tls),
            ),
            authorization: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` on every request.
    pub fn token(self, token: &str) -> Self {
        Self {
            authorization: Some(format!("Bearer {token}")),
            ..self
        }
    }

    /// A pooled client sending `Authorization: Bearer <token>` on every request.
    pub fn with_token(token: &str) -> Self {
        Self {
            authorization: Some(format!("Bearer {token}")),
            ..Self::new()
        }
    }

    /// Sends a request with a streamed body; answers status and the response body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: ChannelBody,
    ) -> Result<http::Response<Incoming>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(http::header::CONTENT_TYPE, agent_proto::FRAMES_CONTENT_TYPE);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, authorization);
        }
        let request = builder.body(body)?;
        tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .with_context(|| format!("{method} {url} got no answer in 30 s"))?
            .with_context(|| format!("{method} {url} failed"))
    }

    /// Sends `body` whole and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let (tx, rx) = body_channel();
        if !body.is_empty() {
            tx.0.send(body).await.ok();
        }
        drop(tx);
        let response = self.request(method, url, rx).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `GET url` as JSON.
    pub async fn get_json(&self, url: &str) -> Result<(StatusCode, serde_json::Value)> {
        let (status, body) = self.call(Method::GET, url, Bytes::new()).await?;
        let value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {url} answered non-JSON: {body:?}"))?;
        Ok((status, value))
    }

    /// `DELETE url` as JSON.
    pub async fn delete_json(&self, url: &str) -> Result<(StatusCode, serde_json::Value)> {
        let (status, body) = self.call(Method::DELETE, url, Bytes::new()).await?;
        let value = serde_json::from_slice(&body)
            .with_context(|| format!("DELETE {url} answered non-JSON: {body:?}"))?;
        Ok((status, value))
    }

    /// Starts `POST {coordinator}/v1/jobs` with a streamed body; the caller sends frames through
    /// the returned sender (and drops it to end the body) while reading the result stream.
    pub async fn submit(
        &self,
        coordinator: &str,
        first: &[Frame],
    ) -> Result<(BodySender, ResultStream)> {
        let (tx, body) = body_channel();
        // One chunk, so it fits the channel before the request starts consuming it.
        let mut chunk = bytes::BytesMut::new();
        for frame in first {
            frame.encode_into(&mut chunk);
        }
        tx.0.send(chunk.freeze()).await.ok();
        let response = self
            .request(Method::POST, &format!("{coordinator}/v1/jobs"), body)
            .await?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let text = response.into_body().collect().await?.to_bytes();
            bail!(
                "submission answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        Ok((tx, ResultStream::new(response.into_body())))
    }
}

/// A result stream being read frame by frame.
#[derive(Debug)]
pub struct ResultStream {
    body: Incoming,
    decoder: FrameDecoder,
    ended: bool,
}

impl ResultStream {
    /// Reads frames from a response body.
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            decoder: FrameDecoder::default(),
            ended: false,
        }
    }

    /// The next frame; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if self.ended {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.body.frame().await {
                Some(chunk) => {
                    if let Ok(data) = chunk?.into_data() {
                        self.decoder.extend(&data);
                    }
                }
                None => self.ended = true,
            }
        }
    }

    /// Reads until END (which it returns with every frame before it), within `timeout`.
    pub async fn until_end(&mut self, timeout: Duration) -> Result<Vec<Frame>> {
        let mut frames = Vec::new();
        let reading = async {
            while let Some(frame) = self.next().await? {
                let end = frame.kind == FrameKind::End;
                frames.push(frame);
                if end {
                    return Ok::<_, anyhow::Error>(());
                }
            }
            bail!("the result stream ended without END")
        };
        tokio::time::timeout(timeout, reading)
            .await
            .with_context(|| format!("no END within {timeout:?}"))??;
        Ok(frames)
    }
}
