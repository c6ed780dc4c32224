//! The native protocol's tokens, namespaces, join/leave and history on a simulated clock:
//! connection tokens in the query string or the connect op, refresh and expiry (4401), bad
//! tokens (4403), namespace rules and subscription tokens, user-limited channels, recovery,
//! and two workers of a node sharing one history.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use support::{Sim, close_code, server_frames, text};
use switchboard_core::{BrokerCommand, Config, ConnId, HistoryStore, HistoryTable, Hub};

const SECRET: &str = "native-test-secret";
/// The wall clock every test starts at (Unix ms).
const WALL0: u64 = 1_800_000_000_000;
const NOW_SECS: u64 = WALL0 / 1000;

const CONFIG: &str = r#"
[heartbeat]
idle_timeout = "0s"
# The simulated clients answer no pings: keep the pong timeout out of these tests.
ping_interval = "1h"

[auth]
hmac_secret = "native-test-secret"
expire_grace = "10s"

[[namespace]]
name = "chat"
subscribe = "authenticated"
publish = "subscribers"
presence = true
join_leave = true
history_size = 5
history_ttl = "1m"
recover = true
max_recover = 3

[[namespace]]
name = "secret"
subscribe = "token"
publish = "subscribers"

[[namespace]]
name = "feed"
subscribe = "anyone"
"#;

fn token(claims: &Value) -> String {
    switchboard_core::sign_hs256(SECRET, &claims.to_string())
}

fn user(sub: &str) -> String {
    token(&json!({"sub": sub, "exp": NOW_SECS + 3600, "info": {"name": sub}}))
}

fn sim_with(toml: &str) -> Sim {
    let mut sim = Sim::with_toml(toml);
    sim.hub.handle_wall_clock(sim.now, WALL0);
    sim
}

fn sim() -> Sim {
    sim_with(CONFIG)
}

/// Text frames (parsed) and the close code in what `id` was sent.
fn frames(sim: &mut Sim, id: ConnId) -> (Vec<Value>, Option<u16>) {
    let bytes = sim.take_output(id);
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> (Vec<Value>, Option<u16>) {
    let texts = server_frames(bytes)
        .into_iter()
        .filter(|(h, _)| {
            h.opcode
                == tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Text)
        })
        .map(|(_, p)| serde_json::from_slice(&p).expect("server frames are JSON"))
        .collect();
    (texts, close_code(bytes))
}

/// Opens `/ws{query}`: the connection and the frames that came with the 101.
fn connect(sim: &mut Sim, query: &str) -> (ConnId, Vec<Value>, Option<u16>) {
    let id = sim.accept();
    sim.send(id, support::upgrade_request(&format!("/ws{query}"), "").as_bytes());
    let out = sim.take_output(id);
    let head = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(out.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&out));
    let (list, close) = parse(&out[head..]);
    (id, list, close)
}

fn open(sim: &mut Sim, query: &str) -> ConnId {
    connect(sim, query).0
}

fn op(sim: &mut Sim, id: ConnId, value: Value) -> Vec<Value> {
    sim.send(id, &text(&value.to_string()));
    frames(sim, id).0
}

fn of_type<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|f| f["type"] == kind).collect()
}

#[test]
fn a_query_token_names_the_user_in_welcome() {
    let mut sim = sim();
    let (_, list, close) = connect(&mut sim, &format!("?token={}", user("ann")));
    assert_eq!(close, None);
    assert_eq!(list[0]["type"], "welcome");
    assert_eq!(list[0]["user"], "ann");
    assert_eq!(list[0]["expires_at"], NOW_SECS + 3600);
}

