//! Captured stdout/stderr: the body of `OUTPUT` frames (`index:u64 stream:u8 text`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Frame, FrameError, FrameKind};

/// Which stream the text was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutputStream {
    /// `sys.stdout`.
    Stdout = 1,
    /// `sys.stderr`.
    Stderr = 2,
    /// The node's environment build log (index `NO_INDEX`), shown by clients with
    /// `verbose=True`.
    Build = 3,
}

impl OutputStream {
    /// The stream's name as the HTTP APIs spell it: `stdout`, `stderr` or `build`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Build => "build",
        }
    }

    /// The stream of a wire byte, if it names one.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            3 => Some(Self::Build),
            _ => None,
        }
    }
}

/// A decoded `OUTPUT` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Input the text was printed by (`NO_INDEX` when outside any input).
    pub index: u64,
    /// Stream written to.
    pub stream: OutputStream,
    /// UTF-8 text, kept as bytes: it is only relayed.
    pub text: Bytes,
}

impl Output {
    /// Encodes as an `OUTPUT` frame.
    pub fn to_frame(&self) -> Frame {
        let mut body = BytesMut::with_capacity(9 + self.text.len());
        body.put_u64_le(self.index);
        body.put_u8(self.stream as u8);
        body.put_slice(&self.text);
        Frame::new(FrameKind::Output, body.freeze())
    }

    /// Decodes an `OUTPUT` frame.
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        frame.expect_kind(FrameKind::Output)?;
        let body = &frame.body;
        let malformed = |reason: String| FrameError::Malformed {
            kind: FrameKind::Output,
            reason,
        };
        if body.len() < 9 {
            return Err(malformed(format!("{} bytes is shorter than 9", body.len())));
        }
        let stream = OutputStream::from_u8(body[8])
            .ok_or_else(|| malformed(format!("unknown stream {}", body[8])))?;
        let mut index = [0u8; 8];
        index.copy_from_slice(&body[..8]);
        Ok(Self {
            index: u64::from_le_bytes(index),
            stream,
            text: body.slice(9..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_round_trips() {
        let output = Output {
            index: 42,
            stream: OutputStream::Stderr,
            text: Bytes::from_static("héllo\n".as_bytes()),
        };
        assert_eq!(
            Output::from_frame(&output.to_frame()).expect("valid"),
            output
        );
    }

    #[test]
    fn unknown_stream_is_refused() {
        let mut body = 0u64.to_le_bytes().to_vec();
        body.push(4);
        let err = Output::from_frame(&Frame::new(FrameKind::Output, body)).expect_err("bad");
        assert!(err.to_string().contains("unknown stream 4"), "{err}");
    }
}
