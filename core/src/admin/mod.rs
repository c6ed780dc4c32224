//! Pure halves of the admin page and API (`[admin]`): the credential check, the figures each
//! hub reports to the others, and how those reports add up to nodes and channels.
//!
//! Every hub with `admin.enabled` publishes a [`Report`] of itself once a second on the
//! [`CHANNEL`] broker channel (the in-process bus to the node's other workers, Redis to the
//! other nodes), and keeps the latest report of every other hub. Any hub can then answer
//! for the whole cluster from memory: no request waits on Redis. A hub silent for
//! [`STALE_AFTER`] is forgotten.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::keys_match;
use crate::auth::base64::{Alphabet, decode};
use crate::config::AdminConfig;

/// The page: one HTML file with its CSS and JS inline, no framework, no CDN.
pub(crate) const PAGE: &str = include_str!("index.html");

/// The broker channel hubs exchange reports and disconnect orders on (no client channel name
/// holds `/`, so none can subscribe to or publish on it).
pub(crate) const CHANNEL: &str = "admin//hubs";

/// How often a hub reports itself (and measures its message rates).
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A hub whose report is older than this is taken for gone.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(4);

/// Most channels one hub lists in its report (the busiest first); the rest are counted only.
pub(crate) const MAX_REPORTED_CHANNELS: usize = 1000;

/// Checks a request's credential: `Authorization: Bearer <token or password>`, or HTTP
/// Basic with the password (any user name). Compared in constant time.
pub(crate) fn check_auth(admin: &AdminConfig, authorization: Option<&str>) -> Result<(), (u16, &'static str)> {
    let Some((scheme, given)) = authorization.and_then(|h| h.trim().split_once(' ')) else {
        return Err((401, "sign in: Authorization: Bearer <admin token or password>, or Basic"));
    };
    let given = given.trim();
    let matches = |secret: &str| !secret.is_empty() & keys_match(secret.as_bytes(), given.as_bytes());
    let ok = if scheme.eq_ignore_ascii_case("bearer") {
        // Both are checked, so the time taken does not tell which one was close.
        matches(&admin.token) | matches(&admin.password)
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = decode(given, Alphabet::Standard).and_then(|b| String::from_utf8(b).ok());
        let password = decoded.as_deref().and_then(|d| d.split_once(':')).map_or("", |(_, p)| p);
        !admin.password.is_empty() && keys_match(admin.password.as_bytes(), password.as_bytes())
    } else {
        false
    };
    if ok { Ok(()) } else { Err((401, "wrong admin credential")) }
}

/// What one hub (a worker of a node) tells the others about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The node's id.
    pub node: String,
    /// The worker within the node.
    pub worker: u32,
    /// The build's version.
    pub version: String,
    /// Seconds since the hub's first input.
    pub uptime_secs: u64,
    /// The node is draining.
    pub draining: bool,
    /// The broker link's state (`api::BrokerState::as_str`).
    pub broker: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Subscriptions held by its connections.
    pub subscriptions: u64,
    /// Channels with a subscriber here (may exceed `channels_listed`).
    pub channel_count: u64,
    /// Data messages received from clients, and queued to them, since start.
    pub messages_in: u64,
    /// See `messages_in`.
    pub messages_out: u64,
    /// Bytes read from and queued to sockets since start.
    pub bytes_in: u64,
    /// See `bytes_in`.
    pub bytes_out: u64,
    /// Messages per second in and out over the last report interval.
    pub rate_in: f64,
    /// See `rate_in`.
    pub rate_out: f64,
    /// Its busiest channels and their local subscriber counts.
    pub channels: Vec<(String, u64)>,
}

/// A message on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Message {
    /// A hub's latest figures.
    Report(Report),
    /// Close every matching connection.
    Disconnect(Target),
    /// The hub holding `connection` is asked for its details (`GET {path}/api/connection`).
    Describe {
        /// Matches the answer to the request.
        token: u64,
        /// The connection's name.
        connection: String,
    },
    /// The answer to a `Describe`, for the hub `to` (node, worker) that asked.
    Described {
        /// The `Describe`'s token.
        token: u64,
        /// The hub that asked.
        to: (String, u32),
        /// `None` when the connection is not open.
        details: Option<serde_json::Value>,
    },
}

/// Whom a disconnect is for (`POST {path}/api/disconnect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum Target {
    /// One connection, by the name its `welcome` (or presence) gives.
    Connection(String),
    /// Every connection of a user: a native token's `sub` or a Pusher signed-in user id.
    User(String),
}

