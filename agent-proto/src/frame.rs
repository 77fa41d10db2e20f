//! The data-plane frame: `kind:u8 len:u32-LE body[len]`, with an incremental decoder.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Length of a frame header: one kind byte and a little-endian `u32` body length.
pub const HEADER_LEN: usize = 5;

/// Largest frame body a receiver accepts unless configured otherwise (64 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// What a frame carries; the numeric values are the wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON `JobSpec`: first frame of a job submission.
    Spec = 0x01,
    /// Opaque cloudpickled function.
    Function = 0x02,
    /// Item batch of pickled inputs.
    Inputs = 0x03,
    /// No more inputs for this job; empty body.
    InputsEnd = 0x04,
    /// Item batch of pickled return values.
    Results = 0x10,
    /// One input's failure: index, JSON `FailureInfo`, pickled exception.
    Failure = 0x11,
    /// Captured stdout/stderr text tagged with an input index.
    Output = 0x12,
    /// JSON `JobProgress`, periodic.
    Status = 0x13,
    /// JSON `JobEnd`, the last frame of a result stream.
    End = 0x14,
    /// JSON `WorkerHello`, the first frame a worker sends.
    Hello = 0x20,
    /// JSON `Assignment`, followed by a `Function` frame.
    Assign = 0x21,
    /// JSON `WorkerReady`: the function is loaded.
    Ready = 0x22,
    /// Asks a worker to exit cleanly; empty body.
    Shutdown = 0x23,
}

impl FrameKind {
    /// Decodes a kind byte, `None` when the byte names no kind.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::Spec,
            0x02 => Self::Function,
            0x03 => Self::Inputs,
            0x04 => Self::InputsEnd,
            0x10 => Self::Results,
            0x11 => Self::Failure,
            0x12 => Self::Output,
            0x13 => Self::Status,
            0x14 => Self::End,
            0x20 => Self::Hello,
            0x21 => Self::Assign,
            0x22 => Self::Ready,
            0x23 => Self::Shutdown,
            _ => return None,
        })
    }

    /// Human-readable name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Spec => "SPEC",
            Self::Function => "FUNCTION",
            Self::Inputs => "INPUTS",
            Self::InputsEnd => "INPUTS_END",
            Self::Results => "RESULTS",
            Self::Failure => "FAILURE",
            Self::Output => "OUTPUT",
            Self::Status => "STATUS",
            Self::End => "END",
            Self::Hello => "HELLO",
            Self::Assign => "ASSIGN",
            Self::Ready => "READY",
            Self::Shutdown => "SHUTDOWN",
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header names a kind this version does not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The header announces a body larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes buffered when the stream ended.
        buffered: usize,
    },
    /// A frame arrived that the conversation does not allow at this point.
    #[error("unexpected {got} frame: expected {expected}")]
    Unexpected {
        /// What arrived.
        got: FrameKind,
        /// What the receiver was waiting for.
        expected: &'static str,
    },
    /// A frame body is not what its kind requires.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Kind of the offending frame.
        kind: FrameKind,
        /// What is wrong with it.
        reason: String,
    },
}

/// One frame: a kind and its body bytes (cheaply cloneable, zero-copy slices of the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body holds.
    pub kind: FrameKind,
    /// The body, without the header.
    pub body: Bytes,
}

impl Frame {
    /// A frame with the given body.
    pub fn new(kind: FrameKind, body: impl Into<Bytes>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }

    /// A frame with an empty body (`InputsEnd`, `Shutdown`).
    pub fn empty(kind: FrameKind) -> Self {
        Self {
            kind,
            body: Bytes::new(),
        }
    }

    /// A frame whose body is `value` serialized as JSON.
    pub fn json<T: serde::Serialize>(kind: FrameKind, value: &T) -> Self {
        // Serializing these plain data types cannot fail: they hold no maps with non-string
        // keys and no custom serializers that error.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self::new(kind, body)
    }

    /// Parses the body as JSON of type `T`.
    pub fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.body).map_err(|e| FrameError::Malformed {
            kind: self.kind,
            reason: e.to_string(),
        })
    }

    /// Fails with `Unexpected` unless the frame is of kind `want`.
    pub fn expect_kind(&self, want: FrameKind) -> Result<&Self, FrameError> {
        if self.kind == want {
            Ok(self)
        } else {
            Err(FrameError::Unexpected {
                got: self.kind,
                expected: want.name(),
            })
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u8(self.kind as u8);
        dst.put_u32_le(body_len_u32(self.body.len()));
        dst.put_slice(&self.body);
    }

    /// The encoded frame as one buffer.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }

    /// Just the 5-byte header, for writers that send header and body separately (no copy).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let len = body_len_u32(self.body.len()).to_le_bytes();
        [self.kind as u8, len[0], len[1], len[2], len[3]]
    }
}

/// Bodies above 4 GiB cannot be framed; every sender limits bodies far below that, so
/// saturating here only guards against a logic error elsewhere turning into a wrap-around.
fn body_len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Incremental decoder: feed it bytes as they arrive, take out complete frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// The header is checked as soon as it is complete, so an oversized or unknown frame is
    /// refused before its body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind_byte = self.buf[0];
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::FrameTooLarge {
                len,
                limit: self.max_frame_bytes,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Frame { kind, body }))
    }

    /// Call when the stream has ended: fails if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_byte() {
        for byte in 0..=u8::MAX {
            if let Some(kind) = FrameKind::from_u8(byte) {
                assert_eq!(kind as u8, byte);
            }
        }
        assert_eq!(FrameKind::from_u8(0x14), Some(FrameKind::End));
        assert_eq!(FrameKind::from_u8(0x00), None);
    }

    #[test]
    fn frames_round_trip_when_fed_one_byte_at_a_time() {
        let frames = vec![
            Frame::new(FrameKind::Function, vec![1u8, 2, 3]),
            Frame::empty(FrameKind::InputsEnd),
            Frame::new(FrameKind::Results, vec![9u8; 1000]),
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode_into(&mut wire);
        }
        let mut decoder = FrameDecoder::new(4096);
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            decoder.extend(&[*byte]);
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                decoded.push(frame);
            }
        }
        decoder.finish().expect("nothing left over");
        assert_eq!(decoded, frames);
    }

    #[test]
    fn header_matches_encoding() {
        let frame = Frame::new(FrameKind::Output, vec![7u8; 300]);
        assert_eq!(&frame.encode()[..HEADER_LEN], &frame.header());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut decoder = FrameDecoder::new(10);
        decoder.extend(&[0x03, 11, 0, 0, 0]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::FrameTooLarge { len: 11, limit: 10 })
        );
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&[0x7f, 0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Err(FrameError::UnknownKind(0x7f)));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&[0x02, 4, 0, 0, 0, 1, 2]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated { buffered: 7 }));
    }

    #[test]
    fn expect_kind_names_both_kinds() {
        let frame = Frame::empty(FrameKind::InputsEnd);
        let err = frame.expect_kind(FrameKind::Spec).expect_err("wrong kind");
        assert_eq!(
            err.to_string(),
            "unexpected INPUTS_END frame: expected SPEC"
        );
    }
}
