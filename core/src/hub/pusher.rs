//! The Pusher Channels protocol on a connection (`/app/{key}`): the connect checks, the
//! messages clients send, subscriptions with their authorization, presence, client events and
//! the activity pings. Pusher channels are hub channels named `pusher/{app id}/{channel}`, so
//! fan-out, the broker and Redis carry them like any other; what is Pusher's own (who may
//! subscribe, what a frame looks like, who hears a member come and go) lives here and in
//! [`crate::pusher`].
//!
//! A fan-out payload on a Pusher channel is `{socket id to skip}\n{frame}`: the frame is built
//! once by the hub that accepted the event, and every hub skips the one connection the event
//! came from (a client event's sender, an HTTP trigger's `socket_id`).

use std::time::Instant;

use bytes::Bytes;

use super::conn::PusherConn;
use super::pusher_users::ONLINE;
use super::{ConnId, Hub, Timer};
use crate::broker::{BrokerCommand, Envelope};
use crate::config::RateLimitAction;
use crate::config::WebhookEvent;
use crate::handshake::RequestHead;
use crate::limits::{Refusal, TokenBucket};
use crate::proxy;
use crate::pusher::directory::{self, Effects, MemberChange, Update};
use crate::pusher::names::{self, ChannelKind, ChannelType};
use crate::pusher::protocol::{self, ClientMessage, Limits, PresenceData, PresenceMember, close_code};
use crate::pusher::sign::verify_channel_auth;
use crate::pusher::webhooks::Event;
use crate::time::later;

/// Prefix of the hub channels that carry Pusher channels.
const PUSHER_PREFIX: &str = "pusher/";

/// The hub channel that carries directory updates between hubs (no app id is empty).
pub(super) const DIRECTORY: &str = "pusher//directory";

/// Where the open Pusher connections are counted among the per-route gauges.
pub(super) const GAUGE: &str = "/app";

/// The hub channel of Pusher channel `channel` of app `app_id`.
pub(super) fn pusher_key(app_id: &str, channel: &str) -> String {
    format!("{PUSHER_PREFIX}{app_id}/{channel}")
}

/// The app id and Pusher channel of a hub channel, when it carries one.
pub(super) fn split_pusher_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(PUSHER_PREFIX)?.split_once('/').filter(|(app, _)| !app.is_empty())
}

/// True for a hub channel that carries a Pusher channel (or the directory).
pub(super) fn is_pusher(key: &str) -> bool {
    key.starts_with(PUSHER_PREFIX)
}

/// Splits a Pusher fan-out payload into the socket id to skip (empty: none) and the frame.
pub(super) fn split_payload(payload: &[u8]) -> (&[u8], &[u8]) {
    match payload.iter().position(|&b| b == b'\n') {
        Some(at) => (&payload[..at], &payload[at + 1..]),
        None => (&[], payload),
    }
}

/// Where a directory change came from, which decides whether this hub reports it in a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This hub's own connections.
    Local,
    /// Another hub's update.
    Remote,
    /// A dead hub dropped; `report`: this hub is the one to report what that changed.
    Dead {
        /// This hub reports it.
        report: bool,
    },
}

