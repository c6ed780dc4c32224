//! The `Hub`: every connection of one worker, and the rules that decide what happens to them.

mod admin;
mod cluster;
mod conn;
mod fanout;
mod handshakes;
mod http;
mod messages;
mod native;
mod ops;
mod output;
mod pusher;
mod pusher_api;
mod pusher_hooks;
mod pusher_users;
mod timers;
mod tls;

pub(crate) use native::STREAMED;
pub use output::{Output, WebhookOutcome, WebhookRequest};

use conn::{Connection, Phase, Slot, Subscription, Timer, TimerTable, live, live_conn};
use output::Event;

use cluster::PresenceWaiter;
use fanout::{is_room, room_name};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::api::BrokerState;
use crate::auth::keys::KeySet;
use crate::broker::{BrokerCommand, Envelope, Origin};
use crate::channel::Channels;
use crate::config::{BrokerKind, Config, ConfigError, RouteMode, SlowConsumerPolicy};
use crate::deflate::Deflater;
use crate::frame::{self, Decoded, Decoder};
use crate::handshake::HttpResponse;
use crate::history::{HistoryStore, HistoryTable};
use crate::limits::{Admission, AdmissionTable, TokenBucket};
use crate::metrics::Metrics;
use crate::presence::{PresenceStore, PresenceTable};
use crate::proxy::{self};
use crate::pubsub::{self};
use crate::pusher::directory::{Directory, Effects, Update};
use crate::pusher::webhooks::Webhooks;
use crate::queue::{FrameStore, OutQueue};
use crate::redis::{LinkConn, RedisLink};
use crate::time::later;
use crate::tls::TlsKeys;

/// Identifies a connection; a stale id (of a connection that has ended) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// A small dense number, reused after the connection ends: handy as a slab key in a shell.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A drain in progress (see `Hub::shutdown`).
#[derive(Debug)]
struct Drain {
    deadline: Instant,
    next_batch: Instant,
    pending: VecDeque<ConnId>,
}

/// Why `Hub::publish` refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The channel name is not valid.
    BadChannel,
    /// No broadcast route at that path.
    NoSuchRoute,
    /// The data is not valid JSON (pub/sub channels carry JSON).
    BadJson,
    /// The channel keeps its history in Redis, which is out of reach: nothing was published.
    HistoryUnavailable,
}

/// The lengths of a hub's internal tables: what a leak would grow. For tests and for an
/// embedder hunting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Connection slots, live or free.
    pub slots: usize,
    /// Events not yet taken by `poll_event`.
    pub events: usize,
    /// Commands not yet taken by `poll_broker`.
    pub broker_commands: usize,
    /// Wake-ups in the timer heap, stale ones included.
    pub timers: usize,
    /// Frames held for unsent output.
    pub frames: usize,
    /// Connections remembered as handshaking, ended ones not yet skipped included.
    pub handshakes: usize,
    /// Presence requests waiting for other nodes.
    pub presence_waiters: usize,
    /// Other workers whose figures are kept.
    pub peer_metrics: usize,
    /// Pusher channels the directory knows of (on any hub).
    pub pusher_channels: usize,
    /// Webhook requests out or waiting for a retry, and events waiting out the grace.
    pub webhooks: usize,
}

