//! The hub's rules on a simulated clock: registry, broadcast, pub/sub, heartbeats, limits,
//! backpressure, HTTP API and drain.

mod support;

use std::io::IoSlice;
use std::time::Duration;

use serde_json::Value;
use support::*;
use switchboard_core::ConnId;
use tungstenite::protocol::frame::coding::{Control, OpCode};

/// Text payloads of the data frames in `bytes`, parsed as JSON.
fn json_frames(bytes: &[u8]) -> Vec<Value> {
    server_frames(bytes)
        .into_iter()
        .filter(|(h, _)| matches!(h.opcode, OpCode::Data(_)))
        .map(|(_, p)| serde_json::from_slice(&p).expect("server sends JSON on pub/sub routes"))
        .collect()
}

fn op(sim: &mut Sim, id: ConnId, json: &str) -> Vec<Value> {
    sim.send(id, &text(json));
    json_frames(&sim.take_output(id))
}

fn pubsub_client(sim: &mut Sim) -> ConnId {
    let id = sim.open("/ws");
    let welcome = json_frames(&sim.take_output(id));
    assert!(welcome.is_empty(), "welcome was already taken with the 101");
    id
}

fn http(sim: &mut Sim, request: &str) -> (u16, String) {
    let id = sim.accept();
    sim.send(id, request.as_bytes());
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status_of(&out), body)
}

#[test]
fn welcome_names_the_connection_and_heartbeat() {
    let mut sim = Sim::new(Default::default());
    let id = sim.accept();
    sim.send(id, upgrade_request("/ws", "").as_bytes());
    let out = sim.take_output(id);
    let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4..];
    let welcome = &json_frames(body)[0];
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["ping_interval_ms"], 25000);
    assert!(welcome["conn_id"].as_str().is_some_and(|s| s.starts_with("test-node-")));
}

