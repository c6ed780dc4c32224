//! The hub seen from outside: fan-out across workers, pub/sub, admission, heartbeats,
//! backpressure and the HTTP API, checked against every shell binary.
//!
//! `max_connections` and `max_connections_per_ip` are limits of each worker's hub today, so
//! the tests that count up to them run one worker.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use switchboard_tests::{
    IO_TIMEOUT, Message, PubSub, RawClient, Server, Settings, body, close_and_wait, encode_frame, for_each_binary,
    get_json, header, http, json, op, recv, recv_data, recv_text, send, status, wait_for_stats, ws,
};

#[test]
fn broadcast_reaches_every_client_exactly_once_across_workers() {
    const CLIENTS: usize = 16;
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        // The kernel spreads connections over both workers' listeners by address hash: with 16,
        // both workers hold some except with odds of 2 in 65536.
        let mut clients: Vec<_> = (0..CLIENTS).map(|_| ws(&server, "/chat")).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            send(client, Message::text(format!("from {i}")));
        }
        let expected: BTreeSet<String> = (0..CLIENTS).map(|i| format!("from {i}")).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            let mut seen = BTreeSet::new();
            for _ in 0..CLIENTS {
                let text = recv_text(client);
                assert!(seen.insert(text.clone()), "client {i} got {text:?} twice");
            }
            assert_eq!(seen, expected, "client {i}");
        }
        // Every client has everything; a copy delivered twice would come before this marker,
        // which leaves after every message above reached every worker.
        send(&mut clients[0], Message::text("end"));
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(recv_text(client), "end", "client {i} got an extra message");
        }
        let total = (CLIENTS * (CLIENTS + 1)) as u64;
        wait_for_stats(server.addr, 6, "every message queued once per client", |s| {
            s["messages"]["out"] == total && s["messages"]["in"] == CLIENTS as u64 + 1
        });
    });
}

