//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay in `cargo test`,
//! so both drive the core the same way. Not part of the stable API.
//!
//! Each entry takes the fuzzer's bytes and an origin instant (the core reads no clock, so the
//! caller brings one; only offsets from it matter). Bad input must never panic the core: a
//! panic here is either a core bug or a broken invariant, and says which in its message.
//!
//! The inputs are decoded by hand ([`Choices`]) rather than with the `arbitrary` crate, so
//! the core gains no dependency and a corpus file stays a plain byte string that a person can
//! write: most targets take the bytes almost verbatim after one or two leading choice bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Cursor, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::broker::{BrokerCommand, Envelope, Origin};
use crate::config::{Config, RouteConfig, RouteMode, Size, SlowConsumerPolicy};
use crate::deflate::{DeflateParams, Deflater, Inflater};
use crate::hub::{ConnId, Event, Hub};
use crate::redis::LinkConn;
use crate::{api, pubsub};

/// Routes every hub here serves, in the order `Choices` picks them.
pub const ROUTES: [&str; 3] = ["/echo", "/chat", "/ws"];

/// The API key configured where the HTTP API is fuzzed.
pub const API_KEY: &str = "fuzz-key";

/// Close codes the server sends of its own accord (docs/PROTOCOL.md); it may also echo any
/// valid code the client sent (RFC 6455 §5.5.1).
const SERVER_CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];

/// Fuzzer bytes read as a stream of small choices; an exhausted input reads as zeros.
#[derive(Debug, Clone)]
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    /// Choices drawn from `data`, front to back.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u16 from the next two bytes.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        if n <= 256 { usize::from(self.byte()) % n } else { usize::from(self.u16()) % n }
    }

    /// A yes/no choice.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` of the next bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// `handshake`: request bytes split at fuzzer-chosen points, with time passing between pieces.
///
/// Layout: a config byte, a split-count byte, one u16 per split point, then the request.
pub fn handshake(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let flags = input.byte();
    let mut config = Config::default();
    config.compression.enabled = flags & 1 == 0;
    config.server.max_header_bytes = if flags & 2 == 0 { 8192 } else { 256 };
    // A PROXY header (and the forwarding headers a trusted proxy adds) come first or not at all.
    config.server.proxy_protocol = flags & 8 != 0;
    if flags & 16 != 0 {
        config.server.trusted_proxies = crate::proxy::Cidr::new(std::net::IpAddr::from([127, 0, 0, 0]), 8).into_iter().collect();
    }
    if flags & 4 != 0 {
        for route in &mut config.route {
            route.allowed_origins = vec!["https://example.com".to_owned()];
            route.subprotocols = vec!["chat.v2".to_owned(), "chat.v1".to_owned()];
        }
    }
    let splits = usize::from(input.byte() % 8);
    let mut points: Vec<(u16, bool)> = (0..splits).map(|_| (input.u16(), input.flag())).collect();
    let request = input.rest();
    points.sort_unstable();
    let mut rig = Rig::new(config, t0);
    let id = rig.accept(1);
    let mut start = 0;
    let ends = points.into_iter().map(|(point, wait)| (usize::from(point), wait)).chain([(request.len(), false)]);
    for (point, wait) in ends {
        let end = point.min(request.len()).max(start);
        rig.send(id, &request[start..end]);
        start = end;
        if wait {
            rig.advance(Duration::from_secs(3));
        }
    }
    let mut stream = ServerStream::new();
    let items = stream.read(&rig.read_all(id));
    if let Some(ServerItem::Response { status, head, .. }) = items.first() {
        // Plain HTTP (a health check) gets 200; anything else upgrades or is refused.
        assert!(matches!(status, 101 | 200 | 400..), "unexpected status {status}: {head}");
        if *status == 101 {
            assert!(head.contains("Sec-WebSocket-Accept: "), "a 101 carries the accept key: {head}");
        }
    }
    rig.advance(Duration::from_secs(11));
    rig.read_all(id);
    rig.eof(id);
    rig.assert_empty();
}

/// `frames`: arbitrary client bytes after a valid upgrade, with or without permessage-deflate.
///
/// Layout: a flags byte (route, deflate offer, small limits, whether the harness frames and
/// masks the rest itself), a chunking byte, then the bytes (or frame descriptions).
pub fn frames(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let flags = input.byte();
    let chunking = input.byte();
    let route = ROUTES[usize::from(flags % 3)];
    let deflate = flags & 4 != 0;
    let framed = flags & 8 != 0;
    let mut config = Config::default();
    if flags & 16 != 0 {
        config.limits.max_message_bytes = Size(300);
        config.limits.max_frame_bytes = Some(Size(100));
        config.limits.send_queue_bytes = Size(200);
    }
    if flags & 32 != 0 {
        config.compression.min_bytes = Size(0);
    }
    let extension = match flags >> 6 {
        0 => "permessage-deflate",
        1 => "permessage-deflate; client_max_window_bits=9; server_max_window_bits=8",
        2 => "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        _ => "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
    };
    let mut rig = Rig::new(config, t0);
    // A second member on the route, so broadcasts and publishes fan out through deflate too.
    let listener = rig.open(2, route, Some("permessage-deflate"));
    let subscribe = b"{\"op\":\"subscribe\",\"channel\":\"c\"}";
    rig.send(listener.id, &client_frame(0x81, subscribe, MASK));
    let mut listener_stream = listener.stream;
    let offer = deflate.then_some(extension);
    let client = rig.open(1, route, offer);
    let id = client.id;
    let mut stream = client.stream;
    let mut deflater = Deflater::new(15, 1);
    let bytes =
        if framed { frame_descriptions(&mut input, stream.deflate(), &mut deflater) } else { input.rest().to_vec() };
    let mut seed = u32::from(chunking) | 1;
    let mut at = 0;
    while at < bytes.len() {
        let len = if chunking == 0 {
            bytes.len()
        } else {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (seed >> 16) as usize % 64
        };
        let end = (at + len).min(bytes.len());
        rig.send(id, &bytes[at..end]);
        at = end;
    }
    let items = stream.read(&rig.read_all(id));
    check_route_output(route, &items);
    let items = listener_stream.read(&rig.read_all(listener.id));
    check_route_output(route, &items);
    rig.eof(id);
    rig.eof(listener.id);
    rig.assert_empty();
}

/// Frames built by the harness from `(header byte, length, payload)` descriptions, masked and
/// (when the header asks with RSV1 and deflate was agreed) really compressed, so the
/// fuzzer reaches message rules and the inflater without solving masking.
fn frame_descriptions(input: &mut Choices<'_>, deflate: bool, deflater: &mut Deflater) -> Vec<u8> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let first = input.byte();
        let len = input.below(200);
        let payload = input.bytes(len);
        let compress = deflate && first & 0x40 != 0 && first & 0x0f != 0;
        let payload = if compress {
            let mut compressed = Vec::new();
            deflater.compress_message(payload, &mut compressed);
            compressed
        } else {
            payload.to_vec()
        };
        out.extend_from_slice(&client_frame(first, &payload, MASK));
    }
    out
}

/// Every server data frame on a pub/sub route is a JSON object with a `type`.
fn check_route_output(route: &str, items: &[ServerItem]) {
    if route != "/ws" {
        return;
    }
    for item in items {
        if let ServerItem::Message { text, data } = item {
            assert!(*text, "pub/sub frames are text");
            let _ = pubsub_frame(data);
        }
    }
}

