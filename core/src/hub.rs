//! The `Hub`: every connection of one worker, and the rules that decide what happens to them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::api::{self, BrokerState, NodeInfo};
use crate::broker::{BrokerCommand, Envelope, Origin};
use crate::channel::{ChannelId, Channels};
use crate::config::{Config, RateLimitAction, RouteMode, SlowConsumerPolicy};
use crate::deflate::{self, DeflateParams, Deflater, Inflater};
use crate::frame::{self, Decoded, Decoder, Limits};
use crate::handshake::{self, HeadError, HttpResponse, RequestHead};
use crate::limits::{IpTable, TokenBucket};
use crate::metrics::Metrics;
use crate::pubsub::{self, ClientOp, ErrorCode, OpError, RequestId};
use crate::queue::OutQueue;

/// How often the per-IP table forgets addresses that went quiet.
const IP_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

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

/// Something the shell must act on, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// The connection has bytes to send: call `transmit` when the socket is writable.
    Transmit(ConnId),
    /// Close the socket. The hub has already forgotten the connection.
    Close(ConnId),
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP request head (and body, for the API).
    Handshake,
    /// WebSocket frames flow both ways.
    Open,
    /// A close frame was sent or received, or an HTTP response is the last thing to send.
    Closing,
}

/// A channel the connection is subscribed to.
#[derive(Debug)]
struct Subscription {
    channel: ChannelId,
    /// Position in the channel's subscriber list.
    position: u32,
    /// What presence shows for this member (raw JSON given at subscribe).
    info: Option<Box<str>>,
}

/// One connection: its protocol state and its outbound queue of shared frames.
#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    phase: Phase,
    route: usize,
    /// Counted in the per-IP and per-route gauges (an upgraded connection).
    counted: bool,
    /// Request bytes until the head (and body) is complete; unallocated afterwards.
    head: Vec<u8>,
    decoder: Decoder,
    deflate: Option<DeflateParams>,
    out: OutQueue,
    close_sent: bool,
    /// Close the socket as soon as the queue is flushed.
    close_when_flushed: bool,
    /// Handshake deadline, then the deadline for the peer's close reply.
    deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_due: Option<Instant>,
    /// Last data message (or app-level ping) from the client, for the idle timeout.
    last_active: Instant,
    messages: TokenBucket,
    bytes: TokenBucket,
    strikes: u32,
    subscriptions: Vec<Subscription>,
    /// The wake-up currently in the timer heap for this connection.
    wake_at: Option<Instant>,
}

impl Connection {
    fn next_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let idle = (self.phase == Phase::Open && !idle_timeout.is_zero()).then(|| self.last_active + idle_timeout);
        [self.deadline, self.next_ping, self.pong_due, idle].into_iter().flatten().min()
    }
}

/// A slab slot: the generation tells a live id from a stale one.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    conn: Option<Connection>,
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
    /// One compressor per window size, shared by every connection: contexts are never kept.
    deflaters: [Option<Deflater>; 8],
    decoded: Vec<Decoded>,
    metrics: Metrics,
    channels: Channels,
    ips: IpTable,
    started: Option<Instant>,
    sweep_at: Option<Instant>,
    drain: Option<Drain>,
    broker_state: BrokerState,
    /// Other workers' latest figures, so any worker can report the whole node.
    peer_metrics: Vec<Metrics>,
}

impl Hub {
    /// A hub serving `config`; `node_id` names this node in broker envelopes.
    pub fn new(config: Config, node_id: impl Into<String>) -> Self {
        Self {
            config,
            origin: Origin { node: node_id.into(), worker: 0 },
            slots: Vec::new(),
            free: Vec::new(),
            events: VecDeque::new(),
            broker_out: VecDeque::new(),
            timers: BinaryHeap::new(),
            deflaters: Default::default(),
            decoded: Vec::new(),
            metrics: Metrics::default(),
            channels: Channels::default(),
            ips: IpTable::default(),
            started: None,
            sweep_at: None,
            drain: None,
            broker_state: BrokerState::Disabled,
            peer_metrics: Vec::new(),
        }
    }

