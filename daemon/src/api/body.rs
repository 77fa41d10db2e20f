//! HTTP bodies: frame streams read from requests, and the response body type, whose data is
//! either a plain buffer (JSON) or a frame sent as its header plus its zero-copy body.

use std::convert::Infallible;
use std::io::IoSlice;

use agent_proto::frame::HEADER_LEN;
use agent_proto::{Frame, FrameDecoder, FrameError};
use bytes::{Buf, Bytes};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use thiserror::Error;

/// The body of every response.
pub type ResponseBody = UnsyncBoxBody<OutBuf, Infallible>;

/// A whole body from one buffer.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(OutBuf::Plain(bytes.into())).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    full(Bytes::new())
}

/// One piece of response data: a plain buffer, or a frame whose 5-byte header is kept inline
/// so that forwarding a worker's frame never copies its body.
#[derive(Debug, Clone)]
pub enum OutBuf {
    /// Bytes sent as they are.
    Plain(Bytes),
    /// A frame: header bytes from `at` on, then the body.
    Frame {
        /// The encoded header.
        header: [u8; HEADER_LEN],
        /// Header bytes already consumed.
        at: usize,
        /// The body.
        body: Bytes,
    },
}

impl OutBuf {
    /// The wire encoding of `frame`, without copying its body.
    pub fn frame(frame: &Frame) -> Self {
        Self::Frame {
            header: frame.header(),
            at: 0,
            body: frame.body.clone(),
        }
    }
}

impl Buf for OutBuf {
    fn remaining(&self) -> usize {
        match self {
            Self::Plain(bytes) => bytes.len(),
            Self::Frame { at, body, .. } => HEADER_LEN - at + body.len(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Self::Plain(bytes) => bytes,
            Self::Frame { header, at, .. } if *at < HEADER_LEN => &header[*at..],
            Self::Frame { body, .. } => body,
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Self::Plain(bytes) => bytes.advance(cnt),
            Self::Frame { at, body, .. } => {
                let from_header = cnt.min(HEADER_LEN - *at);
                *at += from_header;
                body.advance(cnt - from_header);
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            Self::Plain(bytes) if !bytes.is_empty() && !dst.is_empty() => {
                dst[0] = IoSlice::new(bytes);
                1
            }
            Self::Plain(_) => 0,
            Self::Frame { header, at, body } => {
                let mut n = 0;
                if *at < HEADER_LEN && n < dst.len() {
                    dst[n] = IoSlice::new(&header[*at..]);
                    n += 1;
                }
                if !body.is_empty() && n < dst.len() {
                    dst[n] = IoSlice::new(body);
                    n += 1;
                }
                n
            }
        }
    }
}

/// Why a request body is not a frame stream.
#[derive(Debug, Error)]
pub enum BodyError {
    /// The bytes are not valid frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection failed while reading.
    #[error("reading the request body failed: {0}")]
    Http(String),
}

/// Frames read incrementally from a request body.
#[derive(Debug)]
pub struct BodyFrames<B = hyper::body::Incoming> {
    body: B,
    decoder: FrameDecoder,
    ended: bool,
}

impl<B> BodyFrames<B>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
{
    /// Reads `body`, refusing frames larger than `max_frame_bytes`.
    pub fn new(body: B, max_frame_bytes: usize) -> Self {
        Self {
            body,
            decoder: FrameDecoder::new(max_frame_bytes),
            ended: false,
        }
    }

    /// The next frame; `Ok(None)` when the body ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, BodyError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if self.ended {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            self.decoder.extend(chunk);
                            data.advance(n);
                        }
                    }
                }
                Some(Err(err)) => return Err(BodyError::Http(err.to_string())),
                None => self.ended = true,
            }
        }
    }
}

impl<B> BodyFrames<B>
where
    B: Body + Unpin,
{
    /// Reads and discards what is left of the body (at most `DRAIN_BYTES`, for at most
    /// `DRAIN_TIME`) so that an error answer reaches a client that is still sending: closing
    /// a socket with unread input resets the connection and can lose the answer.
    pub async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        let mut seen = 0usize;
        while !self.ended && seen < DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    seen += frame.data_ref().map_or(0, |d| d.remaining());
                }
                Ok(Some(Err(_)) | None) | Err(_) => self.ended = true,
            }
        }
    }
}

/// Most bytes [`BodyFrames::drain`] reads.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Longest [`BodyFrames::drain`] waits.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use agent_proto::FrameKind;

    use super::*;

    #[test]
    fn a_frame_buf_yields_header_then_body_and_advances_across_both() {
        let frame = Frame::new(FrameKind::Results, Bytes::from_static(b"abcdef"));
        let mut buf = OutBuf::frame(&frame);
        assert_eq!(buf.remaining(), 11);
        let mut iov = [IoSlice::new(&[]); 4];
        assert_eq!(buf.chunks_vectored(&mut iov), 2);
        buf.advance(7);
        assert_eq!(buf.chunk(), b"cdef");
        let mut out = Vec::new();
        let mut whole = OutBuf::frame(&frame);
        while whole.has_remaining() {
            let chunk = whole.chunk().to_vec();
            out.extend_from_slice(&chunk);
            whole.advance(chunk.len());
        }
        assert_eq!(Bytes::from(out), frame.encode());
    }

    #[tokio::test]
    async fn frames_are_read_across_body_chunks_and_truncation_is_reported() {
        let mut wire = Frame::new(FrameKind::Function, vec![1u8; 10])
            .encode()
            .to_vec();
        wire.extend_from_slice(&Frame::empty(FrameKind::InputsEnd).encode());
        let mut frames = BodyFrames::new(Full::new(Bytes::from(wire.clone())), 1024);
        assert_eq!(
            frames.next().await.expect("ok").map(|f| f.kind),
            Some(FrameKind::Function)
        );
        assert_eq!(
            frames.next().await.expect("ok").map(|f| f.kind),
            Some(FrameKind::InputsEnd)
        );
        assert!(frames.next().await.expect("clean end").is_none());
        wire.truncate(wire.len() - 2);
        let mut cut = BodyFrames::new(Full::new(Bytes::from(wire)), 1024);
        cut.next().await.expect("first frame");
        assert!(matches!(
            cut.next().await,
            Err(BodyError::Frame(FrameError::Truncated { .. }))
        ));
    }
}
