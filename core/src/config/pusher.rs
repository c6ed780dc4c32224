//! `[pusher]` and `[[pusher.app]]`: the Pusher Channels protocol's limits and its apps, and the
//! rules they must pass.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::{Invalid, check, nonzero_size, positive};
use super::{Size, default_true, duration_serde};

/// What a secret is replaced with in a redacted rendering ([`super::Config::redacted`]).
pub(super) const REDACTED: &str = "<redacted>";

/// `[pusher]`: limits of the Pusher Channels protocol (v7) and the apps it serves.
///
/// With no `[[pusher.app]]` the Pusher endpoints (`/app/{key}`, `/apps/{id}/…`) are off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// Sent to clients in `pusher:connection_established` (in whole seconds, at least 1s); the
    /// server pings a connection silent for this long.
    #[serde(with = "duration_serde")]
    pub activity_timeout: Duration,
    /// Largest event `data`, whether triggered through the HTTP API or sent as a client event.
    pub max_event_bytes: Size,
    /// Longest event name, in bytes (at least 1).
    pub max_event_name_bytes: usize,
    /// Longest channel name, in bytes (at least 1).
    pub max_channel_name_bytes: usize,
    /// Channels one HTTP API trigger may name (at least 1).
    pub max_channels_per_event: usize,
    /// Events in one `batch_events` request (at least 1).
    pub max_batch_events: usize,
    /// Members of one presence channel (at least 1).
    pub max_presence_members: usize,
    /// Largest `user_info` of one presence member.
    pub max_presence_member_bytes: Size,
    /// Client events one connection may send per second; 0 means unlimited.
    pub max_client_events_per_second: u32,
    /// Time a connection of an app with `user_authentication` has to sign in (greater than 0).
    #[serde(with = "duration_serde")]
    pub user_authentication_timeout: Duration,
    /// `channel_vacated` and `member_removed` webhooks wait this long, and are dropped when the
    /// channel is occupied again (the member rejoins) meanwhile.
    #[serde(with = "duration_serde")]
    pub webhook_grace: Duration,
    /// 0: one event per webhook request; else events are collected for this long.
    #[serde(with = "duration_serde")]
    pub webhook_batch: Duration,
    /// A failed delivery (no answer, or not 2xx) is retried with backoff for this long.
    #[serde(with = "duration_serde")]
    pub webhook_retry_for: Duration,
    /// Webhook events held per hub while receivers are slow or down; beyond, they are dropped
    /// (and counted).
    pub webhook_queue: usize,
    /// How long a cache channel keeps its last event.
    #[serde(with = "duration_serde")]
    pub cache_ttl: Duration,
    /// The apps (`[[pusher.app]]`); none turns the Pusher endpoints off.
    // Last so the serializer emits `[[pusher.app]]` after the plain keys.
    pub app: Vec<PusherApp>,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            activity_timeout: Duration::from_secs(120),
            max_event_bytes: Size(10 * 1024),
            max_event_name_bytes: 200,
            max_channel_name_bytes: 200,
            max_channels_per_event: 100,
            max_batch_events: 10,
            max_presence_members: 100,
            max_presence_member_bytes: Size(2 * 1024),
            max_client_events_per_second: 10,
            user_authentication_timeout: Duration::from_secs(30),
            webhook_grace: Duration::from_secs(3),
            webhook_batch: Duration::ZERO,
            webhook_retry_for: Duration::from_secs(300),
            webhook_queue: 10_000,
            cache_ttl: Duration::from_secs(1800),
            app: Vec::new(),
        }
    }
}

/// One `[[pusher.app]]`: the credentials the client and server SDKs are configured with, and
/// the app's switches.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// App id, as in `/apps/{id}/events`; unique across apps. (The official Python SDK accepts
    /// only digits.)
    pub id: String,
    /// Public key, as in `/app/{key}` and in every signature's `key:` prefix; unique across apps.
    pub key: String,
    /// Signs channel authorizations, user sign-ins, HTTP API requests and webhooks.
    pub secret: String,
    /// A disabled app's connections are refused with 4003 and its API requests with 403.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whether clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Whether connections must sign in (`pusher:signin`) within `user_authentication_timeout`.
    #[serde(default)]
    pub user_authentication: bool,
    /// Concurrent connections to this app for the whole node; 0 means unlimited.
    #[serde(default)]
    pub max_connections: usize,
    /// Whether subscribers get `pusher_internal:subscription_count`.
    #[serde(default)]
    pub subscription_count: bool,
    /// Where the app's webhooks go (`[[pusher.app.webhook]]`).
    // Last so the serializer emits the tables after the plain keys.
    #[serde(default)]
    pub webhook: Vec<Webhook>,
}

/// One `[[pusher.app.webhook]]`: a receiver and what it hears.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL the events are `POST`ed to.
    pub url: String,
    /// The events it hears; every kind when not given.
    #[serde(default = "WebhookEvent::all")]
    pub events: Vec<WebhookEvent>,
    /// Only channels whose name starts with this (empty: all).
    #[serde(default)]
    pub filter_prefix: String,
    /// Extra request headers (their values are redacted wherever the config is shown).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Webhook {
    /// Whether this receiver hears `event` on `channel`.
    pub fn wants(&self, event: WebhookEvent, channel: &str) -> bool {
        self.events.contains(&event) && channel.starts_with(&self.filter_prefix)
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("filter_prefix", &self.filter_prefix)
            .field("headers", &headers)
            .finish()
    }
}

