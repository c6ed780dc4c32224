//! Server configuration: TOML schema, defaults, parsing with precise error locations, validation.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::de::{DeTable, DeValue};

use crate::proxy::Cidr;

/// Whole-server configuration, as read from `switchboard.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and handshake settings.
    pub server: ServerConfig,
    /// Connection and message size limits.
    pub limits: LimitsConfig,
    /// Ping/pong keepalive settings.
    pub heartbeat: HeartbeatConfig,
    /// Per-connection inbound message rate limiting.
    pub rate_limit: RateLimitConfig,
    /// permessage-deflate settings.
    pub compression: CompressionConfig,
    /// Pub/sub protocol limits.
    pub pubsub: PubSubConfig,
    /// HTTP side endpoints (publish API, metrics).
    pub http: HttpConfig,
    /// Cross-node message broker.
    pub broker: BrokerConfig,
    /// Graceful shutdown (connection draining).
    pub drain: DrainConfig,
    /// WebSocket routes (`[[route]]`); a file without any keeps the three defaults.
    // Last so the serializer emits `[[route]]` after all plain sections.
    pub route: Vec<RouteConfig>,
}

/// `[server]`: listener and handshake settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address to listen on; must parse as `SocketAddr`.
    pub listen: String,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Time allowed for the HTTP upgrade handshake.
    #[serde(with = "duration_serde")]
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours.
    #[serde(with = "duration_serde")]
    pub close_timeout: Duration,
    /// Maximum size of the handshake request head in bytes (at least 256).
    pub max_header_bytes: usize,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers name the client; empty trusts none.
    pub trusted_proxies: Vec<Cidr>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client.
    pub proxy_protocol: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            workers: 0,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

/// What to do with a connection whose send queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close the connection.
    #[default]
    Close,
    /// Drop the message for that connection and keep it open.
    Drop,
}

/// `[limits]`: connection and message size limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Maximum concurrent connections for the whole node.
    pub max_connections: usize,
    /// Maximum concurrent connections per client IP; 0 means unlimited.
    pub max_connections_per_ip: usize,
    /// Sustained new connections per second per IP; 0 means unlimited.
    pub connect_rate_per_ip: f64,
    /// Burst allowance for `connect_rate_per_ip`.
    pub connect_burst_per_ip: u32,
    /// Largest reassembled message accepted.
    pub max_message_bytes: Size,
    /// Largest single frame accepted; at most `max_message_bytes`. Unset, it is the smaller of
    /// 1 MiB and `max_message_bytes` (see [`LimitsConfig::frame_limit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<Size>,
    /// Bytes that may be queued for sending to one connection.
    pub send_queue_bytes: Size,
    /// Default policy when a send queue overflows.
    pub slow_consumer: SlowConsumerPolicy,
    /// Connections of the node not yet upgraded or answered; past it the one waiting longest
    /// is closed to make room.
    pub max_handshaking: usize,
    /// Connections not yet upgraded or answered from one address; 0 means unlimited.
    pub max_handshaking_per_ip: usize,
    /// IPv6 clients share per-IP budgets by this prefix length (1..=128).
    pub ipv6_prefix: u8,
}

impl LimitsConfig {
    /// The largest frame accepted: `max_frame_bytes`, or else the smaller of 1 MiB and
    /// `max_message_bytes`.
    pub fn frame_limit(&self) -> Size {
        self.max_frame_bytes.unwrap_or(Size::MIB.min(self.max_message_bytes))
    }

    /// True when any per-IP rule needs per-address state.
    pub fn tracks_ips(&self) -> bool {
        self.max_connections_per_ip > 0 || self.connect_rate_per_ip > 0.0 || self.max_handshaking_per_ip > 0
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            // Per-IP rules are off by default: behind a proxy, or in a load test from one
            // machine, every client shares one address.
            max_connections_per_ip: 0,
            connect_rate_per_ip: 0.0,
            connect_burst_per_ip: 200,
            max_message_bytes: Size::MIB,
            max_frame_bytes: None,
            send_queue_bytes: Size::MIB,
            slow_consumer: SlowConsumerPolicy::Close,
            max_handshaking: 1024,
            max_handshaking_per_ip: 0,
            ipv6_prefix: 64,
        }
    }
}

/// `[heartbeat]`: ping/pong keepalive settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Interval between server pings (must be > 0).
    #[serde(with = "duration_serde")]
    pub ping_interval: Duration,
    /// Time to wait for a pong before closing (must be > 0).
    #[serde(with = "duration_serde")]
    pub pong_timeout: Duration,
    /// Close connections with no inbound data for this long; 0 disables.
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Reaction to a client exceeding its message rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Reject the message with an error reply and keep the connection.
    #[default]
    Error,
    /// Close the connection.
    Close,
}

