//! A state-machine test: random operation sequences against the hub and a small reference
//! model of who is subscribed to what. The hub must agree with the model on every delivery,
//! every count, and every index after every close.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use support::*;
use switchboard_core::ConnId;
use tungstenite::protocol::frame::coding::OpCode;

const CLIENTS: usize = 4;
const CHANNELS: [&str; 3] = ["red", "green", "blue"];
const QUEUE_LIMIT: usize = 400;

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Subscribe(usize, usize),
    Unsubscribe(usize, usize),
    ClientPublish(usize, usize),
    ApiPublish(usize),
    Close(usize),
    Read(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    let channel = 0..CHANNELS.len();
    prop_oneof![
        2 => client.clone().prop_map(Op::Connect),
        2 => (client.clone(), channel.clone()).prop_map(|(k, c)| Op::Subscribe(k, c)),
        1 => (client.clone(), channel.clone()).prop_map(|(k, c)| Op::Unsubscribe(k, c)),
        3 => (client.clone(), channel.clone()).prop_map(|(k, c)| Op::ClientPublish(k, c)),
        2 => channel.prop_map(Op::ApiPublish),
        1 => client.clone().prop_map(Op::Close),
        3 => client.prop_map(Op::Read),
        1 => (1u64..2000).prop_map(Op::Wait),
    ]
}

/// What the model knows of one client.
#[derive(Debug, Default)]
struct Client {
    id: Option<ConnId>,
    subscribed: BTreeSet<usize>,
    /// Last (publish number, seq) received per channel and subscription, to check order and
    /// gaps. A subscription is named by the publish count when it began: a channel that lost
    /// all its subscribers starts its `seq` over, so only one subscription's messages compare.
    last: BTreeMap<(String, u64), (u64, u64)>,
    /// Publish counts at which each subscription to a channel began.
    starts: BTreeMap<String, Vec<u64>>,
    /// Channels on which this client may have missed messages (a counted drop or a resubscribe).
    gap_allowed: BTreeSet<String>,
}

struct World {
    sim: Sim,
    clients: Vec<Client>,
    /// For each publish number: the channel and the clients subscribed at publish time.
    publishes: Vec<(String, BTreeSet<usize>)>,
    delivered: u64,
    /// Refusals the model predicts (already or not subscribed), and those that arrived: a
    /// reader that falls behind may lose them to the queue bound, counted as drops.
    refusals_expected: u64,
    refusals_received: u64,
}