/// A server frame on a pub/sub route: its `type` and its members as raw JSON.
///
/// Members stay raw so that deeply nested published data (valid, and passed through as
/// sent) is not refused by a recursion limit of the checker's own.
fn pubsub_frame(data: &[u8]) -> (String, BTreeMap<String, &serde_json::value::RawValue>) {
    let members: BTreeMap<String, &serde_json::value::RawValue> = match serde_json::from_slice(data) {
        Ok(members) => members,
        Err(e) => panic!("pub/sub frame is not a JSON object ({e}): {:?}", String::from_utf8_lossy(data)),
    };
    let kind = members.get("type").and_then(|t| serde_json::from_str::<String>(t.get()).ok());
    let Some(kind) = kind else { panic!("pub/sub frame without a type: {:?}", String::from_utf8_lossy(data)) };
    (kind, members)
}

/// `pubsub_json`: text on a pub/sub route, and `pubsub::parse_op` directly.
///
/// Layout: a flags byte, then text; each line is one message.
pub fn pubsub_json(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let flags = input.byte();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    for line in text.split('\n') {
        match pubsub::parse_op(line, 16) {
            Ok(op) => {
                if let Some(channel) = op.channel() {
                    assert!(pubsub::valid_channel(channel, 16), "parse_op accepted channel {channel:?}");
                }
                if let Some(id) = op.id() {
                    assert_json(&pubsub::ack(id));
                }
            }
            Err(error) => assert_json(&error.to_frame()),
        }
    }
    let mut config = Config::default();
    config.pubsub.max_channel_bytes = 16;
    config.pubsub.max_subscriptions = 4;
    config.pubsub.max_protocol_errors = if flags & 1 == 0 { 3 } else { 1000 };
    config.route[2].client_publish = flags & 2 == 0;
    if flags & 4 != 0 {
        config.rate_limit.messages_per_second = 1.0;
        config.rate_limit.burst = 3;
    }
    let mut rig = Rig::new(config, t0);
    let mut watcher = rig.open(2, "/ws", None);
    for channel in ["a", "b", "c"] {
        let op = format!("{{\"op\":\"subscribe\",\"channel\":\"{channel}\",\"presence\":{{\"n\":1}}}}");
        rig.send(watcher.id, &client_frame(0x81, op.as_bytes(), MASK));
    }
    let mut client = rig.open(1, "/ws", None);
    for line in text.split('\n') {
        rig.send(client.id, &client_frame(0x81, line.as_bytes(), MASK));
    }
    for (id, stream) in [(client.id, &mut client.stream), (watcher.id, &mut watcher.stream)] {
        let items = stream.read(&rig.read_all(id));
        check_route_output("/ws", &items);
    }
    rig.eof(client.id);
    rig.eof(watcher.id);
    rig.assert_empty();
}

fn assert_json(text: &str) {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        panic!("the core built invalid JSON ({e}): {text}");
    }
}

/// `config`: arbitrary TOML. What parses must render back to itself and run a hub.
pub fn config(t0: Instant, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml(text) else { return };
    let rendered = config.to_toml();
    match Config::from_toml(&rendered) {
        Ok(again) => assert_eq!(again, config, "to_toml does not read back the same config:\n{rendered}"),
        Err(e) => panic!("to_toml rendered a config that does not parse ({e}):\n{rendered}"),
    }
    let paths: Vec<String> = config.route.iter().map(|r| r.path.clone()).collect();
    let ping_interval = config.heartbeat.ping_interval;
    let timeouts = [
        config.server.handshake_timeout,
        config.server.close_timeout,
        config.heartbeat.ping_interval,
        config.heartbeat.pong_timeout,
        config.heartbeat.idle_timeout,
        config.drain.interval,
    ];
    let mut rig = Rig::new(config, t0);
    let mut ids = Vec::new();
    for (n, path) in paths.iter().enumerate() {
        let id = rig.accept(n as u8);
        if !path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            rig.send(id, upgrade_request(path, "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes());
            rig.send(id, &client_frame(0x81, b"{\"op\":\"subscribe\",\"channel\":\"c\"}", MASK));
            rig.send(id, &client_frame(0x81, b"hello", MASK));
        }
        ids.push(id);
    }
    let now = rig.now;
    let _ = rig.hub.publish(now, "c", "{\"x\":1}");
    for path in &paths {
        let _ = rig.hub.broadcast(now, path, true, b"hi");
    }
    rig.pump();
    // Each timeout is a place where `now + duration` is computed. The steps are capped so a
    // run ends: an hour of 10ms pings (the shortest Config accepts) is 360,000 wake-ups per
    // connection, so at most 200 ping intervals are simulated per step.
    let cap = ping_interval.saturating_mul(200).min(Duration::from_secs(3600));
    for timeout in timeouts {
        rig.advance(timeout.min(cap));
    }
    for id in ids {
        rig.read_all(id);
        rig.eof(id);
    }
    rig.assert_empty();
}

/// `http_api`: requests to /healthz, /metrics, /api/stats and /api/publish, with a key set.
///
/// Layout: a mode byte; mode 0 sends the rest raw; otherwise the harness builds a request
/// from choices (method, path, auth, content length) with the rest as its body.
pub fn http_api(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let mode = input.byte();
    let mut config = Config::default();
    config.http.api_key = API_KEY.to_owned();
    config.http.max_body_bytes = Size(4096);
    config.http.metrics = mode & 0x80 == 0;
    let mut rig = Rig::new(config, t0);
    let mut subscriber = rig.open(2, "/ws", None);
    rig.send(subscriber.id, &client_frame(0x81, b"{\"op\":\"subscribe\",\"channel\":\"news\"}", MASK));
    let mut member = rig.open(3, "/chat", None);
    let request = if mode & 0x7f == 0 {
        input.rest().to_vec()
    } else {
        let method = ["GET", "POST", "PUT", "HEAD", "DELETE", "get"][input.below(6)];
        let path =
            ["/api/publish", "/healthz", "/metrics", "/api/stats", "/ws", "/nope", "/api/publish?x=1"][input.below(7)];
        let auth = match input.below(5) {
            0 => format!("Authorization: Bearer {API_KEY}\r\n"),
            1 => format!("authorization: bearer   {API_KEY}\r\n"),
            2 => "Authorization: Bearer wrong\r\n".to_owned(),
            3 => "Authorization: Basic Zm9vOmJhcg==\r\n".to_owned(),
            _ => String::new(),
        };
        let length_choice = input.below(4);
        let body = input.rest();
        let length = match length_choice {
            0 => format!("Content-Length: {}\r\n", body.len()),
            1 => String::new(),
            2 => format!("Content-Length: {}\r\n", body.len() + 1),
            _ => "Transfer-Encoding: chunked\r\n".to_owned(),
        };
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{length}\r\n").into_bytes();
        request.extend_from_slice(body);
        request
    };
    let id = rig.accept(1);
    rig.send(id, &request);
    let mut stream = ServerStream::new();
    let items = stream.read(&rig.read_all(id));
    match items.first() {
        Some(ServerItem::Response { status, head, body }) => {
            assert_ne!(*status, 101, "no upgrade without an upgrade request: {head}");
            if head.contains("application/json") {
                assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok(), "JSON response is not JSON");
            }
            if *status == 202 {
                assert!(request.starts_with(b"POST "), "202 answers only a publish");
            }
        }
        Some(other) => panic!("an HTTP request was answered with {other:?}"),
        None => {}
    }
    for (id, route, stream) in
        [(subscriber.id, "/ws", &mut subscriber.stream), (member.id, "/chat", &mut member.stream)]
    {
        let items = stream.read(&rig.read_all(id));
        check_route_output(route, &items);
    }
    if !rig.is_closed(id) {
        rig.eof(id);
    }
    rig.eof(subscriber.id);
    rig.eof(member.id);
    rig.assert_empty();
    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
        // The body parser alone, on whatever followed the head.
        let _ = api::parse_publish(&request[at + 4..], 16);
    }
}

