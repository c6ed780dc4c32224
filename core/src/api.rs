//! Pure halves of the HTTP endpoints on the WebSocket port: metrics, stats, health and publish.
//!
//! The Prometheus text is written here rather than with `prometheus-client`: that crate takes outside data only
//! through a `'static` boxed `Collector` in a throwaway `Registry` (a copy of the snapshot per scrape), brings
//! `parking_lot` and `libc` into this I/O-free core for atomics we never use, and has had a 0.0.4 encoder only since 0.26.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::metrics::{Kind as MetricKind, Metrics};

/// `Content-Type` of the body that [`prometheus_text`] returns.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// State of the circuit breaker in front of the external broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokerState {
    /// Broker reachable; messages flow through it.
    Closed,
    /// Broker considered down; cross-node delivery is suspended.
    Open,
    /// Probing whether the broker is back.
    HalfOpen,
    /// No external broker: the in-memory one serves this node alone.
    Disabled,
    /// Redis answers, but the hub's own probe did not come back through its subscription in
    /// time: messages from other nodes may be missed (the link resubscribes).
    Deaf,
    /// A Redis Cluster master's connection is lost and being made again (to the promoted
    /// replica after a failover): its channels hear nothing meanwhile.
    Reconnecting,
}

impl BrokerState {
    /// The worse of two shards' states, for the node's: open, then half-open, then
    /// reconnecting, then deaf.
    pub(crate) fn worse(self, other: Self) -> Self {
        let rank = |s: Self| match s {
            Self::Disabled => 0,
            Self::Closed => 1,
            Self::Deaf => 2,
            Self::Reconnecting => 3,
            Self::HalfOpen => 4,
            Self::Open => 5,
        };
        if rank(other) > rank(self) { other } else { self }
    }

    /// The states `/metrics` has a series for (not `Disabled`).
    pub(crate) const REPORTED: [Self; 5] = [Self::Closed, Self::Open, Self::HalfOpen, Self::Deaf, Self::Reconnecting];

    /// Name used in the JSON endpoints and the `state` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Disabled => "disabled",
            Self::Deaf => "deaf",
            Self::Reconnecting => "reconnecting",
        }
    }
}

/// Facts about the node that the hub's [`Metrics`] do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// Identifier of this node in the cluster.
    pub node_id: String,
    /// Version of the running build.
    pub version: &'static str,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Whether the node is shutting down and refusing new connections.
    pub draining: bool,
    /// State of the broker link.
    pub broker: BrokerState,
    /// Open connections over the whole cluster, when the broker knows them.
    pub cluster_connections: Option<u64>,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Accumulates an exposition; each family is declared once, right before its samples, as 0.0.4 requires.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        for line in [["# HELP ", name, " ", help], ["# TYPE ", name, " ", kind]] {
            line.iter().for_each(|part| self.out.push_str(part));
            self.out.push('\n');
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                push_label_value(&mut self.out, text);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&value.to_string());
        self.out.push('\n');
    }

    fn counter(&mut self, field: &str, help: &str, value: u64) {
        let name = format!("switchboard_{field}_total");
        self.family(&name, Kind::Counter, help);
        self.sample(&name, &[], value);
    }

    fn gauge(&mut self, field: &str, help: &str, value: u64) {
        let name = format!("switchboard_{field}");
        self.family(&name, Kind::Gauge, help);
        self.sample(&name, &[], value);
    }

    fn labelled<K: ToString>(&mut self, name: &str, kind: Kind, help: &str, label: &str, map: &BTreeMap<K, u64>) {
        self.family(name, kind, help);
        for (key, value) in map {
            self.sample(name, &[(label, &key.to_string())], *value);
        }
    }
}

fn push_label_value(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
}

