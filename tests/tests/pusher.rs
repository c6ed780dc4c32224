//! The Pusher Channels protocol (v7) driven by the real libraries: pusher-js 8.6.0, Laravel Echo
//! 2.5.0 and the `pusher` server SDKs for Node (5.3.4) and Python (3.3.4), in the scenarios of
//! `tests/node/pusher-suite.mjs` and `scripts/pusher-python.py`; and, with a raw tungstenite
//! client, the wire rules no library breaks (handshake errors, pings, garbage, oversized
//! messages). Every scenario runs against every shell binary.
//!
//! `scripts/node-deps` and `scripts/python-venv` install the clients; `scripts/test` runs both.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::cluster::{API_KEY, Redis, broker_toml};
use switchboard_tests::pusher::{
    KEY, Next, Raw, assert_checks, data, node_ready, pusher_toml, python_ready, repo, run_node, run_script, settings,
};
use switchboard_tests::{Server, Settings, for_each_binary};

/// Runs Node scenario `name` against a server of `workers` with `extra` `[pusher]` lines, on
/// every binary, and checks its `ok:` lines.
fn node_scenario(name: &str, workers: usize, extra: &str, checks: &[&str]) {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(workers, "120s", extra));
        let stdout = run_node(name, &json!({ "port": server.addr.port() }));
        assert_checks(&stdout, checks);
        assert_checks(&stdout, &[&format!("scenario {name} passed")]);
    });
}

#[test]
fn pusher_js_connects_and_is_refused_with_pusher_codes() {
    node_scenario(
        "connect",
        1,
        "",
        &[
            "socket id",
            "activity_timeout 120 taken from connection_established",
            "pusher:ping answered by pusher:pong",
            "unknown app key: pusher-js reports error code 4001",
            "unknown app key: pusher-js does not reconnect",
            "disabled app: pusher-js reports error code 4003",
            "tiny-key over max_connections = 1: pusher-js reports error code 4004",
            "tiny-key first connection: connection stays open",
            "tiny-key: the slot frees when the first connection closes",
        ],
    );
}

#[test]
fn pusher_js_public_channels_and_the_http_api() {
    node_scenario(
        "public",
        2,
        "",
        &[
            "a receives the triggered data",
            "c receives a trigger to a channel list",
            "socket_id excludes that connection",
            "trigger with info=subscription_count answers the count",
            "batch event 2 reaches its channel",
            "GET /channels lists occupied channels",
            "GET /channels?filter_by_prefix filters",
            "GET /channels/NAME: occupied, subscription_count 2",
            "an emptied channel leaves GET /channels",
        ],
    );
}

#[test]
fn pusher_js_private_channels_and_refused_authorizations() {
    node_scenario(
        "private",
        2,
        "",
        &[
            "authorized subscribe to a private channel succeeds",
            "signature with the wrong secret: subscription_error {type: AuthError, status: 401, error}",
            "empty auth: subscription_error",
            "signature for another socket id: subscription_error",
            "after refused subscriptions: connection stays open",
            "the refused connection can still subscribe to a private channel",
            "private channel subscribers receive SDK events",
            "private-encrypted- channel: pusher-js decrypts what the SDK encrypted",
        ],
    );
}

#[test]
fn pusher_js_presence_members_and_users_api() {
    node_scenario(
        "presence",
        2,
        "max_presence_members = 2",
        &[
            "raw presence ids name both users",
            "member_added: numeric id stays a number",
            "no member_added for a user's second connection (alice)",
            "GET /channels/NAME/users lists each user once",
            "channel info: user_count 2, subscription_count 3",
            "a full presence channel refuses a new user with status 403",
            "user_info over max_presence_member_bytes: subscription_error 400",
            "no member_removed while alice has another connection",
            "member_removed when the last connection leaves",
            "users list drops a user whose last connection left",
        ],
    );
}