/// `resp`: arbitrary Redis replies, in any chunking, into the hub's Redis link, interleaved
/// with connects, failures, hang-ups, time passing and pub/sub traffic that makes the link
/// subscribe, publish and ask for presence.
///
/// Layout: one op byte at a time (with its operands) until the input ends.
pub fn resp(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let mut config = Config::default();
    config.broker.kind = crate::config::BrokerKind::Redis;
    config.broker.node_id = "fuzz".to_owned();
    config.broker.backoff.min = Duration::from_millis(10);
    config.broker.backoff.max = Duration::from_millis(200);
    config.broker.breaker.failure_threshold = 3;
    config.broker.breaker.open_for = Duration::from_secs(1);
    config.http.api_key = API_KEY.to_owned();
    let mut rig = Rig::new(config, t0);
    let mut clients = Vec::new();
    for (peer, channel) in [(1, "a"), (2, "b")] {
        let client = rig.open(peer, "/ws", None);
        let op = format!("{{\"op\":\"subscribe\",\"channel\":\"{channel}\",\"presence\":{{\"n\":{peer}}}}}");
        rig.send(client.id, &client_frame(0x81, op.as_bytes(), MASK));
        clients.push(client);
    }
    let mut link = LinkSockets::default();
    link.pump(&mut rig.hub);
    let mut steps = 0;
    while !input.is_empty() && steps < 300 {
        steps += 1;
        let op = input.byte();
        let which = if op & 0x80 == 0 { LinkConn::Subscriber } else { LinkConn::Command };
        let now = rig.now;
        match op & 0x7f {
            0..=63 => {
                let len = input.below(256);
                let bytes = input.bytes(len);
                if link.open.contains(&which) {
                    rig.hub.handle_redis_bytes(now, which, bytes);
                }
            }
            64..=79 => {
                let up = input.flag();
                if link.connecting.remove(&which) {
                    if up {
                        link.open.insert(which);
                        rig.hub.handle_redis_connected(now, which);
                    } else {
                        rig.hub.handle_redis_connect_failed(now, which);
                    }
                }
            }
            80..=87 => {
                if link.open.remove(&which) {
                    rig.hub.handle_redis_eof(now, which);
                }
            }
            88..=103 => rig.advance(Duration::from_millis([1, 20, 300, 1_100, 6_000, 30_000][input.below(6)])),
            104..=119 => {
                let client = &clients[input.below(clients.len())];
                let channel = ["a", "b", "c"][input.below(3)];
                let op = match input.below(4) {
                    0 => format!("{{\"op\":\"publish\",\"channel\":\"{channel}\",\"data\":{{\"x\":1}}}}"),
                    1 => format!("{{\"op\":\"subscribe\",\"channel\":\"{channel}\"}}"),
                    2 => format!("{{\"op\":\"unsubscribe\",\"channel\":\"{channel}\"}}"),
                    _ => format!("{{\"op\":\"presence\",\"id\":1,\"channel\":\"{channel}\"}}"),
                };
                rig.send(client.id, &client_frame(0x81, op.as_bytes(), MASK));
            }
            _ => {
                if link.open.contains(&which) {
                    let n = peek_redis(&rig.hub, which);
                    rig.hub.redis_consume(which, n.min(usize::from(input.u16())));
                }
            }
        }
        link.pump(&mut rig.hub);
        rig.pump();
        for client in &mut clients {
            let items = client.stream.read(&rig.read_all(client.id));
            check_route_output("/ws", &items);
        }
    }
    for client in &clients {
        rig.eof(client.id);
    }
    for which in std::mem::take(&mut link.open) {
        rig.hub.handle_redis_eof(rig.now, which);
    }
    link.pump(&mut rig.hub);
    rig.pump();
    rig.assert_empty();
}

/// The shell's side of the Redis link: which sockets are connecting and which are open.
#[derive(Debug, Default)]
struct LinkSockets {
    connecting: BTreeSet<LinkConn>,
    open: BTreeSet<LinkConn>,
}

impl LinkSockets {
    /// Acts on what the hub asks of the shell: sockets to open and to drop.
    fn pump(&mut self, hub: &mut Hub) {
        loop {
            let mut moved = false;
            while let Some(which) = hub.poll_redis_close() {
                moved = true;
                self.connecting.remove(&which);
                self.open.remove(&which);
            }
            while let Some((which, _address)) = hub.poll_redis_connect() {
                moved = true;
                assert!(!self.open.contains(&which), "the link asked to open {which:?}, which is open");
                self.connecting.insert(which);
            }
            if !moved {
                return;
            }
        }
    }
}

/// How many bytes the link offers to write on `which`.
fn peek_redis(hub: &Hub, which: LinkConn) -> usize {
    let mut slices = [IoSlice::new(&[]); 64];
    let n = hub.redis_transmit(which, &mut slices);
    slices[..n].iter().map(|s| s.len()).sum()
}

/// The mask every harness client uses; a fixed one keeps corpus files reproducible.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame with first header byte `first` (FIN, RSV, opcode), masked with `mask`.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An upgrade request for `path` with extra header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// What a client reads from the server, one unit at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerItem {
    /// An HTTP response (a `101` has no body; frames follow it).
    Response {
        /// Status code.
        status: u16,
        /// The head as text.
        head: String,
        /// The body.
        body: Vec<u8>,
    },
    /// A whole data message, inflated.
    Message {
        /// True for text.
        text: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A pong and its payload.
    Pong(Vec<u8>),
    /// A close frame and its code, if any.
    Close(Option<u16>),
}

#[derive(Debug)]
enum StreamState {
    Head,
    Body { status: u16, head: String, len: usize },
    Frames,
    Done,
}

/// A client's reader of the server's byte stream, fed any chunking; it panics on anything a
/// correct server would not send (malformed frames, masked frames, data after close).
#[derive(Debug)]
pub struct ServerStream {
    buf: Vec<u8>,
    state: StreamState,
    inflater: Option<Inflater>,
}

impl Default for ServerStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerStream {
    /// A reader expecting an HTTP response first.
    pub fn new() -> Self {
        Self { buf: Vec::new(), state: StreamState::Head, inflater: None }
    }

