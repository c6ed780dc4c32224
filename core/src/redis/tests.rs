//! The link's unit tests: a simulated clock and a scripted Redis, one connection's bytes at a time.

use super::breaker::backoff_delay;
use super::envelope::{Wire, decode_envelope};
use super::resp::{Scan, bulk, scan_frame};
use super::*;
use crate::config::{BreakerConfig, BrokerKind};
use crate::history::StreamRules;
use bytes::Bytes;
use proptest::prelude::*;
use redis_protocol::resp2::decode::decode;
use switchboard_testkit::origin as origin_instant;

fn config() -> BrokerConfig {
    BrokerConfig {
        kind: BrokerKind::Redis,
        url: "redis://10.0.0.1:6380".to_owned(),
        urls: Vec::new(),
        prefix: "sb".to_owned(),
        tls_ca: String::new(),
        node_id: "n1".to_owned(),
        lease_ttl: Duration::from_secs(15),
        backoff: BackoffConfig { min: Duration::from_millis(100), max: Duration::from_millis(1600), jitter: 0.2 },
        breaker: BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(10) },
        // Out of the way of the other tests' timelines; the probe tests set their own.
        probe_interval: Duration::from_secs(36_000),
        probe_timeout: Duration::from_secs(36_000),
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

/// Redis's confirmation of the link's probe subscription.
fn probe_confirmation() -> Vec<u8> {
    let mut out = resp(&[b"subscribe", b"sb:probe:n1:0"]);
    // The count is an integer, not a bulk string.
    out.truncate(out.len());
    out[1] = b'3';
    out.extend_from_slice(b":1\r\n");
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
        let link = RedisLink::new(config, &config.url, origin("n1", 0));
        let Ok(mut link) = link else { panic!("{link:?}") };
        link.start(t0);
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
        assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:probe:n1:0"]]);
        sim.feed(LinkConn::Subscriber, &probe_confirmation());
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
        self.connect_to("10.0.0.1:6380")
    }

    fn connect_to(&mut self, expected: &str) -> Vec<LinkConn> {
        let mut opened = Vec::new();
        while let Some((which, addr)) = self.link.poll_connect() {
            assert_eq!(addr, expected);
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
    assert_eq!(parse_url("rediss://h:6380"), Ok(("h:6380".to_owned(), 0)));
    assert!(is_tls_url("rediss://h:6380") && !is_tls_url("redis://h"));
    assert_eq!((host_of("h:1"), host_of("[::1]:7000"), host_of("10.0.0.1:6379")), ("h", "::1", "10.0.0.1"));
    for bad in ["unix:///tmp/r.sock", "http://h", "redis://", "redis://h:0", "redis://h:x"] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
    for bad in ["redis://h/x", "redis://:pw@h", "redis://h/0?timeout=1", "redis://[::1"] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
    let Err(e) = parse_url("http://h") else { panic!("http accepted") };
    assert!(e.to_string().contains("rediss://"), "{e}");
}

#[test]
fn connect_sequence_asks_for_both_connections() {
    let mut sim = Sim::new(&config());
    assert_eq!(sim.link.state(), BrokerState::Closed);
    assert!(!sim.link.publish(sim.now, &envelope(origin("n1", 0), "a", b"1")), "no connection yet");
    assert_eq!(sim.link.dropped(), 1);
    assert_eq!(sim.connect(), [LinkConn::Command, LinkConn::Subscriber]);
    assert_eq!(sim.link.poll_connect(), None);
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:probe:n1:0"]], "only its own probe channel");
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
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:a", "sb:ch:c", "sb:probe:n1:0"]]);
    sim.link.subscribe(sim.now, "a");
    assert!(sim.commands(LinkConn::Subscriber).is_empty(), "already held");
    sim.link.subscribe(sim.now, "d");
    sim.link.unsubscribe(sim.now, "a");
    sim.link.unsubscribe(sim.now, "zz");
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:d"], vec!["UNSUBSCRIBE", "sb:ch:a"]]);
    let acks = [
        resp(&[b"subscribe", b"sb:ch:a"]),
        resp(&[b"subscribe", b"sb:ch:c"]),
        probe_confirmation(),
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
    let kept: Vec<(&str, u32)> =
        sim.link.last_seen.iter().flat_map(|(node, w)| w.keys().map(move |w| (node.as_str(), *w))).collect();
    assert_eq!(kept, [("n3", 1)], "n2's lease expired");
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
    let members = vec![("alice".to_owned(), Some("1".to_owned())), ("bob".to_owned(), Some("{\"b\":2}".to_owned()))];
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
    sim.feed(LinkConn::Subscriber, &[resp(&[b"subscribe", b"sb:ch:a"]), resp(&[b"subscribe", b"sb:ch:b"])].concat());
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
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:a", "sb:ch:b", "sb:probe:n1:0"]]);
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

const RULES: StreamRules = StreamRules { size: 100, ttl: Duration::from_secs(60) };

fn read(token: u64, channel: &str, after: u64, limit: usize) -> HistoryRead {
    HistoryRead { token, channel: channel.to_owned(), after, limit, rules: RULES, epoch: "cafe".to_owned() }
}

#[test]
fn history_publications_load_the_script_once_then_use_its_sha() {
    let mut sim = Sim::ready();
    let publication = envelope(origin("n1", 0), "h:x", b"{\"a\":1}");
    assert!(sim.link.history_publish(sim.now, &publication, RULES, "cafe"));
    let sent = sim.commands(LinkConn::Command);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0][..2], ["SCRIPT", "LOAD"]);
    assert_eq!(sent[1][0], "EVAL");
    assert_eq!(sent[1][3..6], ["sb:stream:h:x", "sb:meta:h:x", "sb:ch:h:x"]);
    assert_eq!(sent[1][7..], ["{\"a\":1}", "cafe", "100", "60000", "PUBLISH"]);
    // The header is an envelope whose payload starts with the stream marker, for the script
    // to append `{epoch}:{offset}\n{data}` to.
    let Some(wire) = decode_envelope(sent[1][6].as_bytes()) else { panic!("an envelope header") };
    assert_eq!((wire.envelope.channel.as_str(), &wire.envelope.payload[..]), ("h:x", &[crate::hub::STREAMED][..]));
    sim.feed(LinkConn::Command, b"$4\r\nab12\r\n:1\r\n");
    assert!(sim.link.history_publish(sim.now, &publication, RULES, "cafe"));
    let sent = sim.commands(LinkConn::Command);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0][..2], ["EVALSHA", "ab12"]);
    assert!(sim.closes().is_empty(), "the SHA reply is not a protocol error");
}

