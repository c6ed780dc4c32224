//! A deterministic cluster simulation: several hubs (workers) joined by an in-memory broker,
//! clients with seeded behaviour (good, slow, stalled, silent; subscribe churn, bursts,
//! disconnects and reconnects) and a simulated clock that jumps to the next wake-up.
//!
//! Checked across hubs: a message reaches only subscribers, at most once, in publish order per
//! publisher; a client that keeps up (reads everything, answers pings) is never closed and
//! misses nothing; every message a hub drops is one some subscriber missed; nothing is left
//! once everyone has gone.
//!
//! A failing seed is printed with the command that replays it alone:
//! `SIM_SEED=<seed> cargo test -p switchboard-core --test simulation`.
//! `SIM_SEEDS=<n>` runs n seeds (default 1000 in release, 200 in debug).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use switchboard_core::config::{RouteConfig, RouteMode, Size, SlowConsumerPolicy};
use switchboard_core::fuzzing::{
    MASK, ServerItem, ServerStream, assert_hub_empty, client_frame, peer_addr, take_output, upgrade_request,
};
use switchboard_core::{BrokerCommand, Config, ConnId, Envelope, Hub, Output};
use switchboard_testkit::origin;

const HUBS: usize = 3;
/// Client slots; each slot connects, lives, leaves and comes back as a new client.
const SLOTS: usize = 12;
const CHANNELS: [&str; 4] = ["a", "b", "c", "d"];
const ROOM: &str = "route:/chat";
/// Simulated time a seed runs for before everyone leaves.
const RUN_FOR: Duration = Duration::from_secs(40);
const QUEUE_LIMIT: usize = 2048;

/// A tiny seeded PRNG (SplitMix64): deterministic, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        switchboard_core::fuzzing::splitmix64(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Reads everything at once and answers pings: must never be closed or miss a message.
    Good,
    /// Reads a little at a time.
    Slow,
    /// Stops reading for long stretches.
    Stalled,
    /// Reads, but never answers a ping.
    Silent,
}

/// Which route a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Pub/sub, slow consumers closed.
    Ws,
    /// Pub/sub, slow consumers' messages dropped.
    WsDrop,
    /// The broadcast room.
    Chat,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Ws => "/ws",
            Self::WsDrop => "/ws-drop",
            Self::Chat => "/chat",
        }
    }
}

#[derive(Debug)]
struct Client {
    serial: u64,
    hub: usize,
    id: ConnId,
    route: Route,
    behaviour: Behaviour,
    stream: ServerStream,
    subscribed: BTreeSet<usize>,
    sent_close: bool,
    next_action: Instant,
    stalled_until: Option<Instant>,
    received: BTreeSet<u64>,
    /// Per (channel, publisher): the publisher's counter of the last message heard.
    last_by_publisher: BTreeMap<(String, u64), u64>,
    /// This client's own publish counter.
    published: u64,
}

/// A message and who had to hear it: subscribers of the origin hub at publish time, and of
/// each other hub when the broker handed it over.
#[derive(Debug)]
struct Published {
    channel: String,
    audience: BTreeSet<u64>,
}

/// The in-memory broker: which hubs want which channels, and envelopes in flight (FIFO per
/// origin, each with its own small latency).
#[derive(Debug, Default)]
struct Broker {
    subscriptions: Vec<BTreeSet<String>>,
    in_flight: VecDeque<(Instant, usize, Envelope)>,
    last_due: Vec<Option<Instant>>,
}

struct Cluster {
    rng: Rng,
    hubs: Vec<Hub>,
    /// Each hub's last `Output::Timeout`.
    timeouts: Vec<Option<Instant>>,
    now: Instant,
    slots: Vec<Option<Client>>,
    /// When an empty slot connects again.
    reconnect_at: Vec<Instant>,
    next_serial: u64,
    publishes: Vec<Published>,
    broker: Broker,
    /// Messages subscribers missed, summed as clients leave (for the drop accounting).
    missed: u64,
    /// How many publishes the hubs accepted (each counted once, by its origin).
    accepted: u64,
    api_counter: u64,
    /// Messages clients heard.
    heard: u64,
    /// Sockets the clients closed themselves, whose Close event is still to come.
    hung_up: BTreeSet<(usize, ConnId)>,
}

