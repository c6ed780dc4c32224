//! The Pusher protocol on a simulated clock: the activity ping and 4201, the connect refusals,
//! presence across two hubs of a node (and a hub that starts late), and the HTTP API's
//! signature against the wall clock the shell hands in.

mod support;

use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use ring::hmac;
use serde_json::Value;
use support::{Sim, close_code, server_frames, status_of, text};
use switchboard_core::{BrokerCommand, Config, ConnId, Hub, Output};

const APPS: &str = r#"
[heartbeat]
pong_timeout = "5s"
idle_timeout = "0s"

[pusher]
activity_timeout = "30s"

[[pusher.app]]
id = "1"
key = "key-1"
secret = "secret-1"
client_events = true

[[pusher.app]]
id = "2"
key = "off"
secret = "secret-2"
enabled = false

[[pusher.app]]
id = "3"
key = "tiny"
secret = "secret-3"
max_connections = 1
"#;

fn config() -> Config {
    Config::from_toml(APPS).expect("test config parses")
}

/// The Pusher messages (text frames, parsed) and the close code in `bytes`.
fn messages(bytes: &[u8]) -> (Vec<Value>, Option<u16>) {
    let texts = server_frames(bytes)
        .into_iter()
        .filter(|(header, _)| {
            header.opcode
                == tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Text)
        })
        .map(|(_, payload)| serde_json::from_slice(&payload).expect("server frames are JSON"))
        .collect();
    (texts, close_code(bytes))
}

fn events(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|m| m["event"].as_str()).collect()
}

/// Connects to `/app/{key}?…`; returns the connection, its socket id and what else came.
fn connect(sim: &mut Sim, target: &str) -> (ConnId, Option<String>, Vec<Value>, Option<u16>) {
    let id = sim.accept();
    sim.send(id, support::upgrade_request(target, "").as_bytes());
    let response = sim.take_output(id);
    assert!(response.starts_with(b"HTTP/1.1 101"), "the handshake completes even for a refusal");
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let (list, code) = messages(&response[head_end..]);
    let socket_id = list
        .iter()
        .find(|m| m["event"] == "pusher:connection_established")
        .and_then(|m| serde_json::from_str::<Value>(m["data"].as_str()?).ok())
        .and_then(|data| data["socket_id"].as_str().map(str::to_owned));
    (id, socket_id, list, code)
}

fn sign(secret: &str, text: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, text.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn presence_subscribe(socket_id: &str, channel: &str, user: &str) -> Vec<u8> {
    let data = format!("{{\"user_id\":\"{user}\"}}");
    let auth = format!("key-1:{}", sign("secret-1", &format!("{socket_id}:{channel}:{data}")));
    let message =
        serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}});
    text(&message.to_string())
}