#[test]
fn pusher_js_client_events() {
    node_scenario(
        "client-events",
        2,
        "",
        &[
            "client event relayed to b",
            "the sender does not get its own client event",
            "presence client event carries the sender's user_id",
            "client event on a public channel: pusher:error 4301",
            "after 4301 on a public channel: connection stays open",
            "client event on a channel the sender is not subscribed to: 4301",
            "client events off for the app: 4301",
            "a burst of 25 is cut by the rate limit",
            "client events flow again after a second",
        ],
    );
}

#[test]
fn pusher_js_subscription_count() {
    node_scenario(
        "subscription-count",
        2,
        "",
        &[
            "pusher:subscription_count 1 after the first subscriber",
            "both subscribers get subscription_count 2",
            "subscription_count drops when a subscriber leaves",
            "no subscription_count on an app without it",
            "no subscription_count on presence channels",
        ],
    );
}

#[test]
fn laravel_echo_on_pusher_js() {
    node_scenario(
        "echo",
        2,
        "",
        &[
            "Echo channel().listen('.Event')",
            "Echo listen('Event') in App\\Events",
            "Echo private().listen",
            "Echo whisper/listenForWhisper",
            "Echo .error() on a bad authorization",
            "Echo join().here lists both users",
            "Echo joining()",
            "Echo leaving()",
        ],
    );
}

#[test]
fn pusher_node_sdk_http_errors() {
    node_scenario(
        "http-errors",
        1,
        "",
        &[
            "wrong secret: 401",
            "disabled app: 403",
            "unknown app id: 404",
            "11 KiB of data: 413",
            "no name: 400 naming name",
            "channels not a list: 400 naming channels",
        ],
    );
}

#[test]
fn pusher_python_sdk() {
    let Some(python) = python_ready() else { return };
    let script = repo().join("scripts/pusher-python.py");
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(2, "120s", ""));
        let stdout = run_script(&python, &[&script.to_string_lossy(), &server.addr.port().to_string()]);
        assert_checks(
            &stdout,
            &[
                "presence subscription signed with hmac",
                "trigger reaches the subscriber",
                "trigger_batch event 1",
                "socket_id excludes the connection",
                "channels_info user_count",
                "channel_info",
                "users_info",
                "a wrong secret raises PusherBadAuth (401)",
                "python sdk passed",
            ],
        );
    });
}

#[test]
fn pusher_js_across_three_nodes() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let nodes: Vec<Server> = (1..=3)
            .map(|n| {
                let settings = Settings {
                    workers: 1,
                    api_key: API_KEY,
                    node_id: format!("n{n}"),
                    broker: broker_toml(redis.port),
                    pusher: pusher_toml("120s", ""),
                    ..Settings::default()
                };
                Server::with(bin, &settings)
            })
            .collect();
        let args = nodes.iter().map(|s| json!({ "port": s.addr.port(), "pid": s.pid() })).collect::<Vec<_>>();
        let stdout = run_node("cluster", &json!({ "nodes": args }));
        assert_checks(
            &stdout,
            &[
                "bob on n2 sees alice from n1",
                "member_added crosses nodes (n2 -> n1)",
                "alice joined before bob and carol: nobody was told she joined again",
                "users list from n3 is cluster-wide",
                "a1: events triggered on n1, n2, n3 arrive exactly once each",
                "c3: events triggered on n1, n2, n3 arrive exactly once each",
                "client event: once to each other connection, never to the sender",
                "a1 sees member_removed for bob (dead node)",
                "c3 sees member_removed for bob (dead node)",
                "users list from n1 drops the dead node's only user",
                "a1: alice stays (she has connections on live nodes)",
                "scenario cluster passed",
            ],
        );
    });
}

/// Reads a `pusher:error` with `code`, then a close frame with the same code.
fn expect_refusal(raw: &mut Raw, code: u16, what: &str) {
    let event = raw.expect_event(Duration::from_secs(10));
    assert_eq!(event["event"], "pusher:error", "{what}: {event}");
    assert_eq!(data(&event)["code"], code, "{what}: {event}");
    match raw.next(Duration::from_secs(10)) {
        Next::Close(got, _) => assert_eq!(got, code, "{what}: close code"),
        other => panic!("{what}: expected close {code}, got {other:?}"),
    }
}