#[test]
fn a_read_waits_for_its_channel_subscription_and_returns_the_entries() {
    let mut sim = Sim::ready();
    sim.link.subscribe(sim.now, "h:x");
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:h:x"]]);
    sim.link.history_read(sim.now, read(5, "h:x", 2, 10));
    assert!(sim.commands(LinkConn::Command).is_empty(), "not before the subscription is confirmed");
    sim.feed(LinkConn::Subscriber, b"*3\r\n$9\r\nsubscribe\r\n$9\r\nsb:ch:h:x\r\n:1\r\n");
    let sent = sim.commands(LinkConn::Command);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][3..], ["sb:stream:h:x", "sb:meta:h:x", "3", "10", "cafe", "60000"]);
    // [epoch, last offset, [[id, [d, data]], ...]]
    let reply = b"*3\r\n$4\r\nbeef\r\n$1\r\n4\r\n*2\r\n*2\r\n$3\r\n3-0\r\n*2\r\n$1\r\nd\r\n$1\r\n7\r\n*2\r\n$3\r\n4-0\r\n*2\r\n$1\r\nd\r\n$3\r\n\"x\"\r\n";
    sim.feed(LinkConn::Command, reply);
    let Some(answer) = sim.link.poll_history() else { panic!("no answer") };
    let Some(got) = answer.read else { panic!("no read") };
    assert_eq!((answer.token, got.top.epoch.as_str(), got.top.offset, got.complete), (5, "beef", 4, true));
    assert_eq!(got.publications, [(3, Bytes::from_static(b"7")), (4, Bytes::from_static(b"\"x\""))]);

    // A read of a channel the hub does not hold goes at once; a gap at its start is reported.
    sim.link.history_read(sim.now, read(6, "h:y", 0, 10));
    assert_eq!(sim.commands(LinkConn::Command).len(), 1);
    sim.feed(
        LinkConn::Command,
        b"*3\r\n$4\r\nbeef\r\n$1\r\n9\r\n*1\r\n*2\r\n$3\r\n8-0\r\n*2\r\n$1\r\nd\r\n$1\r\n1\r\n",
    );
    let Some(HistoryAnswer { read: Some(got), .. }) = sim.link.poll_history() else { panic!("no answer") };
    assert!(!got.complete, "1 to 7 are gone");
}

