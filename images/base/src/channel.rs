//! A bounded bridge from a blocking writer (the tar walk, on a blocking thread) to the async
//! request body of the import, so the archive is streamed and never held in memory whole.

use std::io::{self, Write};

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use tokio::sync::mpsc;

/// Size of the chunks sent to the request body.
pub const CHUNK: usize = 256 * 1024;

/// Chunks in flight at most: with [`CHUNK`], at most ~2 MiB of archive is buffered.
pub const DEPTH: usize = 8;

/// One chunk of the body, or the error that ends it (aborting the upload).
pub type Item = Result<Bytes, io::Error>;

/// The sending half: a [`Write`] that blocks while the body is [`DEPTH`] chunks behind.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<Item>,
    buf: Vec<u8>,
}

/// A bounded channel: the writer for a blocking thread, and the body stream for the request.
pub fn channel() -> (ChannelWriter, impl Stream<Item = Item> + Send + 'static) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        body,
    )
}

impl ChannelWriter {
    fn send(&mut self, item: Item) -> io::Result<()> {
        self.tx
            .blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload was closed"))
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.send(Ok(Bytes::from(chunk)))
    }

    /// Sends what is buffered; dropping the writer afterwards ends the body.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffer()
    }

    /// A handle that can end the body with an error after the writer itself is gone.
    pub fn aborter(&self) -> Aborter {
        Aborter {
            tx: self.tx.clone(),
        }
    }
}

/// Ends the body with an error, so the receiving side fails instead of taking what was sent
/// so far for the whole archive.
#[derive(Debug)]
pub struct Aborter {
    tx: mpsc::Sender<Item>,
}

impl Aborter {
    /// Sends `err` as the body's last item (from a blocking thread).
    pub fn abort(self, err: &io::Error) {
        // The receiver may be gone already; then there is no one left to tell.
        let _ = self
            .tx
            .blocking_send(Err(io::Error::new(err.kind(), err.to_string())));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn carries_bytes_in_bounded_chunks() {
        let (mut writer, body) = channel();
        let producer = tokio::task::spawn_blocking(move || {
            let data = vec![7u8; CHUNK * 3 + 10];
            writer.write_all(&data)?;
            writer.finish()
        });
        let chunks: Vec<Item> = body.collect().await;
        producer.await.expect("joined").expect("written");
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| c.as_ref().map_or(0, Bytes::len))
            .collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, CHUNK, 10]);
    }

    #[tokio::test]
    async fn abort_ends_the_body_with_an_error() {
        let (mut writer, body) = channel();
        let aborter = writer.aborter();
        let producer = tokio::task::spawn_blocking(move || {
            writer.write_all(b"partial")?;
            drop(writer);
            aborter.abort(&io::Error::other("disk on fire"));
            Ok::<(), io::Error>(())
        });
        let items: Vec<Item> = body.collect().await;
        producer.await.expect("joined").expect("ran");
        let last = items.last().expect("an item");
        assert!(matches!(last, Err(e) if e.to_string() == "disk on fire"));
    }

    #[tokio::test]
    async fn a_dropped_body_stops_the_writer() {
        let (mut writer, body) = channel();
        drop(body);
        let result = tokio::task::spawn_blocking(move || writer.write_all(&vec![0u8; CHUNK * 2]))
            .await
            .expect("joined");
        assert_eq!(
            result.expect_err("closed").kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