/// `[rate_limit]`: per-connection inbound message rate limiting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained messages per second; 0 disables the message limit.
    pub messages_per_second: f64,
    /// Burst allowance for `messages_per_second`.
    pub burst: u32,
    /// Sustained inbound bytes per second; 0 disables the byte limit.
    pub bytes_per_second: Size,
    /// What to do when a limit is exceeded.
    pub on_exceed: RateLimitAction,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { messages_per_second: 100.0, burst: 200, bytes_per_second: Size::MIB, on_exceed: RateLimitAction::Error }
    }
}

/// `[compression]`: permessage-deflate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Whether permessage-deflate is offered.
    pub enabled: bool,
    /// Messages smaller than this are sent uncompressed.
    pub min_bytes: Size,
    /// Deflate level, 0..=9.
    pub level: u32,
    /// Whether the server resets its compression context per message.
    pub server_no_context_takeover: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self { enabled: true, min_bytes: Size(256), level: 1, server_no_context_takeover: true }
    }
}

/// `[pubsub]`: pub/sub protocol limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PubSubConfig {
    /// Maximum channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Protocol errors tolerated before the connection is closed.
    pub max_protocol_errors: u32,
    /// Maximum channel name length in bytes.
    pub max_channel_bytes: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        Self { max_subscriptions: 64, max_protocol_errors: 3, max_channel_bytes: 128 }
    }
}

/// Behaviour of a WebSocket route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// Each message is sent back to its sender.
    Echo,
    /// Each message is sent to every connection on the route.
    Broadcast,
    /// Clients subscribe to channels and publish to them.
    Pubsub,
}

/// One `[[route]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Request path, starting with `/`, unique across routes.
    pub path: String,
    /// Route behaviour.
    pub mode: RouteMode,
    /// Accepted `Origin` values; empty accepts any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Supported subprotocols in server preference order.
    #[serde(default)]
    pub subprotocols: Vec<String>,
    /// Whether clients may publish (broadcast/pubsub modes).
    #[serde(default = "default_true")]
    pub client_publish: bool,
    /// Overrides `limits.slow_consumer` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerPolicy>,
}

fn default_true() -> bool {
    true
}

impl RouteConfig {
    /// A route with the given path and mode and every optional field at its default.
    pub fn new(path: &str, mode: RouteMode) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            client_publish: true,
            slow_consumer: None,
        }
    }
}

/// `[http]`: HTTP side endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Bearer key for `POST /api/publish`; empty disables the endpoint.
    pub api_key: String,
    /// Whether `GET /metrics` is served.
    pub metrics: bool,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: Size,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { api_key: String::new(), metrics: true, max_body_bytes: Size(64 * 1024) }
    }
}

/// Which broker carries messages between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In-process only; a single node.
    #[default]
    Memory,
    /// Redis pub/sub, for several nodes.
    Redis,
}

/// `[broker]`: cross-node message broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker implementation.
    pub kind: BrokerKind,
    /// Broker URL (used by `redis`).
    pub url: String,
    /// Key/channel prefix, so several deployments can share one broker.
    pub prefix: String,
    /// This node's id; empty means a random id chosen at start.
    pub node_id: String,
    /// Lifetime of this node's liveness lease.
    #[serde(with = "duration_serde")]
    pub lease_ttl: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Circuit breaker around broker calls.
    pub breaker: BreakerConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "switchboard".to_owned(),
            node_id: String::new(),
            lease_ttl: Duration::from_secs(15),
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// `[broker.backoff]`: exponential reconnect backoff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay.
    #[serde(with = "duration_serde")]
    pub min: Duration,
    /// Delay cap; at least `min`.
    #[serde(with = "duration_serde")]
    pub max: Duration,
    /// Random spread as a fraction of the delay, 0..=1.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { min: Duration::from_millis(100), max: Duration::from_secs(5), jitter: 0.2 }
    }
}

/// `[broker.breaker]`: circuit breaker around broker calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial call.
    #[serde(with = "duration_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(10) }
    }
}

/// `[drain]`: graceful shutdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Time after which remaining connections are dropped.
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
    /// Connections closed per batch (at least 1).
    pub batch: usize,
    /// Pause between batches.
    #[serde(with = "duration_serde")]
    pub interval: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), batch: 100, interval: Duration::from_millis(100) }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            rate_limit: RateLimitConfig::default(),
            compression: CompressionConfig::default(),
            pubsub: PubSubConfig::default(),
            http: HttpConfig::default(),
            broker: BrokerConfig::default(),
            drain: DrainConfig::default(),
            route: vec![
                RouteConfig::new("/echo", RouteMode::Echo),
                RouteConfig::new("/chat", RouteMode::Broadcast),
                RouteConfig::new("/ws", RouteMode::Pubsub),
            ],
        }
    }
}