#[test]
fn bad_tokens_close_with_a_code_that_says_whether_to_retry() {
    let expired = token(&json!({"sub":"ann","exp": NOW_SECS - 60}));
    let forged = switchboard_core::sign_hs256("other-secret", r#"{"sub":"ann"}"#);
    // {"alg":"none"} . {"sub":"ann"} . (no signature)
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4ifQ.".to_owned();
    for (token, code) in [(expired, 4401), (forged, 4403), (unsigned, 4403), ("garbage".to_owned(), 4403)] {
        let mut sim = sim();
        let (_, list, close) = connect(&mut sim, &format!("?token={token}"));
        assert_eq!(close, Some(code), "{token}");
        assert!(list.is_empty(), "no welcome before the close: {list:?}");
        assert_eq!(sim.hub.metrics().auth_failures, 1);
    }
}

#[test]
fn the_connect_op_authenticates_and_require_holds_back_everything_else() {
    let mut sim = sim_with(
        &format!("{CONFIG}\n[server]\nhandshake_timeout = \"5s\"\n").replace("[auth]\n", "[auth]\nrequire = true\n"),
    );
    let id = open(&mut sim, "");
    let list = op(&mut sim, id, json!({"op":"subscribe","channel":"feed:x","id":1}));
    assert_eq!(of_type(&list, "error")[0]["code"], "not_authenticated");
    let list = op(&mut sim, id, json!({"op":"connect","token":user("bob"),"id":2}));
    let connected = of_type(&list, "connected");
    assert_eq!((connected[0]["id"].clone(), connected[0]["user"].clone()), (json!(2), json!("bob")));
    let list = op(&mut sim, id, json!({"op":"connect","token":user("bob"),"id":3}));
    assert_eq!(of_type(&list, "error")[0]["code"], "already_connected");
    let list = op(&mut sim, id, json!({"op":"subscribe","channel":"feed:x","id":4}));
    assert_eq!(of_type(&list, "ack").len(), 1, "{list:?}");

    // One that never authenticates is closed after the handshake timeout.
    let late = open(&mut sim, "");
    sim.advance(Duration::from_secs(4));
    assert!(!sim.is_closed(late));
    sim.advance(Duration::from_secs(2));
    assert_eq!(frames(&mut sim, late).1, Some(4401));
    assert!(!sim.is_closed(id), "the authenticated one stays");
}

#[test]
fn an_expired_token_closes_after_the_grace_unless_refreshed() {
    let mut sim = sim();
    let short = |sub: &str, secs: u64| token(&json!({"sub": sub, "exp": NOW_SECS + secs}));
    let kept = open(&mut sim, &format!("?token={}", short("ann", 30)));
    let lapsed = open(&mut sim, &format!("?token={}", short("bob", 30)));
    sim.advance(Duration::from_secs(20));
    let list = op(&mut sim, kept, json!({"op":"refresh","token": short("ann", 120),"id":1}));
    assert_eq!(of_type(&list, "refreshed")[0]["expires_at"], NOW_SECS + 120);
    let list = op(&mut sim, kept, json!({"op":"refresh","token": short("eve", 120),"id":2}));
    assert_eq!(of_type(&list, "error")[0]["code"], "bad_token", "another user's token");
    sim.advance(Duration::from_secs(19)); // 39 s: within exp + grace
    assert!(!sim.is_closed(lapsed));
    sim.advance(Duration::from_secs(2)); // 41 s
    assert_eq!(frames(&mut sim, lapsed).1, Some(4401));
    assert!(!sim.is_closed(kept));
    sim.advance(Duration::from_secs(90)); // 131 s: past the refreshed exp + grace
    assert_eq!(frames(&mut sim, kept).1, Some(4401));
}

#[test]
fn namespaces_decide_who_subscribes_and_publishes() {
    let mut sim = sim();
    let anon = open(&mut sim, "");
    let ann = open(&mut sim, &format!("?token={}", user("ann")));
    frames(&mut sim, anon);
    frames(&mut sim, ann);
    let code = |list: Vec<Value>| of_type(&list, "error").first().map(|e| e["code"].clone());

    assert_eq!(
        code(op(&mut sim, anon, json!({"op":"subscribe","channel":"chat:a","id":1}))),
        Some(json!("not_authenticated"))
    );
    assert_eq!(code(op(&mut sim, anon, json!({"op":"subscribe","channel":"feed:a","id":1}))), None);
    assert_eq!(
        code(op(&mut sim, anon, json!({"op":"publish","channel":"feed:a","data":1,"id":2}))),
        Some(json!("forbidden"))
    );
    assert_eq!(
        code(op(&mut sim, ann, json!({"op":"publish","channel":"chat:a","data":1,"id":3}))),
        Some(json!("forbidden")),
        "not a subscriber"
    );
    assert_eq!(
        code(op(&mut sim, anon, json!({"op":"subscribe","channel":"plain","id":4}))),
        None,
        "no namespace: the route's rules"
    );

    // Subscription tokens: for this channel and this user only.
    let sub_token = |sub: &str, channel: &str| token(&json!({"sub": sub, "channel": channel, "exp": NOW_SECS + 60}));
    assert_eq!(
        code(op(&mut sim, ann, json!({"op":"subscribe","channel":"secret:x","id":5}))),
        Some(json!("bad_token"))
    );
    assert_eq!(
        code(op(
            &mut sim,
            ann,
            json!({"op":"subscribe","channel":"secret:x","token": sub_token("ann","secret:y"),"id":6})
        )),
        Some(json!("bad_token"))
    );
    assert_eq!(
        code(op(
            &mut sim,
            ann,
            json!({"op":"subscribe","channel":"secret:x","token": sub_token("bob","secret:x"),"id":7})
        )),
        Some(json!("bad_token"))
    );
    assert_eq!(
        code(op(
            &mut sim,
            ann,
            json!({"op":"subscribe","channel":"secret:x","token": sub_token("ann","secret:x"),"id":8})
        )),
        None
    );

    // User-limited channels.
    assert_eq!(code(op(&mut sim, ann, json!({"op":"subscribe","channel":"feed:dm#ann,bob","id":9}))), None);
    assert_eq!(
        code(op(&mut sim, ann, json!({"op":"subscribe","channel":"feed:dm#bob,cy","id":10}))),
        Some(json!("forbidden"))
    );
    assert_eq!(
        code(op(&mut sim, anon, json!({"op":"subscribe","channel":"feed:dm#ann","id":11}))),
        Some(json!("forbidden"))
    );
    // None of these refusals is a strike.
    assert!(!sim.is_closed(anon) && !sim.is_closed(ann));
}

#[test]
fn join_leave_and_presence_show_the_user_and_token_info() {
    let mut sim = sim();
    let ann = open(&mut sim, &format!("?token={}", user("ann")));
    let bob = open(&mut sim, &format!("?token={}", user("bob")));
    op(&mut sim, ann, json!({"op":"subscribe","channel":"chat:room","id":1}));
    op(&mut sim, bob, json!({"op":"subscribe","channel":"chat:room","id":1,"presence":{"mood":"ok"}}));
    let list = frames(&mut sim, ann).0;
    let join = of_type(&list, "join");
    assert_eq!(join.len(), 1, "{list:?}");
    assert_eq!(join[0]["member"]["user"], "bob");
    assert_eq!(join[0]["member"]["info"], json!({"mood":"ok"}));
    let list = op(&mut sim, ann, json!({"op":"presence","channel":"chat:room","id":2}));
    let members = &of_type(&list, "presence")[0]["members"];
    let mut users: Vec<(String, Value)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap().to_owned(), m["info"].clone()))
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(users, [("ann".to_owned(), json!({"name":"ann"})), ("bob".to_owned(), json!({"mood":"ok"}))]);
    sim.send(bob, &support::close_frame(1000, ""));
    let list = frames(&mut sim, ann).0;
    assert_eq!(of_type(&list, "leave")[0]["member"]["user"], "bob");
    // Presence is off in the feed namespace.
    op(&mut sim, ann, json!({"op":"subscribe","channel":"feed:f","id":3}));
    let list = op(&mut sim, ann, json!({"op":"presence","channel":"feed:f","id":4}));
    assert_eq!(of_type(&list, "error")[0]["code"], "forbidden");
}