/// A kind of webhook event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel's first subscriber in the cluster.
    ChannelOccupied,
    /// A channel's last subscriber in the cluster left (after the grace).
    ChannelVacated,
    /// A presence channel's user's first connection in the cluster.
    MemberAdded,
    /// A presence channel's user's last connection left (after the grace).
    MemberRemoved,
    /// A client event was relayed.
    ClientEvent,
    /// A cache channel had no event for a new subscriber.
    CacheMiss,
}

impl WebhookEvent {
    /// Every kind.
    pub fn all() -> Vec<Self> {
        vec![
            Self::ChannelOccupied,
            Self::ChannelVacated,
            Self::MemberAdded,
            Self::MemberRemoved,
            Self::ClientEvent,
            Self::CacheMiss,
        ]
    }

    /// The name in the webhook's body.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
        }
    }
}

impl PusherApp {
    /// An enabled app with the given credentials and every switch at its default.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            enabled: true,
            client_events: false,
            user_authentication: false,
            max_connections: 0,
            subscription_count: false,
            webhook: Vec::new(),
        }
    }
}

impl fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &format_args!("{REDACTED}"))
            .field("enabled", &self.enabled)
            .field("client_events", &self.client_events)
            .field("user_authentication", &self.user_authentication)
            .field("max_connections", &self.max_connections)
            .field("subscription_count", &self.subscription_count)
            .field("webhook", &self.webhook)
            .finish()
    }
}

impl PusherConfig {
    /// The first rule `[pusher]` breaks.
    pub(super) fn check_rules(&self) -> Result<(), Invalid> {
        // pusher-js throws on an activity_timeout of 0, and it travels as whole seconds.
        check(self.activity_timeout >= Duration::from_secs(1), "pusher.activity_timeout", || {
            "must be at least 1s (clients refuse 0)".to_owned()
        })?;
        check(self.activity_timeout.subsec_nanos() == 0, "pusher.activity_timeout", || {
            "must be a whole number of seconds (it is sent to clients in seconds)".to_owned()
        })?;
        nonzero_size(self.max_event_bytes, "pusher.max_event_bytes")?;
        let at_least_one = [
            ("pusher.max_event_name_bytes", self.max_event_name_bytes),
            ("pusher.max_channel_name_bytes", self.max_channel_name_bytes),
            ("pusher.max_channels_per_event", self.max_channels_per_event),
            ("pusher.max_batch_events", self.max_batch_events),
            ("pusher.max_presence_members", self.max_presence_members),
        ];
        for (key, value) in at_least_one {
            check(value >= 1, key, || "must be at least 1".to_owned())?;
        }
        nonzero_size(self.max_presence_member_bytes, "pusher.max_presence_member_bytes")?;
        positive(self.user_authentication_timeout, "pusher.user_authentication_timeout")?;
        positive(self.cache_ttl, "pusher.cache_ttl")?;
        check(self.webhook_queue >= 1, "pusher.webhook_queue", || "must be at least 1".to_owned())?;
        self.check_apps()
    }

    fn check_apps(&self) -> Result<(), Invalid> {
        let fields: [(&str, Field); 2] = [("id", |a| &a.id), ("key", |a| &a.key)];
        for (i, app) in self.app.iter().enumerate() {
            for (field, get) in fields {
                let (key, value) = (format!("pusher.app[{i}].{field}"), get(app));
                check(!value.is_empty(), &key, || "must not be empty".to_owned())?;
                check(!value.contains(unfit_for_a_path), &key, || {
                    format!("{value:?} is part of a URL path: no '/', '?', '#', '%', whitespace or control characters")
                })?;
                if let Some(first) = self.app[..i].iter().position(|earlier| get(earlier) == value) {
                    return Err(Invalid::new(
                        &key,
                        format!("duplicate app {field} {value:?} (already used by pusher.app[{first}])"),
                    ));
                }
            }
            // Never echo the secret itself, even a wrong one.
            check(!app.secret.is_empty(), &format!("pusher.app[{i}].secret"), || "must not be empty".to_owned())?;
            for (j, hook) in app.webhook.iter().enumerate() {
                let key = format!("pusher.app[{i}].webhook[{j}]");
                let host = hook.url.strip_prefix("http://").or_else(|| hook.url.strip_prefix("https://"));
                check(
                    host.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/')),
                    &format!("{key}.url"),
                    || format!("{:?} must be an http:// or https:// URL with a host", hook.url),
                )?;
                check(!hook.events.is_empty(), &format!("{key}.events"), || "must name at least one event".to_owned())?;
                for (name, value) in &hook.headers {
                    let token = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    check(token, &format!("{key}.headers"), || format!("{name:?} is not a header name"))?;
                    // A value is never echoed: it may be a credential.
                    check(!value.contains(['\r', '\n']), &format!("{key}.headers.{name}"), || {
                        "must not contain a line break".to_owned()
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Reads one of an app's identifying fields.
type Field = fn(&PusherApp) -> &str;

/// Characters an app id or key may not hold: they travel as a segment of a URL path
/// (`/app/{key}`, `/apps/{id}/…`) and are compared without percent-decoding.
fn unfit_for_a_path(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%')
}