/// The sans-IO hub: bytes and time in, bytes and events out.
///
/// After every `handle_*` call (and `shutdown`, `publish`), drain `poll_event` and
/// `poll_broker`, write what `transmit` offers for the connections named, and sleep until
/// `poll_timeout`.
#[derive(Debug)]
pub struct Hub {
    config: Config,
    origin: Origin,
    slots: Vec<Slot>,
    free: Vec<u32>,
    events: VecDeque<Event>,
    /// Commands for the broker, apart from `events` so socket events stay small and cheap.
    broker_out: VecDeque<BrokerCommand>,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Every queued frame, held once for all the queues that name it.
    frames: FrameStore,
    /// One compressor per window size, shared by every connection: contexts are never kept.
    deflaters: [Option<Deflater>; 8],
    decoded: Vec<Decoded>,
    metrics: Metrics,
    channels: Channels,
    /// The node's connection counts, shared with its other hubs.
    admission: Box<dyn Admission>,
    /// Connections in their handshake, oldest first (ended ones are skipped when met).
    handshakes: VecDeque<ConnId>,
    /// Other hubs hear this one's publishes through `poll_broker`.
    has_peers: bool,
    started: Option<Instant>,
    drain: Option<Drain>,
    broker_state: BrokerState,
    /// Other workers' latest figures, so any worker can report the whole node.
    peer_metrics: Vec<Metrics>,
    /// The links to Redis, one per shard (`broker.urls`), when `broker.kind = "redis"`
    /// (built with the hub, clocked by its first input); empty otherwise.
    redis: Vec<RedisLink>,
    /// `Output::RedisTransmit` was given for this connection (by `LinkConn::index`) since the
    /// last input.
    redis_told: Vec<bool>,
    /// Which link each channel goes to.
    route: Route,
    /// With `broker.kind = "redis-cluster"`: reads the slot map the links follow.
    map_reader: Option<crate::redis::MapReader>,
    /// `Output::RedisTransmit` was given for the map reader since the last input.
    map_told: bool,
    /// With `rediss://` URLs: how Redis sessions verify their server.
    redis_tls: Option<crate::redis::RedisTls>,
    /// The TLS session of each Redis connection, with `rediss://`.
    redis_sessions: std::collections::BTreeMap<LinkConn, crate::redis::RedisSession>,
    /// The address each Redis connection was opened to (its TLS server name).
    redis_addrs: std::collections::BTreeMap<LinkConn, String>,
    /// Redis connections whose TLS session failed: their sockets must go.
    redis_tls_failures: VecDeque<LinkConn>,
    presence_waiters: HashMap<u64, PresenceWaiter>,
    next_token: u64,
    /// The latest time given by any input, for work that outputs like `consume` start.
    latest: Option<Instant>,
    /// The wall clock: Unix milliseconds at an instant (`handle_wall_clock`).
    wall: Option<(Instant, u64)>,
    /// The first part of this hub's Pusher socket ids: drawn from the shell's seed, so two
    /// hubs of a cluster do not share it.
    socket_seed: u64,
    /// The last Pusher socket id's second part.
    next_socket: u64,
    /// Every hub's Pusher subscriptions and members, as far as this hub has heard.
    directory: Directory,
    /// This hub's directory changes not yet sent to the others.
    directory_out: Update,
    /// Directory changes not yet announced to local subscribers, each with the connection
    /// that caused it (which is not told).
    pusher_effects: Vec<(Effects, Option<ConnId>, pusher::Source)>,
    /// The other nodes missed some of this hub's directory: send all of it when Redis allows.
    directory_resync: bool,
    /// Webhook deliveries for the shell to perform.
    webhooks_out: VecDeque<WebhookRequest>,
    /// The webhook receivers' queues and requests.
    webhooks: Webhooks,
    /// `channel_vacated` and `member_removed` events waiting out the grace.
    held: Vec<pusher_hooks::Held>,
    /// Leaves seen in the cluster within the grace, so that a quick return is not reported.
    recent_leaves: HashMap<pusher_hooks::HoldKey, Instant>,
    /// Cache channels' last events, by `(app id, channel)`.
    cache: HashMap<(String, String), pusher_hooks::Cached>,
    /// Signed-in connections watching a user, by `(app id, user id)`.
    watchers: HashMap<(String, String), Vec<ConnId>>,
    /// Verifies native-protocol tokens: `auth.hmac_secret`, and the public keys the shell read.
    keys: KeySet,
    /// The node's channel streams (shared with its other hubs by the shell).
    history: Box<dyn HistoryStore>,
    /// Who is on each native channel, node-wide, when there is no Redis (shared by the shell).
    members: Box<dyn PresenceStore>,
    /// Epochs drawn for streams Redis may create (`native::epoch_candidate`).
    epoch_draws: u64,
    /// History reads sent to Redis, by token.
    history_waiters: HashMap<u64, native::HistoryWaiter>,
    /// Subscribers whose live messages wait for (or are trimmed by) their history read.
    recovering: Vec<native::Recovering>,
    /// The other hubs' figures and this hub's rates, for the admin API.
    admin: admin::AdminState,
    /// What new TLS handshakes present, once the shell handed the files in (`with_tls`).
    tls: Option<TlsKeys>,
    /// A TLS read's plaintext, kept between reads.
    tls_plain: Vec<u8>,
    /// TLS connections with plaintext waiting to be sealed by the next `poll_output`.
    unsealed: Vec<ConnId>,
}

