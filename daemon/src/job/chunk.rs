//! Inputs as the daemon holds them: a [`Segment`] is a client's INPUTS batch, validated but
//! never split into items; a [`Chunk`] is what one worker gets, made of zero-copy slices of
//! segments and written as one INPUTS frame with vectored writes (no per-item allocation).
//!
//! Batch layout (`docs/protocol.md` §1): `count:u32 indices:u64[count] lengths:u32[count]
//! payloads`, so any run of consecutive items is three contiguous byte ranges of the body.

use std::ops::Range;

use agent_proto::batch::encode_items;
use agent_proto::{BatchError, FrameKind, Item};
use bytes::Bytes;

/// Most segments one chunk draws from (bounds the slices of one vectored write).
pub const MAX_PIECES: usize = 4;
/// Slices of one chunk frame: the 9-byte head, then indices, lengths and payloads per piece.
pub const MAX_PARTS: usize = 1 + 3 * MAX_PIECES;

pub use agent_proto::batch::validate as validate_batch;

fn u32_at(body: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
}

fn u64_at(body: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&body[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A validated batch of inputs with a cursor: items before `next` have been taken.
#[derive(Debug, Clone)]
pub struct Segment {
    body: Bytes,
    count: usize,
    next: usize,
    /// Offset of item `next`'s payload in `body`.
    payload_pos: usize,
}

impl Segment {
    /// Validates an INPUTS body (zero-copy).
    pub fn parse(body: Bytes) -> Result<Self, BatchError> {
        let count = validate_batch(&body)?;
        Ok(Self {
            payload_pos: 4 + 12 * count,
            body,
            count,
            next: 0,
        })
    }

    /// Items not yet taken.
    pub fn remaining(&self) -> usize {
        self.count - self.next
    }

    /// Bytes the remaining items cost (payloads plus their table entries).
    pub fn cost(&self) -> usize {
        (self.body.len() - self.payload_pos) + 12 * self.remaining()
    }

    /// Indices of the items not yet taken.
    pub fn remaining_indices(&self) -> impl Iterator<Item = u64> + '_ {
        (self.next..self.count).map(|i| u64_at(&self.body, 4 + 8 * i))
    }

    fn length(&self, i: usize) -> usize {
        u32_at(&self.body, 4 + 8 * self.count + 4 * i) as usize
    }

    /// Takes up to `n` items from the front.
    fn take(&mut self, n: usize) -> Piece {
        let n = n.min(self.remaining());
        let first = self.next;
        let payload_len: usize = (first..first + n).map(|i| self.length(i)).sum();
        let payload = self.payload_pos..self.payload_pos + payload_len;
        self.next += n;
        self.payload_pos += payload_len;
        Piece {
            body: self.body.clone(),
            total: self.count,
            first,
            count: n,
            payload,
        }
    }
}

/// Consecutive items of one segment.
#[derive(Debug, Clone)]
struct Piece {
    body: Bytes,
    /// Item count of the whole segment (locates the lengths table).
    total: usize,
    first: usize,
    count: usize,
    payload: Range<usize>,
}

impl Piece {
    fn indices(&self) -> &[u8] {
        &self.body[4 + 8 * self.first..4 + 8 * (self.first + self.count)]
    }

    fn lengths(&self) -> &[u8] {
        let base = 4 + 8 * self.total;
        &self.body[base + 4 * self.first..base + 4 * (self.first + self.count)]
    }

    fn payloads(&self) -> &[u8] {
        &self.body[self.payload.clone()]
    }

    fn index(&self, i: usize) -> u64 {
        u64_at(&self.body, 4 + 8 * (self.first + i))
    }

    /// Items one by one (only for the rare re-queue path).
    fn items(&self) -> impl Iterator<Item = Item> + '_ {
        let lengths = self.lengths();
        let mut at = self.payload.start;
        (0..self.count).map(move |i| {
            let len = u32_at(lengths, 4 * i) as usize;
            let item = Item::new(self.index(i), self.body.slice(at..at + len));
            at += len;
            item
        })
    }
}

/// Items for one worker: an INPUTS frame that is never copied into one buffer.
#[derive(Debug, Clone)]
pub struct Chunk {
    pieces: Vec<Piece>,
    items: usize,
    /// Frame header and batch count: `kind len:u32 count:u32`.
    head: [u8; 9],
}