#[test]
fn a_silent_connection_is_pinged_after_the_activity_timeout_and_closed_4201_without_a_pong() {
    let mut sim = Sim::new(config());
    let (id, socket_id, list, _) = connect(&mut sim, "/app/key-1?protocol=7&client=js&version=8.6.0");
    let socket_id = socket_id.expect("connection_established");
    assert!(socket_id.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()));
    let established: Value = serde_json::from_str(list[0]["data"].as_str().expect("data is a string")).expect("JSON");
    assert_eq!(established["activity_timeout"], 30);

    sim.advance(Duration::from_secs(29));
    assert!(messages(&sim.take_output(id)).0.is_empty(), "nothing before the activity timeout");
    sim.advance(Duration::from_secs(1));
    assert_eq!(events(&messages(&sim.take_output(id)).0), ["pusher:ping"]);
    // Answered: the connection stays, and the next ping waits a whole timeout again.
    sim.send(id, &text(r#"{"event":"pusher:pong","data":{}}"#));
    sim.advance(Duration::from_secs(10));
    assert!(!sim.is_closed(id));
    assert!(messages(&sim.take_output(id)).0.is_empty());
    sim.advance(Duration::from_secs(20));
    assert_eq!(events(&messages(&sim.take_output(id)).0), ["pusher:ping"]);
    // Not answered: pusher:error 4201 and a close with the same code.
    sim.advance(Duration::from_secs(5));
    let (list, code) = messages(&sim.take_output(id));
    assert_eq!(events(&list), ["pusher:error"]);
    assert_eq!(list[0]["data"]["code"], 4201);
    assert_eq!(code, Some(4201));
}

#[test]
fn refused_connects_get_pusher_error_then_the_same_close_code() {
    let mut sim = Sim::new(config());
    for (target, expected) in [
        ("/app/nobody?protocol=7", 4001),
        ("/app/off?protocol=7", 4003),
        ("/app/key-1", 4008),
        ("/app/key-1?protocol=3", 4007),
    ] {
        let (_, socket_id, list, code) = connect(&mut sim, target);
        assert!(socket_id.is_none(), "{target}");
        assert_eq!(events(&list), ["pusher:error"], "{target}");
        assert_eq!(list[0]["data"]["code"], expected, "{target}");
        assert_eq!(code, Some(expected), "{target}");
    }
    let (first, socket_id, _, _) = connect(&mut sim, "/app/tiny?protocol=7");
    assert!(socket_id.is_some());
    let (_, _, list, code) = connect(&mut sim, "/app/tiny?protocol=7");
    assert_eq!((list[0]["data"]["code"].as_u64(), code), (Some(4004), Some(4004)), "over the app's quota");
    // The place is given back when the first one leaves.
    sim.hub.handle_eof(sim.now, first);
    sim.pump();
    let (_, socket_id, _, _) = connect(&mut sim, "/app/tiny?protocol=7");
    assert!(socket_id.is_some(), "the quota counts open connections, not history");
}

/// Two hubs of one node, their broker outputs carried to each other like a shell does.
struct Node {
    hubs: Vec<Hub>,
    now: Instant,
    /// Webhook requests each hub asked for, as `(hub, body)`; every one is answered 200.
    webhooks: Vec<(usize, Value)>,
}

impl Node {
    fn new(workers: u32) -> Self {
        Self::with_config(workers, &config())
    }

    fn with_config(workers: u32, config: &Config) -> Self {
        let hubs = (0..workers)
            .map(|w| Hub::new(config.clone(), "n").expect("valid").with_worker(w).with_workers(workers as usize))
            .collect();
        let mut node = Self { hubs, now: switchboard_testkit::origin(), webhooks: Vec::new() };
        for w in 0..node.hubs.len() {
            node.hubs[w].handle_timeout(node.now);
        }
        node.settle();
        node
    }

    /// Delivers every publish to the other hubs until none is left.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.hubs.len() {
                let mut envelopes = Vec::new();
                let mut answered = Vec::new();
                loop {
                    match self.hubs[from].poll_output() {
                        Output::Broker(BrokerCommand::Publish(envelope)) => envelopes.push(envelope),
                        Output::Webhook(request) => {
                            let body = serde_json::from_slice(&request.body).expect("a webhook body is JSON");
                            self.webhooks.push((from, body));
                            answered.push(request.id);
                        }
                        Output::Timeout(_) => break,
                        _ => {}
                    }
                }
                for id in answered {
                    moved = true;
                    self.hubs[from].handle_webhook_done(self.now, id, switchboard_core::WebhookOutcome::Status(200));
                }
                for envelope in envelopes {
                    moved = true;
                    for to in (0..self.hubs.len()).filter(|&to| to != from) {
                        self.hubs[to].handle_broker(self.now, &envelope);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Moves the clock on, running every hub's timers.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        for hub in &mut self.hubs {
            hub.handle_timeout(self.now);
        }
        self.settle();
    }

    /// The webhook events so far, as `(hub, name, channel)`.
    fn hook_events(&self) -> Vec<(usize, String, String)> {
        self.webhooks
            .iter()
            .flat_map(|(hub, body)| {
                body["events"].as_array().into_iter().flatten().map(move |event| {
                    let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
                    (*hub, field("name"), field("channel"))
                })
            })
            .collect()
    }

    fn send(&mut self, worker: usize, id: ConnId, bytes: &[u8]) {
        self.hubs[worker].handle_bytes(self.now, id, bytes);
        self.settle();
    }

    fn take(&mut self, worker: usize, id: ConnId) -> Vec<Value> {
        let hub = &mut self.hubs[worker];
        let mut out = Vec::new();
        loop {
            let mut slices = [std::io::IoSlice::new(&[]); 16];
            let n = hub.transmit(id, &mut slices);
            if n == 0 {
                break;
            }
            let written: usize = slices[..n].iter().map(|s| s.len()).sum();
            for slice in &slices[..n] {
                out.extend_from_slice(slice);
            }
            hub.handle_written(self.now, id, written);
        }
        self.settle();
        let start = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| at + 4);
        let start = if out.starts_with(b"HTTP/1.1") { start } else { 0 };
        messages(&out[start..]).0
    }

    fn connect(&mut self, worker: usize) -> (ConnId, String) {
        let id = self.hubs[worker].handle_accept(self.now, Sim::peer(1));
        self.send(worker, id, support::upgrade_request("/app/key-1?protocol=7", "").as_bytes());
        let list = self.take(worker, id);
        let data: Value = serde_json::from_str(list[0]["data"].as_str().expect("established")).expect("JSON");
        (id, data["socket_id"].as_str().expect("socket_id").to_owned())
    }
}

