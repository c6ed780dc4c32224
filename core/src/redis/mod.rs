//! The Redis link: one hub's sans-IO connection to Redis, for fan-out between nodes, cluster-wide presence
//! and cluster connection counts, behind a circuit breaker.
//!
//! A [`RedisLink`] owns two logical connections, named by [`LinkConn`]: the *subscriber* connection
//! (SUBSCRIBE/UNSUBSCRIBE; receives `message` pushes) and the *command* connection (PUBLISH, the lease,
//! presence hashes, PING probes, cluster stats). It never opens a socket: it asks the shell to open one
//! ([`RedisLink::poll_connect`]), is fed the bytes that arrive, and offers the bytes to write. RESP2 is
//! encoded and decoded with the `redis-protocol` crate; commands are pipelined and replies matched in order.
//!
//! # Run loop
//!
//! After every input (`handle_*`, `subscribe`, `publish`, `presence_*`, …), in this order:
//! 1. drain [`RedisLink::poll_close`]: drop that socket (or abandon its pending connect), and report
//!    nothing more for it;
//! 2. drain [`RedisLink::poll_connect`]: start a non-blocking connect to the `host:port` given, then call
//!    [`RedisLink::handle_connected`] or [`RedisLink::handle_connect_failed`];
//! 3. for each connection that [`RedisLink::wants_write`], write what [`RedisLink::transmit`] offers and
//!    report the count to [`RedisLink::consume`];
//! 4. drain [`RedisLink::poll_delivery`] (into the hub) and [`RedisLink::poll_presence`];
//! 5. sleep until [`RedisLink::poll_timeout`], then call [`RedisLink::handle_timeout`].
//!
//! Readable bytes go to [`RedisLink::handle_bytes`] in any chunking; end of stream or a read/write error
//! to [`RedisLink::handle_eof`]. Events for a connection the link is not using are ignored.
//!
//! # Keys
//!
//! - `{prefix}:ch:{channel}` — the Redis channel for a hub channel. A hub subscribes only to channels it
//!   has local subscribers on.
//! - `{prefix}:epoch` — a counter; each link `INCR`s it once to learn its *epoch*, so a node restarted
//!   under the same `node_id` is told apart from its previous life (sequence numbers restart, presence
//!   entries of the dead incarnation are recognised as dead).
//! - `{prefix}:lease:{node}:{worker}` — the hub's lease, `"{epoch}:{local connections}"`, written with
//!   `SET .. EX ttl` and refreshed every `lease_ttl / 3`. Refreshes use `SET .. GET` (Redis 6.2+): when the
//!   old value is gone the lease had lapsed, others may have pruned our presence, so we write it again.
//! - `{prefix}:presence:{channel}` — a hash; field `{node}:{worker}:{member}` (so equal member ids on two
//!   hubs do not collide), value `{"hub":"node:worker","epoch":E,"member":"…","info":<json or null>}`.
//!   A member is live when its hub's lease exists and carries the same epoch; readers `HDEL` dead ones.
//! - Cluster stats: `KEYS {prefix}:lease:*` then `MGET`, summing the connection counts. `KEYS` walks the
//!   whole keyspace; fine for a Redis dedicated to a few dozen hubs, a `SCAN` loop would be needed beyond.
//!
//! # Envelope wire format (the PUBLISH payload)
//!
//! Big-endian, version 1:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `1` |
//! | 1 | flags; bit 0 = text (then the payload is UTF-8) |
//! | 8 | origin epoch |
//! | 8 | origin sequence number, from 1, +1 per envelope sent |
//! | 4 | origin worker |
//! | 2 + n | origin node id (length, UTF-8 bytes) |
//! | 2 + n | channel (length, UTF-8 bytes) |
//! | rest | payload, binary-safe |
//!
//! A receiver drops envelopes from its own node (its workers share an in-process bus), for
//! channels it does not hold, whose Redis channel does not match their channel, and any whose
//! sequence number is not above the last one seen from that origin in the same epoch (a new
//! epoch restarts the count).
//!
//! # Circuit breaker
//!
//! Failures are: a connect refused or timed out, a reply later than [`REPLY_TIMEOUT`], an error reply, a
//! protocol error, end of stream. A successful reply resets the count (a mere TCP connect does not: a Redis
//! that accepts and then hangs up must still open the breaker). After `failure_threshold` consecutive
//! failures the breaker opens: both sockets close, publishes are refused (and counted in
//! [`RedisLink::dropped`]), nothing reconnects. After `open_for` it is half-open: only the command
//! connection connects and sends one `PING`. `PONG` closes the breaker: the subscriber connection reconnects
//! and re-subscribes every channel, the lease and every local presence member are written again. Any
//! failure while half-open opens it again for `open_for`. While closed, a lost connection reconnects after
//! an exponential backoff (`backoff.min` doubling up to `backoff.max`, spread by ±`backoff.jitter`).

