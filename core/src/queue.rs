//! Outbound frames: each held once in the hub's [`FrameStore`], and a per-connection
//! [`OutQueue`] of references to them, with the unsent byte count known exactly.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Names a frame in a [`FrameStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameId(u32);

/// The frames queued on a hub's connections, each held once however many queues name it.
/// A hub is single-threaded, so a plain count of readers replaces `Bytes`' atomic one: at
/// 1,000 subscribers the atomic increment on enqueue and decrement on write were a tenth of
/// a broadcast's user-space time.
#[derive(Debug, Default)]
pub(crate) struct FrameStore {
    frames: Vec<StoredFrame>,
    free: Vec<u32>,
}

#[derive(Debug, Default)]
struct StoredFrame {
    bytes: Bytes,
    /// Queues holding this frame; the slot is freed when the last one lets go.
    readers: u32,
}

impl FrameStore {
    /// Stores a frame no queue holds yet; it is freed once the last queue that takes it lets go,
    /// or by [`FrameStore::forget_unread`] if none took it.
    pub(crate) fn insert(&mut self, bytes: Bytes) -> FrameId {
        let frame = StoredFrame { bytes, readers: 0 };
        if let Some(index) = self.free.pop() {
            self.frames[index as usize] = frame;
            return FrameId(index);
        }
        // Each live frame costs at least 40 bytes here, so 2^32 of them would need 160 GiB.
        let index = u32::try_from(self.frames.len()).expect("fewer than 2^32 frames held at once");
        self.frames.push(frame);
        FrameId(index)
    }

    /// The frame's bytes.
    pub(crate) fn get(&self, id: FrameId) -> &[u8] {
        &self.frames[id.0 as usize].bytes
    }

    /// Frames some queue still holds.
    pub(crate) fn live(&self) -> usize {
        self.frames.len() - self.free.len()
    }

    /// Frees `id`, just inserted, if no queue took it (every reader was over its bound). Only
    /// for a frame no queue has yet let go of: a freed one has no readers either.
    pub(crate) fn forget_unread(&mut self, id: FrameId) {
        let frame = &mut self.frames[id.0 as usize];
        if frame.readers == 0 {
            frame.bytes = Bytes::new();
            self.free.push(id.0);
        }
    }

    fn retain(&mut self, id: FrameId) {
        self.frames[id.0 as usize].readers += 1;
    }

    fn release(&mut self, id: FrameId) {
        let frame = &mut self.frames[id.0 as usize];
        frame.readers -= 1;
        if frame.readers == 0 {
            frame.bytes = Bytes::new();
            self.free.push(id.0);
        }
    }
}

/// Outbound frames of one connection. The front frame is held inline because most queues
/// hold one frame at a time: a broadcast to a million idle readers then allocates nothing per
/// reader, and an empty queue owns no heap memory.
///
/// A queue holds its frames in the hub's [`FrameStore`]: it must be emptied with
/// [`OutQueue::clear`] before it is dropped, or its frames stay stored.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    front: Option<FrameId>,
    rest: VecDeque<FrameId>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Unsent bytes across the queue.
    unsent: usize,
}

impl OutQueue {
    /// Appends a stored frame.
    pub(crate) fn push(&mut self, store: &mut FrameStore, frame: FrameId) {
        store.retain(frame);
        self.unsent += store.get(frame).len();
        if self.front.is_none() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Unsent bytes.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent
    }

    /// True when everything was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    /// Fills `out` with the unsent bytes in order; returns how many slices were filled.
    pub(crate) fn fill<'a>(&self, store: &'a FrameStore, out: &mut [IoSlice<'a>]) -> usize {
        let Some(front) = self.front else { return 0 };
        let frames = std::iter::once(&store.get(front)[self.offset..]).chain(self.rest.iter().map(|&f| store.get(f)));
        let mut filled = 0;
        for (slot, frame) in out.iter_mut().zip(frames) {
            *slot = IoSlice::new(frame);
            filled += 1;
        }
        filled
    }

    /// Marks `n` bytes as written; returns how many were (never more than were unsent).
    pub(crate) fn consume(&mut self, store: &mut FrameStore, n: usize) -> usize {
        let n = n.min(self.unsent);
        self.unsent -= n;
        let mut left = n;
        while let Some(front) = self.front {
            let remaining = store.get(front).len() - self.offset;
            if left < remaining {
                self.offset += left;
                break;
            }
            left -= remaining;
            self.offset = 0;
            store.release(front);
            self.front = self.rest.pop_front();
        }
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        n
    }

    /// Lets go of every unsent frame; returns how many bytes were unsent.
    pub(crate) fn clear(&mut self, store: &mut FrameStore) -> usize {
        let unsent = self.unsent;
        for frame in self.front.take().into_iter().chain(std::mem::take(&mut self.rest)) {
            store.release(frame);
        }
        self.offset = 0;
        self.unsent = 0;
        unsent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(queue: &OutQueue, store: &FrameStore) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = queue.fill(store, &mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    proptest! {
        #[test]
        fn partial_writes_deliver_every_byte_in_order(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10),
            writes in proptest::collection::vec(0usize..80, 0..40),
        ) {
            let mut store = FrameStore::default();
            let mut queue = OutQueue::default();
            let mut expected = Vec::new();
            for frame in &frames {
                expected.extend_from_slice(frame);
                let id = store.insert(Bytes::from(frame.clone()));
                queue.push(&mut store, id);
            }
            let mut got = Vec::new();
            for n in writes.into_iter().chain([usize::MAX]) {
                prop_assert_eq!(queue.unsent(), expected.len() - got.len());
                let pending = written(&queue, &store);
                let taken = queue.consume(&mut store, n);
                got.extend_from_slice(&pending[..taken]);
            }
            prop_assert_eq!(got, expected);
            prop_assert!(queue.is_empty());
            prop_assert_eq!(queue.rest.capacity(), 0, "an empty queue holds no allocation");
            prop_assert_eq!(store.live(), 0, "a written frame is freed");
        }

        /// Several queues share frames: each is freed exactly when the last reader writes or
        /// drops it, whatever the order.
        #[test]
        fn a_shared_frame_lives_until_its_last_reader(
            readers in 1usize..5,
            frames in 1usize..6,
            steps in proptest::collection::vec((0usize..5, 0usize..40, any::<bool>()), 0..40),
        ) {
            let mut store = FrameStore::default();
            let mut queues: Vec<OutQueue> = (0..readers).map(|_| OutQueue::default()).collect();
            for n in 0..frames {
                let id = store.insert(Bytes::from(vec![n as u8; 7]));
                for queue in &mut queues {
                    queue.push(&mut store, id);
                }
            }
            for (reader, n, clear) in steps {
                let queue = &mut queues[reader % readers];
                if clear {
                    queue.clear(&mut store);
                } else {
                    queue.consume(&mut store, n);
                }
                let oldest_unsent = queues.iter().map(|q| frames - q.unsent().div_ceil(7)).min().unwrap_or(frames);
                prop_assert_eq!(store.live(), frames - oldest_unsent);
            }
            for queue in &mut queues {
                queue.clear(&mut store);
            }
            prop_assert_eq!(store.live(), 0);
        }
    }
}