impl Hub {
    /// A hub serving `config`, which must pass [`Config::validate`]; `node_id` names this
    /// node in broker envelopes. Alone, the hub enforces the connection limits by itself and
    /// queues nothing for other hubs (see `with_workers` and `with_admission`).
    pub fn new(config: Config, node_id: impl Into<String>) -> Result<Self, ConfigError> {
        config.validate()?;
        let webhooks = Webhooks::new(&config.pusher);
        let mut hub = Self {
            admission: Box::new(AdmissionTable::new(&config.limits)),
            config,
            origin: Origin { node: node_id.into(), worker: 0 },
            slots: Vec::new(),
            free: Vec::new(),
            events: VecDeque::new(),
            broker_out: VecDeque::new(),
            timers: BinaryHeap::new(),
            frames: FrameStore::default(),
            deflaters: Default::default(),
            decoded: Vec::new(),
            metrics: Metrics::default(),
            channels: Channels::default(),
            handshakes: VecDeque::new(),
            has_peers: false,
            started: None,
            drain: None,
            broker_state: BrokerState::Disabled,
            peer_metrics: Vec::new(),
            redis: Vec::new(),
            redis_told: Vec::new(),
            route: Route::Jump,
            map_reader: None,
            map_told: false,
            redis_tls: None,
            redis_sessions: std::collections::BTreeMap::new(),
            redis_addrs: std::collections::BTreeMap::new(),
            redis_tls_failures: VecDeque::new(),
            presence_waiters: HashMap::new(),
            next_token: 0,
            latest: None,
            wall: None,
            socket_seed: 0,
            next_socket: 0,
            directory: Directory::default(),
            directory_out: Update::default(),
            pusher_effects: Vec::new(),
            directory_resync: false,
            webhooks_out: VecDeque::new(),
            webhooks,
            held: Vec::new(),
            recent_leaves: HashMap::new(),
            cache: HashMap::new(),
            watchers: HashMap::new(),
            keys: KeySet::default(),
            history: Box::new(HistoryTable::new(0)),
            members: Box::new(PresenceTable::default()),
            epoch_draws: 0,
            history_waiters: HashMap::new(),
            recovering: Vec::new(),
            admin: admin::AdminState::default(),
            tls: None,
            tls_plain: Vec::new(),
            unsealed: Vec::new(),
        };
        // The public keys come later (`with_public_keys`): their files are the shell's to read.
        let secret_only = Config {
            auth: crate::config::AuthConfig { public_keys: Vec::new(), ..hub.config.auth.clone() },
            ..Config::default()
        };
        hub.keys = auth_keys(&secret_only, &[])?;
        hub.socket_seed = hub.seeded(0);
        hub.link_for();
        Ok(hub)
    }

    /// Verifies native tokens with the public keys of `auth.public_keys` too: `pems` holds
    /// each file's text, in the same order (the shell reads them; the core reads no file).
    pub fn with_public_keys(mut self, pems: &[String]) -> Result<Self, ConfigError> {
        self.keys = auth_keys(&self.config, pems)?;
        Ok(self)
    }

    /// Keeps channel history in `store`, which the node's other hubs share (a hub alone
    /// keeps its own).
    pub fn with_history(mut self, store: Box<dyn HistoryStore>) -> Self {
        self.history = store;
        self
    }

    /// Keeps native presence in `store`, which the node's other hubs share (a hub alone keeps
    /// its own); unused with Redis, which holds the cluster's.
    pub fn with_presence(mut self, store: Box<dyn PresenceStore>) -> Self {
        self.members = store;
        self
    }

    /// Names this hub's worker within the node (envelopes carry it to avoid echoes).
    pub fn with_worker(mut self, worker: u32) -> Self {
        self.origin.worker = worker;
        // The link names its hub in Redis (leases, presence): build it for the new origin.
        self.link_for();
        self.socket_seed = self.seeded(self.socket_seed);
        self
    }

    /// A webhook delivery asked for by `Output::Webhook` ended with `outcome`.
    pub fn handle_webhook_done(&mut self, now: Instant, id: u64, outcome: WebhookOutcome) {
        self.touch(now);
        let status = match outcome {
            WebhookOutcome::Status(status) => Some(status),
            WebhookOutcome::Failed => None,
        };
        self.webhook_done(now, id, status);
    }