/// Renders `m` and `extra` in the Prometheus text exposition format 0.0.4.
pub(crate) fn prometheus_text(m: &Metrics, extra: &NodeInfo) -> String {
    let mut x = Exposition::default();
    for figure in m.figures() {
        match figure.kind {
            MetricKind::Counter => x.counter(figure.name, figure.help, figure.value),
            MetricKind::Gauge => x.gauge(figure.name, figure.help, figure.value),
        }
    }
    let route_help = "Open WebSocket connections per route.";
    x.labelled("switchboard_connections_by_route", Kind::Gauge, route_help, "route", &m.connections_by_route);
    let rejection_help = "Requests answered with an HTTP error, by status.";
    x.labelled("switchboard_rejections_total", Kind::Counter, rejection_help, "status", &m.rejections_by_status);
    x.labelled(
        "switchboard_closes_total",
        Kind::Counter,
        "Connection closes by close code.",
        "code",
        &m.closes_by_code,
    );

    x.gauge("uptime_seconds", "Seconds since the node started.", extra.uptime_secs);
    x.gauge("draining", "1 while the node is draining.", u64::from(extra.draining));
    if let Some(cluster) = extra.cluster_connections {
        x.gauge("cluster_connections", "Open connections over the whole cluster.", cluster);
    }
    // One series per state so that alerts can select `state="open"`; a disabled broker has none at 1.
    let name = "switchboard_broker_state";
    x.family(name, Kind::Gauge, "1 for the current state of the broker circuit breaker.");
    for state in BrokerState::REPORTED {
        x.sample(name, &[("state", state.as_str())], u64::from(extra.broker == state));
    }
    let name = "switchboard_build_info";
    x.family(name, Kind::Gauge, "Always 1; labels carry the build version and node id.");
    x.sample(name, &[("version", extra.version), ("node", &extra.node_id)], 1);
    x.out
}

/// Renders the body of `GET /api/stats`.
pub(crate) fn stats_json(m: &Metrics, info: &NodeInfo) -> String {
    json!({
        "node": info.node_id,
        "version": info.version,
        "uptime_secs": info.uptime_secs,
        "draining": info.draining,
        "connections": {
            "open": m.connections_open,
            "by_route": m.connections_by_route,
            "accepted": m.connections_accepted,
            "upgrades": m.upgrades,
            "cluster": info.cluster_connections,
        },
        "channels": m.channels,
        "subscriptions": m.subscriptions,
        "messages": {
            "in": m.messages_in,
            "out": m.messages_out,
            "dropped": m.messages_dropped,
            "publishes": m.publishes,
            "api_publishes": m.api_publishes,
            "broker_dropped": m.broker_dropped,
        },
        "bytes": { "in": m.bytes_in, "out": m.bytes_out, "queued": m.queued_bytes },
        "closes_by_code": m.closes_by_code,
        "rejections_by_status": m.rejections_by_status,
        "heartbeat": {
            "pong_timeouts": m.pong_timeouts,
            "idle_timeouts": m.idle_timeouts,
            "handshake_timeouts": m.handshake_timeouts,
        },
        "handshakes": {
            "in_progress": m.handshaking,
            "evictions": m.handshake_evictions,
            "refusals": m.handshake_refusals,
        },
        "webhooks": {
            "sent": m.webhooks_sent,
            "retried": m.webhooks_retried,
            "failed": m.webhooks_failed,
            "dropped": m.webhooks_dropped,
            "queued": m.webhooks_queued,
        },
        "proxy_header_errors": m.proxy_header_errors,
        "auth_failures": m.auth_failures,
        "resubscribes": m.resubscribes,
        "rate_limited": m.rate_limited,
        "protocol_errors": m.protocol_errors,
        "slow_consumer_closes": m.slow_consumer_closes,
        "accept_errors": m.accept_errors,
        "broker": info.broker.as_str(),
    })
    .to_string()
}

/// Status code and body of `GET /healthz`.
pub(crate) fn healthz_json(info: &NodeInfo) -> (u16, String) {
    // Load balancers act on the code: draining must take the node out, a broken broker must not.
    if info.draining {
        return (503, json!({ "status": "draining" }).to_string());
    }
    match info.broker {
        BrokerState::Open | BrokerState::HalfOpen | BrokerState::Deaf | BrokerState::Reconnecting => {
            (200, json!({ "status": "degraded", "broker": info.broker.as_str() }).to_string())
        }
        BrokerState::Closed | BrokerState::Disabled => (200, json!({ "status": "ok" }).to_string()),
    }
}

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishTarget {
    /// Subscribers of one channel.
    Channel(String),
    /// Every connection on one route.
    Route(String),
}

