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

#[derive(Debug)]
struct Entry {
    slot: Slot,
    payload: Bytes,
}

/// An input index sent twice while the first is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate(pub u64);

/// The in-flight table of one job.
#[derive(Debug, Default)]
pub struct InFlight {
    map: HashMap<u64, Entry, BuildHasherDefault<IndexHasher>>,
}

impl InFlight {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `index` as held by `slot`; refuses an index already in flight.
    pub fn insert(&mut self, index: u64, slot: Slot, payload: Bytes) -> Result<(), Duplicate> {
        match self.map.entry(index) {
            std::collections::hash_map::Entry::Occupied(_) => Err(Duplicate(index)),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Entry { slot, payload });
                Ok(())
            }
        }
    }

    /// The stream holding `index`, if it is in flight.
    pub fn owner(&self, index: u64) -> Option<Slot> {
        self.map.get(&index).map(|entry| entry.slot)
    }

    /// Removes `index` if `slot` holds it, returning its payload size; `None` means the answer
    /// is stale or duplicate and must be dropped.
    pub fn complete(&mut self, index: u64, slot: Slot) -> Option<usize> {
        match self.map.get(&index) {
            Some(entry) if entry.slot == slot => {
                self.map.remove(&index).map(|entry| entry.payload.len())
            }
            _ => None,
        }
    }

    /// Takes every input `slot` holds, in index order, for re-dispatch.
    pub fn take_slot(&mut self, slot: Slot) -> Vec<Item> {
        let indices: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, entry)| entry.slot == slot)
            .map(|(index, _)| *index)
            .collect();
        let mut items: Vec<Item> = indices
            .into_iter()
            .filter_map(|index| {
                self.map
                    .remove(&index)
                    .map(|entry| Item::new(index, entry.payload))
            })
            .collect();
        items.sort_by_key(|item| item.index);
        items
    }

    /// Takes every input, in index order.
    pub fn take_all(&mut self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .map
            .drain()
            .map(|(index, entry)| Item::new(index, entry.payload))
            .collect();
        items.sort_by_key(|item| item.index);
        items
    }

    /// Inputs in flight.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_once_and_only_from_the_holder() {
        let mut table = InFlight::new();
        table.insert(7, 0, Bytes::from_static(b"abc")).expect("new");
        assert_eq!(table.insert(7, 1, Bytes::new()), Err(Duplicate(7)));
        assert_eq!(table.owner(7), Some(0));
        assert_eq!(table.complete(7, 1), None, "other stream: stale");
        assert_eq!(table.complete(7, 0), Some(3));
        assert_eq!(table.complete(7, 0), None, "second answer dropped");
        assert!(table.is_empty());
    }

    #[test]
    fn a_lost_streams_inputs_move_and_late_answers_are_dropped() {
        let mut table = InFlight::new();
        for index in [5u64, 1, 3] {
            table
                .insert(index, 0, Bytes::from(vec![index as u8]))
                .expect("new");
        }
        table.insert(2, 1, Bytes::new()).expect("new");
        let moved = table.take_slot(0);
        assert_eq!(
            moved.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(moved[2].payload, Bytes::from(vec![5u8]));
        for item in moved {
            table
                .insert(item.index, 2, item.payload)
                .expect("re-dispatched");
        }
        assert_eq!(table.complete(3, 0), None, "the dead stream's late answer");
        assert_eq!(table.complete(3, 2), Some(1));
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.take_all().iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
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