impl World {
    fn new() -> Self {
        let config = format!(
            "[limits]\nsend_queue_bytes = {QUEUE_LIMIT}\nslow_consumer = \"drop\"\n\
             [rate_limit]\nmessages_per_second = 0.0\nbytes_per_second = 0\n\
             [heartbeat]\nping_interval = \"1h\"\nidle_timeout = \"0s\"\n"
        );
        Self {
            sim: Sim::with_toml(&config),
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            publishes: Vec::new(),
            delivered: 0,
            refusals_expected: 0,
            refusals_received: 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Connect(k) if self.clients[k].id.is_none() => {
                let id = self.sim.open("/ws");
                self.clients[k] = Client { id: Some(id), ..Client::default() };
            }
            Op::Subscribe(k, c) => {
                if let Some(id) = self.clients[k].id {
                    self.send_op(id, &format!(r#"{{"op":"subscribe","channel":"{}"}}"#, CHANNELS[c]));
                    if !self.clients[k].subscribed.insert(c) {
                        self.refusals_expected += 1;
                    } else {
                        let began = self.publishes.len() as u64;
                        self.clients[k].starts.entry(CHANNELS[c].to_owned()).or_default().push(began);
                    }
                }
            }
            Op::Unsubscribe(k, c) => {
                if let Some(id) = self.clients[k].id {
                    self.send_op(id, &format!(r#"{{"op":"unsubscribe","channel":"{}"}}"#, CHANNELS[c]));
                    if !self.clients[k].subscribed.remove(&c) {
                        self.refusals_expected += 1;
                    }
                }
            }
            Op::ClientPublish(k, c) => {
                if let Some(id) = self.clients[k].id {
                    let number = self.record_publish(c);
                    let request = format!(r#"{{"op":"publish","channel":"{}","data":{{"p":{number}}}}}"#, CHANNELS[c]);
                    self.send_op(id, &request);
                }
            }
            Op::ApiPublish(c) => {
                let number = self.record_publish(c);
                let now = self.sim.now;
                self.sim.hub.handle_publish(now, CHANNELS[c], &format!(r#"{{"p":{number}}}"#)).expect("valid publish");
                self.sim.pump();
            }
            Op::Close(k) => {
                if let Some(id) = self.clients[k].id.take() {
                    self.sim.send(id, &close_frame(1000, ""));
                    self.read(k, id)?;
                    prop_assert!(self.sim.is_closed(id), "closed once the close frame is flushed");
                    self.clients[k].subscribed.clear();
                }
            }
            Op::Read(k) => {
                if let Some(id) = self.clients[k].id {
                    self.read(k, id)?;
                }
            }
            Op::Wait(ms) => self.sim.advance(Duration::from_millis(ms)),
            Op::Connect(_) => {}
        }
        self.check_invariants()
    }

    fn record_publish(&mut self, channel: usize) -> u64 {
        let subscribers = (0..CLIENTS)
            .filter(|&k| self.clients[k].id.is_some() && self.clients[k].subscribed.contains(&channel))
            .collect();
        self.publishes.push((CHANNELS[channel].to_owned(), subscribers));
        (self.publishes.len() - 1) as u64
    }

    fn send_op(&mut self, id: ConnId, json: &str) {
        self.sim.send(id, &text(json));
    }

    fn read(&mut self, k: usize, id: ConnId) -> Result<(), TestCaseError> {
        let output = self.sim.take_output(id);
        for (header, payload) in server_frames(&output) {
            if !matches!(header.opcode, OpCode::Data(_)) {
                continue;
            }
            let frame: Value = serde_json::from_slice(&payload).expect("JSON frame");
            if frame["type"] != "message" {
                let refusal = frame["code"] == "not_subscribed" || frame["code"] == "already_subscribed";
                prop_assert!(frame["type"] == "welcome" || frame["type"] == "ack" || refusal, "unexpected {frame}");
                if refusal {
                    self.refusals_received += 1;
                }
                continue;
            }
            let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
            let number = frame["data"]["p"].as_u64().expect("publish number");
            let seq = frame["seq"].as_u64().expect("seq");
            let (published_on, subscribers) = &self.publishes[number as usize];
            prop_assert_eq!(published_on, &channel);
            prop_assert!(subscribers.contains(&k), "client {} got publish {} it was not subscribed to", k, number);
            let client = &mut self.clients[k];
            let began = client.starts.get(&channel).and_then(|s| s.iter().rev().find(|&&b| b <= number).copied());
            let Some(began) = began else {
                return Err(TestCaseError::fail(format!("client {k} got publish {number} before subscribing")));
            };
            let key = (channel.clone(), began);
            if let Some(&(last_number, last_seq)) = client.last.get(&key) {
                prop_assert!(number > last_number, "order broken on {}", channel);
                prop_assert!(seq > last_seq, "seq went back on {}", channel);
                if !client.gap_allowed.contains(&channel) {
                    prop_assert_eq!(seq, last_seq + 1, "seq gap on {} without a drop", channel);
                }
            }
            client.last.insert(key, (number, seq));
            self.delivered += 1;
        }
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        let metrics = self.sim.hub.metrics().clone();
        let open: Vec<&Client> = self.clients.iter().filter(|c| c.id.is_some()).collect();
        prop_assert_eq!(metrics.connections_open, open.len() as u64);
        let subscriptions: usize = open.iter().map(|c| c.subscribed.len()).sum();
        prop_assert_eq!(metrics.subscriptions, subscriptions as u64);
        let channels: BTreeSet<usize> = open.iter().flat_map(|c| c.subscribed.iter().copied()).collect();
        prop_assert_eq!(metrics.channels, channels.len() as u64);
        let mut queued_total = 0;
        for client in &open {
            let queued = self.sim.hub.queued_bytes(client.id.expect("open"));
            // A full queue still takes control frames and replies; one data frame may overshoot.
            prop_assert!(queued <= QUEUE_LIMIT + 200, "queue of {} bytes", queued);
            queued_total += queued as u64;
        }
        prop_assert_eq!(metrics.queued_bytes, queued_total);
        // Every stored frame has at least one unsent byte in some queue: none outlives its readers.
        let stored = self.sim.hub.stored_frames() as u64;
        prop_assert!(
            stored <= metrics.queued_bytes,
            "{} frames stored for {} queued bytes",
            stored,
            metrics.queued_bytes
        );
        // Any message missed by a reader was counted as a drop; mark those channels.
        if metrics.messages_dropped > 0 {
            for client in &mut self.clients {
                let names = client.subscribed.iter().map(|&c| CHANNELS[c].to_owned()).collect::<Vec<_>>();
                client.gap_allowed.extend(names);
            }
        }
        Ok(())
    }

    /// Reads everything still queued, then checks that every expected delivery happened or
    /// was counted as dropped.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for k in 0..CLIENTS {
            if let Some(id) = self.clients[k].id {
                self.read(k, id)?;
            }
        }
        let expected: u64 = self.publishes.iter().map(|(_, subscribers)| subscribers.len() as u64).sum();
        let metrics = self.sim.hub.metrics();
        prop_assert_eq!(
            self.delivered + self.refusals_received + metrics.messages_dropped,
            expected + self.refusals_expected,
            "every delivery and reply made or counted as dropped"
        );
        prop_assert_eq!(metrics.publishes, self.publishes.len() as u64);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn hub_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
        }
        world.settle()?;
    }
}