#[test]
fn reads_are_answered_empty_when_redis_is_lost() {
    let mut sim = Sim::ready();
    sim.link.subscribe(sim.now, "h:x");
    sim.commands(LinkConn::Subscriber);
    sim.link.history_read(sim.now, read(1, "h:x", 0, 10));
    sim.link.handle_eof(sim.now, LinkConn::Subscriber);
    let Some(answer) = sim.link.poll_history() else { panic!("no answer") };
    assert!(answer.read.is_none());
    // A read in flight on the command connection too.
    sim.link.history_read(sim.now, read(2, "h:z", 0, 10));
    sim.link.handle_eof(sim.now, LinkConn::Command);
    let Some(answer) = sim.link.poll_history() else { panic!("no answer") };
    assert_eq!((answer.token, answer.read.is_none()), (2, true));
}

#[test]
fn a_read_before_the_link_is_ready_waits_for_it() {
    let mut sim = Sim::new(&config());
    sim.link.history_read(sim.now, read(9, "h:q", 0, 5));
    assert!(sim.link.poll_history().is_none(), "not refused while connecting");
    assert_eq!(sim.connect(), [LinkConn::Command, LinkConn::Subscriber]);
    assert_eq!(sim.commands(LinkConn::Command), [vec!["INCR", "sb:epoch"]]);
    sim.feed(LinkConn::Command, b":7\r\n");
    let sent = sim.commands(LinkConn::Command);
    assert_eq!(sent.last().map(|c| c[0].as_str()), Some("EVAL"), "{sent:?}");
}

/// The probe test's link: a probe every second, three seconds to come back.
fn probing() -> Sim {
    let mut c = config();
    c.probe_interval = Duration::from_secs(1);
    c.probe_timeout = Duration::from_secs(3);
    let mut sim = Sim::new(&c);
    sim.connect();
    sim.commands(LinkConn::Command);
    sim.feed(LinkConn::Command, b":7\r\n");
    sim.commands(LinkConn::Command);
    sim.feed(LinkConn::Command, b"+OK\r\n*0\r\n");
    sim.commands(LinkConn::Subscriber);
    sim.feed(LinkConn::Subscriber, &probe_confirmation());
    sim
}

#[test]
fn a_probe_that_comes_back_keeps_the_link_healthy() {
    let mut sim = probing();
    for round in 1..=3u64 {
        sim.at(round * 1000);
        sim.fire();
        let sent = sim.commands(LinkConn::Command);
        assert_eq!(sent, [vec!["PUBLISH".to_owned(), "sb:probe:n1:0".to_owned(), round.to_string()]], "round {round}");
        sim.feed(LinkConn::Command, b":1\r\n");
        sim.feed(LinkConn::Subscriber, &resp(&[b"message", b"sb:probe:n1:0", round.to_string().as_bytes()]));
        assert_eq!(sim.link.state(), BrokerState::Closed);
        assert!(sim.deliveries().is_empty(), "a probe is not a message for the hub");
    }
    assert_eq!(sim.link.probe_failures(), 0);
}

