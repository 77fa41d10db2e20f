//! Reads a frame stream from an HTTP body (a client's request, a node's response), frame by
//! frame, with the frame-size limit applied from each header.

use agent_proto::{Frame, FrameDecoder, FrameError};
use bytes::Bytes;
use http_body_util::BodyExt;
use thiserror::Error;

/// Why a frame stream stopped early.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The bytes are not a valid frame sequence.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection failed or the peer went away.
    #[error("{0}")]
    Body(String),
}

/// Incremental frame reader over any body of `Bytes`.
#[derive(Debug)]
pub struct FrameReader<B> {
    body: B,
    decoder: FrameDecoder,
    ended: bool,
}

impl<B> FrameReader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// A reader refusing frames larger than `max_frame_bytes`.
    pub fn new(body: B, max_frame_bytes: usize) -> Self {
        Self {
            body,
            decoder: FrameDecoder::new(max_frame_bytes),
            ended: false,
        }
    }

    /// The next frame; `Ok(None)` when the body ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
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
                    // Trailers carry nothing in this protocol; only data counts.
                    if let Ok(data) = frame.into_data() {
                        self.decoder.extend(&data);
                    }
                }
                Some(Err(err)) => return Err(ReadError::Body(err.to_string())),
                None => self.ended = true,
            }
        }
    }

    /// The next frame among the bytes already received, without waiting for more.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        self.decoder.next_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::FrameKind;
    use http_body_util::Full;

    #[tokio::test]
    async fn reads_frames_then_clean_end() {
        let mut wire = Frame::new(FrameKind::Function, vec![1u8, 2])
            .encode()
            .to_vec();
        wire.extend_from_slice(&Frame::empty(FrameKind::InputsEnd).encode());
        let mut reader = FrameReader::new(Full::new(Bytes::from(wire)), 1024);
        assert_eq!(
            reader.next().await.expect("valid").map(|f| f.kind),
            Some(FrameKind::Function)
        );
        assert_eq!(
            reader.next_buffered().expect("valid").map(|f| f.kind),
            Some(FrameKind::InputsEnd)
        );
        assert!(reader.next().await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let wire = Bytes::from_static(&[0x02, 9, 0, 0, 0, 1]);
        let mut reader = FrameReader::new(Full::new(wire), 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Frame(FrameError::Truncated { .. }))
        ));
    }
}
