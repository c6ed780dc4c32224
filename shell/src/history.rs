//! The node's channel history, shared by every worker's hub.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{HistoryStore, HistoryTable, StreamRead, StreamRules, StreamTop};

/// One [`HistoryTable`] for the whole node, lent to each hub: offsets are then the node's,
/// whichever worker a publisher is on. One short lock per publication on a channel with
/// history (never per subscriber).
#[derive(Debug, Clone)]
pub struct SharedHistory(Arc<Mutex<HistoryTable>>);

impl SharedHistory {
    /// Shares `table` among the hubs given a clone of this handle.
    pub fn new(table: HistoryTable) -> Self {
        Self(Arc::new(Mutex::new(table)))
    }

    fn lock(&self) -> MutexGuard<'_, HistoryTable> {
        // The table's methods do not panic halfway, so a poisoned lock still holds a whole table.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HistoryStore for SharedHistory {
    fn append(&mut self, channel: &str, data: Bytes, rules: StreamRules, now: Instant) -> StreamTop {
        self.lock().append(channel, data, rules, now)
    }

    fn read(&mut self, channel: &str, after: u64, limit: usize, rules: StreamRules, now: Instant) -> StreamRead {
        self.lock().read(channel, after, limit, rules, now)
    }
}
