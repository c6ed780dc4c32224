//! The small fuzz targets: one entry point each, building a hub, feeding it the decoded input
//! and checking what comes out.

use std::collections::BTreeSet;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use super::client::{MASK, ServerItem, ServerStream, client_frame, pubsub_frame, upgrade_request};
use super::rig::{Opened, Rig};
use super::{ADMIN_TOKEN, API_KEY, Choices, ROUTES};
use crate::config::{Config, Size};
use crate::deflate::Deflater;
use crate::hub::Hub;
use crate::redis::LinkConn;
use crate::{api, pubsub};

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
        config.server.trusted_proxies =
            crate::proxy::Cidr::new(std::net::IpAddr::from([127, 0, 0, 0]), 8).into_iter().collect();
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
    let _ = rig.hub.handle_publish(now, "c", "{\"x\":1}");
    for path in &paths {
        let _ = rig.hub.handle_broadcast(now, path, true, b"hi");
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
    config.admin.enabled = true;
    ADMIN_TOKEN.clone_into(&mut config.admin.token);
    let mut rig = Rig::new(config, t0);
    let mut subscriber = rig.open(2, "/ws", None);
    rig.send(subscriber.id, &client_frame(0x81, b"{\"op\":\"subscribe\",\"channel\":\"news\"}", MASK));
    let mut member = rig.open(3, "/chat", None);
    let mut admin_without_token = false;
    let request = if mode & 0x7f == 0 {
        input.rest().to_vec()
    } else {
        let method = ["GET", "POST", "PUT", "HEAD", "DELETE", "get"][input.below(6)];
        let path = [
            "/api/publish",
            "/healthz",
            "/metrics",
            "/api/stats",
            "/ws",
            "/nope",
            "/api/publish?x=1",
            "/admin",
            "/admin/api/publish",
            "/admin/api/disconnect",
            "/admin/api/nodes",
            "/admin/api/channels?contains=ne&min_subscribers=1&limit=2",
            "/admin/api/connection?id=fuzz-node-0-0.0",
            "/admin/api/history?channel=news",
            "/admin/api/presence?channel=news",
            "/admin/api/config",
        ][input.below(16)];
        let auth_choice = input.below(6);
        admin_without_token = path.starts_with("/admin/api/") && auth_choice != 5;
        let auth = match auth_choice {
            5 => format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
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
                assert!(request.starts_with(b"POST "), "202 answers only a publish or a disconnect");
            }
            if admin_without_token {
                assert!(*status >= 400, "the admin API answered {status} without its token: {head}");
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
/// Layout: a flag (a Redis Cluster: the slot map reader's connection and one link per master
/// the replies name, each op then picking one of the sockets the hub asked for), then one op
/// byte at a time (with its operands) until the input ends.
pub fn resp(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let cluster = input.flag();
    let mut config = Config::default();
    config.broker.kind =
        if cluster { crate::config::BrokerKind::RedisCluster } else { crate::config::BrokerKind::Redis };
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
    rig.pump();
    link.pump(&mut rig);
    let mut steps = 0;
    while !input.is_empty() && steps < 300 {
        steps += 1;
        let op = input.byte();
        let which = if cluster {
            let known: Vec<LinkConn> = link.connecting.union(&link.open).copied().collect();
            known.get(input.below(known.len().max(1))).copied().unwrap_or(LinkConn::MAP)
        } else if op & 0x80 == 0 {
            LinkConn::Subscriber
        } else {
            LinkConn::Command
        };
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
                    rig.hub.handle_redis_written(rig.now, which, n.min(usize::from(input.u16())));
                }
            }
        }
        rig.pump();
        link.pump(&mut rig);
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
    rig.pump();
    link.pump(&mut rig);
    rig.assert_empty();
}

/// The shell's side of the Redis link: which sockets are connecting and which are open.
#[derive(Debug, Default)]
struct LinkSockets {
    connecting: BTreeSet<LinkConn>,
    open: BTreeSet<LinkConn>,
}

impl LinkSockets {
    /// Acts on what the hub asked of the shell: sockets to open and to drop, in order.
    fn pump(&mut self, rig: &mut Rig) {
        for (which, open) in std::mem::take(&mut rig.redis) {
            if open {
                assert!(!self.open.contains(&which), "the link asked to open {which:?}, which is open");
                self.connecting.insert(which);
            } else {
                self.connecting.remove(&which);
                self.open.remove(&which);
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

/// `pusher`: the Pusher protocol's parsers on arbitrary text: a client message, a connect URL,
/// a presence `channel_data`, and the HTTP API's route, query string and trigger bodies. What
/// parses must hold what the limits allow and encode back to JSON; what is refused must say so
/// in a bounded message and map to a status or close code the protocol has.
///
/// Layout: a flags byte (bit 0: small limits), then the text (lossy UTF-8), fed whole to every
/// parser.
pub fn pusher(_t0: Instant, data: &[u8]) {
    use crate::pusher::http_api::{self, ApiError};
    use crate::pusher::protocol::{self, ClientMessage, Limits};

    /// Longest refusal message: client text in one is clipped, so anything longer is a bug.
    const MAX_MESSAGE: usize = 512;

    let mut input = Choices::new(data);
    let flags = input.byte();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let limits = if flags & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_event_bytes: 16,
            max_event_name_bytes: 12,
            max_channel_name_bytes: 12,
            max_channels_per_event: 2,
            max_batch_events: 2,
            max_presence_member_bytes: 16,
        }
    };

    match protocol::parse_client_message(&text, &limits) {
        Ok(ClientMessage::Subscribe { channel, .. } | ClientMessage::Unsubscribe { channel }) => {
            assert!(!channel.is_empty() && channel.len() <= limits.max_channel_name_bytes, "channel {channel:?}");
        }
        Ok(ClientMessage::ClientEvent { event, channel, data }) => {
            assert!(event.starts_with("client-") && event.len() <= limits.max_event_name_bytes, "event {event:?}");
            assert!(channel.len() <= limits.max_channel_name_bytes, "channel {channel:?}");
            assert!(data.as_ref().is_none_or(|d| d.get().len() <= limits.max_event_bytes), "data over the limit");
            // Relayed and parsed again, the event is the same, its data byte for byte.
            let relay = protocol::client_event_relay(&event, &channel, data.as_deref(), None);
            assert_json(&relay);
            match protocol::parse_client_message(&relay, &limits) {
                Ok(ClientMessage::ClientEvent { event: e, channel: c, data: d }) => {
                    assert_eq!((e, c), (event, channel), "the relay changed the event");
                    assert_eq!(
                        d.as_deref().map(|d| d.get()),
                        data.as_deref().map(|d| d.get()),
                        "the relay changed data"
                    );
                }
                other => panic!("a relayed client event parses as {other:?}: {relay}"),
            }
        }
        Ok(ClientMessage::UnknownProtocolEvent { event }) => {
            assert!(event.len() <= limits.max_event_name_bytes, "event {event:?}");
        }
        Ok(ClientMessage::Ping | ClientMessage::Pong | ClientMessage::Signin { .. }) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() <= MAX_MESSAGE, "unbounded error message: {message}");
            assert_json(&protocol::error(Some(protocol::close_code::CLIENT_EVENT_REJECTED), &message, e.channel()));
        }
    }

    for target in [text.clone(), format!("/app/key?protocol={text}"), format!("/app/{text}")] {
        match protocol::parse_connect_url(&target) {
            Ok(request) => {
                assert!(protocol::PROTOCOL_VERSIONS.contains(&request.protocol), "protocol {}", request.protocol);
                assert!(!request.key.is_empty() && !request.key.contains('/'), "key {:?}", request.key);
            }
            Err(e) => {
                assert!(matches!(e.code(), 4005 | 4007 | 4008), "close code {}", e.code());
                assert!(e.to_string().len() <= MAX_MESSAGE, "unbounded error message: {e}");
            }
        }
    }

    match protocol::parse_channel_data(&text, limits.max_presence_member_bytes) {
        Ok(member) => {
            assert!(!member.user_id.as_str().is_empty(), "empty user id");
            assert!(member.user_id.as_str().len() <= protocol::MAX_USER_ID_BYTES, "user id over the limit");
            let info = member.user_info.as_deref();
            assert!(info.is_none_or(|i| i.get().len() <= limits.max_presence_member_bytes), "user_info over the limit");
            assert_json(&protocol::member_added("presence-c", &member.user_id, info));
            let presence = protocol::PresenceData::new([&member, &member]);
            assert_eq!(presence.count(), 1, "one user, listed twice");
            assert_json(&protocol::subscription_succeeded("presence-c", Some(&presence)));
        }
        Err(e) => assert!(e.to_string().len() <= MAX_MESSAGE, "unbounded error message: {e}"),
    }

    let check_refusal = |e: &ApiError| {
        assert!(matches!(e.status(), 400 | 404 | 405 | 413), "status {}", e.status());
        assert!(e.to_string().len() <= MAX_MESSAGE, "unbounded error message: {e}");
        assert_json(&e.to_json());
    };
    let check_trigger = |trigger: &http_api::Trigger| {
        assert!(
            (1..=limits.max_channels_per_event).contains(&trigger.channels.len()),
            "{} channels",
            trigger.channels.len()
        );
        assert!(trigger.data.len() <= limits.max_event_bytes, "data over the limit");
        assert!(trigger.name.len() <= limits.max_event_name_bytes, "name over the limit");
        for channel in &trigger.channels {
            assert_json(&protocol::event(channel, &trigger.name, &trigger.data));
        }
    };
    match http_api::parse_trigger(text.as_bytes(), &limits) {
        Ok(trigger) => check_trigger(&trigger),
        Err(e) => check_refusal(&e),
    }
    match http_api::parse_batch(text.as_bytes(), &limits) {
        Ok(batch) => {
            assert!(batch.len() <= limits.max_batch_events, "{} events in a batch", batch.len());
            batch.iter().for_each(check_trigger);
        }
        Err(e) => check_refusal(&e),
    }
    for method in ["GET", "POST"] {
        for path in [text.clone(), format!("/apps/1/channels/{text}")] {
            match http_api::route(method, &path, &limits) {
                Ok(route) => assert!(!route.app_id().is_empty(), "an empty app id"),
                Err(e) => check_refusal(&e),
            }
        }
    }
    match http_api::parse_query(&text) {
        Ok(pairs) => {
            assert!(pairs.len() <= http_api::MAX_QUERY_PARAMS, "{} query parameters", pairs.len());
            match http_api::parse_channels_query(&pairs) {
                Ok(query) => {
                    assert_json(&http_api::channels_response(query.info, [("presence-c", Default::default())]))
                }
                Err(e) => check_refusal(&e),
            }
            if let Err(e) = http_api::parse_channel_query("presence-c", &pairs) {
                check_refusal(&e);
            }
        }
        Err(e) => check_refusal(&e),
    }
}

/// `pusher_hub`: three Pusher connections (two users, one on two sockets) driven by fuzzed
/// messages: arbitrary text, or well-formed subscribes (signed or not, presence or not) and
/// client events on a few channels, with time passing and connections ending. Every server
/// message must be JSON, presence counts must hold, and when every connection is gone the hub
/// and its directory must be empty.
pub fn pusher_hub(t0: Instant, data: &[u8]) {
    use crate::pusher::sign::auth_signature;

    const CHANNELS: [&str; 4] = ["presence-a", "private-b", "public-c", "presence-cache-d"];
    let toml = r#"
[heartbeat]
pong_timeout = "2s"
[pusher]
activity_timeout = "5s"
max_presence_members = 2
max_client_events_per_second = 3
[[pusher.app]]
id = "1"
key = "k"
secret = "s"
client_events = true
subscription_count = true
"#;
    let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("the target's config: {e}"));
    let mut rig = Rig::new(config, t0);
    let mut input = Choices::new(data);
    let mut conns = Vec::new();
    for (peer, user) in [(1, "7"), (2, "\"u\""), (3, "7")] {
        let id = rig.accept(peer);
        rig.send(id, upgrade_request("/app/k?protocol=7", "").as_bytes());
        let mut opened = Opened { id, stream: ServerStream::new() };
        let items = opened.stream.read(&rig.read_all(id));
        let socket_id = items
            .iter()
            .find_map(|item| match item {
                ServerItem::Message { data, .. } => {
                    let message: serde_json::Value = serde_json::from_slice(data).ok()?;
                    let established: serde_json::Value = serde_json::from_str(message["data"].as_str()?).ok()?;
                    established["socket_id"].as_str().map(str::to_owned)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no connection_established: {items:?}"));
        conns.push((opened, socket_id, user));
    }
    while !input.is_empty() {
        let op = input.byte();
        let which = usize::from(op >> 5) % conns.len();
        let (opened, socket_id, user) = &mut conns[which];
        if rig.is_closed(opened.id) {
            continue;
        }
        let channel = CHANNELS[usize::from(input.byte()) % CHANNELS.len()];
        let message = match op % 8 {
            0 => {
                let len = usize::from(input.byte());
                String::from_utf8_lossy(input.bytes(len)).into_owned()
            }
            1 | 2 => {
                let channel_data = format!("{{\"user_id\":{user},\"user_info\":{{\"n\":{}}}}}", input.byte());
                let presence = channel.starts_with("presence-");
                let signed = auth_signature("s", socket_id, channel, presence.then_some(channel_data.as_str()));
                let auth = if op % 8 == 1 { format!("k:{signed}") } else { "k:00".to_owned() };
                serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}}).to_string()
            }
            3 => serde_json::json!({"event":"pusher:unsubscribe","data":{"channel":channel}}).to_string(),
            4 => serde_json::json!({"event":"client-x","channel":channel,"data":{"n":input.byte()}}).to_string(),
            5 => {
                rig.advance(Duration::from_millis(u64::from(input.byte()) * 40));
                continue;
            }
            6 => {
                let id = opened.id;
                rig.eof(id);
                continue;
            }
            _ => r#"{"event":"pusher:ping","data":{}}"#.to_owned(),
        };
        let id = opened.id;
        rig.send(id, &client_frame(0x81, message.as_bytes(), MASK));
        for (other, _, _) in conns.iter_mut() {
            if rig.is_closed(other.id) {
                continue;
            }
            for item in other.stream.read(&rig.read_all(other.id)) {
                if let ServerItem::Message { data, .. } = item {
                    let message: serde_json::Value = serde_json::from_slice(&data).unwrap_or_else(|e| {
                        panic!("a server message is not JSON ({e}): {:?}", String::from_utf8_lossy(&data))
                    });
                    if message["event"] == "pusher_internal:subscription_succeeded"
                        && let Some(presence) =
                            message["data"].as_str().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                        && let Some(count) = presence["presence"]["count"].as_u64()
                    {
                        // Users 7 and "u": at most two, whatever the sockets did.
                        assert!((1..=2).contains(&count), "presence count {count}: {presence}");
                    }
                }
            }
        }
    }
    for (opened, _, _) in &conns {
        if !rig.is_closed(opened.id) {
            rig.eof(opened.id);
        }
    }
    rig.assert_empty();
}

