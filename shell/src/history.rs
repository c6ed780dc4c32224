//! The node's channel history and native presence, shared by every worker's hub.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{HistoryStore, HistoryTable, PresenceStore, PresenceTable, StreamRead, StreamRules, StreamTop};

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

/// One [`PresenceTable`] for the whole node, lent to each hub (without Redis, which holds the
/// cluster's): a `presence` answer then lists the members on every worker. One short lock per
/// join, leave and presence request.
#[derive(Debug, Clone, Default)]
pub struct SharedPresence(Arc<Mutex<PresenceTable>>);

impl SharedPresence {
    fn lock(&self) -> MutexGuard<'_, PresenceTable> {
        // The table's methods do not panic halfway, so a poisoned lock still holds a whole table.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PresenceStore for SharedPresence {
    fn join(&mut self, channel: &str, member: &str, info: Option<&str>) {
        self.lock().join(channel, member, info);
    }

    fn leave(&mut self, channel: &str, member: &str) {
        self.lock().leave(channel, member);
    }

    fn members(&self, channel: &str) -> Vec<(String, Option<String>)> {
        self.lock().members(channel)
    }
}
