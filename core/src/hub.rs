//! The `Hub`: every connection of one worker, and the rules that decide what happens to them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::config::{Config, RouteMode};
use crate::deflate::{self, DeflateParams, Deflater, Inflater};
use crate::frame::{self, Decoded, Decoder, Limits};
use crate::handshake::{self, HeadError, HttpResponse, RequestHead};
use crate::metrics::Metrics;

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
    /// Reading the HTTP request head.
    Handshake,
    /// WebSocket frames flow both ways.
    Open,
    /// A close frame was sent or received, or an HTTP response is the last thing to send.
    Closing,
}

/// One connection: its protocol state and its outbound queue of shared frames.
#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    phase: Phase,
    route: usize,
    /// Request bytes until the head is complete; empty (unallocated) afterwards.
    head: Vec<u8>,
    decoder: Decoder,
    deflate: Option<DeflateParams>,
    out: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    out_offset: usize,
    /// Unsent bytes across the queue.
    queued: usize,
    close_sent: bool,
    /// Close the socket as soon as the queue is flushed.
    close_when_flushed: bool,
    /// Handshake deadline, then the deadline for the peer's close reply.
    deadline: Option<Instant>,
    /// The wake-up currently in the timer heap for this connection.
    wake_at: Option<Instant>,
}

impl Connection {
    fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A slab slot: the generation tells a live id from a stale one.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    conn: Option<Connection>,
}

/// The sans-IO hub: bytes and time in, bytes and events out.
///
/// After every `handle_*` call, drain `poll_event`, write what `transmit` offers for the
/// connections it named, and sleep until `poll_timeout`.
#[derive(Debug)]
pub struct Hub {
    config: Config,
    node_id: String,
    slots: Vec<Slot>,
    free: Vec<u32>,
    events: VecDeque<Event>,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// One compressor per window size, shared by every connection: contexts are never kept.
    deflaters: [Option<Deflater>; 8],
    decoded: Vec<Decoded>,
    metrics: Metrics,
    /// Set by `shutdown`: the instant by which every connection must be gone.
    drain_deadline: Option<Instant>,
}

impl Hub {
    /// A hub serving `config`; `node_id` names this node in broker envelopes.
    pub fn new(config: Config, node_id: impl Into<String>) -> Self {
        Self {
            config,
            node_id: node_id.into(),
            slots: Vec::new(),
            free: Vec::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            deflaters: Default::default(),
            decoded: Vec::new(),
            metrics: Metrics::default(),
            drain_deadline: None,
        }
    }

    /// The configuration this hub runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Counters and gauges, for the shells and the HTTP endpoints.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A TCP connection from `peer` was accepted; its request head is expected next.
    pub fn handle_accept(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        let conn = Connection {
            peer,
            phase: Phase::Handshake,
            route: 0,
            head: Vec::new(),
            decoder: Decoder::default(),
            deflate: None,
            out: VecDeque::new(),
            out_offset: 0,
            queued: 0,
            close_sent: false,
            close_when_flushed: false,
            deadline: Some(now + self.config.server.handshake_timeout),
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

    /// Fills `out` with slices of the connection's unsent bytes; returns how many were filled.
    pub fn transmit<'a>(&'a self, id: ConnId, out: &mut [IoSlice<'a>]) -> usize {
        let Some(conn) = self.conn(id) else { return 0 };
        let mut filled = 0;
        for (i, frame) in conn.out.iter().enumerate() {
            if filled == out.len() {
                break;
            }
            let skip = if i == 0 { conn.out_offset } else { 0 };
            out[filled] = IoSlice::new(&frame[skip..]);
            filled += 1;
        }
        filled
    }

    /// `n` bytes of what `transmit` offered were written to the socket.
    pub fn consume(&mut self, id: ConnId, mut n: usize) {
        let Some(conn) = self.conn_mut(id) else { return };
        n = n.min(conn.queued);
        conn.queued -= n;
        while n > 0 {
            let Some(front) = conn.out.front() else { break };
            let left = front.len() - conn.out_offset;
            if n < left {
                conn.out_offset += n;
                break;
            }
            n -= left;
            conn.out_offset = 0;
            conn.out.pop_front();
        }
        let sent = conn.out.is_empty();
        if sent {
            // An idle connection keeps no queue allocation.
            conn.out = VecDeque::new();
        }
        if sent && conn.close_when_flushed {
            self.finish(id);
        }
    }

    /// True while the connection has unsent bytes.
    pub fn wants_write(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.queued > 0)
    }

    /// Unsent bytes queued for the connection.
    pub fn queued_bytes(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.queued)
    }