#[test]
fn raw_handshake_refusals_carry_pusher_codes() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(1, "120s", ""));
        let cases = [
            (KEY, "", 4008, "no protocol parameter"),
            (KEY, "?client=js&version=8.6.0", 4008, "no protocol parameter (with client)"),
            (KEY, "?protocol=3&client=js&version=8.6.0", 4007, "protocol 3"),
            ("no-such-key", "?protocol=7", 4001, "unknown key"),
            ("off-key", "?protocol=7", 4003, "disabled app"),
        ];
        for (key, query, code, what) in cases {
            let mut raw = Raw::open(server.addr, key, query);
            expect_refusal(&mut raw, code, what);
        }
        let (mut first, _) = Raw::connect(server.addr, "tiny-key");
        let mut second = Raw::open(server.addr, "tiny-key", "?protocol=7");
        expect_refusal(&mut second, 4004, "over the app's max_connections");
        first.ping();
    });
}

#[test]
fn raw_connection_established_and_ping_pong() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(1, "120s", ""));
        let (mut raw, established) = Raw::connect(server.addr, KEY);
        let socket_id = established["socket_id"].as_str().unwrap_or_default();
        let parts: Vec<&str> = socket_id.split('.').collect();
        assert!(
            parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
            "socket_id {socket_id:?} is not <digits>.<digits>: {established}"
        );
        assert_eq!(established["activity_timeout"], 120, "{established}");
        raw.ping();
        // pusher-js sends `data` as an object; some clients send a string or nothing.
        raw.send_text(r#"{"event":"pusher:ping","data":"{}"}"#);
        raw.wait_event("pusher:pong", Duration::from_secs(10));
        raw.send_text(r#"{"event":"pusher:ping"}"#);
        raw.wait_event("pusher:pong", Duration::from_secs(10));
    });
}

#[test]
fn raw_server_pings_and_closes_4201_without_pong() {
    for_each_binary(|bin| {
        let settings = Settings { heartbeat: ("25s", "1s", "300s"), ..settings(1, "1s", "") };
        let server = Server::with(bin, &settings);
        let (mut silent, established) = Raw::connect(server.addr, KEY);
        assert_eq!(established["activity_timeout"], 1, "{established}");
        let (mut lively, _) = Raw::connect(server.addr, KEY);
        let start = Instant::now();
        let (mut silent_pinged, mut silent_closed, mut lively_pongs) = (false, None, 0);
        while start.elapsed() < Duration::from_secs(8) && (silent_closed.is_none() || lively_pongs < 3) {
            match lively.next(Duration::from_millis(50)) {
                Next::Event(event) if event["event"] == "pusher:ping" => {
                    lively.send(&json!({"event": "pusher:pong", "data": {}}));
                    lively_pongs += 1;
                }
                Next::Event(_) | Next::Quiet => {}
                other => panic!("a connection that answers pings was dropped: {other:?}"),
            }
            if silent_closed.is_none() {
                match silent.next(Duration::from_millis(50)) {
                    Next::Event(event) if event["event"] == "pusher:ping" => silent_pinged = true,
                    // A close may be announced by a pusher:error with the same code.
                    Next::Event(event) if event["event"] == "pusher:error" && data(&event)["code"] == 4201 => {}
                    Next::Event(event) => panic!("unexpected event on the silent connection: {event}"),
                    Next::Close(code, _) => silent_closed = Some((code, start.elapsed())),
                    Next::Gone(why) => panic!("the silent connection ended without a close frame: {why}"),
                    Next::Quiet => {}
                }
            }
        }
        assert!(silent_pinged, "no pusher:ping within the activity timeout");
        let (code, after) = silent_closed.unwrap_or_else(|| panic!("no close after an unanswered pusher:ping"));
        assert_eq!(code, 4201, "close code for a missing pong");
        assert!(after >= Duration::from_secs(1), "closed too early: {after:?}");
        assert!(lively_pongs >= 3, "the lively connection saw {lively_pongs} pings");
        lively.ping();
    });
}