#[test]
fn pubsub_subscribe_publish_unsubscribe_with_acks_and_seq() {
    let mut sim = Sim::new(Default::default());
    let alice = pubsub_client(&mut sim);
    let bob = pubsub_client(&mut sim);
    assert_eq!(
        op(&mut sim, alice, r#"{"op":"subscribe","channel":"news","id":1}"#),
        vec![serde_json::json!({"type":"ack","id":1})]
    );
    assert_eq!(op(&mut sim, bob, r#"{"op":"subscribe","channel":"news","id":"b"}"#)[0]["id"], "b");
    let replies = op(&mut sim, alice, r#"{"op":"publish","channel":"news","data":{"n":1},"id":2}"#);
    assert_eq!(replies[0], serde_json::json!({"type":"message","channel":"news","seq":1,"data":{"n":1}}));
    assert_eq!(replies[1], serde_json::json!({"type":"ack","id":2}));
    let at_bob = json_frames(&sim.take_output(bob));
    assert_eq!(at_bob, vec![serde_json::json!({"type":"message","channel":"news","seq":1,"data":{"n":1}})]);
    op(&mut sim, bob, r#"{"op":"publish","channel":"news","data":[2]}"#);
    assert_eq!(json_frames(&sim.take_output(alice))[0]["seq"], 2);
    assert_eq!(op(&mut sim, bob, r#"{"op":"unsubscribe","channel":"news","id":3}"#)[0]["type"], "ack");
    op(&mut sim, alice, r#"{"op":"publish","channel":"news","data":3}"#);
    assert!(json_frames(&sim.take_output(bob)).is_empty(), "unsubscribed: nothing more");
    assert_eq!(sim.hub.metrics().subscriptions, 1);
}

#[test]
fn pubsub_errors_and_strikes() {
    let mut sim = Sim::with_toml("[pubsub]\nmax_protocol_errors = 3\nmax_subscriptions = 1\n");
    let id = pubsub_client(&mut sim);
    let cases = [
        (r#"{"op":"unsubscribe","channel":"x","id":1}"#, "not_subscribed"),
        (r#"{"op":"subscribe","channel":"a","id":2}"#, "ack"),
        (r#"{"op":"subscribe","channel":"a","id":3}"#, "already_subscribed"),
        (r#"{"op":"subscribe","channel":"b","id":4}"#, "too_many_subscriptions"),
    ];
    for (request, expected) in cases {
        let reply = &op(&mut sim, id, request)[0];
        assert!(reply["type"] == expected || reply["code"] == expected, "{request} -> {reply}");
    }
    assert!(!sim.is_closed(id), "refusals are not strikes");
    assert_eq!(op(&mut sim, id, "not json")[0]["code"], "bad_json");
    assert_eq!(op(&mut sim, id, r#"{"op":"dance","id":9}"#)[0]["id"], 9);
    let out = {
        sim.send(id, &text(r#"{"op":"subscribe","channel":"bad channel!"}"#));
        sim.take_output(id)
    };
    assert_eq!(json_frames(&out[..out.len() - 4 - "too many protocol errors".len()])[0]["code"], "bad_channel");
    assert_eq!(close_code(&out), Some(1008), "third strike closes");
}

#[test]
fn client_publish_can_be_forbidden_per_route() {
    let mut sim = Sim::with_toml("[[route]]\npath = \"/ws\"\nmode = \"pubsub\"\nclient_publish = false\n");
    let id = pubsub_client(&mut sim);
    let reply = &op(&mut sim, id, r#"{"op":"publish","channel":"n","data":1,"id":1}"#)[0];
    assert_eq!(reply["code"], "publish_forbidden");
}

#[test]
fn broadcast_frames_once_and_shares_the_bytes() {
    let mut sim = Sim::new(Default::default());
    let clients: Vec<ConnId> = (0..5).map(|_| sim.open("/chat")).collect();
    sim.send(clients[0], &text("hello room"));
    // Every recipient's queue holds the very same allocation: framed once, never copied.
    let pointers: Vec<*const u8> = clients
        .iter()
        .map(|&id| {
            let mut slices = [IoSlice::new(&[]); 4];
            assert_eq!(sim.hub.transmit(id, &mut slices), 1);
            slices[0].as_ptr()
        })
        .collect();
    assert!(pointers.windows(2).all(|w| w[0] == w[1]), "{pointers:?}");
    for &id in &clients {
        let frames = server_frames(&sim.take_output(id));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, b"hello room");
    }
}

#[test]
fn ping_cadence_and_pong_timeout_closes_exactly_once() {
    let mut sim =
        Sim::with_toml("[heartbeat]\nping_interval = \"10s\"\npong_timeout = \"4s\"\nidle_timeout = \"0s\"\n");
    let id = sim.open("/echo");
    let pings = |sim: &mut Sim| {
        server_frames(&sim.take_output(id)).iter().filter(|(h, _)| h.opcode == OpCode::Control(Control::Ping)).count()
    };
    sim.advance(Duration::from_millis(9999));
    assert_eq!(pings(&mut sim), 0);
    sim.advance(Duration::from_millis(1));
    assert_eq!(pings(&mut sim), 1, "first ping at ping_interval");
    sim.send(id, &client_frame(0x8A, b"", true));
    sim.advance(Duration::from_secs(10));
    assert_eq!(pings(&mut sim), 1, "second ping one interval later");
    // No pong this time.
    sim.advance(Duration::from_millis(3999));
    assert!(sim.take_output(id).is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(close_code(&sim.take_output(id)), Some(1008));
    sim.advance(Duration::from_secs(60));
    assert!(sim.is_closed(id));
    assert_eq!(sim.hub.metrics().pong_timeouts, 1);
    assert_eq!(sim.hub.metrics().closes_by_code.get("1008"), Some(&1));
    assert_eq!(sim.hub.connection_count(), 0);
    sim.pump();
    assert_eq!(sim.timeout, None, "no timer left behind");
}

#[test]
fn idle_timeout_counts_data_not_pongs() {
    let mut sim = Sim::with_toml("[heartbeat]\nping_interval = \"1s\"\npong_timeout = \"1s\"\nidle_timeout = \"5s\"\n");
    let id = sim.open("/echo");
    for _ in 0..4 {
        sim.advance(Duration::from_secs(1));
        sim.take_output(id);
        sim.send(id, &client_frame(0x8A, b"", true));
    }
    sim.send(id, &text("still here"));
    sim.take_output(id);
    // Keep answering pings, but send no data.
    for _ in 0..4 {
        sim.advance(Duration::from_secs(1));
        sim.take_output(id);
        sim.send(id, &client_frame(0x8A, b"", true));
    }
    sim.advance(Duration::from_millis(999));
    assert!(!sim.is_closed(id) && close_code(&sim.take_output(id)).is_none());
    sim.advance(Duration::from_millis(1));
    assert_eq!(close_code(&sim.take_output(id)), Some(1008));
    assert_eq!(sim.hub.metrics().idle_timeouts, 1);
}

#[test]
fn connect_rate_per_ip_refills() {
    let mut sim = Sim::with_toml("[limits]\nconnect_rate_per_ip = 1.0\nconnect_burst_per_ip = 2\n");
    assert_eq!(status_of(&sim.connect("/echo", "").1), 101);
    assert_eq!(status_of(&sim.connect("/echo", "").1), 101);
    let (_, refused) = sim.connect("/echo", "");
    assert_eq!(status_of(&refused), 429);
    assert!(refused.contains("Retry-After: 1\r\n"), "{refused}");
    sim.advance(Duration::from_millis(999));
    assert_eq!(status_of(&sim.connect("/echo", "").1), 429);
    sim.advance(Duration::from_millis(1));
    assert_eq!(status_of(&sim.connect("/echo", "").1), 101);
}

#[test]
fn per_ip_and_total_capacity() {
    let mut sim = Sim::with_toml("[limits]\nmax_connections_per_ip = 2\nmax_connections = 3\n");
    let a = sim.open("/echo");
    sim.open("/echo");
    assert_eq!(status_of(&sim.connect("/echo", "").1), 429, "third from one address");
    let other = sim.hub.handle_accept(sim.now, Sim::peer(2));
    sim.send(other, upgrade_request("/echo", "").as_bytes());
    assert_eq!(status_of(&String::from_utf8_lossy(&sim.take_output(other))), 101);
    let fourth = sim.hub.handle_accept(sim.now, Sim::peer(3));
    sim.send(fourth, upgrade_request("/echo", "").as_bytes());
    let refused = String::from_utf8_lossy(&sim.take_output(fourth)).into_owned();
    assert_eq!(status_of(&refused), 503);
    assert!(refused.contains("Retry-After"));
    // A slot frees when a connection ends.
    sim.hub.handle_eof(sim.now, a);
    sim.pump();
    assert_eq!(status_of(&sim.connect("/echo", "").1), 101);
}

#[test]
fn message_rate_limit_refills_and_replies() {
    let mut sim = Sim::with_toml("[rate_limit]\nmessages_per_second = 1.0\nburst = 2\n");
    let id = pubsub_client(&mut sim);
    assert_eq!(op(&mut sim, id, r#"{"op":"ping","id":1}"#)[0]["type"], "pong");
    assert_eq!(op(&mut sim, id, r#"{"op":"ping","id":2}"#)[0]["type"], "pong");
    let limited = &op(&mut sim, id, r#"{"op":"ping","id":3}"#)[0];
    assert_eq!((limited["code"].as_str(), limited["id"].as_i64()), (Some("rate_limited"), Some(3)));
    sim.advance(Duration::from_millis(999));
    assert_eq!(op(&mut sim, id, r#"{"op":"ping","id":4}"#)[0]["code"], "rate_limited");
    sim.advance(Duration::from_millis(1));
    assert_eq!(op(&mut sim, id, r#"{"op":"ping","id":5}"#)[0]["type"], "pong");
    assert_eq!(sim.hub.metrics().rate_limited, 2);
}

#[test]
fn rate_limit_close_policy() {
    let mut sim = Sim::with_toml("[rate_limit]\nmessages_per_second = 1.0\nburst = 1\non_exceed = \"close\"\n");
    let id = sim.open("/echo");
    sim.send(id, &text("a"));
    sim.send(id, &text("b"));
    assert_eq!(close_code(&sim.take_output(id)), Some(1008));
}

#[test]
fn slow_consumer_close_policy_spares_the_fast_one() {
    let mut sim = Sim::with_toml("[limits]\nsend_queue_bytes = 1000\nslow_consumer = \"close\"\n");
    let slow = sim.open("/chat");
    let fast = sim.open("/chat");
    let sender = sim.open("/chat");
    let message = "x".repeat(300);
    for _ in 0..10 {
        sim.send(sender, &text(&message));
        let frames = server_frames(&sim.take_output(fast));
        assert_eq!(frames.len(), 1, "the fast reader gets every message");
        sim.take_output(sender);
    }
    assert!(sim.hub.queued_bytes(slow) <= 1000 + 400, "queue bounded: {}", sim.hub.queued_bytes(slow));
    assert_eq!(close_code(&sim.take_output(slow)), Some(1008));
    assert_eq!(sim.hub.metrics().slow_consumer_closes, 1);
}

#[test]
fn slow_consumer_drop_policy_counts_drops() {
    let mut sim = Sim::with_toml("[limits]\nsend_queue_bytes = 1000\nslow_consumer = \"drop\"\n");
    let slow = sim.open("/chat");
    let sender = sim.open("/chat");
    for _ in 0..10 {
        sim.send(sender, &text(&"y".repeat(300)));
        sim.take_output(sender);
    }
    assert_eq!(server_frames(&sim.take_output(slow)).len(), 3, "what fit in the queue");
    assert_eq!(sim.hub.metrics().messages_dropped, 7);
    assert!(!sim.is_closed(slow));
    sim.send(sender, &text("after"));
    assert_eq!(server_frames(&sim.take_output(slow)).len(), 1, "delivery resumes once drained");
}

#[test]
fn control_frames_bypass_the_queue_limit() {
    let mut sim = Sim::with_toml("[limits]\nsend_queue_bytes = 100\nslow_consumer = \"drop\"\n");
    let id = sim.open("/echo");
    sim.send(id, &text(&"z".repeat(200)));
    sim.send(id, &client_frame(0x89, b"ping", true));
    let frames = server_frames(&sim.take_output(id));
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].0.opcode, OpCode::Control(Control::Pong));
}

#[test]
fn drain_closes_in_batches_then_at_the_deadline() {
    let mut sim = Sim::with_toml("[drain]\nbatch = 2\ninterval = \"100ms\"\n");
    let ids: Vec<ConnId> = (0..5)
        .map(|i| {
            let id = sim.hub.handle_accept(sim.now, Sim::peer(i + 1));
            sim.send(id, upgrade_request("/echo", "").as_bytes());
            sim.take_output(id);
            id
        })
        .collect();
    let closed_1001 = |sim: &mut Sim| ids.iter().filter(|&&id| close_code(&sim.take_output(id)) == Some(1001)).count();
    sim.hub.handle_shutdown(sim.now, sim.now + Duration::from_secs(1));
    sim.pump();
    assert_eq!(closed_1001(&mut sim), 2);
    sim.advance(Duration::from_millis(99));
    assert_eq!(closed_1001(&mut sim), 0);
    sim.advance(Duration::from_millis(1));
    assert_eq!(closed_1001(&mut sim), 2);
    sim.advance(Duration::from_millis(100));
    assert_eq!(closed_1001(&mut sim), 1);
    assert_eq!(status_of(&sim.connect("/echo", "").1), 503, "no upgrades while draining");
    assert_eq!(http(&mut sim, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0, 503);
    // Nobody answered the close: the deadline ends them all.
    sim.advance(Duration::from_millis(799));
    assert!(ids.iter().all(|id| !sim.is_closed(*id)));
    sim.advance(Duration::from_millis(1));
    assert!(ids.iter().all(|id| sim.is_closed(*id)));
    assert_eq!(sim.hub.connection_count(), 0);
}

#[test]
fn http_endpoints() {
    let mut sim = Sim::with_toml("[http]\napi_key = \"sekret\"\n");
    let (status, body) = http(&mut sim, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http(&mut sim, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_connections_accepted_total"), "{body}");
    let sub = pubsub_client(&mut sim);
    op(&mut sim, sub, r#"{"op":"subscribe","channel":"alerts"}"#);
    let (status, body) = http(&mut sim, "GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["connections"]["by_route"]["/ws"], 1);
    let publish = |key: Option<&str>, body: &str| {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len())
    };
    let good = r#"{"channel":"alerts","data":{"level":"high"}}"#;
    assert_eq!(http(&mut sim, &publish(None, good)).0, 401);
    assert_eq!(http(&mut sim, &publish(Some("wrong"), good)).0, 403);
    let (status, body) = http(&mut sim, &publish(Some("sekret"), "{nope"));
    assert_eq!(status, 400);
    assert!(body.contains("JSON"), "{body}");
    let big = format!(r#"{{"channel":"alerts","data":"{}"}}"#, "a".repeat(70_000));
    assert_eq!(http(&mut sim, &publish(Some("sekret"), &big)).0, 413);
    assert_eq!(http(&mut sim, &publish(Some("sekret"), good)).0, 202);
    let delivered = json_frames(&sim.take_output(sub));
    assert_eq!(
        delivered,
        vec![serde_json::json!({"type":"message","channel":"alerts","seq":1,"data":{"level":"high"}})]
    );
    let mut keyless = Sim::new(Default::default());
    assert_eq!(http(&mut keyless, &publish(Some("x"), good)).0, 404, "no key configured");
}

#[test]
fn nothing_remains_after_close() {
    let mut sim = Sim::new(Default::default());
    let a = pubsub_client(&mut sim);
    let b = sim.open("/chat");
    op(&mut sim, a, r#"{"op":"subscribe","channel":"one"}"#);
    op(&mut sim, a, r#"{"op":"subscribe","channel":"two"}"#);
    sim.send(a, &close_frame(1000, ""));
    sim.take_output(a);
    // b goes away with a broadcast still unread: its queue lets go of the stored frame.
    sim.hub.handle_broadcast(sim.now, "/chat", true, b"unread").expect("/chat is a broadcast route");
    assert_eq!(sim.hub.stored_frames(), 1);
    sim.hub.handle_eof(sim.now, b);
    sim.pump();
    assert_eq!(sim.hub.stored_frames(), 0);
    let m = sim.hub.metrics();
    assert_eq!((m.connections_open, m.subscriptions, m.channels, m.queued_bytes), (0, 0, 0, 0));
    assert!(m.connections_by_route.values().all(|&n| n == 0));
    sim.advance(Duration::from_secs(120));
    sim.pump();
    assert_eq!(sim.timeout, None, "no timer, no per-IP entry left");
}

#[test]
fn in_process_bus_gets_publishes_and_interest() {
    use switchboard_core::BrokerCommand;
    let mut sim = Sim::worker_of(Default::default(), 2);
    let id = pubsub_client(&mut sim);
    op(&mut sim, id, r#"{"op":"subscribe","channel":"news"}"#);
    op(&mut sim, id, r#"{"op":"publish","channel":"news","data":1}"#);
    sim.pump();
    let commands: Vec<BrokerCommand> = std::mem::take(&mut sim.broker);
    assert!(matches!(&commands[0], BrokerCommand::Subscribe(c) if c == "news"), "{commands:?}");
    assert!(matches!(&commands[1], BrokerCommand::Publish(e) if e.channel == "news" && &e.payload[..] == b"1"));
    // An envelope from another worker reaches the local subscriber; our own is ignored.
    let BrokerCommand::Publish(mut envelope) = commands[1].clone() else { unreachable!() };
    sim.hub.handle_broker(sim.now, &envelope);
    assert!(json_frames(&sim.take_output(id)).is_empty(), "our own envelope is not delivered again");
    envelope.origin.worker = 7;
    sim.hub.handle_broker(sim.now, &envelope);
    assert_eq!(json_frames(&sim.take_output(id))[0]["seq"], 2);
}

#[test]
fn redis_broker_asks_the_shell_for_two_connections_and_publishes_through_them() {
    use switchboard_core::LinkConn;
    let config = "[broker]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:7777\"\nprefix = \"t\"\n";
    let mut sim = Sim::worker_of(switchboard_core::Config::from_toml(config).expect("valid config"), 2);
    let id = pubsub_client(&mut sim);
    sim.pump();
    let mut wanted: Vec<(LinkConn, String)> = std::mem::take(&mut sim.redis_opens);
    wanted.sort();
    assert_eq!(
        wanted,
        vec![(LinkConn::Command, "127.0.0.1:7777".to_owned()), (LinkConn::Subscriber, "127.0.0.1:7777".to_owned())]
    );
    assert!(sim.broker.is_empty(), "interest goes to Redis, not to the bus");
    // Redis never answers: the breaker opens after enough failures and /healthz says degraded.
    for _ in 0..20 {
        sim.pump();
        for (which, _) in std::mem::take(&mut sim.redis_opens) {
            sim.hub.handle_redis_connect_failed(sim.now, which);
        }
        sim.advance(Duration::from_secs(1));
    }
    let (status, body) = http(&mut sim, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("degraded"), "{body}");
    // Local delivery goes on; the cross-node copy is counted as dropped.
    op(&mut sim, id, r#"{"op":"subscribe","channel":"n"}"#);
    let got = op(&mut sim, id, r#"{"op":"publish","channel":"n","data":"x"}"#);
    assert_eq!(got[0]["type"], "message");
    assert!(sim.hub.metrics().broker_dropped >= 1);
    // The node's other workers still hear it, through the in-process bus.
    sim.pump();
    let published = sim.broker.iter().any(|c| matches!(c, switchboard_core::BrokerCommand::Publish(_)));
    assert!(published);
}

#[test]
fn a_client_that_sends_without_reading_cannot_grow_its_queue() {
    let mut sim = Sim::with_toml(
        "[limits]\nsend_queue_bytes = 1000\nslow_consumer = \"drop\"\n[rate_limit]\nmessages_per_second = 0.0\n",
    );
    let echo = sim.open("/echo");
    for _ in 0..50 {
        sim.send(echo, &text(&"e".repeat(100)));
    }
    assert!(sim.hub.queued_bytes(echo) <= 1000, "echo queue {}", sim.hub.queued_bytes(echo));
    assert!(sim.hub.metrics().messages_dropped > 0);
    let ws = pubsub_client(&mut sim);
    for _ in 0..100 {
        sim.send(ws, &text(r#"{"op":"ping","id":1}"#));
    }
    assert!(sim.hub.queued_bytes(ws) <= 1000, "reply queue {}", sim.hub.queued_bytes(ws));
    // WebSocket pings are always answered, until answering them would flood the queue.
    let pinger = sim.open("/echo");
    for _ in 0..20_000 {
        sim.send(pinger, &client_frame(0x89, &[7; 100], true));
        if sim.hub.metrics().slow_consumer_closes > 0 {
            break;
        }
    }
    assert_eq!(sim.hub.metrics().slow_consumer_closes, 1);
    assert!(sim.hub.queued_bytes(pinger) <= 64 * 1024 + 256);
}

#[test]
fn a_redis_hub_asks_for_its_sockets_before_any_input() {
    use switchboard_core::{Hub, LinkConn, Output};
    let config = switchboard_core::Config::from_toml("[broker]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:7777\"\n")
        .expect("valid config");
    let mut hub = Hub::new(config, "n").expect("valid config").with_worker(3);
    let mut opened = Vec::new();
    loop {
        match hub.poll_output() {
            Output::RedisOpen { conn, addr } => opened.push((conn, addr)),
            Output::Timeout(at) => {
                assert_eq!(at, None, "no clock yet, so no deadline");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    opened.sort();
    let addr = "127.0.0.1:7777".to_owned();
    assert_eq!(opened, [(LinkConn::Command, addr.clone()), (LinkConn::Subscriber, addr)]);
    // The first input starts the connect deadline.
    let now = switchboard_testkit::origin();
    hub.handle_timeout(now);
    let timeout = std::iter::from_fn(|| match hub.poll_output() {
        Output::Timeout(at) => Some(Some(at)),
        _ => Some(None),
    })
    .flatten()
    .next()
    .flatten();
    assert!(timeout.is_some_and(|at| at > now), "{timeout:?}");
}

#[test]
fn a_hub_over_two_redis_instances_asks_for_a_pair_of_sockets_on_each() {
    use switchboard_core::LinkConn;
    let config = "[broker]\nkind = \"redis\"\nurls = [\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]\n";
    let mut sim = Sim::new(switchboard_core::Config::from_toml(config).expect("valid config"));
    sim.pump();
    let mut opened: Vec<(usize, bool, String)> =
        sim.redis_opens.iter().map(|(conn, addr)| (conn.shard(), conn.is_subscriber(), addr.clone())).collect();
    opened.sort();
    let want = |shard: usize, subscriber: bool| (shard, subscriber, format!("127.0.0.1:700{}", shard + 1));
    assert_eq!(opened, [want(0, false), want(0, true), want(1, false), want(1, true)]);
    for (conn, _) in &sim.redis_opens {
        assert_eq!(LinkConn::from_index(conn.index()), *conn, "index and from_index agree");
    }
    let bad = "[broker]\nkind = \"redis\"\nurls = [\"redis://a:1\", \"redis://a:1\"]\n";
    let error = switchboard_core::Config::from_toml(bad).expect_err("a repeated instance is refused");
    assert_eq!(error.key, "broker.urls[1]");
}
