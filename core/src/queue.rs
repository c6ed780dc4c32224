//! A connection's outbound queue: shared frames written front to back, with the unsent byte
//! count known exactly.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Outbound frames of one connection. The front frame is held inline because most queues
/// hold one frame at a time: a broadcast to a million idle readers then allocates nothing per
/// reader, and an empty queue owns no heap memory.
#[derive(Debug, Default)]
pub struct OutQueue {
    front: Option<Bytes>,
    rest: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Unsent bytes across the queue.
    unsent: usize,
}

impl OutQueue {
    /// Appends a frame.
    pub fn push(&mut self, frame: Bytes) {
        self.unsent += frame.len();
        if self.front.is_none() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Unsent bytes.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// True when everything was written.
    pub fn is_empty(&self) -> bool {
        self.unsent == 0 && self.front.is_none()
    }

    /// Fills `out` with the unsent bytes in order; returns how many slices were filled.
    pub fn fill<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let Some(front) = &self.front else { return 0 };
        let frames = std::iter::once(&front[self.offset..]).chain(self.rest.iter().map(|f| &f[..]));
        let mut filled = 0;
        for (slot, frame) in out.iter_mut().zip(frames) {
            *slot = IoSlice::new(frame);
            filled += 1;
        }
        filled
    }

    /// Marks `n` bytes as written; returns how many were (never more than were unsent).
    pub fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.unsent);
        self.unsent -= n;
        let mut left = n;
        while let Some(front) = &self.front {
            let remaining = front.len() - self.offset;
            if left < remaining {
                self.offset += left;
                break;
            }
            left -= remaining;
            self.offset = 0;
            self.front = self.rest.pop_front();
        }
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(queue: &OutQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = queue.fill(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    proptest! {
        #[test]
        fn partial_writes_deliver_every_byte_in_order(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10),
            writes in proptest::collection::vec(0usize..80, 0..40),
        ) {
            let mut queue = OutQueue::default();
            let mut expected = Vec::new();
            for frame in &frames {
                expected.extend_from_slice(frame);
                queue.push(Bytes::from(frame.clone()));
            }
            let mut got = Vec::new();
            for n in writes.into_iter().chain([usize::MAX]) {
                prop_assert_eq!(queue.unsent(), expected.len() - got.len());
                let pending = written(&queue);
                let taken = queue.consume(n);
                got.extend_from_slice(&pending[..taken]);
            }
            prop_assert_eq!(got, expected);
            prop_assert!(queue.is_empty());
            prop_assert_eq!(queue.rest.capacity(), 0, "an empty queue holds no allocation");
        }
    }
}