impl Config {
    /// Parses and validates a TOML document; absent keys take their defaults.
    pub fn from_toml(src: &str) -> Result<Self, ConfigError> {
        // Parse with spans first: syntax errors surface here, and the span tree
        // is needed to name and locate later errors.
        let doc = DeTable::parse(src).map_err(|e| ConfigError::at(src, e.span(), "", e.message()))?;
        let nodes = SpanIndex::new(doc.get_ref());
        let config: Self = toml::from_str(src).map_err(|e| {
            let (key, message) = nodes.describe_de_error(e.span(), e.message());
            ConfigError::at(src, e.span(), &key, &message)
        })?;
        config.check_rules().map_err(|v| {
            let span = nodes.locate(&v.key, v.also);
            ConfigError::at(src, Some(span), &v.key, &v.message)
        })?;
        Ok(config)
    }

    /// Renders the configuration as TOML that `from_toml` reads back unchanged.
    pub fn to_toml(&self) -> String {
        // Every field serializes infallibly (sizes beyond i64 fall back to strings),
        // so an error here would be a bug in this module, not bad input.
        match toml::to_string_pretty(self) {
            Ok(s) => s,
            Err(e) => format!("# config could not be rendered: {e}\n"),
        }
    }

    /// Finds a route by exact path, with its index in `route`.
    pub fn route(&self, path: &str) -> Option<(usize, &RouteConfig)> {
        self.route.iter().enumerate().find(|(_, r)| r.path == path)
    }

    /// The slow-consumer policy in force for `route` (its override, else the global one).
    pub fn slow_consumer_for(&self, route: &RouteConfig) -> SlowConsumerPolicy {
        route.slow_consumer.unwrap_or(self.limits.slow_consumer)
    }