    /// Mixes `seed` (randomness the shell drew, so that a restarted node does not reuse its
    /// socket ids) into this hub's Pusher socket ids.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.socket_seed = self.seeded(seed);
        self
    }

    /// A socket id seed from `seed`, the node id and the worker: at most 15 digits, so that
    /// pusher-js and the SDKs, which may read socket ids as numbers, keep every digit.
    fn seeded(&self, seed: u64) -> u64 {
        let mut state = seed ^ u64::from(self.origin.worker).rotate_left(32);
        for byte in self.origin.node.bytes() {
            state ^= u64::from(byte);
            crate::redis::splitmix64(&mut state);
        }
        crate::redis::splitmix64(&mut state) % 1_000_000_000_000_000
    }

    /// The wall clock reads `unix_ms` (milliseconds since the Unix epoch) at `now`: the HTTP
    /// API's signatures are checked against it. Call it at start and then every so often (a
    /// shell does it every turn); the hub counts on from `now` in between.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = Some((now, unix_ms));
        if let Some(keys) = &self.tls {
            keys.set_wall_clock(unix_ms);
        }
        if let Some(tls) = &self.redis_tls {
            tls.set_wall_clock(unix_ms);
        }
    }

    /// Trusts the CA of `broker.tls_ca` (its file's text, which the shell reads) for
    /// `rediss://` connections, instead of the bundled roots.
    pub fn with_broker_ca(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        self.redis_tls = Some(crate::redis::RedisTls::new(Some(pem))?);
        Ok(self)
    }

    /// Makes this hub one of `workers` hubs of a node: with more than one, what it publishes
    /// is also queued for the others (`poll_broker`), which the shell must then drain.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.has_peers = workers > 1;
        self
    }

    /// Counts this hub's connections in `admission`, the node-wide counts its other hubs share,
    /// so the limits hold for the whole node (see [`crate::limits::Admission`]).
    pub fn with_admission(mut self, admission: Box<dyn Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// The configuration this hub runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.origin.node
    }

    /// Counters and gauges of this hub alone.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This hub's figures plus the latest ones of the node's other workers.
    pub fn node_metrics(&self) -> Metrics {
        let mut total = self.metrics.clone();
        for other in &self.peer_metrics {
            total.merge(other);
        }
        total
    }

    /// The latest figures of another worker of this node (`worker` as in `with_worker`).
    pub fn handle_peer_metrics(&mut self, worker: u32, metrics: Metrics) {
        let index = worker as usize;
        if index >= self.peer_metrics.len() {
            self.peer_metrics.resize_with(index + 1, Metrics::default);
        }
        if worker != self.origin.worker {
            self.peer_metrics[index] = metrics;
        }
    }

    /// The shell failed to accept a connection (EMFILE and the like).
    pub fn handle_accept_error(&mut self) {
        self.metrics.accept_errors += 1;
    }

    /// A TCP connection from `peer` was accepted; its request head is expected next.
    pub fn handle_accept(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        self.touch(now);
        let handshake = self.admission.begin_handshake(self.handshake_key(peer.ip()), now);
        let conn = Connection {
            peer,
            client: peer.ip(),
            phase: Phase::Handshake,
            handshaking: handshake.is_ok(),
            proxy_pending: self.config.server.proxy_protocol,
            route: 0,
            counted: false,
            kept_alive: false,
            head: Vec::new(),
            decoder: Decoder::default(),
            deflate: None,
            out: OutQueue::default(),
            close_sent: false,
            close_when_flushed: false,
            timers: {
                let mut timers = TimerTable::default();
                timers.set(Timer::Handshake, self.epoch(now), later(now, self.config.server.handshake_timeout));
                timers
            },
            last_active: now,
            messages: TokenBucket::full(f64::from(self.config.rate_limit.burst), now),
            bytes: TokenBucket::full(self.byte_burst(), now),
            strikes: 0,
            subscriptions: Vec::new(),
            wake_at: None,
            pusher: None,
            native: None,
            tls: None,
        };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(conn);
        let id = ConnId { index, generation: slot.generation };
        self.metrics.connections_accepted += 1;
        self.metrics.connections_open += 1;
        match handshake {
            Ok(handshaking) => {
                self.metrics.handshaking += 1;
                self.handshakes.push_back(id);
                if !self.start_tls(id) {
                    self.finish(id);
                    return id;
                }
                if handshaking > self.config.limits.max_handshaking {
                    self.evict_oldest_handshake(id);
                }
                self.rearm(id);
            }
            Err(_) => {
                // Past `max_handshaking_per_ip`: closed at once, before it costs a buffer.
                self.metrics.handshake_refusals += 1;
                self.finish(id);
            }
        }
        id
    }

    /// Bytes read from the connection's socket.
    pub fn handle_bytes(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.touch(now);
        let Some(conn) = self.conn(id) else { return };
        if conn.tls.is_some() {
            self.read_tls(now, id, data);
        } else {
            self.read_plain(now, id, data);
        }
    }

    /// Plaintext from the connection: its request, or its frames.
    fn read_plain(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = self.conn(id) else { return };
        match conn.phase {
            Phase::Handshake => self.read_head(now, id, data),
            Phase::Responding | Phase::Answered => {}
            Phase::Open | Phase::Closing => self.read_frames(now, id, data),
        }
    }

    /// The peer closed its side, or the socket failed: the connection ends now.
    pub fn handle_eof(&mut self, now: Instant, id: ConnId) {
        self.touch(now);
        if let Some(conn) = self.conn(id) {
            if conn.phase == Phase::Open {
                self.metrics.count_close(1006);
            }
            self.finish(id);
        }
    }

    /// A message from another worker or node (borrowed: a shell hands one batch to every
    /// worker).
    pub fn handle_broker(&mut self, now: Instant, envelope: &Envelope) {
        if envelope.origin == self.origin {
            return;
        }
        self.touch(now);
        self.deliver_remote(now, envelope);
    }

    /// Fills `out` with slices of the connection's unsent bytes; returns how many were filled.
    pub fn transmit<'a>(&'a self, id: ConnId, out: &mut [IoSlice<'a>]) -> usize {
        self.conn(id).map_or(0, |conn| conn.out.fill(&self.frames, out))
    }

    /// `n` bytes of what `transmit` offered were written to the socket.
    pub fn handle_written(&mut self, now: Instant, id: ConnId, n: usize) {
        self.touch(now);
        let Some(conn) = live_conn(&mut self.slots, id) else { return };
        let written = conn.out.consume(&mut self.frames, n);
        let close = conn.flushed() && conn.close_when_flushed;
        self.metrics.queued_bytes -= written as u64;
        if close {
            self.finish(id);
        }
    }

    /// True while the connection has unsent bytes.
    pub fn wants_write(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| !c.flushed())
    }

    /// Unsent bytes queued for the connection.
    pub fn queued_bytes(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, Connection::unsent)
    }

    /// When `handle_timeout` must next be called (it may be early; that is harmless).
    fn poll_timeout(&self) -> Option<Instant> {
        let connection = self.timers.peek().map(|Reverse((at, _))| *at);
        let drain = self.drain.as_ref().map(|d| d.next_batch.min(d.deadline));
        let redis = self.redis.iter().filter_map(RedisLink::poll_timeout).min();
        let map = self.map_reader.as_ref().and_then(crate::redis::MapReader::poll_timeout);
        [connection, drain, redis, map, self.webhook_timeout(), self.admin_timeout()].into_iter().flatten().min()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conn_mut(id) else { continue };
            if conn.wake_at != Some(at) {
                // Superseded by an earlier wake-up that already ran.
                continue;
            }
            conn.wake_at = None;
            self.run_timers(now, id);
            self.rearm(id);
        }
        self.run_drain(now);
        if !self.redis.is_empty() {
            if let Some(reader) = &mut self.map_reader {
                reader.handle_timeout(now);
            }
            for link in &mut self.redis {
                link.handle_timeout(now);
            }
            self.pump_redis(now);
        }
        self.run_webhooks(now);
        self.admin_tick(now);
    }

    /// Starts a graceful drain: new upgrades get 503, open connections get close 1001 in
    /// batches of `drain.batch` every `drain.interval`, and whatever remains at `deadline`
    /// is dropped.
    pub fn handle_shutdown(&mut self, now: Instant, deadline: Instant) {
        if self.drain.is_some() {
            return;
        }
        let pending = self.live_ids().collect();
        self.drain = Some(Drain { deadline, next_batch: now, pending });
        self.run_drain(now);
    }

    /// True once `shutdown` was called.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Number of connections held (any phase).
    pub fn connection_count(&self) -> usize {
        self.metrics.connections_open as usize
    }

    /// The lengths of the hub's internal tables.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            slots: self.slots.len(),
            events: self.events.len(),
            broker_commands: self.broker_out.len(),
            timers: self.timers.len(),
            frames: self.frames.live(),
            handshakes: self.handshakes.len(),
            presence_waiters: self.presence_waiters.len(),
            peer_metrics: self.peer_metrics.len(),
            pusher_channels: self.directory.len(),
            webhooks: self.webhooks.pending() + self.held.len(),
        }
    }

    /// Frames held for unsent output (each once, however many queues name it).
    pub fn stored_frames(&self) -> usize {
        self.frames.live()
    }

    /// Publishes JSON `data` on pub/sub `channel`, to local subscribers and through the broker.
    pub fn handle_publish(&mut self, now: Instant, channel: &str, data: &str) -> Result<(), PublishError> {
        if !pubsub::valid_channel(channel, self.config.pubsub.max_channel_bytes) {
            return Err(PublishError::BadChannel);
        }
        if serde_json::from_str::<&RawValue>(data).is_err() {
            return Err(PublishError::BadJson);
        }
        self.touch(now);
        if self.publish_native(now, channel.to_owned(), data.as_bytes()) {
            Ok(())
        } else {
            Err(PublishError::HistoryUnavailable)
        }
    }

    /// Sends `data` to everyone on broadcast route `path`, and through the broker.
    pub fn handle_broadcast(&mut self, now: Instant, path: &str, text: bool, data: &[u8]) -> Result<(), PublishError> {
        match self.config.route(path) {
            Some((_, route)) if route.mode == RouteMode::Broadcast => {}
            _ => return Err(PublishError::NoSuchRoute),
        }
        self.touch(now);
        self.fan_out(now, room_name(path), text, Bytes::copy_from_slice(data));
        Ok(())
    }

    /// The instant timers count from: the first input's (every timer is armed after one).
    fn epoch(&self, now: Instant) -> Instant {
        self.started.unwrap_or(now)
    }

    /// Notes the time of an input; the first one also starts the Redis link's clock.
    fn touch(&mut self, now: Instant) {
        self.redis_told.fill(false);
        self.map_told = false;
        if self.started.is_none() {
            self.started = Some(now);
            for link in &mut self.redis {
                link.start(now);
            }
            if let Some(reader) = &mut self.map_reader {
                reader.start(now);
            }
            if self.pusher_on() {
                // Learn what the other hubs hold (they answer with snapshots).
                self.directory_out.sync = true;
                if let Some(link) = self.link_of(pusher::DIRECTORY) {
                    link.subscribe(now, pusher::DIRECTORY);
                    link.watch(pusher::DIRECTORY);
                }
            }
            self.admin_start(now);
        }
        self.latest = Some(self.latest.map_or(now, |latest| latest.max(now)));
    }

    /// The link to Redis for this hub's origin, when `broker.kind = "redis"`: built with the
    /// hub, so its sockets are asked for by the first `poll_output`, before any input.
    fn link_for(&mut self) {
        self.redis.clear();
        let tls = self.config.broker.kind != BrokerKind::Memory
            && self.config.broker.shard_urls().first().is_some_and(|u| crate::redis::is_tls_url(u));
        // Without broker.tls_ca the bundled roots; `with_broker_ca` replaces them, and a
        // rebuild of the links (`with_worker`) keeps what it set.
        if !tls {
            self.redis_tls = None;
        } else if self.redis_tls.is_none() {
            self.redis_tls = crate::redis::RedisTls::new(None).ok();
        }
        self.route = Route::Jump;
        self.map_reader = None;
        if self.config.broker.kind == BrokerKind::RedisCluster {
            // Until the first slot map, one placeholder holds every channel and member.
            self.redis.push(RedisLink::placeholder(&self.config.broker, self.origin.clone()));
            self.route = Route::Pending;
            let seeds = self.config.broker.shard_urls().into_iter().filter_map(|u| crate::redis::parse_url(u).ok());
            let seeds = seeds.map(|(addr, _)| addr).collect();
            self.map_reader = Some(crate::redis::MapReader::new(seeds, MAP_REFRESH, self.config.broker.backoff.min));
        }
        if self.config.broker.kind == BrokerKind::Redis {
            for url in self.config.broker.shard_urls() {
                match RedisLink::new(&self.config.broker, url, self.origin.clone()) {
                    Ok(link) => self.redis.push(link),
                    // Config validation already checked the URLs; report a broken link, don't panic.
                    Err(_) => {
                        self.redis.clear();
                        self.broker_state = BrokerState::Open;
                        break;
                    }
                }
            }
        }
        self.redis_told = vec![false; 2 * self.redis.len()];
    }

    /// The link of the shard `channel` lives on; `None` without Redis.
    pub(super) fn link_of(&mut self, channel: &str) -> Option<&mut RedisLink> {
        link_in(&mut self.redis, &self.route, channel)
    }

    fn byte_burst(&self) -> f64 {
        let per_second = self.config.rate_limit.bytes_per_second.0 as f64;
        per_second.max(self.config.limits.max_message_bytes.0 as f64)
    }

    fn live_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.conn.as_ref().map(|_| ConnId { index: index as u32, generation: slot.generation })
        })
    }

    /// Starts the closing handshake with `code`; the socket closes when the peer answers,
    /// or after `close_timeout`.
    pub fn handle_close(&mut self, now: Instant, id: ConnId, code: u16, reason: &str) {
        self.touch(now);
        self.close(now, id, code, reason);
    }

    pub(super) fn close(&mut self, now: Instant, id: ConnId, code: u16, reason: &str) {
        let Some(conn) = self.conn(id) else { return };
        if conn.close_sent || conn.phase == Phase::Handshake {
            return;
        }
        self.metrics.count_close(code);
        self.send_close_frame(now, id, frame::encode_close(code, reason));
    }

    fn send_close_frame(&mut self, now: Instant, id: ConnId, frame: Bytes) {
        let close_timeout = self.config.server.close_timeout;
        let epoch = self.epoch(now);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.close_sent = true;
        conn.phase = Phase::Closing;
        conn.timers.stop(Timer::Ping);
        conn.timers.stop(Timer::Pong);
        conn.decoder.set_closing();
        conn.timers.cap(Timer::GiveUp, epoch, later(now, close_timeout));
        // A closing connection hears nothing more: it leaves every channel now.
        for index in (0..conn.subscriptions.len()).rev() {
            self.unsubscribe_at(id, index);
        }
        self.pusher_release(id);
        self.enqueue(id, frame);
        self.rearm(id);
    }

    /// Sends an HTTP response and closes once it is written.
    fn respond_http(&mut self, id: ConnId, response: &HttpResponse) {
        self.end_handshake(id);
        let give_up = self.latest.map(|now| (self.epoch(now), later(now, self.config.server.close_timeout)));
        let Some(conn) = self.conn_mut(id) else { return };
        conn.phase = Phase::Answered;
        conn.timers.stop(Timer::Handshake);
        // A client that never reads its answer is let go.
        if let Some((epoch, at)) = give_up {
            conn.timers.cap(Timer::GiveUp, epoch, at);
        }
        conn.head = Vec::new();
        conn.close_when_flushed = true;
        if response.status >= 400 {
            self.metrics.count_rejection(response.status);
        }
        self.enqueue(id, response.to_bytes());
        self.close_notify(id);
        // Nothing could be queued (a TLS client still in its handshake): nothing to wait for.
        if self.conn(id).is_some_and(Connection::flushed) {
            self.finish(id);
        }
    }

    /// Queues a data frame meant for this connection alone (an echo, a pub/sub reply) under
    /// the same bound as fan-out: a client that sends without reading must not grow its queue
    /// without limit. Returns false when the frame was dropped or the connection closed.
    fn enqueue_bounded(&mut self, id: ConnId, bytes: Bytes) -> bool {
        let limit = self.config.limits.send_queue_bytes.as_usize();
        let Some(conn) = self.conn(id) else { return false };
        if conn.would_overflow(bytes.len(), limit) {
            match slow_consumer_policy(&self.config, conn.route) {
                SlowConsumerPolicy::Drop => self.metrics.messages_dropped += 1,
                SlowConsumerPolicy::Close => {
                    self.metrics.slow_consumer_closes += 1;
                    // Every input sets `latest` before it can queue anything.
                    if let Some(now) = self.latest {
                        self.close(now, id, 1008, "slow consumer");
                    }
                }
            }
            return false;
        }
        self.enqueue(id, bytes);
        true
    }

    fn enqueue(&mut self, id: ConnId, bytes: Bytes) {
        self.enqueue_sealed(id, bytes, true);
    }

    /// Queues `bytes` for the connection, sealed first on TLS when `seal` says so.
    fn enqueue_sealed(&mut self, id: ConnId, bytes: Bytes, seal: bool) {
        let Some(conn) = live_conn(&mut self.slots, id) else { return };
        let was_idle = conn.flushed();
        let frame = self.frames.insert(bytes);
        let queued = if seal {
            tls::push_frame(conn, id, &mut self.frames, frame, &mut self.unsealed)
        } else {
            conn.out.push(&mut self.frames, frame);
            Some(self.frames.get(frame).len())
        };
        self.frames.forget_unread(frame);
        let Some(len) = queued else { return };
        self.metrics.bytes_out += len as u64;
        self.metrics.queued_bytes += len as u64;
        if was_idle {
            self.events.push_back(Event::Transmit(id));
        }
    }

    /// Forgets the connection (every index, counter and timer) and tells the shell to close
    /// its socket. Timer heap entries go stale and are skipped when they surface.
    fn finish(&mut self, id: ConnId) {
        self.end_handshake(id);
        let Some(conn) = self.conn_mut(id) else { return };
        let subscriptions = conn.subscriptions.len();
        for index in (0..subscriptions).rev() {
            self.unsubscribe_at(id, index);
        }
        self.pusher_release(id);
        let Some(slot) = self.slots.get_mut(id.index as usize) else { return };
        let Some(mut conn) = slot.conn.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.metrics.connections_open -= 1;
        let pending = conn.tls.as_ref().map_or(0, |tls| tls.pending.len());
        self.metrics.queued_bytes -= (conn.out.clear(&mut self.frames) + pending) as u64;
        if let Some(pusher) = conn.pusher.as_ref().filter(|p| p.counted) {
            self.admission.close_app(pusher.app);
            if let Some(count) = self.metrics.connections_by_route.get_mut(pusher::GAUGE) {
                *count -= 1;
            }
        }
        if conn.counted {
            self.admission.close(proxy::client_key(conn.client, self.config.limits.ipv6_prefix));
            if let Some(route) = self.config.route.get(conn.route)
                && let Some(count) = self.metrics.connections_by_route.get_mut(&route.path)
            {
                *count -= 1;
            }
        }
        self.events.push_back(Event::Close(id));
    }

    fn conn(&self, id: ConnId) -> Option<&Connection> {
        live(&self.slots, id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        live_conn(&mut self.slots, id)
    }
}

