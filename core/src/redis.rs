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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::BrokerState;
use crate::broker::{Envelope, Origin};
use crate::config::{BackoffConfig, BrokerConfig};
use crate::time::later;

/// A command whose reply takes longer than this counts as a failure and costs its connection.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection not established within this counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Unparsed reply bytes allowed to pile up; more means a broken or hostile peer.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Our replies nest one level; the decoder recurses per level, so deep nesting is refused before it runs.
const MAX_DEPTH: usize = 4;
/// The lease and stats timer never spins faster than this, whatever `lease_ttl` says.
const MIN_TICK: Duration = Duration::from_millis(100);
const ENVELOPE_VERSION: u8 = 1;
const FLAG_TEXT: u8 = 1;
/// Bytes before the node id in an encoded envelope.
const ENVELOPE_FIXED: usize = 1 + 1 + 8 + 8 + 4;

/// One of the link's two connections to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkConn {
    /// Holds the subscriptions and receives the messages published by other hubs.
    Subscriber,
    /// Carries every other command, pipelined.
    Command,
}

impl LinkConn {
    /// 0 or 1: where a shell keeps this connection's socket in a two-slot array.
    pub fn index(self) -> usize {
        match self {
            Self::Command => 0,
            Self::Subscriber => 1,
        }
    }
}

/// Why the broker URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    /// The URL as configured.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker.url {:?}: {}", self.url, self.reason)
    }
}

impl std::error::Error for UrlError {}

/// The answer to [`RedisLink::request_presence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceAnswer {
    /// The token given with the request.
    pub token: u64,
    /// `(member id, info JSON)` of every live member, sorted by member id.
    pub members: Vec<(String, Option<String>)>,
    /// False when Redis could not be asked: `members` then holds this hub's own members only.
    pub complete: bool,
}

/// One hub's sans-IO link to Redis; see the module docs for the run loop.
#[derive(Debug)]
pub struct RedisLink {
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
    last_seen: BTreeMap<(String, u32), (u64, u64)>,
    deliveries: VecDeque<Envelope>,
    answers: VecDeque<PresenceAnswer>,
    closes: VecDeque<LinkConn>,
    tick_at: Option<Instant>,
    local_connections: u64,
    cluster_connections: Option<u64>,
    dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    info: Option<String>,
    /// Whether Redis may hold it, so a leave needs an `HDEL`.
    written: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// No socket and none wanted (breaker open, or the subscriber while half-open).
    #[default]
    Idle,
    /// No socket; ask for one at this instant.
    Backoff(Instant),
    /// A socket is wanted; `asked` once `poll_connect` handed it out.
    Connecting {
        deadline: Instant,
        asked: bool,
    },
    Ready,
}

#[derive(Debug, Default)]
struct Conn {
    phase: Phase,
    /// Consecutive failed attempts, the backoff exponent.
    attempt: u32,
    out: BytesMut,
    inbuf: BytesMut,
    /// Replies owed by Redis, oldest first, each with its deadline.
    expect: VecDeque<(Instant, Expect)>,
}

/// A reply Redis owes us, and what to do with it.
#[derive(Debug)]
enum Expect {
    /// Any non-error reply will do (PUBLISH, HSET, HDEL, the first lease SET).
    Ack,
    /// `SELECT db`: an error leaves the connection on the wrong database.
    Select,
    /// `INCR {prefix}:epoch`.
    Epoch,
    /// The half-open `PING`.
    Probe,
    /// A lease refresh with `GET`: nil means the lease had lapsed.
    LeaseRefresh,
    /// `HGETALL` of a presence hash.
    PresenceAll { token: u64, channel: String },
    /// `MGET` of the leases of the hubs named in a presence hash.
    PresenceLeases(PresenceQuery),
    /// `KEYS {prefix}:lease:*`.
    StatsKeys,
    /// `MGET` of every lease.
    StatsValues,
    /// A subscribe/unsubscribe confirmation or a pong on the subscriber connection.
    SubAck,
}

/// A presence request waiting for the leases of the hubs it names.
#[derive(Debug)]
struct PresenceQuery {
    token: u64,
    channel: String,
    /// Entries known to be live (this hub's, in its current epoch).
    live: Vec<Stored>,
    /// Entries of other hubs, live if their hub's lease carries their epoch.
    pending: Vec<Stored>,
    /// The distinct hubs of `pending`, in the order their leases were asked for.
    hubs: Vec<String>,
}

/// A presence entry read from Redis.
#[derive(Debug)]
struct Stored {
    field: Vec<u8>,
    hub: String,
    epoch: u64,
    member: String,
    info: Option<String>,
}