#[test]
fn pubsub_subscribe_publish_unsubscribe_across_workers() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut a = PubSub::connect_on_worker(&server, "/ws", 0);
        let mut b = PubSub::connect_on_worker(&server, "/ws", 1);
        // On b's worker: once c has a message, b's worker has handled it too.
        let mut c = PubSub::connect_on_worker(&server, "/ws", 1);

        a.expect_ack(r#"{"op":"subscribe","channel":"news","id":1}"#, 1);
        b.send(r#"{"op":"subscribe","channel":"news","id":"b-1","presence":{"name":"Bo"}}"#);
        assert_eq!(b.recv_json(), serde_json::json!({"type": "ack", "id": "b-1"}));
        c.expect_ack(r#"{"op":"subscribe","channel":"news","id":3}"#, 3);

        // `data` travels byte for byte, whitespace included.
        let data = r#"{ "headline" : "Hello",  "n":[1, 2] }"#;
        a.send(&format!(r#"{{"op":"publish","channel":"news","data":{data},"id":2}}"#));
        let replies = [a.next_text(), a.next_text()];
        let expected = format!(r#"{{"type":"message","channel":"news","seq":1,"data":{data}}}"#);
        assert!(replies.contains(&r#"{"type":"ack","id":2}"#.to_owned()), "{replies:?}");
        assert!(replies.contains(&expected), "{replies:?}");
        assert_eq!(b.next_text(), expected);
        assert_eq!(c.next_text(), expected);

        // The other way: published on worker 1, delivered on worker 0.
        b.send(r#"{"op":"publish","channel":"news","data":"back"}"#);
        let back = r#"{"type":"message","channel":"news","seq":2,"data":"back"}"#;
        assert_eq!(a.next_text(), back);
        assert_eq!(b.next_text(), back);
        assert_eq!(c.next_text(), back);

        b.expect_ack(r#"{"op":"unsubscribe","channel":"news","id":5}"#, 5);
        a.send(r#"{"op":"publish","channel":"news","data":"after","id":6}"#);
        let replies = [a.recv_json(), a.recv_json()];
        assert!(replies.contains(&serde_json::json!({"type": "ack", "id": 6})), "{replies:?}");
        assert!(replies.iter().any(|r| r["data"] == "after"), "{replies:?}");
        assert_eq!(c.recv_json()["data"], "after");
        // c's worker is b's worker and has delivered "after": b must have nothing before its pong.
        b.send(r#"{"op":"ping","id":7}"#);
        assert_eq!(b.recv_json(), serde_json::json!({"type": "pong", "id": 7}));

        // Refusals that are not the client's fault in form do not count as strikes.
        b.send(r#"{"op":"unsubscribe","channel":"news","id":8}"#);
        assert_error(&b.recv_json(), "not_subscribed", Some(8));
        c.send(r#"{"op":"subscribe","channel":"news","id":9}"#);
        assert_error(&c.recv_json(), "already_subscribed", Some(9));
        for _ in 0..4 {
            c.send(r#"{"op":"subscribe","channel":"news"}"#);
            assert_error(&c.recv_json(), "already_subscribed", None);
        }
        c.send(r#"{"op":"ping","id":10}"#);
        assert_eq!(c.recv_json()["type"], "pong", "c was closed for refusals that are no strikes");

        // Three strikes (max_protocol_errors = 3): each gets its error reply, the third a 1008.
        b.send("this is not json");
        assert_error(&b.recv_json(), "bad_json", None);
        send(&mut b.ws, Message::binary(b"{}".to_vec()));
        assert_error(&b.recv_json(), "bad_json", None);
        b.send(r#"{"op":"subscribe","channel":"no spaces allowed","id":11}"#);
        assert_error(&b.recv_json(), "bad_channel", Some(11));
        expect_close(&mut b.ws, 1008, "too many protocol errors");

        let mut d = PubSub::connect(&server, "/ws");
        d.send(r#"{"op":"dance","id":12}"#);
        assert_error(&d.recv_json(), "unknown_op", Some(12));
        d.send(r#"{"op":"subscribe","id":13}"#);
        assert_error(&d.recv_json(), "bad_request", Some(13));
        d.send(r#"{"op":"publish","channel":"news","data":1,"chanel":"typo"}"#);
        assert_error(&d.recv_json(), "bad_request", None);
        expect_close(&mut d.ws, 1008, "too many protocol errors");

        // The channel still works for those who stayed.
        c.send(r#"{"op":"publish","channel":"news","data":"still"}"#);
        assert_eq!(a.recv_json()["data"], "still");
        assert_eq!(c.recv_json()["data"], "still");
    });
}

fn assert_error(reply: &serde_json::Value, code: &str, id: Option<u64>) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    match id {
        Some(id) => assert_eq!(reply["id"], id, "{reply}"),
        None => assert!(reply.get("id").is_none(), "{reply}"),
    }
}

/// Reads up to the server's close frame (tungstenite answers pings meanwhile).
fn expect_close(socket: &mut switchboard_tests::Ws, code: u16, reason: &str) {
    loop {
        match recv(socket) {
            Message::Close(Some(frame)) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (code, reason));
                return;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected close {code} {reason:?}, got {other:?}"),
        }
    }
}

#[test]
fn upgrades_over_max_connections_get_503_with_one_worker() {
    for_each_binary(|bin| {
        let settings = Settings { workers: 1, max_connections: 3, ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut open: Vec<_> = (0..3).map(|_| ws(&server, "/echo")).collect();
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
        assert_eq!(status(&head), 503, "{head}");
        assert!(header(&head, "retry-after").is_some(), "{head}");
        // Plain HTTP is not a connection the limit counts.
        assert_eq!(status(&http(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")), 200);
        let stats = get_json(server.addr, "/api/stats");
        assert_eq!(stats["rejections_by_status"]["503"], 1, "{stats}");

        close_and_wait(open.remove(0));
        let mut again = ws(&server, "/echo");
        send(&mut again, Message::text("room again"));
        assert_eq!(recv_data(&mut again), Message::text("room again"));
    });
}

#[test]
fn too_many_connections_from_one_address_get_429_with_one_worker() {
    for_each_binary(|bin| {
        let settings = Settings { workers: 1, max_connections_per_ip: 2, ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut open: Vec<_> = (0..2).map(|_| ws(&server, "/echo")).collect();
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
        assert_eq!(status(&head), 429, "{head}");
        assert!(header(&head, "retry-after").is_some(), "{head}");
        close_and_wait(open.remove(0));
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
        assert_eq!(status(&head), 101, "{head}");

        // Connecting too fast: a burst of 2, then one a minute.
        let settings = Settings { workers: 1, connect_rate: (1.0 / 60.0, 2), ..Settings::default() };
        let server = Server::with(bin, &settings);
        let _first: Vec<_> = (0..2).map(|_| ws(&server, "/echo")).collect();
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
        assert_eq!(status(&head), 429, "{head}");
        let wait: u64 = header(&head, "retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!((1..=60).contains(&wait), "Retry-After {wait}: {head}");
    });
}

#[test]
fn upgrades_while_draining_get_503() {
    for_each_binary(|bin| {
        // One worker: a worker with no connection left ends at once and takes its listener along.
        let settings = Settings { workers: 1, drain_timeout: "20s", ..Settings::default() };
        let server = Server::with(bin, &settings);
        // Never answers the close frame, which keeps the drain (and the process) going.
        let mut silent = RawClient::open(server.addr, "/echo");
        server.signal("TERM");
        assert_eq!(silent.expect_close(), 1001);
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
        assert_eq!(status(&head), 503, "{head}");
        assert!(header(&head, "retry-after").is_some(), "{head}");
        let health = http(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&health), 503, "{health}");
        assert!(body(&health).contains("draining"), "{health}");
    });
}

#[test]
fn client_that_never_answers_pings_is_closed_after_pong_timeout() {
    for_each_binary(|bin| {
        let settings = Settings { heartbeat: ("200ms", "400ms", "0s"), ..Settings::default() };
        let server = Server::with(bin, &settings);
        let started = Instant::now();
        let mut client = RawClient::open(server.addr, "/echo");
        let mut pings = 0;
        let close = loop {
            let Some(frame) = client.read_frame() else { panic!("closed without a close frame") };
            match frame.opcode {
                op::PING => pings += 1,
                op::CLOSE => break frame,
                other => panic!("unexpected opcode {other:#x}"),
            }
        };
        let waited = started.elapsed();
        assert_eq!(close.close_code(), 1008);
        assert_eq!(close.payload.get(2..), Some(&b"pong timeout"[..]));
        assert!(pings >= 1, "closed before any ping");
        // The first ping leaves at 200 ms and its pong is due 400 ms later.
        assert!(waited >= Duration::from_millis(550), "closed after only {waited:?}");
        assert!(waited < Duration::from_secs(5), "closed only after {waited:?}");
        let stats = wait_for_stats(server.addr, 1, "a pong timeout", |s| s["heartbeat"]["pong_timeouts"] == 1);
        assert_eq!(stats["closes_by_code"]["1008"], 1, "{stats}");
    });
}

#[test]
fn client_that_answers_pings_but_sends_nothing_is_closed_after_idle_timeout() {
    for_each_binary(|bin| {
        // A client that did not answer pings would be closed for that after 450 ms: reaching
        // the idle timeout shows the pongs arrived.
        let settings = Settings { heartbeat: ("150ms", "300ms", "1200ms"), ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut socket = ws(&server, "/echo");
        send(&mut socket, Message::text("the last thing I say"));
        assert_eq!(recv_data(&mut socket), Message::text("the last thing I say"));
        let started = Instant::now();
        let mut pings = 0;
        let close = loop {
            match recv(&mut socket) {
                // tungstenite queues the pong and sends it on the next read.
                Message::Ping(_) => pings += 1,
                Message::Close(Some(frame)) => break frame,
                other => panic!("unexpected {other:?}"),
            }
        };
        let waited = started.elapsed();
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "idle timeout"));
        assert!(pings >= 3, "only {pings} ping(s) in {waited:?}");
        assert!(waited >= Duration::from_millis(1000), "closed after only {waited:?}");
        assert!(waited < Duration::from_secs(5), "closed only after {waited:?}");
    });
}

/// Messages the publisher sends in the slow-consumer tests, and their size.
const FLOOD: usize = 800;
const FLOOD_BYTES: usize = 16 * 1024;
/// Messages the publisher may have in flight (sent, not yet back): keeps the fast reader's
/// queue far below `send_queue_bytes` however the server batches its reads.
const WINDOW: usize = 4;

/// A slow client (tiny receive buffer, never reads) and a fast one join `path`; the fast one
/// publishes `FLOOD` numbered messages and must get every one back, in order. Returns the slow
/// client, untouched since its upgrade.
fn flood(server: &Server, path: &str) -> RawClient {
    let mut slow = RawClient::connect_small_buffer(server.addr);
    slow.send_raw(switchboard_tests::upgrade_request(path, &[], &[]).as_bytes());
    let head = slow.read_head();
    assert_eq!(status(&head), 101, "{head}");

    let mut fast = RawClient::open(server.addr, path);
    let mut writer = fast.stream.try_clone().unwrap_or_else(|e| panic!("clone: {e}"));
    let (credit, credits) = mpsc::channel::<()>();
    let publisher = thread::spawn(move || {
        for i in 0..FLOOD {
            if i >= WINDOW && credits.recv_timeout(IO_TIMEOUT).is_err() {
                return Err(format!("no progress after message {i}"));
            }
            let frame = encode_frame(true, 0, op::BINARY, &numbered(i), true);
            writer.write_all(&frame).map_err(|e| format!("write {i}: {e}"))?;
        }
        Ok(())
    });
    for i in 0..FLOOD {
        let frame = loop {
            match fast.read_frame() {
                Some(frame) if frame.opcode == op::PING => {}
                Some(frame) => break frame,
                None => panic!("fast client closed after {i} messages"),
            }
        };
        assert_eq!((frame.opcode, number(&frame.payload)), (op::BINARY, Some(i)), "fast client, message {i}");
        let _ = credit.send(());
    }
    let sent = publisher.join().unwrap_or_else(|_| Err("publisher panicked".to_owned()));
    assert_eq!(sent, Ok(()));
    slow.grow_receive_buffer();
    slow
}

/// No ping during a slow-consumer test: the slow client could not answer one.
const QUIET: (&str, &str, &str) = ("1h", "10s", "0s");

/// How long reading what piled up for the slow client may take.
const CATCH_UP: Duration = Duration::from_secs(10);

fn numbered(i: usize) -> Vec<u8> {
    let mut payload = vec![(i % 251) as u8; FLOOD_BYTES];
    payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
    payload
}

fn number(payload: &[u8]) -> Option<usize> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let n = usize::try_from(u64::from_be_bytes(head)).ok()?;
    (payload.len() == FLOOD_BYTES && payload.iter().skip(8).all(|&b| b == (n % 251) as u8)).then_some(n)
}

#[test]
fn slow_consumer_is_closed_while_a_fast_one_gets_everything() {
    for_each_binary(|bin| {
        let settings =
            Settings { send_queue: "256KiB", close_timeout: "500ms", heartbeat: QUIET, ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut slow = flood(&server, "/chat");
        // What reached the slow client before the server gave up on it: a gapless prefix, then
        // (if the queue ever drained that far) a 1008, then the end of the connection.
        let mut next = 0;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            assert!(Instant::now() < deadline, "slow client still reading after {CATCH_UP:?}");
            match slow.read_frame() {
                Some(frame) if frame.opcode == op::CLOSE => {
                    assert_eq!(frame.close_code(), 1008);
                    break;
                }
                Some(frame) if frame.opcode == op::PING => {}
                Some(frame) => {
                    assert_eq!(number(&frame.payload), Some(next), "slow client");
                    next += 1;
                }
                None => break,
            }
        }
        assert!(next < FLOOD, "the slow client got all {FLOOD} messages: it was never slow");
        assert!(slow.closed_by_server(), "slow client still connected");
        let stats = wait_for_stats(server.addr, 6, "one slow-consumer close", |s| {
            s["slow_consumer_closes"] == 1 && s["messages"]["dropped"] == 0
        });
        assert_eq!(stats["closes_by_code"]["1008"], 1, "{stats}");
    });
}

#[test]
fn slow_consumer_misses_messages_under_drop_while_a_fast_one_gets_everything() {
    for_each_binary(|bin| {
        let settings = Settings { send_queue: "256KiB", heartbeat: QUIET, ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut slow = flood(&server, "/chat-drop");
        // The slow client catches up: what it gets is in order, with gaps, and it stays open.
        slow.send_frame(true, op::PING, b"still there?", true);
        let mut received = Vec::new();
        let deadline = Instant::now() + CATCH_UP;
        loop {
            assert!(Instant::now() < deadline, "slow client still reading after {CATCH_UP:?}");
            let Some(frame) = slow.read_frame() else { panic!("slow client closed under drop") };
            match frame.opcode {
                op::PONG => break,
                op::PING => {}
                op::BINARY => received.push(number(&frame.payload).unwrap_or(usize::MAX)),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order: {received:?}");
        assert!(received.len() < FLOOD, "nothing was dropped");
        slow.send_frame(true, op::TEXT, b"caught up", true);
        // Messages of the flood still queued behind the pong arrive before our own broadcast:
        // they were delivered, not dropped.
        let echo = loop {
            match slow.read_frame() {
                Some(frame) if frame.opcode == op::TEXT => break frame,
                Some(frame) if frame.opcode == op::BINARY => {
                    received.push(number(&frame.payload).unwrap_or(usize::MAX));
                }
                other => panic!("expected our own broadcast back, got {other:?}"),
            }
        };
        assert_eq!(echo.payload, b"caught up");
        assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order: {received:?}");
        let dropped = (FLOOD - received.len()) as u64;
        let stats = wait_for_stats(server.addr, 6, "the drops", |s| s["messages"]["dropped"] == dropped);
        assert_eq!(stats["slow_consumer_closes"], 0, "{stats}");
    });
}

#[test]
fn metrics_and_stats_show_the_whole_node_on_any_worker() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut clients: Vec<_> = (0..6).map(|_| ws(&server, "/echo")).collect();
        for client in &mut clients {
            send(client, Message::text("count me"));
            assert_eq!(recv_data(client), Message::text("count me"));
        }
        let stats = wait_for_stats(server.addr, 6, "6 connections on /echo", |s| {
            s["connections"]["by_route"]["/echo"] == 6 && s["messages"]["in"] == 6
        });
        assert_eq!(stats["node"], "t", "{stats}");
        assert_eq!(stats["draining"], false, "{stats}");
        assert_eq!(stats["broker"], "disabled", "{stats}");
        assert!(stats["connections"]["upgrades"].as_u64() >= Some(6), "{stats}");

        let response = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&response), 200, "{response}");
        let content_type = header(&response, "content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let text = body(&response);
        for line in [
            "# TYPE switchboard_connections_open gauge",
            "# TYPE switchboard_upgrades_total counter",
            "switchboard_connections_by_route{route=\"/echo\"} 6",
            "switchboard_messages_in_total 6",
            "switchboard_messages_out_total 6",
            "switchboard_accept_errors_total 0",
            "switchboard_build_info{version=\"0.1.0\",node=\"t\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    });
}

#[test]
fn api_publish_needs_the_key_and_reaches_subscribers_on_every_worker() {
    const KEY: &str = "s3cret-key";
    for_each_binary(|bin| {
        let settings = Settings { api_key: KEY, ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut subscribers = [0, 1].map(|worker| PubSub::connect_on_worker(&server, "/ws", worker));
        for (i, subscriber) in (1..).zip(&mut subscribers) {
            subscriber.expect_ack(&format!(r#"{{"op":"subscribe","channel":"alerts","id":{i}}}"#), i);
        }
        let mut chat: Vec<_> = (0..8).map(|_| ws(&server, "/chat")).collect();

        let publish = |auth: Option<&str>, body: &str| {
            let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
            let request = format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            http(server.addr, &request)
        };
        let data = r#"{"level": "high" , "n":1}"#;
        let to_channel = format!(r#"{{"channel":"alerts","data":{data}}}"#);
        let response = publish(None, &to_channel);
        assert_eq!(status(&response), 401, "{response}");
        assert_eq!(header(&response, "www-authenticate"), Some("Bearer"), "{response}");
        let response = publish(Some("Bearer not-the-key"), &to_channel);
        assert_eq!(status(&response), 403, "{response}");
        let response = publish(Some(&format!("Bearer {KEY}")), &to_channel);
        assert_eq!(status(&response), 202, "{response}");
        assert_eq!(json(body(&response)), serde_json::json!({"status": "accepted"}));
        let expected = format!(r#"{{"type":"message","channel":"alerts","seq":1,"data":{data}}}"#);
        for subscriber in &mut subscribers {
            assert_eq!(subscriber.next_text(), expected, "worker {}", subscriber.worker());
        }

        let response = publish(Some(&format!("Bearer {KEY}")), r#"{"route":"/chat","data":["to","all"]}"#);
        assert_eq!(status(&response), 202, "{response}");
        for client in &mut chat {
            assert_eq!(recv_text(client), r#"["to","all"]"#);
        }

        // Without a key the endpoint does not exist.
        let server = Server::with(bin, &Settings::default());
        let response = http(
            server.addr,
            &format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{to_channel}",
                to_channel.len()
            ),
        );
        assert_eq!(status(&response), 404, "{response}");
    });
}

#[test]
fn subprotocol_is_chosen_by_the_route_preference() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let cases = [
            ("/proto", "v1.switchboard, v2.switchboard", Some("v2.switchboard")),
            ("/proto", "v1.switchboard", Some("v1.switchboard")),
            ("/proto", "chat, v1.switchboard", Some("v1.switchboard")),
            ("/proto", "chat", None),
            ("/echo", "v1.switchboard", None),
        ];
        for (path, offered, chosen) in cases {
            let (mut client, head) =
                RawClient::upgrade(server.addr, path, &[&format!("Sec-WebSocket-Protocol: {offered}")]);
            assert_eq!(status(&head), 101, "{path} offering {offered}: {head}");
            assert_eq!(header(&head, "sec-websocket-protocol"), chosen, "{path} offering {offered}: {head}");
            // The connection works whatever was chosen.
            client.send_frame(true, op::TEXT, b"hi", true);
            let echo = client.read_frame().map(|f| (f.opcode, f.payload));
            assert_eq!(echo, Some((op::TEXT, b"hi".to_vec())), "{path} offering {offered}");
        }
        // A client library that offered several accepts the server's choice.
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(server.url("/proto"))
            .unwrap_or_else(|e| panic!("request: {e}"));
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static("v1.switchboard, v2.switchboard"),
        );
        let (_socket, response) = tungstenite::client(request, switchboard_tests::tcp(server.addr))
            .unwrap_or_else(|e| panic!("tungstenite refused the handshake: {e}"));
        assert_eq!(
            response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
            Some("v2.switchboard")
        );
    });
}

#[test]
fn broadcast_is_compressed_for_deflate_clients_and_plain_for_others() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let (mut deflate, head) =
            RawClient::upgrade(server.addr, "/chat", &["Sec-WebSocket-Extensions: permessage-deflate"]);
        assert_eq!(status(&head), 101, "{head}");
        let extensions = header(&head, "sec-websocket-extensions").unwrap_or_default();
        assert!(extensions.contains("permessage-deflate"), "{head}");
        let mut plain = RawClient::open(server.addr, "/chat");
        let mut sender = ws(&server, "/chat");

        let text = "switchboard broadcast ".repeat(100);
        send(&mut sender, Message::text(text.clone()));
        assert_eq!(recv_data(&mut sender), Message::text(text.clone()));
        let frame = plain.read_frame().unwrap_or_else(|| panic!("plain client: no frame"));
        assert_eq!((frame.rsv, frame.opcode, frame.payload.as_slice()), (0, op::TEXT, text.as_bytes()));
        let frame = deflate.read_frame().unwrap_or_else(|| panic!("deflate client: no frame"));
        assert_eq!((frame.rsv, frame.opcode), (0x40, op::TEXT), "RSV1 marks a compressed message");
        assert!(frame.payload.len() < text.len() / 4, "compressed to only {} bytes", frame.payload.len());

        // Under `compression.min_bytes`, everyone gets the plain frame.
        send(&mut sender, Message::text("short"));
        let frame = deflate.read_frame().unwrap_or_else(|| panic!("deflate client: no frame"));
        assert_eq!((frame.rsv, frame.payload.as_slice()), (0, &b"short"[..]));
    });
}