    /// Names this hub's worker within the node (envelopes carry it to avoid echoes).
    pub fn with_worker(mut self, worker: u32) -> Self {
        self.origin.worker = worker;
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
        let conn = Connection {
            peer,
            phase: Phase::Handshake,
            route: 0,
            counted: false,
            head: Vec::new(),
            decoder: Decoder::default(),
            deflate: None,
            out: OutQueue::default(),
            close_sent: false,
            close_when_flushed: false,
            deadline: Some(now + self.config.server.handshake_timeout),
            next_ping: None,
            pong_due: None,
            last_active: now,
            messages: TokenBucket::full(f64::from(self.config.rate_limit.burst), now),
            bytes: TokenBucket::full(self.byte_burst(), now),
            strikes: 0,
            subscriptions: Vec::new(),
            wake_at: None,
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
        self.rearm(id);
        id
    }

    /// Bytes read from the connection's socket.
    pub fn handle_bytes(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = self.conn_mut(id) else { return };
        match conn.phase {
            Phase::Handshake => self.read_head(now, id, data),
            Phase::Open | Phase::Closing => self.read_frames(now, id, data),
        }
    }

    /// The peer closed its side, or the socket failed: the connection ends now.
    pub fn handle_eof(&mut self, _now: Instant, id: ConnId) {
        if let Some(conn) = self.conn(id) {
            if conn.phase == Phase::Open {
                self.metrics.count_close(1006);
            }
            self.finish(id);
        }
    }

    /// A message from another worker or node.
    pub fn handle_broker(&mut self, now: Instant, envelope: Envelope) {
        if envelope.origin == self.origin {
            return;
        }
        self.touch(now);
        if let Some(channel) = self.channels.find(&envelope.channel) {
            self.deliver(now, channel, envelope.text, &envelope.payload);
        }
    }

    /// The state of the link to other nodes, for `/healthz` and `/metrics`.
    pub fn set_broker_state(&mut self, state: BrokerState) {
        self.broker_state = state;
    }

    /// Fills `out` with slices of the connection's unsent bytes; returns how many were filled.
    pub fn transmit<'a>(&'a self, id: ConnId, out: &mut [IoSlice<'a>]) -> usize {
        self.conn(id).map_or(0, |conn| conn.out.fill(out))
    }

    /// `n` bytes of what `transmit` offered were written to the socket.
    pub fn consume(&mut self, id: ConnId, n: usize) {
        let Some(conn) = self.conn_mut(id) else { return };
        let written = conn.out.consume(n);
        let close = conn.out.is_empty() && conn.close_when_flushed;
        self.metrics.queued_bytes -= written as u64;
        if close {
            self.finish(id);
        }
    }

    /// True while the connection has unsent bytes.
    pub fn wants_write(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| !c.out.is_empty())
    }