#[derive(Serialize)]
struct PresenceValueOut<'a> {
    hub: &'a str,
    epoch: u64,
    member: &'a str,
    info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PresenceValueIn {
    hub: String,
    epoch: u64,
    member: String,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// The peer broke the protocol: the connection cannot be trusted any more.
#[derive(Debug)]
struct ProtocolError;

impl RedisLink {
    /// A link for the hub `origin`, configured by `config` (its `url` must be `redis://host[:port][/db]`).
    pub fn new(config: &BrokerConfig, origin: Origin, now: Instant) -> Result<Self, UrlError> {
        let (addr, db) = parse_url(&config.url)?;
        let hub_id = format!("{}:{}", origin.node, origin.worker);
        let lease_key = format!("{}:lease:{hub_id}", config.prefix);
        let ttl = config.lease_ttl;
        let lease_ttl_secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
        let rng = SplitMix::seeded(&origin);
        let connecting = Phase::Connecting { deadline: later(now, CONNECT_TIMEOUT), asked: false };
        Ok(Self {
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
        })
    }

    /// The circuit breaker's state.
    pub fn state(&self) -> BrokerState {
        match self.breaker {
            Breaker::Closed { .. } => BrokerState::Closed,
            Breaker::Open { .. } => BrokerState::Open,
            Breaker::HalfOpen => BrokerState::HalfOpen,
        }
    }

    /// Publishes refused so far because Redis was out of reach.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Open connections over every live hub, as of the last stats refresh; `None` while unknown.
    pub fn cluster_connections(&self) -> Option<u64> {
        self.cluster_connections
    }

    /// This hub's open connection count, written into its lease at the next refresh.
    pub fn set_local_connections(&mut self, n: u64) {
        self.local_connections = n;
    }

    /// The next connection to open, with the `host:port` to open it to.
    #[must_use]
    pub fn poll_connect(&mut self) -> Option<(LinkConn, String)> {
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
    pub fn poll_close(&mut self) -> Option<LinkConn> {
        self.closes.pop_front()
    }

    /// The next message published by another hub on a channel this hub holds.
    #[must_use]
    pub fn poll_delivery(&mut self) -> Option<Envelope> {
        self.deliveries.pop_front()
    }

    /// The next answer to a [`Self::request_presence`].
    #[must_use]
    pub fn poll_presence(&mut self) -> Option<PresenceAnswer> {
        self.answers.pop_front()
    }

    /// The connection asked for by `poll_connect` is established.
    pub fn handle_connected(&mut self, now: Instant, which: LinkConn) {
        if !matches!(self.conn(which).phase, Phase::Connecting { asked: true, .. }) {
            return;
        }
        self.conn_mut(which).phase = Phase::Ready;
        match which {
            LinkConn::Command => {
                if self.db != 0 {
                    let db = self.db.to_string();
                    self.cmd.send(now, &[b"SELECT", db.as_bytes()], Expect::Select);
                }
                if self.epoch.is_none() {
                    let key = format!("{}:epoch", self.prefix);
                    self.cmd.send(now, &[b"INCR", key.as_bytes()], Expect::Epoch);
                }
                if self.breaker == Breaker::HalfOpen {
                    self.cmd.send(now, &[b"PING"], Expect::Probe);
                } else {
                    self.register(now);
                }
            }
            LinkConn::Subscriber => {
                let keys: Vec<String> = self.channels.iter().map(|c| self.channel_key(c)).collect();
                self.sub.subscribe(now, b"SUBSCRIBE", &keys);
            }
        }
    }

    /// The connection asked for by `poll_connect` could not be established (refused, unreachable, timed out).
    pub fn handle_connect_failed(&mut self, now: Instant, which: LinkConn) {
        if matches!(self.conn(which).phase, Phase::Connecting { asked: true, .. }) {
            self.lose(now, which, false);
        }
    }

    /// The connection's stream ended, or reading or writing it failed; the shell has dropped the socket.
    pub fn handle_eof(&mut self, now: Instant, which: LinkConn) {
        if matches!(self.conn(which).phase, Phase::Ready | Phase::Connecting { asked: true, .. }) {
            self.lose(now, which, false);
        }
    }

    /// Bytes read from the connection, in any chunking.
    pub fn handle_bytes(&mut self, now: Instant, which: LinkConn, bytes: &[u8]) {
        if self.conn(which).phase != Phase::Ready {
            return;
        }
        self.conn_mut(which).inbuf.extend_from_slice(bytes);
        while self.conn(which).phase == Phase::Ready {
            let frame = match next_frame(&mut self.conn_mut(which).inbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(ProtocolError) => {
                    self.lose(now, which, true);
                    break;
                }
            };
            let handled = match which {
                LinkConn::Command => self.on_reply(now, frame),
                LinkConn::Subscriber => self.on_push(now, frame),
            };
            if let Err(ProtocolError) = handled {
                self.lose(now, which, true);
            }
        }
    }

    /// Fills `out` with the connection's unsent bytes; returns how many slices were filled.
    pub fn transmit<'a>(&'a self, which: LinkConn, out: &mut [IoSlice<'a>]) -> usize {
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
    pub fn consume(&mut self, which: LinkConn, n: usize) {
        let out = &mut self.conn_mut(which).out;
        out.advance(n.min(out.len()));
    }

    /// True while the connection has bytes to write.
    pub fn wants_write(&self, which: LinkConn) -> bool {
        let conn = self.conn(which);
        conn.phase == Phase::Ready && !conn.out.is_empty()
    }

    /// When `handle_timeout` must next be called (early calls are harmless).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let breaker = match self.breaker {
            Breaker::Open { until } => Some(until),
            _ => None,
        };
        [breaker, self.tick_at, self.sub.wake_at(), self.cmd.wake_at()].into_iter().flatten().min()
    }

    /// Runs whatever is due at `now`: connect and reply timeouts, reconnects, the breaker, lease and stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Breaker::Open { until } = self.breaker
            && until <= now
        {
            self.breaker = Breaker::HalfOpen;
            self.cmd.phase = Phase::Connecting { deadline: later(now, CONNECT_TIMEOUT), asked: false };
        }
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            let conn = self.conn(which);
            match conn.phase {
                Phase::Backoff(at) if at <= now => {
                    self.conn_mut(which).phase =
                        Phase::Connecting { deadline: later(now, CONNECT_TIMEOUT), asked: false };
                }
                Phase::Connecting { deadline, asked } if deadline <= now => self.lose(now, which, asked),
                Phase::Ready if conn.expect.front().is_some_and(|(deadline, _)| *deadline <= now) => {
                    self.lose(now, which, true);
                }
                _ => {}
            }
        }
        if self.tick_at.is_some_and(|at| at <= now) {
            self.tick(now);
        }
    }

    /// The hub has its first local subscriber on `channel`: subscribe to it in Redis.
    pub fn subscribe(&mut self, now: Instant, channel: &str) {
        if self.channels.insert(channel.to_owned()) && self.sub.phase == Phase::Ready {
            let key = self.channel_key(channel);
            self.sub.subscribe(now, b"SUBSCRIBE", &[key]);
        }
    }

    /// The hub's last local subscriber on `channel` left: unsubscribe from it in Redis.
    pub fn unsubscribe(&mut self, now: Instant, channel: &str) {
        if self.channels.remove(channel) && self.sub.phase == Phase::Ready {
            let key = self.channel_key(channel);
            self.sub.subscribe(now, b"UNSUBSCRIBE", &[key]);
        }
    }

    /// Sends `envelope` to the other hubs; false (and counted as dropped) when Redis is out of reach.
    #[must_use]
    pub fn publish(&mut self, now: Instant, envelope: &Envelope) -> bool {
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
        self.cmd.send(now, &[b"PUBLISH", key.as_bytes(), &payload], Expect::Ack);
        true
    }

    /// `member` (with optional `info`, a JSON text; invalid JSON is stored as none) is present on `channel`.
    pub fn presence_join(&mut self, now: Instant, channel: &str, member: &str, info: Option<&str>) {
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
    pub fn presence_leave(&mut self, now: Instant, channel: &str, member: &str) {
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
    pub fn request_presence(&mut self, now: Instant, channel: &str, token: u64) {
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
        match which {
            LinkConn::Subscriber => &self.sub,
            LinkConn::Command => &self.cmd,
        }
    }

    fn conn_mut(&mut self, which: LinkConn) -> &mut Conn {
        match which {
            LinkConn::Subscriber => &mut self.sub,
            LinkConn::Command => &mut self.cmd,
        }
    }

    /// Commands that carry our epoch or need the breaker closed may be sent now.
    fn writable(&self) -> bool {
        matches!(self.breaker, Breaker::Closed { .. }) && self.cmd.phase == Phase::Ready && self.epoch.is_some()
    }

    fn channel_key(&self, channel: &str) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }

    fn presence_key(&self, channel: &str) -> String {
        format!("{}:presence:{channel}", self.prefix)
    }

    fn field(&self, member: &str) -> String {
        format!("{}:{member}", self.hub_id)
    }

    fn lease_value(&self, epoch: u64) -> String {
        format!("{epoch}:{}", self.local_connections)
    }

    /// Writes the lease, every local member and the pending leaves: Redis may have lost them while we were away.
    fn register(&mut self, now: Instant) {
        let Some(epoch) = self.epoch.filter(|_| self.writable()) else { return };
        let (value, ttl) = (self.lease_value(epoch), self.lease_ttl_secs.to_string());
        let key = self.lease_key.clone();
        self.cmd.send(now, &[b"SET", key.as_bytes(), value.as_bytes(), b"EX", ttl.as_bytes()], Expect::Ack);
        self.write_all_presence(now);
        for (channel, left) in std::mem::take(&mut self.stale) {
            let key = self.presence_key(&channel);
            let fields: Vec<String> = left.iter().map(|m| self.field(m)).collect();
            let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
            args.extend(fields.iter().map(|f| f.as_bytes()));
            self.cmd.send(now, &args, Expect::Ack);
        }
        self.refresh_stats(now);
        self.tick_at = Some(later(now, self.tick_every));
    }

    fn write_all_presence(&mut self, now: Instant) {
        let channels: Vec<String> = self.members.keys().cloned().collect();
        for channel in channels {
            let members: Vec<String> = self.members.get(&channel).into_iter().flat_map(|m| m.keys().cloned()).collect();
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            self.write_presence(now, &channel, &members);
        }
    }

    /// One `HSET` for `members` of `channel`, marking them written.
    fn write_presence(&mut self, now: Instant, channel: &str, members: &[&str]) {
        let Some(epoch) = self.epoch else { return };
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(members.len());
        for &member in members {
            let Some(local) = self.members.get_mut(channel).and_then(|m| m.get_mut(member)) else { continue };
            local.written = true;
            let info = local.info.as_deref().and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
            let value = PresenceValueOut { hub: &self.hub_id, epoch, member, info };
            let Ok(value) = serde_json::to_string(&value) else { continue };
            pairs.push((format!("{}:{member}", self.hub_id), value));
        }
        if pairs.is_empty() {
            return;
        }
        let key = self.presence_key(channel);
        let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
        for (field, value) in &pairs {
            args.extend([field.as_bytes(), value.as_bytes()]);
        }
        self.cmd.send(now, &args, Expect::Ack);
    }

    fn refresh_stats(&mut self, now: Instant) {
        let pattern = format!("{}:lease:*", glob_escape(&self.prefix));
        self.cmd.send(now, &[b"KEYS", pattern.as_bytes()], Expect::StatsKeys);
    }

    /// The periodic lease refresh, cluster stats and subscriber liveness ping.
    fn tick(&mut self, now: Instant) {
        self.tick_at = Some(later(now, self.tick_every));
        if let Some(epoch) = self.epoch.filter(|_| self.writable()) {
            let (value, ttl) = (self.lease_value(epoch), self.lease_ttl_secs.to_string());
            let key = self.lease_key.clone();
            let args: [&[u8]; 6] = [b"SET", key.as_bytes(), value.as_bytes(), b"EX", ttl.as_bytes(), b"GET"];
            self.cmd.send(now, &args, Expect::LeaseRefresh);
            self.refresh_stats(now);
        }
        if self.sub.phase == Phase::Ready {
            self.sub.send(now, &[b"PING"], Expect::SubAck);
        }
    }

    /// A connection failed: forget it, count the failure, and reconnect later unless the breaker opened.
    fn lose(&mut self, now: Instant, which: LinkConn, close: bool) {
        if close {
            self.closes.push_back(which);
        }
        let owed = self.conn_mut(which).reset();
        self.abandon(owed);
        if matches!(self.breaker, Breaker::Closed { .. }) {
            let delay = backoff_delay(&self.backoff, self.conn(which).attempt, &mut self.rng);
            let conn = self.conn_mut(which);
            conn.attempt = conn.attempt.saturating_add(1);
            conn.phase = Phase::Backoff(later(now, delay));
        }
        self.record_failure(now);
    }

    fn record_failure(&mut self, now: Instant) {
        match self.breaker {
            Breaker::Closed { failures } if failures + 1 < self.threshold => {
                self.breaker = Breaker::Closed { failures: failures + 1 }
            }
            Breaker::Closed { .. } | Breaker::HalfOpen => self.trip(now),
            Breaker::Open { .. } => {}
        }
    }

    fn record_success(&mut self, which: LinkConn) {
        if let Breaker::Closed { .. } = self.breaker {
            self.breaker = Breaker::Closed { failures: 0 };
            self.conn_mut(which).attempt = 0;
        }
    }

    /// Opens the breaker: both sockets go, nothing reconnects until `open_for` has passed.
    fn trip(&mut self, now: Instant) {
        self.breaker = Breaker::Open { until: later(now, self.open_for) };
        for which in [LinkConn::Command, LinkConn::Subscriber] {
            if self.conn(which).is_live() {
                self.closes.push_back(which);
            }
            let owed = self.conn_mut(which).reset();
            self.conn_mut(which).attempt = 0;
            self.abandon(owed);
        }
        self.tick_at = None;
        self.cluster_connections = None;
    }

    /// The half-open probe succeeded.
    fn close_breaker(&mut self, now: Instant) {
        self.breaker = Breaker::Closed { failures: 0 };
        self.cmd.attempt = 0;
        self.sub.phase = Phase::Connecting { deadline: later(now, CONNECT_TIMEOUT), asked: false };
        self.register(now);
    }

    /// Answers, from local knowledge, the presence requests whose replies will never come.
    fn abandon(&mut self, owed: VecDeque<(Instant, Expect)>) {
        for (_, expect) in owed {
            match expect {
                Expect::PresenceAll { token, channel }
                | Expect::PresenceLeases(PresenceQuery { token, channel, .. }) => {
                    self.answer_locally(token, &channel);
                }
                _ => {}
            }
        }
    }

    fn answer_locally(&mut self, token: u64, channel: &str) {
        let members = self
            .members
            .get(channel)
            .into_iter()
            .flatten()
            .map(|(member, local)| (member.clone(), local.info.clone()))
            .collect();
        self.answers.push_back(PresenceAnswer { token, members, complete: false });
    }

    /// A reply on the command connection, matched to the oldest command awaiting one.
    fn on_reply(&mut self, now: Instant, frame: OwnedFrame) -> Result<(), ProtocolError> {
        let Some((_, expect)) = self.cmd.expect.pop_front() else { return Err(ProtocolError) };
        if let OwnedFrame::Error(_) = frame {
            return self.on_error_reply(now, expect);
        }
        match (expect, frame) {
            (Expect::Ack, _) => {}
            (Expect::Epoch, OwnedFrame::Integer(n)) => {
                self.epoch = Some(n.unsigned_abs());
                self.record_success(LinkConn::Command);
                self.register(now);
                return Ok(());
            }
            (Expect::Probe, OwnedFrame::SimpleString(s)) if s.eq_ignore_ascii_case(b"PONG") => {
                self.close_breaker(now);
                return Ok(());
            }
            (Expect::LeaseRefresh, OwnedFrame::Null) => {
                // The lease lapsed; other hubs may have pruned our presence as dead.
                self.write_all_presence(now);
            }
            (Expect::LeaseRefresh, _) => {}
            (Expect::PresenceAll { token, channel }, OwnedFrame::Array(items)) => {
                self.on_presence_hash(now, token, channel, items)?;
            }
            (Expect::PresenceLeases(query), OwnedFrame::Array(leases)) => {
                self.on_presence_leases(now, query, &leases)?
            }
            (Expect::StatsKeys, OwnedFrame::Array(keys)) => {
                // A hub whose lease is gone is dead to the cluster: forget what we saw of it,
                // so a churning cluster does not grow this map.
                let live: BTreeSet<&[u8]> = keys.iter().filter_map(bulk).collect();
                let prefix = &self.prefix;
                self.last_seen
                    .retain(|(node, worker), _| live.contains(format!("{prefix}:lease:{node}:{worker}").as_bytes()));
                let mut args: Vec<&[u8]> = vec![b"MGET"];
                args.extend(keys.iter().filter_map(bulk));
                if args.len() == 1 {
                    self.cluster_connections = Some(0);
                } else {
                    self.cmd.send(now, &args, Expect::StatsValues);
                }
            }
            (Expect::StatsValues, OwnedFrame::Array(values)) => {
                let total = values.iter().filter_map(bulk).filter_map(|v| parse_lease(v).map(|(_, n)| n)).sum();
                self.cluster_connections = Some(total);
            }
            _ => return Err(ProtocolError),
        }
        self.record_success(LinkConn::Command);
        Ok(())
    }

    fn on_error_reply(&mut self, now: Instant, expect: Expect) -> Result<(), ProtocolError> {
        match expect {
            // Without the epoch or the right database the connection is useless: start it over.
            Expect::Epoch | Expect::Select => return Err(ProtocolError),
            Expect::PresenceAll { token, channel } | Expect::PresenceLeases(PresenceQuery { token, channel, .. }) => {
                self.answer_locally(token, &channel);
            }
            _ => {}
        }
        self.record_failure(now);
        Ok(())
    }

    fn on_presence_hash(
        &mut self,
        now: Instant,
        token: u64,
        channel: String,
        items: Vec<OwnedFrame>,
    ) -> Result<(), ProtocolError> {
        let mut live = Vec::new();
        let mut pending = Vec::new();
        let mut dead = Vec::new();
        for pair in items.chunks(2) {
            let [OwnedFrame::BulkString(field), OwnedFrame::BulkString(value)] = pair else {
                return Err(ProtocolError);
            };
            // Someone else's junk in our hash is not our protocol error; leave it alone.
            let Ok(stored) = serde_json::from_slice::<PresenceValueIn>(value) else { continue };
            let entry = Stored {
                field: field.clone(),
                hub: stored.hub,
                epoch: stored.epoch,
                member: stored.member,
                info: stored.info.map(|raw| raw.get().to_owned()),
            };
            if entry.hub != self.hub_id {
                pending.push(entry);
            } else if Some(entry.epoch) == self.epoch {
                live.push(entry);
            } else {
                dead.push(entry);
            }
        }
        self.prune(now, &channel, &dead);
        let hubs: Vec<String> = pending.iter().map(|e| e.hub.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        if hubs.is_empty() {
            self.answer(token, live);
            return Ok(());
        }
        let keys: Vec<String> = hubs.iter().map(|hub| format!("{}:lease:{hub}", self.prefix)).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        self.cmd.send(now, &args, Expect::PresenceLeases(PresenceQuery { token, channel, live, pending, hubs }));
        Ok(())
    }

    fn on_presence_leases(
        &mut self,
        now: Instant,
        query: PresenceQuery,
        leases: &[OwnedFrame],
    ) -> Result<(), ProtocolError> {
        let PresenceQuery { token, channel, mut live, pending, hubs } = query;
        if leases.len() != hubs.len() {
            return Err(ProtocolError);
        }
        let epochs: BTreeMap<&str, u64> = hubs
            .iter()
            .zip(leases)
            .filter_map(|(hub, lease)| Some((hub.as_str(), parse_lease(bulk(lease)?)?.0)))
            .collect();
        let (alive, dead): (Vec<Stored>, Vec<Stored>) =
            pending.into_iter().partition(|e| epochs.get(e.hub.as_str()) == Some(&e.epoch));
        live.extend(alive);
        self.prune(now, &channel, &dead);
        self.answer(token, live);
        Ok(())
    }

    /// `HDEL`s the entries of dead hubs, so the hash does not grow with every node that ever lived.
    fn prune(&mut self, now: Instant, channel: &str, dead: &[Stored]) {
        if dead.is_empty() {
            return;
        }
        let key = self.presence_key(channel);
        let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
        args.extend(dead.iter().map(|e| e.field.as_slice()));
        self.cmd.send(now, &args, Expect::Ack);
    }

    fn answer(&mut self, token: u64, live: Vec<Stored>) {
        let mut members: Vec<(String, Option<String>)> = live.into_iter().map(|e| (e.member, e.info)).collect();
        members.sort();
        self.answers.push_back(PresenceAnswer { token, members, complete: true });
    }

    /// A frame on the subscriber connection: a message, or the confirmation of a command.
    fn on_push(&mut self, now: Instant, frame: OwnedFrame) -> Result<(), ProtocolError> {
        match frame {
            OwnedFrame::Array(items) => match items.as_slice() {
                [OwnedFrame::BulkString(kind), OwnedFrame::BulkString(key), OwnedFrame::BulkString(payload)]
                    if kind == b"message" =>
                {
                    self.deliver(key, payload);
                }
                [OwnedFrame::BulkString(kind), ..]
                    if matches!(kind.as_slice(), b"subscribe" | b"unsubscribe" | b"pong") =>
                {
                    self.sub.expect.pop_front();
                }
                _ => return Err(ProtocolError),
            },
            OwnedFrame::SimpleString(s) if s.eq_ignore_ascii_case(b"PONG") => {
                self.sub.expect.pop_front();
            }
            OwnedFrame::Error(_) => {
                self.sub.expect.pop_front();
                self.record_failure(now);
                return Ok(());
            }
            _ => return Err(ProtocolError),
        }
        self.record_success(LinkConn::Subscriber);
        Ok(())
    }

    fn deliver(&mut self, key: &[u8], payload: &[u8]) {
        let Some(wire) = decode_envelope(payload) else { return };
        let envelope = wire.envelope;
        // Workers of one node reach each other through the node's in-process bus, which keeps
        // working while Redis is down; through Redis they would hear each other twice.
        if envelope.origin.node == self.origin.node || !self.channels.contains(&envelope.channel) {
            return;
        }
        let channel = key.strip_prefix(self.prefix.as_bytes()).and_then(|rest| rest.strip_prefix(b":ch:"));
        if channel != Some(envelope.channel.as_bytes()) {
            return;
        }
        let from = (envelope.origin.node.clone(), envelope.origin.worker);
        match self.last_seen.get_mut(&from) {
            Some((epoch, seq)) if *epoch == wire.epoch && wire.seq <= *seq => return,
            Some(seen) => *seen = (wire.epoch, wire.seq),
            None => {
                self.last_seen.insert(from, (wire.epoch, wire.seq));
            }
        }
        self.deliveries.push_back(envelope);
    }
}

impl Conn {
    /// Encodes one command; the caller records the reply it expects.
    fn write(&mut self, args: &[&[u8]]) -> bool {
        let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|arg| BorrowedFrame::BulkString(arg)).collect();
        let frame = BorrowedFrame::Array(&parts);
        let start = self.out.len();
        self.out.resize(start + frame.encode_len(false), 0);
        match encode_borrowed(&mut self.out[start..], &frame, false) {
            Ok(n) => {
                self.out.truncate(start + n);
                true
            }
            // Cannot happen: the buffer was sized by `encode_len`. Drop the command rather than send garbage.
            Err(_) => {
                self.out.truncate(start);
                false
            }
        }
    }

    fn send(&mut self, now: Instant, args: &[&[u8]], expect: Expect) {
        if self.write(args) {
            self.expect.push_back((later(now, REPLY_TIMEOUT), expect));
        }
    }

    /// One (UN)SUBSCRIBE for all `keys`: Redis confirms each key separately.
    fn subscribe(&mut self, now: Instant, verb: &'static [u8], keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut args: Vec<&[u8]> = vec![verb];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        if self.write(&args) {
            let deadline = later(now, REPLY_TIMEOUT);
            self.expect.extend(keys.iter().map(|_| (deadline, Expect::SubAck)));
        }
    }

    /// Forgets the socket and its buffers; returns the replies that will now never come.
    fn reset(&mut self) -> VecDeque<(Instant, Expect)> {
        self.phase = Phase::Idle;
        self.out.clear();
        self.inbuf.clear();
        std::mem::take(&mut self.expect)
    }

    /// Holds a socket, or one the shell is opening.
    fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Connecting { asked: true, .. })
    }

    fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Backoff(at) => Some(at),
            Phase::Connecting { deadline, .. } => Some(deadline),
            Phase::Ready => self.expect.front().map(|(deadline, _)| *deadline),
        }
    }
}