#[test]
fn a_probe_that_does_not_come_back_makes_the_link_deaf_and_resubscribe() {
    let mut sim = probing();
    sim.link.subscribe(sim.now, "a");
    sim.commands(LinkConn::Subscriber);
    sim.feed(LinkConn::Subscriber, &resp(&[b"subscribe", b"sb:ch:a"]));
    sim.at(1000);
    sim.fire();
    assert_eq!(sim.commands(LinkConn::Command)[0][0], "PUBLISH");
    sim.feed(LinkConn::Command, b":1\r\n");
    // Redis answers every command, but the subscription hears nothing.
    sim.at(3999);
    sim.fire();
    assert_eq!(sim.link.state(), BrokerState::Closed, "not before the timeout");
    sim.at(4000);
    sim.fire();
    assert_eq!(sim.link.state(), BrokerState::Deaf);
    assert_eq!(sim.link.probe_failures(), 1);
    assert_eq!(sim.closes(), [LinkConn::Subscriber], "the subscription's connection is dropped");
    // It reconnects after its backoff and subscribes to everything again, then hears a probe.
    sim.wake();
    assert_eq!(sim.connect(), [LinkConn::Subscriber]);
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SUBSCRIBE", "sb:ch:a", "sb:probe:n1:0"]]);
    sim.feed(LinkConn::Subscriber, &resp(&[b"subscribe", b"sb:ch:a"]));
    sim.feed(LinkConn::Subscriber, &probe_confirmation());
    sim.now += Duration::from_secs(1);
    sim.fire();
    let sent = sim.commands(LinkConn::Command);
    let probe = sent.iter().find(|c| c[0] == "PUBLISH").cloned().unwrap_or_default();
    assert_eq!(probe.get(1).map(String::as_str), Some("sb:probe:n1:0"), "{sent:?}");
    sim.feed(LinkConn::Subscriber, &resp(&[b"message", b"sb:probe:n1:0", probe[2].as_bytes()]));
    assert_eq!(sim.link.state(), BrokerState::Closed, "heard again");
}

proptest! {
    /// The in-place reader of `message` pushes finds exactly what the general decoder finds,
    /// and never a push in a cut-short one.
    #[test]
    fn message_pushes_are_read_in_place_as_the_decoder_reads_them(
        key in prop::collection::vec(any::<u8>(), 0..40),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        cut in 0usize..400,
    ) {
        let push = resp(&[b"message", &key, &payload]);
        let Some((k, p, used)) = message_push(&push, false) else { panic!("a whole push is read") };
        prop_assert_eq!((&push[k], &push[p], used), (&key[..], &payload[..], push.len()));
        let cut = cut.min(push.len() - 1);
        prop_assert!(message_push(&push[..cut], false).is_none());
    }
}

#[test]
fn a_lost_publish_script_is_loaded_again() {
    let mut sim = Sim::ready();
    let publication = envelope(origin("n1", 0), "h:x", b"1");
    assert!(sim.link.history_publish(sim.now, &publication, RULES, "cafe"));
    sim.commands(LinkConn::Command);
    sim.feed(LinkConn::Command, b"$4\r\nab12\r\n:1\r\n");
    assert!(sim.link.history_publish(sim.now, &publication, RULES, "cafe"));
    assert_eq!(sim.commands(LinkConn::Command)[0][0], "EVALSHA");
    sim.feed(LinkConn::Command, b"-NOSCRIPT No matching script.\r\n");
    assert!(sim.link.history_publish(sim.now, &publication, RULES, "cafe"));
    let sent = sim.commands(LinkConn::Command);
    let verbs: Vec<&str> = sent.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(verbs, ["SCRIPT", "EVAL"], "loaded again, and EVAL until it is");
}

