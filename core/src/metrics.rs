//! Counters and gauges the hub keeps, read by the shells and the HTTP endpoints.

use std::collections::BTreeMap;

/// Plain counters (monotonic) and gauges (current values) of one hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// TCP connections handed to the hub.
    pub connections_accepted: u64,
    /// Connections currently held, in any phase.
    pub connections_open: u64,
    /// Successful WebSocket upgrades.
    pub upgrades: u64,
    /// Requests answered with an HTTP error status.
    pub handshake_rejections: u64,
    /// Handshakes that did not complete within `handshake_timeout`.
    pub handshake_timeouts: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages queued to connections.
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes queued to sockets.
    pub bytes_out: u64,
    /// Closes by close code (1006 for connections that ended without a close frame).
    pub closes_by_code: BTreeMap<u16, u64>,
}

impl Metrics {
    /// Counts one close with `code`.
    pub fn count_close(&mut self, code: u16) {
        *self.closes_by_code.entry(code).or_default() += 1;
    }
}
