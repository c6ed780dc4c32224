//! Counters and gauges the hub keeps, read by the shells and the HTTP endpoints.

use std::collections::BTreeMap;

/// Plain counters (monotonic) and gauges (current values) of one hub.
///
/// Several hubs (workers) add up with [`Metrics::merge`], which is how a node reports itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// TCP connections handed to the hub.
    pub connections_accepted: u64,
    /// Gauge: connections currently held, in any phase.
    pub connections_open: u64,
    /// Gauge: open WebSocket connections per route path.
    pub connections_by_route: BTreeMap<String, u64>,
    /// Accept errors the shell reported (EMFILE and the like).
    pub accept_errors: u64,
    /// Successful WebSocket upgrades.
    pub upgrades: u64,
    /// Requests answered with an HTTP error, by status code.
    pub rejections_by_status: BTreeMap<u16, u64>,
    /// Handshakes that did not complete within `handshake_timeout`.
    pub handshake_timeouts: u64,
    /// Gauge: channels with at least one local subscriber (broadcast rooms included).
    pub channels: u64,
    /// Gauge: subscriptions held by local connections.
    pub subscriptions: u64,
    /// Data messages received from clients.
    pub messages_in: u64,
    /// Data messages queued to clients.
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes queued to sockets.
    pub bytes_out: u64,
    /// Messages not queued because a slow consumer's queue was full (policy `drop`).
    pub messages_dropped: u64,
    /// Connections closed because their queue was full (policy `close`).
    pub slow_consumer_closes: u64,
    /// Gauge: bytes queued and not yet written, over all connections.
    pub queued_bytes: u64,
    /// Closes by close code (1006 for connections that ended without a close frame).
    pub closes_by_code: BTreeMap<u16, u64>,
    /// Connections closed because a pong came too late.
    pub pong_timeouts: u64,
    /// Connections closed for silence past `idle_timeout`.
    pub idle_timeouts: u64,
    /// Messages refused by the per-connection rate limit.
    pub rate_limited: u64,
    /// Malformed or refused pub/sub requests.
    pub protocol_errors: u64,
    /// Messages published through `POST /api/publish`.
    pub api_publishes: u64,
    /// Publishes accepted from clients and the API (each counted once, before fan-out).
    pub publishes: u64,
    /// Publishes not sent to other nodes because the broker link was down or its breaker open.
    pub broker_dropped: u64,
}

impl Metrics {
    /// Counts one close with `code`.
    pub fn count_close(&mut self, code: u16) {
        *self.closes_by_code.entry(code).or_default() += 1;
    }

    /// Counts one HTTP rejection with `status`.
    pub fn count_rejection(&mut self, status: u16) {
        *self.rejections_by_status.entry(status).or_default() += 1;
    }

    /// Adds another hub's figures to these (counters and gauges alike).
    pub fn merge(&mut self, other: &Self) {
        let Self {
            connections_accepted,
            connections_open,
            connections_by_route,
            accept_errors,
            upgrades,
            rejections_by_status,
            handshake_timeouts,
            channels,
            subscriptions,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            messages_dropped,
            slow_consumer_closes,
            queued_bytes,
            closes_by_code,
            pong_timeouts,
            idle_timeouts,
            rate_limited,
            protocol_errors,
            api_publishes,
            publishes,
            broker_dropped,
        } = other;
        self.connections_accepted += connections_accepted;
        self.connections_open += connections_open;
        self.accept_errors += accept_errors;
        self.upgrades += upgrades;
        self.handshake_timeouts += handshake_timeouts;
        self.channels += channels;
        self.subscriptions += subscriptions;
        self.messages_in += messages_in;
        self.messages_out += messages_out;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.messages_dropped += messages_dropped;
        self.slow_consumer_closes += slow_consumer_closes;
        self.queued_bytes += queued_bytes;
        self.pong_timeouts += pong_timeouts;
        self.idle_timeouts += idle_timeouts;
        self.rate_limited += rate_limited;
        self.protocol_errors += protocol_errors;
        self.api_publishes += api_publishes;
        self.publishes += publishes;
        self.broker_dropped += broker_dropped;
        for (route, count) in connections_by_route {
            *self.connections_by_route.entry(route.clone()).or_default() += count;
        }
        for (status, count) in rejections_by_status {
            *self.rejections_by_status.entry(*status).or_default() += count;
        }
        for (code, count) in closes_by_code {
            *self.closes_by_code.entry(*code).or_default() += count;
        }
    }
}