/// Offsets of the `message` frames (and recovered publications) in `list`, in order.
fn offsets(list: &[Value]) -> Vec<u64> {
    let mut out = Vec::new();
    for frame in list {
        match frame["type"].as_str() {
            Some("message") => out.push(frame["offset"].as_u64().expect("an offset")),
            Some("subscribed") => out
                .extend(frame["publications"].as_array().into_iter().flatten().map(|p| p["offset"].as_u64().unwrap())),
            _ => {}
        }
    }
    out
}

#[test]
fn a_subscriber_recovers_what_it_missed_or_is_told_it_cannot() {
    let mut sim = sim();
    let ann = open(&mut sim, &format!("?token={}", user("ann")));
    let list = op(&mut sim, ann, json!({"op":"subscribe","channel":"chat:r","id":1}));
    let first = of_type(&list, "subscribed")[0].clone();
    assert_eq!(
        (first["offset"].clone(), first["recovered"].clone(), first["recoverable"].clone()),
        (json!(0), json!(false), json!(true))
    );
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 1..=2 {
        sim.hub.handle_publish(sim.now, "chat:r", &n.to_string()).unwrap();
    }
    let list = frames(&mut sim, ann).0;
    assert_eq!(offsets(&list), [1, 2]);
    assert_eq!(list[0]["seq"], 1);

    // Ann leaves; three are published; she comes back from offset 2.
    sim.send(ann, &support::close_frame(1000, ""));
    for n in 3..=5 {
        sim.hub.handle_publish(sim.now, "chat:r", &n.to_string()).unwrap();
    }
    let again = open(&mut sim, &format!("?token={}", user("ann")));
    let list =
        op(&mut sim, again, json!({"op":"subscribe","channel":"chat:r","id":2,"recover":{"epoch":epoch,"offset":2}}));
    let reply = of_type(&list, "subscribed")[0].clone();
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&list), [3, 4, 5]);
    assert_eq!(reply["publications"][0]["data"], 3);
    sim.hub.handle_publish(sim.now, "chat:r", "6").unwrap();
    assert_eq!(offsets(&frames(&mut sim, again).0), [6], "live continues right after");

    // More than max_recover (3) missed, a wrong epoch, or evicted: never a partial recovery.
    for (position, why) in [
        (json!({"epoch":epoch,"offset":2}), "4 missed"),
        (json!({"epoch":"other","offset":6}), "epoch"),
        (json!({"epoch":epoch,"offset":0}), "evicted"),
    ] {
        let late = open(&mut sim, &format!("?token={}", user("cy")));
        let list = op(&mut sim, late, json!({"op":"subscribe","channel":"chat:r","id":3,"recover":position}));
        let reply = of_type(&list, "subscribed")[0].clone();
        assert_eq!((reply["recovered"].clone(), reply["offset"].clone()), (json!(false), json!(6)), "{why}: {reply}");
        assert!(offsets(&list).is_empty(), "{why}");
    }

    // The history op pages, and refuses a stale epoch.
    let list = op(
        &mut sim,
        again,
        json!({"op":"history","channel":"chat:r","id":4,"since":{"epoch":epoch,"offset":3},"limit":2}),
    );
    let page = of_type(&list, "history")[0].clone();
    assert_eq!(
        page["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect::<Vec<_>>(),
        [4, 5]
    );
    let list =
        op(&mut sim, again, json!({"op":"history","channel":"chat:r","id":5,"since":{"epoch":"stale","offset":3}}));
    assert_eq!(of_type(&list, "error")[0]["code"], "epoch_changed");
    let list = op(&mut sim, again, json!({"op":"history","channel":"feed:x","id":6}));
    assert_eq!(of_type(&list, "error")[0]["code"], "history_unavailable");
}