/// The slow-consumer policy of the route at index `route` (its override, else the global one).
fn slow_consumer_policy(config: &Config, route: usize) -> SlowConsumerPolicy {
    config.route.get(route).map_or(config.limits.slow_consumer, |r| config.slow_consumer_for(r))
}

/// The link of the shard `channel` lives on, among `links` (a field borrow, so the hub's
/// other fields stay usable beside it).
fn link_in<'a>(links: &'a mut [RedisLink], route: &Route, channel: &str) -> Option<&'a mut RedisLink> {
    let shard = route.shard(channel, links.len());
    links.get_mut(shard)
}

/// How often a cluster hub reads the slot map while nothing seems wrong (a lost master or a
/// `MOVED` makes it read at once).
const MAP_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Which link a channel goes to.
#[derive(Debug)]
pub(super) enum Route {
    /// Independent instances (`broker.urls`): a jump consistent hash of the name.
    Jump,
    /// A Redis Cluster whose slot map is not known yet: the placeholder link, 0.
    Pending,
    /// A Redis Cluster: the link of each hash slot's master.
    Slots(Box<[u8]>),
}

impl Route {
    /// The index of the link `channel` goes to, among `links`.
    pub(super) fn shard(&self, channel: &str, links: usize) -> usize {
        match self {
            Self::Jump => crate::redis::shard_of(channel, links),
            Self::Pending => 0,
            Self::Slots(table) => {
                table.get(usize::from(crate::redis::channel_slot(channel))).map_or(0, |&i| usize::from(i))
            }
        }
    }
}