#[test]
fn a_read_after_unsubscribing_and_subscribing_again_waits_for_the_new_confirmation() {
    let mut sim = Sim::ready();
    sim.link.subscribe(sim.now, "h:x");
    sim.feed(LinkConn::Subscriber, b"*3\r\n$9\r\nsubscribe\r\n$9\r\nsb:ch:h:x\r\n:1\r\n");
    sim.link.unsubscribe(sim.now, "h:x");
    sim.link.subscribe(sim.now, "h:x");
    sim.commands(LinkConn::Subscriber);
    sim.link.history_read(sim.now, read(3, "h:x", 0, 10));
    assert!(sim.commands(LinkConn::Command).is_empty(), "the old confirmation does not count");
    sim.feed(LinkConn::Subscriber, b"*3\r\n$11\r\nunsubscribe\r\n$9\r\nsb:ch:h:x\r\n:0\r\n");
    sim.feed(LinkConn::Subscriber, b"*3\r\n$9\r\nsubscribe\r\n$9\r\nsb:ch:h:x\r\n:1\r\n");
    assert_eq!(sim.commands(LinkConn::Command).len(), 1);
}

#[test]
fn a_subscriber_connection_that_comes_back_says_so_once() {
    let mut sim = Sim::ready();
    assert!(!sim.link.take_reconnected(), "the first connection is not a reconnect");
    sim.link.handle_eof(sim.now, LinkConn::Subscriber);
    sim.wake();
    assert_eq!(sim.connect(), [LinkConn::Subscriber]);
    assert!(sim.link.take_reconnected());
    assert!(!sim.link.take_reconnected(), "once");
}

