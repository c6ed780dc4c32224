//! `hub_ops`: the operation-sequence driver. It keeps a model of what each client should hear
//! (the invariants it checks against the hub after every step are in `invariants`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IoSlice;
use std::time::{Duration, Instant};

use super::client::{MASK, ServerItem, ServerStream, client_frame, upgrade_request};
use super::rig::{peer_addr, take_output};
use super::{API_KEY, Choices, ROUTES};
use crate::broker::{Envelope, Origin};
use crate::config::{Config, RouteConfig, RouteMode, Size, SlowConsumerPolicy};
use crate::deflate::Deflater;
use crate::hub::{ConnId, Hub};

mod invariants;

/// Connection slots the `hub_ops` driver juggles.
const SLOTS: usize = 6;
/// Pub/sub channels the `hub_ops` driver uses.
const CHANNELS: [&str; 3] = ["red", "green", "blue"];
/// The broadcast route's room, as envelopes name it.
const ROOM: &str = "route:/chat";

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
    /// The hub's last `Output::Timeout`.
    timeout: Option<Instant>,
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
        timeout: None,
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
            let result = self.hub.handle_broadcast(now, ROUTES[1], true, payload.as_bytes());
            assert!(result.is_ok(), "broadcast to the chat route refused: {result:?}");
            self.expect_broker_publish(ROOM, payload.as_bytes());
        } else {
            let number = self.record_publish(CHANNELS[target]);
            let data = format!("{{\"n\":{number}}}");
            let result = self.hub.handle_publish(now, CHANNELS[target], &data);
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
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let id = self.hub.handle_accept(self.now, peer_addr(100));
        self.hub.handle_bytes(self.now, id, request.as_bytes());
        let out = take_output(&mut self.hub, self.now, id, usize::MAX);
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
        let bytes = take_output(&mut self.hub, self.now, id, max);
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
        self.pump();
        while let Some(at) = self.timeout {
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
                self.hub.handle_shutdown(self.now, deadline);
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
}

/// Bytes queued for `id`, without writing them.
fn peek_output(hub: &Hub, id: ConnId) -> Vec<u8> {
    let mut slices = [IoSlice::new(&[]); 4];
    let n = hub.transmit(id, &mut slices);
    slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
}
