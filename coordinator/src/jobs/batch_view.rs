//! A validated, allocation-free view of an item batch body (`count:u32 indices:u64[count]
//! lengths:u32[count] payloads`).
//!
//! `agent_proto::ItemBatch::decode` builds a `Vec<Item>` with one refcounted `Bytes` slice per
//! item; on the coordinator's hot path (every input in, every result out) those per-item atomic
//! increments were over a quarter of its CPU. The view checks the same invariants and yields
//! `(index, offset, len)` so payloads are only sliced when an input must be re-dispatched.
//! `ItemBatch` stays the reference: the tests check both agree.

use agent_proto::batch::MAX_ITEMS_PER_BATCH;
use agent_proto::{BatchError, Frame, FrameError, Item};
use bytes::Bytes;

/// A batch body whose layout has been checked.
#[derive(Debug, Clone)]
pub struct BatchView {
    body: Bytes,
    count: usize,
}

impl BatchView {
    /// Checks `body` like `ItemBatch::decode` does.
    pub fn parse(body: Bytes) -> Result<Self, BatchError> {
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
        Ok(Self { body, count })
    }

    /// Checks the body of an INPUTS or RESULTS frame, naming the frame on error.
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        Self::parse(frame.body.clone()).map_err(|err| FrameError::Malformed {
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

    /// The items as `Item`s (payloads sliced: one refcount each), for the rare paths.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.iter().map(|(index, offset, len)| Item {
            index,
            payload: self.body.slice(offset..offset + len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::ItemBatch;

    fn sample() -> ItemBatch {
        ItemBatch::new(vec![
            Item::new(9, vec![1u8, 2, 3]),
            Item::new(2, Vec::<u8>::new()),
            Item::new(u64::MAX - 1, vec![7u8; 1000]),
        ])
    }

    #[test]
    fn agrees_with_item_batch_on_valid_bodies() {
        for batch in [sample(), ItemBatch::default()] {
            let body = batch.encode();
            let view = BatchView::parse(body.clone()).expect("valid");
            assert_eq!(view.len(), batch.len());
            assert_eq!(view.items().collect::<Vec<_>>(), batch.items);
        }
    }

    #[test]
    fn refuses_exactly_what_item_batch_refuses() {
        let wire = sample().encode();
        for cut in 0..wire.len() {
            let body = wire.slice(..cut);
            assert_eq!(
                BatchView::parse(body.clone()).map(|v| v.len()).err(),
                ItemBatch::decode(&body).map(|b| b.len()).err(),
                "cut at {cut}"
            );
        }
        let mut longer = wire.to_vec();
        longer.push(0);
        assert!(BatchView::parse(Bytes::from(longer)).is_err());
        assert!(matches!(
            BatchView::parse(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])),
            Err(BatchError::TooManyItems(_))
        ));
    }
}