/// A validated body of `POST /api/publish`.
#[derive(Debug, Clone)]
pub(crate) struct PublishRequest {
    /// Where the message goes.
    pub target: PublishTarget,
    /// The message, as the JSON text the caller sent.
    pub data: Box<RawValue>,
}

/// Checks the `Authorization` header of a publish against the configured API key.
///
/// The scheme is matched without regard to case (`bearer` is accepted), as RFC 9110 says of auth schemes.
pub(crate) fn check_auth(configured_key: &str, authorization: Option<&str>) -> Result<(), (u16, &'static str)> {
    if configured_key.is_empty() {
        return Err((404, "publishing is disabled: no api_key configured"));
    }
    let Some(token) = authorization.and_then(bearer_token) else {
        return Err((401, "missing Authorization: Bearer <api_key>"));
    };
    if keys_match(configured_key.as_bytes(), token.as_bytes()) { Ok(()) } else { Err((403, "wrong api key")) }
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes were right.
pub(crate) fn keys_match(expected: &[u8], given: &[u8]) -> bool {
    let diff = expected.iter().enumerate().fold(0u8, |acc, (i, &e)| acc | (e ^ given.get(i).map_or(0xff, |&g| g)));
    (diff == 0) & (expected.len() == given.len())
}

const PUBLISH_SHAPE: &str = "a JSON object with `channel` or `route`, and `data`";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    route: Option<String>,
    data: Box<RawValue>,
}