#[test]
fn history_expires_with_its_ttl_and_comes_back_with_a_new_epoch() {
    let mut sim = sim();
    let ann = open(&mut sim, &format!("?token={}", user("ann")));
    sim.hub.handle_publish(sim.now, "chat:t", "1").unwrap();
    let list = op(&mut sim, ann, json!({"op":"history","channel":"chat:t","id":1}));
    let epoch = of_type(&list, "history")[0]["epoch"].clone();
    sim.advance(Duration::from_secs(61));
    let list = op(&mut sim, ann, json!({"op":"history","channel":"chat:t","id":2}));
    let page = of_type(&list, "history")[0].clone();
    assert_ne!(page["epoch"], epoch);
    assert_eq!((page["offset"].clone(), page["publications"].clone()), (json!(0), json!([])));
}

/// A history table two hubs share, as the shells share one behind a lock.
#[allow(clippy::disallowed_types, reason = "the test stands in for the shell, which shares the table")]
#[derive(Debug, Clone)]
struct Shared(std::sync::Arc<std::sync::Mutex<HistoryTable>>);

impl HistoryStore for Shared {
    fn append(
        &mut self,
        c: &str,
        d: bytes::Bytes,
        r: switchboard_core::StreamRules,
        n: std::time::Instant,
    ) -> switchboard_core::StreamTop {
        self.0.lock().unwrap().append(c, d, r, n)
    }
    fn read(
        &mut self,
        c: &str,
        a: u64,
        l: usize,
        r: switchboard_core::StreamRules,
        n: std::time::Instant,
    ) -> switchboard_core::StreamRead {
        self.0.lock().unwrap().read(c, a, l, r, n)
    }
}

/// Two workers of one node: what each queues for the other is delivered (in any order the
/// test chooses) by hand.
struct Node {
    sims: [Sim; 2],
    /// Envelopes in flight to worker 0 and 1.
    mail: [Vec<switchboard_core::Envelope>; 2],
}

impl Node {
    #[allow(clippy::disallowed_types, reason = "the test stands in for the shell, which shares the table")]
    fn new() -> Self {
        let table = Shared(std::sync::Arc::new(std::sync::Mutex::new(HistoryTable::new(42))));
        let sims = [0u32, 1].map(|w| {
            let mut sim = sim();
            let config: Config = sim.hub.config().clone();
            sim.hub =
                Hub::new(config, "node").unwrap().with_worker(w).with_workers(2).with_history(Box::new(table.clone()));
            sim.hub.handle_wall_clock(sim.now, WALL0);
            sim
        });
        Self { sims, mail: [Vec::new(), Vec::new()] }
    }