    /// Checks a configuration built in code by the rules a TOML file must pass; the error names
    /// the key (its line and column are 0: there is no file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_rules().map_err(|v| ConfigError { key: v.key, line: 0, column: 0, message: v.message })
    }

    fn check_rules(&self) -> Result<(), Invalid> {
        self.check_durations()?;
        let s = &self.server;
        check(s.listen.parse::<SocketAddr>().is_ok(), "server.listen", || {
            format!("{:?} is not a socket address (use e.g. \"127.0.0.1:8080\")", s.listen)
        })?;
        check(s.workers <= 1024, "server.workers", || {
            format!("{} workers is too many (at most 1024; 0 = one per core)", s.workers)
        })?;
        positive(s.handshake_timeout, "server.handshake_timeout")?;
        check(s.max_header_bytes >= 256, "server.max_header_bytes", || {
            format!("must be at least 256, got {}", s.max_header_bytes)
        })?;

        let l = &self.limits;
        check(l.max_connections >= 1, "limits.max_connections", || "must be at least 1".to_owned())?;
        rate(l.connect_rate_per_ip, "limits.connect_rate_per_ip")?;
        check(l.connect_rate_per_ip == 0.0 || l.connect_burst_per_ip >= 1, "limits.connect_burst_per_ip", || {
            "must be at least 1 while connect_rate_per_ip is set".to_owned()
        })?;
        nonzero_size(l.max_message_bytes, "limits.max_message_bytes")?;
        if let Some(frame) = l.max_frame_bytes {
            nonzero_size(frame, "limits.max_frame_bytes")?;
            if frame > l.max_message_bytes {
                return Err(Invalid {
                    key: "limits.max_frame_bytes".to_owned(),
                    message: format!(
                        "max_frame_bytes ({}) must not exceed max_message_bytes ({})",
                        frame.0, l.max_message_bytes.0
                    ),
                    also: Some("limits.max_message_bytes"),
                });
            }
        }
        nonzero_size(l.send_queue_bytes, "limits.send_queue_bytes")?;
        check(l.max_handshaking >= 1, "limits.max_handshaking", || "must be at least 1".to_owned())?;
        check((1..=128).contains(&l.ipv6_prefix), "limits.ipv6_prefix", || {
            format!("must be a prefix length from 1 to 128, got {}", l.ipv6_prefix)
        })?;

        let h = &self.heartbeat;
        positive(h.ping_interval, "heartbeat.ping_interval")?;
        positive(h.pong_timeout, "heartbeat.pong_timeout")?;
        // A ping every few microseconds is a busy loop and a ping flood, not a heartbeat.
        check(h.ping_interval >= MIN_PING_INTERVAL, "heartbeat.ping_interval", || "must be at least 10ms".to_owned())?;

        let r = &self.rate_limit;
        rate(r.messages_per_second, "rate_limit.messages_per_second")?;
        check(r.messages_per_second == 0.0 || r.burst >= 1, "rate_limit.burst", || {
            "must be at least 1 while messages_per_second is set".to_owned()
        })?;

        let c = &self.compression;
        check(c.level <= 9, "compression.level", || format!("deflate level must be 0..=9, got {}", c.level))?;

        let p = &self.pubsub;
        check(p.max_subscriptions >= 1, "pubsub.max_subscriptions", || "must be at least 1".to_owned())?;
        check(p.max_channel_bytes >= 1, "pubsub.max_channel_bytes", || "must be at least 1".to_owned())?;

        nonzero_size(self.http.max_body_bytes, "http.max_body_bytes")?;

        let b = &self.broker;
        if b.kind == BrokerKind::Redis {
            let parsed = crate::redis::parse_url(&b.url);
            check(parsed.is_ok(), "broker.url", || match &parsed {
                Err(error) => format!("{:?}: {} (use e.g. \"redis://127.0.0.1:6379\")", b.url, error.reason),
                Ok(_) => String::new(),
            })?;
        }
        check(!b.prefix.is_empty(), "broker.prefix", || "must not be empty".to_owned())?;
        positive(b.lease_ttl, "broker.lease_ttl")?;
        positive(b.backoff.max, "broker.backoff.max")?;
        if b.backoff.min > b.backoff.max {
            return Err(Invalid {
                key: "broker.backoff.min".to_owned(),
                message: format!(
                    "min ({}) must not exceed max ({})",
                    format_duration(b.backoff.min),
                    format_duration(b.backoff.max)
                ),
                also: Some("broker.backoff.max"),
            });
        }
        check((0.0..=1.0).contains(&b.backoff.jitter), "broker.backoff.jitter", || {
            format!("must be between 0 and 1, got {}", b.backoff.jitter)
        })?;
        check(b.breaker.failure_threshold >= 1, "broker.breaker.failure_threshold", || {
            "must be at least 1".to_owned()
        })?;
        positive(b.breaker.open_for, "broker.breaker.open_for")?;

        check(self.drain.batch >= 1, "drain.batch", || "must be at least 1".to_owned())?;

        self.validate_routes()
    }

    /// Every duration stays within [`MAX_DURATION`]: timers are instants plus these. A file
    /// cannot say more (the parser refuses it); code can.
    fn check_durations(&self) -> Result<(), Invalid> {
        let (s, h, b, d) = (&self.server, &self.heartbeat, &self.broker, &self.drain);
        let durations = [
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.close_timeout", s.close_timeout),
            ("heartbeat.ping_interval", h.ping_interval),
            ("heartbeat.pong_timeout", h.pong_timeout),
            ("heartbeat.idle_timeout", h.idle_timeout),
            ("broker.lease_ttl", b.lease_ttl),
            ("broker.backoff.min", b.backoff.min),
            ("broker.backoff.max", b.backoff.max),
            ("broker.breaker.open_for", b.breaker.open_for),
            ("drain.timeout", d.timeout),
            ("drain.interval", d.interval),
        ];
        for (key, value) in durations {
            check(value <= MAX_DURATION, key, || format!("{} is too long (at most 365 days)", format_duration(value)))?;
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), Invalid> {
        check(!self.route.is_empty(), "route", || "at least one [[route]] is required".to_owned())?;
        for (i, r) in self.route.iter().enumerate() {
            let path_ok =
                r.path.starts_with('/') && !r.path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#');
            check(path_ok, &format!("route[{i}].path"), || {
                format!("{:?} must start with '/' and contain no whitespace, '?' or '#'", r.path)
            })?;
            if let Some(first) = self.route[..i].iter().position(|o| o.path == r.path) {
                return Err(Invalid::new(
                    &format!("route[{i}].path"),
                    format!("duplicate route path {:?} (already used by route[{first}])", r.path),
                ));
            }
            for (j, o) in r.allowed_origins.iter().enumerate() {
                check(!o.trim().is_empty(), &format!("route[{i}].allowed_origins[{j}]"), || {
                    "origin must not be empty (an empty list already allows any origin)".to_owned()
                })?;
            }
            for (j, sp) in r.subprotocols.iter().enumerate() {
                let key = format!("route[{i}].subprotocols[{j}]");
                check(!sp.is_empty() && sp.chars().all(is_token_char), &key, || {
                    format!("{sp:?} is not a valid subprotocol token")
                })?;
                check(!r.subprotocols[..j].contains(sp), &key, || format!("duplicate subprotocol {sp:?}"))?;
            }
        }
        Ok(())
    }
}

/// RFC 7230 `tchar`: the characters allowed in a subprotocol name.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A validation failure before it is located in the source.
struct Invalid {
    key: String,
    message: String,
    /// Key to point at instead when `key` itself is not written in the file
    /// (cross-field rules where the user likely set the other side).
    also: Option<&'static str>,
}

impl Invalid {
    fn new(key: &str, message: String) -> Self {
        Self { key: key.to_owned(), message, also: None }
    }
}

fn check(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid::new(key, message())) }
}

fn positive(d: Duration, key: &str) -> Result<(), Invalid> {
    check(!d.is_zero(), key, || "must be greater than 0s".to_owned())
}