/// Parses and validates the body of `POST /api/publish`.
pub(crate) fn parse_publish(body: &[u8], max_channel_bytes: usize) -> Result<PublishRequest, String> {
    // Syntax is checked on its own first because serde would also read a struct from a JSON array.
    let raw: &RawValue = serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err(format!("body must be {PUBLISH_SHAPE}"));
    }
    let parsed: PublishBody = serde_json::from_str(raw.get()).map_err(|e| {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        text.strip_suffix(&position).unwrap_or(&text).to_owned()
    })?;
    let target = match (parsed.channel, parsed.route) {
        (Some(channel), None) => {
            let valid_chars =
                channel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
            if channel.is_empty() || channel.len() > max_channel_bytes || !valid_chars {
                return Err(format!("channel name must be 1..={max_channel_bytes} bytes of [A-Za-z0-9_.:-]"));
            }
            PublishTarget::Channel(channel)
        }
        (None, Some(route)) => {
            if !route.starts_with('/') {
                return Err("route must be a path starting with '/'".to_owned());
            }
            PublishTarget::Route(route)
        }
        _ => return Err("give exactly one of `channel` or `route`".to_owned()),
    };
    Ok(PublishRequest { target, data: parsed.data })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    type Labels = Vec<(String, String)>;
    /// Each series of an exposition, by name and labels, with its value.
    type Series = BTreeMap<(String, Labels), f64>;
    type ExpectedSample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    type AuthCase<'a> = (&'a str, Option<&'a str>, Result<(), (u16, &'static str)>);

    fn info() -> NodeInfo {
        NodeInfo {
            node_id: "node-\"a\"\\b\nc".to_owned(),
            version: "1.2.3",
            uptime_secs: 3600,
            draining: false,
            broker: BrokerState::Closed,
            cluster_connections: Some(900),
        }
    }

    /// Every field non-zero and distinct, so each can be found by its value.
    fn full_metrics() -> Metrics {
        Metrics {
            connections_accepted: 1,
            connections_open: 2,
            connections_by_route: BTreeMap::from([("/chat".to_owned(), 3), ("/q\"uo\\te\n".to_owned(), 4)]),
            accept_errors: 5,
            upgrades: 6,
            rejections_by_status: BTreeMap::from([(429, 7), (400, 8)]),
            handshake_timeouts: 9,
            channels: 10,
            subscriptions: 11,
            messages_in: 12,
            messages_out: 13,
            bytes_in: 14,
            bytes_out: 15,
            messages_dropped: 16,
            slow_consumer_closes: 17,
            queued_bytes: 18,
            closes_by_code: BTreeMap::from([("1000".into(), 19), ("1001".into(), 20), ("1006".into(), 21)]),
            pong_timeouts: 22,
            idle_timeouts: 23,
            rate_limited: 24,
            protocol_errors: 25,
            api_publishes: 26,
            publishes: 27,
            broker_dropped: 28,
            handshaking: 29,
            handshake_evictions: 30,
            handshake_refusals: 31,
            proxy_header_errors: 32,
            webhooks_sent: 33,
            webhooks_retried: 34,
            webhooks_failed: 35,
            webhooks_dropped: 36,
            webhooks_queued: 37,
            auth_failures: 38,
            resubscribes: 39,
            broker_probe_failures: 40,
            tls_handshakes: 41,
            tls_failures: 42,
        }
    }

    fn is_name(s: &str, colon_ok: bool) -> bool {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon_ok && c == ':'));
        first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon_ok && c == ':'))
    }

    /// Parses `{a="x",b="y"}` (escapes included) at the start of `s`; returns the unescaped pairs and the rest.
    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let mut pairs = Vec::new();
        let mut rest = s.strip_prefix('{').ok_or("labels must open with {")?;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((pairs, after));
            }
            if !pairs.is_empty() {
                rest = rest.strip_prefix(',').ok_or_else(|| format!("expected , in {s}"))?;
            }
            let (name, after) = rest.split_once("=\"").ok_or_else(|| format!("expected =\" in {s}"))?;
            if !is_name(name, false) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {s}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err("raw newline in label value".to_owned()),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {s}")),
                }
            };
            pairs.push((name.to_owned(), value));
            rest = &after[end + 1..];
        }
    }

    /// Checks the 0.0.4 text format line by line; returns each series (name and labels) with its value.
    fn validate(text: &str) -> Result<Series, String> {
        let mut series = BTreeMap::new();
        let mut declared = BTreeSet::new();
        // (name, HELP seen, TYPE seen) of the family whose lines we are in.
        let mut current: Option<(String, bool, bool)> = None;
        let body = text.strip_suffix('\n').ok_or("output must end with a newline")?;
        for line in body.split('\n') {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').ok_or_else(|| format!("HELP without text: {line}"))?;
                if !is_name(name, true) || !declared.insert(name.to_owned()) {
                    return Err(format!("bad or repeated family {name}"));
                }
                current = Some((name.to_owned(), true, false));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| format!("TYPE without type: {line}"))?;
                match &mut current {
                    Some((family, true, typed @ false)) if family == name => *typed = true,
                    _ => return Err(format!("TYPE not right after its HELP: {line}")),
                }
                match kind {
                    "counter" if name.ends_with("_total") => {}
                    "gauge" => {}
                    _ => return Err(format!("unexpected type in {line}")),
                }
            } else if line.starts_with('#') || line.is_empty() {
                return Err(format!("unexpected line {line:?}"));
            } else {
                let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value: {line}"))?;
                let name = &line[..name_end];
                match &current {
                    Some((family, true, true)) if family == name => {}
                    _ => return Err(format!("sample outside its family's block: {line}")),
                }
                let (labels, rest) = if line[name_end..].starts_with('{') {
                    parse_labels(&line[name_end..])?
                } else {
                    (Vec::new(), &line[name_end..])
                };
                let value = rest.strip_prefix(' ').ok_or_else(|| format!("no space before value: {line}"))?;
                let value: f64 = value.parse().map_err(|_| format!("value not a float: {line}"))?;
                let mut label_names = BTreeSet::new();
                if !labels.iter().all(|(l, _)| label_names.insert(l.clone())) {
                    return Err(format!("repeated label: {line}"));
                }
                if series.insert((name.to_owned(), labels), value).is_some() {
                    return Err(format!("duplicate series: {line}"));
                }
            }
        }
        Ok(series)
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> (String, Labels) {
        (name.to_owned(), labels.iter().map(|(l, v)| ((*l).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn prometheus_output_is_valid_and_carries_every_field() {
        let text = prometheus_text(&full_metrics(), &info());
        let series = match validate(&text) {
            Ok(series) => series,
            Err(e) => panic!("{e}\n---\n{text}"),
        };
        let expected: &[ExpectedSample<'_>] = &[
            ("switchboard_connections_accepted_total", &[], 1.0),
            ("switchboard_connections_open", &[], 2.0),
            ("switchboard_connections_by_route", &[("route", "/chat")], 3.0),
            ("switchboard_connections_by_route", &[("route", "/q\"uo\\te\n")], 4.0),
            ("switchboard_accept_errors_total", &[], 5.0),
            ("switchboard_upgrades_total", &[], 6.0),
            ("switchboard_rejections_total", &[("status", "429")], 7.0),
            ("switchboard_rejections_total", &[("status", "400")], 8.0),
            ("switchboard_handshake_timeouts_total", &[], 9.0),
            ("switchboard_channels", &[], 10.0),
            ("switchboard_subscriptions", &[], 11.0),
            ("switchboard_messages_in_total", &[], 12.0),
            ("switchboard_messages_out_total", &[], 13.0),
            ("switchboard_bytes_in_total", &[], 14.0),
            ("switchboard_bytes_out_total", &[], 15.0),
            ("switchboard_messages_dropped_total", &[], 16.0),
            ("switchboard_slow_consumer_closes_total", &[], 17.0),
            ("switchboard_queued_bytes", &[], 18.0),
            ("switchboard_closes_total", &[("code", "1000")], 19.0),
            ("switchboard_closes_total", &[("code", "1001")], 20.0),
            ("switchboard_closes_total", &[("code", "1006")], 21.0),
            ("switchboard_pong_timeouts_total", &[], 22.0),
            ("switchboard_idle_timeouts_total", &[], 23.0),
            ("switchboard_rate_limited_total", &[], 24.0),
            ("switchboard_protocol_errors_total", &[], 25.0),
            ("switchboard_api_publishes_total", &[], 26.0),
            ("switchboard_publishes_total", &[], 27.0),
            ("switchboard_broker_dropped_total", &[], 28.0),
            ("switchboard_handshaking", &[], 29.0),
            ("switchboard_handshake_evictions_total", &[], 30.0),
            ("switchboard_handshake_refusals_total", &[], 31.0),
            ("switchboard_proxy_header_errors_total", &[], 32.0),
            ("switchboard_webhooks_sent_total", &[], 33.0),
            ("switchboard_webhooks_retried_total", &[], 34.0),
            ("switchboard_webhooks_failed_total", &[], 35.0),
            ("switchboard_webhooks_dropped_total", &[], 36.0),
            ("switchboard_webhooks_queued", &[], 37.0),
            ("switchboard_auth_failures_total", &[], 38.0),
            ("switchboard_resubscribes_total", &[], 39.0),
            ("switchboard_broker_probe_failures_total", &[], 40.0),
            ("switchboard_tls_handshakes_total", &[], 41.0),
            ("switchboard_tls_failures_total", &[], 42.0),
            ("switchboard_uptime_seconds", &[], 3600.0),
            ("switchboard_draining", &[], 0.0),
            ("switchboard_cluster_connections", &[], 900.0),
            ("switchboard_broker_state", &[("state", "closed")], 1.0),
            ("switchboard_broker_state", &[("state", "open")], 0.0),
            ("switchboard_broker_state", &[("state", "half_open")], 0.0),
            ("switchboard_broker_state", &[("state", "deaf")], 0.0),
            ("switchboard_broker_state", &[("state", "reconnecting")], 0.0),
            ("switchboard_build_info", &[("version", "1.2.3"), ("node", "node-\"a\"\\b\nc")], 1.0),
        ];
        for (name, labels, value) in expected {
            assert_eq!(series.get(&key(name, labels)), Some(value), "{name} {labels:?}");
        }
        assert_eq!(series.len(), expected.len(), "unexpected extra series in\n{text}");
        assert!(text.contains("switchboard_connections_by_route{route=\"/q\\\"uo\\\\te\\n\"} 4\n"), "{text}");
    }

    #[test]
    fn prometheus_output_without_samples_or_cluster_is_valid() {
        let node = NodeInfo { draining: true, broker: BrokerState::Disabled, cluster_connections: None, ..info() };
        let text = prometheus_text(&Metrics::default(), &node);
        let series = validate(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        assert_eq!(series.get(&key("switchboard_draining", &[])), Some(&1.0));
        assert!(!text.contains("switchboard_cluster_connections"));
        assert!(!text.contains("switchboard_closes_total{"));
        let broker_on: f64 = series.iter().filter(|((n, _), _)| n == "switchboard_broker_state").map(|(_, v)| v).sum();
        assert_eq!(broker_on, 0.0);
    }

    #[test]
    fn prometheus_broker_state_marks_the_current_state() {
        for state in BrokerState::REPORTED {
            let text = prometheus_text(&Metrics::default(), &NodeInfo { broker: state, ..info() });
            let series = validate(&text).unwrap_or_else(|e| panic!("{e}"));
            for other in BrokerState::REPORTED {
                let value = series.get(&key("switchboard_broker_state", &[("state", other.as_str())]));
                assert_eq!(value, Some(&f64::from(u8::from(other == state))), "{state:?} / {other:?}");
            }
        }
    }

    #[test]
    fn validator_rejects_broken_expositions() {
        let bad = [
            "x 1",                                                      // no trailing newline
            "x 1\n",                                                    // no HELP/TYPE
            "# TYPE x gauge\n# HELP x h\nx 1\n",                        // TYPE before HELP
            "# HELP x h\n# TYPE x gauge\nx one\n",                      // value not a float
            "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n",                   // duplicate series
            "# HELP x h\n# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", // duplicate labelled series
            "# HELP 1x h\n# TYPE 1x gauge\n1x 1\n",                     // bad name
            "# HELP x h\n# TYPE x gauge\ny 1\n",                        // sample of another family
            "# HELP x h\n# TYPE x gauge\nx{a=\"\\q\"} 1\n",             // bad escape
            "# HELP x h\n# TYPE x counter\nx 1\n",                      // counter without _total
        ];
        for text in bad {
            assert!(validate(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn stats_json_carries_the_values() {
        let v: Value = match serde_json::from_str(&stats_json(&full_metrics(), &info())) {
            Ok(v) => v,
            Err(e) => panic!("stats is not JSON: {e}"),
        };
        let expected = json!({
            "node": "node-\"a\"\\b\nc",
            "version": "1.2.3",
            "uptime_secs": 3600,
            "draining": false,
            "connections": {
                "open": 2,
                "by_route": { "/chat": 3, "/q\"uo\\te\n": 4 },
                "accepted": 1,
                "upgrades": 6,
                "cluster": 900,
            },
            "channels": 10,
            "subscriptions": 11,
            "messages": { "in": 12, "out": 13, "dropped": 16, "publishes": 27, "api_publishes": 26, "broker_dropped": 28 },
            "bytes": { "in": 14, "out": 15, "queued": 18 },
            "closes_by_code": { "1000": 19, "1001": 20, "1006": 21 },
            "rejections_by_status": { "400": 8, "429": 7 },
            "heartbeat": { "pong_timeouts": 22, "idle_timeouts": 23, "handshake_timeouts": 9 },
            "handshakes": { "in_progress": 29, "evictions": 30, "refusals": 31 },
            "webhooks": { "sent": 33, "retried": 34, "failed": 35, "dropped": 36, "queued": 37 },
            "proxy_header_errors": 32,
            "auth_failures": 38,
            "resubscribes": 39,
            "rate_limited": 24,
            "protocol_errors": 25,
            "slow_consumer_closes": 17,
            "accept_errors": 5,
            "broker": "closed",
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn stats_json_cluster_null_and_broker_names() {
        for (state, name) in [
            (BrokerState::Closed, "closed"),
            (BrokerState::Open, "open"),
            (BrokerState::HalfOpen, "half_open"),
            (BrokerState::Disabled, "disabled"),
        ] {
            let node = NodeInfo { broker: state, cluster_connections: None, ..info() };
            let v: Value = serde_json::from_str(&stats_json(&Metrics::default(), &node)).unwrap_or_default();
            assert_eq!(v["broker"], name);
            assert_eq!(v["connections"]["cluster"], Value::Null);
            assert_eq!(v["closes_by_code"], json!({}));
        }
    }

    #[test]
    fn healthz_statuses() {
        let cases = [
            (false, BrokerState::Closed, 200, json!({ "status": "ok" })),
            (false, BrokerState::Disabled, 200, json!({ "status": "ok" })),
            (false, BrokerState::Open, 200, json!({ "status": "degraded", "broker": "open" })),
            (false, BrokerState::HalfOpen, 200, json!({ "status": "degraded", "broker": "half_open" })),
            (false, BrokerState::Deaf, 200, json!({ "status": "degraded", "broker": "deaf" })),
            (false, BrokerState::Reconnecting, 200, json!({ "status": "degraded", "broker": "reconnecting" })),
            (true, BrokerState::Closed, 503, json!({ "status": "draining" })),
            (true, BrokerState::Open, 503, json!({ "status": "draining" })),
        ];
        for (draining, broker, code, body) in cases {
            let (got_code, got_body) = healthz_json(&NodeInfo { draining, broker, ..info() });
            assert_eq!(got_code, code, "{draining} {broker:?}");
            assert_eq!(serde_json::from_str::<Value>(&got_body).ok(), Some(body), "{draining} {broker:?}");
        }
    }

    #[test]
    fn auth_table() {
        let missing = Err((401, "missing Authorization: Bearer <api_key>"));
        let wrong = Err((403, "wrong api key"));
        let cases: &[AuthCase<'_>] = &[
            ("", Some("Bearer s3cret"), Err((404, "publishing is disabled: no api_key configured"))),
            ("", None, Err((404, "publishing is disabled: no api_key configured"))),
            ("s3cret", None, missing),
            ("s3cret", Some(""), missing),
            ("s3cret", Some("Bearer"), missing),
            ("s3cret", Some("Bearer "), missing),
            ("s3cret", Some("Basic x"), missing),
            ("s3cret", Some("s3cret"), missing),
            ("s3cret", Some("Bearer s3creT"), wrong),
            ("s3cret", Some("Bearer s3cre"), wrong),
            ("s3cret", Some("Bearer s3cret2"), wrong),
            ("s3cret", Some("Bearer s3cret s3cret"), wrong),
            ("s3cret", Some("Bearer s3cret"), Ok(())),
            ("s3cret", Some("bearer s3cret"), Ok(())),
            ("s3cret", Some("BEARER   s3cret "), Ok(())),
        ];
        for (configured, header, expected) in cases {
            assert_eq!(check_auth(configured, *header), *expected, "{configured:?} {header:?}");
        }
    }

    /// docs/METRICS.md is the reference for the names, and the Grafana dashboard is built on
    /// them: a renamed or new series must show up in both places.
    #[test]
    fn the_docs_name_every_series_and_the_dashboard_asks_for_no_other() {
        const DOC: &str = include_str!("../../docs/METRICS.md");
        const DASHBOARD: &str = include_str!("../../docs/grafana/switchboard.json");
        let text = prometheus_text(&full_metrics(), &info());
        let families: BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(families.len() > 30, "{families:?}");
        for family in &families {
            assert!(DOC.contains(&format!("`{family}`")), "docs/METRICS.md does not name {family}");
        }
        let asked: BTreeSet<&str> = DASHBOARD
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("switchboard_"))
            .collect();
        assert!(asked.len() > 10, "{asked:?}");
        for name in asked {
            assert!(
                families.contains(name),
                "docs/grafana/switchboard.json asks for {name}, which /metrics never writes"
            );
        }
    }

    #[test]
    fn keys_match_needs_same_length_and_bytes() {
        assert!(keys_match(b"abc", b"abc"));
        assert!(!keys_match(b"abc", b"ab"));
        assert!(!keys_match(b"ab", b"abc"));
        assert!(!keys_match(b"abc", b"abd"));
        assert!(!keys_match(b"\xff", b""));
    }

    #[test]
    fn publish_table() {
        let ok: &[(&str, PublishTarget, &str)] = &[
            (r#"{"channel":"news","data":{"a":1}}"#, PublishTarget::Channel("news".into()), r#"{"a":1}"#),
            (r#"{"data":"hi","channel":"a.b:c-d_9"}"#, PublishTarget::Channel("a.b:c-d_9".into()), r#""hi""#),
            (r#"{"route":"/chat","data":[1, 2]}"#, PublishTarget::Route("/chat".into()), "[1, 2]"),
            (r#"{"channel":"x","route":null,"data":null}"#, PublishTarget::Channel("x".into()), "null"),
            (r#" {"channel":"x","data":1} "#, PublishTarget::Channel("x".into()), "1"),
        ];
        for (body, target, data) in ok {
            match parse_publish(body.as_bytes(), 16) {
                Ok(req) => {
                    assert_eq!(&req.target, target, "{body}");
                    assert_eq!(req.data.get(), *data, "{body}");
                }
                Err(e) => panic!("{body}: {e}"),
            }
        }
        let channel_rule = "channel name must be 1..=16 bytes of [A-Za-z0-9_.:-]";
        let one_of = "give exactly one of `channel` or `route`";
        let err: &[(&[u8], &str)] = &[
            (b"", "body is not valid JSON: EOF while parsing a value at line 1 column 0"),
            (b"hello", "body is not valid JSON: expected value at line 1 column 1"),
            (b"{\"channel\":\"x\",\"data\":1} 2", "body is not valid JSON: trailing characters at line 1 column 26"),
            (b"{\"channel\":\"x\",\"data\":}", "body is not valid JSON: expected value at line 1 column 23"),
            (b"[1]", "body must be a JSON object with `channel` or `route`, and `data`"),
            (br#"["x",null,1]"#, "body must be a JSON object with `channel` or `route`, and `data`"),
            (b" 7", "body must be a JSON object with `channel` or `route`, and `data`"),
            (
                b"{\"channel\":\"\xff\",\"data\":1}",
                "body is not valid JSON: invalid unicode code point at line 1 column 13",
            ),
            (br#"{"channel":"x"}"#, "missing field `data`"),
            (br#"{"data":1}"#, one_of),
            (br#"{"channel":"x","route":"/chat","data":1}"#, one_of),
            (br#"{"channel":null,"route":null,"data":1}"#, one_of),
            (
                br#"{"channel":"x","data":1,"extra":2}"#,
                "unknown field `extra`, expected one of `channel`, `route`, `data`",
            ),
            (br#"{"channel":"x","channel":"y","data":1}"#, "duplicate field `channel`"),
            (br#"{"channel":5,"data":1}"#, "invalid type: integer `5`, expected a string"),
            (br#"{"channel":"","data":1}"#, channel_rule),
            (br#"{"channel":"a b","data":1}"#, channel_rule),
            (br#"{"channel":"caf\u00e9","data":1}"#, channel_rule),
            (br#"{"channel":"abcdefghijklmnopq","data":1}"#, channel_rule),
            (br#"{"route":"chat","data":1}"#, "route must be a path starting with '/'"),
            (br#"{"route":"","data":1}"#, "route must be a path starting with '/'"),
        ];
        for (body, message) in err {
            match parse_publish(body, 16) {
                Ok(req) => panic!("{:?} parsed as {req:?}", String::from_utf8_lossy(body)),
                Err(e) => assert_eq!(e, *message, "{:?}", String::from_utf8_lossy(body)),
            }
        }
        assert!(parse_publish(br#"{"channel":"abcdefghijklmnop","data":1}"#, 16).is_ok());
        assert!(parse_publish(br#"{"channel":"x","data":1}"#, 0).is_err());
    }

    fn json_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z/ .:\\\\\"-]{0,20}".prop_map(|s| format!("{s:?}")),
            Just("{\"a\":[1,{}]}".to_owned()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..200) {
            let _ = parse_publish(&body, max);
        }

        #[test]
        fn near_valid_bodies_never_panic_and_ok_means_valid(
            fields in proptest::collection::vec(
                (prop_oneof![Just("channel"), Just("route"), Just("data"), Just("x")], json_fragment()),
                0..5,
            ),
            max in 0usize..40,
        ) {
            let body = format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
            );
            if let Ok(req) = parse_publish(body.as_bytes(), max) {
                match req.target {
                    PublishTarget::Channel(c) => prop_assert!(!c.is_empty() && c.len() <= max),
                    PublishTarget::Route(r) => prop_assert!(r.starts_with('/')),
                }
                prop_assert!(serde_json::from_str::<Value>(req.data.get()).is_ok());
            }
        }
    }
}
