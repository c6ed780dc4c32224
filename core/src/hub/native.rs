//! The native protocol's identity and channel rules: JWT connection tokens (query string or
//! `connect`, `refresh`, expiry), subscription tokens, namespaces' permissions, join/leave,
//! and channel streams with history and recovery.
//!
//! Payloads between hubs on native channels are the publication's JSON data, or one of two
//! marked forms no JSON text starts with: [`FRAMED`] + a whole frame (join/leave), or
//! [`STREAMED`] + `{epoch}:{offset}\n` + data (a publication of a channel with history).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ConnId, Hub, Phase, Timer};
use crate::auth::jwt::{self, Claims, Rules, TokenError};
use crate::broker::Envelope;
use crate::config::{NamespaceConfig, PublishRule, SubscribeRule};
use crate::history::{StreamRead, StreamRules};
use crate::pubsub::{self, ErrorCode, OpError, Position, RequestId, Stream};
use crate::redis::HistoryRead;
use crate::time::later;

/// Close code: the token expired or never came; fetch a new one and reconnect.
pub(crate) const TOKEN_EXPIRED: u16 = 4401;
/// Close code: the token is invalid; reconnecting with it is pointless.
pub(crate) const TOKEN_INVALID: u16 = 4403;

/// First byte of a payload that is a whole frame (join, leave).
pub(super) const FRAMED: u8 = 1;
/// First byte of a stream publication: `{epoch}:{offset}\n{data}` follows.
pub(crate) const STREAMED: u8 = 2;

/// What a connection's token proved.
#[derive(Debug)]
pub(super) struct NativeAuth {
    /// `sub` (empty for an anonymous token).
    pub(super) user: Box<str>,
    /// `exp` in Unix seconds.
    pub(super) expires: Option<u64>,
    /// `info`, raw JSON, shown with presence and join/leave.
    pub(super) info: Option<Box<str>>,
}

/// A native payload, as carried between hubs.
pub(super) enum Payload<'a> {
    /// A publication's JSON data.
    Data(&'a [u8]),
    /// A frame to send as it is.
    Framed(&'a [u8]),
    /// A stream publication.
    Streamed { epoch: &'a str, offset: u64, data: &'a [u8] },
}

impl<'a> Payload<'a> {
    /// Reads a payload; `None` for a marked one that is malformed.
    pub(super) fn parse(payload: &'a [u8]) -> Option<Self> {
        match payload.first() {
            Some(&FRAMED) => Some(Self::Framed(&payload[1..])),
            Some(&STREAMED) => {
                let rest = &payload[1..];
                let newline = rest.iter().position(|&b| b == b'\n')?;
                let head = std::str::from_utf8(&rest[..newline]).ok()?;
                let (epoch, offset) = head.rsplit_once(':')?;
                Some(Self::Streamed { epoch, offset: offset.parse().ok()?, data: &rest[newline + 1..] })
            }
            _ => Some(Self::Data(payload)),
        }
    }

    /// The JSON text a receiving node must check before splicing it into frames.
    pub(super) fn json(&self) -> &'a [u8] {
        match self {
            Self::Data(json) | Self::Framed(json) | Self::Streamed { data: json, .. } => json,
        }
    }
}