mod breaker;
mod conn;
mod envelope;
mod history;
mod lease;
mod presence;
mod probe;
mod resp;
mod rng;
mod shard;
mod slots;
mod tls;
mod url;

pub(crate) use history::{HistoryAnswer, HistoryRead};
pub(crate) use presence::PresenceAnswer;
pub(crate) use rng::splitmix64;
pub(crate) use shard::shard_of;
pub use slots::redis_cluster_slot;
pub(crate) use slots::{MapReader, SLOTS, SlotMap, channel_slot, owned_tag};
pub(crate) use tls::{RedisSession, RedisTls};
pub(crate) use url::{UrlError, host_of, is_tls_url, parse_url};

use breaker::Breaker;
use conn::{Conn, Expect, Phase};
use envelope::encode_envelope;
use lease::MIN_TICK;
use presence::{Member, PresenceQuery};
use resp::{ProtocolError, bulk, message_push, next_frame};
use rng::SplitMix;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::Buf;
use redis_protocol::resp2::types::OwnedFrame;
use serde_json::value::RawValue;

use crate::api::BrokerState;
use crate::broker::{Envelope, Origin};
use crate::config::{BackoffConfig, BrokerConfig};
use crate::time::later;

/// A command whose reply takes longer than this counts as a failure and costs its connection.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection not established within this counts as a failure.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The shard number [`LinkConn::MAP`] goes by, above any link's (at most 255 links).
const MAP_SHARD: u16 = 255;

/// One of a hub's connections to Redis: the command or the subscriber connection of one
/// shard (one Redis instance of `broker.urls`; shard 0 with a single `broker.url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkConn {
    shard: u16,
    subscriber: bool,
}

#[allow(non_upper_case_globals, reason = "named like the two connections of a link, which is what they are")]
impl LinkConn {
    /// Shard 0's command connection: carries every command but subscriptions, pipelined.
    pub const Command: Self = Self { shard: 0, subscriber: false };
    /// Shard 0's subscriber connection: holds the subscriptions, receives what others publish.
    pub const Subscriber: Self = Self { shard: 0, subscriber: true };
    /// With `broker.kind = "redis-cluster"`: the connection that reads the cluster's slot map.
    pub const MAP: Self = Self { shard: MAP_SHARD, subscriber: false };

    /// Where a shell keeps this connection's socket: `2 × shard`, plus 1 for the subscriber.
    pub fn index(self) -> usize {
        usize::from(self.shard) * 2 + usize::from(self.subscriber)
    }

    /// The connection kept at `index` (the inverse of [`LinkConn::index`]).
    pub fn from_index(index: usize) -> Self {
        Self { shard: u16::try_from(index / 2).unwrap_or(u16::MAX), subscriber: index % 2 == 1 }
    }

    /// The shard (Redis instance) it goes to.
    pub fn shard(self) -> usize {
        usize::from(self.shard)
    }

    /// Whether it is the subscriber connection.
    pub fn is_subscriber(self) -> bool {
        self.subscriber
    }

    /// Whether it is the cluster map reader's connection ([`LinkConn::MAP`]).
    pub fn is_map(self) -> bool {
        self == Self::MAP
    }

    /// The same connection of shard `shard`.
    pub(crate) fn on_shard(self, shard: usize) -> Self {
        Self { shard: u16::try_from(shard).unwrap_or(u16::MAX), ..self }
    }

    /// The connection's role as its shard's link knows it (every link is shard 0 to itself).
    pub(crate) fn role(self) -> Self {
        Self { shard: 0, ..self }
    }
}