impl Chunk {
    /// Takes up to `max` items from the front of `segments` (at most [`MAX_PIECES`] of them),
    /// dropping the segments it empties; `None` when there is nothing to take.
    pub fn take_from(
        segments: &mut std::collections::VecDeque<Segment>,
        max: usize,
    ) -> Option<Self> {
        let mut pieces = Vec::new();
        let mut items = 0;
        let mut payload = 0;
        while items < max && pieces.len() < MAX_PIECES {
            let Some(front) = segments.front_mut() else {
                break;
            };
            let piece = front.take(max - items);
            if front.remaining() == 0 {
                segments.pop_front();
            }
            if piece.count == 0 {
                continue;
            }
            items += piece.count;
            payload += piece.payload.len();
            pieces.push(piece);
        }
        if items == 0 {
            return None;
        }
        let body_len = 4 + 12 * items + payload;
        let len = u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes();
        let count = u32::try_from(items).unwrap_or(u32::MAX).to_le_bytes();
        let head = [
            FrameKind::Inputs as u8,
            len[0],
            len[1],
            len[2],
            len[3],
            count[0],
            count[1],
            count[2],
            count[3],
        ];
        Some(Self {
            pieces,
            items,
            head,
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether the chunk holds no item (never true for a chunk from `take_from`).
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Bytes the chunk costs in the queue's accounting.
    pub fn cost(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| p.payload.len() + 12 * p.count)
            .sum()
    }

    /// The whole INPUTS frame as slices, in wire order; unused slots are empty.
    pub fn parts(&self) -> [&[u8]; MAX_PARTS] {
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        parts[0] = &self.head;
        let n = self.pieces.len();
        for (i, piece) in self.pieces.iter().enumerate() {
            parts[1 + i] = piece.indices();
            parts[1 + n + i] = piece.lengths();
            parts[1 + 2 * n + i] = piece.payloads();
        }
        parts
    }

    /// Whether input `index` is in this chunk.
    pub fn contains(&self, index: u64) -> bool {
        self.pieces
            .iter()
            .any(|p| (0..p.count).any(|i| p.index(i) == index))
    }

    /// The items for which `keep` holds, as a new segment (a copy: only used to re-queue the
    /// unfinished items of a worker that died).
    pub fn subset(&self, mut keep: impl FnMut(u64) -> bool) -> Option<Segment> {
        let items: Vec<Item> = self
            .pieces
            .iter()
            .flat_map(Piece::items)
            .filter(|item| keep(item.index))
            .collect();
        if items.is_empty() {
            return None;
        }
        Segment::parse(encode_items(&items)).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use agent_proto::{Frame, FrameDecoder, ItemBatch};

    use super::*;

    fn batch(indices: Range<u64>) -> Bytes {
        let items = indices
            .map(|i| Item::new(i, vec![i as u8; (i % 5) as usize]))
            .collect();
        ItemBatch::new(items).encode()
    }

    /// Decodes what a worker would receive for `chunk`.
    fn on_the_wire(chunk: &Chunk) -> ItemBatch {
        let mut decoder = FrameDecoder::default();
        for part in chunk.parts() {
            decoder.extend(part);
        }
        let frame: Frame = decoder.next_frame().expect("valid").expect("whole frame");
        assert_eq!(frame.kind, FrameKind::Inputs);
        decoder.finish().expect("nothing left");
        ItemBatch::from_frame(&frame).expect("valid batch")
    }

    #[test]
    fn validation_matches_the_protocol_crate() {
        let good = batch(0..7);
        assert_eq!(validate_batch(&good), Ok(7));
        for cut in 0..good.len() {
            assert_eq!(
                validate_batch(&good[..cut]).is_err(),
                ItemBatch::decode(&good.slice(..cut)).is_err(),
                "cut {cut}"
            );
        }
        let mut long = good.to_vec();
        long.push(1);
        assert!(matches!(
            validate_batch(&long),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn chunks_span_segments_and_reencode_exactly() {
        let mut segments: VecDeque<Segment> = [batch(0..3), batch(3..10), batch(10..12)]
            .into_iter()
            .map(|b| Segment::parse(b).expect("valid"))
            .collect();
        let first = Chunk::take_from(&mut segments, 5).expect("items");
        assert_eq!(first.len(), 5);
        let wire = on_the_wire(&first);
        assert_eq!(
            wire.items.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(wire.items[4].payload.len(), 4);
        assert_eq!(first.cost(), 12 * 5 + (1 + 2 + 3 + 4));
        let rest = Chunk::take_from(&mut segments, 100).expect("items");
        assert_eq!(
            on_the_wire(&rest)
                .items
                .iter()
                .map(|i| i.index)
                .collect::<Vec<_>>(),
            (5..12).collect::<Vec<_>>()
        );
        assert!(segments.is_empty());
        assert!(Chunk::take_from(&mut segments, 1).is_none());
    }

    #[test]
    fn a_chunk_draws_from_at_most_max_pieces_segments() {
        let mut segments: VecDeque<Segment> = (0..10u64)
            .map(|i| Segment::parse(batch(i..i + 1)).expect("valid"))
            .collect();
        let chunk = Chunk::take_from(&mut segments, 100).expect("items");
        assert_eq!(chunk.len(), MAX_PIECES);
        assert_eq!(segments.len(), 10 - MAX_PIECES);
    }

    #[test]
    fn empty_segments_are_skipped() {
        let mut segments: VecDeque<Segment> = [batch(0..0), batch(0..2)]
            .into_iter()
            .map(|b| Segment::parse(b).expect("valid"))
            .collect();
        assert_eq!(
            Chunk::take_from(&mut segments, 10).map(|c| c.len()),
            Some(2)
        );
    }

    #[test]
    fn subset_keeps_the_chosen_items_with_their_payloads() {
        let mut segments: VecDeque<Segment> = [batch(0..4), batch(4..8)]
            .into_iter()
            .map(|b| Segment::parse(b).expect("valid"))
            .collect();
        let chunk = Chunk::take_from(&mut segments, 8).expect("items");
        assert!(chunk.contains(6));
        assert!(!chunk.contains(9));
        let mut rest: VecDeque<Segment> = chunk.subset(|i| i % 3 != 0).into_iter().collect();
        let again = Chunk::take_from(&mut rest, 100).expect("items");
        let wire = on_the_wire(&again);
        assert_eq!(
            wire.items.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 2, 4, 5, 7]
        );
        assert_eq!(wire.items[3].payload, Bytes::from(vec![5u8; 0]));
        assert_eq!(wire.items[4].payload, Bytes::from(vec![7u8; 2]));
        assert!(chunk.subset(|_| false).is_none());
    }
}