    /// Moves what each hub queued for the broker into the other's mailbox.
    fn collect(&mut self) {
        for w in 0..2 {
            for command in std::mem::take(&mut self.sims[w].broker) {
                if let BrokerCommand::Publish(envelope) = command {
                    self.mail[1 - w].push(envelope);
                }
            }
        }
    }

    /// Delivers worker `w`'s mail, newest first when `reversed` (out of order on purpose).
    fn deliver(&mut self, w: usize, reversed: bool) {
        self.collect();
        let mut mail = std::mem::take(&mut self.mail[w]);
        if reversed {
            mail.reverse();
        }
        let sim = &mut self.sims[w];
        for envelope in mail {
            sim.hub.handle_broker(sim.now, &envelope);
            sim.pump();
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Publish on worker w.
    Publish(usize),
    /// Worker w delivers its mail (reversed or not).
    Deliver(usize, bool),
    /// The client drops its connection.
    Drop,
    /// The client reconnects (on worker w) and subscribes, recovering from what it holds.
    Reconnect(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2usize).prop_map(Step::Publish),
        3 => (0..2usize, any::<bool>()).prop_map(|(w, r)| Step::Deliver(w, r)),
        1 => Just(Step::Drop),
        1 => (0..2usize).prop_map(Step::Reconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the interleaving of publications on two workers, out-of-order delivery
    /// between them, disconnects and reconnects, a client sees every publication once and in
    /// order, or is told (`recovered: false`) that it cannot, and then sees everything after.
    #[test]
    fn recovery_is_exact_or_refused(steps in prop::collection::vec(step(), 1..60)) {
        let mut node = Node::new();
        let mut published = 0u64;
        // The client: where it is and what it has seen since its last reset.
        let mut position: Option<(String, u64)> = None;
        let mut seen: Vec<u64> = Vec::new();
        let mut resets = 0;
        // Reads what the client got; true when the server ended its subscription (resubscribe).
        let read_once = |node: &mut Node, w: usize, id: ConnId, seen: &mut Vec<u64>, position: &mut Option<(String, u64)>, resets: &mut u32| -> bool {
            let mut ended = false;
            let (list, _) = frames(&mut node.sims[w], id);
            for frame in &list {
                match frame["type"].as_str() {
                    Some("subscribed") => {
                        let epoch = frame["epoch"].as_str().unwrap().to_owned();
                        if frame["recovered"] != true {
                            // Told it cannot recover: it starts again from here.
                            *resets += 1;
                            seen.clear();
                            seen.extend((1..=frame["offset"].as_u64().unwrap()).collect::<Vec<_>>());
                        }
                        for p in frame["publications"].as_array().into_iter().flatten() {
                            seen.push(p["offset"].as_u64().unwrap());
                        }
                        *position = Some((epoch, frame["offset"].as_u64().unwrap()));
                    }
                    Some("message") => {
                        let offset = frame["offset"].as_u64().unwrap();
                        seen.push(offset);
                        if let Some(p) = position.as_mut() { p.1 = offset; }
                    }
                    Some("unsubscribed") => {
                        assert_eq!(frame["code"], "resubscribe");
                        ended = true;
                    }
                    // Earlier connections of the same user come and go on the other worker.
                    Some("welcome" | "ack" | "join" | "leave") => {}
                    other => panic!("unexpected {other:?}: {frame}"),
                }
            }
            ended
        };
        let request = |position: &Option<(String, u64)>| {
            let mut request = json!({"op":"subscribe","channel":"chat:p","id":1});
            if let Some((epoch, offset)) = position {
                request["recover"] = json!({"epoch": epoch, "offset": offset});
            }
            text(&request.to_string())
        };
        // Reads, and subscribes again (recovering) as often as the server asks, like a client would.
        let read = |node: &mut Node, w: usize, id: ConnId, seen: &mut Vec<u64>, position: &mut Option<(String, u64)>, resets: &mut u32| {
            while read_once(node, w, id, seen, position, resets) {
                node.sims[w].send(id, &request(position));
            }
        };
        let subscribe = |node: &mut Node, w: usize, position: &Option<(String, u64)>| {
            let sim = &mut node.sims[w];
            let id = sim.open(&format!("/ws?token={}", user("ann")));
            sim.send(id, &request(position));
            id
        };
        let id = subscribe(&mut node, 0, &position);
        let mut conn = Some((0, id));
        for step in steps {
            match step {
                Step::Publish(w) => {
                    published += 1;
                    let sim = &mut node.sims[w];
                    sim.hub.handle_publish(sim.now, "chat:p", &published.to_string()).unwrap();
                    sim.pump();
                    node.collect();
                }
                Step::Deliver(w, reversed) => node.deliver(w, reversed),
                Step::Drop => {
                    if let Some((w, id)) = conn.take() {
                        read(&mut node, w, id, &mut seen, &mut position, &mut resets);
                        let sim = &mut node.sims[w];
                        sim.hub.handle_eof(sim.now, id);
                        sim.pump();
                    }
                }
                Step::Reconnect(w) => {
                    if conn.is_none() {
                        let id = subscribe(&mut node, w, &position);
                        conn = Some((w, id));
                    }
                }
            }
            if let Some((w, id)) = conn {
                read(&mut node, w, id, &mut seen, &mut position, &mut resets);
            }
        }
        // Let everything in flight arrive, then check.
        node.deliver(0, false);
        node.deliver(1, false);
        if let Some((w, id)) = conn {
            read(&mut node, w, id, &mut seen, &mut position, &mut resets);
            let expected: Vec<u64> = (1..=published).collect();
            prop_assert_eq!(&seen, &expected, "resets: {}", resets);
        } else {
            let expected: Vec<u64> = (1..=seen.len() as u64).collect();
            prop_assert_eq!(&seen, &expected, "in order without gaps while connected");
        }
    }
}

#[test]
fn a_tokens_channels_are_subscribed_by_the_server() {
    let mut sim = sim();
    let claims = json!({"sub":"ann","exp": NOW_SECS + 60,"channels":["feed:a","chat:s","bad channel"]});
    let (id, list, close) = connect(&mut sim, &format!("?token={}", token(&claims)));
    assert_eq!(close, None);
    let subscribed = of_type(&list, "subscribed");
    assert_eq!(subscribed.len(), 2, "{list:?}");
    assert_eq!(subscribed[0]["channel"], "feed:a");
    assert!(subscribed[0].get("epoch").is_none(), "no history on feed:");
    assert_eq!((subscribed[1]["channel"].clone(), subscribed[1]["offset"].clone()), (json!("chat:s"), json!(0)));
    assert_eq!(of_type(&list, "error")[0]["code"], "bad_channel");
    sim.hub.handle_publish(sim.now, "feed:a", "1").unwrap();
    assert_eq!(of_type(&frames(&mut sim, id).0, "message").len(), 1);
}

/// A hub on Redis for history, with a scripted Redis that answers everything but the history
/// reads, which the test answers itself (so live messages can overtake them).
struct RedisSim {
    sim: Sim,
    /// History read scripts not answered yet: their first offset wanted.
    reads: Vec<u64>,
    /// Replies owed on the command connection from the first unanswered read on, in order
    /// (`None`: a read the test has not answered). Redis answers in order, so nothing behind
    /// a read may go before it.
    owed: std::collections::VecDeque<Option<Vec<u8>>>,
    /// The envelope sequence of the fake publisher.
    seq: u64,
}

impl RedisSim {
    fn new() -> Self {
        let toml = format!("{CONFIG}\n[broker]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:7777\"\n");
        let mut sim = sim_with(&toml);
        sim.pump();
        for (which, _) in std::mem::take(&mut sim.redis_opens) {
            sim.hub.handle_redis_connected(sim.now, which);
        }
        let mut this = Self { sim, reads: Vec::new(), owed: std::collections::VecDeque::new(), seq: 0 };
        this.serve();
        this
    }

    /// Answers what the hub sent to Redis, but history reads (kept in `reads`).
    fn serve(&mut self) {
        use switchboard_core::LinkConn;
        for _ in 0..10 {
            let mut answered = false;
            for which in [LinkConn::Command, LinkConn::Subscriber] {
                let bytes = self.sim.take_redis(which);
                let mut reply = Vec::new();
                let command = which == LinkConn::Command;
                let mut rest = bytes.as_slice();
                while let Ok(Some((frame, used))) = redis_protocol::resp2::decode::decode(rest) {
                    rest = &rest[used..];
                    let redis_protocol::resp2::types::OwnedFrame::Array(args) = frame else { panic!("a command") };
                    let arg = |i: usize| match args.get(i) {
                        Some(redis_protocol::resp2::types::OwnedFrame::BulkString(b)) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        _ => String::new(),
                    };
                    match arg(0).as_str() {
                        "INCR" => reply.extend_from_slice(b":1\r\n"),
                        "KEYS" => reply.extend_from_slice(b"*0\r\n"),
                        verb @ ("SUBSCRIBE" | "UNSUBSCRIBE") => {
                            let kind = verb.to_ascii_lowercase();
                            for key in 1..args.len() {
                                let key = arg(key);
                                let (k, n) = (kind.len(), key.len());
                                reply.extend(format!("*3\r\n${k}\r\n{kind}\r\n${n}\r\n{key}\r\n:1\r\n").bytes());
                            }
                        }
                        "EVAL" if arg(1).contains("XRANGE") => {
                            self.reads.push(arg(5).parse().unwrap_or(0));
                            if !reply.is_empty() {
                                self.owed.push_back(Some(std::mem::take(&mut reply)));
                            }
                            self.owed.push_back(None);
                        }
                        "SCRIPT" => reply.extend_from_slice(b"$4\r\nsha1\r\n"),
                        _ => reply.extend_from_slice(b":1\r\n"),
                    }
                }
                if command && !self.owed.is_empty() {
                    if !reply.is_empty() {
                        self.owed.push_back(Some(std::mem::take(&mut reply)));
                    }
                    answered |= self.flush_owed();
                } else if !reply.is_empty() {
                    answered = true;
                    self.sim.hub.handle_redis_bytes(self.sim.now, which, &reply);
                    self.sim.pump();
                }
            }
            if !answered {
                return;
            }
        }
    }

    /// A stream publication of `chat:r` arriving on the subscriber connection.
    fn live(&mut self, epoch: &str, offset: u64) {
        self.seq += 1;
        let mut envelope = vec![1u8, 1];
        envelope.extend_from_slice(&9u64.to_be_bytes());
        envelope.extend_from_slice(&self.seq.to_be_bytes());
        envelope.extend_from_slice(&0u32.to_be_bytes());
        for field in ["other-node", "chat:r"] {
            envelope.extend_from_slice(&(field.len() as u16).to_be_bytes());
            envelope.extend_from_slice(field.as_bytes());
        }
        envelope.push(2);
        envelope.extend(format!("{epoch}:{offset}\n{offset}").bytes());
        let key = "switchboard:ch:chat:r";
        let mut push =
            format!("*3\r\n$7\r\nmessage\r\n${}\r\n{key}\r\n${}\r\n", key.len(), envelope.len()).into_bytes();
        push.extend_from_slice(&envelope);
        push.extend_from_slice(b"\r\n");
        self.sim.hub.handle_redis_bytes(self.sim.now, switchboard_core::LinkConn::Subscriber, &push);
        self.sim.pump();
    }

    /// Sends the owed command replies up to the first unanswered read; true if any went.
    fn flush_owed(&mut self) -> bool {
        let mut sent = false;
        while let Some(Some(_)) = self.owed.front() {
            let Some(Some(reply)) = self.owed.pop_front() else { break };
            self.sim.hub.handle_redis_bytes(self.sim.now, switchboard_core::LinkConn::Command, &reply);
            self.sim.pump();
            sent = true;
        }
        sent
    }

    /// Answers the oldest history read: `epoch`, last offset `top`, entries `from..=top`.
    fn answer_read(&mut self, epoch: &str, top: u64) {
        let from = self.reads.remove(0);
        let mut reply = format!("*3\r\n${}\r\n{epoch}\r\n${}\r\n{top}\r\n", epoch.len(), top.to_string().len());
        let entries: Vec<u64> = (from..=top).collect();
        reply.push_str(&format!("*{}\r\n", entries.len()));
        for n in entries {
            let (id, data) = (format!("{n}-0"), n.to_string());
            reply.push_str(&format!("*2\r\n${}\r\n{id}\r\n*2\r\n$1\r\nd\r\n${}\r\n{data}\r\n", id.len(), data.len()));
        }
        if let Some(slot) = self.owed.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(reply.into_bytes());
        }
        self.flush_owed();
        self.serve();
    }
}

#[test]
fn over_redis_a_recovery_and_live_messages_that_overtake_it_merge_without_gap_or_duplicate() {
    // The live message comes before the read's answer: it is held, then follows the recovered ones.
    let mut r = RedisSim::new();
    let ann = open(&mut r.sim, &format!("?token={}", user("ann")));
    r.sim.send(
        ann,
        &text(&json!({"op":"subscribe","channel":"chat:r","id":1,"recover":{"epoch":"E","offset":2}}).to_string()),
    );
    r.serve();
    assert_eq!(r.reads, [3], "the read goes once the subscription is confirmed, from offset 3");
    r.live("E", 5);
    assert!(offsets(&frames(&mut r.sim, ann).0).is_empty(), "held until the read answers");
    r.answer_read("E", 4);
    let list = frames(&mut r.sim, ann).0;
    assert_eq!(of_type(&list, "subscribed")[0]["recovered"], true, "{list:?}");
    assert_eq!(offsets(&list), [3, 4, 5]);
    r.live("E", 5);
    r.live("E", 6);
    assert_eq!(offsets(&frames(&mut r.sim, ann).0), [6], "no duplicate of 5");

    // The read reaches further than the live messages that arrive after it: those are dropped.
    let mut r = RedisSim::new();
    let bob = open(&mut r.sim, &format!("?token={}", user("bob")));
    r.sim.send(
        bob,
        &text(&json!({"op":"subscribe","channel":"chat:r","id":1,"recover":{"epoch":"E","offset":3}}).to_string()),
    );
    r.serve();
    r.answer_read("E", 6);
    assert_eq!(offsets(&frames(&mut r.sim, bob).0), [4, 5, 6], "max_recover is 3 in this namespace");
    r.live("E", 5);
    r.live("E", 6);
    r.live("E", 7);
    assert_eq!(offsets(&frames(&mut r.sim, bob).0), [7], "5 and 6 came with the recovery");

    // A new epoch on a live message: told to resubscribe.
    r.live("F", 1);
    let list = frames(&mut r.sim, bob).0;
    assert_eq!(of_type(&list, "unsubscribed")[0]["code"], "resubscribe", "{list:?}");
}

#[test]
fn over_redis_a_quick_unsubscribe_and_subscribe_again_gets_one_answer_for_the_second() {
    let mut r = RedisSim::new();
    let ann = open(&mut r.sim, &format!("?token={}", user("ann")));
    let first = json!({"op":"subscribe","channel":"chat:r","id":1,"recover":{"epoch":"E","offset":2}});
    r.sim.send(ann, &text(&first.to_string()));
    r.serve();
    r.sim.send(ann, &text(r#"{"op":"unsubscribe","channel":"chat:r","id":2}"#));
    let second = json!({"op":"subscribe","channel":"chat:r","id":3,"recover":{"epoch":"E","offset":3}});
    r.sim.send(ann, &text(&second.to_string()));
    r.serve();
    assert_eq!(r.reads, [3, 4], "two reads, the second after its own subscription's confirmation");
    r.answer_read("E", 4);
    let list = frames(&mut r.sim, ann).0;
    assert!(of_type(&list, "subscribed").is_empty(), "the first read's answer is not the second's: {list:?}");
    r.answer_read("E", 4);
    let list = frames(&mut r.sim, ann).0;
    let replies = of_type(&list, "subscribed");
    assert_eq!(replies.len(), 1, "{list:?}");
    assert_eq!(replies[0]["id"], 3);
    assert_eq!(offsets(&list), [4]);
}

#[test]
fn presence_of_a_user_limited_channel_needs_a_subscription() {
    let mut sim = sim();
    let eve = open(&mut sim, &format!("?token={}", user("eve")));
    let list = op(&mut sim, eve, json!({"op":"presence","channel":"dm#ann,bob","id":1}));
    assert_eq!(of_type(&list, "error")[0]["code"], "not_subscribed");
    let ann = open(&mut sim, &format!("?token={}", user("ann")));
    op(&mut sim, ann, json!({"op":"subscribe","channel":"dm#ann,bob","id":1}));
    let list = op(&mut sim, ann, json!({"op":"presence","channel":"dm#ann,bob","id":2}));
    assert_eq!(of_type(&list, "presence").len(), 1, "{list:?}");
}

#[test]
fn over_redis_subscribers_of_history_channels_recover_after_the_link_comes_back() {
    let mut r = RedisSim::new();
    let ann = open(&mut r.sim, &format!("?token={}", user("ann")));
    r.sim.send(ann, &text(r#"{"op":"subscribe","channel":"chat:r","id":1}"#));
    r.serve();
    r.answer_read("E", 4);
    frames(&mut r.sim, ann);
    // The subscriber connection drops and comes back: whatever was published meanwhile is lost
    // to this hub, so its subscribers are told to recover.
    r.sim.hub.handle_redis_eof(r.sim.now, switchboard_core::LinkConn::Subscriber);
    r.sim.pump();
    for _ in 0..20 {
        r.sim.advance(Duration::from_millis(200));
        let opens = std::mem::take(&mut r.sim.redis_opens);
        for (which, _) in &opens {
            r.sim.hub.handle_redis_connected(r.sim.now, *which);
        }
        if !opens.is_empty() {
            break;
        }
    }
    r.serve();
    let list = frames(&mut r.sim, ann).0;
    assert_eq!(of_type(&list, "unsubscribed")[0]["code"], "resubscribe", "{list:?}");
}
