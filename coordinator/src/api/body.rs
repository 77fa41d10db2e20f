//! The one HTTP body type the coordinator sends, as a server and as a client of the nodes: a
//! whole buffer, or a frame stream fed by a channel (frames go out without re-encoding: small
//! ones as one buffer, large ones as header then the body they arrived in).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use agent_proto::{Frame, FRAMES_CONTENT_TYPE};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::SizeHint;
use tokio::sync::mpsc;

/// Frames up to this size are sent as one buffer (header copied in front of the body); larger
/// ones as two buffers so their body is never copied.
const COPY_BELOW: usize = 8 * 1024;

/// Where a frame stream's frames come from.
#[derive(Debug)]
enum Source {
    /// Backpressured: the producer waits when the consumer is slow (client result streams).
    Bounded(mpsc::Receiver<Frame>),
    /// Bounded by the producer's own credit accounting (node input streams), so that the job
    /// task never waits on one node while others need it.
    Unbounded(mpsc::UnboundedReceiver<Frame>),
}

/// A streaming body of frames; ends when every sender is dropped.
#[derive(Debug)]
pub struct FrameBody {
    source: Source,
    /// Body of a large frame whose header was just yielded.
    pending: Option<Bytes>,
}

impl FrameBody {
    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        match &mut self.source {
            Source::Bounded(rx) => rx.poll_recv(cx),
            Source::Unbounded(rx) => rx.poll_recv(cx),
        }
    }
}

/// What the coordinator sends.
#[derive(Debug)]
pub enum Body {
    /// A whole buffer (`None` once sent, or for an empty body).
    Full(Option<Bytes>),
    /// A frame stream.
    Frames(FrameBody),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Self::Full(None)
        } else {
            Self::Full(Some(bytes))
        }
    }

    /// A frame stream fed by a bounded channel.
    pub fn frames(rx: mpsc::Receiver<Frame>) -> Self {
        Self::Frames(FrameBody {
            source: Source::Bounded(rx),
            pending: None,
        })
    }

    /// A frame stream fed by an unbounded channel (the sender bounds what it queues).
    pub fn frames_unbounded(rx: mpsc::UnboundedReceiver<Frame>) -> Self {
        Self::Frames(FrameBody {
            source: Source::Unbounded(rx),
            pending: None,
        })
    }

    /// A JSON answer with `status`.
    pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
        // Serializing the plain data types of this crate and agent-proto cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let mut response = Response::new(Body::full(bytes));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// An empty answer with `status` (204, 202).
    pub fn status_response(status: StatusCode) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        response
    }

    /// A 200 answer streaming the frames sent into `rx`.
    pub fn frames_response(rx: mpsc::Receiver<Frame>) -> Response<Body> {
        let mut response = Response::new(Body::frames(rx));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(FRAMES_CONTENT_TYPE),
        );
        response
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b)))),
            Body::Frames(stream) => {
                if let Some(body) = stream.pending.take() {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(body))));
                }
                match stream.poll_next_frame(cx) {
                    Poll::Ready(Some(frame)) => {
                        let data = if frame.body.len() < COPY_BELOW {
                            frame.encode()
                        } else {
                            let header = Bytes::copy_from_slice(&frame.header());
                            stream.pending = Some(frame.body);
                            header
                        };
                        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Frames(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{FrameDecoder, FrameKind};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_arrive_intact_small_and_large() {
        let (tx, rx) = mpsc::channel(4);
        let small = Frame::new(FrameKind::Results, vec![1u8; 10]);
        let large = Frame::new(FrameKind::Results, vec![2u8; 100_000]);
        tx.send(small.clone()).await.expect("open");
        tx.send(large.clone()).await.expect("open");
        drop(tx);
        let bytes = Body::frames(rx)
            .collect()
            .await
            .expect("infallible")
            .to_bytes();
        let mut decoder = FrameDecoder::default();
        decoder.extend(&bytes);
        assert_eq!(decoder.next_frame().expect("valid"), Some(small));
        assert_eq!(decoder.next_frame().expect("valid"), Some(large));
        decoder.finish().expect("nothing left");
    }
}
