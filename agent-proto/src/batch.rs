//! Item batches: the body of `INPUTS` and `RESULTS` frames.
//!
//! Layout: `count:u32 indices:u64[count] lengths:u32[count] payloads`, little-endian, with the
//! body length equal to exactly `4 + 12*count + sum(lengths)`.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::frame::{Frame, FrameKind};

/// Most items one batch may hold; keeps the index tables of a hostile frame small.
pub const MAX_ITEMS_PER_BATCH: usize = 1 << 20;

/// Why a body is not a valid item batch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    /// The body is shorter than its count and tables need.
    #[error("item batch of {len} bytes is too short for {count} items")]
    TooShort {
        /// Body length.
        len: usize,
        /// Item count announced.
        count: usize,
    },
    /// More items than any batch may hold.
    #[error("item batch announces {0} items, more than the limit of {MAX_ITEMS_PER_BATCH}")]
    TooManyItems(usize),
    /// The payload lengths do not add up to the body.
    #[error("item batch payload lengths add up to {declared} bytes but {present} bytes follow")]
    LengthMismatch {
        /// Sum of the announced lengths.
        declared: u64,
        /// Bytes actually present after the tables.
        present: usize,
    },
}

/// One input or result: its global index and its opaque pickled bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Position of the input in the job's input sequence.
    pub index: u64,
    /// Opaque pickled payload (a zero-copy slice of the frame it came in).
    pub payload: Bytes,
}

impl Item {
    /// An item holding `payload` for input `index`.
    pub fn new(index: u64, payload: impl Into<Bytes>) -> Self {
        Self {
            index,
            payload: payload.into(),
        }
    }
}

/// A decoded batch of items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemBatch {
    /// The items, in the order they were sent.
    pub items: Vec<Item>,
}

impl ItemBatch {
    /// A batch holding `items`.
    pub fn new(items: Vec<Item>) -> Self {
        Self { items }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Total payload bytes (what the batch costs in memory, tables aside).
    pub fn payload_bytes(&self) -> usize {
        self.items.iter().map(|item| item.payload.len()).sum()
    }

    /// Decodes a batch body; the payloads are zero-copy slices of `body`.
    pub fn decode(body: &Bytes) -> Result<Self, BatchError> {
        Ok(Self {
            items: BatchView::parse(body.clone())?.items().collect(),
        })
    }

    /// Decodes the body of an `INPUTS` or `RESULTS` frame, naming the frame on error.
    pub fn from_frame(frame: &Frame) -> Result<Self, crate::FrameError> {
        Self::decode(&frame.body).map_err(|e| crate::FrameError::Malformed {
            kind: frame.kind,
            reason: e.to_string(),
        })
    }

    /// Encodes the batch body.
    pub fn encode(&self) -> Bytes {
        encode_items(&self.items)
    }

    /// A frame of `kind` (`Inputs` or `Results`) carrying this batch.
    pub fn into_frame(&self, kind: FrameKind) -> Frame {
        Frame::new(kind, self.encode())
    }
}

/// Checks an item batch body without allocating; returns its item count.
pub fn validate(body: &[u8]) -> Result<usize, BatchError> {
    let len = body.len();
    if len < 4 {
        return Err(BatchError::TooShort { len, count: 0 });
    }
    let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if count > MAX_ITEMS_PER_BATCH {
        return Err(BatchError::TooManyItems(count));
    }
    let tables_end = 4 + count * 12;
    if len < tables_end {
        return Err(BatchError::TooShort { len, count });
    }
    let declared: u64 = body[4 + count * 8..tables_end]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .sum();
    let present = len - tables_end;
    if declared != present as u64 {
        return Err(BatchError::LengthMismatch { declared, present });
    }
    Ok(count)
}

/// A validated, allocation-free view of an item batch body.
///
/// Hot paths (every input in, every result out of the coordinator and the daemon) use it
/// instead of [`ItemBatch`], whose one refcounted `Bytes` per item cost over a quarter of the
/// coordinator's CPU: the view yields `(index, offset, len)` and payloads are only sliced where
/// one item must travel alone (a re-dispatch).
#[derive(Debug, Clone)]
pub struct BatchView {
    body: Bytes,
    count: usize,
}

impl BatchView {
    /// Checks `body` (see [`validate`]) and keeps it.
    pub fn parse(body: Bytes) -> Result<Self, BatchError> {
        let count = validate(&body)?;
        Ok(Self { body, count })
    }