    /// True once the `101` agreed permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.inflater.is_some()
    }

    /// True once a close frame or a non-101 response was read: nothing more may come.
    pub fn is_done(&self) -> bool {
        matches!(self.state, StreamState::Done)
    }

    /// Reads `bytes` and returns every unit completed by them.
    pub fn read(&mut self, bytes: &[u8]) -> Vec<ServerItem> {
        let mut items = Vec::new();
        self.push(bytes, &mut items);
        items
    }

    /// Reads `bytes`, appending every unit completed by them to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ServerItem>) {
        self.buf.extend_from_slice(bytes);
        loop {
            match &self.state {
                StreamState::Head => {
                    let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
                    let head = match std::str::from_utf8(&self.buf[..end + 4]) {
                        Ok(head) => head.to_owned(),
                        Err(_) => panic!("response head is not UTF-8: {:?}", &self.buf[..end + 4]),
                    };
                    self.buf.drain(..end + 4);
                    let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
                    let Some(status) = status.filter(|_| head.starts_with("HTTP/1.1 ")) else {
                        panic!("bad status line: {head:?}");
                    };
                    if status == 101 {
                        let deflate = head.lines().any(|l| {
                            l.to_ascii_lowercase().starts_with("sec-websocket-extensions: permessage-deflate")
                        });
                        if deflate {
                            let params = DeflateParams { client_no_context_takeover: true, ..DeflateParams::default() };
                            self.inflater = Some(Inflater::new(&params));
                        }
                        out.push(ServerItem::Response { status, head, body: Vec::new() });
                        self.state = StreamState::Frames;
                    } else {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        let Some(len) = len else { panic!("response without Content-Length: {head:?}") };
                        self.state = StreamState::Body { status, head, len };
                    }
                }
                StreamState::Body { status, head, len } => {
                    if self.buf.len() < *len {
                        return;
                    }
                    let body = self.buf.drain(..*len).collect();
                    out.push(ServerItem::Response { status: *status, head: head.clone(), body });
                    self.state = StreamState::Done;
                }
                StreamState::Frames => match self.frame() {
                    Some(item) => {
                        if matches!(item, ServerItem::Close(_)) {
                            self.state = StreamState::Done;
                        }
                        out.push(item);
                    }
                    None => return,
                },
                StreamState::Done => {
                    assert!(
                        self.buf.is_empty(),
                        "server sent {} bytes after its last response or close: {:?}",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(64)])
                    );
                    return;
                }
            }
        }
    }

    fn frame(&mut self) -> Option<ServerItem> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return None,
            Err(e) => panic!("server sent a malformed frame header: {e}"),
        };
        let start = cursor.position() as usize;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if self.buf.len() < end {
            return None;
        }
        let payload: Vec<u8> = self.buf[start..end].to_vec();
        self.buf.drain(..end);
        assert!(header.mask.is_none(), "server frames are never masked");
        assert!(!header.rsv2 && !header.rsv3, "server set RSV2/RSV3");
        assert!(header.is_final, "the core sends every message in one frame");
        let data_frame = matches!(header.opcode, OpCode::Data(_));
        assert!(!header.rsv1 || (data_frame && self.inflater.is_some()), "RSV1 without permessage-deflate");
        if !data_frame {
            assert!(payload.len() <= 125, "control frame of {} bytes", payload.len());
        }
        Some(match header.opcode {
            OpCode::Data(Data::Continue) => panic!("the core never sends continuation frames"),
            OpCode::Data(Data::Reserved(n)) | OpCode::Control(Control::Reserved(n)) => panic!("reserved opcode {n}"),
            OpCode::Data(kind) => {
                let data = match (&mut self.inflater, header.rsv1) {
                    (Some(inflater), true) => {
                        let mut out = Vec::new();
                        let limit = usize::MAX / 2;
                        let inflated =
                            inflater.push(&payload, &mut out, limit).and_then(|()| inflater.finish(&mut out, limit));
                        assert!(inflated.is_ok(), "server sent a corrupt compressed message");
                        out
                    }
                    _ => payload,
                };
                let text = kind == Data::Text;
                assert!(!text || std::str::from_utf8(&data).is_ok(), "server sent a text message that is not UTF-8");
                ServerItem::Message { text, data }
            }
            OpCode::Control(Control::Ping) => ServerItem::Ping(payload),
            OpCode::Control(Control::Pong) => ServerItem::Pong(payload),
            OpCode::Control(Control::Close) => {
                assert_ne!(payload.len(), 1, "a close payload of one byte");
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                if let Some(code) = code {
                    let echoable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                    assert!(SERVER_CLOSE_CODES.contains(&code) || echoable, "server sent close code {code}");
                    assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason is not UTF-8");
                }
                ServerItem::Close(code)
            }
        })
    }
}

/// A hub on a simulated clock, with the shell's side: events drained, sockets tracked.
#[derive(Debug)]
struct Rig {
    hub: Hub,
    now: Instant,
    live: BTreeSet<ConnId>,
}

/// A connection `Rig::open` upgraded, with the client's reader.
struct Opened {
    id: ConnId,
    stream: ServerStream,
}

impl Rig {
    fn new(config: Config, t0: Instant) -> Self {
        // The targets build their configs from valid parts or from TOML that parsed: a refusal
        // here is a disagreement between parsing and validation, which is worth a crash.
        let hub = Hub::new(config, "fuzz").unwrap_or_else(|e| panic!("a parsed config was refused: {e}"));
        Self { hub, now: t0, live: BTreeSet::new() }
    }

    fn accept(&mut self, peer: u8) -> ConnId {
        let id = self.hub.handle_accept(self.now, peer_addr(peer));
        assert!(self.live.insert(id), "handle_accept returned a live id");
        self.pump();
        id
    }

    fn open(&mut self, peer: u8, path: &str, deflate: Option<&str>) -> Opened {
        let id = self.accept(peer);
        let extra = deflate.map(|d| format!("Sec-WebSocket-Extensions: {d}\r\n")).unwrap_or_default();
        self.send(id, upgrade_request(path, &extra).as_bytes());
        let mut stream = ServerStream::new();
        let items = stream.read(&self.read_all(id));
        assert!(
            matches!(items.first(), Some(ServerItem::Response { status: 101, .. })),
            "the harness's upgrade was refused: {items:?}"
        );
        Opened { id, stream }
    }

    fn send(&mut self, id: ConnId, bytes: &[u8]) {
        self.hub.handle_bytes(self.now, id, bytes);
        self.pump();
    }

    fn eof(&mut self, id: ConnId) {
        self.hub.handle_eof(self.now, id);
        self.pump();
        assert!(!self.live.contains(&id), "handle_eof did not close the connection");
    }

    fn is_closed(&self, id: ConnId) -> bool {
        !self.live.contains(&id)
    }

    /// Everything queued for `id`, as if the socket took it all.
    fn read_all(&mut self, id: ConnId) -> Vec<u8> {
        let out = take_output(&mut self.hub, id, usize::MAX);
        self.pump();
        out
    }

    fn pump(&mut self) {
        while let Some(event) = self.hub.poll_event() {
            if let Event::Close(id) = event {
                assert!(self.live.remove(&id), "Close event for a connection not open: {id:?}");
            }
        }
        while self.hub.poll_broker().is_some() {}
    }

    fn advance(&mut self, by: Duration) {
        self.now = advance(&mut self.hub, self.now, self.now + by, &mut |hub| {
            while let Some(event) = hub.poll_event() {
                if let Event::Close(id) = event {
                    assert!(self.live.remove(&id), "Close event for a connection not open: {id:?}");
                }
            }
            while hub.poll_broker().is_some() {}
        });
    }

    /// With every connection gone, nothing may remain: gauges, channels, queued bytes, timers.
    fn assert_empty(&mut self) {
        assert!(self.live.is_empty(), "the harness left connections open");
        assert_hub_empty(&self.hub);
    }
}

/// A distinct loopback peer per number.
pub fn peer_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 40_000 + u16::from(n)))
}

/// Writes up to `max` of the connection's queued bytes, as a socket that took that much would.
pub fn take_output(hub: &mut Hub, id: ConnId, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = hub.transmit(id, &mut slices);
        if n == 0 {
            break;
        }
        let before = out.len();
        for slice in &slices[..n] {
            let room = max - out.len();
            out.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        hub.consume(id, out.len() - before);
    }
    out
}

/// Runs every timer up to `end` in order, as a shell sleeping on `poll_timeout` would, calling
/// `after` after each wake-up; returns the new now.
pub fn advance(hub: &mut Hub, mut now: Instant, end: Instant, after: &mut dyn FnMut(&mut Hub)) -> Instant {
    let mut spins = 0;
    while let Some(at) = hub.poll_timeout() {
        if at > end {
            break;
        }
        if at <= now {
            // A timer already due after handle_timeout(now) would spin a shell forever.
            spins += 1;
            assert!(spins < 10_000, "poll_timeout stays at {:?} past now: a busy loop", at);
        }
        now = now.max(at);
        hub.handle_timeout(now);
        after(hub);
    }
    now = now.max(end);
    hub.handle_timeout(now);
    after(hub);
    now
}

