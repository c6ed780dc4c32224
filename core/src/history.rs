//! Channel history for the native protocol: each channel of a namespace with `history_size`
//! is a stream of publications numbered by `offset` within an `epoch`.
//!
//! A node's hubs share one [`HistoryTable`] (the shells lend it to every hub behind a lock,
//! as with admission), so offsets are the node's, whatever worker a publisher is on. A hub
//! that sees a publication out of order reads the missing ones back from the table; that is
//! what keeps delivery gap-free and in order across workers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::redis::splitmix64;
use crate::time::later;

/// The rules of one channel's stream, from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRules {
    /// Publications kept.
    pub size: usize,
    /// How long the stream outlives its last publication.
    pub ttl: Duration,
}

/// A stream's epoch and latest offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTop {
    /// Changes whenever the stream is created afresh.
    pub epoch: String,
    /// The last offset given (0: none yet).
    pub offset: u64,
}

/// Publications after some offset, as far as the stream keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRead {
    /// Where the stream is now.
    pub top: StreamTop,
    /// `(offset, data)`, oldest first, consecutive.
    pub publications: Vec<(u64, Bytes)>,
    /// True when `publications` starts right after the offset asked for (nothing asked for
    /// was evicted or expired), whether or not `limit` cut its end.
    pub complete: bool,
}

/// Where a node keeps its channels' history; shared by every hub of the node.
pub trait HistoryStore: Send + fmt::Debug {
    /// Appends `data` to `channel`'s stream (created with a new epoch when absent or expired);
    /// returns its position.
    fn append(&mut self, channel: &str, data: Bytes, rules: StreamRules, now: Instant) -> StreamTop;
    /// Up to `limit` publications after `after`, with the stream's position (an empty stream
    /// with a new epoch is created when absent, so that positions are always comparable).
    fn read(&mut self, channel: &str, after: u64, limit: usize, rules: StreamRules, now: Instant) -> StreamRead;
}

/// One channel's kept publications.
#[derive(Debug)]
struct Stream {
    epoch: String,
    top: u64,
    entries: VecDeque<(u64, Bytes)>,
    expires: Instant,
}

/// A node's streams in memory, bounded by each namespace's `history_size` and `history_ttl`.
#[derive(Debug)]
pub struct HistoryTable {
    streams: HashMap<String, Stream>,
    rng: u64,
    next_sweep: Option<Instant>,
}

/// Expired streams are looked for at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl HistoryTable {
    /// An empty table whose epochs are drawn from `seed` (the shell's randomness).
    pub fn new(seed: u64) -> Self {
        Self { streams: HashMap::new(), rng: seed, next_sweep: None }
    }

    /// Streams held (for footprints and tests).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is held.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(later(now, SWEEP_EVERY));
        self.streams.retain(|_, stream| stream.expires > now);
    }

    /// The live stream of `channel`, created afresh when absent or expired.
    fn stream(&mut self, channel: &str, rules: StreamRules, now: Instant) -> &mut Stream {
        self.sweep(now);
        let fresh = |rng: &mut u64| Stream {
            epoch: format!("{:016x}", splitmix64(rng)),
            top: 0,
            entries: VecDeque::new(),
            expires: later(now, rules.ttl),
        };
        let rng = &mut self.rng;
        let stream = self.streams.entry(channel.to_owned()).or_insert_with(|| fresh(rng));
        if stream.expires <= now {
            *stream = fresh(rng);
        }
        stream
    }
}

impl HistoryStore for HistoryTable {
    fn append(&mut self, channel: &str, data: Bytes, rules: StreamRules, now: Instant) -> StreamTop {
        let stream = self.stream(channel, rules, now);
        stream.top += 1;
        stream.entries.push_back((stream.top, data));
        while stream.entries.len() > rules.size.max(1) {
            stream.entries.pop_front();
        }
        stream.expires = later(now, rules.ttl);
        StreamTop { epoch: stream.epoch.clone(), offset: stream.top }
    }

    fn read(&mut self, channel: &str, after: u64, limit: usize, rules: StreamRules, now: Instant) -> StreamRead {
        let stream = self.stream(channel, rules, now);
        let top = StreamTop { epoch: stream.epoch.clone(), offset: stream.top };
        let oldest = stream.entries.front().map_or(stream.top + 1, |(offset, _)| *offset);
        let complete = after >= stream.top || oldest <= after + 1;
        let publications = stream.entries.iter().filter(|(offset, _)| *offset > after).take(limit).cloned().collect();
        StreamRead { top, publications, complete }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: StreamRules = StreamRules { size: 3, ttl: Duration::from_secs(10) };

    fn data(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[test]
    fn offsets_count_from_one_and_old_entries_are_evicted() {
        let now = switchboard_testkit::origin();
        let mut table = HistoryTable::new(7);
        let first = table.append("c", data(1), RULES, now);
        assert_eq!(first.offset, 1);
        for n in 2..=5 {
            assert_eq!(table.append("c", data(n), RULES, now), StreamTop { epoch: first.epoch.clone(), offset: n });
        }
        let all = table.read("c", 0, 100, RULES, now);
        assert_eq!(all.publications.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!all.complete, "1 and 2 were evicted");
        let tail = table.read("c", 2, 100, RULES, now);
        assert!(tail.complete);
        assert_eq!(tail.publications.len(), 3);
        let limited = table.read("c", 2, 1, RULES, now);
        assert_eq!((limited.publications.len(), limited.complete), (1, true));
        let none = table.read("c", 5, 100, RULES, now);
        assert!(none.complete && none.publications.is_empty());
    }

    #[test]
    fn an_expired_stream_starts_again_with_a_new_epoch() {
        let now = switchboard_testkit::origin();
        let mut table = HistoryTable::new(7);
        let before = table.append("c", data(1), RULES, now);
        let after = table.append("c", data(2), RULES, now + Duration::from_secs(11));
        assert_ne!(before.epoch, after.epoch);
        assert_eq!(after.offset, 1);
        // Reading an unknown channel creates its stream, so its epoch is stable from then on.
        let empty = table.read("d", 0, 10, RULES, now);
        assert_eq!(empty.top.offset, 0);
        assert_eq!(table.read("d", 0, 10, RULES, now).top.epoch, empty.top.epoch);
        table.read("e", 0, 10, RULES, now + Duration::from_secs(30));
        assert_eq!(table.len(), 1, "expired streams are swept");
    }
}
