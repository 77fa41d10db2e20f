//! Inputs handed to nodes and not yet answered: which stream holds each index, and its payload
//! for re-dispatch. This map is what makes "each index exactly once" hold: an answer counts only
//! if its index is in flight on the stream that sent it, and answering removes it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use agent_proto::Item;
use bytes::Bytes;

/// Position of a node stream in its job's stream list.
pub type Slot = usize;

/// Multiplicative hash for input indices: they are dense integers, so SipHash's DoS resistance
/// buys nothing and costs a third of the per-input bookkeeping time.
#[derive(Debug, Default, Clone, Copy)]
pub struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Where an in-flight input's payload lives: a slice of a frame body the table keeps alive.
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    frame: u32,
    offset: u32,
    len: u32,
}

/// A frame body holding payloads of in-flight inputs, and how many of them are unanswered.
#[derive(Debug)]
struct HeldFrame {
    body: Bytes,
    unanswered: u32,
}

/// An input index sent twice while the first is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate(pub u64);

/// Identifies a frame body registered with [`InFlight::hold_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId(u32);

/// The in-flight table of one job.
///
/// Payloads are not sliced per input (each slice is an atomic refcount): an entry names its
/// frame body, offset and length, and the body is dropped once its last input is answered.
#[derive(Debug, Default)]
pub struct InFlight {
    map: HashMap<u64, Entry, BuildHasherDefault<IndexHasher>>,
    frames: Vec<Option<HeldFrame>>,
    free_frames: Vec<u32>,
}

impl InFlight {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `body` alive for the inputs about to be inserted from it.
    pub fn hold_frame(&mut self, body: Bytes) -> FrameId {
        let held = Some(HeldFrame {
            body,
            unanswered: 0,
        });
        match self.free_frames.pop() {
            Some(id) => {
                self.frames[id as usize] = held;
                FrameId(id)
            }
            None => {
                self.frames.push(held);
                FrameId(u32::try_from(self.frames.len() - 1).unwrap_or(u32::MAX))
            }
        }
    }

    /// Releases a held frame none of whose inputs were inserted (a refused batch).
    pub fn release_frame(&mut self, frame: FrameId) {
        let empty = self
            .frames
            .get(frame.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|held| held.unanswered == 0);
        if empty {
            self.drop_frame(frame.0);
        }
    }

    fn drop_frame(&mut self, id: u32) {
        if let Some(held) = self.frames.get_mut(id as usize) {
            *held = None;
            self.free_frames.push(id);
        }
    }