/// One step of SplitMix64: a tiny deterministic generator (jitter here, seeded simulations in
/// the tests), so the core needs no randomness source.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Splits a `redis://host[:port][/db]` URL into `host:port` and the database number.
pub fn parse_url(url: &str) -> Result<(String, u32), UrlError> {
    let error = |reason| UrlError { url: url.to_owned(), reason };
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(error(if url.starts_with("rediss://") {
            "TLS (rediss://) is not supported; use redis:// (through a TLS tunnel if needed)"
        } else if url.starts_with("unix://") || url.starts_with("redis+unix://") {
            "unix sockets are not supported; use redis://host:port"
        } else {
            "must start with redis://"
        }));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(error("credentials in the URL are not supported"));
    }
    if path.contains(['?', '#']) || authority.contains(['?', '#']) {
        return Err(error("query parameters are not supported"));
    }
    let db = if path.is_empty() { Ok(0) } else { path.parse::<u32>().map_err(|_| error("database must be a number")) }?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else { return Err(error("unclosed [ in the host")) };
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => 6379,
        Some(port) => port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| error("port must be 1..=65535"))?,
    };
    if host.is_empty() || host == "[]" {
        return Err(error("missing host"));
    }
    Ok((format!("{host}:{port}"), db))
}

/// An envelope as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wire {
    epoch: u64,
    seq: u64,
    envelope: Envelope,
}