/// The namespaces and keys of the `native` target.
const NATIVE_CONFIG: &str = r#"
[heartbeat]
idle_timeout = "0s"
[auth]
hmac_secret = "fuzz-secret"
expire_grace = "1s"
[[namespace]]
name = "h"
subscribe = "anyone"
publish = "subscribers"
presence = true
join_leave = true
history_size = 4
history_ttl = "3s"
recover = true
max_recover = 2
[[namespace]]
name = "t"
subscribe = "token"
publish = "authenticated"
"#;

/// A token signed with the `native` target's secret (the fuzzer cannot forge one).
fn native_token(claims: &str) -> String {
    crate::auth::jwt::sign_hs256("fuzz-secret", claims)
}

/// `native`: the native protocol with tokens, namespaces, history and join/leave. Arbitrary
/// tokens go to the JWT verifier; lines on two connections (one authenticated by a query
/// token) and clock steps drive the hub. `$GOOD`, `$SOON` and `$SUB` in a line become valid
/// tokens (a user's, one expiring in a second, and a subscription token for `t:x`).
///
/// Layout: a flags byte, then text; lines starting with `>` go to the second connection, a
/// line `~` advances the clock by a second.
pub fn native(t0: Instant, data: &[u8]) {
    let mut input = Choices::new(data);
    let flags = input.byte();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let keys = crate::auth::keys::KeySet::new("fuzz-secret", &[]).unwrap_or_default();
    for line in text.split('\n') {
        // Whatever the text, verification answers without panicking.
        let _ = crate::auth::jwt::verify(line, &keys, &crate::auth::jwt::Rules::default(), 1_800_000_000);
    }
    let config = Config::from_toml(NATIVE_CONFIG).unwrap_or_else(|e| panic!("the native fuzz config: {e}"));
    let mut rig = Rig::new(config, t0);
    rig.hub.handle_wall_clock(t0, 1_800_000_000_000);
    let exp = 1_800_000_000 + 3600;
    let good = native_token(&format!(r#"{{"sub":"u1","exp":{exp},"info":{{"n":1}},"channels":["h:a"]}}"#));
    let soon = native_token(r#"{"sub":"u1","exp":1800000001}"#);
    let sub = native_token(&format!(r#"{{"sub":"u1","channel":"t:x","exp":{exp}}}"#));
    let query = match flags & 3 {
        0 => String::new(),
        1 => format!("?token={good}"),
        2 => format!("?token={soon}"),
        _ => "?token=garbage".to_owned(),
    };
    let mut one = rig.open(1, &format!("/ws{query}"), None);
    let mut two = rig.open(2, "/ws", None);
    for line in text.split('\n') {
        if line == "~" {
            rig.advance(Duration::from_secs(1));
            continue;
        }
        let (target, line) = match line.strip_prefix('>') {
            Some(rest) => (two.id, rest),
            None => (one.id, line),
        };
        let line = line.replace("$GOOD", &good).replace("$SOON", &soon).replace("$SUB", &sub);
        rig.send(target, &client_frame(0x81, line.as_bytes(), MASK));
        if flags & 4 != 0 {
            rig.hub.handle_publish(rig.now, "h:a", "{\"from\":\"api\"}").ok();
            rig.pump();
        }
    }
    for (id, stream) in [(one.id, &mut one.stream), (two.id, &mut two.stream)] {
        let items = stream.read(&rig.read_all(id));
        check_route_output("/ws", &items);
    }
    rig.eof(one.id);
    rig.eof(two.id);
    rig.assert_empty();
}