fn streamed(epoch: &str, offset: u64, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(epoch.len() + data.len() + 24);
    out.push(STREAMED);
    out.extend_from_slice(epoch.as_bytes());
    out.push(b':');
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// A history read waiting for Redis.
#[derive(Debug)]
pub(super) enum HistoryWaiter {
    /// A new subscriber waiting for its `subscribed` reply (its live messages are held).
    Subscribe { conn: ConnId, channel: String, request: Option<RequestId>, recover: Option<Position> },
    /// A `history` op.
    Page { conn: ConnId, channel: String, request: Option<RequestId>, since: Option<Position> },
    /// `GET {admin.path}/api/history`, waiting in `Responding`.
    Admin { conn: ConnId, channel: String },
}

/// A subscriber whose live messages are held while its history is read from Redis, then
/// trimmed up to where the read reached (live messages may overtake the read's answer).
#[derive(Debug)]
pub(super) struct Recovering {
    conn: ConnId,
    channel: String,
    /// The read it waits for (`None` once answered): a quick unsubscribe and subscribe again
    /// must not take the first read's answer for the second's.
    token: Option<u64>,
    /// Live publications that arrived before the answer.
    held: Vec<(u64, Bytes)>,
    /// Once answered: the read's last offset; live ones up to it are dropped for this one.
    floor: Option<u64>,
}

/// A client's `subscribe` op.
pub(super) struct SubscribeOp {
    /// Request id to echo.
    pub(super) request: Option<RequestId>,
    /// The channel.
    pub(super) channel: String,
    /// Presence info given (raw JSON).
    pub(super) presence: Option<Box<str>>,
    /// A subscription token.
    pub(super) token: Option<String>,
    /// Where the client's copy of the stream ends.
    pub(super) recover: Option<Position>,
}

/// A refusal of an op, as the op handlers return it.
type Refused = (ErrorCode, String);

/// Shortens a close reason to what a close frame holds (123 bytes).
fn clip_reason(reason: &str) -> &str {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Hub {
    /// Wall time at `now` in Unix seconds; without a wall clock every token reads as expired
    /// (the shells give one before the first connection).
    fn token_clock(&self, now: Instant) -> u64 {
        self.unix_secs(now).unwrap_or(u64::MAX)
    }

    /// The instant the wall clock reads `unix` seconds (`now` when already past).
    fn instant_at(&self, now: Instant, unix: u64) -> Instant {
        let now_ms = self.unix_ms(now);
        let at_ms = unix.saturating_mul(1000);
        later(now, Duration::from_millis(at_ms.saturating_sub(now_ms)))
    }

    /// Checks a token's signature and claims against the configured keys at `now`.
    fn verify_token(&self, now: Instant, token: &str) -> Result<Claims, TokenError> {
        let auth = &self.config.auth;
        let rules = Rules {
            audience: (!auth.audience.is_empty()).then_some(auth.audience.as_str()),
            issuer: (!auth.issuer.is_empty()).then_some(auth.issuer.as_str()),
            leeway_secs: auth.leeway.as_secs(),
        };
        jwt::verify(token, &self.keys, &rules, self.token_clock(now))
    }

    /// A pub/sub connection just opened: its `welcome`, and its query-string token if any.
    pub(super) fn native_open(&mut self, now: Instant, id: ConnId, token: Option<String>) {
        let heartbeat = &self.config.heartbeat;
        let welcome = pubsub::welcome(
            &self.conn_name(id),
            heartbeat.ping_interval.as_millis() as u64,
            heartbeat.pong_timeout.as_millis() as u64,
            heartbeat.idle_timeout.as_millis() as u64,
            self.config.limits.max_message_bytes.0,
        );
        let Some(token) = token else {
            self.reply(id, welcome);
            if self.config.auth.require {
                // The connect op must come within the handshake timeout.
                let (epoch, at) = (self.epoch(now), later(now, self.config.server.handshake_timeout));
                if let Some(conn) = self.conn_mut(id) {
                    conn.timers.set(Timer::Handshake, epoch, at);
                }
            }
            return;
        };
        match self.verify_token(now, &token) {
            Ok(claims) => {
                self.reply(id, pubsub::with_identity(welcome, &claims.sub, claims.exp));
                self.authenticate(now, id, claims);
            }
            Err(error) => self.refuse_token(now, id, &error),
        }
    }

    /// Closes a connection whose connection token failed, with the code that says whether a
    /// new token may help.
    fn refuse_token(&mut self, now: Instant, id: ConnId, error: &TokenError) {
        self.metrics.auth_failures += 1;
        let code = if error.is_temporary() { TOKEN_EXPIRED } else { TOKEN_INVALID };
        let reason = format!("invalid token: {error}");
        self.close(now, id, code, clip_reason(&reason));
    }

    /// Records what the token proved, arms its expiry, and makes its server-side subscriptions.
    fn authenticate(&mut self, now: Instant, id: ConnId, claims: Claims) {
        let Claims { sub, exp, info, channels, .. } = claims;
        let auth = NativeAuth { user: sub.into(), expires: exp, info: info.map(|raw| raw.get().into()) };
        let Some(conn) = self.conn_mut(id) else { return };
        conn.native = Some(Box::new(auth));
        self.arm_expiry(now, id);
        let max = self.config.pubsub.max_channel_bytes;
        for channel in channels {
            let result = if pubsub::valid_channel(&channel, max) {
                let streamed = self.stream_rules(&channel).is_some();
                let result = self.subscribe_checked(now, id, None, &channel, None, None);
                // A channel with history says `subscribed` itself; the others are told here,
                // since the client never asked.
                if result.is_ok() && !streamed {
                    self.reply(id, pubsub::subscribed(None, &channel, None));
                }
                result
            } else {
                Err((ErrorCode::BadChannel, format!("the token's channel {channel:?} is not a valid channel name")))
            };
            if let Err((code, message)) = result {
                self.reply(id, pubsub::error(None, code, &message));
            }
        }
    }

    /// Sets the connection's deadline to its token's `exp` plus the grace (none without `exp`).
    fn arm_expiry(&mut self, now: Instant, id: ConnId) {
        let grace = self.config.auth.expire_grace;
        let expires = self.conn(id).and_then(|c| c.native.as_ref()).and_then(|a| a.expires);
        let deadline = expires.map(|exp| later(self.instant_at(now, exp), grace));
        let epoch = self.epoch(now);
        let Some(conn) = self.conn_mut(id) else { return };
        match deadline {
            Some(at) => conn.timers.set(Timer::Handshake, epoch, at),
            None => conn.timers.stop(Timer::Handshake),
        }
        self.rearm(id);
    }

    /// The deadline of an open pub/sub connection: its token expired, or it never sent one.
    pub(super) fn native_deadline(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        match conn.native.as_ref().map(|a| a.expires) {
            None if self.config.auth.require => {
                self.metrics.auth_failures += 1;
                self.close(now, id, TOKEN_EXPIRED, "no connection token in time")
            }
            Some(Some(exp)) => {
                let grace = self.config.auth.expire_grace.as_secs();
                if self.token_clock(now) >= exp.saturating_add(grace) {
                    self.metrics.auth_failures += 1;
                    self.close(now, id, TOKEN_EXPIRED, "token expired");
                } else {
                    // A refresh moved the deadline after this wake-up was set.
                    self.arm_expiry(now, id);
                }
            }
            _ => {}
        }
    }

    /// True when `auth.require` holds this connection back from `op` (all but connect and ping).
    pub(super) fn needs_connect(&self, id: ConnId) -> bool {
        self.config.auth.require && self.conn(id).is_some_and(|c| c.native.is_none())
    }

    /// `connect`: authenticate with a token.
    pub(super) fn op_connect(&mut self, now: Instant, id: ConnId, request: Option<RequestId>, token: &str) {
        if self.conn(id).is_some_and(|c| c.native.is_some()) {
            let error = OpError::new(request, ErrorCode::AlreadyConnected, "this connection is already authenticated");
            return self.op_error(now, id, error);
        }
        match self.verify_token(now, token) {
            Ok(claims) => {
                self.reply(id, pubsub::connected("connected", request.as_ref(), &claims.sub, claims.exp));
                self.authenticate(now, id, claims);
            }
            Err(error) => self.refuse_token(now, id, &error),
        }
    }

    /// `refresh`: a new token for the same user moves the expiry.
    pub(super) fn op_refresh(&mut self, now: Instant, id: ConnId, request: Option<RequestId>, token: &str) {
        let Some(user) = self.conn(id).and_then(|c| c.native.as_ref()).map(|a| a.user.clone()) else {
            let error = OpError::new(request, ErrorCode::NotAuthenticated, "refresh needs an authenticated connection");
            return self.op_error(now, id, error);
        };
        let claims = match self.verify_token(now, token) {
            Ok(claims) if *claims.sub == *user => claims,
            Ok(_) => {
                let error = OpError::new(request, ErrorCode::BadToken, "the new token is for another user");
                return self.op_error(now, id, error);
            }
            Err(e) => {
                self.metrics.auth_failures += 1;
                return self.op_error(now, id, OpError::new(request, ErrorCode::BadToken, e.to_string()));
            }
        };
        self.reply(id, pubsub::connected("refreshed", request.as_ref(), &claims.sub, claims.exp));
        if let Some(auth) = self.conn_mut(id).and_then(|c| c.native.as_mut()) {
            auth.expires = claims.exp;
            if let Some(info) = claims.info {
                auth.info = Some(info.get().into());
            }
        }
        self.arm_expiry(now, id);
    }

    /// The user the connection's token names (`""`: anonymous or no token).
    pub(super) fn native_user(&self, id: ConnId) -> &str {
        self.conn(id).and_then(|c| c.native.as_ref()).map_or("", |a| &a.user)
    }

    /// How the connection appears in presence, join and leave: its name and its user.
    pub(super) fn member_name(&self, id: ConnId) -> String {
        pubsub::member_key(&self.conn_name(id), self.native_user(id))
    }

    /// The namespace of a native channel (its user list aside).
    pub(super) fn namespace(&self, channel: &str) -> Option<&NamespaceConfig> {
        self.config.namespace_of(channel)
    }

    /// The connection's user (`""`: anonymous), unless `channel` is user-limited
    /// (`name#u1,u2`) and does not list it.
    fn listed_user(&self, id: ConnId, channel: &str) -> Result<&str, Refused> {
        let user = self.native_user(id);
        if let Some(mut users) = pubsub::channel_users(channel)
            && (user.is_empty() || !users.any(|u| u == user))
        {
            return Err((ErrorCode::Forbidden, format!("\"{channel}\" is limited to the users it names")));
        }
        Ok(user)
    }

    /// Whether the connection may subscribe to `channel` (with `token` when its namespace
    /// wants one).
    fn may_subscribe(&self, now: Instant, id: ConnId, channel: &str, token: Option<&str>) -> Result<(), Refused> {
        let user = self.listed_user(id, channel)?;
        let Some(ns) = self.namespace(channel) else { return Ok(()) };
        match ns.subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated if !user.is_empty() => Ok(()),
            SubscribeRule::Authenticated => Err((
                ErrorCode::NotAuthenticated,
                format!("namespace \"{}\" needs a connection token naming a user", ns.name),
            )),
            SubscribeRule::Token => {
                let Some(token) = token else {
                    return Err((ErrorCode::BadToken, format!("namespace \"{}\" needs a subscription token", ns.name)));
                };
                let claims = self.verify_token(now, token).map_err(|e| (ErrorCode::BadToken, e.to_string()))?;
                if claims.channel.as_deref() != Some(channel) {
                    return Err((ErrorCode::BadToken, format!("the subscription token is not for \"{channel}\"")));
                }
                if *claims.sub != *user {
                    return Err((ErrorCode::BadToken, "the subscription token is for another user".to_owned()));
                }
                Ok(())
            }
        }
    }

    /// Whether the connection may publish to `channel` from its WebSocket.
    pub(super) fn may_publish(&self, id: ConnId, channel: &str) -> Result<(), Refused> {
        let route_allows = self.conn(id).and_then(|c| self.config.route.get(c.route)).is_some_and(|r| r.client_publish);
        if !route_allows {
            return Err((ErrorCode::PublishForbidden, "this route does not accept publishes from clients".to_owned()));
        }
        let user = self.listed_user(id, channel)?;
        let Some(ns) = self.namespace(channel) else { return Ok(()) };
        match ns.publish {
            PublishRule::None => {
                Err((ErrorCode::Forbidden, format!("namespace \"{}\" does not accept publishes from clients", ns.name)))
            }
            PublishRule::Subscribers if self.subscription_index(id, channel).is_some() => Ok(()),
            PublishRule::Subscribers => {
                Err((ErrorCode::Forbidden, format!("namespace \"{}\" takes publishes from its subscribers", ns.name)))
            }
            PublishRule::Authenticated if !user.is_empty() => Ok(()),
            PublishRule::Authenticated => Err((
                ErrorCode::NotAuthenticated,
                format!("namespace \"{}\" takes publishes from authenticated connections", ns.name),
            )),
        }
    }

    /// Whether the connection may ask who is on `channel`.
    pub(super) fn may_see_presence(&self, id: ConnId, channel: &str) -> Result<(), Refused> {
        // Only its own users may subscribe to a user-limited channel, so only they see it.
        if pubsub::channel_users(channel).is_some() && self.subscription_index(id, channel).is_none() {
            return Err((ErrorCode::NotSubscribed, format!("subscribe to \"{channel}\" to see its members")));
        }
        let Some(ns) = self.namespace(channel) else { return Ok(()) };
        if !ns.presence {
            return Err((ErrorCode::Forbidden, format!("namespace \"{}\" has presence off", ns.name)));
        }
        if self.subscription_index(id, channel).is_none() {
            return Err((ErrorCode::NotSubscribed, format!("subscribe to \"{channel}\" to see its members")));
        }
        Ok(())
    }

    /// Whether members of `channel` are tracked (and shown to the presence op).
    pub(super) fn tracks_presence(&self, channel: &str) -> bool {
        self.namespace(channel).is_none_or(|ns| ns.presence)
    }

    /// The stream rules of `channel`, when its namespace keeps history.
    pub(super) fn stream_rules(&self, channel: &str) -> Option<StreamRules> {
        let ns = self.namespace(channel).filter(|ns| ns.has_history())?;
        Some(StreamRules { size: ns.history_size, ttl: ns.history_ttl })
    }

    /// `subscribe` from a client: permissions, then the subscription.
    pub(super) fn op_subscribe_native(&mut self, now: Instant, id: ConnId, op: SubscribeOp) {
        let SubscribeOp { request, channel, presence, token, recover } = op;
        let result = self
            .may_subscribe(now, id, &channel, token.as_deref())
            .and_then(|()| self.subscribe_checked(now, id, request.clone(), &channel, presence, recover));
        if let Err((code, message)) = result {
            if code == ErrorCode::BadToken {
                self.metrics.auth_failures += 1;
            }
            self.op_error(now, id, OpError { id: request, code, message });
        }
    }

    /// Subscribes a connection whose right to it is settled, and replies: `subscribed` with
    /// the stream's position (and what it recovered) on a channel with history, else `ack`.
    fn subscribe_checked(
        &mut self,
        now: Instant,
        id: ConnId,
        request: Option<RequestId>,
        channel: &str,
        presence: Option<Box<str>>,
        recover: Option<Position>,
    ) -> Result<(), Refused> {
        let info = presence.or_else(|| self.conn(id).and_then(|c| c.native.as_ref()).and_then(|a| a.info.clone()));
        let Some(rules) = self.stream_rules(channel) else {
            self.op_subscribe(id, channel, info)?;
            if let Some(request) = request {
                self.reply(id, pubsub::ack(&request));
            }
            return Ok(());
        };
        if self.subscription_index(id, channel).is_some() {
            return Err((ErrorCode::AlreadySubscribed, format!("already subscribed to \"{channel}\"")));
        }
        let (recoverable, max_recover) = self.namespace(channel).map_or((false, 0), |ns| (ns.recover, ns.max_recover));
        if !self.redis.is_empty() {
            self.op_subscribe(id, channel, info)?;
            self.next_token += 1;
            let token = self.next_token;
            let recovering =
                Recovering { conn: id, channel: channel.to_owned(), token: Some(token), held: Vec::new(), floor: None };
            self.recovering.push(recovering);
            let recover = recover.filter(|_| recoverable);
            let (after, limit) = recover.as_ref().map_or((u64::MAX, 0), |p| (p.offset, max_recover + 1));
            let waiter = HistoryWaiter::Subscribe { conn: id, channel: channel.to_owned(), request, recover };
            self.read_from_redis(now, token, waiter, channel, after, limit, rules);
            return Ok(());
        }
        let wanted = recover.as_ref().filter(|_| recoverable);
        let read = match wanted {
            Some(position) => self.history.read(channel, position.offset, max_recover + 1, rules, now),
            None => self.history.read(channel, u64::MAX, 0, rules, now),
        };
        // Bring this hub up to the position the reply gives, so that the new subscriber's
        // live messages start right after it.
        if let Some(chan) = self.channels.find(channel) {
            self.catch_up(now, chan, rules, Some(read.top.offset));
        }
        self.op_subscribe(id, channel, info)?;
        if let Some(chan) = self.channels.find(channel).and_then(|c| self.channels.get_mut(c)) {
            chan.epoch = Some(read.top.epoch.clone().into());
            chan.seq = chan.seq.max(read.top.offset);
        }
        self.reply_subscribed(id, request.as_ref(), channel, &read, wanted, recoverable, max_recover);
        Ok(())
    }

    /// Sends `subscribed` with the stream's position and, when the recovery is whole, what
    /// the client missed since `wanted`.
    #[allow(clippy::too_many_arguments, reason = "one reply, from two paths that hold these apart")]
    fn reply_subscribed(
        &mut self,
        id: ConnId,
        request: Option<&RequestId>,
        channel: &str,
        read: &StreamRead,
        wanted: Option<&Position>,
        recoverable: bool,
        max_recover: usize,
    ) {
        let recovered = wanted.is_some_and(|position| {
            position.epoch == read.top.epoch
                && read.complete
                && position.offset <= read.top.offset
                && read.top.offset - position.offset <= max_recover as u64
        });
        let publications = if recovered { read.publications.as_slice() } else { &[] };
        let stream = Stream { epoch: &read.top.epoch, offset: read.top.offset, publications };
        self.reply(id, pubsub::subscribed(request, channel, Some((&stream, recoverable, recovered))));
    }

    /// A new random epoch for a stream Redis may have to create: one draw of a sequence that
    /// never repeats within this hub (two draws from different counters once collided, and a
    /// stream created again after Redis lost it got its old epoch back).
    fn epoch_candidate(&mut self) -> String {
        self.epoch_draws += 1;
        let mut state = self.socket_seed ^ self.epoch_draws.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!("{:016x}", crate::redis::splitmix64(&mut state))
    }

    /// Asks Redis for a read of `channel`'s stream; `waiter` gets the answer, under `token`.
    #[allow(clippy::too_many_arguments, reason = "one read's parameters, as the link takes them")]
    pub(super) fn read_from_redis(
        &mut self,
        now: Instant,
        token: u64,
        waiter: HistoryWaiter,
        channel: &str,
        after: u64,
        limit: usize,
        rules: StreamRules,
    ) {
        let epoch = self.epoch_candidate();
        let Some(link) = super::link_in(&mut self.redis, &self.route, channel) else { return };
        self.history_waiters.insert(token, waiter);
        let read = HistoryRead { token, channel: channel.to_owned(), after, limit, rules, epoch };
        link.history_read(now, read);
        self.pump_redis(now);
    }

    /// A history read came back from Redis (`read` is `None` when Redis was out of reach).
    pub(super) fn on_history_answer(&mut self, now: Instant, token: u64, read: Option<StreamRead>) {
        let Some(waiter) = self.history_waiters.remove(&token) else { return };
        match waiter {
            HistoryWaiter::Subscribe { conn, channel, request, recover } => {
                let held = match self.recovering.iter().position(|r| r.token == Some(token)) {
                    Some(index) => self.recovering.swap_remove(index).held,
                    // Unsubscribed or gone meanwhile.
                    None => return,
                };
                let Some(read) = read else {
                    if let Some(index) = self.subscription_index(conn, &channel) {
                        self.unsubscribe_at(conn, index);
                    }
                    let message = "the history could not be read (Redis is out of reach): subscribe again";
                    return self.op_error(now, conn, OpError::new(request, ErrorCode::HistoryUnavailable, message));
                };
                // The read and this hub's live stream must be of one epoch.
                if let Some(chan) = self.channels.find(&channel).and_then(|c| self.channels.get_mut(c)) {
                    match &chan.epoch {
                        // Nothing live yet: the read says where the stream is.
                        None => {
                            chan.epoch = Some(read.top.epoch.as_str().into());
                            chan.seq = chan.seq.max(read.top.offset);
                        }
                        Some(epoch) if **epoch != *read.top.epoch => {
                            return self.resubscribe_one(
                                conn,
                                &channel,
                                "the channel's stream started again (new epoch)",
                            );
                        }
                        Some(_) => {}
                    }
                }
                let (recoverable, max_recover) =
                    self.namespace(&channel).map_or((false, 0), |ns| (ns.recover, ns.max_recover));
                self.reply_subscribed(
                    conn,
                    request.as_ref(),
                    &channel,
                    &read,
                    recover.as_ref(),
                    recoverable,
                    max_recover,
                );
                let floor = read.top.offset;
                let mut next = floor.saturating_add(1);
                for (offset, data) in held.into_iter().filter(|(offset, _)| *offset > floor) {
                    if offset != next {
                        return self.resubscribe_one(conn, &channel, "publications were missed");
                    }
                    let raw = std::str::from_utf8(&data).unwrap_or("null");
                    self.reply(conn, pubsub::message_at(&channel, offset, true, raw));
                    next = offset.saturating_add(1);
                }
                if next == floor.saturating_add(1) {
                    self.recovering.push(Recovering {
                        conn,
                        channel,
                        token: None,
                        held: Vec::new(),
                        floor: Some(floor),
                    });
                }
            }
            HistoryWaiter::Page { conn, channel, request, since } => {
                self.answer_history(now, conn, request, &channel, since.as_ref(), read);
            }
            HistoryWaiter::Admin { conn, channel } => self.admin_history_answer(conn, &channel, read),
        }
    }

    /// Forgets a subscriber's held recovery when it leaves the channel.
    pub(super) fn forget_recovering(&mut self, id: ConnId, channel: &str) {
        if !self.recovering.is_empty() {
            self.recovering.retain(|r| !(r.conn == id && r.channel == channel));
        }
    }

    /// `history`: a page of a channel's stream, read from the node's table or from Redis.
    pub(super) fn op_history(
        &mut self,
        now: Instant,
        id: ConnId,
        request: Option<RequestId>,
        channel: &str,
        since: Option<Position>,
        limit: Option<usize>,
    ) {
        let (rules, limit) = match self.history_access(now, id, channel, limit) {
            Ok(granted) => granted,
            Err((code, message)) => return self.op_error(now, id, OpError { id: request, code, message }),
        };
        let after = since.as_ref().map_or(0, |p| p.offset);
        if !self.redis.is_empty() {
            let waiter = HistoryWaiter::Page { conn: id, channel: channel.to_owned(), request, since };
            self.next_token += 1;
            let token = self.next_token;
            return self.read_from_redis(now, token, waiter, channel, after, limit, rules);
        }
        let read = self.history.read(channel, after, limit, rules, now);
        self.answer_history(now, id, request, channel, since.as_ref(), Some(read));
    }

    /// Whether the connection may read `channel`'s history (it is subscribed, or may subscribe
    /// without a token): the stream's rules and the page size it gets.
    fn history_access(
        &self,
        now: Instant,
        id: ConnId,
        channel: &str,
        limit: Option<usize>,
    ) -> Result<(StreamRules, usize), Refused> {
        let Some(rules) = self.stream_rules(channel) else {
            return Err((ErrorCode::HistoryUnavailable, format!("\"{channel}\" keeps no history")));
        };
        if self.subscription_index(id, channel).is_none() {
            self.may_subscribe(now, id, channel, None)?;
        }
        let max = self.namespace(channel).map_or(0, |ns| ns.max_recover);
        Ok((rules, limit.unwrap_or(max).min(max)))
    }

    /// Replies to a `history` op with the page `read` (`None`: Redis was out of reach), or with
    /// `epoch_changed` when the client's position is from another epoch.
    fn answer_history(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: Option<RequestId>,
        channel: &str,
        since: Option<&Position>,
        read: Option<StreamRead>,
    ) {
        if !self.conn(conn).is_some_and(|c| c.phase == Phase::Open) {
            return;
        }
        let page = match read {
            None => Err((ErrorCode::HistoryUnavailable, "Redis is out of reach".to_owned())),
            Some(read) if since.is_some_and(|p| p.epoch != read.top.epoch) => Err((
                ErrorCode::EpochChanged,
                format!("the stream's epoch is now {:?}: what you hold is stale", read.top.epoch),
            )),
            Some(read) => Ok(read),
        };
        match page {
            Ok(read) => {
                let stream =
                    Stream { epoch: &read.top.epoch, offset: read.top.offset, publications: &read.publications };
                self.reply(conn, pubsub::history(request.as_ref(), channel, &stream));
            }
            Err((code, message)) => self.op_error(now, conn, OpError { id: request, code, message }),
        }
    }

    /// Publishes JSON `data` on a native channel: numbered in the node's stream first when the
    /// channel keeps history. False when it could not be (history in Redis, out of reach).
    pub(super) fn publish_native(&mut self, now: Instant, channel: String, data: &[u8]) -> bool {
        let Some(rules) = self.stream_rules(&channel) else {
            self.fan_out(now, channel, true, Bytes::copy_from_slice(data));
            return true;
        };
        if !self.redis.is_empty() {
            // Through Redis only, to every node this one included: its order is the stream's.
            self.metrics.publishes += 1;
            let epoch = self.epoch_candidate();
            let envelope =
                Envelope { origin: self.origin.clone(), channel, text: true, payload: Bytes::copy_from_slice(data) };
            let mut sent = true;
            if let Some(link) = super::link_in(&mut self.redis, &self.route, &envelope.channel)
                && !link.history_publish(now, &envelope, rules, &epoch)
            {
                self.metrics.broker_dropped += 1;
                sent = false;
            }
            self.pump_redis(now);
            return sent;
        }
        let top = self.history.append(&channel, Bytes::copy_from_slice(data), rules, now);
        self.fan_out(now, channel, true, streamed(&top.epoch, top.offset, data));
        true
    }

    /// Tells the channel's subscribers on every hub (but `skip`, the member itself) that
    /// `member` joined or left.
    pub(super) fn announce_member(
        &mut self,
        now: Instant,
        channel: &str,
        kind: &str,
        member: &str,
        info: Option<&str>,
        skip: Option<ConnId>,
    ) {
        let frame = pubsub::join_leave(kind, channel, member, info);
        let mut payload = Vec::with_capacity(frame.len() + 1);
        payload.push(FRAMED);
        payload.extend_from_slice(frame.as_bytes());
        if let Some(chan) = self.channels.find(channel) {
            // A subscriber still waiting for its `subscribed` (its history read) hears nothing
            // before it.
            let mut quiet: Vec<ConnId> = skip.into_iter().collect();
            quiet.extend(self.recovering.iter().filter(|r| r.floor.is_none() && r.channel == channel).map(|r| r.conn));
            self.send_frame(now, chan, true, frame.as_bytes(), &quiet, &[]);
        }
        let envelope = Envelope {
            origin: self.origin.clone(),
            channel: channel.to_owned(),
            text: true,
            payload: Bytes::from(payload),
        };
        self.broker_publish(now, envelope);
    }

    /// Whether subscribers of `channel` hear joins and leaves.
    pub(super) fn announces_members(&self, channel: &str) -> bool {
        self.namespace(channel).is_some_and(|ns| ns.join_leave)
    }

    /// Delivers a stream publication in order: an old one is dropped, a missing one is read
    /// back from the node's history first, and a new epoch (or a gap history no longer
    /// covers) ends every local subscription, telling each client to resubscribe.
    pub(super) fn deliver_streamed(
        &mut self,
        now: Instant,
        chan: crate::channel::ChannelId,
        epoch: &str,
        offset: u64,
        data: &[u8],
    ) {
        let Some(channel) = self.channels.get(chan) else { return };
        let name = channel.name.clone();
        match channel.epoch.as_deref() {
            None => {
                if let Some(channel) = self.channels.get_mut(chan) {
                    channel.epoch = Some(epoch.into());
                    channel.seq = offset.saturating_sub(1);
                }
            }
            Some(known) if known != epoch => {
                return self.resubscribe_all(now, chan, "the channel's stream started again (new epoch)");
            }
            Some(_) => {}
        }
        let seq = self.channels.get(chan).map_or(0, |c| c.seq);
        if offset <= seq {
            return;
        }
        if Some(offset) == seq.checked_add(1) {
            return self.deliver_offset(now, chan, &name, offset, data);
        }
        match self.stream_rules(&name) {
            Some(rules) if self.redis.is_empty() => self.catch_up(now, chan, rules, Some(offset)),
            _ => self.resubscribe_all(now, chan, "publications were missed"),
        }
    }

    /// Delivers, from the node's history, what this hub has not delivered on `chan` up to
    /// `until` (everything kept when `None`).
    fn catch_up(&mut self, now: Instant, chan: crate::channel::ChannelId, rules: StreamRules, until: Option<u64>) {
        let Some(channel) = self.channels.get(chan) else { return };
        let (name, seq, epoch) = (channel.name.clone(), channel.seq, channel.epoch.clone());
        let Some(epoch) = epoch else { return };
        if until.is_some_and(|until| until <= seq) {
            return;
        }
        let limit = until.map_or(usize::MAX, |until| usize::try_from(until - seq).unwrap_or(usize::MAX));
        let read = self.history.read(&name, seq, limit, rules, now);
        if *read.top.epoch != *epoch || !read.complete {
            return self.resubscribe_all(now, chan, "publications were missed");
        }
        for (offset, data) in read.publications {
            self.deliver_offset(now, chan, &name, offset, &data);
        }
    }

    fn deliver_offset(&mut self, now: Instant, chan: crate::channel::ChannelId, name: &str, offset: u64, data: &[u8]) {
        if let Some(channel) = self.channels.get_mut(chan) {
            channel.seq = offset;
        }
        let raw = std::str::from_utf8(data).unwrap_or("null");
        let frame = pubsub::message_at(name, offset, true, raw);
        let mut muted = Vec::new();
        let mut gapped = Vec::new();
        if !self.recovering.is_empty() {
            self.recovering.retain_mut(|r| {
                if r.channel != name {
                    return true;
                }
                match r.floor {
                    None => r.held.push((offset, Bytes::copy_from_slice(data))),
                    Some(floor) if offset <= floor => {}
                    // Right after what its read covered: live from here on.
                    Some(floor) if offset == floor.saturating_add(1) => return false,
                    // Past it with a hole between: this one cannot go on.
                    Some(_) => {
                        gapped.push(r.conn);
                        return false;
                    }
                }
                muted.push(r.conn);
                true
            });
        }
        muted.extend_from_slice(&gapped);
        self.send_frame(now, chan, true, frame.as_bytes(), &muted, &[]);
        for conn in gapped {
            self.resubscribe_one(conn, name, "publications were missed");
        }
    }

    /// The subscriber connections of `shards` came back from a loss: what was published on
    /// their history channels meanwhile never arrived, and a quiet channel would not show the
    /// hole. Their subscribers are told to resubscribe, recovering exactly what they missed.
    pub(super) fn streams_lost(&mut self, now: Instant, shards: &[usize]) {
        let lost: Vec<crate::channel::ChannelId> = self
            .channels
            .iter()
            .filter(|(name, _)| self.stream_rules(name).is_some())
            .filter(|(name, _)| shards.contains(&self.route.shard(name, self.redis.len())))
            .map(|(_, id)| id)
            .collect();
        for chan in lost {
            self.resubscribe_all(now, chan, "the connection to Redis was lost: recover what you missed");
        }
    }

    /// Ends one connection's subscription to `channel`, telling it to subscribe again.
    fn resubscribe_one(&mut self, conn: ConnId, channel: &str, why: &str) {
        if let Some(index) = self.subscription_index(conn, channel) {
            self.metrics.resubscribes += 1;
            self.unsubscribe_at(conn, index);
            if self.conn(conn).is_some_and(|c| c.phase == Phase::Open) {
                self.reply(conn, pubsub::unsubscribed(channel, "resubscribe", why));
            }
        }
    }

    /// Ends every local subscription of `chan`, telling each subscriber to subscribe again
    /// (with recovery): this hub cannot promise them gap-free delivery any more.
    fn resubscribe_all(&mut self, _now: Instant, chan: crate::channel::ChannelId, why: &str) {
        let Some(channel) = self.channels.get(chan) else { return };
        let name = channel.name.clone();
        let subscribers = channel.subscribers.clone();
        for id in subscribers {
            self.resubscribe_one(id, &name, why);
        }
    }
}