#[test]
fn raw_garbage_gets_errors_and_does_not_harm_other_connections() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(1, "120s", ""));
        let (mut good, _) = Raw::connect(server.addr, KEY);
        good.subscribe_public("room");
        // (message, whether it must be answered with an error); each on a fresh connection.
        let cases = [
            ("not json{", true),
            ("[1,2,3]", true),
            (r#"{"no_event":1}"#, true),
            (r#"{"event":"not-client-or-pusher","channel":"room","data":{}}"#, true),
            (r#"{"event":"pusher:subscribe","data":{"channel":""}}"#, true),
            (r#"{"event":"pusher:subscribe","data":{"channel":"bad channel name!"}}"#, true),
            (r#"{"event":"pusher:nonsense","data":{}}"#, false),
            (r#"{"event":"pusher:unsubscribe","data":{"channel":"never-joined"}}"#, false),
        ];
        for (text, must_err) in cases {
            let (mut bad, _) = Raw::connect(server.addr, KEY);
            bad.send_text(text);
            match bad.next(Duration::from_secs(1)) {
                Next::Event(event) => {
                    let name = event["event"].as_str().unwrap_or_default();
                    assert!(
                        name == "pusher:error" || name == "pusher:subscription_error",
                        "{text}: answered with {event}"
                    );
                    let body = data(&event);
                    let message = body["message"].as_str().or(body["error"].as_str());
                    assert!(message.is_some_and(|m| !m.is_empty()), "{text}: an error without a message: {event}");
                }
                Next::Quiet => assert!(!must_err, "{text}: no error within 1 s"),
                other => panic!("{text}: one bad message ended the connection: {other:?}"),
            }
            // One bad message leaves the connection usable.
            bad.ping();
        }
        // Garbage again and again: errors, then at most a close frame (never a dropped socket).
        let (mut bad, _) = Raw::connect(server.addr, KEY);
        for _ in 0..5 {
            bad.send_text("not json{");
        }
        loop {
            match bad.next(Duration::from_secs(2)) {
                Next::Event(event) => assert_eq!(event["event"], "pusher:error", "{event}"),
                Next::Close(code, _) => {
                    assert!(code == 1008 || (4000..5000).contains(&code), "close {code} after repeated garbage");
                    break;
                }
                Next::Quiet => break,
                Next::Gone(why) => panic!("the server dropped a garbage sender without a close frame: {why}"),
            }
        }
        good.ping();
        let (mut third, _) = Raw::connect(server.addr, KEY);
        third.subscribe_public("room");
        third.ping();
        good.ping();
    });
}

#[test]
fn raw_oversized_client_event_gets_a_clear_error() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &settings(1, "120s", ""));
        let (mut big, _) = Raw::connect(server.addr, KEY);
        let (mut other, _) = Raw::connect(server.addr, KEY);
        big.subscribe_public("room");
        other.subscribe_public("room");
        let pad = "x".repeat(64 * 1024);
        big.send(&json!({"event": "client-big", "channel": "room", "data": {"pad": pad}}));
        // pusher_internal:subscription_count may come first (app 1001 has it on).
        let answer = loop {
            match big.next(Duration::from_secs(10)) {
                Next::Event(event) if event["event"].as_str().is_some_and(|e| e.starts_with("pusher_internal:")) => {}
                other => break other,
            }
        };
        match answer {
            Next::Event(event) if event["event"] == "pusher:error" => {
                let message = data(&event)["message"].as_str().unwrap_or_default().to_lowercase();
                assert!(
                    ["bytes", "large", "big", "size", "limit"].iter().any(|w| message.contains(w)),
                    "the error for a 64 KiB event does not say it is too big: {event}"
                );
            }
            Next::Close(code, reason) => {
                assert!(code == 1009 || (4000..5000).contains(&code), "close {code} {reason:?}");
                assert!(code == 1009 || !reason.is_empty(), "close {code} without a reason");
            }
            other => panic!("a 64 KiB client event: expected a pusher:error or a close, got {other:?}"),
        }
        // Nothing reached the other subscriber, which still works.
        other.ping();
        while let Next::Event(event) = other.next(Duration::from_millis(300)) {
            assert_ne!(event["event"], "client-big", "the oversized event reached another subscriber");
        }
    });
}