    /// Records `index` as held by `slot`, its payload at `offset..offset+len` of `frame`;
    /// refuses an index already in flight.
    pub fn insert(
        &mut self,
        index: u64,
        slot: Slot,
        frame: FrameId,
        offset: usize,
        len: usize,
    ) -> Result<(), Duplicate> {
        let entry = Entry {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            frame: frame.0,
            // Frame bodies are far below 4 GiB (the frame limit is 64 MiB by default).
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(u32::MAX),
        };
        match self.map.entry(index) {
            std::collections::hash_map::Entry::Occupied(_) => Err(Duplicate(index)),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(entry);
                if let Some(Some(held)) = self.frames.get_mut(frame.0 as usize) {
                    held.unanswered += 1;
                }
                Ok(())
            }
        }
    }

    /// The stream holding `index`, if it is in flight.
    pub fn owner(&self, index: u64) -> Option<Slot> {
        self.map.get(&index).map(|entry| entry.slot as Slot)
    }

    /// Removes `index` if `slot` holds it, returning its payload size; `None` means the answer
    /// is stale or duplicate and must be dropped.
    pub fn complete(&mut self, index: u64, slot: Slot) -> Option<usize> {
        let entry = self.map.remove(&index)?;
        if entry.slot as Slot != slot {
            // Another stream holds it now (re-dispatched): put it back, drop the answer.
            self.map.insert(index, entry);
            return None;
        }
        self.answered(entry.frame);
        Some(entry.len as usize)
    }

    fn answered(&mut self, frame: u32) {
        let last = match self.frames.get_mut(frame as usize) {
            Some(Some(held)) => {
                held.unanswered = held.unanswered.saturating_sub(1);
                held.unanswered == 0
            }
            _ => false,
        };
        if last {
            self.drop_frame(frame);
        }
    }

    fn payload(&self, entry: &Entry) -> Bytes {
        match self.frames.get(entry.frame as usize) {
            Some(Some(held)) => {
                let start = entry.offset as usize;
                held.body.slice(start..start + entry.len as usize)
            }
            _ => Bytes::new(),
        }
    }

    fn take_where(&mut self, keep: impl Fn(&Entry) -> bool) -> Vec<Item> {
        let indices: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, entry)| keep(entry))
            .map(|(index, _)| *index)
            .collect();
        let mut items = Vec::with_capacity(indices.len());
        for index in indices {
            if let Some(entry) = self.map.remove(&index) {
                items.push(Item::new(index, self.payload(&entry)));
                self.answered(entry.frame);
            }
        }
        items.sort_by_key(|item| item.index);
        items
    }

    /// Takes every input `slot` holds, in index order, for re-dispatch.
    pub fn take_slot(&mut self, slot: Slot) -> Vec<Item> {
        self.take_where(|entry| entry.slot as Slot == slot)
    }

    /// Takes those of `indices` that `slot` still holds, in index order (inputs its node gave
    /// back unstarted); each with its payload size.
    pub fn take_released(&mut self, slot: Slot, indices: &[u64]) -> Vec<(Item, usize)> {
        let mut items = Vec::with_capacity(indices.len());
        for index in indices {
            if self.owner(*index) != Some(slot) {
                continue;
            }
            if let Some(entry) = self.map.remove(index) {
                items.push((Item::new(*index, self.payload(&entry)), entry.len as usize));
                self.answered(entry.frame);
            }
        }
        items.sort_by_key(|(item, _)| item.index);
        items
    }

    /// Takes every input, in index order.
    pub fn take_all(&mut self) -> Vec<Item> {
        self.take_where(|_| true)
    }

    /// Inputs in flight.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Frame bodies kept alive (for tests and diagnostics).
    pub fn held_frames(&self) -> usize {
        self.frames.iter().filter(|held| held.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::BatchView;
    use agent_proto::ItemBatch;

    /// Holds a batch of `(index, payload)` on `slot` like the job task does.
    fn hold(table: &mut InFlight, slot: Slot, items: &[(u64, &[u8])]) -> Result<(), Duplicate> {
        let batch = ItemBatch::new(
            items
                .iter()
                .map(|(i, p)| Item::new(*i, p.to_vec()))
                .collect(),
        );
        let view = BatchView::parse(batch.encode()).expect("valid");
        let frame = table.hold_frame(view.body().clone());
        for (index, offset, len) in view.iter() {
            table.insert(index, slot, frame, offset, len)?;
        }
        Ok(())
    }

    #[test]
    fn an_answer_counts_once_and_only_from_the_holder() {
        let mut table = InFlight::new();
        hold(&mut table, 0, &[(7, b"abc")]).expect("new");
        assert_eq!(hold(&mut table, 1, &[(7, b"")]), Err(Duplicate(7)));
        assert_eq!(table.owner(7), Some(0));
        assert_eq!(table.complete(7, 1), None, "other stream: stale");
        assert_eq!(
            table.owner(7),
            Some(0),
            "a stale answer leaves it in flight"
        );
        assert_eq!(table.complete(7, 0), Some(3));
        assert_eq!(table.complete(7, 0), None, "second answer dropped");
        assert!(table.is_empty());
    }

    #[test]
    fn a_lost_streams_inputs_move_with_their_payloads_and_late_answers_are_dropped() {
        let mut table = InFlight::new();
        hold(&mut table, 0, &[(5, b"five"), (1, b"one"), (3, b"three")]).expect("new");
        hold(&mut table, 1, &[(2, b"two")]).expect("new");
        let moved = table.take_slot(0);
        assert_eq!(
            moved.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(moved[2].payload, Bytes::from_static(b"five"));
        assert_eq!(
            table.held_frames(),
            1,
            "the lost stream's frame is released"
        );
        let again: Vec<(u64, &[u8])> = moved.iter().map(|i| (i.index, &i.payload[..])).collect();
        hold(&mut table, 2, &again).expect("re-dispatched");
        assert_eq!(table.complete(3, 0), None, "the dead stream's late answer");
        assert_eq!(table.complete(3, 2), Some(5));
        assert_eq!(table.len(), 3);
        let all = table.take_all();
        assert_eq!(
            all.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
        assert_eq!(all[0].payload, Bytes::from_static(b"one"));
        assert_eq!(table.held_frames(), 0);
    }

    #[test]
    fn released_inputs_leave_with_their_payloads_only_from_their_holder() {
        let mut table = InFlight::new();
        hold(&mut table, 0, &[(1, b"one"), (2, b"two"), (3, b"three")]).expect("new");
        hold(&mut table, 1, &[(4, b"four")]).expect("new");
        let taken = table.take_released(0, &[3, 1, 4, 9]);
        let got: Vec<(u64, usize)> = taken.iter().map(|(i, len)| (i.index, *len)).collect();
        assert_eq!(
            got,
            vec![(1, 3), (3, 5)],
            "4 is another stream's, 9 unknown"
        );
        assert_eq!(taken[1].0.payload, Bytes::from_static(b"three"));
        assert_eq!(table.owner(2), Some(0));
        assert_eq!(table.owner(4), Some(1));
        assert_eq!(
            table.complete(1, 0),
            None,
            "a released input's answer is stale"
        );
    }

    #[test]
    fn frames_are_released_when_their_last_input_is_answered() {
        let mut table = InFlight::new();
        hold(&mut table, 0, &[(0, b"a"), (1, b"b")]).expect("new");
        assert_eq!(table.held_frames(), 1);
        table.complete(0, 0);
        assert_eq!(table.held_frames(), 1);
        table.complete(1, 0);
        assert_eq!(table.held_frames(), 0);
        hold(&mut table, 0, &[(2, b"c")]).expect("new");
        assert_eq!(table.frames.len(), 1, "frame ids are reused");
    }

    #[test]
    fn hasher_spreads_dense_indices() {
        let mut seen = std::collections::HashSet::new();
        for index in 0u64..4096 {
            let mut hasher = IndexHasher::default();
            hasher.write_u64(index);
            seen.insert(hasher.finish() >> 57);
        }
        assert!(seen.len() > 100, "top bits vary: {}", seen.len());
    }
}