/// A node as the admin API shows it: its hubs' reports added up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct NodeView {
    id: String,
    version: String,
    uptime_secs: u64,
    workers: u32,
    draining: bool,
    broker: String,
    connections: u64,
    subscriptions: u64,
    channels: u64,
    messages_in: u64,
    messages_out: u64,
    msgs_in_per_sec: f64,
    msgs_out_per_sec: f64,
    bytes_in: u64,
    bytes_out: u64,
}

/// The hubs' reports grouped by node, in node id order.
pub(crate) fn nodes<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Vec<NodeView> {
    let mut by_node: BTreeMap<&str, NodeView> = BTreeMap::new();
    for r in reports {
        let node = by_node.entry(&r.node).or_insert_with(|| NodeView {
            id: r.node.clone(),
            version: r.version.clone(),
            broker: r.broker.clone(),
            ..NodeView::default()
        });
        node.workers += 1;
        node.uptime_secs = node.uptime_secs.max(r.uptime_secs);
        node.draining |= r.draining;
        // The node's broker state is its worst hub's (see `BrokerState::worse`).
        if broker_rank(&r.broker) > broker_rank(&node.broker) {
            node.broker.clone_from(&r.broker);
        }
        node.connections += r.connections;
        node.subscriptions += r.subscriptions;
        node.channels += r.channel_count;
        node.messages_in += r.messages_in;
        node.messages_out += r.messages_out;
        node.msgs_in_per_sec += r.rate_in;
        node.msgs_out_per_sec += r.rate_out;
        node.bytes_in += r.bytes_in;
        node.bytes_out += r.bytes_out;
    }
    by_node.into_values().collect()
}

fn broker_rank(state: &str) -> u8 {
    match state {
        "open" => 4,
        "half_open" => 3,
        "deaf" => 2,
        "closed" => 1,
        _ => 0,
    }
}

/// The body of `GET {path}/api/nodes`: every node and the cluster's totals.
pub(crate) fn nodes_json(this_node: &str, nodes: &[NodeView]) -> String {
    let sum = |f: fn(&NodeView) -> u64| nodes.iter().map(f).sum::<u64>();
    let rate = |f: fn(&NodeView) -> f64| nodes.iter().map(f).sum::<f64>();
    serde_json::json!({
        "this_node": this_node,
        "nodes": nodes,
        "totals": {
            "nodes": nodes.len(),
            "connections": sum(|n| n.connections),
            "subscriptions": sum(|n| n.subscriptions),
            "msgs_in_per_sec": rate(|n| n.msgs_in_per_sec),
            "msgs_out_per_sec": rate(|n| n.msgs_out_per_sec),
            "bytes_in": sum(|n| n.bytes_in),
            "bytes_out": sum(|n| n.bytes_out),
        },
    })
    .to_string()
}

/// What `GET {path}/api/channels` may filter by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChannelFilter {
    /// Names containing this (empty: any).
    pub contains: String,
    /// At least this many subscribers in the cluster.
    pub min_subscribers: u64,
    /// At most this many channels listed (the busiest).
    pub limit: usize,
}

/// The body of `GET {path}/api/channels`: channels over every hub's report, busiest first.
pub(crate) fn channels_json<'a>(reports: impl IntoIterator<Item = &'a Report>, filter: &ChannelFilter) -> String {
    let mut counts: BTreeMap<&str, (u64, Vec<&str>)> = BTreeMap::new();
    for r in reports {
        for (name, subscribers) in &r.channels {
            let entry = counts.entry(name).or_default();
            entry.0 += subscribers;
            if !entry.1.contains(&r.node.as_str()) {
                entry.1.push(&r.node);
            }
        }
    }
    let mut matching: Vec<(&str, u64, Vec<&str>)> = counts
        .into_iter()
        .filter(|(name, (subscribers, _))| name.contains(&filter.contains) && *subscribers >= filter.min_subscribers)
        .map(|(name, (subscribers, nodes))| (name, subscribers, nodes))
        .collect();
    let total = matching.len();
    matching.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    matching.truncate(filter.limit);
    let listed: Vec<_> = matching
        .into_iter()
        .map(|(name, subscribers, nodes)| serde_json::json!({ "name": name, "subscribers": subscribers, "nodes": nodes }))
        .collect();
    serde_json::json!({ "total": total, "channels": listed }).to_string()
}

#[cfg(test)]
mod tests;
