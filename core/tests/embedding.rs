//! The core as an embedder meets it: a hub built in code, alone, driven for a long time, and
//! the handshake bounds that keep slow sockets from crowding out real clients.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use support::*;
use switchboard_core::config::{Size, SlowConsumerPolicy};
use switchboard_core::{Config, ConnId, Footprint, Hub};

/// One simulated second of a busy but steady hub: connections come and go, publish, echo,
/// broadcast, ask for stats, and one socket never finishes its handshake.
fn busy_second(sim: &mut Sim, live: &mut Vec<ConnId>, stalled: &mut Vec<ConnId>, second: u64) {
    let ws = sim.open("/ws");
    sim.take_output(ws);
    let channel = format!("c{}", second % 5);
    sim.send(ws, &text(&format!(r#"{{"op":"subscribe","channel":"{channel}","id":1}}"#)));
    sim.send(ws, &text(&format!(r#"{{"op":"publish","channel":"{channel}","data":{second},"id":2}}"#)));
    let chat = sim.open("/chat");
    sim.send(chat, &text("hello room"));
    let echo = sim.open("/echo");
    sim.send(echo, &text("hello me"));
    live.extend([ws, chat, echo]);
    let slow = sim.accept();
    sim.send(slow, b"GET /ws HT");
    stalled.push(slow);
    let api = sim.accept();
    sim.send(api, b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.take_output(api);
    // About 60 open at once: the oldest leave, some politely and some by dropping the socket.
    while live.len() > 60 {
        let id = live.remove(0);
        if second.is_multiple_of(2) {
            sim.send(id, &close_frame(1000, ""));
        } else {
            sim.hub.handle_eof(sim.now, id);
            sim.pump();
        }
    }
    // A shell writes what the hub queued, the 408s of timed-out handshakes included.
    for &id in live.iter().chain(stalled.iter()) {
        sim.take_output(id);
    }
    stalled.retain(|&id| !sim.is_closed(id));
    sim.advance(Duration::from_secs(1));
}

#[test]
fn a_lone_hub_grows_nothing_over_a_simulated_hour() {
    let mut sim = Sim::new(Config::default());
    let (mut live, mut stalled) = (Vec::new(), Vec::new());
    let mut at_ten_minutes = Footprint::default();
    for second in 0..3600 {
        busy_second(&mut sim, &mut live, &mut stalled, second);
        let now = sim.hub.footprint();
        // Nobody drains `poll_broker` here, as in the crate docs' loop for one hub.
        assert_eq!(now.broker_commands, 0, "second {second}: a lone hub queued for nobody");
        if second == 600 {
            at_ten_minutes = now;
        }
        if second > 600 && second.is_multiple_of(60) {
            let grew = |a: usize, b: usize| a > b + b / 20 + 8;
            assert!(
                !grew(now.slots, at_ten_minutes.slots)
                    && !grew(now.timers, at_ten_minutes.timers)
                    // Ended handshakes are skipped when met; the queue is compacted past this.
                    && now.handshakes <= 2 * sim.hub.metrics().handshaking as usize + 65
                    && now.frames <= at_ten_minutes.frames + 64
                    && now.events == 0
                    && now.presence_waiters == 0,
                "second {second}: {now:?} against {at_ten_minutes:?} at ten minutes"
            );
        }
    }
    eprintln!("footprint after an hour: {:?}", sim.hub.footprint());
    assert!(sim.hub.metrics().publishes >= 3600);
}

fn peer(a: u8, b: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, a, b], 40000))
}

#[test]
fn past_max_handshaking_the_oldest_handshake_makes_room() {
    let mut sim = Sim::with_toml("[limits]\nmax_handshaking = 3\n");
    let slow: Vec<ConnId> = (1..=3).map(|n| sim.hub.handle_accept(sim.now, peer(0, n))).collect();
    sim.send(slow[0], b"GET / HTTP/1.1\r\n");
    let real = sim.hub.handle_accept(sim.now, peer(0, 9));
    sim.pump();
    let evicted = String::from_utf8_lossy(&sim.take_output(slow[0])).into_owned();
    assert_eq!(status_of(&evicted), 503, "{evicted}");
    assert!(sim.is_closed(slow[0]));
    assert!(!sim.is_closed(slow[1]) && !sim.is_closed(slow[2]));
    sim.send(real, upgrade_request("/echo", "").as_bytes());
    let response = String::from_utf8_lossy(&sim.take_output(real)).into_owned();
    assert_eq!(status_of(&response), 101, "{response}");
    let m = sim.hub.metrics();
    assert_eq!((m.handshake_evictions, m.handshaking), (1, 2));
    sim.advance(Duration::from_secs(11));
    for id in [slow[1], slow[2]] {
        assert_eq!(status_of(&String::from_utf8_lossy(&sim.take_output(id))), 408);
    }
    assert!(sim.is_closed(slow[1]) && sim.is_closed(slow[2]), "the handshake timeout still applies");
    assert_eq!(sim.hub.metrics().handshaking, 0);
}

#[test]
fn past_max_handshaking_per_ip_a_new_connection_is_closed_at_once() {
    let mut sim = Sim::with_toml("[limits]\nmax_handshaking_per_ip = 2\n");
    let first: Vec<ConnId> = (0..2).map(|_| sim.hub.handle_accept(sim.now, peer(0, 1))).collect();
    let third = sim.hub.handle_accept(sim.now, peer(0, 1));
    let other = sim.hub.handle_accept(sim.now, peer(0, 2));
    sim.pump();
    assert!(sim.is_closed(third));
    assert!(!first.iter().any(|&id| sim.is_closed(id)) && !sim.is_closed(other));
    assert_eq!(sim.hub.metrics().handshake_refusals, 1);
    // IPv6 clients count by their /64.
    let mut sim = Sim::with_toml("[limits]\nmax_handshaking_per_ip = 1\n");
    let v6 = |text: &str| SocketAddr::new(text.parse().expect("address"), 40000);
    let a = sim.hub.handle_accept(sim.now, v6("2001:db8::1"));
    let b = sim.hub.handle_accept(sim.now, v6("2001:db8::2"));
    let c = sim.hub.handle_accept(sim.now, v6("2001:db8:0:1::2"));
    sim.pump();
    assert_eq!((sim.is_closed(a), sim.is_closed(b), sim.is_closed(c)), (false, true, false));
}

#[test]
fn a_proxy_protocol_header_names_the_client_in_any_number_of_pieces() {
    let mut sim = Sim::with_toml("[server]\nproxy_protocol = true\n[limits]\nmax_connections_per_ip = 1\n");
    let upgrade = upgrade_request("/echo", "");
    let connect = |sim: &mut Sim, header: &str| {
        let id = sim.hub.handle_accept(sim.now, peer(0, 1));
        let bytes = [header.as_bytes(), upgrade.as_bytes()].concat();
        for piece in bytes.chunks(7) {
            sim.send(id, piece);
        }
        (id, status_of(&String::from_utf8_lossy(&sim.take_output(id))))
    };
    assert_eq!(connect(&mut sim, "PROXY TCP4 192.0.2.1 10.0.0.1 5000 80\r\n").1, 101);
    assert_eq!(connect(&mut sim, "PROXY TCP4 192.0.2.2 10.0.0.1 5000 80\r\n").1, 101);
    assert_eq!(connect(&mut sim, "PROXY TCP4 192.0.2.1 10.0.0.1 5001 80\r\n").1, 429);
    let (bad, code) = connect(&mut sim, "GET /echo HTTP/1.1\r\n");
    assert_eq!(code, 0, "nothing is answered without the header");
    assert!(sim.is_closed(bad));
    assert_eq!(sim.hub.metrics().proxy_header_errors, 1);

    // A listed proxy may name the client; any other peer's header is required but not believed.
    let mut sim = Sim::with_toml(
        "[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.9.0.0/16\"]\n[limits]\nmax_connections_per_ip = 1\n",
    );
    assert_eq!(connect(&mut sim, "PROXY TCP4 192.0.2.1 10.0.0.1 5000 80\r\n").1, 101);
    assert_eq!(connect(&mut sim, "PROXY TCP4 192.0.2.2 10.0.0.1 5000 80\r\n").1, 429, "one untrusted peer");
}

#[test]
fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let toml = "[server]\ntrusted_proxies = [\"10.0.0.0/24\"]\n[limits]\nmax_connections_per_ip = 1\n";
    let mut sim = Sim::with_toml(toml);
    let connect = |sim: &mut Sim, from: SocketAddr, header: &str| {
        let id = sim.hub.handle_accept(sim.now, from);
        sim.send(id, upgrade_request("/echo", &format!("{header}\r\n")).as_bytes());
        status_of(&String::from_utf8_lossy(&sim.take_output(id)))
    };
    let proxy = peer(0, 5);
    assert_eq!(connect(&mut sim, proxy, "X-Forwarded-For: 203.0.113.1"), 101);
    assert_eq!(connect(&mut sim, proxy, "X-Forwarded-For: 203.0.113.2"), 101);
    assert_eq!(connect(&mut sim, proxy, "X-Forwarded-For: 203.0.113.2, 10.0.0.7"), 429, "trusted hops skipped");
    assert_eq!(connect(&mut sim, proxy, "Forwarded: for=203.0.113.3"), 101);
    let stranger = peer(1, 5);
    assert_eq!(connect(&mut sim, stranger, "X-Forwarded-For: 203.0.113.4"), 101);
    assert_eq!(connect(&mut sim, stranger, "X-Forwarded-For: 203.0.113.5"), 429, "not a proxy we trust");
}

/// Any value in any field: either `Hub::new` says which key is wrong, or the hub serves a
/// simulated hour of traffic without panicking and without a timer that is always due.
fn arbitrary_config() -> impl Strategy<Value = Config> {
    // Mostly values a person might write, so that many configs pass and get served; the rest
    // are the edges a config built in code can reach.
    let duration = prop_oneof![
        1 => Just(Duration::ZERO),
        12 => (10u64..5_000).prop_map(Duration::from_millis),
        6 => (1u64..400 * 24 * 3600).prop_map(Duration::from_secs),
        1 => any::<u64>().prop_map(Duration::from_nanos),
        1 => Just(Duration::MAX),
    ];
    let size = prop_oneof![1 => Just(0u64), 12 => 1u64..1 << 20, 1 => any::<u64>()].prop_map(Size);
    let count = prop_oneof![1 => Just(0usize), 12 => 1usize..10, 1 => any::<usize>()];
    let rate = prop_oneof![
        4 => Just(0.0),
        12 => 0.001f64..1000.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0)
    ];
    (
        proptest::collection::vec(duration, 11),
        proptest::collection::vec(size, 5),
        proptest::collection::vec(count, 7),
        proptest::collection::vec(rate, 2),
        (any::<u8>(), any::<u32>(), 0u32..12, any::<bool>(), any::<bool>()),
        // Each field keeps its default unless picked, so a case changes a few at a time and
        // many cases pass validation and get served.
        proptest::collection::vec(proptest::bool::weighted(0.15), 31),
    )
        .prop_map(|(d, s, c, r, (prefix, burst, level, drop, proxy), pick)| {
            let mut config = Config::default();
            let mut fields = pick.into_iter();
            let mut set = |apply: &mut dyn FnMut(&mut Config)| {
                if fields.next().unwrap_or(false) {
                    apply(&mut config);
                }
            };
            set(&mut |c| c.server.handshake_timeout = d[0]);
            set(&mut |c| c.server.close_timeout = d[1]);
            set(&mut |c| c.heartbeat.ping_interval = d[2]);
            set(&mut |c| c.heartbeat.pong_timeout = d[3]);
            set(&mut |c| c.heartbeat.idle_timeout = d[4]);
            set(&mut |c| c.broker.lease_ttl = d[5]);
            set(&mut |c| c.broker.backoff.min = d[6]);
            set(&mut |c| c.broker.backoff.max = d[7]);
            set(&mut |c| c.broker.breaker.open_for = d[8]);
            set(&mut |c| c.drain.timeout = d[9]);
            set(&mut |c| c.drain.interval = d[10]);
            set(&mut |c| c.limits.max_message_bytes = s[0]);
            set(&mut |c| c.limits.max_frame_bytes = Some(s[1]));
            set(&mut |c| c.limits.send_queue_bytes = s[2]);
            set(&mut |c| c.http.max_body_bytes = s[3]);
            set(&mut |c| c.compression.min_bytes = s[4]);
            set(&mut |cfg| cfg.limits.max_connections = c[0]);
            set(&mut |cfg| cfg.limits.max_connections_per_ip = c[1]);
            set(&mut |cfg| cfg.limits.max_handshaking = c[2]);
            set(&mut |cfg| cfg.limits.max_handshaking_per_ip = c[3]);
            set(&mut |cfg| cfg.server.max_header_bytes = c[4].saturating_mul(100));
            set(&mut |cfg| cfg.pubsub.max_subscriptions = c[5]);
            set(&mut |cfg| cfg.drain.batch = c[6]);
            set(&mut |cfg| cfg.limits.connect_rate_per_ip = r[0]);
            set(&mut |cfg| cfg.rate_limit.messages_per_second = r[1]);
            set(&mut |cfg| cfg.limits.ipv6_prefix = prefix);
            set(&mut |cfg| cfg.limits.connect_burst_per_ip = burst);
            set(&mut |cfg| cfg.rate_limit.burst = burst);
            set(&mut |cfg| cfg.compression.level = level);
            set(&mut |cfg| {
                cfg.limits.slow_consumer = if drop { SlowConsumerPolicy::Drop } else { SlowConsumerPolicy::Close }
            });
            set(&mut |cfg| cfg.server.proxy_protocol = proxy);
            config
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn any_config_is_refused_or_served_for_an_hour(config in arbitrary_config()) {
        let Ok(hub) = Hub::new(config.clone(), "prop") else {
            // Refused: the error names a key (checked by the config module's own tests).
            return Ok(());
        };
        let mut sim = Sim::new(config);
        sim.hub = hub;
        let mut ids = Vec::new();
        for n in 0..4u8 {
            let id = sim.hub.handle_accept(sim.now, SocketAddr::from(([10, 0, 0, n], 1000)));
            sim.send(id, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n");
            sim.send(id, upgrade_request(["/ws", "/echo", "/chat", "/echo"][usize::from(n)], "").as_bytes());
            ids.push(id);
        }
        for minute in 0..60u32 {
            for &id in &ids {
                sim.send(id, &text(&format!(r#"{{"op":"publish","channel":"c","data":{minute}}}"#)));
                sim.take_output(id);
            }
            let end = sim.now + Duration::from_secs(60);
            // Follows the timers as a shell would, up to a point: a 10ms ping interval makes
            // thousands of wake-ups a minute, and the rest of the minute is one late turn.
            sim.pump();
            for _ in 0..500 {
                match sim.timeout {
                    Some(at) if at <= end => sim.now = sim.now.max(at),
                    _ => break,
                }
                sim.hub.handle_timeout(sim.now);
                sim.pump();
                // A timer still due after it ran would be a busy loop in every shell.
                prop_assert!(sim.timeout.is_none_or(|next| next > sim.now), "minute {minute}");
            }
            sim.now = end;
            sim.hub.handle_timeout(sim.now);
            sim.pump();
            prop_assert!(sim.timeout.is_none_or(|next| next > sim.now), "minute {minute}");
        }
    }
}