fn nonzero_size(s: Size, key: &str) -> Result<(), Invalid> {
    check(s.0 > 0, key, || "must be greater than 0".to_owned())
}

fn rate(v: f64, key: &str) -> Result<(), Invalid> {
    check(v.is_finite() && v >= 0.0, key, || format!("must be a finite number >= 0 (0 = unlimited), got {v}"))
}

/// A configuration problem with its location in the source text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path such as `heartbeat.ping_interval` or `route[1].mode`; empty for syntax errors.
    pub key: String,
    /// 1-based line of the offending key, value or table header; 0 for a `Config` built in code.
    pub line: usize,
    /// 1-based column (in characters) on that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn at(src: &str, span: Option<Range<usize>>, key: &str, message: &str) -> Self {
        let (line, column) = line_column(src, span.map_or(0, |s| s.start));
        Self { key: key.to_owned(), line, column, message: message.to_owned() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("config error: ")?;
        } else {
            write!(f, "config error at line {}, column {}: ", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    // Spans are byte offsets; step back to a char boundary rather than slice mid-char.
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Every key and array element of a parsed document with its dotted path and spans.
struct SpanIndex {
    nodes: Vec<SpanNode>,
}

struct SpanNode {
    path: String,
    depth: usize,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

impl SpanIndex {
    fn new(root: &DeTable<'_>) -> Self {
        let mut nodes = Vec::new();
        Self::collect_table(root, "", 0, &mut nodes);
        Self { nodes }
    }

    fn collect_table(table: &DeTable<'_>, prefix: &str, depth: usize, out: &mut Vec<SpanNode>) {
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            let path = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
            out.push(SpanNode { path: path.clone(), depth: depth + 1, key: Some(k.span()), value: v.span() });
            Self::collect_value(v.get_ref(), &path, depth + 1, out);
        }
    }

    fn collect_value(value: &DeValue<'_>, path: &str, depth: usize, out: &mut Vec<SpanNode>) {
        match value {
            DeValue::Table(t) => Self::collect_table(t, path, depth, out),
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    out.push(SpanNode { path: path.clone(), depth: depth + 1, key: None, value: v.span() });
                    Self::collect_value(v.get_ref(), &path, depth + 1, out);
                }
            }
            _ => {}
        }
    }

    /// The deepest key path whose key or value covers `pos`.
    fn path_at(&self, pos: usize) -> &str {
        let covers = |r: &Range<usize>| r.start <= pos && (pos < r.end || pos == r.start);
        self.nodes
            .iter()
            .filter(|n| covers(&n.value) || n.key.as_ref().is_some_and(covers))
            .max_by_key(|n| n.depth)
            .map_or("", |n| n.path.as_str())
    }

    /// Turns a serde error into (key, message) with friendlier wording.
    fn describe_de_error(&self, span: Option<Range<usize>>, message: &str) -> (String, String) {
        let path = span.map_or("", |s| self.path_at(s.start));
        if let Some(rest) = message.strip_prefix("missing field ") {
            // The span points at the table lacking the key, so the key is appended.
            let field = rest.trim_matches('`');
            let key = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            return (key, format!("missing required key `{field}`"));
        }
        let message = match message.strip_prefix("unknown field ") {
            Some(rest) => format!("unknown key {rest}"),
            None => message.to_owned(),
        };
        (path.to_owned(), message)
    }

    /// Span of `key`'s value, else of `also`, else of the nearest written ancestor.
    fn locate(&self, key: &str, also: Option<&str>) -> Range<usize> {
        let find = |p: &str| self.nodes.iter().find(|n| n.path == p).map(|n| n.value.clone());
        if let Some(span) = find(key).or_else(|| also.and_then(find)) {
            return span;
        }
        let mut path = key;
        while let Some(cut) = path.rfind(['.', '[']) {
            path = &path[..cut];
            if let Some(span) = find(path) {
                return span;
            }
        }
        0..0
    }
}

/// A byte count; reads an integer or a string like `"64KiB"`, `"1MiB"`, `"2KB"`, writes an integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// One mebibyte.
    pub const MIB: Self = Self(1024 * 1024);

    /// Parses `"512"`, `"512B"`, `"2KB"` (1000-based), `"64KiB"` (1024-based), `"1.5MiB"`, up to `TiB`.
    pub fn parse(s: &str) -> Option<Self> {
        let (number, unit) = split_number(s.trim())?;
        let mult: u128 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1 << 10,
            "mb" => 1_000_000,
            "mib" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return None,
        };
        scale(number, mult).and_then(|n| u64::try_from(n).ok()).map(Self)
    }

    /// The size as `usize`, saturating on narrow targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // TOML integers are i64; larger sizes use the string form so output stays valid.
        match i64::try_from(self.0) {
            Ok(n) => serializer.serialize_i64(n),
            Err(_) => serializer.serialize_str(&format!("{}B", self.0)),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count like 65536 or \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).ok_or_else(|| {
                    E::custom(format!("invalid size {v:?} (use e.g. 65536, \"512B\", \"64KiB\", \"1MiB\", \"2KB\")"))
                })
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// The shortest ping interval accepted.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