#[test]
fn presence_is_one_list_across_hubs_and_members_come_and_go_once() {
    let mut node = Node::new(2);
    let (a, sa) = node.connect(0);
    let (b, sb) = node.connect(1);
    let (c, sc) = node.connect(1);
    node.send(0, a, &presence_subscribe(&sa, "presence-room", "ann"));
    let list = node.take(0, a);
    assert_eq!(events(&list), ["pusher_internal:subscription_succeeded"]);

    node.send(1, b, &presence_subscribe(&sb, "presence-room", "bob"));
    let list = node.take(1, b);
    let data: Value = serde_json::from_str(list[0]["data"].as_str().expect("string")).expect("JSON");
    assert_eq!(data["presence"]["count"], 2, "bob sees ann, who is on the other hub: {data}");
    assert_eq!(events(&node.take(0, a)), ["pusher_internal:member_added"]);
    assert!(node.take(1, b).is_empty(), "never told of its own arrival");

    // A second connection of ann, on the other hub: nobody hears of it.
    node.send(1, c, &presence_subscribe(&sc, "presence-room", "ann"));
    assert_eq!(events(&node.take(1, c)), ["pusher_internal:subscription_succeeded"]);
    assert!(node.take(0, a).is_empty() && node.take(1, b).is_empty(), "ann was already there");

    // Her first connection leaves: she is still on hub 1.
    node.hubs[0].handle_eof(node.now, a);
    node.settle();
    assert!(node.take(1, b).is_empty(), "ann still has a connection");
    // Her last one leaves: now bob hears it, once.
    node.send(1, c, &text(r#"{"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}"#));
    let list = node.take(1, b);
    assert_eq!(events(&list), ["pusher_internal:member_removed"]);
    assert_eq!(list[0]["data"], r#"{"user_id":"ann"}"#);
}

#[test]
fn a_hub_that_starts_late_learns_the_members_from_the_others() {
    let mut node = Node::new(1);
    let (a, sa) = node.connect(0);
    node.send(0, a, &presence_subscribe(&sa, "presence-room", "ann"));
    node.take(0, a);
    // A second worker joins the node: it asks for a sync and hub 0 answers with a snapshot.
    let late = Hub::new(config(), "n").expect("valid").with_worker(1).with_workers(2);
    node.hubs[0] = std::mem::replace(&mut node.hubs[0], Hub::new(config(), "x").expect("valid")).with_workers(2);
    node.hubs.push(late);
    node.hubs[1].handle_timeout(node.now);
    node.settle();
    let (b, sb) = node.connect(1);
    node.send(1, b, &presence_subscribe(&sb, "presence-room", "bob"));
    let list = node.take(1, b);
    let data: Value = serde_json::from_str(list[0]["data"].as_str().expect("string")).expect("JSON");
    assert_eq!(data["presence"]["ids"], serde_json::json!(["ann", "bob"]), "{data}");
}

/// A signed HTTP API request, as the SDKs build it.
fn api_request(method: &str, path: &str, body: &str, timestamp: u64) -> String {
    let mut query =
        vec![format!("auth_key=key-1"), format!("auth_timestamp={timestamp}"), "auth_version=1.0".to_owned()];
    if !body.is_empty() {
        let digest: String = Md5::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        query.push(format!("body_md5={digest}"));
    }
    query.sort();
    let query = query.join("&");
    let signature = sign("secret-1", &format!("{method}\n{path}\n{query}"));
    format!(
        "{method} {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn call(sim: &mut Sim, request: &str) -> (u16, String) {
    let id = sim.accept();
    sim.send(id, request.as_bytes());
    let response = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status_of(&response), body)
}

#[test]
fn the_http_api_checks_signatures_against_the_shells_wall_clock() {
    let mut sim = Sim::new(config());
    let unix = 1_800_000_000;
    let trigger = r#"{"name":"e","channel":"news","data":"hi"}"#;
    let (status, body) = call(&mut sim, &api_request("POST", "/apps/1/events", trigger, unix));
    assert_eq!(status, 503, "no wall clock yet: {body}");

    sim.hub.handle_wall_clock(sim.now, unix * 1000);
    let (_, socket_id, _, _) = connect(&mut sim, "/app/key-1?protocol=7");
    let (subscriber, _) = (sim.hub.connection_count(), socket_id);
    assert!(subscriber > 0);
    let (status, body) = call(&mut sim, &api_request("POST", "/apps/1/events", trigger, unix));
    assert_eq!((status, body.as_str()), (200, "{}"));
    // The clock counts on from the instant it was given.
    sim.advance(Duration::from_secs(700));
    let (status, body) = call(&mut sim, &api_request("POST", "/apps/1/events", trigger, unix));
    assert_eq!(status, 401, "700 s old: {body}");
    assert!(body.contains("auth_timestamp"), "{body}");
    let (status, _) = call(&mut sim, &api_request("POST", "/apps/1/events", trigger, unix + 700));
    assert_eq!(status, 200);
    let (status, body) = call(&mut sim, &api_request("GET", "/apps/9/channels", "", unix + 700));
    assert_eq!(status, 404, "{body}");
    let bad_data = r#"{"name":"e","channel":"news","data":7}"#;
    let (status, body) = call(&mut sim, &api_request("POST", "/apps/1/events", bad_data, unix + 700));
    assert_eq!(status, 400);
    assert!(body.contains("data"), "the 400 names the field: {body}");
}

fn hooks_config() -> Config {
    let toml = APPS.replace(
        "[pusher]\nactivity_timeout = \"30s\"",
        "[pusher]\nactivity_timeout = \"30s\"\nwebhook_grace = \"3s\"",
    ) + "\n[[pusher.app]]\nid = \"9\"\nkey = \"hooked\"\nsecret = \"s9\"\n[[pusher.app.webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n";
    Config::from_toml(&toml).expect("test config parses")
}

fn subscribe_public(channel: &str) -> Vec<u8> {
    text(&serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel}}).to_string())
}