    /// Unsent bytes queued for the connection.
    pub fn queued_bytes(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.out.unsent())
    }

    /// The next thing the shell must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next command for the broker (the node's other workers, or Redis), if any.
    pub fn poll_broker(&mut self) -> Option<BrokerCommand> {
        self.broker_out.pop_front()
    }

    /// When `handle_timeout` must next be called (it may be early; that is harmless).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connection = self.timers.peek().map(|Reverse((at, _))| *at);
        let drain = self.drain.as_ref().map(|d| d.next_batch.min(d.deadline));
        [connection, drain, self.sweep_at].into_iter().flatten().min()
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
        if self.sweep_at.is_some_and(|at| at <= now) {
            let limits = &self.config.limits;
            self.ips.sweep(now, limits.connect_rate_per_ip, f64::from(limits.connect_burst_per_ip));
            self.sweep_at = (!self.ips.is_empty()).then_some(now + IP_SWEEP_INTERVAL);
        }
        self.run_drain(now);
    }

    /// Starts a graceful drain: new upgrades get 503, open connections get close 1001 in
    /// batches of `drain.batch` every `drain.interval`, and whatever remains at `deadline`
    /// is dropped.
    pub fn shutdown(&mut self, now: Instant, deadline: Instant) {
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

    /// Publishes JSON `data` on pub/sub `channel`, to local subscribers and through the broker.
    pub fn publish(&mut self, now: Instant, channel: &str, data: &str) -> Result<(), PublishError> {
        if !pubsub::valid_channel(channel, self.config.pubsub.max_channel_bytes) {
            return Err(PublishError::BadChannel);
        }
        if serde_json::from_str::<&serde_json::value::RawValue>(data).is_err() {
            return Err(PublishError::BadJson);
        }
        self.touch(now);
        self.fan_out(now, channel.to_owned(), true, Bytes::copy_from_slice(data.as_bytes()));
        Ok(())
    }

    /// Sends `data` to everyone on broadcast route `path`, and through the broker.
    pub fn broadcast(&mut self, now: Instant, path: &str, text: bool, data: &[u8]) -> Result<(), PublishError> {
        match self.config.route(path) {
            Some((_, route)) if route.mode == RouteMode::Broadcast => {}
            _ => return Err(PublishError::NoSuchRoute),
        }
        self.touch(now);
        self.fan_out(now, room_name(path), text, Bytes::copy_from_slice(data));
        Ok(())
    }

    /// Delivers locally and hands the message to the broker for every other hub.
    fn fan_out(&mut self, now: Instant, channel: String, text: bool, payload: Bytes) {
        self.metrics.publishes += 1;
        if let Some(id) = self.channels.find(&channel) {
            self.deliver(now, id, text, &payload);
        }
        let envelope = Envelope { origin: self.origin.clone(), channel, text, payload };
        self.broker_out.push_back(BrokerCommand::Publish(envelope));
    }

    /// Frames a message once (and compresses it once per window size) and queues the same
    /// bytes to every subscriber of `channel`.
    fn deliver(&mut self, now: Instant, channel: ChannelId, text: bool, payload: &[u8]) {
        let Some(chan) = self.channels.get_mut(channel) else { return };
        let pubsub = !is_room(&chan.name);
        chan.seq += 1;
        let seq = chan.seq;
        let wire: Vec<u8>;
        let (text, body) = if pubsub {
            let raw = std::str::from_utf8(payload).unwrap_or("null");
            wire = pubsub::message_from_raw(&chan.name, seq, raw).into_bytes();
            (true, wire.as_slice())
        } else {
            (text, payload)
        };
        let plain = frame::encode(frame::data_opcode(text), false, body);
        let mut compressed: [Option<Bytes>; 8] = Default::default();
        let compressible = body.len() as u64 >= self.config.compression.min_bytes.0;
        let limit = self.config.limits.send_queue_bytes.as_usize();
        let mut slow = Vec::new();
        let Self { channels, slots, metrics, events, deflaters, config, .. } = self;
        let Some(chan) = channels.get(channel) else { return };
        for &id in &chan.subscribers {
            let Some(conn) = slots.get_mut(id.index as usize).and_then(|s| s.conn.as_mut()) else { continue };
            if conn.phase != Phase::Open {
                continue;
            }
            let bytes = match conn.deflate {
                Some(params) if compressible => {
                    let bits = params.server_max_window_bits.clamp(8, 15);
                    let slot = usize::from(bits - 8);
                    compressed[slot]
                        .get_or_insert_with(|| {
                            let level = config.compression.level;
                            let deflater = deflaters[slot].get_or_insert_with(|| Deflater::new(bits, level));
                            let mut out = Vec::with_capacity(body.len() / 2 + 16);
                            deflater.compress_message(body, &mut out);
                            frame::encode(frame::data_opcode(text), true, &out)
                        })
                        .clone()
                }
                _ => plain.clone(),
            };
            let queued = conn.out.unsent();
            if queued > 0 && queued + bytes.len() > limit {
                let policy =
                    config.route.get(conn.route).map_or(config.limits.slow_consumer, |r| config.slow_consumer_for(r));
                match policy {
                    SlowConsumerPolicy::Drop => metrics.messages_dropped += 1,
                    SlowConsumerPolicy::Close => slow.push(id),
                }
                continue;
            }
            if queued == 0 {
                events.push_back(Event::Transmit(id));
            }
            metrics.bytes_out += bytes.len() as u64;
            metrics.queued_bytes += bytes.len() as u64;
            metrics.messages_out += 1;
            conn.out.push(bytes);
        }
        for id in slow {
            self.metrics.slow_consumer_closes += 1;
            self.close(now, id, 1008, "slow consumer");
        }
    }

    fn touch(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    /// Per-IP state is kept only when a per-IP rule needs it.
    fn tracks_ips(&self) -> bool {
        let limits = &self.config.limits;
        limits.max_connections_per_ip > 0 || limits.connect_rate_per_ip > 0.0
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

    fn run_drain(&mut self, now: Instant) {
        let Some(drain) = &mut self.drain else { return };
        if now >= drain.deadline {
            let ids: Vec<ConnId> = self.live_ids().collect();
            for id in ids {
                self.finish(id);
            }
            if let Some(drain) = &mut self.drain {
                drain.pending.clear();
                drain.next_batch = drain.deadline + Duration::from_secs(3600);
                drain.deadline = drain.next_batch;
            }
            return;
        }
        if now < drain.next_batch {
            return;
        }
        let batch = self.config.drain.batch.max(1);
        let take = batch.min(drain.pending.len());
        let ids: Vec<ConnId> = drain.pending.drain(..take).collect();
        let deadline = drain.deadline;
        drain.next_batch = if drain.pending.is_empty() { deadline } else { now + self.config.drain.interval };
        for id in ids {
            match self.conn(id).map(|c| c.phase) {
                Some(Phase::Open) => self.close(now, id, 1001, "server shutting down"),
                Some(Phase::Handshake) => self
                    .respond_http(id, &HttpResponse::error(503, "server is draining").with_header("Retry-After", "5")),
                _ => {}
            }
            if let Some(conn) = self.conn_mut(id) {
                conn.deadline = Some(conn.deadline.map_or(deadline, |d| d.min(deadline)));
            }
            self.rearm(id);
        }
    }

    fn run_timers(&mut self, now: Instant, id: ConnId) {
        let heartbeat = self.config.heartbeat.clone();
        let idle_timeout = heartbeat.idle_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.deadline.is_some_and(|d| d <= now) {
            conn.deadline = None;
            match conn.phase {
                Phase::Handshake => {
                    self.metrics.handshake_timeouts += 1;
                    self.respond_http(id, &HttpResponse::error(408, "handshake not completed in time"));
                }
                // The peer never answered our close (or never read it): give up on it.
                Phase::Open | Phase::Closing => self.finish(id),
            }
            return;
        }
        if conn.phase != Phase::Open {
            return;
        }
        if conn.pong_due.is_some_and(|d| d <= now) {
            conn.pong_due = None;
            conn.next_ping = None;
            self.metrics.pong_timeouts += 1;
            return self.close(now, id, 1008, "pong timeout");
        }
        if !idle_timeout.is_zero() && conn.last_active + idle_timeout <= now {
            self.metrics.idle_timeouts += 1;
            return self.close(now, id, 1008, "idle timeout");
        }
        if conn.next_ping.is_some_and(|p| p <= now) {
            conn.next_ping = Some(now + heartbeat.ping_interval);
            if conn.pong_due.is_none() {
                conn.pong_due = Some(now + heartbeat.pong_timeout);
            }
            self.enqueue(id, frame::encode(OpCode::Control(Control::Ping), false, &[]));
        }
    }

    /// Makes sure the heap holds a wake-up no later than the connection's next deadline.
    fn rearm(&mut self, id: ConnId) {
        let idle_timeout = self.config.heartbeat.idle_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        let Some(next) = conn.next_deadline(idle_timeout) else { return };
        if conn.wake_at.is_none_or(|w| next < w) {
            conn.wake_at = Some(next);
            self.timers.push(Reverse((next, id)));
        }
    }

    fn read_head(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let max = self.config.server.max_header_bytes;
        let max_body = self.config.http.max_body_bytes.as_usize();
        let Some(conn) = self.conn_mut(id) else { return };
        conn.head.extend_from_slice(data);
        let head = match handshake::parse_head(&conn.head) {
            Ok(None) if conn.head.len() > max => {
                return self.respond_http(id, &HttpResponse::error(431, "request head too large"));
            }
            Ok(None) => return,
            Ok(Some(head)) if head.head_len > max => {
                return self.respond_http(id, &HttpResponse::error(431, "request head too large"));
            }
            Ok(Some(head)) => head,
            Err(HeadError::TooManyHeaders) => {
                return self.respond_http(id, &HttpResponse::error(431, "too many header fields"));
            }
            Err(HeadError::Malformed(reason)) => return self.respond_http(id, &HttpResponse::error(400, reason)),
        };
        if head.is_upgrade() {
            let rest = conn.head.split_off(head.head_len);
            conn.head = Vec::new();
            return self.upgrade(now, id, &head, &rest);
        }
        if head.header("transfer-encoding").is_some() {
            return self.respond_http(id, &HttpResponse::error(411, "send the body with Content-Length"));
        }
        let body_len = match head.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(len)) => len,
            Some(Err(_)) => return self.respond_http(id, &HttpResponse::error(400, "malformed Content-Length")),
        };
        if body_len > max_body {
            return self.respond_http(id, &HttpResponse::error(413, "request body too large"));
        }
        if conn.head.len() < head.head_len + body_len {
            return;
        }
        let body = conn.head[head.head_len..head.head_len + body_len].to_vec();
        let response = self.http_request(now, &head, &body);
        self.respond_http(id, &response);
    }

    fn node_info(&self, now: Instant) -> NodeInfo {
        NodeInfo {
            node_id: self.origin.node.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.map_or(0, |s| now.saturating_duration_since(s).as_secs()),
            draining: self.drain.is_some(),
            broker: self.broker_state,
            cluster_connections: None,
        }
    }

    /// Plain HTTP on the WebSocket port.
    fn http_request(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> HttpResponse {
        let get_only =
            |allowed: &'static str| HttpResponse::error(405, "method not allowed").with_header("Allow", allowed);
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/healthz") => {
                let (status, body) = api::healthz_json(&self.node_info(now));
                HttpResponse::json(status, body)
            }
            ("GET", "/metrics") if self.config.http.metrics => HttpResponse {
                status: 200,
                headers: Vec::new(),
                content_type: api::PROMETHEUS_CONTENT_TYPE,
                body: api::prometheus_text(&self.node_metrics(), &self.node_info(now)).into_bytes(),
            },
            ("GET", "/api/stats") => {
                HttpResponse::json(200, api::stats_json(&self.node_metrics(), &self.node_info(now)))
            }
            ("POST", "/api/publish") => self.api_publish(now, head, body),
            (_, "/healthz" | "/api/stats") => get_only("GET"),
            (_, "/metrics") if self.config.http.metrics => get_only("GET"),
            (_, "/api/publish") => get_only("POST"),
            _ if self.config.route(&head.path).is_some() => {
                HttpResponse::error(426, "this path serves WebSocket: send an upgrade request")
                    .with_header("Sec-WebSocket-Version", "13")
            }
            _ => HttpResponse::error(404, "no such path"),
        }
    }

    fn api_publish(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> HttpResponse {
        if let Err((status, reason)) = api::check_auth(&self.config.http.api_key, head.header("authorization")) {
            let response = HttpResponse::error(status, reason);
            return if status == 401 { response.with_header("WWW-Authenticate", "Bearer") } else { response };
        }
        let request = match api::parse_publish(body, self.config.pubsub.max_channel_bytes) {
            Ok(request) => request,
            Err(reason) => return HttpResponse::error(400, &reason),
        };
        self.metrics.api_publishes += 1;
        let result = match &request.target {
            api::PublishTarget::Channel(channel) => self.publish(now, channel, request.data.get()),
            api::PublishTarget::Route(path) => self.broadcast(now, path, true, request.data.get().as_bytes()),
        };
        match result {
            Ok(()) => HttpResponse::json(202, r#"{"status":"accepted"}"#.to_owned()),
            Err(PublishError::NoSuchRoute) => HttpResponse::error(404, "no broadcast route at that path"),
            Err(PublishError::BadChannel) => HttpResponse::error(400, "bad channel name"),
            Err(PublishError::BadJson) => HttpResponse::error(400, "data is not valid JSON"),
        }
    }

    /// Decides admission for an upgrade from `ip`; an error is the response to send.
    fn admit(&mut self, now: Instant, ip: IpAddr) -> Result<(), HttpResponse> {
        let limits = &self.config.limits;
        if self.drain.is_some() {
            return Err(HttpResponse::error(503, "server is draining").with_header("Retry-After", "5"));
        }
        let open: u64 = self.metrics.connections_by_route.values().sum();
        if open >= limits.max_connections as u64 {
            return Err(HttpResponse::error(503, "server at capacity").with_header("Retry-After", "5"));
        }
        let per_ip = limits.max_connections_per_ip;
        let rate = limits.connect_rate_per_ip;
        let burst = f64::from(limits.connect_burst_per_ip);
        if per_ip > 0 && self.ips.open(ip) as usize >= per_ip {
            return Err(
                HttpResponse::error(429, "too many connections from this address").with_header("Retry-After", "5")
            );
        }
        if rate > 0.0 {
            let state = self.ips.entry(ip, now, burst);
            if !state.connects.try_take(now, rate, burst, 1.0) {
                let wait = state.connects.wait_for(rate, 1.0).as_secs_f64().ceil().max(1.0);
                return Err(HttpResponse::error(429, "connecting too fast from this address")
                    .with_header("Retry-After", format!("{wait}")));
            }
            self.sweep_at.get_or_insert(now + IP_SWEEP_INTERVAL);
        }
        Ok(())
    }

    fn upgrade(&mut self, now: Instant, id: ConnId, head: &RequestHead, rest: &[u8]) {
        let request = match handshake::validate_upgrade(head) {
            Ok(request) => request,
            Err(response) => return self.respond_http(id, &response),
        };
        let Some((route_index, route)) = self.config.route(&head.path) else {
            return self.respond_http(id, &HttpResponse::error(404, "no WebSocket route at this path"));
        };
        if !route.allowed_origins.is_empty()
            && let Some(origin) = &request.origin
            && !route.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            return self.respond_http(id, &HttpResponse::error(403, "origin not allowed"));
        }
        let protocol = handshake::select_protocol(&route.subprotocols, &request.protocols).map(str::to_owned);
        let mode = route.mode;
        let path = route.path.clone();
        let Some(ip) = self.conn(id).map(|c| c.peer.ip()) else { return };
        if let Err(response) = self.admit(now, ip) {
            return self.respond_http(id, &response);
        }
        let negotiated = if self.config.compression.enabled {
            deflate::negotiate(
                head.header_values("sec-websocket-extensions"),
                self.config.compression.server_no_context_takeover,
            )
        } else {
            None
        };
        let response = handshake::accept_response(
            &request.key,
            protocol.as_deref(),
            negotiated.as_ref().map(|(_, header)| header.as_str()),
        );
        let heartbeat = self.config.heartbeat.clone();
        let burst = f64::from(self.config.limits.connect_burst_per_ip);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.phase = Phase::Open;
        conn.route = route_index;
        conn.counted = true;
        conn.deadline = None;
        conn.last_active = now;
        conn.next_ping = Some(now + heartbeat.ping_interval);
        conn.deflate = negotiated.as_ref().map(|(params, _)| *params);
        conn.decoder = Decoder::new(conn.deflate.as_ref().map(Inflater::new));
        if self.tracks_ips() {
            self.ips.entry(ip, now, burst).open += 1;
        }
        *self.metrics.connections_by_route.entry(path.clone()).or_default() += 1;
        self.metrics.upgrades += 1;
        self.enqueue(id, response);
        match mode {
            RouteMode::Broadcast => self.subscribe(id, &room_name(&path), None),
            RouteMode::Pubsub => {
                let welcome = pubsub::welcome(
                    &self.conn_name(id),
                    heartbeat.ping_interval.as_millis() as u64,
                    heartbeat.pong_timeout.as_millis() as u64,
                    heartbeat.idle_timeout.as_millis() as u64,
                    self.config.limits.max_message_bytes.0,
                );
                self.enqueue(id, frame::encode(frame::data_opcode(true), false, welcome.as_bytes()));
            }
            RouteMode::Echo => {}
        }
        self.rearm(id);
        if !rest.is_empty() {
            self.read_frames(now, id, rest);
        }
    }

    /// The public name of a connection: node, worker and slot.
    fn conn_name(&self, id: ConnId) -> String {
        format!("{}-{}-{}.{}", self.origin.node, self.origin.worker, id.index, id.generation)
    }

    fn read_frames(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let limits = Limits {
            max_frame: self.config.limits.max_frame_bytes.0,
            max_message: self.config.limits.max_message_bytes.as_usize(),
        };
        let mut decoded = std::mem::take(&mut self.decoded);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.decoder.feed(data, limits, &mut decoded);
        self.metrics.bytes_in += data.len() as u64;
        for unit in decoded.drain(..) {
            self.on_unit(now, id, unit);
        }
        self.decoded = decoded;
        self.rearm(id);
    }

    fn on_unit(&mut self, now: Instant, id: ConnId, unit: Decoded) {
        let Some(conn) = self.conn_mut(id) else { return };
        let open = conn.phase == Phase::Open;
        match unit {
            Decoded::Message { text, data } => {
                if open {
                    self.metrics.messages_in += 1;
                    self.on_message(now, id, text, data);
                }
            }
            Decoded::Ping(payload) => {
                if open {
                    self.enqueue(id, frame::encode(OpCode::Control(Control::Pong), false, &payload));
                }
            }
            Decoded::Pong(_) => conn.pong_due = None,
            Decoded::Close(close) => {
                conn.close_when_flushed = true;
                if conn.close_sent {
                    if conn.out.is_empty() {
                        self.finish(id);
                    }
                } else {
                    // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty reply.
                    let reply = match &close {
                        Some((code, _)) => frame::encode_close(*code, ""),
                        None => frame::encode(OpCode::Control(Control::Close), false, &[]),
                    };
                    self.metrics.count_close(close.as_ref().map_or(1005, |(code, _)| *code));
                    self.send_close_frame(now, id, reply);
                }
            }
            Decoded::Fail(violation) => self.close(now, id, violation.code, violation.reason),
        }
    }

    fn on_message(&mut self, now: Instant, id: ConnId, text: bool, data: Vec<u8>) {
        let Some(conn) = self.conn_mut(id) else { return };
        conn.last_active = now;
        let route = conn.route;
        let Some(route) = self.config.route.get(route) else { return };
        let mode = route.mode;
        let path = route.path.clone();
        if !self.within_rate(now, id, data.len()) {
            self.metrics.rate_limited += 1;
            match self.config.rate_limit.on_exceed {
                RateLimitAction::Close => return self.close(now, id, 1008, "rate limit exceeded"),
                RateLimitAction::Error if mode == RouteMode::Pubsub => {
                    let id_field = serde_json::from_slice::<IdOnly>(&data).ok().and_then(|o| o.id);
                    return self
                        .reply(id, pubsub::error(id_field.as_ref(), ErrorCode::RateLimited, "rate limit exceeded"));
                }
                RateLimitAction::Error => return,
            }
        }
        match mode {
            RouteMode::Echo => {
                let Some(conn) = self.conn(id) else { return };
                let frame = self.encode_message(conn.deflate, text, &data);
                self.metrics.messages_out += 1;
                self.enqueue(id, frame);
            }
            RouteMode::Broadcast => self.fan_out(now, room_name(&path), text, Bytes::from(data)),
            RouteMode::Pubsub => self.on_pubsub(now, id, text, &data),
        }
    }

    fn within_rate(&mut self, now: Instant, id: ConnId, len: usize) -> bool {
        let limits = self.config.rate_limit.clone();
        let byte_burst = self.byte_burst();
        let Some(conn) = self.conn_mut(id) else { return false };
        let messages_ok = limits.messages_per_second <= 0.0
            || conn.messages.try_take(now, limits.messages_per_second, f64::from(limits.burst), 1.0);
        let per_second = limits.bytes_per_second.0 as f64;
        let bytes_ok = per_second <= 0.0 || conn.bytes.try_take(now, per_second, byte_burst, len as f64);
        messages_ok && bytes_ok
    }

    fn on_pubsub(&mut self, now: Instant, id: ConnId, text: bool, data: &[u8]) {
        let parsed = match std::str::from_utf8(data) {
            Ok(json) if text => pubsub::parse_op(json, self.config.pubsub.max_channel_bytes),
            _ => Err(OpError {
                id: None,
                code: ErrorCode::BadJson,
                message: "pub/sub messages are JSON text".to_owned(),
            }),
        };
        let op = match parsed {
            Ok(op) => op,
            Err(error) => return self.op_error(now, id, error),
        };
        let (request, result) = match op {
            ClientOp::Ping { id: request } => return self.reply(id, pubsub::pong(request.as_ref())),
            ClientOp::Presence { id: request, channel } => {
                let members = self.presence(&channel);
                let listed: Vec<(String, Option<&serde_json::value::RawValue>)> = members
                    .iter()
                    .map(|(name, info)| (name.clone(), info.as_deref().and_then(|i| serde_json::from_str(i).ok())))
                    .collect();
                return self.reply(id, pubsub::presence(request.as_ref(), &channel, &listed));
            }
            ClientOp::Subscribe { id: request, channel, presence } => {
                (request, self.op_subscribe(id, &channel, presence.map(|p| p.get().into())))
            }
            ClientOp::Unsubscribe { id: request, channel } => (request, self.op_unsubscribe(id, &channel)),
            ClientOp::Publish { id: request, channel, data } => {
                let allowed =
                    self.conn(id).and_then(|c| self.config.route.get(c.route)).is_some_and(|r| r.client_publish);
                if allowed {
                    self.fan_out(now, channel, true, Bytes::copy_from_slice(data.get().as_bytes()));
                    (request, Ok(()))
                } else {
                    let refusal =
                        (ErrorCode::PublishForbidden, "this route does not accept publishes from clients".to_owned());
                    (request, Err(refusal))
                }
            }
        };
        match result {
            Ok(()) => {
                if let Some(request) = request {
                    self.reply(id, pubsub::ack(&request));
                }
            }
            Err((code, message)) => self.op_error(now, id, OpError { id: request, code, message }),
        }
    }

    fn op_error(&mut self, now: Instant, id: ConnId, error: OpError) {
        self.metrics.protocol_errors += 1;
        self.reply(id, pubsub::error(error.id.as_ref(), error.code, &error.message));
        if !error.code.is_strike() {
            return;
        }
        let max = self.config.pubsub.max_protocol_errors;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.strikes += 1;
        if conn.strikes >= max {
            self.close(now, id, 1008, "too many protocol errors");
        }
    }

    fn op_subscribe(&mut self, id: ConnId, channel: &str, info: Option<Box<str>>) -> Result<(), (ErrorCode, String)> {
        let max = self.config.pubsub.max_subscriptions;
        let Some(conn) = self.conn(id) else { return Ok(()) };
        if self.subscription_index(id, channel).is_some() {
            return Err((ErrorCode::AlreadySubscribed, format!("already subscribed to \"{channel}\"")));
        }
        if conn.subscriptions.len() >= max {
            return Err((ErrorCode::TooManySubscriptions, format!("at most {max} subscriptions per connection")));
        }
        self.subscribe(id, channel, info);
        Ok(())
    }

    fn op_unsubscribe(&mut self, id: ConnId, channel: &str) -> Result<(), (ErrorCode, String)> {
        let Some(index) = self.subscription_index(id, channel) else {
            return Err((ErrorCode::NotSubscribed, format!("not subscribed to \"{channel}\"")));
        };
        self.unsubscribe_at(id, index);
        Ok(())
    }

    /// Local members of `channel`: connection names and their presence info.
    fn presence(&self, channel: &str) -> Vec<(String, Option<Box<str>>)> {
        let Some(chan_id) = self.channels.find(channel) else { return Vec::new() };
        let Some(chan) = self.channels.get(chan_id) else { return Vec::new() };
        chan.subscribers
            .iter()
            .map(|&member| {
                let info = self
                    .conn(member)
                    .and_then(|c| c.subscriptions.iter().find(|s| s.channel == chan_id))
                    .and_then(|s| s.info.clone());
                (self.conn_name(member), info)
            })
            .collect()
    }

    fn subscription_index(&self, id: ConnId, channel: &str) -> Option<usize> {
        let chan = self.channels.find(channel)?;
        self.conn(id)?.subscriptions.iter().position(|s| s.channel == chan)
    }

    fn subscribe(&mut self, id: ConnId, channel: &str, info: Option<Box<str>>) {
        let (chan, position, created) = self.channels.subscribe(channel, id);
        if let Some(conn) = self.conn_mut(id) {
            // Most connections hold one subscription (a broadcast room): keep the vector exact.
            conn.subscriptions.reserve_exact(1);
            conn.subscriptions.push(Subscription { channel: chan, position, info });
        }
        self.metrics.subscriptions += 1;
        self.metrics.channels = self.channels.len() as u64;
        if created {
            self.broker_out.push_back(BrokerCommand::Subscribe(channel.to_owned()));
        }
    }

    fn unsubscribe_at(&mut self, id: ConnId, index: usize) {
        let Some(conn) = self.conn_mut(id) else { return };
        let subscription = conn.subscriptions.swap_remove(index);
        let name = self.channels.get(subscription.channel).map(|c| c.name.clone());
        let removal = self.channels.unsubscribe(subscription.channel, subscription.position);
        if let Some(moved) = removal.moved
            && let Some(other) = self.conn_mut(moved)
            && let Some(entry) = other.subscriptions.iter_mut().find(|s| s.channel == subscription.channel)
        {
            entry.position = subscription.position;
        }
        self.metrics.subscriptions -= 1;
        self.metrics.channels = self.channels.len() as u64;
        if removal.emptied
            && let Some(name) = name
        {
            self.broker_out.push_back(BrokerCommand::Unsubscribe(name));
        }
    }

    fn reply(&mut self, id: ConnId, json: String) {
        self.enqueue(id, frame::encode(frame::data_opcode(true), false, json.as_bytes()));
    }

    /// Frames a message for a connection with `deflate` parameters, compressing it when
    /// negotiated and large enough.
    fn encode_message(&mut self, deflate: Option<DeflateParams>, text: bool, data: &[u8]) -> Bytes {
        let opcode = frame::data_opcode(text);
        if let Some(params) = deflate
            && data.len() as u64 >= self.config.compression.min_bytes.0
        {
            let bits = params.server_max_window_bits.clamp(8, 15);
            let level = self.config.compression.level;
            let deflater = self.deflaters[usize::from(bits - 8)].get_or_insert_with(|| Deflater::new(bits, level));
            let mut compressed = Vec::with_capacity(data.len() / 2 + 16);
            deflater.compress_message(data, &mut compressed);
            return frame::encode(opcode, true, &compressed);
        }
        frame::encode(opcode, false, data)
    }

    /// Starts the closing handshake with `code`; the socket closes when the peer answers,
    /// or after `close_timeout`.
    pub fn close(&mut self, now: Instant, id: ConnId, code: u16, reason: &str) {
        let Some(conn) = self.conn(id) else { return };
        if conn.close_sent || conn.phase == Phase::Handshake {
            return;
        }
        self.metrics.count_close(code);
        self.send_close_frame(now, id, frame::encode_close(code, reason));
    }

    fn send_close_frame(&mut self, now: Instant, id: ConnId, frame: Bytes) {
        let close_timeout = self.config.server.close_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.close_sent = true;
        conn.phase = Phase::Closing;
        conn.next_ping = None;
        conn.pong_due = None;
        conn.decoder.set_closing();
        conn.deadline = Some(now + close_timeout);
        // A closing connection hears nothing more: it leaves every channel now.
        for index in (0..conn.subscriptions.len()).rev() {
            self.unsubscribe_at(id, index);
        }
        self.enqueue(id, frame);
        self.rearm(id);
    }

    /// Sends an HTTP response and closes once it is written.
    fn respond_http(&mut self, id: ConnId, response: &HttpResponse) {
        let Some(conn) = self.conn_mut(id) else { return };
        conn.phase = Phase::Closing;
        conn.head = Vec::new();
        conn.close_when_flushed = true;
        if response.status >= 400 {
            self.metrics.count_rejection(response.status);
        }
        self.enqueue(id, response.to_bytes());
    }

    fn enqueue(&mut self, id: ConnId, bytes: Bytes) {
        let Some(conn) = self.conn_mut(id) else { return };
        let was_idle = conn.out.is_empty();
        let len = bytes.len();
        conn.out.push(bytes);
        self.metrics.bytes_out += len as u64;
        self.metrics.queued_bytes += len as u64;
        if was_idle {
            self.events.push_back(Event::Transmit(id));
        }
    }

    /// Forgets the connection (every index, counter and timer) and tells the shell to close
    /// its socket. Timer heap entries go stale and are skipped when they surface.
    fn finish(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        let subscriptions = conn.subscriptions.len();
        for index in (0..subscriptions).rev() {
            self.unsubscribe_at(id, index);
        }
        let Some(slot) = self.slots.get_mut(id.index as usize) else { return };
        let Some(conn) = slot.conn.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.metrics.connections_open -= 1;
        self.metrics.queued_bytes -= conn.out.unsent() as u64;
        if conn.counted {
            self.ips.release(conn.peer.ip());
            if let Some(route) = self.config.route.get(conn.route)
                && let Some(count) = self.metrics.connections_by_route.get_mut(&route.path)
            {
                *count -= 1;
            }
            if !self.ips.is_empty() {
                self.sweep_at.get_or_insert(conn.last_active + IP_SWEEP_INTERVAL);
            }
        }
        self.events.push_back(Event::Close(id));
    }

    fn conn(&self, id: ConnId) -> Option<&Connection> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }
}

/// The channel behind broadcast route `path`; `/` keeps it apart from pub/sub channel names.
fn room_name(path: &str) -> String {
    format!("{ROOM_PREFIX}{path}")
}

/// Prefix of broadcast rooms' channel names.
const ROOM_PREFIX: &str = "route:";

/// True for a broadcast route's room (its messages go out as sent, not as pub/sub JSON).
fn is_room(channel: &str) -> bool {
    channel.starts_with(ROOM_PREFIX)
}

/// Just the `id` of a pub/sub request, to answer one that is refused before parsing.
#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<RequestId>,
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
    }
}
