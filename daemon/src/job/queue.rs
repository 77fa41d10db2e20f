//! A job's input queue: bounded by item count and bytes, so a client's body is read only as
//! fast as instances consume it (backpressure), with a front door for re-queued items.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::chunk::{Chunk, Segment};

/// The queue was closed (the job ended): nothing more is accepted or handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    items: usize,
    bytes: usize,
    /// Items taken by workers and not yet answered or put back. Kept under the same lock as
    /// `items` so that "nothing queued and nothing running" is never observed between a
    /// worker taking items and counting them.
    running: u64,
    closed: bool,
}

/// Inputs waiting for a worker. A std `Mutex`: each critical section is a few deque operations
/// and never awaits; waiting happens on the `Notify`s outside the lock.
#[derive(Debug)]
pub struct InputQueue {
    state: Mutex<State>,
    max_items: usize,
    max_bytes: usize,
    /// Wakes instances waiting for items.
    items_ready: Notify,
    /// Wakes pushers waiting for room.
    space: Notify,
}

impl InputQueue {
    /// A queue holding at most `max_items` items and `max_bytes` bytes (a single batch larger
    /// than that is still accepted into an empty queue, so no batch can wait forever).
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_items,
            max_bytes,
            items_ready: Notify::new(),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items taken by workers and not yet answered.
    pub fn running(&self) -> u64 {
        self.lock().running
    }