/// An empty hub holds nothing: no connection, subscription, channel, queued byte or timer.
pub fn assert_hub_empty(hub: &Hub) {
    let m = hub.metrics();
    assert_eq!(hub.connection_count(), 0, "connections left");
    assert_eq!(m.connections_open, 0, "connections_open gauge left at {}", m.connections_open);
    assert!(m.connections_by_route.values().all(|&n| n == 0), "route gauges left: {:?}", m.connections_by_route);
    assert_eq!(m.subscriptions, 0, "subscriptions gauge left at {}", m.subscriptions);
    assert_eq!(m.channels, 0, "channels gauge left at {}", m.channels);
    assert_eq!(m.queued_bytes, 0, "queued_bytes gauge left at {}", m.queued_bytes);
}

// ---------------------------------------------------------------------------------------------
// hub_ops

/// Connection slots the `hub_ops` driver juggles.
const SLOTS: usize = 6;
/// Pub/sub channels the `hub_ops` driver uses.
const CHANNELS: [&str; 3] = ["red", "green", "blue"];
/// The broadcast route's room, as envelopes name it.
const ROOM: &str = "route:/chat";
/// Largest data frame the driver can cause: its biggest payload plus JSON wrapping and header.
const MAX_DATA_FRAME: usize = 2048;
/// Room for control frames (pings, close) beyond the data bound.
const CONTROL_SLACK: usize = 512;

/// One simulated client of `hub_ops`, and what the driver expects of it.
#[derive(Debug)]
struct Client {
    id: ConnId,
    /// Unique per client, unlike slots and ids which are reused.
    serial: u64,
    route: usize,
    stream: ServerStream,
    upgraded: bool,
    answers_pings: bool,
    replies_to_close: bool,
    /// Kept in step with the server: sent only whole, valid frames and requests. A client that
    /// sent garbage may have subscribed by accident, so membership and gap checks skip it.
    trusted: bool,
    /// The client sent its close frame (the server unsubscribed it then).
    sent_close: bool,
    /// Channels (index into CHANNELS) the server has this client in, as the driver believes.
    subscribed: BTreeSet<usize>,
    /// Per channel (name): the last publish number and seq received.
    last: BTreeMap<String, (u64, u64)>,
    /// Per channel (name): the next publish number at each (re)subscribe. A channel that
    /// emptied is made anew with its seq starting over, while older messages may still wait
    /// unread, so seq may go back only across one of these.
    subscribed_at: BTreeMap<String, Vec<u64>>,
    /// Echo payloads sent and not yet returned, in order.
    echoes: VecDeque<Vec<u8>>,
    deflater: Option<Deflater>,
}

/// A message published during `hub_ops`: where, and who had to hear it.
#[derive(Debug)]
struct Published {
    channel: String,
    audience: BTreeSet<u64>,
}

/// The `hub_ops` driver: a hub, its clients, the publishes made and the broker's view.
struct Driver {
    hub: Hub,
    now: Instant,
    slots: Vec<Option<Client>>,
    next_serial: u64,
    publishes: Vec<Published>,
    /// Channels the hub told the broker it has subscribers on.
    broker_channels: BTreeSet<String>,
    /// Publish envelopes the hub handed the broker and the driver has not matched yet.
    broker_out: VecDeque<Envelope>,
    queue_limit: usize,
    strict_gaps: bool,
    /// False once the model can be wrong (rate limits refuse requests; garbage may be requests).
    trusted: bool,
    drained: bool,
    last_drop_count: u64,
}