fn unsubscribe(channel: &str) -> Vec<u8> {
    text(&serde_json::json!({"event":"pusher:unsubscribe","data":{"channel":channel}}).to_string())
}

impl Node {
    fn connect_to(&mut self, worker: usize, key: &str) -> ConnId {
        let id = self.hubs[worker].handle_accept(self.now, Sim::peer(1));
        self.send(worker, id, support::upgrade_request(&format!("/app/{key}?protocol=7"), "").as_bytes());
        self.take(worker, id);
        id
    }
}

#[test]
fn occupied_and_vacated_are_reported_once_for_the_node_by_the_hub_that_caused_them() {
    let mut node = Node::with_config(2, &hooks_config());
    let a = node.connect_to(0, "hooked");
    let b = node.connect_to(1, "hooked");
    node.send(0, a, &subscribe_public("news"));
    node.send(1, b, &subscribe_public("news"));
    assert_eq!(node.hook_events(), [(0, "channel_occupied".to_owned(), "news".to_owned())]);
    node.send(0, a, &unsubscribe("news"));
    node.send(1, b, &unsubscribe("news"));
    node.advance(Duration::from_secs(2));
    assert_eq!(node.hook_events().len(), 1, "vacated waits out the grace");
    node.advance(Duration::from_secs(2));
    assert_eq!(node.hook_events()[1], (1, "channel_vacated".to_owned(), "news".to_owned()), "{:?}", node.hook_events());
    assert_eq!(node.hook_events().len(), 2);
}

