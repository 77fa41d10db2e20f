//! A worker's Unix socket as frames: an incremental reader and a vectored, zero-copy writer.

use std::io::IoSlice;

use agent_proto::{Frame, FrameDecoder, FrameError, FrameKind};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Bytes read from a worker socket per `read` call.
const READ_BUF: usize = 64 * 1024;

/// Most slices handed to one `writev`.
const MAX_IOV: usize = 16;

/// Why a worker's socket stopped making sense.
#[derive(Debug, Error)]
pub enum ConnError {
    /// Reading or writing failed.
    #[error("worker socket: {0}")]
    Io(#[from] std::io::Error),
    /// The worker sent bytes that are not valid frames.
    #[error("worker sent a bad frame: {0}")]
    Frame(#[from] FrameError),
}

/// A connected worker socket with the decoder that has buffered what arrived so far.
#[derive(Debug)]
pub struct WorkerConn {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl WorkerConn {
    /// Wraps a freshly accepted socket.
    pub fn new(stream: UnixStream, max_frame_bytes: usize) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max_frame_bytes),
        }
    }

    /// Reads the next frame; `Ok(None)` at a clean end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        let mut buf = vec![0u8; 4096];
        read_frame(&mut self.stream, &mut self.decoder, &mut buf).await
    }

    /// Whether the peer still looks connected: no end of stream or error is pending. An idle
    /// worker sends nothing, so pending bytes are a protocol violation and count as dead.
    pub fn looks_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Splits into a reader and a writer usable from different tasks.
    pub fn split(self) -> (FrameReader, FrameWriter) {
        let (read, write) = self.stream.into_split();
        (
            FrameReader {
                read,
                decoder: self.decoder,
                buf: vec![0u8; READ_BUF],
            },
            FrameWriter { write },
        )
    }
}

/// The reading half of a worker socket.
#[derive(Debug)]
pub struct FrameReader {
    read: OwnedReadHalf,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl FrameReader {
    /// Reads the next frame; `Ok(None)` at a clean end of stream. Cancel-safe: bytes read are
    /// in the decoder before the future can be dropped.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        read_frame(&mut self.read, &mut self.decoder, &mut self.buf).await
    }
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    read: &mut R,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Option<Frame>, ConnError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let n = read.read(buf).await?;
        if n == 0 {
            decoder.finish()?;
            return Ok(None);
        }
        decoder.extend(&buf[..n]);
    }
}

/// The writing half of a worker socket.
#[derive(Debug)]
pub struct FrameWriter {
    write: OwnedWriteHalf,
}

impl FrameWriter {
    /// Writes one whole frame (header and body) with as few syscalls as the socket allows.
    pub async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        let header = frame.header();
        self.send_parts(&[&header, &frame.body]).await
    }

    /// Writes the concatenation of `parts` (which must form whole frames) with vectored
    /// writes, without copying them.
    pub async fn send_parts(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0usize;
        while written < total {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut used = 0;
            let mut skip = written;
            for part in parts {
                if used == MAX_IOV {
                    break;
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                iov[used] = IoSlice::new(&part[skip..]);
                skip = 0;
                used += 1;
            }
            let n = self.write.write_vectored(&iov[..used]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            written += n;
        }
        Ok(())
    }

    /// Sends SHUTDOWN, ignoring a peer that is already gone.
    pub async fn shutdown_worker(&mut self) {
        let _ = self.send(&Frame::empty(FrameKind::Shutdown)).await;
        let _ = self.write.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_a_socket_in_vectored_pieces() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (_ra, mut wa) = WorkerConn::new(a, 1 << 20).split();
        let (mut rb, _wb) = WorkerConn::new(b, 1 << 20).split();
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = tokio::spawn(async move {
            // 20 parts: more than one writev's worth.
            let header = Frame::new(FrameKind::Inputs, vec![0u8; 20 * 5_000]).header();
            let mut parts: Vec<&[u8]> = vec![&header];
            for piece in body.chunks(5_000) {
                parts.push(piece);
            }
            wa.send_parts(&parts).await.expect("write");
            wa.send(&Frame::empty(FrameKind::Shutdown))
                .await
                .expect("write");
            body
        });
        let first = rb.next_frame().await.expect("read").expect("frame");
        let body = writer.await.expect("writer");
        assert_eq!(first.kind, FrameKind::Inputs);
        assert_eq!(&first.body[..], &body[..]);
        let second = rb.next_frame().await.expect("read").expect("frame");
        assert_eq!(second.kind, FrameKind::Shutdown);
    }

    #[tokio::test]
    async fn a_closed_peer_reads_as_end_and_looks_dead() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let conn = WorkerConn::new(a, 1024);
        assert!(conn.looks_alive());
        drop(b);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!conn.looks_alive());
        let (mut reader, _w) = conn.split();
        assert!(reader.next_frame().await.expect("clean end").is_none());
    }
}