/// One hub's sans-IO link to Redis; see the module docs for the run loop.
#[derive(Debug)]
pub(crate) struct RedisLink {
    addr: String,
    db: u32,
    prefix: String,
    origin: Origin,
    /// `node:worker`, as written in presence values.
    hub_id: String,
    lease_key: String,
    lease_ttl_secs: u64,
    tick_every: Duration,
    backoff: BackoffConfig,
    threshold: u32,
    open_for: Duration,
    breaker: Breaker,
    sub: Conn,
    cmd: Conn,
    rng: SplitMix,
    epoch: Option<u64>,
    next_seq: u64,
    channels: BTreeSet<String>,
    members: BTreeMap<String, BTreeMap<String, Member>>,
    /// Members that left while Redis was out of reach, to `HDEL` on reconnect.
    stale: BTreeMap<String, BTreeSet<String>>,
    /// The last `(epoch, seq)` seen from each hub, by node id then worker (looked up by the
    /// node id as received, so a delivery allocates nothing for it).
    last_seen: BTreeMap<String, BTreeMap<u32, (u64, u64)>>,
    deliveries: VecDeque<Envelope>,
    answers: VecDeque<PresenceAnswer>,
    closes: VecDeque<LinkConn>,
    tick_at: Option<Instant>,
    local_connections: u64,
    cluster_connections: Option<u64>,
    dropped: u64,
    /// The Redis channel whose subscription the hub wants to hear confirmed (`watch`).
    watched: Option<Vec<u8>>,
    /// The watched subscription was confirmed, or the lease had lapsed, since the hub last
    /// asked: what the hub told the cluster through Redis may have been missed.
    resync: bool,
    /// The hubs (`node:worker`) holding a lease at the last stats refresh, not yet taken.
    live_hubs: Option<BTreeSet<String>>,
    /// Channels whose subscription Redis has confirmed on the current subscriber connection.
    confirmed: BTreeSet<String>,
    /// History reads waiting for their channel's subscription to be confirmed.
    waiting_reads: Vec<HistoryRead>,
    /// Answers to history reads, for the hub.
    history_answers: VecDeque<HistoryAnswer>,
    /// The hub's own probe channel, `{prefix}:probe:{node}:{worker}`.
    probe_channel: String,
    /// The SHA1 Redis gave the history publish script on this command connection (`EVALSHA`
    /// then spares Redis hashing the script's text on every publication).
    publish_sha: Option<String>,
    /// `SCRIPT LOAD` was sent on this command connection.
    script_loading: bool,
    /// The subscriber connection has been up before (a new one is a reconnect).
    sub_was_up: bool,
    /// The subscriber connection came back since the hub last asked (`take_reconnected`).
    reconnected: bool,
    /// How often a probe goes out, and how long it may take to come back (see `probe`).
    probe_interval: Duration,
    probe_timeout: Duration,
    /// The last probe's number.
    probe_seq: u64,
    /// The probe on its way: its number and when it was sent.
    probe_out: Option<(u64, Instant)>,
    /// When the next probe is due.
    probe_next: Option<Instant>,
    /// The probe channel's subscription is confirmed on the current subscriber connection.
    probe_confirmed: bool,
    /// The last probe did not come back in time.
    deaf: bool,
    /// Probes that did not come back in time.
    probe_failures: u64,
    /// Talking to a Redis Cluster master: sharded pub/sub, hash-tagged keys.
    cluster: bool,
    /// The hash tag in this link's own keys (epoch, lease, probe): empty outside a cluster.
    tag: String,
    /// Redis said a key lives elsewhere (`MOVED`, `ASK`, `CLUSTERDOWN`): the map is stale.
    moved: bool,
    /// Replaced after a change of the cluster's slots: holds state, never connects.
    retired: bool,
}

impl RedisLink {
    /// A link for the hub `origin`, configured by `config` (its `url` must be `redis://host[:port][/db]`).
    pub(crate) fn new(config: &BrokerConfig, url: &str, origin: Origin) -> Result<Self, UrlError> {
        let (addr, db) = parse_url(url)?;
        Ok(Self::build(config, addr, db, origin, None))
    }

    /// A link to the Redis Cluster master at `addr` (`host:port`), whose own keys carry `tag`
    /// (a hash tag landing on one of the master's slots).
    pub(crate) fn new_cluster(config: &BrokerConfig, addr: String, origin: Origin, tag: String) -> Self {
        Self::build(config, addr, 0, origin, Some(tag))
    }

    /// A link that never connects: it holds a cluster hub's channels and members until the
    /// first slot map says which master each belongs to.
    pub(crate) fn placeholder(config: &BrokerConfig, origin: Origin) -> Self {
        let mut link = Self::build(config, String::new(), 0, origin, Some(String::new()));
        link.retire();
        link
    }

    fn build(config: &BrokerConfig, addr: String, db: u32, origin: Origin, cluster: Option<String>) -> Self {
        let tag = cluster.clone().unwrap_or_default();
        let hub_id = format!("{}:{}", origin.node, origin.worker);
        let probe_channel = format!("{}:probe:{tag}{hub_id}", config.prefix);
        let lease_key = format!("{}:lease:{tag}{hub_id}", config.prefix);
        let ttl = config.lease_ttl;
        let lease_ttl_secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
        let rng = SplitMix::seeded(&origin);
        // Both sockets are asked for at once; their connect deadline starts with the first
        // time the link hears (`start`).
        let connecting = Phase::Connecting { deadline: None, asked: false };
        Self {
            addr,
            db,
            prefix: config.prefix.clone(),
            origin,
            hub_id,
            lease_key,
            lease_ttl_secs,
            tick_every: (ttl / 3).max(MIN_TICK),
            backoff: config.backoff.clone(),
            threshold: config.breaker.failure_threshold.max(1),
            open_for: config.breaker.open_for,
            breaker: Breaker::Closed { failures: 0 },
            sub: Conn { phase: connecting, ..Conn::default() },
            cmd: Conn { phase: connecting, ..Conn::default() },
            rng,
            epoch: None,
            next_seq: 1,
            channels: BTreeSet::new(),
            members: BTreeMap::new(),
            stale: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            deliveries: VecDeque::new(),
            answers: VecDeque::new(),
            closes: VecDeque::new(),
            tick_at: None,
            local_connections: 0,
            cluster_connections: None,
            dropped: 0,
            watched: None,
            resync: false,
            live_hubs: None,
            confirmed: BTreeSet::new(),
            waiting_reads: Vec::new(),
            history_answers: VecDeque::new(),
            probe_channel,
            publish_sha: None,
            script_loading: false,
            sub_was_up: false,
            reconnected: false,
            probe_interval: config.probe_interval,
            probe_timeout: config.probe_timeout,
            probe_seq: 0,
            probe_out: None,
            probe_next: None,
            probe_confirmed: false,
            deaf: false,
            probe_failures: 0,
            cluster: cluster.is_some(),
            tag,
            moved: false,
            retired: false,
        }
    }