#[test]
fn a_return_within_the_grace_reports_neither_the_leave_nor_the_return() {
    let mut node = Node::with_config(2, &hooks_config());
    let a = node.connect_to(0, "hooked");
    let b = node.connect_to(1, "hooked");
    node.send(0, a, &subscribe_public("room"));
    node.send(0, a, &unsubscribe("room"));
    node.advance(Duration::from_secs(1));
    // Back within the grace, through the other hub.
    node.send(1, b, &subscribe_public("room"));
    node.advance(Duration::from_secs(5));
    assert_eq!(node.hook_events(), [(0, "channel_occupied".to_owned(), "room".to_owned())]);
    // Gone for longer than the grace: now it is reported.
    node.send(1, b, &unsubscribe("room"));
    node.advance(Duration::from_secs(4));
    assert_eq!(node.hook_events().last(), Some(&(1, "channel_vacated".to_owned(), "room".to_owned())));
}

#[test]
fn http_requests_are_kept_alive_and_pipelined_answers_come_in_order() {
    let mut sim = Sim::new(config());
    let id = sim.accept();
    let two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n";
    sim.send(id, two.as_bytes());
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    let statuses: Vec<u16> = out.match_indices("HTTP/1.1 ").map(|(at, _)| status_of(&out[at..])).collect();
    assert_eq!(statuses, [200, 404], "{out}");
    assert_eq!(out.matches("Connection: keep-alive").count(), 2);
    assert!(!sim.is_closed(id), "kept alive for a third request");
    // Asked to close: answered, then closed.
    sim.send(id, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert!(out.contains("Connection: close"), "{out}");
    assert!(sim.is_closed(id));
    // Idle between requests: closed quietly after the handshake timeout, no 408.
    let idle = sim.accept();
    sim.send(idle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.take_output(idle);
    let timeouts = sim.hub.metrics().handshake_timeouts;
    sim.advance(Duration::from_secs(11));
    assert!(sim.is_closed(idle));
    assert!(sim.take_output(idle).is_empty());
    assert_eq!(sim.hub.metrics().handshake_timeouts, timeouts, "an idle kept-alive connection is no handshake timeout");
    // HTTP/1.0 is answered and closed.
    let old = sim.accept();
    sim.send(old, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(String::from_utf8_lossy(&sim.take_output(old)).contains("Connection: close"));
    assert!(sim.is_closed(old));
}

#[test]
fn the_admin_api_terminates_a_signed_in_pusher_user_and_no_one_else() {
    let toml = format!("{APPS}\n[admin]\nenabled = true\ntoken = \"tok\"\n");
    let mut sim = Sim::new(Config::from_toml(&toml).expect("test config parses"));
    let signed_in = |sim: &mut Sim, user: &str| {
        let (id, socket_id, _, _) = connect(sim, "/app/key-1?protocol=7");
        let socket_id = socket_id.expect("a socket id");
        let user_data = format!("{{\"id\":\"{user}\"}}");
        let auth = format!("key-1:{}", sign("secret-1", &format!("{socket_id}::user::{user_data}")));
        let message = serde_json::json!({"event": "pusher:signin", "data": {"user_data": user_data, "auth": auth}});
        sim.send(id, &text(&message.to_string()));
        let (list, code) = messages(&sim.take_output(id));
        assert_eq!((events(&list), code), (vec!["pusher:signin_success"], None));
        id
    };
    let (first, second, other) = (signed_in(&mut sim, "u1"), signed_in(&mut sim, "u1"), signed_in(&mut sim, "u2"));
    let body = r#"{"user":"u1"}"#;
    let request = format!(
        "POST /admin/api/disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = call(&mut sim, &request);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).ok().map(|a| a["disconnected_here"].clone()), Some(2.into()));
    for id in [first, second] {
        let (list, code) = messages(&sim.take_output(id));
        assert_eq!(
            (events(&list), code),
            (vec!["pusher:error"], Some(4009)),
            "terminated as terminate_connections does"
        );
    }
    assert_eq!(messages(&sim.take_output(other)).1, None, "u2 stays");
}