fn config() -> Config {
    let mut config = Config::default();
    config.limits.send_queue_bytes = Size(QUEUE_LIMIT as u64);
    config.limits.slow_consumer = SlowConsumerPolicy::Close;
    config.rate_limit.messages_per_second = 0.0;
    config.rate_limit.bytes_per_second = Size(0);
    config.heartbeat.ping_interval = Duration::from_secs(5);
    config.heartbeat.pong_timeout = Duration::from_secs(8);
    config.heartbeat.idle_timeout = Duration::ZERO;
    config.compression.min_bytes = Size(128);
    let mut drop = RouteConfig::new("/ws-drop", RouteMode::Pubsub);
    drop.slow_consumer = Some(SlowConsumerPolicy::Drop);
    config.route =
        vec![RouteConfig::new("/ws", RouteMode::Pubsub), drop, RouteConfig::new("/chat", RouteMode::Broadcast)];
    config
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let t0 = origin();
        let mut rng = Rng(seed);
        let reconnect_at = (0..SLOTS).map(|_| t0 + rng.millis(0, 2_000)).collect();
        Self {
            rng,
            hubs: (0..HUBS)
                .map(|w| Hub::new(config(), "sim").expect("valid config").with_worker(w as u32).with_workers(HUBS))
                .collect(),
            timeouts: vec![None; HUBS],
            now: t0,
            slots: (0..SLOTS).map(|_| None).collect(),
            reconnect_at,
            next_serial: 0,
            publishes: Vec::new(),
            broker: Broker {
                subscriptions: vec![BTreeSet::new(); HUBS],
                in_flight: VecDeque::new(),
                last_due: vec![None; HUBS],
            },
            missed: 0,
            accepted: 0,
            api_counter: 0,
            heard: 0,
            hung_up: BTreeSet::new(),
        }
    }

    fn run(&mut self) {
        let end = self.now + RUN_FOR;
        let mut ticks = 0;
        while self.now < end {
            ticks += 1;
            assert!(ticks < 100_000, "the simulation does not advance (a wake-up stays in the past?)");
            let next = self.next_wakeup().min(end);
            self.now = self.now.max(next);
            self.tick();
        }
        self.everyone_leaves();
    }

    /// The earliest of every hub's timer, the broker's next delivery and the clients' next move.
    fn next_wakeup(&self) -> Instant {
        let hubs = self.timeouts.iter().flatten().copied();
        let broker = self.broker.in_flight.iter().map(|(due, _, _)| *due);
        let clients = self.slots.iter().zip(&self.reconnect_at).map(|(slot, at)| match slot {
            Some(client) => client.next_action,
            None => *at,
        });
        hubs.chain(broker).chain(clients).min().unwrap_or(self.now)
    }

    fn tick(&mut self) {
        let now = self.now;
        for h in 0..HUBS {
            if self.timeouts[h].is_some_and(|t| t <= now) {
                self.hubs[h].handle_timeout(now);
            }
        }
        self.settle();
        while self.broker.in_flight.front().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, from, envelope)) = self.broker.in_flight.pop_front() {
                self.deliver(from, envelope);
            }
            self.settle();
        }
        for slot in 0..SLOTS {
            match &self.slots[slot] {
                Some(client) if client.next_action <= now => self.act(slot),
                None if self.reconnect_at[slot] <= now => self.connect(slot),
                _ => continue,
            }
            self.settle();
        }
    }

    /// The broker hands an envelope to every other hub that subscribed to its channel.
    fn deliver(&mut self, from: usize, envelope: Envelope) {
        let number = message_number(&envelope.channel, &envelope.payload);
        for h in 0..HUBS {
            if h == from || !self.broker.subscriptions[h].contains(&envelope.channel) {
                continue;
            }
            let audience = self.audience(h, &envelope.channel);
            if let Some(publish) = number.and_then(|n| self.publishes.get_mut(n as usize)) {
                publish.audience.extend(audience);
            }
            self.hubs[h].handle_broker(self.now, &envelope);
        }
    }

    /// Clients of hub `h` that must hear a message on `channel` now, as the model has it.
    fn audience(&self, h: usize, channel: &str) -> Vec<u64> {
        self.slots
            .iter()
            .flatten()
            .filter(|c| c.hub == h && !c.sent_close)
            .filter(|c| match c.route {
                Route::Chat => channel == ROOM,
                Route::Ws | Route::WsDrop => {
                    CHANNELS.iter().position(|n| *n == channel).is_some_and(|i| c.subscribed.contains(&i))
                }
            })
            .map(|c| c.serial)
            .collect()
    }

    fn connect(&mut self, slot: usize) {
        self.next_serial += 1;
        let serial = self.next_serial;
        let hub = self.rng.below(HUBS as u64) as usize;
        let route = [Route::Ws, Route::Ws, Route::WsDrop, Route::Chat][self.rng.below(4) as usize];
        let behaviour = match self.rng.below(10) {
            0..=4 => Behaviour::Good,
            5 | 6 => Behaviour::Slow,
            7 | 8 => Behaviour::Stalled,
            _ => Behaviour::Silent,
        };
        let deflate = self.rng.chance(30);
        let id = self.hubs[hub].handle_accept(self.now, peer_addr(slot as u8 + 1));
        let extra = if deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
        self.hubs[hub].handle_bytes(self.now, id, upgrade_request(route.path(), extra).as_bytes());
        let mut stream = ServerStream::new();
        let items = stream.read(&take_output(&mut self.hubs[hub], self.now, id, usize::MAX));
        assert!(matches!(items.first(), Some(ServerItem::Response { status: 101, .. })), "upgrade refused: {items:?}");
        let next_action = self.now + self.rng.millis(10, 500);
        self.slots[slot] = Some(Client {
            serial,
            hub,
            id,
            route,
            behaviour,
            stream,
            subscribed: BTreeSet::new(),
            sent_close: false,
            next_action,
            stalled_until: None,
            received: BTreeSet::new(),
            last_by_publisher: BTreeMap::new(),
            published: 0,
        });
    }

    /// One move of the client in `slot`, chosen by its behaviour and the seed.
    fn act(&mut self, slot: usize) {
        let Some(client) = &self.slots[slot] else { return };
        let (behaviour, route, sent_close) = (client.behaviour, client.route, client.sent_close);
        let pause = match behaviour {
            Behaviour::Good | Behaviour::Silent => self.rng.millis(20, 800),
            Behaviour::Slow | Behaviour::Stalled => self.rng.millis(100, 1_500),
        };
        if let Some(client) = &mut self.slots[slot] {
            client.next_action = self.now + pause;
        }
        match behaviour {
            Behaviour::Slow => {
                let max = 256 + self.rng.below(1024) as usize;
                self.read(slot, max);
            }
            Behaviour::Stalled => {
                let stalled = self.slots[slot].as_ref().and_then(|c| c.stalled_until).is_some_and(|t| t > self.now);
                if !stalled {
                    self.read(slot, usize::MAX);
                    if self.rng.chance(20) {
                        let until = self.now + self.rng.millis(2_000, 15_000);
                        if let Some(client) = &mut self.slots[slot] {
                            client.stalled_until = Some(until);
                        }
                    }
                }
            }
            Behaviour::Good | Behaviour::Silent => self.read(slot, usize::MAX),
        }
        if sent_close || self.slots[slot].is_none() {
            return;
        }
        let roll = self.rng.below(100);
        match (roll, route) {
            (0..=2, _) => self.leave(slot),
            (3..=5, _) => self.close(slot),
            (6..=30, Route::Ws | Route::WsDrop) => self.subscription(slot),
            (31..=45, _) => self.api_publish(),
            (46..=75, _) => {
                let burst = if self.rng.chance(15) { 2 + self.rng.below(12) } else { 1 };
                for _ in 0..burst {
                    self.publish(slot);
                }
            }
            _ => {}
        }
    }

    fn subscription(&mut self, slot: usize) {
        let channel = self.rng.below(CHANNELS.len() as u64) as usize;
        let Some(client) = &mut self.slots[slot] else { return };
        let op = if client.subscribed.insert(channel) {
            "subscribe"
        } else {
            client.subscribed.remove(&channel);
            "unsubscribe"
        };
        let request = format!("{{\"op\":\"{op}\",\"id\":1,\"channel\":\"{}\"}}", CHANNELS[channel]);
        self.send(slot, &client_frame(0x81, request.as_bytes(), MASK));
    }

    fn publish(&mut self, slot: usize) {
        let channel = self.rng.below(CHANNELS.len() as u64) as usize;
        let pad = "p".repeat(self.rng.below(300) as usize);
        let Some(client) = &mut self.slots[slot] else { return };
        client.published += 1;
        let (serial, counter, hub, route) = (client.serial, client.published, client.hub, client.route);
        let target = if route == Route::Chat { ROOM } else { CHANNELS[channel] };
        let number = self.record(hub, target);
        let payload = if route == Route::Chat {
            format!("b:{number}:{serial}:{counter}:{pad}")
        } else {
            let data = format!("{{\"n\":{number},\"p\":{serial},\"i\":{counter},\"pad\":\"{pad}\"}}");
            format!("{{\"op\":\"publish\",\"channel\":\"{target}\",\"data\":{data}}}")
        };
        let before = self.hubs[hub].metrics().publishes;
        self.send(slot, &client_frame(0x81, payload.as_bytes(), MASK));
        self.settle_publish(hub, before, number);
    }

    fn api_publish(&mut self) {
        let hub = self.rng.below(HUBS as u64) as usize;
        let channel = CHANNELS[self.rng.below(CHANNELS.len() as u64) as usize];
        self.api_counter += 1;
        let number = self.record(hub, channel);
        // API publishers are numbered apart from clients' serials (which start at 1).
        let publisher = u64::MAX - hub as u64;
        let data = format!("{{\"n\":{number},\"p\":{publisher},\"i\":{}}}", self.api_counter);
        let before = self.hubs[hub].metrics().publishes;
        let result = self.hubs[hub].handle_publish(self.now, channel, &data);
        assert!(result.is_ok(), "API publish refused: {result:?}");
        self.settle_publish(hub, before, number);
    }

    fn record(&mut self, hub: usize, channel: &str) -> u64 {
        let audience = self.audience(hub, channel).into_iter().collect();
        self.publishes.push(Published { channel: channel.to_owned(), audience });
        (self.publishes.len() - 1) as u64
    }

    /// A publish the hub refused (from a connection it is closing) must reach nobody.
    fn settle_publish(&mut self, hub: usize, before: u64, number: u64) {
        let after = self.hubs[hub].metrics().publishes;
        assert!(after <= before + 1, "one publish counted {} times", after - before);
        if after == before {
            self.publishes[number as usize].audience.clear();
        } else {
            self.accepted += 1;
        }
        self.settle();
    }

    fn close(&mut self, slot: usize) {
        let Some(client) = &mut self.slots[slot] else { return };
        client.sent_close = true;
        client.subscribed.clear();
        self.send(slot, &client_frame(0x88, &1000u16.to_be_bytes(), MASK));
    }

    /// The client's socket goes away (eof) after it read what was there.
    fn leave(&mut self, slot: usize) {
        self.read(slot, usize::MAX);
        let Some(client) = self.slots[slot].take() else { return };
        self.hubs[client.hub].handle_eof(self.now, client.id);
        self.hung_up.insert((client.hub, client.id));
        self.departed(client);
        self.reconnect_at[slot] = self.now + self.rng.millis(100, 3_000);
        self.settle();
    }

    fn send(&mut self, slot: usize, bytes: &[u8]) {
        let Some(client) = &self.slots[slot] else { return };
        self.hubs[client.hub].handle_bytes(self.now, client.id, bytes);
    }

    /// The client reads up to `max` bytes and reacts (pong, close reply).
    fn read(&mut self, slot: usize, max: usize) {
        let Some(client) = &mut self.slots[slot] else { return };
        let bytes = take_output(&mut self.hubs[client.hub], self.now, client.id, max);
        let items = client.stream.read(&bytes);
        for item in items {
            self.on_item(slot, item);
        }
    }

    fn on_item(&mut self, slot: usize, item: ServerItem) {
        let publishes = &self.publishes;
        let Some(client) = &mut self.slots[slot] else { return };
        let reply = match item {
            ServerItem::Response { status, .. } => panic!("a second HTTP response ({status})"),
            ServerItem::Message { data, .. } => {
                if heard(client, publishes, &data) {
                    self.heard += 1;
                }
                None
            }
            ServerItem::Ping(payload) => {
                (client.behaviour != Behaviour::Silent).then(|| client_frame(0x8a, &payload, MASK))
            }
            ServerItem::Pong(_) => None,
            ServerItem::Close(code) => {
                assert!(
                    client.sent_close || client.behaviour != Behaviour::Good,
                    "a client that keeps up was closed by the server (code {code:?})"
                );
                let reply = !client.sent_close;
                client.sent_close = true;
                client.subscribed.clear();
                reply.then(|| client_frame(0x88, &code.unwrap_or(1000).to_be_bytes(), MASK))
            }
        };
        if let Some(frame) = reply {
            self.send(slot, &frame);
        }
    }

    /// Drains every hub's events and broker commands until nothing moves; good clients read
    /// everything as it comes.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for h in 0..HUBS {
                loop {
                    match self.hubs[h].poll_output() {
                        Output::Timeout(at) => {
                            self.timeouts[h] = at;
                            break;
                        }
                        Output::Close(id) => self.closed_by_hub(h, id),
                        Output::Broker(command) => self.broker_command(h, command),
                        Output::Transmit(_)
                        | Output::RedisOpen { .. }
                        | Output::RedisTransmit(_)
                        | Output::RedisClose(_)
                        | Output::Webhook(_) => {}
                    }
                    moved = true;
                }
            }
            for slot in 0..SLOTS {
                let good = self.slots[slot].as_ref().is_some_and(|c| c.behaviour == Behaviour::Good);
                let pending = self.slots[slot].as_ref().is_some_and(|c| self.hubs[c.hub].wants_write(c.id));
                if good && pending {
                    moved = true;
                    self.read(slot, usize::MAX);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn broker_command(&mut self, h: usize, command: BrokerCommand) {
        match command {
            BrokerCommand::Publish(envelope) => {
                // FIFO per origin: a later envelope is never due before an earlier one.
                let latency = self.rng.millis(0, 30);
                let due = self.broker.last_due[h].map_or(self.now + latency, |last| last.max(self.now + latency));
                self.broker.last_due[h] = Some(due);
                let at =
                    self.broker.in_flight.iter().position(|(d, _, _)| *d > due).unwrap_or(self.broker.in_flight.len());
                self.broker.in_flight.insert(at, (due, h, envelope));
            }
            BrokerCommand::Subscribe(channel) => {
                assert!(self.broker.subscriptions[h].insert(channel.clone()), "hub {h} subscribed to {channel} twice");
            }
            BrokerCommand::Unsubscribe(channel) => {
                assert!(self.broker.subscriptions[h].remove(&channel), "hub {h} left {channel} it never joined");
            }
        }
    }

    /// The hub closed a socket: after our close handshake, or on its own (then never a good
    /// client's).
    fn closed_by_hub(&mut self, h: usize, id: ConnId) {
        if self.hung_up.remove(&(h, id)) {
            return;
        }
        let slot = self.slots.iter().position(|c| c.as_ref().is_some_and(|c| c.hub == h && c.id == id));
        let Some(slot) = slot else { panic!("hub {h} closed {id:?}, which no client holds") };
        let Some(client) = self.slots[slot].take() else { return };
        assert!(
            client.sent_close || client.behaviour != Behaviour::Good,
            "hub {h} dropped a client that keeps up without a close handshake"
        );
        self.departed(client);
        self.reconnect_at[slot] = self.now + self.rng.millis(100, 3_000);
    }

    /// A client is gone: count what it missed; a good one must have missed nothing.
    fn departed(&mut self, client: Client) {
        let expected = self.publishes.iter().enumerate().filter(|(_, p)| p.audience.contains(&client.serial));
        let missing: Vec<u64> = expected.map(|(n, _)| n as u64).filter(|n| !client.received.contains(n)).collect();
        if client.behaviour == Behaviour::Good {
            assert!(
                missing.is_empty(),
                "a client that keeps up missed messages {missing:?} on hub {} ({:?})",
                client.hub,
                client.route
            );
        }
        self.missed += missing.len() as u64;
    }

    /// The run ends: the broker empties, good clients read it all, everyone leaves, and then
    /// nothing may be left anywhere.
    fn everyone_leaves(&mut self) {
        let never = self.now + Duration::from_secs(3600);
        for client in self.slots.iter_mut().flatten() {
            client.next_action = never;
        }
        self.reconnect_at.fill(never);
        while let Some(&(due, _, _)) = self.broker.in_flight.front() {
            self.now = self.now.max(due);
            self.tick();
        }
        for slot in 0..SLOTS {
            self.leave(slot);
        }
        self.settle();
        let end = self.now + Duration::from_secs(3600);
        while let Some(at) = self.timeouts.iter().flatten().copied().min().filter(|t| *t <= end) {
            self.now = self.now.max(at);
            for hub in &mut self.hubs {
                hub.handle_timeout(self.now);
            }
            self.settle();
        }
        let dropped: u64 = self.hubs.iter().map(|h| h.metrics().messages_dropped).sum();
        assert!(dropped <= self.missed, "hubs dropped {dropped} messages but subscribers missed only {}", self.missed);
        let published: u64 = self.hubs.iter().map(|h| h.metrics().publishes).sum();
        assert_eq!(published, self.accepted, "publish counters vs publishes accepted");
        for (h, hub) in self.hubs.iter().enumerate() {
            assert_hub_empty(hub);
            assert_eq!(self.timeouts[h], None, "empty hub {h} still asks to be woken");
            assert!(
                self.broker.subscriptions[h].is_empty(),
                "hub {h} still subscribed to {:?}",
                self.broker.subscriptions[h]
            );
        }
        assert!(self.broker.in_flight.is_empty(), "envelopes left in flight");
        assert!(self.hung_up.is_empty(), "no Close event for sockets the clients closed: {:?}", self.hung_up);
    }
}

/// The publish number a message carries: `b:<n>:..` in the room, `{"n":<n>,..}` on a channel.
fn message_number(channel: &str, payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    if channel == ROOM {
        return text.strip_prefix("b:")?.split(':').next()?.parse().ok();
    }
    serde_json::from_str::<serde_json::Value>(text).ok()?["n"].as_u64()
}

/// Checks one message a client read: a message it had to hear, once, in order per publisher.
/// Returns false for frames that are not published messages (acks, welcome).
fn heard(client: &mut Client, publishes: &[Published], data: &[u8]) -> bool {
    // seq is not checked here: a resubscribe may re-create the channel (seq starts over)
    // while older messages still wait unread; tests/model.rs checks seq within a subscription.
    let (channel, number, publisher, counter) = match client.route {
        Route::Chat => {
            let text = String::from_utf8_lossy(data).into_owned();
            let fields: Vec<u64> = text.split(':').skip(1).take(3).filter_map(|f| f.parse().ok()).collect();
            let [number, publisher, counter] = fields[..] else { panic!("a room message nobody sent: {text:?}") };
            (ROOM.to_owned(), number, publisher, counter)
        }
        Route::Ws | Route::WsDrop => {
            let value: serde_json::Value = match serde_json::from_slice(data) {
                Ok(value) => value,
                Err(e) => panic!("pub/sub frame is not JSON ({e})"),
            };
            match value["type"].as_str() {
                Some("message") => {}
                Some("ack" | "welcome") => return false,
                _ => panic!("unexpected pub/sub frame: {value}"),
            }
            let field = |name: &str| value["data"][name].as_u64();
            let (Some(number), Some(publisher), Some(counter)) = (field("n"), field("p"), field("i")) else {
                panic!("a message nobody published: {value}");
            };
            let channel = value["channel"].as_str().unwrap_or_default().to_owned();
            (channel, number, publisher, counter)
        }
    };
    let Some(publish) = publishes.get(number as usize) else { panic!("message {number} was never published") };
    assert_eq!(publish.channel, channel, "message {number} on the wrong channel");
    assert!(publish.audience.contains(&client.serial), "message {number} on {channel} reached a non-subscriber");
    assert!(client.received.insert(number), "message {number} delivered twice");
    let key = (channel.clone(), publisher);
    if let Some(&last) = client.last_by_publisher.get(&key) {
        assert!(counter > last, "publisher {publisher}'s message {counter} on {channel} after its {last}");
    }
    client.last_by_publisher.insert(key, counter);
    true
}

/// What a run did, summed over seeds, to show the simulation reaches the rules it checks.
#[derive(Debug, Default)]
struct Totals {
    heard: u64,
    publishes: u64,
    dropped: u64,
    slow_consumer_closes: u64,
    pong_timeouts: u64,
    clients: u64,
}

fn run_seed(seed: u64, totals: &mut Totals) {
    let result = std::panic::catch_unwind(|| {
        let mut cluster = Cluster::new(seed);
        cluster.run();
        cluster
    });
    match result {
        Ok(cluster) => {
            totals.heard += cluster.heard;
            totals.publishes += cluster.accepted;
            totals.clients += cluster.next_serial;
            for hub in &cluster.hubs {
                let m = hub.metrics();
                totals.dropped += m.messages_dropped;
                totals.slow_consumer_closes += m.slow_consumer_closes;
                totals.pong_timeouts += m.pong_timeouts;
            }
        }
        Err(panic) => {
            eprintln!(
                "cluster simulation failed for seed {seed}; replay it alone with\n  \
             SIM_SEED={seed} cargo test -p switchboard-core --test simulation"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn cluster_simulation() {
    let mut totals = Totals::default();
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(if cfg!(debug_assertions) { 100 } else { 1000 })).collect(),
    };
    for &seed in &seeds {
        run_seed(seed, &mut totals);
    }
    eprintln!("cluster simulation: {} seeds, {totals:?}", seeds.len());
    assert!(totals.heard > 0, "the simulation delivered nothing");
}