    /// The circuit breaker's state.
    pub(crate) fn state(&self) -> BrokerState {
        // A cluster master's link is down while it reconnects: its channels hear nothing.
        let down = self.cluster && !self.retired && (self.cmd.phase != Phase::Ready || self.sub.phase != Phase::Ready);
        match self.breaker {
            Breaker::Closed { .. } if down => BrokerState::Reconnecting,
            Breaker::Closed { .. } if self.deaf => BrokerState::Deaf,
            Breaker::Closed { .. } => BrokerState::Closed,
            Breaker::Open { .. } => BrokerState::Open,
            Breaker::HalfOpen => BrokerState::HalfOpen,
        }
    }

    /// Publishes refused so far because Redis was out of reach.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Open connections over every live hub, as of the last stats refresh; `None` while unknown.
    pub(crate) fn cluster_connections(&self) -> Option<u64> {
        self.cluster_connections
    }

    /// This hub's open connection count, written into its lease at the next refresh.
    pub(crate) fn set_local_connections(&mut self, n: u64) {
        self.local_connections = n;
    }

    /// The next connection to open, with the `host:port` to open it to.
    #[must_use]
    pub(crate) fn poll_connect(&mut self) -> Option<(LinkConn, String)> {
        if self.retired {
            return None;
        }
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            if let Phase::Connecting { deadline, asked: false } = self.conn(which).phase {
                self.conn_mut(which).phase = Phase::Connecting { deadline, asked: true };
                return Some((which, self.addr.clone()));
            }
        }
        None
    }

    /// The next socket to drop (or pending connect to abandon); nothing more is reported for it.
    #[must_use]
    pub(crate) fn poll_close(&mut self) -> Option<LinkConn> {
        self.closes.pop_front()
    }

    /// The next message published by another hub on a channel this hub holds.
    #[must_use]
    pub(crate) fn poll_delivery(&mut self) -> Option<Envelope> {
        self.deliveries.pop_front()
    }

    /// The next answer to a [`Self::request_presence`].
    #[must_use]
    pub(crate) fn poll_presence(&mut self) -> Option<PresenceAnswer> {
        self.answers.pop_front()
    }

    /// The connection asked for by `poll_connect` is established.
    pub(crate) fn handle_connected(&mut self, now: Instant, which: LinkConn) {
        if !matches!(self.conn(which).phase, Phase::Connecting { asked: true, .. }) {
            return;
        }
        self.conn_mut(which).phase = Phase::Ready;
        match which.subscriber {
            false => {
                if self.db != 0 {
                    let db = self.db.to_string();
                    self.cmd.send(now, &[b"SELECT", db.as_bytes()], Expect::Select);
                }
                // Loaded again (lazily) on this connection: the Redis behind it may be new.
                self.publish_sha = None;
                self.script_loading = false;
                if self.epoch.is_none() {
                    let key = format!("{}:epoch{}", self.prefix, self.tag);
                    self.cmd.send(now, &[b"INCR", key.as_bytes()], Expect::Epoch);
                }
                if self.breaker == Breaker::HalfOpen {
                    self.cmd.send(now, &[b"PING"], Expect::Probe);
                } else {
                    self.register(now);
                }
            }
            true => {
                // What was published while it was down never reached us.
                self.reconnected |= self.sub_was_up;
                self.sub_was_up = true;
                let mut keys: Vec<String> = self.channels.iter().map(|c| self.channel_key(c)).collect();
                keys.push(self.probe_key());
                self.sub_command(now, true, &keys);
            }
        }
    }

    /// The connection asked for by `poll_connect` could not be established (refused, unreachable, timed out).
    pub(crate) fn handle_connect_failed(&mut self, now: Instant, which: LinkConn) {
        if matches!(self.conn(which).phase, Phase::Connecting { asked: true, .. }) {
            self.lose(now, which, false);
        }
    }

    /// The connection's stream ended, or reading or writing it failed; the shell has dropped the socket.
    pub(crate) fn handle_eof(&mut self, now: Instant, which: LinkConn) {
        if matches!(self.conn(which).phase, Phase::Ready | Phase::Connecting { asked: true, .. }) {
            self.lose(now, which, false);
        }
    }

    /// Bytes read from the connection, in any chunking.
    pub(crate) fn handle_bytes(&mut self, now: Instant, which: LinkConn, bytes: &[u8]) {
        if self.conn(which).phase != Phase::Ready {
            return;
        }
        self.conn_mut(which).inbuf.extend_from_slice(bytes);
        while self.conn(which).phase == Phase::Ready {
            // The common push, a published message, is read in place and its payload shared
            // with the hub without a copy; anything else goes through the general decoder.
            if which.subscriber
                && let Some((key, payload, used)) = message_push(&self.sub.inbuf, self.cluster)
            {
                let frame = self.sub.inbuf.split_to(used).freeze();
                if frame[key.clone()] == *self.probe_channel.as_bytes() {
                    self.on_probe(&frame[payload]);
                } else {
                    self.deliver(&frame[key], frame.slice(payload));
                }
                self.record_success(LinkConn::Subscriber);
                continue;
            }
            let frame = match next_frame(&mut self.conn_mut(which).inbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(ProtocolError) => {
                    self.lose(now, which, true);
                    break;
                }
            };
            let handled = if which.subscriber { self.on_push(now, frame) } else { self.on_reply(now, frame) };
            if let Err(ProtocolError) = handled {
                self.lose(now, which, true);
            }
        }
    }

    /// Fills `out` with the connection's unsent bytes; returns how many slices were filled.
    pub(crate) fn transmit<'a>(&'a self, which: LinkConn, out: &mut [IoSlice<'a>]) -> usize {
        let conn = self.conn(which);
        match out.first_mut() {
            Some(slot) if conn.phase == Phase::Ready && !conn.out.is_empty() => {
                *slot = IoSlice::new(&conn.out);
                1
            }
            _ => 0,
        }
    }

    /// `n` bytes of what `transmit` offered were written.
    pub(crate) fn consume(&mut self, which: LinkConn, n: usize) {
        let out = &mut self.conn_mut(which).out;
        out.advance(n.min(out.len()));
    }

    /// True while the connection has bytes to write.
    pub(crate) fn wants_write(&self, which: LinkConn) -> bool {
        let conn = self.conn(which);
        conn.phase == Phase::Ready && !conn.out.is_empty()
    }

    /// When `handle_timeout` must next be called (early calls are harmless).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let breaker = match self.breaker {
            Breaker::Open { until } => Some(until),
            _ => None,
        };
        [breaker, self.tick_at, self.sub.wake_at(), self.cmd.wake_at(), self.probe_wake()].into_iter().flatten().min()
    }

    /// Arms the connect deadlines of sockets asked for before the link knew the time.
    pub(crate) fn start(&mut self, now: Instant) {
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            if let Phase::Connecting { deadline: None, asked } = self.conn(which).phase {
                self.conn_mut(which).phase = Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked };
            }
        }
    }

    /// Runs whatever is due at `now`: connect and reply timeouts, reconnects, the breaker, lease and stats.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.retired {
            return;
        }
        if let Breaker::Open { until } = self.breaker
            && until <= now
        {
            self.breaker = Breaker::HalfOpen;
            self.cmd.phase = Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked: false };
        }
        self.start(now);
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            let conn = self.conn(which);
            match conn.phase {
                Phase::Backoff(at) if at <= now => {
                    self.conn_mut(which).phase =
                        Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked: false };
                }
                Phase::Connecting { deadline: Some(deadline), asked } if deadline <= now => {
                    self.lose(now, which, asked);
                }
                Phase::Ready if conn.expect.front().is_some_and(|(deadline, _)| *deadline <= now) => {
                    self.lose(now, which, true);
                }
                _ => {}
            }
        }
        if self.tick_at.is_some_and(|at| at <= now) {
            self.tick(now);
        }
        self.probe_tick(now);
    }

    /// The hub has its first local subscriber on `channel`: subscribe to it in Redis.
    pub(crate) fn subscribe(&mut self, now: Instant, channel: &str) {
        if self.channels.insert(channel.to_owned()) && self.sub.phase == Phase::Ready {
            let key = self.channel_key(channel);
            self.sub_command(now, true, &[key]);
        }
    }

    /// True once after the subscriber connection came back from a loss: publications made
    /// meanwhile were missed.
    pub(crate) fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }

    /// Asks `take_resync` to say when the subscription to `channel` is (re)confirmed.
    pub(crate) fn watch(&mut self, channel: &str) {
        self.watched = Some(self.channel_key(channel).into_bytes());
    }

    /// True once after the watched subscription was confirmed or the lease found lapsed.
    pub(crate) fn take_resync(&mut self) -> bool {
        std::mem::take(&mut self.resync)
    }

    /// The hubs that held a lease at the last stats refresh, once per refresh.
    pub(crate) fn take_live_hubs(&mut self) -> Option<BTreeSet<String>> {
        self.live_hubs.take()
    }

    /// Whether a publish would be sent now (not dropped).
    pub(crate) fn can_publish(&self) -> bool {
        self.writable()
    }

    /// The hub's last local subscriber on `channel` left: unsubscribe from it in Redis.
    pub(crate) fn unsubscribe(&mut self, now: Instant, channel: &str) {
        if !self.channels.remove(channel) {
            return;
        }
        // No longer confirmed from now on: a read for a new subscription must wait for its own.
        self.confirmed.remove(channel);
        if self.sub.phase == Phase::Ready {
            let key = self.channel_key(channel);
            self.sub_command(now, false, &[key]);
        }
    }

    /// Sends `envelope` to the other hubs; false (and counted as dropped) when Redis is out of reach.
    #[must_use]
    pub(crate) fn publish(&mut self, now: Instant, envelope: &Envelope) -> bool {
        let Some(epoch) = self.epoch.filter(|_| self.writable()) else {
            self.dropped += 1;
            return false;
        };
        let Some(payload) = encode_envelope(epoch, self.next_seq, envelope) else {
            self.dropped += 1;
            return false;
        };
        self.next_seq += 1;
        let key = self.channel_key(&envelope.channel);
        let verb = self.publish_verb();
        self.cmd.send(now, &[verb, key.as_bytes(), &payload], Expect::Ack);
        true
    }

    /// `member` (with optional `info`, a JSON text; invalid JSON is stored as none) is present on `channel`.
    pub(crate) fn presence_join(&mut self, now: Instant, channel: &str, member: &str, info: Option<&str>) {
        let info = info.filter(|text| serde_json::from_str::<&RawValue>(text).is_ok()).map(str::to_owned);
        let written = self.writable();
        if let Some(left) = self.stale.get_mut(channel) {
            left.remove(member);
        }
        self.members.entry(channel.to_owned()).or_default().insert(member.to_owned(), Member { info, written });
        if written {
            self.write_presence(now, channel, &[member]);
        }
    }

    /// `member` left `channel`.
    pub(crate) fn presence_leave(&mut self, now: Instant, channel: &str, member: &str) {
        let Some(members) = self.members.get_mut(channel) else { return };
        let Some(gone) = members.remove(member) else { return };
        if members.is_empty() {
            self.members.remove(channel);
        }
        if !gone.written {
            return;
        }
        if self.writable() {
            let field = self.field(member);
            let key = self.presence_key(channel);
            self.cmd.send(now, &[b"HDEL", key.as_bytes(), field.as_bytes()], Expect::Ack);
        } else {
            self.stale.entry(channel.to_owned()).or_default().insert(member.to_owned());
        }
    }

    /// Asks for the members of `channel` on every live hub; the answer comes from `poll_presence` with `token`.
    pub(crate) fn request_presence(&mut self, now: Instant, channel: &str, token: u64) {
        if self.writable() {
            let key = self.presence_key(channel);
            self.cmd.send(
                now,
                &[b"HGETALL", key.as_bytes()],
                Expect::PresenceAll { token, channel: channel.to_owned() },
            );
        } else {
            self.answer_locally(token, channel);
        }
    }

    fn conn(&self, which: LinkConn) -> &Conn {
        if which.subscriber { &self.sub } else { &self.cmd }
    }

    fn conn_mut(&mut self, which: LinkConn) -> &mut Conn {
        if which.subscriber { &mut self.sub } else { &mut self.cmd }
    }

    /// Commands that carry our epoch or need the breaker closed may be sent now.
    fn writable(&self) -> bool {
        matches!(self.breaker, Breaker::Closed { .. }) && self.cmd.phase == Phase::Ready && self.epoch.is_some()
    }

    /// The Redis channel carrying the hub channel `channel`.
    fn channel_key(&self, channel: &str) -> String {
        self.channel_scoped("ch", channel)
    }

    /// The key (or Redis channel) of `kind` for the hub channel `channel`: in a cluster it
    /// carries the channel's hash tag, so all of a channel's keys share one slot.
    pub(super) fn channel_scoped(&self, kind: &str, channel: &str) -> String {
        if self.cluster {
            format!("{}:{kind}:{}{channel}", self.prefix, slots::channel_tag(channel))
        } else {
            format!("{}:{kind}:{channel}", self.prefix)
        }
    }

    /// The hub channel a Redis channel carries (the inverse of `channel_key`).
    fn channel_of_key<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?.strip_prefix(b":ch:")?;
        if !self.cluster {
            return Some(rest);
        }
        // The tag is `{` + 16 hex digits + `}`.
        let name = rest.get(18..)?;
        (rest.first() == Some(&b'{') && rest.get(17) == Some(&b'}')).then_some(name)
    }

    /// The lease key of hub `hub` (`node:worker`) as this link keeps leases.
    pub(super) fn lease_key_of(&self, hub: &str) -> String {
        format!("{}:lease:{}{hub}", self.prefix, self.tag)
    }

    /// Where every lease key of this link starts.
    pub(super) fn lease_prefix(&self) -> String {
        format!("{}:lease:{}", self.prefix, self.tag)
    }

    /// `PUBLISH`, or `SPUBLISH` to a cluster's shard channel.
    pub(super) fn publish_verb(&self) -> &'static [u8] {
        if self.cluster { b"SPUBLISH" } else { b"PUBLISH" }
    }

    /// (Un)subscribes `keys`: in one command, or in a cluster one per key (a sharded
    /// subscription takes channels of one slot only).
    fn sub_command(&mut self, now: Instant, subscribe: bool, keys: &[String]) {
        let verb: &'static [u8] = match (self.cluster, subscribe) {
            (false, true) => b"SUBSCRIBE",
            (false, false) => b"UNSUBSCRIBE",
            (true, true) => b"SSUBSCRIBE",
            (true, false) => b"SUNSUBSCRIBE",
        };
        if self.cluster {
            for key in keys {
                self.sub.subscribe(now, verb, std::slice::from_ref(key));
            }
        } else {
            self.sub.subscribe(now, verb, keys);
        }
    }

    /// True once after Redis answered that a key lives on another node, or the cluster is down.
    pub(crate) fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Retired after its slots went to other masters (or the placeholder before the first map).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }

    /// The hash tag of the link's own keys.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// The cluster moved this link's master to `addr` (a replica was promoted): both
    /// connections start over there at once, and the breaker forgets the old master's failures.
    pub(crate) fn retarget(&mut self, now: Instant, addr: &str) {
        if self.retired || self.addr == addr {
            return;
        }
        self.addr = addr.to_owned();
        self.drop_connections();
        self.breaker = Breaker::Closed { failures: 0 };
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            self.conn_mut(which).phase =
                Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked: false };
        }
    }

    /// Stops for good (its slots went to other masters): the sockets go, the state stays
    /// until the hub moves it (`take_channels`, `take_members`).
    pub(crate) fn retire(&mut self) {
        self.retired = true;
        self.drop_connections();
        self.breaker = Breaker::Closed { failures: 0 };
    }

    /// Drops both sockets (answering what they owed) and stops the lease timer.
    pub(super) fn drop_connections(&mut self) {
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            if self.conn(which).is_live() {
                self.closes.push_back(which);
            }
            let owed = self.conn_mut(which).reset();
            self.conn_mut(which).attempt = 0;
            self.abandon(owed);
        }
        self.abandon_reads();
        self.probe_reset();
        self.tick_at = None;
    }

    /// Gives up the channels `keep` refuses (unsubscribing them), for another link to take.
    pub(crate) fn take_channels(&mut self, now: Instant, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let moving: Vec<String> = self.channels.iter().filter(|c| !keep(c)).cloned().collect();
        for channel in &moving {
            self.unsubscribe(now, channel);
        }
        moving
    }

    /// Gives up the members of channels `keep` refuses (removing them from Redis), as
    /// `(channel, member, info)`.
    pub(crate) fn take_members(
        &mut self,
        now: Instant,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(String, String, Option<String>)> {
        let channels: Vec<String> = self.members.keys().filter(|c| !keep(c)).cloned().collect();
        let mut moving = Vec::new();
        for channel in channels {
            let members: Vec<(String, Option<String>)> =
                self.members[&channel].iter().map(|(member, m)| (member.clone(), m.info.clone())).collect();
            for (member, info) in members {
                self.presence_leave(now, &channel, &member);
                moving.push((channel.clone(), member, info));
            }
        }
        self.stale.retain(|channel, _| keep(channel));
        moving
    }

    /// A reply on the command connection, matched to the oldest command awaiting one.
    fn on_reply(&mut self, now: Instant, frame: OwnedFrame) -> Result<(), ProtocolError> {
        let Some((_, expect)) = self.cmd.expect.pop_front() else { return Err(ProtocolError) };
        if let OwnedFrame::Error(text) = &frame {
            self.note_redirect(text);
            return self.on_error_reply(now, expect);
        }
        match (expect, frame) {
            (Expect::Ack | Expect::HistoryPublish, _) => {}
            (Expect::Epoch, OwnedFrame::Integer(n)) => {
                self.epoch = Some(n.unsigned_abs());
                self.record_success(LinkConn::Command);
                self.register(now);
                self.send_waiting_reads(now);
                return Ok(());
            }
            (Expect::Probe, OwnedFrame::SimpleString(s)) if s.eq_ignore_ascii_case(b"PONG") => {
                self.close_breaker(now);
                return Ok(());
            }
            (Expect::LeaseRefresh, OwnedFrame::Null) => {
                // The lease lapsed; other hubs may have pruned our presence as dead.
                self.write_all_presence(now);
                self.resync = true;
            }
            (Expect::LeaseRefresh, _) => {}
            (Expect::PresenceAll { token, channel }, OwnedFrame::Array(items)) => {
                self.on_presence_hash(now, token, channel, items)?;
            }
            (Expect::PresenceLeases(query), OwnedFrame::Array(leases)) => {
                self.on_presence_leases(now, query, &leases)?
            }
            (Expect::StatsKeys, OwnedFrame::Array(keys)) => self.on_stats_keys(now, &keys),
            (Expect::StatsValues, OwnedFrame::Array(values)) => self.on_stats_values(&values),
            (Expect::History { token, after }, OwnedFrame::Array(items)) => {
                self.on_history_reply(token, after, &items)?
            }
            (Expect::ScriptLoad, OwnedFrame::BulkString(sha)) => {
                self.publish_sha = String::from_utf8(sha).ok();
            }
            _ => return Err(ProtocolError),
        }
        self.record_success(LinkConn::Command);
        Ok(())
    }

    /// A cluster's "not here" errors mean the slot map is stale.
    fn note_redirect(&mut self, text: &str) {
        let code = text.split(' ').next().unwrap_or("");
        self.moved |= matches!(code, "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN");
    }

    /// An error reply: a failure, and the end of the connection when it leaves the connection useless.
    fn on_error_reply(&mut self, now: Instant, expect: Expect) -> Result<(), ProtocolError> {
        match expect {
            // Without the epoch or the right database the connection is useless: start it over.
            Expect::Epoch | Expect::Select => return Err(ProtocolError),
            Expect::PresenceAll { token, channel } | Expect::PresenceLeases(PresenceQuery { token, channel, .. }) => {
                self.answer_locally(token, &channel);
            }
            Expect::History { token, .. } => self.history_answers.push_back(HistoryAnswer { token, read: None }),
            // NOSCRIPT (a SCRIPT FLUSH, a failover behind a proxy): load it again, EVAL meanwhile.
            Expect::HistoryPublish => {
                self.publish_sha = None;
                self.script_loading = false;
            }
            _ => {}
        }
        self.record_failure(now);
        Ok(())
    }

    /// A frame on the subscriber connection: a message, or the confirmation of a command.
    fn on_push(&mut self, now: Instant, frame: OwnedFrame) -> Result<(), ProtocolError> {
        match frame {
            OwnedFrame::Array(items) => match items.as_slice() {
                [OwnedFrame::BulkString(kind), OwnedFrame::BulkString(key), OwnedFrame::BulkString(payload)]
                    if kind == b"message" || kind == b"smessage" =>
                {
                    if key.as_slice() == self.probe_channel.as_bytes() {
                        self.on_probe(payload);
                    } else {
                        self.deliver(key, bytes::Bytes::copy_from_slice(payload));
                    }
                }
                [OwnedFrame::BulkString(kind), rest @ ..]
                    if matches!(
                        kind.as_slice(),
                        b"subscribe" | b"unsubscribe" | b"ssubscribe" | b"sunsubscribe" | b"pong"
                    ) =>
                {
                    let kind: &[u8] = kind.as_slice();
                    let kind = kind.strip_prefix(b"s").filter(|k| k.ends_with(b"subscribe")).unwrap_or(kind);
                    if kind == b"subscribe"
                        && let Some(OwnedFrame::BulkString(key)) = rest.first()
                        && self.watched.as_ref() == Some(key)
                    {
                        self.resync = true;
                    }
                    let channel = rest
                        .first()
                        .and_then(bulk)
                        .and_then(|key| self.channel_of_key(key))
                        .and_then(|name| std::str::from_utf8(name).ok())
                        .map(str::to_owned);
                    let probe = rest.first().and_then(bulk) == Some(self.probe_key().as_bytes());
                    if self.cluster && kind == b"unsubscribe" && self.sub.expect.is_empty() {
                        // Unasked: the slot left this node (a failover or a resharding). The
                        // map is stale, and the subscriptions must be made again elsewhere.
                        self.moved = true;
                        self.lose(now, LinkConn::Subscriber, true);
                        return Ok(());
                    }
                    match (kind, channel) {
                        (b"subscribe", _) if probe => self.on_probe_confirmed(now),
                        (b"subscribe", Some(channel)) => self.on_confirmed(now, channel),
                        (b"unsubscribe", Some(channel)) => {
                            self.confirmed.remove(&channel);
                        }
                        _ => {}
                    }
                    self.sub.expect.pop_front();
                }
                _ => return Err(ProtocolError),
            },
            OwnedFrame::SimpleString(s) if s.eq_ignore_ascii_case(b"PONG") => {
                self.sub.expect.pop_front();
            }
            OwnedFrame::Error(text) => {
                self.note_redirect(&text);
                self.sub.expect.pop_front();
                self.record_failure(now);
                return Ok(());
            }
            _ => return Err(ProtocolError),
        }
        self.record_success(LinkConn::Subscriber);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