/// A close reason within the 123 bytes a close frame allows.
fn short(reason: &str) -> &str {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Hub {
    /// Whether the Pusher endpoints are served (at least one app is configured).
    pub(super) fn pusher_on(&self) -> bool {
        !self.config.pusher.app.is_empty()
    }

    /// This hub's name in the directory: `node:worker`.
    pub(super) fn hub_key(&self) -> String {
        format!("{}:{}", self.origin.node, self.origin.worker)
    }

    /// An upgrade on `/app/{key}`: the WebSocket handshake completes in every case, so that a
    /// refusal reaches the client as Pusher says (`pusher:error`, then a close with its code).
    pub(super) fn pusher_upgrade(&mut self, now: Instant, id: ConnId, head: &RequestHead, key: &str, rest: &[u8]) {
        if self.drain.is_some() {
            let response = crate::handshake::HttpResponse::error(503, "server is draining");
            return self.respond_http(id, &response.with_header("Retry-After", "5"));
        }
        let target = if head.query.is_empty() { head.path.clone() } else { format!("{}?{}", head.path, head.query) };
        let Some(client) = self.conn(id).map(|c| c.client) else { return };
        let chosen = match protocol::parse_connect_url(&target) {
            Err(e) => Err((e.code(), e.to_string())),
            Ok(request) => match self.config.pusher.app.iter().position(|app| app.key == request.key) {
                None => Err((close_code::UNKNOWN_APP, "no app has this key".to_owned())),
                Some(app) if !self.config.pusher.app[app].enabled => {
                    Err((close_code::APP_DISABLED, "this app is disabled".to_owned()))
                }
                Some(app) => Ok(app),
            },
        };
        let admitted = match chosen {
            Err(refusal) => Err(refusal),
            Ok(app) => {
                let client_key = proxy::client_key(client, self.config.limits.ipv6_prefix);
                match self.admission.open(client_key, now) {
                    Ok(()) if self.admission.open_app(app, self.config.pusher.app[app].max_connections) => Ok(app),
                    Ok(()) => {
                        self.admission.close(client_key);
                        Err((close_code::OVER_QUOTA, "over this app's connection quota".to_owned()))
                    }
                    Err(Refusal::Capacity) => {
                        self.metrics.count_rejection(503);
                        Err((close_code::OVER_CAPACITY, "server at capacity: try again later".to_owned()))
                    }
                    Err(refusal) => return self.respond_http(id, &Self::refusal_response(refusal)),
                }
            }
        };
        let activity = self.config.pusher.activity_timeout;
        self.accept_websocket(now, id, head, key, None, activity);
        match admitted {
            Err((code, message)) => {
                self.reply(id, protocol::error(Some(code), &message, None));
                self.close(now, id, code, short(&message));
            }
            Ok(app) => {
                self.next_socket += 1;
                let socket_id = names::socket_id(self.socket_seed, self.next_socket);
                let rate = f64::from(self.config.pusher.max_client_events_per_second);
                let sign_in_by = self.config.pusher.app[app]
                    .user_authentication
                    .then(|| later(now, self.config.pusher.user_authentication_timeout));
                let epoch = self.epoch(now);
                let Some(conn) = self.conn_mut(id) else { return };
                if let Some(at) = sign_in_by {
                    // The handshake's timer is free once open: it is the sign-in deadline now.
                    conn.timers.set(Timer::Handshake, epoch, at);
                }
                conn.counted = true;
                conn.route = usize::MAX;
                conn.pusher = Some(Box::new(PusherConn {
                    app,
                    socket_id: socket_id.as_str().into(),
                    counted: true,
                    client_events: TokenBucket::full(rate.max(1.0), now),
                    user: None,
                }));
                *self.metrics.connections_by_route.entry(GAUGE.to_owned()).or_default() += 1;
                self.reply(id, protocol::connection_established(&socket_id, activity.as_secs().max(1)));
            }
        }
        self.rearm(id);
        if !rest.is_empty() {
            self.read_frames(now, id, rest);
        }
    }

    /// A message on a Pusher connection.
    pub(super) fn on_pusher(&mut self, now: Instant, id: ConnId, text: bool, data: &[u8]) {
        let activity = self.config.pusher.activity_timeout;
        let epoch = self.epoch(now);
        let Some(conn) = self.conn_mut(id) else { return };
        // Any message shows the client is there: the next ping waits a whole activity timeout.
        conn.timers.set(Timer::Ping, epoch, later(now, activity));
        conn.timers.stop(Timer::Pong);
        if !self.within_rate(now, id, data.len()) {
            self.metrics.rate_limited += 1;
            return match self.config.rate_limit.on_exceed {
                RateLimitAction::Close => self.close(now, id, 1008, "rate limit exceeded"),
                RateLimitAction::Error => self.reply(id, protocol::error(None, "rate limit exceeded", None)),
            };
        }
        let limits = Limits::new(&self.config.pusher);
        let parsed = match std::str::from_utf8(data) {
            Ok(text_data) if text => protocol::parse_client_message(text_data, &limits).map_err(|e| {
                let channel = e.channel().map(str::to_owned);
                (e.to_string(), channel)
            }),
            _ => Err(("messages are JSON text; binary frames are not supported".to_owned(), None)),
        };
        let message = match parsed {
            Ok(message) => message,
            Err((message, channel)) => return self.pusher_strike(now, id, &message, channel.as_deref()),
        };
        match message {
            ClientMessage::Ping => self.reply(id, protocol::pong()),
            ClientMessage::Pong => {}
            ClientMessage::Subscribe { channel, auth, channel_data } => {
                self.pusher_subscribe(now, id, &channel, auth.as_deref(), channel_data)
            }
            ClientMessage::Unsubscribe { channel } => {
                // The user's own channel stays while signed in: terminate_connections uses it.
                if ChannelType::of(&channel).kind == ChannelKind::ServerToUser {
                    return;
                }
                let Some(app_id) = self.pusher_app(id).map(|app| app.id.clone()) else { return };
                if let Some(index) = self.subscription_index(id, &pusher_key(&app_id, &channel)) {
                    self.unsubscribe_at(id, index);
                }
            }
            ClientMessage::Signin { auth, user_data } => self.pusher_signin(now, id, &auth, &user_data),
            ClientMessage::ClientEvent { event, channel, data } => {
                self.pusher_client_event(now, id, &event, &channel, data.as_deref())
            }
            // Pusher's own events this server does not know: ignored, as pusher-js may send
            // newer ones.
            ClientMessage::UnknownProtocolEvent { .. } => {}
        }
    }

    /// A malformed message: a `pusher:error` naming what was wrong, and a strike towards
    /// `pubsub.max_protocol_errors`.
    fn pusher_strike(&mut self, now: Instant, id: ConnId, message: &str, channel: Option<&str>) {
        self.metrics.protocol_errors += 1;
        self.reply(id, protocol::error(None, message, channel));
        let max = self.config.pubsub.max_protocol_errors;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.strikes += 1;
        if conn.strikes >= max {
            self.close(now, id, 1008, "too many protocol errors");
        }
    }

    /// The app of a Pusher connection.
    fn pusher_app(&self, id: ConnId) -> Option<&crate::config::PusherApp> {
        let app = self.conn(id)?.pusher.as_ref()?.app;
        self.config.pusher.app.get(app)
    }

    fn pusher_subscribe(
        &mut self,
        now: Instant,
        id: ConnId,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<String>,
    ) {
        let Some(conn) = self.conn(id) else { return };
        let Some(pusher) = conn.pusher.as_ref() else { return };
        let Some(app) = self.config.pusher.app.get(pusher.app) else { return };
        let socket_id = pusher.socket_id.clone();
        let app_id = app.id.clone();
        let kind = ChannelType::of(channel);
        let refuse = |hub: &mut Self, kind: &str, message: &str, status: u16| {
            hub.reply(id, protocol::subscription_error(channel, kind, message, status));
        };
        if kind.kind == ChannelKind::ServerToUser && self.signed_in_as(id) != names::server_to_user_id(channel) {
            return refuse(self, "AuthError", "sign in as this channel's user (pusher:signin) first", 403);
        }
        if kind.needs_auth() {
            let data = if kind.is_presence() { channel_data.as_deref() } else { None };
            let Some(auth) = auth.filter(|a| !a.is_empty()) else {
                return refuse(self, "AuthError", "this channel needs an auth signature", 401);
            };
            // pusher-http-node signs channel_data on private channels too when it is given.
            let signed = verify_channel_auth(&app.key, &app.secret, &socket_id, channel, data, auth).or_else(|e| {
                match channel_data.as_deref() {
                    Some(extra) if !kind.is_presence() => {
                        verify_channel_auth(&app.key, &app.secret, &socket_id, channel, Some(extra), auth)
                    }
                    _ => Err(e),
                }
            });
            if let Err(e) = signed {
                return refuse(self, "AuthError", &format!("invalid signature: {e}"), 401);
            }
        }
        let key = pusher_key(&app_id, channel);
        let already = self.subscription_index(id, &key).is_some();
        let member = if kind.is_presence() {
            let Some(data) = channel_data.as_deref() else {
                return refuse(self, "AuthError", "presence channels need channel_data", 400);
            };
            let max_bytes = self.config.pusher.max_presence_member_bytes.as_usize();
            match protocol::parse_channel_data(data, max_bytes) {
                Ok(member) => Some((member, data.to_owned())),
                Err(e) => return refuse(self, "InvalidChannelData", &format!("channel_data: {e}"), 400),
            }
        } else {
            None
        };
        if !already {
            let max_subscriptions = self.config.pubsub.max_subscriptions;
            if self.conn(id).is_some_and(|c| c.subscriptions.len() >= max_subscriptions) {
                let message = format!("at most {max_subscriptions} subscriptions per connection");
                return refuse(self, "LimitReached", &message, 429);
            }
            if let Some((member, _)) = &member {
                let max = self.config.pusher.max_presence_members;
                let uid = member.user_id.as_str();
                if self.directory.counts(&app_id, channel).user_count >= max as u64
                    && !self.directory.has_user(&app_id, channel, uid)
                {
                    let message = format!("presence channel is full ({max} members)");
                    return refuse(self, "LimitReached", &message, 403);
                }
            }
            let info = member.as_ref().map(|(_, data)| data.as_str().into());
            self.subscribe(id, &key, info);
        }
        let presence = kind.is_presence().then(|| self.directory.members(&app_id, channel));
        let frame = match &presence {
            Some(members) => {
                protocol::subscription_succeeded(channel, Some(&PresenceData::new(members.iter().copied())))
            }
            None => protocol::subscription_succeeded(channel, None),
        };
        // The new count reaches every subscriber, this one included, once the directory's
        // changes are announced (right after this reply).
        self.reply(id, frame);
        let app = self.conn(id).and_then(|c| c.pusher.as_ref()).map_or(0, |p| p.app);
        self.serve_cache(now, id, app, &app_id, channel);
    }

    fn pusher_client_event(
        &mut self,
        now: Instant,
        id: ConnId,
        event: &str,
        channel: &str,
        data: Option<&serde_json::value::RawValue>,
    ) {
        let rate = f64::from(self.config.pusher.max_client_events_per_second);
        let Some(app) = self.pusher_app(id) else { return };
        let (app_id, enabled) = (app.id.clone(), app.client_events);
        let key = pusher_key(&app_id, channel);
        let refusal = if !enabled {
            Some("client events are not enabled for this app".to_owned())
        } else if !ChannelType::of(channel).allows_client_events() {
            Some("client events are allowed on private and presence channels only".to_owned())
        } else if self.subscription_index(id, &key).is_none() {
            Some("subscribe to the channel before sending client events on it".to_owned())
        } else {
            let Some(pusher) = self.conn_mut(id).and_then(|c| c.pusher.as_mut()) else { return };
            (rate > 0.0 && !pusher.client_events.try_take(now, rate, rate, 1.0))
                .then(|| format!("more than {rate} client events per second"))
        };
        if let Some(message) = refusal {
            self.metrics.protocol_errors += 1;
            let frame = protocol::error(Some(close_code::CLIENT_EVENT_REJECTED), &message, Some(channel));
            return self.reply(id, frame);
        }
        let user = self.subscription_index(id, &key).and_then(|index| {
            let info = self.conn(id)?.subscriptions.get(index)?.info.as_deref()?;
            protocol::parse_channel_data(info, usize::MAX).ok()
        });
        let frame = protocol::client_event_relay(event, channel, data, user.as_ref().map(|m| &m.user_id));
        let Some(pusher) = self.conn(id).and_then(|c| c.pusher.as_ref()) else { return };
        let (app, socket_id) = (pusher.app, pusher.socket_id.clone());
        self.pusher_publish(now, &key, Some(&socket_id), &frame);
        if self.wants_webhook(app, WebhookEvent::ClientEvent, channel) {
            let user_id = user.as_ref().map(|m| m.user_id.as_str());
            let hook = Event::client_event(channel, event, data.map(|d| d.get()), &socket_id, user_id);
            self.webhook(now, app, &hook);
        }
    }

    /// Publishes `frame` on hub channel `key` to every hub, skipping connection `skip`.
    pub(super) fn pusher_publish(&mut self, now: Instant, key: &str, skip: Option<&str>, frame: &str) {
        if let Some((app, channel)) = split_pusher_key(key)
            && ChannelType::of(channel).cache
        {
            let published_ms = self.unix_ms(now);
            self.cache_store(now, app, channel, published_ms, frame);
            self.directory_out.cache.push((app.to_owned(), channel.to_owned(), published_ms, frame.to_owned()));
        }
        let skip = skip.unwrap_or("");
        let mut payload = Vec::with_capacity(skip.len() + 1 + frame.len());
        payload.extend_from_slice(skip.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(frame.as_bytes());
        self.fan_out(now, key.to_owned(), true, Bytes::from(payload));
    }

    /// A connection joined hub channel `key`: the directory learns this hub's new count (and
    /// the member, on a presence channel).
    pub(super) fn pusher_joined(&mut self, id: ConnId, key: &str, info: Option<&str>) {
        self.pusher_changed(id, key, info, 1);
    }

    /// A connection left hub channel `key` (its subscription's `info` given back).
    pub(super) fn pusher_left(&mut self, id: ConnId, key: &str, info: Option<&str>) {
        self.pusher_changed(id, key, info, -1);
    }

    fn pusher_changed(&mut self, id: ConnId, key: &str, info: Option<&str>, step: i32) {
        let Some((app, channel)) = split_pusher_key(key) else { return };
        // A user's own channel is theirs, not the app's: no counts, members or webhooks.
        if channel.starts_with('#') {
            return;
        }
        let hub = self.hub_key();
        let local = self.channels.find(key).and_then(|c| self.channels.get(c)).map_or(0, |c| c.subscribers.len());
        let mut effects = Effects::default();
        self.directory.set_subscriptions(&hub, app, channel, local as u64, &mut effects);
        self.directory_out.subs.push((app.to_owned(), channel.to_owned(), local as u64));
        if let Some(member) = info.and_then(|data| protocol::parse_channel_data(data, usize::MAX).ok()) {
            let uid = member.user_id.as_str();
            let count = self.directory.member_connections(&hub, app, channel, uid).saturating_add_signed(step);
            self.directory.set_member(&hub, app, channel, &member, count, &mut effects);
            self.directory_out.members.push(directory::member_entry(app, channel, &member, count));
        }
        // The member's own connection never hears of its arrival.
        self.queue_effects(effects, (step > 0).then_some(id), Source::Local);
    }

    /// Directory changes to announce (and report) once this input is done.
    pub(super) fn queue_effects(&mut self, effects: Effects, cause: Option<ConnId>, source: Source) {
        self.pusher_effects.push((effects, cause, source));
    }

    /// An update from another hub of the directory.
    pub(super) fn on_directory(&mut self, now: Instant, envelope: &Envelope) {
        let hub = format!("{}:{}", envelope.origin.node, envelope.origin.worker);
        let Ok(update) = serde_json::from_slice::<Update>(&envelope.payload) else {
            self.metrics.protocol_errors += 1;
            return;
        };
        let mut effects = Effects::default();
        let sync = self.directory.apply(&hub, &update, now, &mut effects);
        for (app, channel, published_ms, frame) in &update.cache {
            self.cache_store(now, app, channel, *published_ms, frame);
        }
        if sync {
            self.queue_snapshot(false);
        }
        self.queue_effects(effects, None, Source::Remote);
    }

    /// Replaces what is waiting to go to the other hubs with all of this hub's entries
    /// (`sync`: asking for theirs too).
    pub(super) fn queue_snapshot(&mut self, sync: bool) {
        let mut snapshot = self.directory.snapshot_of(&self.hub_key());
        snapshot.sync = sync || self.directory_out.sync;
        snapshot.cache = self.latest.map(|now| self.cache_entries(now)).unwrap_or_default();
        self.directory_out = snapshot;
    }

    /// Drops the hubs whose lease is gone (`live` lists the hubs holding one).
    pub(super) fn prune_directory(&mut self, now: Instant, live: &std::collections::BTreeSet<String>) {
        let mut effects = Effects::default();
        let grace = self.config.broker.lease_ttl;
        let own = self.hub_key();
        self.directory.prune(live, &own, now, grace, &mut effects);
        // One hub reports what a dead one's end changed: the first live one by name.
        let report = live.iter().next().is_none_or(|first| *first == own);
        self.queue_effects(effects, None, Source::Dead { report });
    }

    /// Tells local subscribers what the directory's changes mean for them, and the other hubs
    /// what changed here. Runs before the hub's outputs are polled.
    pub(super) fn pusher_flush(&mut self) {
        let Some(now) = self.latest else { return };
        for (effects, cause, source) in std::mem::take(&mut self.pusher_effects) {
            self.announce(now, effects, cause, source);
        }
        if self.directory_out.is_empty() {
            return;
        }
        let update = std::mem::take(&mut self.directory_out);
        if !self.has_peers && self.redis.is_empty() {
            return;
        }
        let Ok(json) = serde_json::to_vec(&update) else { return };
        let envelope =
            Envelope { origin: self.origin.clone(), channel: DIRECTORY.to_owned(), text: true, payload: json.into() };
        if let Some(link) = super::link_in(&mut self.redis, &self.route, DIRECTORY) {
            if link.can_publish() {
                let _ = link.publish(now, &envelope);
            } else {
                // Missed by the other nodes: all of it goes again once Redis is back.
                self.directory_resync = true;
            }
        }
        if self.has_peers {
            self.broker_out.push_back(BrokerCommand::Publish(envelope));
        }
    }

    fn announce(&mut self, now: Instant, effects: Effects, cause: Option<ConnId>, source: Source) {
        for (app, channel, occupied) in effects.occupancy {
            self.occupancy_hook(now, &app, &channel, occupied, source);
        }
        for (app, channel, change) in effects.members {
            if channel == ONLINE {
                self.watchlist_change(&app, &change);
                continue;
            }
            self.member_hook(now, &app, &channel, &change, source);
            let Some(chan) = self.channels.find(&pusher_key(&app, &channel)) else { continue };
            let frame = match &change {
                MemberChange::Added(PresenceMember { user_id, user_info }) => {
                    protocol::member_added(&channel, user_id, user_info.as_deref())
                }
                MemberChange::Removed(user_id) => protocol::member_removed(&channel, user_id),
            };
            self.deliver_frame(now, chan, &frame, cause);
        }
        for (app, channel, total) in effects.counts {
            let wanted = self.config.pusher.app.iter().any(|a| a.id == app && a.subscription_count);
            if !wanted || ChannelType::of(&channel).is_presence() {
                continue;
            }
            let Some(chan) = self.channels.find(&pusher_key(&app, &channel)) else { continue };
            self.deliver_frame(now, chan, &protocol::subscription_count(&channel, total), None);
        }
    }

    /// Queues a Pusher frame to this hub's subscribers of a channel, but `skip`.
    fn deliver_frame(&mut self, now: Instant, chan: crate::channel::ChannelId, frame: &str, skip: Option<ConnId>) {
        let mut payload = Vec::with_capacity(frame.len() + 1);
        payload.push(b'\n');
        payload.extend_from_slice(frame.as_bytes());
        self.deliver(now, chan, true, &payload, skip);
    }

    /// The activity ping is due on a Pusher connection: `pusher:ping`, and a pong is awaited.
    pub(super) fn pusher_ping(&mut self, id: ConnId) {
        self.reply(id, protocol::ping());
    }

    /// No pong came: 4201, and pusher-js reconnects.
    pub(super) fn pusher_pong_timeout(&mut self, now: Instant, id: ConnId) {
        let code = close_code::PONG_NOT_RECEIVED;
        self.reply(id, protocol::error(Some(code), "pong not received in time", None));
        self.close(now, id, code, "pong not received");
    }
}