/// A link to a cluster master: sharded pub/sub one channel per command, every key of a
/// channel under its hash tag, the link's own keys under its tag; `MOVED` marks the map
/// stale; a failover moves both connections to the new address and subscribes again.
#[test]
fn a_cluster_link_speaks_sharded_pub_sub_and_follows_its_master() {
    let t0 = origin_instant();
    let tag = owned_tag(&[(0, 5460)]);
    let mut sim = Sim {
        link: RedisLink::new_cluster(&config(), "10.0.0.1:6380".to_owned(), origin("n1", 0), tag.clone()),
        t0,
        now: t0,
    };
    sim.link.start(t0);
    assert_eq!(sim.link.state(), BrokerState::Reconnecting, "not connected yet");
    assert_eq!(sim.connect(), [LinkConn::Command, LinkConn::Subscriber]);
    assert_eq!(sim.commands(LinkConn::Command), [vec!["INCR".to_owned(), format!("sb:epoch{tag}")]]);
    sim.feed(LinkConn::Command, b":7\r\n");
    let lease = format!("sb:lease:{tag}n1:0");
    assert_eq!(
        sim.commands(LinkConn::Command),
        [
            vec!["SET".to_owned(), lease.clone(), "7:0".into(), "EX".into(), "15".into()],
            vec!["KEYS".to_owned(), format!("sb:lease:{tag}*")]
        ]
    );
    for key in [lease.as_bytes(), format!("sb:probe:{tag}n1:0").as_bytes(), format!("sb:epoch{tag}").as_bytes()] {
        let slot = slots::key_slot(key);
        assert!(slot <= 5460, "the link's own keys live on its master: {slot}");
    }
    sim.feed(LinkConn::Command, b"+OK\r\n*0\r\n");
    let probe = format!("sb:probe:{tag}n1:0");
    assert_eq!(sim.commands(LinkConn::Subscriber), [vec!["SSUBSCRIBE".to_owned(), probe.clone()]]);
    assert_eq!(sim.link.state(), BrokerState::Closed);

    // Two channels: two commands (their slots differ), confirmed as `ssubscribe`.
    sim.link.subscribe(sim.now, "room");
    sim.link.subscribe(sim.now, "lobby");
    let subs = sim.commands(LinkConn::Subscriber);
    let keys: Vec<String> = ["room", "lobby"].iter().map(|c| format!("sb:ch:{}{c}", slots::channel_tag(c))).collect();
    assert_eq!(subs, [vec!["SSUBSCRIBE".to_owned(), keys[0].clone()], vec!["SSUBSCRIBE".to_owned(), keys[1].clone()]]);
    let confirm = |key: &str| format!("*3\r\n$10\r\nssubscribe\r\n${}\r\n{key}\r\n:1\r\n", key.len());
    sim.feed(LinkConn::Subscriber, format!("{}{}{}", confirm(&probe), confirm(&keys[0]), confirm(&keys[1])).as_bytes());
    assert!(sim.link.confirmed.contains("room") && sim.link.confirmed.contains("lobby"));

    // A publish is an SPUBLISH to the tagged key; another node's arrives as `smessage`.
    let envelope =
        Envelope { origin: origin("n1", 0), channel: "room".into(), text: true, payload: Bytes::from_static(b"hi") };
    assert!(sim.link.publish(sim.now, &envelope));
    let sent = sim.commands(LinkConn::Command);
    assert_eq!(sent[0][..2], ["SPUBLISH".to_owned(), keys[0].clone()]);
    let from_other = Envelope { origin: origin("n2", 0), ..envelope };
    let Some(payload) = encode_envelope(3, 1, &from_other) else { panic!("encodes") };
    let mut push =
        format!("*3\r\n$8\r\nsmessage\r\n${}\r\n{}\r\n${}\r\n", keys[0].len(), keys[0], payload.len()).into_bytes();
    push.extend_from_slice(&payload);
    push.extend_from_slice(b"\r\n");
    sim.feed(LinkConn::Subscriber, &push);
    let got = sim.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].channel.as_str(), &got[0].payload[..]), ("room", &b"hi"[..]));

    // A presence hash sits in the channel's slot too.
    sim.link.presence_join(sim.now, "room", "u1", None);
    let hset = sim.commands(LinkConn::Command);
    assert_eq!(slots::key_slot(hset[0][1].as_bytes()), channel_slot("room"));

    // MOVED: the map is stale (said once).
    sim.feed(LinkConn::Command, b":1\r\n-MOVED 3999 10.0.0.2:6380\r\n");
    assert!(sim.link.take_moved());
    assert!(!sim.link.take_moved());

    // The replica at .3 was promoted: both connections go there and subscribe again.
    sim.at(10);
    sim.link.retarget(sim.now, "10.0.0.3:6380");
    assert_eq!(sim.closes(), [LinkConn::Command, LinkConn::Subscriber]);
    assert_eq!(sim.link.state(), BrokerState::Reconnecting);
    assert_eq!(sim.connect_to("10.0.0.3:6380"), [LinkConn::Command, LinkConn::Subscriber]);
    let subs = sim.commands(LinkConn::Subscriber);
    assert_eq!(subs.len(), 3, "both channels and the probe: {subs:?}");
    assert!(subs.iter().all(|c| c[0] == "SSUBSCRIBE"));
    assert!(sim.link.take_reconnected(), "what was published meanwhile was missed");

    // Retired (its slots left): the sockets go, nothing reconnects, the state can move.
    sim.link.retire();
    assert_eq!(sim.closes(), [LinkConn::Command, LinkConn::Subscriber]);
    assert_eq!(sim.link.poll_connect(), None);
    assert_eq!(sim.link.take_channels(sim.now, |_| false), ["lobby", "room"]);
    assert_eq!(sim.link.take_members(sim.now, |_| false), [("room".to_owned(), "u1".to_owned(), None)]);
}