    /// Checks the body of an `INPUTS` or `RESULTS` frame, naming the frame on error.
    pub fn from_frame(frame: &Frame) -> Result<Self, crate::FrameError> {
        Self::parse(frame.body.clone()).map_err(|err| crate::FrameError::Malformed {
            kind: frame.kind,
            reason: err.to_string(),
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The whole body (payload offsets are relative to it).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// `(index, payload offset, payload length)` of each item, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        let indices = &self.body[4..4 + self.count * 8];
        let lengths = &self.body[4 + self.count * 8..4 + self.count * 12];
        let mut offset = 4 + self.count * 12;
        indices
            .chunks_exact(8)
            .zip(lengths.chunks_exact(4))
            .map(move |(index, len)| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(index);
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let item = (u64::from_le_bytes(raw), offset, len);
                offset += len;
                item
            })
    }

    /// The items as [`Item`]s (one payload slice each), for the paths that need them.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.iter().map(|(index, offset, len)| Item {
            index,
            payload: self.body.slice(offset..offset + len),
        })
    }
}

/// Encodes any slice of items as a batch body without building an `ItemBatch`.
pub fn encode_items(items: &[Item]) -> Bytes {
    let payload_len: usize = items.iter().map(|item| item.payload.len()).sum();
    let mut dst = BytesMut::with_capacity(4 + items.len() * 12 + payload_len);
    dst.put_u32_le(u32::try_from(items.len()).unwrap_or(u32::MAX));
    for item in items {
        dst.put_u64_le(item.index);
    }
    for item in items {
        dst.put_u32_le(u32::try_from(item.payload.len()).unwrap_or(u32::MAX));
    }
    for item in items {
        dst.put_slice(&item.payload);
    }
    dst.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ItemBatch {
        ItemBatch::new(vec![
            Item::new(5, vec![1u8, 2, 3]),
            Item::new(9, Vec::<u8>::new()),
            Item::new(u64::MAX - 1, vec![0xffu8; 70_000]),
        ])
    }

    #[test]
    fn batch_round_trips() {
        let batch = sample();
        let decoded = ItemBatch::decode(&batch.encode()).expect("valid batch");
        assert_eq!(decoded, batch);
        assert_eq!(decoded.payload_bytes(), 70_003);
    }

    #[test]
    fn empty_batch_round_trips() {
        let decoded = ItemBatch::decode(&ItemBatch::default().encode()).expect("valid batch");
        assert!(decoded.is_empty());
    }

    #[test]
    fn python_layout_is_decoded() {
        // What the Python side builds: count, array('Q'), array('I'), b"".join(payloads).
        let mut body = vec![2, 0, 0, 0];
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&8u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"abc");
        let batch = ItemBatch::decode(&Bytes::from(body)).expect("valid batch");
        assert_eq!(batch.items[0], Item::new(7, &b"a"[..]));
        assert_eq!(batch.items[1], Item::new(8, &b"bc"[..]));
    }

    #[test]
    fn every_truncation_is_refused_without_panicking() {
        let wire = sample().encode();
        for cut in 0..wire.len() {
            assert!(
                ItemBatch::decode(&wire.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut body = sample().encode().to_vec();
        body.push(0);
        assert_eq!(
            ItemBatch::decode(&Bytes::from(body)),
            Err(BatchError::LengthMismatch {
                declared: 70_003,
                present: 70_004
            })
        );
    }

    #[test]
    fn absurd_count_is_refused_before_allocating() {
        let body = Bytes::from(vec![0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            ItemBatch::decode(&body),
            Err(BatchError::TooManyItems(u32::MAX as usize))
        );
    }

    #[test]
    fn view_agrees_with_decode_and_validate() {
        for batch in [sample(), ItemBatch::default()] {
            let body = batch.encode();
            let view = BatchView::parse(body.clone()).expect("valid");
            assert_eq!(view.len(), batch.len());
            assert_eq!(validate(&body), Ok(batch.len()));
            assert_eq!(view.items().collect::<Vec<_>>(), batch.items);
            let offsets: Vec<_> = view.iter().map(|(i, _, len)| (i, len)).collect();
            let expected: Vec<_> = batch
                .items
                .iter()
                .map(|item| (item.index, item.payload.len()))
                .collect();
            assert_eq!(offsets, expected);
        }
    }
}