/// `hub_ops`: a decoded sequence of operations over several connections and time steps,
/// with the hub's invariants checked after every step.
///
/// Layout: three config bytes, then one operation per byte group until the input ends.
pub fn hub_ops(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let (config, strict_gaps, trusted) = hub_ops_config(&mut input);
    let queue_limit = config.limits.send_queue_bytes.as_usize();
    let mut driver = Driver {
        hub: Hub::new(config, "fuzz")
            .unwrap_or_else(|e| panic!("hub_ops config refused: {e}"))
            .with_worker(1)
            .with_workers(2),
        now: t0,
        slots: (0..SLOTS).map(|_| None).collect(),
        next_serial: 0,
        publishes: Vec::new(),
        broker_channels: BTreeSet::new(),
        broker_out: VecDeque::new(),
        queue_limit,
        strict_gaps,
        trusted,
        drained: false,
        last_drop_count: 0,
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 400 {
        steps += 1;
        driver.step(&mut input);
        driver.check();
    }
    driver.everyone_leaves();
}

fn hub_ops_config(input: &mut Choices<'_>) -> (Config, bool, bool) {
    let a = input.byte();
    let b = input.byte();
    let c = input.byte();
    let mut config = Config::default();
    config.limits.send_queue_bytes = Size([256, 1024, 4096, 65_536][usize::from(a & 3)]);
    let drop = a & 4 != 0;
    config.limits.slow_consumer = if drop { SlowConsumerPolicy::Drop } else { SlowConsumerPolicy::Close };
    config.compression.min_bytes = Size([0, 64, 1 << 20][usize::from((a >> 3) % 3)]);
    config.compression.enabled = a & 0x20 == 0;
    let rate_limited = a & 0x40 != 0;
    if rate_limited {
        config.rate_limit.messages_per_second = 5.0;
        config.rate_limit.burst = 5;
        config.rate_limit.bytes_per_second = Size(4096);
    } else {
        config.rate_limit.messages_per_second = 0.0;
        config.rate_limit.bytes_per_second = Size(0);
    }
    config.heartbeat.ping_interval = Duration::from_millis([500, 5_000, 30_000][usize::from(b % 3)]);
    config.heartbeat.pong_timeout = Duration::from_millis([300, 3_000][usize::from((b >> 2) & 1)]);
    config.heartbeat.idle_timeout = Duration::from_secs([0, 20, 120][usize::from((b >> 3) % 3)]);
    config.server.handshake_timeout = Duration::from_secs(2);
    config.server.close_timeout = Duration::from_secs(1);
    config.pubsub.max_subscriptions = 2 + usize::from(c & 3);
    config.pubsub.max_protocol_errors = 2;
    config.http.api_key = API_KEY.to_owned();
    config.drain.batch = 1 + usize::from((c >> 2) & 3);
    config.drain.interval = Duration::from_millis(200);
    config.route = vec![
        RouteConfig::new(ROUTES[0], RouteMode::Echo),
        RouteConfig::new(ROUTES[1], RouteMode::Broadcast),
        RouteConfig::new(ROUTES[2], RouteMode::Pubsub),
    ];
    if c & 0x10 != 0 {
        // The other policy on one route exercises the per-route override.
        let other = if drop { SlowConsumerPolicy::Close } else { SlowConsumerPolicy::Drop };
        config.route[1].slow_consumer = Some(other);
    }
    // Gaps are a loss only where nothing may be dropped and every request is honoured.
    let strict_gaps = !drop && c & 0x10 == 0 && !rate_limited;
    (config, strict_gaps, !rate_limited)
}

impl Driver {
    fn step(&mut self, input: &mut Choices<'_>) {
        let op = input.byte();
        let slot = input.below(SLOTS);
        match op % 16 {
            0 | 1 => self.connect(input, slot),
            2 => self.pubsub_op(input, slot, "subscribe"),
            3 => self.pubsub_op(input, slot, "unsubscribe"),
            4 | 5 => self.client_publish(input, slot),
            6 => self.api_publish(input),
            7 => self.http_publish(input),
            8 => self.client_close(slot),
            9 => self.eof(slot),
            10 | 11 => self.read(input, slot),
            12 => self.wait(input),
            13 => self.garbage(input, slot),
            14 => self.broker_in(input),
            _ => self.rare(input, slot),
        }
    }

    fn connect(&mut self, input: &mut Choices<'_>, slot: usize) {
        let how = input.byte();
        if self.slots[slot].is_some() {
            return;
        }
        let route = usize::from(how % 3);
        let deflate = how & 4 != 0;
        let id = self.hub.handle_accept(self.now, peer_addr(slot as u8 + 1));
        self.next_serial += 1;
        let deflater = deflate.then(|| Deflater::new(15, 1));
        let client = Client {
            id,
            serial: self.next_serial,
            route,
            stream: ServerStream::new(),
            upgraded: false,
            answers_pings: how & 8 == 0,
            replies_to_close: how & 16 == 0,
            trusted: self.trusted,
            sent_close: false,
            subscribed: BTreeSet::new(),
            last: BTreeMap::new(),
            subscribed_at: BTreeMap::new(),
            echoes: VecDeque::new(),
            deflater,
        };
        self.slots[slot] = Some(client);
        self.pump();
        let extra =
            if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
        let request = upgrade_request(ROUTES[route], extra);
        let bytes = request.as_bytes();
        // Half a request leaves a handshake pending, for the handshake timeout to find.
        let sent = if how & 32 != 0 { &bytes[..bytes.len() / 2] } else { bytes };
        self.client_sends(slot, sent);
        let pending = peek_output(&self.hub, id);
        let upgraded = pending.starts_with(b"HTTP/1.1 101");
        if let Some(client) = &mut self.slots[slot] {
            client.upgraded = upgraded;
        }
    }

    fn pubsub_op(&mut self, input: &mut Choices<'_>, slot: usize, op: &str) {
        let channel = input.below(CHANNELS.len());
        let max = self.hub.config().pubsub.max_subscriptions;
        let next_publish = self.publishes.len() as u64;
        let Some(client) = self.open_client(slot, 2) else { return };
        let with_id = client.serial % 2 == 0;
        let request = if with_id {
            format!("{{\"op\":\"{op}\",\"id\":7,\"channel\":\"{}\"}}", CHANNELS[channel])
        } else {
            format!("{{\"op\":\"{op}\",\"channel\":\"{}\"}}", CHANNELS[channel])
        };
        let subscribed = &mut client.subscribed;
        if op == "subscribe" {
            if subscribed.len() < max && subscribed.insert(channel) {
                client.subscribed_at.entry(CHANNELS[channel].to_owned()).or_default().push(next_publish);
            }
        } else {
            subscribed.remove(&channel);
        }
        self.send_message(slot, request.as_bytes());
    }

    fn client_publish(&mut self, input: &mut Choices<'_>, slot: usize) {
        let channel = input.below(CHANNELS.len());
        let size = [0, 10, 100, 1000][input.below(4)];
        let Some(client) = self.slots[slot].as_ref().filter(|c| c.upgraded && !c.sent_close) else { return };
        let serial = client.serial;
        match client.route {
            0 => {
                let payload = format!("e:{serial}:{}:{}", input.byte(), "x".repeat(size)).into_bytes();
                if let Some(client) = &mut self.slots[slot] {
                    client.echoes.push_back(payload.clone());
                }
                self.send_message(slot, &payload);
            }
            1 => {
                let number = self.record_publish(ROOM);
                let payload = format!("b:{number}:{}", "y".repeat(size));
                let accepted = self.accepted(|d| d.send_message(slot, payload.as_bytes()));
                self.settle_publish(number, accepted, ROOM, payload.as_bytes());
            }
            _ => {
                let number = self.record_publish(CHANNELS[channel]);
                let data = format!("{{\"n\":{number},\"pad\":\"{}\"}}", "z".repeat(size));
                let request = format!("{{\"op\":\"publish\",\"channel\":\"{}\",\"data\":{data}}}", CHANNELS[channel]);
                let accepted = self.accepted(|d| d.send_message(slot, request.as_bytes()));
                self.settle_publish(number, accepted, CHANNELS[channel], data.as_bytes());
            }
        }
    }

    /// Runs `send` and tells whether the hub accepted a publish from it (a client's message
    /// is refused on a connection the server is already closing).
    fn accepted(&mut self, send: impl FnOnce(&mut Self)) -> bool {
        let before = self.hub.metrics().publishes;
        send(self);
        let after = self.hub.metrics().publishes;
        assert!(after <= before + 1, "one message counted as {} publishes", after - before);
        after > before
    }

    /// An accepted publish must reach the broker; a refused one must reach nobody.
    fn settle_publish(&mut self, number: u64, accepted: bool, channel: &str, payload: &[u8]) {
        if accepted {
            self.expect_broker_publish(channel, payload);
        } else if let Some(publish) = self.publishes.get_mut(number as usize) {
            publish.audience.clear();
        }
    }

    fn api_publish(&mut self, input: &mut Choices<'_>) {
        let target = input.below(CHANNELS.len() + 1);
        let now = self.now;
        if target == CHANNELS.len() {
            let number = self.record_publish(ROOM);
            let payload = format!("b:{number}:api");
            let result = self.hub.broadcast(now, ROUTES[1], true, payload.as_bytes());
            assert!(result.is_ok(), "broadcast to the chat route refused: {result:?}");
            self.expect_broker_publish(ROOM, payload.as_bytes());
        } else {
            let number = self.record_publish(CHANNELS[target]);
            let data = format!("{{\"n\":{number}}}");
            let result = self.hub.publish(now, CHANNELS[target], &data);
            assert!(result.is_ok(), "publish refused: {result:?}");
            self.expect_broker_publish(CHANNELS[target], data.as_bytes());
        }
        self.pump();
    }

    fn http_publish(&mut self, input: &mut Choices<'_>) {
        let channel = input.below(CHANNELS.len());
        let right_key = input.flag();
        let number = right_key.then(|| self.record_publish(CHANNELS[channel]));
        let data = format!("{{\"n\":{}}}", number.unwrap_or(u64::MAX));
        let body = format!("{{\"channel\":\"{}\",\"data\":{data}}}", CHANNELS[channel]);
        let key = if right_key { API_KEY } else { "nope" };
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let id = self.hub.handle_accept(self.now, peer_addr(100));
        self.hub.handle_bytes(self.now, id, request.as_bytes());
        let out = take_output(&mut self.hub, id, usize::MAX);
        let items = ServerStream::new().read(&out);
        let status = match items.first() {
            Some(ServerItem::Response { status, .. }) => *status,
            other => panic!("POST /api/publish answered with {other:?}"),
        };
        let expected = if self.drained {
            status
        } else if right_key {
            202
        } else {
            403
        };
        assert_eq!(status, expected, "POST /api/publish status");
        let closed = self.pump_events();
        assert!(closed.contains(&id), "an HTTP connection closes once its response is written");
        if status == 202 {
            self.expect_broker_publish(CHANNELS[channel], data.as_bytes());
        } else if let Some(number) = number {
            // Refused: nobody may hear it.
            if let Some(publish) = self.publishes.get_mut(number as usize) {
                publish.audience.clear();
            }
        }
        self.pump();
    }

    fn client_close(&mut self, slot: usize) {
        let Some(client) = self.slots[slot].as_mut().filter(|c| c.upgraded && !c.sent_close) else { return };
        client.sent_close = true;
        client.subscribed.clear();
        let frame = client_frame(0x88, &[0x03, 0xe8], MASK);
        self.client_sends(slot, &frame);
    }

    fn eof(&mut self, slot: usize) {
        let Some(client) = &self.slots[slot] else { return };
        let id = client.id;
        self.hub.handle_eof(self.now, id);
        let closed = self.pump_events();
        assert!(closed.contains(&id), "handle_eof must close the connection at once");
        self.pump();
    }

    fn read(&mut self, input: &mut Choices<'_>, slot: usize) {
        let max = [1, 7, 100, 1500, usize::MAX][input.below(5)];
        let Some(client) = &self.slots[slot] else { return };
        let id = client.id;
        let bytes = take_output(&mut self.hub, id, max);
        let items = match &mut self.slots[slot] {
            Some(client) => client.stream.read(&bytes),
            None => return,
        };
        for item in items {
            self.on_item(slot, item);
        }
        self.pump();
    }

    fn wait(&mut self, input: &mut Choices<'_>) {
        let by = Duration::from_millis([10, 250, 1_000, 3_000, 25_000, 300_000][input.below(6)]);
        let end = self.now + by;
        let mut now = self.now;
        let mut spins = 0;
        while let Some(at) = self.hub.poll_timeout() {
            if at > end {
                break;
            }
            if at <= now {
                spins += 1;
                assert!(spins < 10_000, "poll_timeout stays at {at:?} past now: a busy loop");
            }
            now = now.max(at);
            self.now = now;
            self.hub.handle_timeout(now);
            self.pump();
            self.check();
        }
        self.now = end;
        self.hub.handle_timeout(end);
        self.pump();
    }

    fn garbage(&mut self, input: &mut Choices<'_>, slot: usize) {
        let len = input.below(40);
        let bytes = input.bytes(len).to_vec();
        if self.slots[slot].is_none() {
            return;
        }
        // Garbage can be a valid request; from here on the driver's model is only a guess.
        self.trusted = false;
        for client in self.slots.iter_mut().flatten() {
            client.trusted = false;
        }
        self.client_sends(slot, &bytes);
    }

    fn broker_in(&mut self, input: &mut Choices<'_>) {
        let target = input.below(CHANNELS.len() + 1);
        let (channel, payload, text) = if target == CHANNELS.len() {
            let number = self.record_publish(ROOM);
            (ROOM.to_owned(), format!("b:{number}:peer"), input.flag())
        } else {
            let number = self.record_publish(CHANNELS[target]);
            (CHANNELS[target].to_owned(), format!("{{\"n\":{number}}}"), true)
        };
        let envelope = Envelope {
            origin: Origin { node: "fuzz".to_owned(), worker: 2 },
            channel,
            text,
            payload: payload.into_bytes().into(),
        };
        // An envelope of our own must be ignored: it was delivered when published.
        let mut own = envelope.clone();
        own.origin.worker = 1;
        self.hub.handle_broker(self.now, &own);
        self.hub.handle_broker(self.now, &envelope);
        self.pump();
    }

    fn rare(&mut self, input: &mut Choices<'_>, slot: usize) {
        match input.byte() % 4 {
            0 if !self.drained => {
                self.drained = true;
                let deadline = self.now + Duration::from_secs(3);
                self.hub.shutdown(self.now, deadline);
                self.pump();
            }
            1 => {
                if self.open_client(slot, 2).is_none() {
                    return;
                }
                self.send_message(slot, b"{\"op\":\"presence\",\"id\":\"p\",\"channel\":\"red\"}");
            }
            2 => {
                if !self.slots[slot].as_ref().is_some_and(|c| c.upgraded && !c.sent_close) {
                    return;
                }
                let ping = client_frame(0x89, b"hi", MASK);
                self.client_sends(slot, &ping);
            }
            _ => {
                // A message split over two reads, with time passing between.
                let Some(client) = self.slots[slot].as_ref().filter(|c| c.upgraded && !c.sent_close) else { return };
                if client.route != 0 {
                    return;
                }
                let payload = format!("e:{}:split", client.serial).into_bytes();
                let frame = client_frame(0x81, &payload, MASK);
                if let Some(client) = &mut self.slots[slot] {
                    client.echoes.push_back(payload);
                }
                let (a, b) = frame.split_at(3);
                self.client_sends(slot, a);
                self.now += Duration::from_millis(5);
                self.client_sends(slot, b);
            }
        }
    }

    /// The client in `slot` if it is upgraded, on `route`, and has not sent its close.
    fn open_client(&mut self, slot: usize, route: usize) -> Option<&mut Client> {
        self.slots[slot].as_mut().filter(|c| c.upgraded && !c.sent_close && c.route == route)
    }

    /// Sends one data message from the client in `slot`, compressed when agreed.
    fn send_message(&mut self, slot: usize, payload: &[u8]) {
        let Some(client) = &mut self.slots[slot] else { return };
        let frame = match (&mut client.deflater, client.stream.deflate()) {
            (Some(deflater), true) if payload.len() > 20 => {
                let mut compressed = Vec::new();
                deflater.compress_message(payload, &mut compressed);
                client_frame(0xc1, &compressed, MASK)
            }
            _ => client_frame(0x81, payload, MASK),
        };
        self.client_sends(slot, &frame);
    }

    /// Bytes from the client in `slot`.
    fn client_sends(&mut self, slot: usize, bytes: &[u8]) {
        let Some(client) = &self.slots[slot] else { return };
        self.hub.handle_bytes(self.now, client.id, bytes);
        self.pump();
    }

    fn record_publish(&mut self, channel: &str) -> u64 {
        let audience = self
            .slots
            .iter()
            .flatten()
            .filter(|c| c.upgraded && !c.sent_close)
            .filter(|c| {
                if channel == ROOM {
                    c.route == 1
                } else {
                    c.route == 2
                        && CHANNELS.iter().position(|n| *n == channel).is_some_and(|i| c.subscribed.contains(&i))
                }
            })
            .map(|c| c.serial)
            .collect();
        self.publishes.push(Published { channel: channel.to_owned(), audience });
        (self.publishes.len() - 1) as u64
    }

    /// Every accepted publish goes to the broker exactly once, with the same payload.
    fn expect_broker_publish(&mut self, channel: &str, payload: &[u8]) {
        self.pump();
        if !self.trusted {
            // Garbage may have published too; envelopes no longer match one to one.
            self.broker_out.clear();
            return;
        }
        let Some(envelope) = self.broker_out.pop_front() else {
            panic!("a publish on {channel} never reached the broker");
        };
        assert_eq!(envelope.channel, channel, "broker envelope channel");
        assert_eq!(&envelope.payload[..], payload, "broker envelope payload");
        assert_eq!(envelope.origin, Origin { node: "fuzz".to_owned(), worker: 1 }, "broker envelope origin");
    }

    fn on_item(&mut self, slot: usize, item: ServerItem) {
        let strict = self.strict_gaps;
        let publishes = &self.publishes;
        let Some(client) = &mut self.slots[slot] else { return };
        let reply = match item {
            ServerItem::Response { status, .. } => {
                assert_eq!(status == 101, client.upgraded, "the driver misread the handshake's outcome");
                None
            }
            ServerItem::Message { data, .. } => {
                heard_message(client, publishes, &data, strict);
                None
            }
            ServerItem::Ping(payload) => {
                (client.answers_pings && !client.sent_close).then(|| client_frame(0x8a, &payload, MASK))
            }
            ServerItem::Pong(_) => None,
            ServerItem::Close(_) => {
                let reply = client.replies_to_close && !client.sent_close;
                client.sent_close = true;
                client.subscribed.clear();
                reply.then(|| client_frame(0x88, &[0x03, 0xe8], MASK))
            }
        };
        if let Some(frame) = reply {
            self.client_sends(slot, &frame);
        }
    }

    /// Drains events and broker commands, updating the driver's view.
    fn pump(&mut self) {
        let _ = self.pump_events();
    }

    /// Drains events; returns the connections the hub closed.
    fn pump_events(&mut self) -> Vec<ConnId> {
        let mut closed = Vec::new();
        while let Some(event) = self.hub.poll_event() {
            match event {
                Event::Close(id) => {
                    let slot = self.slots.iter().position(|c| c.as_ref().is_some_and(|c| c.id == id));
                    if let Some(slot) = slot {
                        self.slots[slot] = None;
                    }
                    assert!(!closed.contains(&id), "two Close events for {id:?}");
                    closed.push(id);
                }
                Event::Transmit(_) => {}
            }
        }
        while let Some(command) = self.hub.poll_broker() {
            match command {
                BrokerCommand::Publish(envelope) => self.broker_out.push_back(envelope),
                BrokerCommand::Subscribe(channel) => {
                    assert!(self.broker_channels.insert(channel.clone()), "broker Subscribe({channel}) twice");
                }
                BrokerCommand::Unsubscribe(channel) => {
                    assert!(self.broker_channels.remove(&channel), "broker Unsubscribe({channel}) without Subscribe");
                }
            }
        }
        closed
    }

    /// The invariants that hold after every step.
    fn check(&mut self) {
        let live: Vec<&Client> = self.slots.iter().flatten().collect();
        let m = self.hub.metrics();
        // HTTP publish connections close within their step, so every held connection is a client's.
        assert_eq!(self.hub.connection_count(), live.len(), "connection_count vs clients the driver holds");
        assert_eq!(m.connections_open as usize, live.len(), "connections_open gauge");
        let upgraded = live.iter().filter(|c| c.upgraded).count() as u64;
        let by_route: u64 = m.connections_by_route.values().sum();
        assert_eq!(by_route, upgraded, "route gauges vs upgraded clients: {:?}", m.connections_by_route);
        let queued: usize = live.iter().map(|c| self.hub.queued_bytes(c.id)).sum();
        assert_eq!(m.queued_bytes as usize, queued, "queued_bytes gauge vs the connections' queues");
        assert!(
            m.channels <= m.subscriptions,
            "more channels ({}) than subscriptions ({})",
            m.channels,
            m.subscriptions
        );
        assert_eq!(self.broker_channels.len() as u64, m.channels, "broker subscriptions vs the hub's channels");
        for client in &live {
            let queued = self.hub.queued_bytes(client.id);
            // Fan-out, echoes and replies stop at the bound (one frame may start an empty
            // queue past it); pongs to a ping flood may reach twice the bound before a close.
            let bound = 2 * self.queue_limit + MAX_DATA_FRAME + CONTROL_SLACK;
            assert!(queued <= bound, "{:?} holds {queued} queued bytes, bound {bound}", client.id);
        }
        if self.strict_gaps && m.messages_dropped != self.last_drop_count {
            panic!("messages dropped under slow_consumer = close");
        }
        self.last_drop_count = m.messages_dropped;
        // Unmatched envelopes mean the hub published something nobody asked for.
        if !self.trusted {
            self.broker_out.clear();
        }
        assert!(self.broker_out.is_empty(), "unexpected broker publishes: {:?}", self.broker_out);
        if live.is_empty() {
            assert_hub_empty(&self.hub);
        }
    }

    /// Everyone disconnects; nothing may be left behind, and an empty hub asks for no wake-up.
    fn everyone_leaves(&mut self) {
        for slot in 0..SLOTS {
            self.eof(slot);
        }
        self.check();
        assert_hub_empty(&self.hub);
        assert!(self.broker_channels.is_empty(), "broker still subscribed to {:?}", self.broker_channels);
        let end = self.now + Duration::from_secs(3600);
        self.now = advance(&mut self.hub, self.now, end, &mut |hub| {
            assert!(hub.poll_event().is_none(), "events from an empty hub");
        });
        if !self.drained {
            assert_eq!(self.hub.poll_timeout(), None, "an empty hub still asks to be woken");
        }
    }
}

/// Checks one data message a client read, by its route's rules.
fn heard_message(client: &mut Client, publishes: &[Published], data: &[u8], strict: bool) {
    match client.route {
        0 => {
            if let Some(position) = client.echoes.iter().position(|e| e == data) {
                // Under the drop policy an echo past the queue bound is dropped; else none is.
                assert!(position == 0 || !client.trusted || !strict, "an echo was lost or reordered");
                client.echoes.drain(..=position);
            } else {
                assert!(!client.trusted, "an echo of something never sent: {:?}", String::from_utf8_lossy(data));
            }
        }
        1 => {
            let text = String::from_utf8_lossy(data);
            let number = text.strip_prefix("b:").and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok());
            match number {
                Some(number) => heard(client, publishes, ROOM, number, 0, strict),
                None => assert!(!client.trusted, "a room message nobody sent: {text:?}"),
            }
        }
        _ => {
            let (kind, members) = pubsub_frame(data);
            if kind == "message" {
                let field = |name: &str| members.get(name).map_or("", |raw| raw.get());
                let channel = serde_json::from_str::<String>(field("channel")).unwrap_or_default();
                let seq = serde_json::from_str::<u64>(field("seq")).unwrap_or_default();
                match serde_json::from_str::<Numbered>(field("data")).ok().and_then(|d| d.n) {
                    Some(number) => heard(client, publishes, &channel, number, seq, strict),
                    None => assert!(!client.trusted, "a message nobody published: {:?}", String::from_utf8_lossy(data)),
                }
            }
        }
    }
}

