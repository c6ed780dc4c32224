//! The rules a configuration must pass beyond its types, whether it came from a file or from code.

use std::net::SocketAddr;
use std::time::Duration;

use super::{BrokerKind, Config, MAX_DURATION, Size, format_duration};

/// The shortest ping interval accepted.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

impl Config {
    /// The first rule this configuration breaks, named by key but not yet located in a file.
    pub(super) fn check_rules(&self) -> Result<(), Invalid> {
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
        if b.kind == BrokerKind::RedisCluster {
            let with_db =
                b.shard_urls().into_iter().position(|u| crate::redis::parse_url(u).is_ok_and(|(_, db)| db != 0));
            if let Some(i) = with_db {
                let key = if b.urls.is_empty() { "broker.url".to_owned() } else { format!("broker.urls[{i}]") };
                return Err(Invalid::new(&key, "a Redis Cluster has only database 0: drop the /db part".to_owned()));
            }
            check(!b.prefix.contains(['{', '}']), "broker.prefix", || {
                format!("{:?}: braces would become a cluster hash tag; use a prefix without {{ or }}", b.prefix)
            })?;
        }
        if b.kind != BrokerKind::Memory {
            let parsed = crate::redis::parse_url(&b.url);
            check(parsed.is_ok(), "broker.url", || match &parsed {
                Err(error) => format!("{:?}: {} (use e.g. \"redis://127.0.0.1:6379\")", b.url, error.reason),
                Ok(_) => String::new(),
            })?;
        }
        check(b.urls.len() <= 256, "broker.urls", || {
            format!("{} Redis instances is too many (at most 256)", b.urls.len())
        })?;
        for (i, url) in b.urls.iter().enumerate() {
            let key = format!("broker.urls[{i}]");
            let parsed = crate::redis::parse_url(url);
            check(parsed.is_ok(), &key, || match &parsed {
                Err(error) => format!("{url:?}: {} (use e.g. \"redis://127.0.0.1:6379\")", error.reason),
                Ok(_) => String::new(),
            })?;
            if let Some(first) = b.urls[..i].iter().position(|u| u == url) {
                return Err(Invalid::new(&key, format!("{url:?} is listed twice (already broker.urls[{first}])")));
            }
        }
        check(!b.prefix.is_empty(), "broker.prefix", || "must not be empty".to_owned())?;
        if b.kind != BrokerKind::Memory {
            let urls = b.shard_urls();
            let tls = urls.first().is_some_and(|u| crate::redis::is_tls_url(u));
            if let Some(i) = urls.iter().position(|u| crate::redis::is_tls_url(u) != tls) {
                let key = if b.urls.is_empty() { "broker.url".to_owned() } else { format!("broker.urls[{i}]") };
                return Err(Invalid::new(&key, "mixes redis:// and rediss://: use one for every instance".to_owned()));
            }
            check(tls || b.tls_ca.is_empty(), "broker.tls_ca", || "is set, but no broker URL is rediss://".to_owned())?;
        }
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
        positive(b.probe_interval, "broker.probe_interval")?;
        positive(b.probe_timeout, "broker.probe_timeout")?;

        check(self.drain.batch >= 1, "drain.batch", || "must be at least 1".to_owned())?;
        self.check_tls()?;

        self.pusher.check_rules()?;
        self.auth.check_rules()?;
        self.admin.check_rules()?;
        super::auth::check_namespaces(&self.namespace, &self.auth)?;
        self.validate_routes()
    }

    /// Every duration stays within [`MAX_DURATION`]: timers are instants plus these. A file
    /// cannot say more (the parser refuses it); code can.
    fn check_durations(&self) -> Result<(), Invalid> {
        let (s, h, b, d, p) = (&self.server, &self.heartbeat, &self.broker, &self.drain, &self.pusher);
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
            ("broker.probe_interval", b.probe_interval),
            ("broker.probe_timeout", b.probe_timeout),
            ("drain.timeout", d.timeout),
            ("drain.interval", d.interval),
            ("pusher.activity_timeout", p.activity_timeout),
            ("pusher.user_authentication_timeout", p.user_authentication_timeout),
            ("pusher.webhook_grace", p.webhook_grace),
            ("pusher.webhook_batch", p.webhook_batch),
            ("pusher.webhook_retry_for", p.webhook_retry_for),
            ("pusher.cache_ttl", p.cache_ttl),
            ("auth.leeway", self.auth.leeway),
            ("auth.expire_grace", self.auth.expire_grace),
        ];
        for (key, value) in durations {
            check(value <= MAX_DURATION, key, || format!("{} is too long (at most 365 days)", format_duration(value)))?;
        }
        Ok(())
    }

    /// A certificate without its key (or the reverse) is a mistake, not plain TCP.
    fn check_tls(&self) -> Result<(), Invalid> {
        let t = &self.tls;
        match (t.cert.is_empty(), t.key.is_empty()) {
            (false, true) => Err(Invalid {
                key: "tls.key".to_owned(),
                message: "must name the private key's PEM file when tls.cert is set".to_owned(),
                also: Some("tls.cert"),
            }),
            (true, false) => Err(Invalid {
                key: "tls.cert".to_owned(),
                message: "must name the certificate chain's PEM file when tls.key is set".to_owned(),
                also: Some("tls.key"),
            }),
            _ => Ok(()),
        }
    }

    fn validate_routes(&self) -> Result<(), Invalid> {
        check(!self.route.is_empty(), "route", || "at least one [[route]] is required".to_owned())?;
        for (i, r) in self.route.iter().enumerate() {
            let path_ok =
                r.path.starts_with('/') && !r.path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#');
            check(path_ok, &format!("route[{i}].path"), || {
                format!("{:?} must start with '/' and contain no whitespace, '?' or '#'", r.path)
            })?;
            let admin = &self.admin;
            let under_admin =
                r.path.strip_prefix(admin.path.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            check(!admin.enabled || !under_admin, &format!("route[{i}].path"), || {
                format!("{:?} is under admin.path {:?}, which the admin page serves", r.path, admin.path)
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
pub(super) struct Invalid {
    pub(super) key: String,
    pub(super) message: String,
    /// Key to point at instead when `key` itself is not written in the file
    /// (cross-field rules where the user likely set the other side).
    pub(super) also: Option<&'static str>,
}

impl Invalid {
    pub(super) fn new(key: &str, message: String) -> Self {
        Self { key: key.to_owned(), message, also: None }
    }
}

pub(super) fn check(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid::new(key, message())) }
}

pub(super) fn positive(d: Duration, key: &str) -> Result<(), Invalid> {
    check(!d.is_zero(), key, || "must be greater than 0s".to_owned())
}

pub(super) fn nonzero_size(s: Size, key: &str) -> Result<(), Invalid> {
    check(s.0 > 0, key, || "must be greater than 0".to_owned())
}

fn rate(v: f64, key: &str) -> Result<(), Invalid> {
    check(v.is_finite() && v >= 0.0, key, || format!("must be a finite number >= 0 (0 = unlimited), got {v}"))
}
