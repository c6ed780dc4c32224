//! placeholder until the real module lands
#![allow(missing_docs, unreachable_pub)]
use std::time::Duration;
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub compression: CompressionConfig,
    pub route: Vec<RouteConfig>,
    pub drain: DrainConfig,
}
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub workers: usize,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub max_header_bytes: usize,
}
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_message_bytes: Size,
    pub max_frame_bytes: Size,
    pub send_queue_bytes: Size,
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub u64);
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatConfig {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub idle_timeout: Duration,
}
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    pub enabled: bool,
    pub min_bytes: Size,
    pub level: u32,
    pub server_no_context_takeover: bool,
}
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    pub timeout: Duration,
    pub batch: usize,
    pub interval: Duration,
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouteMode {
    Echo,
    Broadcast,
    Pubsub,
}
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub path: String,
    pub mode: RouteMode,
    pub allowed_origins: Vec<String>,
    pub subprotocols: Vec<String>,
    pub client_publish: bool,
}
impl Default for Config {
    fn default() -> Self {
        let r = |p: &str, m| RouteConfig {
            path: p.into(),
            mode: m,
            allowed_origins: vec![],
            subprotocols: vec![],
            client_publish: true,
        };
        Config {
            server: ServerConfig {
                listen: "127.0.0.1:8080".into(),
                workers: 0,
                handshake_timeout: Duration::from_secs(10),
                close_timeout: Duration::from_secs(5),
                max_header_bytes: 8192,
            },
            limits: LimitsConfig {
                max_connections: 10000,
                max_message_bytes: Size(1 << 20),
                max_frame_bytes: Size(1 << 20),
                send_queue_bytes: Size(1 << 20),
            },
            heartbeat: HeartbeatConfig {
                ping_interval: Duration::from_secs(25),
                pong_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(300),
            },
            compression: CompressionConfig {
                enabled: true,
                min_bytes: Size(256),
                level: 1,
                server_no_context_takeover: true,
            },
            route: vec![r("/echo", RouteMode::Echo), r("/chat", RouteMode::Broadcast), r("/ws", RouteMode::Pubsub)],
            drain: DrainConfig { timeout: Duration::from_secs(30), batch: 100, interval: Duration::from_millis(100) },
        }
    }
}
impl Config {
    pub fn route(&self, path: &str) -> Option<(usize, &RouteConfig)> {
        self.route.iter().enumerate().find(|(_, r)| r.path == path)
    }
}

#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config error at line {}, column {}: {}: {}", self.line, self.column, self.key, self.message)
    }
}
impl std::error::Error for ConfigError {}
impl Config {
    pub fn from_toml(src: &str) -> Result<Config, ConfigError> {
        if src.trim().is_empty() {
            Ok(Config::default())
        } else {
            Err(ConfigError { key: String::new(), line: 1, column: 1, message: "placeholder parser".into() })
        }
    }
    pub fn to_toml(&self) -> String {
        String::new()
    }
}
