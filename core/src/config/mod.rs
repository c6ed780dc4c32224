//! Server configuration: TOML schema, defaults, parsing with precise error locations, validation.
//!
//! The schema and its defaults live here, but for the Pusher section (`pusher`, with its own
//! rules); the rules a configuration must pass are in `validate`, error locations in `located`,
//! and byte sizes and durations in `units`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::DeTable;

use crate::proxy::Cidr;

mod admin;
mod auth;
mod located;
mod pusher;
#[cfg(test)]
mod tests;
mod units;
mod validate;

pub use admin::AdminConfig;
pub use auth::{AuthConfig, NamespaceConfig, PublishRule, SubscribeRule};
pub use located::ConfigError;
pub use pusher::{PusherApp, PusherConfig, Webhook, WebhookEvent};
pub use units::{MAX_DURATION, Size, format_duration, parse_duration};

use located::SpanIndex;
use units::duration_serde;

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
    /// The Pusher Channels protocol: its limits and apps (`[[pusher.app]]`).
    pub pusher: PusherConfig,
    /// JSON Web Tokens for the native protocol.
    pub auth: AuthConfig,
    /// The dashboard and admin API (`[admin]`).
    pub admin: AdminConfig,
    /// `wss://` and `https://` on the listener itself.
    pub tls: TlsConfig,
    /// Rules of the native protocol's channels by prefix (`[[namespace]]`).
    pub namespace: Vec<NamespaceConfig>,
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
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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

/// Written by hand so that `{:?}` of a config never shows the API key.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.api_key.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("HttpConfig")
            .field("api_key", &key)
            .field("metrics", &self.metrics)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
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
    /// A Redis Cluster (7+): sharded pub/sub, each channel on its slot's master; `url`/`urls`
    /// are seeds to read the slot map from.
    #[serde(rename = "redis-cluster")]
    RedisCluster,
}

/// `[broker]`: cross-node message broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker implementation.
    pub kind: BrokerKind,
    /// Broker URL (used by `redis`).
    pub url: String,
    /// Several independent Redis instances (used by `redis` instead of `url` when not empty):
    /// each channel lives on one, chosen by a jump consistent hash of its name.
    pub urls: Vec<String>,
    /// Key/channel prefix, so several deployments can share one broker.
    pub prefix: String,
    /// PEM file of the CA that signs the Redis servers' certificates (`rediss://` URLs);
    /// empty: the bundled Mozilla roots, as managed Redis services need.
    pub tls_ca: String,
    /// This node's id; empty means a random id chosen at start.
    pub node_id: String,
    /// Lifetime of this node's liveness lease.
    #[serde(with = "duration_serde")]
    pub lease_ttl: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Circuit breaker around broker calls.
    pub breaker: BreakerConfig,
    /// How often each hub publishes a probe through Redis to its own subscription.
    #[serde(with = "duration_serde")]
    pub probe_interval: Duration,
    /// A probe not back within this marks the hub deaf (`/healthz` degraded) and resubscribes.
    #[serde(with = "duration_serde")]
    pub probe_timeout: Duration,
}

impl BrokerConfig {
    /// The Redis instances channels are spread over: `urls`, or `url` alone.
    pub fn shard_urls(&self) -> Vec<&str> {
        if self.urls.is_empty() { vec![self.url.as_str()] } else { self.urls.iter().map(String::as_str).collect() }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            urls: Vec::new(),
            prefix: "switchboard".to_owned(),
            tls_ca: String::new(),
            node_id: String::new(),
            lease_ttl: Duration::from_secs(15),
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
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

/// `[tls]`: the listener speaks TLS itself (`wss://`, `https://`) when `cert` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, leaf first; empty: plain TCP. The shell reads it.
    pub cert: String,
    /// PEM file of the private key (PKCS#8, RSA or EC); the shell reads it, nobody shows it.
    pub key: String,
    /// The oldest TLS version accepted.
    pub min_version: TlsVersion,
}

impl TlsConfig {
    /// True when the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

/// A TLS protocol version, as `[tls] min_version` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246) and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 (RFC 8446) only.
    #[serde(rename = "1.3")]
    V1_3,
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
            pusher: PusherConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            namespace: Vec::new(),
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

    /// A copy with every secret (`http.api_key`, `auth.hmac_secret`, `admin.password`,
    /// `admin.token`, each `pusher.app[].secret`) replaced by
    /// `"<redacted>"`, for showing a configuration to people. An empty one stays empty: it means
    /// "off", not "hidden".
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        let hide = |secret: &mut String| {
            if !secret.is_empty() {
                pusher::REDACTED.clone_into(secret);
            }
        };
        hide(&mut copy.http.api_key);
        copy.auth.redact();
        copy.admin.redact();
        for app in &mut copy.pusher.app {
            hide(&mut app.secret);
            // Webhook headers often carry the receiver's credentials.
            app.webhook.iter_mut().flat_map(|hook| hook.headers.values_mut()).for_each(hide);
        }
        copy
    }

    /// [`Config::to_toml`] of [`Config::redacted`]: safe to print (`--print-config`), while
    /// `to_toml` itself stays an exact round trip.
    pub fn to_toml_redacted(&self) -> String {
        self.redacted().to_toml()
    }

    /// The namespace governing `channel` (named by the part before its first `:`), if any.
    pub fn namespace_of(&self, channel: &str) -> Option<&NamespaceConfig> {
        let (prefix, _) = channel.split_once(':')?;
        self.namespace.iter().find(|ns| ns.name == prefix)
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
}