/// The longest duration a setting may hold.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `"25s"`, `"100ms"`, `"5m"`, `"1h"`, `"1.5s"`, `"0"` (units: ns, us, ms, s, m, h).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = split_number(s.trim())?;
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        // A bare zero is unambiguous, any other unitless number is not.
        "" if number.bytes().all(|b| b == b'0' || b == b'.') => 1,
        _ => return None,
    };
    let nanos = scale(number, unit_ns)?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// Formats a duration in the largest unit that represents it exactly, e.g. `"25s"`, `"100ms"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let units: [(u128, &str); 5] =
        [(3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")];
    for (size, name) in units {
        if nanos.is_multiple_of(size) {
            return format!("{}{name}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// Splits `"1.5MiB"` into `("1.5", "MiB")`, allowing spaces between.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let has_digit = number.bytes().any(|b| b.is_ascii_digit());
    (has_digit && number.matches('.').count() <= 1).then_some((number, unit.trim_start()))
}

/// `number * unit`, exactly for integers and truncating sub-unit fractions.
fn scale(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut total = if int.is_empty() { 0 } else { int.parse::<u128>().ok()?.checked_mul(unit)? };
    // Beyond 18 digits the fraction is below a nanosecond even for hours; ignore the rest.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits = frac.parse::<u128>().ok()?;
        let denom = 10u128.pow(u32::try_from(frac.len()).ok()?);
        total = total.checked_add(digits.checked_mul(unit)? / denom)?;
    }
    Some(total)
}

mod duration_serde {
    use super::{format_duration, parse_duration};
    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"25s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                let parsed = parse_duration(v)
                    .ok_or_else(|| E::custom(format!("invalid duration {v:?} (use e.g. \"25s\", \"100ms\")")))?;
                // Timers are instants plus these: an absurd value must not overflow a clock.
                if parsed > super::MAX_DURATION {
                    return Err(E::custom(format!("duration {v:?} is too long (at most 365 days)")));
                }
                Ok(parsed)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Path of the example file relative to this source file.
    const EXAMPLE_TOML: &str = include_str!("../../switchboard.example.toml");

    fn err(src: &str) -> ConfigError {
        match Config::from_toml(src) {
            Ok(c) => panic!("expected an error for {src:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_err(src: &str, key: &str, line: usize, column: usize) -> ConfigError {
        let e = err(src);
        assert_eq!((e.key.as_str(), e.line, e.column), (key, line, column), "{e}");
        e
    }

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(Config::from_toml(""), Ok(Config::default()));
        assert_eq!(Config::default().route.len(), 3);
    }

    #[test]
    fn example_file_is_the_default() {
        assert_eq!(Config::from_toml(EXAMPLE_TOML), Ok(Config::default()));
    }

    #[test]
    fn default_round_trips() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
    }

    #[test]
    fn non_default_round_trips() {
        let mut c = Config::default();
        c.server.listen = "[::1]:9000".to_owned();
        c.server.workers = 4;
        c.server.close_timeout = Duration::from_millis(1500);
        c.limits.connect_rate_per_ip = 0.1;
        c.limits.max_frame_bytes = Some(Size(1000));
        c.limits.max_handshaking = 7;
        c.limits.max_handshaking_per_ip = 3;
        c.limits.ipv6_prefix = 56;
        c.server.trusted_proxies = vec!["10.0.0.0/8".parse().expect("valid"), "::1".parse().expect("valid")];
        c.server.proxy_protocol = true;
        c.limits.slow_consumer = SlowConsumerPolicy::Drop;
        c.heartbeat.idle_timeout = Duration::ZERO;
        c.heartbeat.pong_timeout = Duration::from_nanos(1_000_000_123);
        c.rate_limit.on_exceed = RateLimitAction::Close;
        c.compression.level = 9;
        c.http.api_key = "s3cr\"et".to_owned();
        c.broker.kind = BrokerKind::Redis;
        c.broker.backoff.max = Duration::from_secs(7200);
        c.broker.backoff.jitter = 1.0;
        c.drain.interval = Duration::from_secs(90);
        c.route = vec![RouteConfig {
            path: "/feed".to_owned(),
            mode: RouteMode::Pubsub,
            allowed_origins: vec!["https://a.example".to_owned()],
            subprotocols: vec!["v2".to_owned(), "v1".to_owned()],
            client_publish: false,
            slow_consumer: Some(SlowConsumerPolicy::Drop),
        }];
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text), Ok(c), "{text}");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("25"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.2.3s"), None);
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(Size::parse("64KiB"), Some(Size(65536)));
        assert_eq!(Size::parse("2KB"), Some(Size(2000)));
        assert_eq!(Size::parse("512B"), Some(Size(512)));
        assert_eq!(Size::parse("1.5MiB"), Some(Size(1_572_864)));
        assert_eq!(Size::parse("1 parsec"), None);
        let c = Config::from_toml("[http]\nmax_body_bytes = 1234\n");
        assert_eq!(c.map(|c| c.http.max_body_bytes), Ok(Size(1234)));
    }

    #[test]
    fn routes_replace_defaults_and_are_found() {
        let c = Config::from_toml("[[route]]\npath = \"/x\"\nmode = \"echo\"\nslow_consumer = \"drop\"\n");
        let Ok(c) = c else { panic!("{c:?}") };
        assert_eq!(c.route.len(), 1);
        let Some((0, r)) = c.route("/x") else { panic!("route /x missing") };
        assert_eq!(c.slow_consumer_for(r), SlowConsumerPolicy::Drop);
        assert!(c.route("/echo").is_none());
        assert_eq!(Config::default().route("/ws").map(|(i, _)| i), Some(2));
    }

    #[test]
    fn unknown_keys() {
        assert_err("bogus = 1\n", "bogus", 1, 1);
        let e = assert_err("[server]\nworkers = 2\n  bogus = 1\n", "server.bogus", 3, 3);
        assert!(e.message.starts_with("unknown key `bogus`"), "{e}");
        assert_err("[broker.backoff]\nmin = \"1s\"\nmaxx = \"2s\"\n", "broker.backoff.maxx", 3, 1);
        let src =
            "[[route]]\npath = \"/a\"\nmode = \"echo\"\n[[route]]\npath = \"/b\"\nmode = \"echo\"\norigins = []\n";
        assert_err(src, "route[1].origins", 7, 1);
    }

    #[test]
    fn wrong_type() {
        let e = assert_err("[server]\nworkers = \"four\"\n", "server.workers", 2, 11);
        assert!(e.message.contains("invalid type"), "{e}");
        assert_err("[compression]\nenabled = 1\n", "compression.enabled", 2, 11);
        assert_err("[heartbeat]\nping_interval = 25\n", "heartbeat.ping_interval", 2, 17);
    }

    #[test]
    fn bad_duration_matches_documented_display() {
        let e =
            assert_err("# comment\n[heartbeat]\nping_interval = \"25 parsecs\"\n", "heartbeat.ping_interval", 3, 17);
        assert_eq!(
            e.to_string(),
            "config error at line 3, column 17: heartbeat.ping_interval: \
             invalid duration \"25 parsecs\" (use e.g. \"25s\", \"100ms\")"
        );
    }

    #[test]
    fn bad_size() {
        let e = assert_err("[limits]\nsend_queue_bytes = \"1 parsec\"\n", "limits.send_queue_bytes", 2, 20);
        assert!(e.message.starts_with("invalid size"), "{e}");
        assert_err("[http]\nmax_body_bytes = -5\n", "http.max_body_bytes", 2, 18);
    }

    #[test]
    fn bad_enum_value() {
        let e = assert_err("[limits]\nslow_consumer = \"panic\"\n", "limits.slow_consumer", 2, 17);
        assert!(e.message.contains("unknown variant `panic`"), "{e}");
        assert_err("[[route]]\npath = \"/a\"\nmode = \"relay\"\n", "route[0].mode", 3, 8);
    }

    #[test]
    fn route_errors() {
        let dup = "[[route]]\npath = \"/a\"\nmode = \"echo\"\n\n[[route]]\npath = \"/a\"\nmode = \"pubsub\"\n";
        let e = assert_err(dup, "route[1].path", 6, 8);
        assert!(e.message.contains("duplicate"), "{e}");
        assert_err("[[route]]\nmode = \"echo\"\npath = \"a\"\n", "route[0].path", 3, 8);
        let missing = "[[route]]\npath = \"/a\"\nmode = \"echo\"\n\n[[route]]\npath = \"/b\"\n";
        let e = assert_err(missing, "route[1].mode", 5, 1);
        assert!(e.message.contains("missing required key `mode`"), "{e}");
        assert_err("route = []\n", "route", 1, 9);
        let inline = "route = [{ path = \"/a\", mode = \"echo\", subprotocols = [\"a b\"] }]";
        assert_err(inline, "route[0].subprotocols[0]", 1, 56);
    }

    #[test]
    fn validation_errors() {
        assert_err("[heartbeat]\npong_timeout = \"0s\"\n", "heartbeat.pong_timeout", 2, 16);
        assert_err("[compression]\nlevel = 12\n", "compression.level", 2, 9);
        assert_err("[broker.backoff]\njitter = 2.0\n", "broker.backoff.jitter", 2, 10);
        assert_err("[server]\nlisten = \"localhost\"\n", "server.listen", 2, 10);
        assert_err("[server]\nmax_header_bytes = 255\n", "server.max_header_bytes", 2, 20);
        assert_err("[server]\nworkers = 1025\n", "server.workers", 2, 11);
        let both = "[limits]\nmax_message_bytes = \"64KiB\"\nmax_frame_bytes = \"1MiB\"\n";
        assert_err(both, "limits.max_frame_bytes", 3, 19);
        assert_err("[limits]\nipv6_prefix = 0\n", "limits.ipv6_prefix", 2, 15);
        assert_err("[limits]\nmax_handshaking = 0\n", "limits.max_handshaking", 2, 19);
        let e = assert_err("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "server.trusted_proxies[0]", 2, 20);
        assert!(e.message.contains("10.0.0.0/33"), "{e}");
        assert_err("[broker.backoff]\nmin = \"10s\"\n", "broker.backoff.min", 2, 7);
        assert_err("[broker]\nkind = \"redis\"\nurl = \"http://x\"\n", "broker.url", 3, 7);
        assert_err("[broker.breaker]\nfailure_threshold = 0\n", "broker.breaker.failure_threshold", 2, 21);
        let e =
            assert_err("[heartbeat]\nping_interval = \"18446744073709551615s\"\n", "heartbeat.ping_interval", 2, 17);
        assert!(e.message.contains("too long"), "{e}");
        assert_err("[heartbeat]\nping_interval = \"000.0000003s\"\n", "heartbeat.ping_interval", 2, 17);
    }

    #[test]
    fn the_readme_internet_example_is_valid() {
        let readme = include_str!("../../README.md");
        let section = readme.split("## Exposing it to the internet").nth(1).unwrap_or_default();
        let block = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap_or_default();
        let config = Config::from_toml(block);
        let Ok(config) = config else { panic!("README example: {config:?}") };
        assert_eq!(config.limits.max_connections_per_ip, 100);
        assert_eq!(config.server.trusted_proxies.len(), 1);
    }

    #[test]
    fn frame_limit_follows_a_smaller_message_limit() {
        let small = Config::from_toml("[limits]\nmax_message_bytes = 1024\n");
        assert_eq!(small.map(|c| c.limits.frame_limit()), Ok(Size(1024)));
        assert_eq!(Config::default().limits.frame_limit(), Size::MIB);
        let big = Config::from_toml("[limits]\nmax_message_bytes = \"4MiB\"\n");
        assert_eq!(big.map(|c| c.limits.frame_limit()), Ok(Size::MIB));
    }

    #[test]
    fn a_config_built_in_code_is_checked_like_a_file() {
        let mut c = Config::default();
        c.heartbeat.ping_interval = Duration::ZERO;
        let e = c.validate().expect_err("zero ping interval");
        assert_eq!((e.key.as_str(), e.line), ("heartbeat.ping_interval", 0));
        assert_eq!(e.to_string(), "config error: heartbeat.ping_interval: must be greater than 0s");
        c.heartbeat.ping_interval = Duration::from_secs(1);
        c.heartbeat.idle_timeout = Duration::MAX;
        assert_eq!(c.validate().map_err(|e| e.key), Err("heartbeat.idle_timeout".to_owned()));
        c.heartbeat.idle_timeout = Duration::ZERO;
        c.rate_limit.messages_per_second = f64::NAN;
        assert_eq!(c.validate().map_err(|e| e.key), Err("rate_limit.messages_per_second".to_owned()));
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn unwritten_keys_fall_back_to_their_table() {
        let src = "[limits]\nslow_consumer = \"drop\"\n";
        let Ok(doc) = DeTable::parse(src) else { panic!("valid toml") };
        let nodes = SpanIndex::new(doc.get_ref());
        assert_eq!(nodes.locate("limits.max_frame_bytes", None), 0..8);
        assert_eq!(nodes.locate("drain.batch", None), 0..0);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = assert_err("[server]\nworkers = 1\n[limits\n", "", 3, 8);
        assert!(e.to_string().starts_with("config error at line 3, column 8: "), "{e}");
        assert_err("a = \"é\" b\n", "", 1, 9);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(src in ".{0,200}") {
            let _ = Config::from_toml(&src);
        }

        #[test]
        fn toml_like_text_never_panics(src in "[\\[\\]a-z_.=\"' 0-9\n{},#-]{0,300}") {
            let _ = Config::from_toml(&src);
        }

        #[test]
        fn mangled_example_never_panics(at in 0usize..4000, len in 0usize..40, with in ".{0,8}") {
            let mut src = EXAMPLE_TOML.to_owned();
            let start = at.min(src.len());
            let end = (start + len).min(src.len());
            if src.is_char_boundary(start) && src.is_char_boundary(end) {
                src.replace_range(start..end, &with);
            }
            let _ = Config::from_toml(&src);
        }
    }
}