/// Checks `broker.tls_ca`'s text (`--check-config`): the error says why it is no CA list.
pub fn check_broker_ca(pem: &[u8]) -> Result<(), ConfigError> {
    crate::redis::RedisTls::new(Some(pem)).map(drop)
}

/// Checks the keys `config.auth` names, with `pems` the text of its `public_keys` files in
/// order (`--check-config`); the error names the entry that is not a usable key.
pub fn check_public_keys(config: &Config, pems: &[String]) -> Result<(), ConfigError> {
    auth_keys(config, pems).map(drop)
}

/// The verification keys of `config.auth`, with `pems` the text of its `public_keys` files
/// in order; an unreadable key is an error naming its entry.
fn auth_keys(config: &Config, pems: &[String]) -> Result<KeySet, ConfigError> {
    let error = |key: String, message: String| ConfigError { key, line: 0, column: 0, message };
    if pems.len() != config.auth.public_keys.len() {
        let message = format!("{} PEM texts given for {} files", pems.len(), config.auth.public_keys.len());
        return Err(error("auth.public_keys".to_owned(), message));
    }
    for (i, pem) in pems.iter().enumerate() {
        KeySet::new("", &[pem]).map_err(|e| error(format!("auth.public_keys[{i}]"), e.to_string()))?;
    }
    let texts: Vec<&str> = pems.iter().map(String::as_str).collect();
    KeySet::new(&config.auth.hmac_secret, &texts).map_err(|e| error("auth.public_keys".to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-connection memory is a product promise (≤ 1 KiB with its indexes, see core_scale);
    /// this catches a field that quietly makes every connection bigger.
    #[test]
    fn a_connection_stays_small() {
        assert!(size_of::<Slot>() <= 448, "Slot grew to {} bytes", size_of::<Slot>());
        assert!(size_of::<Event>() <= 16, "Event grew to {} bytes", size_of::<Event>());
        assert!(size_of::<TimerTable>() <= 32, "TimerTable grew to {} bytes", size_of::<TimerTable>());
    }
}
