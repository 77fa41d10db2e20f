//! A job's result stream: a bounded channel of frames that becomes the streaming body of the
//! `POST /v1/jobs` answer. A full channel makes instances wait (the client reads slowly); a
//! dropped receiver means the client went away.

use std::convert::Infallible;

use agent_proto::{Frame, FrameKind};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use crate::api::body::{OutBuf, ResponseBody};

/// The sending side, shared by the job's supervisor and instances.
#[derive(Debug, Clone)]
pub struct ResultSink {
    tx: mpsc::Sender<OutBuf>,
}

impl ResultSink {
    /// A sink buffering at most `frames` frames, and the response body that drains it.
    pub fn channel(frames: usize) -> (Self, ResponseBody) {
        let (tx, mut rx) = mpsc::channel::<OutBuf>(frames.max(1));
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|buf| Ok::<_, Infallible>(http_body::Frame::data(buf)));
        (Self { tx }, StreamBody::new(stream).boxed_unsync())
    }

    /// Sends a frame, waiting for room; `false` if the client is gone.
    pub async fn send(&self, frame: &Frame) -> bool {
        self.tx.send(OutBuf::frame(frame)).await.is_ok()
    }

    /// Sends a frame if there is room now (for STATUS, which the next one supersedes).
    pub fn try_send(&self, frame: &Frame) -> bool {
        self.tx.try_send(OutBuf::frame(frame)).is_ok()
    }

    /// Resolves when the client has dropped the stream.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Sends the JSON frame `kind` with `value`.
    pub async fn send_json<T: serde::Serialize>(&self, kind: FrameKind, value: &T) -> bool {
        self.send(&Frame::json(kind, value)).await
    }
}

#[cfg(test)]
mod tests {
    use agent_proto::FrameDecoder;
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn frames_come_out_of_the_body_in_order() {
        let (sink, body) = ResultSink::channel(4);
        assert!(
            sink.send(&Frame::new(FrameKind::Results, vec![1u8, 2]))
                .await
        );
        assert!(sink.try_send(&Frame::empty(FrameKind::Status)));
        drop(sink);
        let bytes: Bytes = body.collect().await.expect("infallible").to_bytes();
        let mut decoder = FrameDecoder::default();
        decoder.extend(&bytes);
        let first = decoder.next_frame().expect("ok").expect("frame");
        assert_eq!(
            (first.kind, &first.body[..]),
            (FrameKind::Results, &[1u8, 2][..])
        );
        let second = decoder.next_frame().expect("ok").expect("frame");
        assert_eq!(second.kind, FrameKind::Status);
    }

    #[tokio::test]
    async fn a_dropped_body_closes_the_sink() {
        let (sink, body) = ResultSink::channel(1);
        drop(body);
        sink.closed().await;
        assert!(!sink.send(&Frame::empty(FrameKind::End)).await);
    }
}