/// The `data` the driver publishes: `{"n": <publish number>, ...}`.
#[derive(serde::Deserialize)]
struct Numbered {
    n: Option<u64>,
}

/// Checks one publish heard by `client`: it was meant for it, on that channel, in order, and
/// (where nothing may be lost) with nothing skipped.
fn heard(client: &mut Client, publishes: &[Published], channel: &str, number: u64, seq: u64, strict: bool) {
    if !client.trusted {
        return;
    }
    let Some(publish) = publishes.get(number as usize) else {
        panic!("message {number} was never published");
    };
    assert_eq!(publish.channel, channel, "message {number} arrived on the wrong channel");
    assert!(publish.audience.contains(&client.serial), "message {number} on {channel} reached a non-subscriber");
    let previous = client.last.get(channel).copied();
    if let Some((last, last_seq)) = previous {
        assert!(number > last, "message {number} on {channel} after {last}: out of order or twice");
        let points = client.subscribed_at.get(channel).map_or(&[][..], Vec::as_slice);
        let resubscribed = points.iter().any(|&at| last < at && at <= number);
        assert!(seq == 0 || seq > last_seq || resubscribed, "seq {seq} on {channel} after {last_seq}");
    }
    if strict {
        let from = previous.map_or(0, |(last, _)| last + 1);
        for skipped in from..number {
            let p = &publishes[skipped as usize];
            assert!(
                !(p.channel == channel && p.audience.contains(&client.serial)),
                "message {skipped} on {channel} was lost before {number}"
            );
        }
    }
    client.last.insert(channel.to_owned(), (number, seq));
}

/// Bytes queued for `id`, without writing them.
fn peek_output(hub: &Hub, id: ConnId) -> Vec<u8> {
    let mut slices = [IoSlice::new(&[]); 4];
    let n = hub.transmit(id, &mut slices);
    slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
}