/// See the module docs; `None` when the node id or channel is too long for its length field.
fn encode_envelope(epoch: u64, seq: u64, envelope: &Envelope) -> Option<Vec<u8>> {
    let node = envelope.origin.node.as_bytes();
    let channel = envelope.channel.as_bytes();
    let node_len = u16::try_from(node.len()).ok()?;
    let channel_len = u16::try_from(channel.len()).ok()?;
    let mut out = Vec::with_capacity(ENVELOPE_FIXED + 4 + node.len() + channel.len() + envelope.payload.len());
    out.push(ENVELOPE_VERSION);
    out.push(if envelope.text { FLAG_TEXT } else { 0 });
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&envelope.origin.worker.to_be_bytes());
    out.extend_from_slice(&node_len.to_be_bytes());
    out.extend_from_slice(node);
    out.extend_from_slice(&channel_len.to_be_bytes());
    out.extend_from_slice(channel);
    out.extend_from_slice(&envelope.payload);
    Some(out)
}

/// The inverse of [`encode_envelope`]; `None` for anything malformed, including a text payload that is not UTF-8.
fn decode_envelope(bytes: &[u8]) -> Option<Wire> {
    let mut r = Reader(bytes);
    if r.take(1)? != [ENVELOPE_VERSION] {
        return None;
    }
    let flags = r.take(1)?[0];
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let worker = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let node = r.string()?;
    let channel = r.string()?;
    let payload = r.0;
    let text = flags & FLAG_TEXT != 0;
    if flags & !FLAG_TEXT != 0 || (text && std::str::from_utf8(payload).is_err()) {
        return None;
    }
    let origin = Origin { node, worker };
    Some(Wire { epoch, seq, envelope: Envelope { origin, channel, text, payload: payload.to_vec().into() } })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

/// The next complete frame in `buf`, removed from it.
fn next_frame(buf: &mut BytesMut) -> Result<Option<OwnedFrame>, ProtocolError> {
    match scan_frame(buf) {
        Scan::Bad => Err(ProtocolError),
        Scan::Incomplete if buf.len() > MAX_REPLY_BYTES => Err(ProtocolError),
        Scan::Incomplete => Ok(None),
        Scan::Complete => match decode(buf) {
            Ok(Some((frame, used))) => {
                buf.advance(used);
                Ok(Some(frame))
            }
            // The scan saw a whole frame; a decoder that disagrees would stall us forever.
            Ok(None) | Err(_) => Err(ProtocolError),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Incomplete,
    Complete,
    Bad,
}

/// Walks the first frame's headers without recursion, so the recursive decoder only ever sees frames of
/// bounded depth and size (a stream of `*1\r\n` would otherwise overflow the stack, which aborts).
fn scan_frame(buf: &[u8]) -> Scan {
    let mut pos = 0usize;
    let mut open: Vec<u64> = Vec::new();
    loop {
        let Some(&kind) = buf.get(pos) else { return Scan::Incomplete };
        let Some(line) = buf.get(pos + 1..).and_then(|rest| rest.windows(2).position(|w| w == b"\r\n")) else {
            return Scan::Incomplete;
        };
        let header = &buf[pos + 1..pos + 1 + line];
        pos += line + 3;
        match kind {
            b'*' => match parse_len(header) {
                Some(Some(0)) | Some(None) => {}
                Some(Some(n)) if open.len() < MAX_DEPTH => {
                    open.push(n);
                    continue;
                }
                _ => return Scan::Bad,
            },
            b'$' => match parse_len(header) {
                Some(None) => {}
                Some(Some(n)) if n <= MAX_REPLY_BYTES as u64 => {
                    // Bounded by MAX_REPLY_BYTES, so this cannot overflow.
                    pos += n as usize + 2;
                }
                _ => return Scan::Bad,
            },
            b'+' | b'-' | b':' => {}
            _ => return Scan::Bad,
        }
        // One element is complete: close every array it completes.
        loop {
            let Some(left) = open.last_mut() else {
                return if pos <= buf.len() { Scan::Complete } else { Scan::Incomplete };
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
    }
}

/// A RESP length: `Some(None)` for the null length -1.
fn parse_len(header: &[u8]) -> Option<Option<u64>> {
    if header == b"-1" {
        return Some(None);
    }
    std::str::from_utf8(header).ok()?.parse::<u64>().ok().map(Some)
}

fn bulk(frame: &OwnedFrame) -> Option<&[u8]> {
    match frame {
        OwnedFrame::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// `"{epoch}:{connections}"` → both numbers.
fn parse_lease(value: &[u8]) -> Option<(u64, u64)> {
    let (epoch, count) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((epoch.parse().ok()?, count.parse().ok()?))
}

fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The delay before reconnect attempt `attempt` (0-based): `min · 2^attempt` capped at `max`, times
/// `1 ± jitter`.
fn backoff_delay(config: &BackoffConfig, attempt: u32, rng: &mut SplitMix) -> Duration {
    let base = config.min.saturating_mul(1u32 << attempt.min(31)).min(config.max);
    let jitter = config.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (2.0 * rng.unit() - 1.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
}

/// SplitMix64: a tiny deterministic generator, so equal inputs give equal runs; seeded from the origin so
/// the hubs of a cluster do not reconnect in lockstep.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn seeded(origin: &Origin) -> Self {
        // FNV-1a over the node id and worker.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for byte in origin.node.bytes().chain(origin.worker.to_be_bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(hash)
    }

    fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakerConfig, BrokerKind};
    use bytes::Bytes;
    use proptest::prelude::*;
    use switchboard_testkit::origin as origin_instant;

    fn config() -> BrokerConfig {
        BrokerConfig {
            kind: BrokerKind::Redis,
            url: "redis://10.0.0.1:6380".to_owned(),
            prefix: "sb".to_owned(),
            node_id: "n1".to_owned(),
            lease_ttl: Duration::from_secs(15),
            backoff: BackoffConfig { min: Duration::from_millis(100), max: Duration::from_millis(1600), jitter: 0.2 },
            breaker: BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(10) },
        }
    }

    fn origin(node: &str, worker: u32) -> Origin {
        Origin { node: node.to_owned(), worker }
    }

    fn envelope(from: Origin, channel: &str, payload: &[u8]) -> Envelope {
        Envelope { origin: from, channel: channel.to_owned(), text: true, payload: Bytes::copy_from_slice(payload) }
    }

    /// A RESP array of bulk strings, as Redis sends pushes and multi-bulk replies.
    fn resp(items: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", items.len()).into_bytes();
        for item in items {
            out.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
            out.extend_from_slice(item);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn message(channel: &str, from: Origin, epoch: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
        let wire = encode_envelope(epoch, seq, &envelope(from, channel, payload));
        let Some(wire) = wire else { panic!("encodable") };
        resp(&[b"message", format!("sb:ch:{channel}").as_bytes(), &wire])
    }

    struct Sim {
        link: RedisLink,
        t0: Instant,
        now: Instant,
    }

    impl Sim {
        fn new(config: &BrokerConfig) -> Self {
            let t0 = origin_instant();
            let link = RedisLink::new(config, origin("n1", 0), t0);
            let Ok(link) = link else { panic!("{link:?}") };
            Self { link, t0, now: t0 }
        }

        /// Connected, epoch 7 learnt, first lease and stats answered.
        fn ready() -> Self {
            let mut sim = Self::new(&config());
            assert_eq!(sim.connect(), [LinkConn::Command, LinkConn::Subscriber]);
            assert_eq!(sim.commands(LinkConn::Command), [vec!["INCR", "sb:epoch"]]);
            sim.feed(LinkConn::Command, b":7\r\n");
            assert_eq!(
                sim.commands(LinkConn::Command),
                [vec!["SET", "sb:lease:n1:0", "7:0", "EX", "15"], vec!["KEYS", "sb:lease:*"]]
            );
            sim.feed(LinkConn::Command, b"+OK\r\n*0\r\n");
            sim
        }

        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
        }

        fn ms(&self) -> u64 {
            u64::try_from((self.now - self.t0).as_millis()).unwrap_or(u64::MAX)
        }

        fn fire(&mut self) {
            self.link.handle_timeout(self.now);
        }

        /// Jumps to the next wake-up and runs it.
        fn wake(&mut self) {
            let Some(at) = self.link.poll_timeout() else { panic!("no timer armed") };
            self.now = self.now.max(at);
            self.fire();
        }

        fn connect(&mut self) -> Vec<LinkConn> {
            let mut opened = Vec::new();
            while let Some((which, addr)) = self.link.poll_connect() {
                assert_eq!(addr, "10.0.0.1:6380");
                opened.push(which);
            }
            for &which in &opened {
                self.link.handle_connected(self.now, which);
            }
            opened
        }

        fn closes(&mut self) -> Vec<LinkConn> {
            std::iter::from_fn(|| self.link.poll_close()).collect()
        }

        fn feed(&mut self, which: LinkConn, bytes: &[u8]) {
            self.link.handle_bytes(self.now, which, bytes);
        }

        fn raw_commands(&mut self, which: LinkConn) -> Vec<Vec<Vec<u8>>> {
            let mut bytes = Vec::new();
            while self.link.wants_write(which) {
                let mut slices = [IoSlice::new(&[])];
                let n = self.link.transmit(which, &mut slices);
                let chunk: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
                // Write in two parts to exercise partial consumption.
                let half = chunk.len().div_ceil(2);
                bytes.extend_from_slice(&chunk[..half]);
                self.link.consume(which, half);
            }
            let mut commands = Vec::new();
            let mut rest = bytes.as_slice();
            while let Ok(Some((frame, used))) = decode(rest) {
                let OwnedFrame::Array(args) = frame else { panic!("not a command: {frame:?}") };
                commands.push(args.iter().map(|a| bulk(a).map(<[u8]>::to_vec).unwrap_or_default()).collect());
                rest = &rest[used..];
            }
            assert!(rest.is_empty(), "trailing bytes {rest:?}");
            commands
        }

        fn commands(&mut self, which: LinkConn) -> Vec<Vec<String>> {
            let raw = self.raw_commands(which);
            raw.iter().map(|c| c.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()).collect()
        }

        fn deliveries(&mut self) -> Vec<Envelope> {
            std::iter::from_fn(|| self.link.poll_delivery()).collect()
        }

        fn answers(&mut self) -> Vec<PresenceAnswer> {
            std::iter::from_fn(|| self.link.poll_presence()).collect()
        }

        fn backoff_at(&self, which: LinkConn) -> Option<Instant> {
            match self.link.conn(which).phase {
                Phase::Backoff(at) => Some(at),
                _ => None,
            }
        }
    }

    #[test]
    fn url_forms() {
        assert_eq!(parse_url("redis://h"), Ok(("h:6379".to_owned(), 0)));
        assert_eq!(parse_url("redis://h:7000/3"), Ok(("h:7000".to_owned(), 3)));
        assert_eq!(parse_url("redis://[::1]:7000/"), Ok(("[::1]:7000".to_owned(), 0)));
        assert_eq!(parse_url("redis://[::1]"), Ok(("[::1]:6379".to_owned(), 0)));
        for bad in ["rediss://h:6379", "unix:///tmp/r.sock", "http://h", "redis://", "redis://h:0", "redis://h:x"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        for bad in ["redis://h/x", "redis://:pw@h", "redis://h/0?timeout=1", "redis://[::1"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let Err(e) = parse_url("rediss://h") else { panic!("rediss accepted") };
        assert!(e.to_string().contains("TLS"), "{e}");
        let mut c = config();
        c.url = "rediss://h:6379".to_owned();
        assert!(RedisLink::new(&c, origin("n1", 0), origin_instant()).is_err());
    }

    #[test]
    fn connect_sequence_asks_for_both_connections() {
        let mut sim = Sim::new(&config());
        assert_eq!(sim.link.state(), BrokerState::Closed);
        assert!(!sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"1")), "no connection yet");
        assert_eq!(sim.link.dropped(), 1);
        assert_eq!(sim.connect(), [LinkConn::Command, LinkConn::Subscriber]);
        assert_eq!(sim.link.poll_connect(), None);
        assert!(!sim.link.wants_write(LinkConn::Subscriber), "nothing to subscribe to yet");
        assert_eq!(sim.link.cluster_connections(), None);
        let mut sim = Sim::ready();
        assert_eq!(sim.link.cluster_connections(), Some(0));
        assert_eq!(sim.link.poll_timeout(), Some(sim.t0 + Duration::from_secs(5)), "lease refresh at ttl/3");
        assert!(sim.closes().is_empty());
    }

    #[test]
    fn select_precedes_everything_when_a_database_is_given() {
        let mut c = config();
        c.url = "redis://10.0.0.1:6380/3".to_owned();
        let mut sim = Sim::new(&c);
        sim.connect();
        assert_eq!(sim.commands(LinkConn::Command), [vec!["SELECT", "3"], vec!["INCR", "sb:epoch"]]);
        // A refused SELECT would leave every key in the wrong database: the connection starts over.
        sim.feed(LinkConn::Command, b"-ERR DB index is out of range\r\n");
        assert_eq!(sim.closes(), [LinkConn::Command]);
        assert!(sim.backoff_at(LinkConn::Command).is_some());
    }

    #[test]
    fn subscribes_only_to_held_channels() {
        let mut sim = Sim::new(&config());
        sim.link.subscribe(sim.now, "a");
        sim.link.subscribe(sim.now, "b");
        sim.link.unsubscribe(sim.now, "b");
        sim.link.subscribe(sim.now, "c");
        sim.connect();
        assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:a", "sb:ch:c"]]);
        sim.link.subscribe(sim.now, "a");
        assert!(sim.commands(LinkConn::Subscriber).is_empty(), "already held");
        sim.link.subscribe(sim.now, "d");
        sim.link.unsubscribe(sim.now, "a");
        sim.link.unsubscribe(sim.now, "zz");
        assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:d"], vec!["UNSUBSCRIBE", "sb:ch:a"]]);
        let acks = [
            resp(&[b"subscribe", b"sb:ch:a"]),
            resp(&[b"subscribe", b"sb:ch:c"]),
            resp(&[b"subscribe", b"sb:ch:d"]),
            resp(&[b"unsubscribe", b"sb:ch:a"]),
        ]
        .concat();
        sim.feed(LinkConn::Subscriber, &acks);
        assert!(sim.link.sub.expect.is_empty());
        assert!(sim.closes().is_empty());
    }

    #[test]
    fn publish_encodes_an_envelope_that_round_trips() {
        let mut sim = Sim::ready();
        let first = envelope(origin("n1", 0), "room", b"{\"x\":1}");
        let second = Envelope { text: false, payload: Bytes::from_static(b"\x00\xff\r\n"), ..first.clone() };
        assert!(sim.link.publish(sim.now, &first));
        assert!(sim.link.publish(sim.now, &second));
        let sent = sim.raw_commands(LinkConn::Command);
        assert_eq!(sent.len(), 2);
        for (i, (command, env)) in sent.iter().zip([&first, &second]).enumerate() {
            assert_eq!(command[..2], [b"PUBLISH".to_vec(), b"sb:ch:room".to_vec()]);
            let wire = decode_envelope(&command[2]);
            assert_eq!(wire, Some(Wire { epoch: 7, seq: i as u64 + 1, envelope: env.clone() }));
        }
        sim.feed(LinkConn::Command, b":3\r\n:0\r\n");
        assert_eq!(sim.link.dropped(), 0);
    }

    #[test]
    fn envelope_rejects_malformed_bytes() {
        let Some(good) = encode_envelope(1, 2, &envelope(origin("n2", 3), "c", b"hi")) else { panic!() };
        assert!(decode_envelope(&good).is_some());
        for cut in 0..good.len() - 2 {
            assert_eq!(decode_envelope(&good[..cut]), None, "cut at {cut}");
        }
        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(decode_envelope(&version), None);
        let mut flags = good.clone();
        flags[1] = 0x80;
        assert_eq!(decode_envelope(&flags), None);
        let Some(bad_text) = encode_envelope(1, 2, &envelope(origin("n2", 3), "c", b"\xff")) else { panic!() };
        assert_eq!(decode_envelope(&bad_text), None, "text flag promises UTF-8");
        let long = envelope(origin("n2", 3), &"c".repeat(70_000), b"");
        assert_eq!(encode_envelope(1, 1, &long), None);
    }

    #[test]
    fn pushed_messages_are_delivered_once_and_never_from_our_node() {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "room");
        let other = origin("n2", 1);
        let stream = [
            message("room", other.clone(), 5, 1, b"one"),
            message("room", other.clone(), 5, 1, b"one again"),
            message("room", origin("n1", 0), 7, 1, b"ours"),
            message("room", other.clone(), 5, 3, b"three"),
            message("room", other.clone(), 5, 2, b"late two"),
            message("room", origin("n1", 1), 7, 1, b"our node, other worker: the bus carries those"),
            message("room", other.clone(), 6, 1, b"restarted"),
            message("elsewhere", other.clone(), 6, 2, b"not held"),
            resp(&[b"message", b"sb:ch:other", &message("room", other.clone(), 6, 3, b"x")[..0]]),
            resp(&[b"message", b"sb:ch:room", b"\x01garbage"]),
        ]
        .concat();
        sim.feed(LinkConn::Subscriber, &stream);
        let got: Vec<Bytes> = sim.deliveries().into_iter().map(|e| e.payload).collect();
        assert_eq!(got, ["one", "three", "restarted"].map(|s| Bytes::from_static(s.as_bytes())));
        assert!(sim.closes().is_empty(), "junk payloads are not protocol errors");
        // A message whose Redis channel disagrees with its envelope is dropped too.
        let Some(wire) = encode_envelope(6, 9, &envelope(other, "room", b"spoof")) else { panic!() };
        sim.feed(LinkConn::Subscriber, &resp(&[b"message", b"sb:ch:other", &wire]));
        assert!(sim.deliveries().is_empty());
    }

    #[test]
    fn what_we_saw_of_a_node_is_forgotten_with_its_lease() {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "room");
        sim.feed(LinkConn::Subscriber, &resp(&[b"subscribe", b"sb:ch:room"]));
        sim.commands(LinkConn::Subscriber);
        let stream = [message("room", origin("n2", 0), 5, 1, b"a"), message("room", origin("n3", 1), 5, 1, b"b")];
        sim.feed(LinkConn::Subscriber, &stream.concat());
        assert_eq!(sim.deliveries().len(), 2);
        assert_eq!(sim.link.last_seen.len(), 2);
        sim.wake();
        sim.commands(LinkConn::Command);
        sim.feed(LinkConn::Command, b"$3\r\n7:0\r\n");
        sim.feed(LinkConn::Command, &resp(&[b"sb:lease:n1:0", b"sb:lease:n3:1"]));
        let kept: Vec<&(String, u32)> = sim.link.last_seen.keys().collect();
        assert_eq!(kept, [&("n3".to_owned(), 1)], "n2's lease expired");
    }

    #[test]
    fn unsubscribed_channels_stop_delivering() {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "room");
        sim.link.unsubscribe(sim.now, "room");
        sim.feed(LinkConn::Subscriber, &message("room", origin("n2", 0), 1, 1, b"late"));
        assert!(sim.deliveries().is_empty());
    }

    fn presence_value(hub: &str, epoch: u64, member: &str, info: &str) -> Vec<u8> {
        format!(r#"{{"hub":"{hub}","epoch":{epoch},"member":"{member}","info":{info}}}"#).into_bytes()
    }

    #[test]
    fn presence_join_and_leave() {
        let mut sim = Sim::ready();
        sim.link.presence_join(sim.now, "room", "alice", Some(r#"{"name":"Alice"}"#));
        sim.link.presence_join(sim.now, "room", "bob", Some("not json"));
        sim.link.presence_leave(sim.now, "room", "alice");
        sim.link.presence_leave(sim.now, "room", "nobody");
        let sent = sim.commands(LinkConn::Command);
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0][..3], ["HSET", "sb:presence:room", "n1:0:alice"]);
        let value: serde_json::Value = serde_json::from_str(&sent[0][3]).unwrap_or_default();
        assert_eq!(value, serde_json::json!({"hub": "n1:0", "epoch": 7, "member": "alice", "info": {"name": "Alice"}}));
        assert_eq!(sent[1][2], "n1:0:bob");
        assert!(sent[1][3].ends_with(r#""info":null}"#), "invalid info is dropped: {}", sent[1][3]);
        assert_eq!(sent[2], ["HDEL", "sb:presence:room", "n1:0:alice"]);
    }

    #[test]
    fn leaves_while_disconnected_are_deleted_on_reconnect() {
        let mut sim = Sim::ready();
        sim.link.presence_join(sim.now, "room", "alice", None);
        sim.link.presence_join(sim.now, "room", "bob", None);
        sim.commands(LinkConn::Command);
        sim.link.handle_eof(sim.now, LinkConn::Command);
        sim.link.presence_leave(sim.now, "room", "alice");
        // Joined and left while down: Redis never had it, nothing to delete.
        sim.link.presence_join(sim.now, "room", "carol", None);
        sim.link.presence_leave(sim.now, "room", "carol");
        sim.wake();
        assert_eq!(sim.connect(), [LinkConn::Command]);
        let sent = sim.commands(LinkConn::Command);
        let verbs: Vec<&str> = sent.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(verbs, ["SET", "HSET", "HDEL", "KEYS"], "{sent:?}");
        assert_eq!(sent[1][2], "n1:0:bob");
        assert_eq!(sent[2][1..], ["sb:presence:room", "n1:0:alice"]);
    }

    #[test]
    fn presence_request_filters_dead_hubs() {
        let mut sim = Sim::ready();
        sim.link.presence_join(sim.now, "room", "alice", Some("1"));
        sim.commands(LinkConn::Command);
        sim.feed(LinkConn::Command, b":1\r\n");
        sim.link.request_presence(sim.now, "room", 42);
        assert_eq!(sim.commands(LinkConn::Command), [vec!["HGETALL", "sb:presence:room"]]);
        let hash = resp(&[
            b"n1:0:alice",
            &presence_value("n1:0", 7, "alice", "1"),
            b"n1:0:ghost",
            &presence_value("n1:0", 3, "ghost", "null"),
            b"n2:0:bob",
            &presence_value("n2:0", 5, "bob", "{\"b\":2}"),
            b"n3:1:carol",
            &presence_value("n3:1", 2, "carol", "null"),
            b"n4:0:dave",
            &presence_value("n4:0", 1, "dave", "null"),
            b"junk",
            b"not json",
        ]);
        // Split mid-frame: chunking must not matter.
        sim.feed(LinkConn::Command, &hash[..17]);
        sim.feed(LinkConn::Command, &hash[17..]);
        assert!(sim.answers().is_empty(), "waits for the leases");
        let sent = sim.commands(LinkConn::Command);
        assert_eq!(sent[0], ["HDEL", "sb:presence:room", "n1:0:ghost"], "our previous life");
        assert_eq!(sent[1], ["MGET", "sb:lease:n2:0", "sb:lease:n3:1", "sb:lease:n4:0"]);
        // n2 lives in epoch 5; n3's lease expired; n4 restarted (epoch 9) so dave is a ghost.
        sim.feed(LinkConn::Command, b":1\r\n*3\r\n$4\r\n5:10\r\n$-1\r\n$3\r\n9:0\r\n");
        let answers = sim.answers();
        let members =
            vec![("alice".to_owned(), Some("1".to_owned())), ("bob".to_owned(), Some("{\"b\":2}".to_owned()))];
        assert_eq!(answers, [PresenceAnswer { token: 42, members, complete: true }]);
        assert_eq!(sim.commands(LinkConn::Command), [vec!["HDEL", "sb:presence:room", "n3:1:carol", "n4:0:dave"]]);
    }

    #[test]
    fn presence_request_without_redis_answers_locally() {
        let mut sim = Sim::ready();
        sim.link.presence_join(sim.now, "room", "alice", None);
        sim.link.request_presence(sim.now, "room", 1);
        assert!(sim.answers().is_empty());
        sim.link.handle_eof(sim.now, LinkConn::Command);
        let local = vec![("alice".to_owned(), None)];
        assert_eq!(sim.answers(), [PresenceAnswer { token: 1, members: local.clone(), complete: false }]);
        sim.link.request_presence(sim.now, "room", 2);
        assert_eq!(sim.answers(), [PresenceAnswer { token: 2, members: local, complete: false }]);
        sim.link.request_presence(sim.now, "empty", 3);
        assert_eq!(sim.answers(), [PresenceAnswer { token: 3, members: vec![], complete: false }]);
    }

    #[test]
    fn lease_and_stats_refresh_on_a_timer() {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "room");
        sim.link.presence_join(sim.now, "room", "alice", None);
        sim.feed(LinkConn::Subscriber, &resp(&[b"subscribe", b"sb:ch:room"]));
        sim.feed(LinkConn::Command, b":1\r\n");
        sim.commands(LinkConn::Command);
        sim.commands(LinkConn::Subscriber);
        sim.link.set_local_connections(12);
        sim.at(4_999);
        sim.fire();
        assert!(sim.commands(LinkConn::Command).is_empty(), "spurious wake-up does nothing");
        sim.wake();
        assert_eq!(sim.ms(), 5_000);
        assert_eq!(
            sim.commands(LinkConn::Command),
            [vec!["SET", "sb:lease:n1:0", "7:12", "EX", "15", "GET"], vec!["KEYS", "sb:lease:*"]]
        );
        assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["PING"]]);
        sim.feed(LinkConn::Subscriber, &resp(&[b"pong", b""]));
        sim.feed(LinkConn::Command, b"$4\r\n7:12\r\n");
        sim.feed(LinkConn::Command, &resp(&[b"sb:lease:n1:0", b"sb:lease:n2:0", b"sb:lease:n3:0"]));
        assert_eq!(sim.commands(LinkConn::Command), [vec!["MGET", "sb:lease:n1:0", "sb:lease:n2:0", "sb:lease:n3:0"]]);
        sim.feed(LinkConn::Command, b"*3\r\n$4\r\n7:12\r\n$4\r\n3:30\r\n$-1\r\n");
        assert_eq!(sim.link.cluster_connections(), Some(42));
        assert_eq!(sim.link.poll_timeout(), Some(sim.t0 + Duration::from_secs(10)));
        // A lapsed lease (nil from SET .. GET): our presence may have been pruned, write it again.
        sim.wake();
        assert_eq!(sim.ms(), 10_000);
        sim.commands(LinkConn::Command);
        sim.feed(LinkConn::Command, b"$-1\r\n");
        let sent = sim.commands(LinkConn::Command);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0][..3], ["HSET", "sb:presence:room", "n1:0:alice"]);
        assert!(sim.closes().is_empty());
        assert_eq!(sim.link.state(), BrokerState::Closed);
    }

    #[test]
    fn a_late_reply_is_a_failure_and_costs_the_connection() {
        let mut sim = Sim::ready();
        assert!(sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"x")));
        sim.commands(LinkConn::Command);
        assert_eq!(sim.link.poll_timeout(), Some(sim.now + REPLY_TIMEOUT));
        sim.wake();
        assert_eq!(sim.closes(), [LinkConn::Command]);
        assert_eq!(sim.link.breaker, Breaker::Closed { failures: 1 });
        assert_eq!(sim.link.poll_connect(), None, "waits for the backoff");
        let Some(at) = sim.backoff_at(LinkConn::Command) else { panic!("no backoff") };
        let delay = at - sim.now;
        assert!(delay >= Duration::from_millis(80) && delay <= Duration::from_millis(120), "{delay:?}");
        assert!(!sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"y")));
        sim.wake();
        assert_eq!(sim.connect(), [LinkConn::Command]);
        // The epoch is kept across reconnects: straight to the lease.
        assert_eq!(sim.commands(LinkConn::Command)[0][0], "SET");
        sim.feed(LinkConn::Command, b"+OK\r\n");
        assert_eq!(sim.link.breaker, Breaker::Closed { failures: 0 }, "a reply resets the count");
    }

    #[test]
    fn a_connect_that_hangs_times_out() {
        let mut sim = Sim::new(&config());
        assert!(sim.link.poll_connect().is_some());
        sim.at(1_999);
        sim.fire();
        assert!(sim.closes().is_empty());
        sim.at(2_000);
        sim.fire();
        assert_eq!(sim.closes(), [LinkConn::Command], "abandon the pending connect");
        assert!(sim.backoff_at(LinkConn::Command).is_some());
    }

    /// Three error replies trip the breaker (threshold 3).
    fn tripped() -> Sim {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "a");
        sim.link.subscribe(sim.now, "b");
        sim.link.presence_join(sim.now, "a", "alice", None);
        sim.feed(LinkConn::Command, b":1\r\n");
        sim.feed(
            LinkConn::Subscriber,
            &[resp(&[b"subscribe", b"sb:ch:a"]), resp(&[b"subscribe", b"sb:ch:b"])].concat(),
        );
        for n in 1..=3 {
            assert!(sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"x")));
            sim.feed(LinkConn::Command, b"-OOM command not allowed\r\n");
            if n < 3 {
                assert_eq!(sim.link.state(), BrokerState::Closed);
                assert!(sim.closes().is_empty(), "an error reply alone keeps the connection");
            }
        }
        assert_eq!(sim.link.state(), BrokerState::Open);
        sim
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let mut sim = tripped();
        let opened_at = sim.now;
        assert_eq!(sim.closes(), [LinkConn::Command, LinkConn::Subscriber]);
        assert_eq!(sim.link.cluster_connections(), None);
        assert!(!sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"x")));
        assert_eq!(sim.link.dropped(), 1);
        assert!(!sim.link.wants_write(LinkConn::Command));
        assert_eq!(sim.link.poll_timeout(), Some(opened_at + Duration::from_secs(10)));
        sim.at(9_999);
        sim.fire();
        assert_eq!(sim.link.poll_connect(), None, "nothing before open_for");
        sim.wake();
        assert_eq!(sim.link.state(), BrokerState::HalfOpen);
        assert_eq!(sim.connect(), [LinkConn::Command], "only the probe connection");
        assert_eq!(sim.commands(LinkConn::Command), [vec!["PING"]]);
        assert!(!sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"x")), "still refused while half-open");
        sim.feed(LinkConn::Command, b"+PONG\r\n");
        assert_eq!(sim.link.state(), BrokerState::Closed);
        let sent = sim.commands(LinkConn::Command);
        let verbs: Vec<&str> = sent.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(verbs, ["SET", "HSET", "KEYS"], "lease and presence registered again");
        assert_eq!(sent[1][2], "n1:0:alice");
        assert_eq!(sim.connect(), [LinkConn::Subscriber]);
        assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:a", "sb:ch:b"]]);
        assert!(sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"x")));
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        // Refused, error reply, and no reply at all: each sends the breaker back to open for open_for.
        for how in 0..3 {
            let mut sim = tripped();
            sim.closes();
            sim.at(10_000);
            sim.fire();
            assert_eq!(sim.link.state(), BrokerState::HalfOpen);
            let Some((LinkConn::Command, _)) = sim.link.poll_connect() else { panic!("no probe connection") };
            match how {
                0 => sim.link.handle_connect_failed(sim.now, LinkConn::Command),
                1 => {
                    sim.link.handle_connected(sim.now, LinkConn::Command);
                    sim.feed(LinkConn::Command, b"-LOADING Redis is loading the dataset in memory\r\n");
                }
                _ => {
                    sim.link.handle_connected(sim.now, LinkConn::Command);
                    sim.wake();
                }
            }
            assert_eq!(sim.link.state(), BrokerState::Open, "case {how}");
            assert_eq!(sim.link.poll_timeout(), Some(sim.now + Duration::from_secs(10)), "case {how}");
            assert_eq!(sim.link.poll_connect(), None);
            let expected_close: &[LinkConn] = if how == 0 { &[] } else { &[LinkConn::Command] };
            assert_eq!(sim.closes(), expected_close, "case {how}");
        }
    }

    #[test]
    fn connection_losses_count_towards_the_breaker() {
        let mut sim = Sim::ready();
        sim.link.handle_eof(sim.now, LinkConn::Subscriber);
        sim.link.handle_eof(sim.now, LinkConn::Command);
        assert_eq!(sim.link.state(), BrokerState::Closed);
        assert!(sim.closes().is_empty(), "the shell already dropped them");
        sim.wake();
        sim.wake();
        let asked: Vec<LinkConn> = std::iter::from_fn(|| sim.link.poll_connect().map(|(c, _)| c)).collect();
        assert_eq!(asked.len(), 2);
        sim.link.handle_connect_failed(sim.now, LinkConn::Command);
        assert_eq!(sim.link.state(), BrokerState::Open);
        assert_eq!(sim.closes(), [LinkConn::Subscriber], "its connect was still pending");
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets_after_success() {
        let mut c = config();
        c.breaker.failure_threshold = 1000;
        let mut sim = Sim::new(&c);
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(sim.link.poll_connect().is_some());
            sim.link.handle_connect_failed(sim.now, LinkConn::Command);
            let Some(at) = sim.backoff_at(LinkConn::Command) else { panic!("no backoff") };
            delays.push(at - sim.now);
            sim.now = at;
            sim.fire();
        }
        let bases = [100u64, 200, 400, 800, 1600, 1600, 1600, 1600];
        for (delay, base) in delays.iter().zip(bases) {
            let (low, high) = (Duration::from_millis(base * 8 / 10), Duration::from_millis(base * 12 / 10));
            assert!(*delay >= low && *delay <= high, "{delay:?} outside {low:?}..={high:?} ({delays:?})");
        }
        assert!(delays[4..].windows(2).any(|w| w[0] != w[1]), "jitter spreads the capped delays: {delays:?}");
        // A reply is a success: the next loss starts from the minimum again.
        assert!(sim.link.poll_connect().is_some());
        sim.link.handle_connected(sim.now, LinkConn::Command);
        sim.feed(LinkConn::Command, b":1\r\n");
        sim.link.handle_eof(sim.now, LinkConn::Command);
        let Some(at) = sim.backoff_at(LinkConn::Command) else { panic!("no backoff") };
        assert!(at - sim.now <= Duration::from_millis(120), "{:?}", at - sim.now);
    }

    #[test]
    fn jitter_is_deterministic_per_origin() {
        let run = |node: &str| {
            let mut rng = SplitMix::seeded(&origin(node, 0));
            (0..6).map(|a| backoff_delay(&config().backoff, a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run("n1"), run("n1"));
        assert_ne!(run("n1"), run("n2"));
    }

    #[test]
    fn deep_nesting_is_a_protocol_error_not_a_stack_overflow() {
        let mut sim = Sim::ready();
        sim.feed(LinkConn::Subscriber, &b"*1\r\n".repeat(200_000));
        assert_eq!(sim.closes(), [LinkConn::Subscriber]);
        sim.feed(LinkConn::Command, b"$99999999999\r\n");
        assert_eq!(sim.closes(), [LinkConn::Command]);
    }

    #[test]
    fn an_unexpected_reply_is_a_protocol_error() {
        let mut sim = Sim::ready();
        sim.feed(LinkConn::Command, b"+OK\r\n");
        assert_eq!(sim.closes(), [LinkConn::Command]);
        assert_eq!(sim.link.breaker, Breaker::Closed { failures: 1 });
        sim.feed(LinkConn::Command, b"+OK\r\n");
        assert!(sim.closes().is_empty(), "bytes for a dropped connection are ignored");
    }

    #[test]
    fn scan_agrees_with_the_decoder() {
        let frames: [&[u8]; 8] = [
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-5\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"$3\r\na\r\n\r\n",
            b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n",
        ];
        for frame in frames {
            assert_eq!(scan_frame(frame), Scan::Complete, "{frame:?}");
            assert!(matches!(decode(frame), Ok(Some((_, n))) if n == frame.len()), "{frame:?}");
            for cut in 0..frame.len() {
                assert_eq!(scan_frame(&frame[..cut]), Scan::Incomplete, "{frame:?} cut at {cut}");
            }
        }
        assert_eq!(scan_frame(b"!3\r\n"), Scan::Bad);
        assert_eq!(scan_frame(b"*x\r\n"), Scan::Bad);
    }

    /// Everything a subscriber connection might see, to compare one-shot and chunked feeding.
    fn sample_stream() -> Vec<u8> {
        [
            resp(&[b"subscribe", b"sb:ch:room"]),
            message("room", origin("n2", 0), 1, 1, b"a"),
            message("room", origin("n2", 0), 1, 2, b"b\r\n*1\r\n"),
            resp(&[b"pong", b""]),
            message("room", origin("n3", 4), 2, 1, &[0u8; 300]),
        ]
        .concat()
    }

    fn feed_chunked(stream: &[u8], cuts: &[usize]) -> Vec<Envelope> {
        let mut sim = Sim::ready();
        sim.link.subscribe(sim.now, "room");
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            sim.feed(LinkConn::Subscriber, &stream[start..cut]);
            start = cut;
        }
        assert!(sim.closes().is_empty());
        sim.deliveries()
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_what_is_delivered(cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
            let stream = sample_stream();
            let whole = feed_chunked(&stream, &[]);
            prop_assert_eq!(whole.len(), 3);
            prop_assert_eq!(feed_chunked(&stream, &cuts), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..16),
        ) {
            let mut sim = Sim::ready();
            sim.link.subscribe(sim.now, "room");
            sim.link.request_presence(sim.now, "room", 1);
            for (command, bytes) in chunks {
                let which = if command { LinkConn::Command } else { LinkConn::Subscriber };
                sim.feed(which, &bytes);
                sim.closes();
                sim.connect();
                sim.deliveries();
                sim.answers();
            }
        }

        #[test]
        fn resp_shaped_bytes_never_panic(text in "([*$:+-][0-9-]{0,3}\r\n|[a-z]{0,4}\r\n){0,30}") {
            let mut sim = Sim::ready();
            sim.link.request_presence(sim.now, "room", 1);
            sim.feed(LinkConn::Command, text.as_bytes());
            sim.feed(LinkConn::Subscriber, text.as_bytes());
        }

        #[test]
        fn envelopes_round_trip(
            node in ".{0,20}", worker in any::<u32>(), channel in ".{0,40}", text in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100), epoch in any::<u64>(), seq in any::<u64>(),
        ) {
            let payload = if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
            let env = Envelope { origin: origin(&node, worker), channel, text, payload: payload.into() };
            let encoded = encode_envelope(epoch, seq, &env);
            prop_assert!(encoded.is_some());
            let decoded = encoded.as_deref().and_then(decode_envelope);
            prop_assert_eq!(decoded, Some(Wire { epoch, seq, envelope: env }));
        }

        #[test]
        fn arbitrary_envelope_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_envelope(&bytes);
        }
    }
}