    /// The next thing the shell must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called (it may be early; that is harmless).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
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
    }

    /// Starts a graceful drain: new upgrades get 503, open connections get close 1001, and
    /// whatever remains at `deadline` is dropped.
    pub fn shutdown(&mut self, now: Instant, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        let ids: Vec<ConnId> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let conn = slot.conn.as_ref()?;
                (conn.phase == Phase::Open).then_some(ConnId { index: index as u32, generation: slot.generation })
            })
            .collect();
        for id in ids {
            self.close(now, id, 1001, "server shutting down");
            if let Some(conn) = self.conn_mut(id) {
                conn.deadline = Some(conn.deadline.map_or(deadline, |d| d.min(deadline)));
            }
            self.rearm(id);
        }
    }

    /// True once `shutdown` was called.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// Number of connections held (any phase).
    pub fn connection_count(&self) -> usize {
        self.metrics.connections_open as usize
    }

    fn run_timers(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.deadline.is_some_and(|d| d <= now) {
            conn.deadline = None;
            match conn.phase {
                Phase::Handshake => {
                    self.metrics.handshake_timeouts += 1;
                    self.respond_http(id, &HttpResponse::error(408, "handshake not completed in time"));
                }
                // The peer never answered our close: give up on a clean close.
                Phase::Open | Phase::Closing => self.finish(id),
            }
        }
    }

    /// Makes sure the heap holds a wake-up no later than the connection's next deadline.
    fn rearm(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        let Some(next) = conn.next_deadline() else { return };
        if conn.wake_at.is_none_or(|w| next < w) {
            conn.wake_at = Some(next);
            self.timers.push(Reverse((next, id)));
        }
    }

    fn read_head(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let max = self.config.server.max_header_bytes;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.head.extend_from_slice(data);
        match handshake::parse_head(&conn.head) {
            Ok(None) if conn.head.len() > max => {
                self.respond_http(id, &HttpResponse::error(431, "request head too large"));
            }
            Ok(None) => {}
            Ok(Some(head)) if head.head_len > max => {
                self.respond_http(id, &HttpResponse::error(431, "request head too large"));
            }
            Ok(Some(head)) => {
                let rest = conn.head.split_off(head.head_len);
                conn.head = Vec::new();
                if head.is_upgrade() {
                    self.upgrade(now, id, &head, &rest);
                } else {
                    let response = self.http_request(&head);
                    self.respond_http(id, &response);
                }
            }
            Err(HeadError::TooManyHeaders) => {
                self.respond_http(id, &HttpResponse::error(431, "too many header fields"));
            }
            Err(HeadError::Malformed(reason)) => self.respond_http(id, &HttpResponse::error(400, reason)),
        }
    }

    /// Plain HTTP on the WebSocket port.
    fn http_request(&mut self, head: &RequestHead) -> HttpResponse {
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/healthz") => HttpResponse::json(200, r#"{"status":"ok"}"#.to_owned()),
            (_, "/healthz") => HttpResponse::error(405, "method not allowed").with_header("Allow", "GET"),
            _ if self.config.route(&head.path).is_some() => {
                HttpResponse::error(426, "this path serves WebSocket: send an upgrade request")
                    .with_header("Sec-WebSocket-Version", "13")
            }
            _ => HttpResponse::error(404, "no such path"),
        }
    }

    fn upgrade(&mut self, now: Instant, id: ConnId, head: &RequestHead, rest: &[u8]) {
        let request = match handshake::validate_upgrade(head) {
            Ok(request) => request,
            Err(response) => return self.respond_http(id, &response),
        };
        if self.drain_deadline.is_some() {
            return self
                .respond_http(id, &HttpResponse::error(503, "server is draining").with_header("Retry-After", "5"));
        }
        let Some((route_index, route)) = self.config.route(&head.path) else {
            return self.respond_http(id, &HttpResponse::error(404, "no WebSocket route at this path"));
        };
        if !route.allowed_origins.is_empty()
            && let Some(origin) = &request.origin
            && !route.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            return self.respond_http(id, &HttpResponse::error(403, "origin not allowed"));
        }
        let protocol = handshake::select_protocol(&route.subprotocols, &request.protocols);
        let negotiated = if self.config.compression.enabled {
            deflate::negotiate(
                head.header_values("sec-websocket-extensions"),
                self.config.compression.server_no_context_takeover,
            )
        } else {
            None
        };
        let response =
            handshake::accept_response(&request.key, protocol, negotiated.as_ref().map(|(_, header)| header.as_str()));
        let Some(conn) = self.conn_mut(id) else { return };
        conn.phase = Phase::Open;
        conn.route = route_index;
        conn.deadline = None;
        conn.deflate = negotiated.as_ref().map(|(params, _)| *params);
        conn.decoder = Decoder::new(conn.deflate.as_ref().map(Inflater::new));
        self.metrics.upgrades += 1;
        self.enqueue(id, response);
        if !rest.is_empty() {
            self.read_frames(now, id, rest);
        }
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
    }

    fn on_unit(&mut self, now: Instant, id: ConnId, unit: Decoded) {
        let Some(conn) = self.conn_mut(id) else { return };
        let closing = conn.phase == Phase::Closing;
        match unit {
            Decoded::Message { text, data } => {
                if closing {
                    return;
                }
                self.metrics.messages_in += 1;
                self.on_message(now, id, text, data);
            }
            Decoded::Ping(payload) => {
                if !closing {
                    self.enqueue(id, frame::encode(OpCode::Control(Control::Pong), false, &payload));
                }
            }
            Decoded::Pong(_) => {}
            Decoded::Close(close) => {
                let Some(conn) = self.conn_mut(id) else { return };
                conn.close_when_flushed = true;
                if conn.close_sent {
                    if conn.queued == 0 {
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

    fn on_message(&mut self, _now: Instant, id: ConnId, text: bool, data: Vec<u8>) {
        let Some(conn) = self.conn(id) else { return };
        let mode = self.config.route.get(conn.route).map(|r| r.mode);
        match mode {
            Some(RouteMode::Echo) => {
                let frame = self.encode_message(conn.deflate, text, &data);
                self.metrics.messages_out += 1;
                self.enqueue(id, frame);
            }
            Some(RouteMode::Broadcast | RouteMode::Pubsub) | None => {}
        }
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
        conn.decoder.set_closing();
        conn.deadline = Some(now + close_timeout);
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
        let was_idle = conn.queued == 0;
        conn.queued += bytes.len();
        conn.out.push_back(bytes);
        self.metrics.bytes_out += conn.out.back().map_or(0, |b| b.len() as u64);
        if was_idle {
            self.events.push_back(Event::Transmit(id));
        }
    }

    /// Forgets the connection and tells the shell to close its socket.
    fn finish(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else { return };
        if slot.generation != id.generation || slot.conn.is_none() {
            return;
        }
        slot.conn = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.metrics.connections_open -= 1;
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