    /// Whether nothing is queued and nothing is running.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.items == 0 && state.running == 0
    }

    /// `n` running items were answered.
    pub fn answered(&self, n: u64) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(n);
    }

    /// Appends a client's batch, waiting while the queue is full.
    pub async fn push(&self, segment: Segment) -> Result<(), QueueClosed> {
        if segment.remaining() == 0 {
            return Ok(());
        }
        let (items, bytes) = (segment.remaining(), segment.cost());
        let mut segment = Some(segment);
        loop {
            let room = self.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(QueueClosed);
                }
                let fits = state.items == 0
                    || (state.items + items <= self.max_items
                        && state.bytes + bytes <= self.max_bytes);
                if fits {
                    if let Some(segment) = segment.take() {
                        state.items += items;
                        state.bytes += bytes;
                        state.segments.push_back(segment);
                    }
                    drop(state);
                    self.items_ready.notify_waiters();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Puts running items back at the front (a dead worker's unfinished ones), ignoring the
    /// bounds: they were already counted once and must not wait behind new inputs.
    pub fn push_front(&self, segment: Segment) {
        {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(segment.remaining() as u64);
            if state.closed || segment.remaining() == 0 {
                return;
            }
            state.items += segment.remaining();
            state.bytes += segment.cost();
            state.segments.push_front(segment);
        }
        self.items_ready.notify_waiters();
    }

    /// Takes up to `max` items now; they count as running until answered or put back.
    pub fn pop(&self, max: usize) -> Option<Chunk> {
        let chunk = {
            let mut state = self.lock();
            let chunk = Chunk::take_from(&mut state.segments, max.max(1))?;
            state.items -= chunk.len();
            state.running += chunk.len() as u64;
            state.bytes = state.bytes.saturating_sub(chunk.cost());
            chunk
        };
        self.space.notify_waiters();
        Some(chunk)
    }

    /// Takes up to `max` items, waiting for some; `None` once the queue is closed.
    /// Cancel-safe: items are only taken in the poll that returns them.
    pub async fn next_chunk(&self, max: usize) -> Option<Chunk> {
        loop {
            let ready = self.items_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if self.lock().closed {
                return None;
            }
            if let Some(chunk) = self.pop(max) {
                return Some(chunk);
            }
            ready.await;
        }
    }

    /// Gives up to `max` queued items back (whole batches, newest first, never one a worker
    /// took), for the coordinator to run elsewhere; their indices. They will never run here.
    pub fn release_back(&self, max: usize) -> Vec<u64> {
        let mut released = Vec::new();
        {
            let mut state = self.lock();
            while let Some(back) = state.segments.back() {
                if released.len() + back.remaining() > max {
                    break;
                }
                let Some(segment) = state.segments.pop_back() else {
                    break;
                };
                state.items -= segment.remaining();
                state.bytes = state.bytes.saturating_sub(segment.cost());
                released.extend(segment.remaining_indices());
            }
        }
        if !released.is_empty() {
            self.space.notify_waiters();
        }
        released
    }

    /// Closes the queue: queued items are dropped, pushers and waiters are released.
    pub fn close(&self) {
        {
            let mut state = self.lock();
            state.closed = true;
            state.segments.clear();
            state.items = 0;
            state.bytes = 0;
        }
        self.space.notify_waiters();
        self.items_ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use agent_proto::{Item, ItemBatch};

    use super::*;

    fn segment(first: u64, n: u64, payload: usize) -> Segment {
        let items = (first..first + n)
            .map(|i| Item::new(i, vec![0u8; payload]))
            .collect();
        Segment::parse(ItemBatch::new(items).encode()).expect("valid")
    }

    #[tokio::test]
    async fn release_back_gives_up_whole_queued_batches_newest_first() {
        let queue = InputQueue::new(100, 1 << 20);
        queue.push(segment(0, 4, 1)).await.expect("open");
        queue.push(segment(10, 3, 1)).await.expect("open");
        queue.push(segment(20, 2, 1)).await.expect("open");
        let running = queue.pop(2).expect("items");
        assert_eq!(running.len(), 2);
        assert_eq!(queue.release_back(1), Vec::<u64>::new(), "no partial batch");
        assert_eq!(queue.release_back(6), vec![20, 21, 10, 11, 12]);
        assert_eq!(queue.len(), 2, "the started batch's rest stays");
        assert_eq!(queue.release_back(10), vec![2, 3], "never a taken item");
        assert!(queue.is_empty());
        assert_eq!(queue.running(), 2);
    }

    #[tokio::test]
    async fn push_waits_for_room_by_count() {
        let queue = Arc::new(InputQueue::new(10, 1 << 20));
        queue.push(segment(0, 8, 1)).await.expect("open");
        let pusher = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push(segment(8, 5, 1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pusher.is_finished(), "8 + 5 > 10 must wait");
        assert_eq!(queue.pop(4).map(|c| c.len()), Some(4));
        pusher.await.expect("pusher").expect("open");
        assert_eq!(queue.len(), 9);
    }

    #[tokio::test]
    async fn push_waits_for_room_by_bytes() {
        let queue = Arc::new(InputQueue::new(1000, 1000));
        queue.push(segment(0, 2, 400)).await.expect("open");
        let pusher = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push(segment(2, 1, 400)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pusher.is_finished(), "824 + 412 > 1000 must wait");
        queue.pop(1);
        pusher.await.expect("pusher").expect("open");
    }

    #[tokio::test]
    async fn an_oversized_batch_enters_an_empty_queue() {
        let queue = InputQueue::new(2, 10);
        queue.push(segment(0, 5, 100)).await.expect("open");
        assert_eq!(queue.len(), 5);
    }

    #[tokio::test]
    async fn requeued_items_come_first_and_ignore_bounds() {
        let queue = InputQueue::new(2, 1 << 20);
        queue.push(segment(100, 3, 1)).await.expect("open");
        let taken = queue.pop(3).expect("items");
        queue.push(segment(0, 2, 1)).await.expect("open");
        assert_eq!(queue.running(), 3);
        queue.push_front(taken.subset(|_| true).expect("items"));
        assert_eq!((queue.len(), queue.running()), (5, 0));
        let chunk = queue.pop(3).expect("items");
        assert!(chunk.contains(100) && chunk.contains(102) && !chunk.contains(0));
    }

    #[tokio::test]
    async fn taken_items_run_until_answered() {
        let queue = InputQueue::new(10, 1 << 20);
        assert!(queue.is_idle());
        queue.push(segment(0, 4, 1)).await.expect("open");
        let chunk = queue.pop(10).expect("items");
        assert_eq!((queue.len(), queue.running()), (0, 4));
        assert!(!queue.is_idle(), "taken but unanswered");
        queue.answered(chunk.len() as u64);
        assert!(queue.is_idle());
    }

    #[tokio::test]
    async fn next_chunk_waits_and_close_releases_everyone() {
        let queue = Arc::new(InputQueue::new(10, 1 << 20));
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next_chunk(10).await.map(|c| c.len()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.push(segment(0, 3, 1)).await.expect("open");
        assert_eq!(taker.await.expect("taker"), Some(3));
        queue.push(segment(3, 10, 1)).await.expect("open");
        let pusher = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push(segment(13, 1, 1)).await })
        };
        let idle = Arc::new(InputQueue::new(10, 1 << 20));
        let waiter = {
            let idle = idle.clone();
            tokio::spawn(async move { idle.next_chunk(100).await.is_none() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.close();
        idle.close();
        assert_eq!(pusher.await.expect("pusher"), Err(QueueClosed));
        assert!(waiter.await.expect("waiter"));
        assert!(queue.next_chunk(1).await.is_none());
        assert!(queue.is_empty());
    }
}
