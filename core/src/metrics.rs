//! Counters and gauges the hub keeps, read by the shells and the HTTP endpoints.

use std::collections::BTreeMap;

/// Whether a figure only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since the hub started.
    Counter,
    /// A current value.
    Gauge,
}

/// One single-valued figure of [`Metrics`], for exporters that walk them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// The field's name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// What it counts (the field's doc).
    pub help: &'static str,
    /// Its value.
    pub value: u64,
}

/// Declares `Metrics` from one list, so the struct, `merge` and `figures` cannot disagree.
macro_rules! metrics {
    (
        $( #[doc = $doc:literal] $field:ident: $kind:ident, )*
        maps: $( #[doc = $map_doc:literal] $map:ident: $key:ty, )*
    ) => {
        /// Plain counters and gauges of one hub.
        ///
        /// Several hubs (workers) add up with [`Metrics::merge`], which is how a node reports
        /// itself.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Metrics {
            $( #[doc = $doc] pub $field: u64, )*
            $( #[doc = $map_doc] pub $map: BTreeMap<$key, u64>, )*
        }

        impl Metrics {
            /// Every single-valued figure, in declaration order.
            pub fn figures(&self) -> Vec<Figure> {
                vec![$( Figure { name: stringify!($field), kind: Kind::$kind, help: $doc.trim(), value: self.$field }, )*]
            }

            /// Adds another hub's figures to these (counters and gauges alike).
            pub fn merge(&mut self, other: &Self) {
                $( self.$field += other.$field; )*
                $( for (key, count) in &other.$map { *self.$map.entry(key.clone()).or_default() += count; } )*
            }
        }
    };
}

metrics! {
    /// TCP connections handed to the hub.
    connections_accepted: Counter,
    /// Connections currently held, in any phase.
    connections_open: Gauge,
    /// Accept errors the shell reported (EMFILE and the like).
    accept_errors: Counter,
    /// Successful WebSocket upgrades.
    upgrades: Counter,
    /// Handshakes that did not complete within `handshake_timeout`.
    handshake_timeouts: Counter,
    /// Connections in their handshake (not yet upgraded or answered).
    handshaking: Gauge,
    /// Handshaking connections closed to make room past `limits.max_handshaking`.
    handshake_evictions: Counter,
    /// Connections closed at accept past `limits.max_handshaking_per_ip`.
    handshake_refusals: Counter,
    /// TLS handshakes completed.
    tls_handshakes: Counter,
    /// TLS connections closed for a TLS failure: not TLS, a failed handshake, a bad record, an alert.
    tls_failures: Counter,
    /// Connections closed for a missing or malformed PROXY protocol header.
    proxy_header_errors: Counter,
    /// Channels with at least one local subscriber (broadcast rooms included).
    channels: Gauge,
    /// Subscriptions held by local connections.
    subscriptions: Gauge,
    /// Data messages received from clients.
    messages_in: Counter,
    /// Data messages queued to clients.
    messages_out: Counter,
    /// Bytes read from sockets.
    bytes_in: Counter,
    /// Bytes queued to sockets.
    bytes_out: Counter,
    /// Messages not queued because a slow consumer's queue was full (policy `drop`).
    messages_dropped: Counter,
    /// Connections closed because their queue was full (policy `close`).
    slow_consumer_closes: Counter,
    /// Bytes queued and not yet written, over all connections.
    queued_bytes: Gauge,
    /// Connections closed because a pong came too late.
    pong_timeouts: Counter,
    /// Connections closed for silence past `idle_timeout`.
    idle_timeouts: Counter,
    /// Messages refused by the per-connection rate limit.
    rate_limited: Counter,
    /// Malformed or refused pub/sub requests (and malformed messages from other nodes).
    protocol_errors: Counter,
    /// Messages published through `POST /api/publish`.
    api_publishes: Counter,
    /// Publishes accepted from clients and the API (each counted once, before fan-out).
    publishes: Counter,
    /// Publishes not sent to other nodes because the broker link was down or its breaker open.
    broker_dropped: Counter,
    /// Pusher webhook events delivered (answered 2xx).
    webhooks_sent: Counter,
    /// Pusher webhook requests tried again after a failure.
    webhooks_retried: Counter,
    /// Pusher webhook events given up after `webhook_retry_for`.
    webhooks_failed: Counter,
    /// Pusher webhook events dropped because `webhook_queue` was full.
    webhooks_dropped: Counter,
    /// Pusher webhook events waiting for delivery.
    webhooks_queued: Gauge,
    /// Native-protocol tokens refused (connection, subscription and refresh tokens).
    auth_failures: Counter,
    /// Native subscriptions ended with `resubscribe` (a new epoch, or missed publications).
    resubscribes: Counter,
    /// Probes through Redis that did not come back to this node's subscription in time.
    broker_probe_failures: Counter,
    maps:
    /// Open WebSocket connections per route path (gauges).
    connections_by_route: String,
    /// Requests answered with an HTTP error, by status code.
    rejections_by_status: u16,
    /// Closes by close code (1006: ended without a close frame; `other`: codes RFC 6455 leaves undefined).
    closes_by_code: String,
}

impl Metrics {
    /// Counts one close with `code`.
    pub fn count_close(&mut self, code: u16) {
        let label = match code {
            1000..=1003 | 1005..=1015 => code.to_string(),
            _ => "other".to_owned(),
        };
        *self.closes_by_code.entry(label).or_default() += 1;
    }

    /// Counts one HTTP rejection with `status`.
    pub fn count_rejection(&mut self, status: u16) {
        *self.rejections_by_status.entry(status).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_figure_and_map() {
        let mut one = Metrics { messages_in: 2, queued_bytes: 5, ..Metrics::default() };
        one.count_close(1000);
        let mut two = Metrics { messages_in: 3, broker_dropped: 1, ..Metrics::default() };
        two.count_close(1000);
        two.count_rejection(429);
        one.merge(&two);
        assert_eq!((one.messages_in, one.queued_bytes, one.broker_dropped), (5, 5, 1));
        assert_eq!(one.closes_by_code.get("1000"), Some(&2));
        one.count_close(4000);
        one.count_close(4999);
        assert_eq!(one.closes_by_code.get("other"), Some(&2), "app-defined codes share one label");
        assert_eq!(one.rejections_by_status.get(&429), Some(&1));
        let figures = one.figures();
        assert_eq!(
            figures.iter().find(|f| f.name == "messages_in").map(|f| (f.kind, f.value)),
            Some((Kind::Counter, 5))
        );
        assert!(figures.iter().all(|f| !f.help.is_empty() && !f.help.starts_with(' ')));
    }
}
