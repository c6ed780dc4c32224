//! A hub on a simulated Redis Cluster (`broker.kind = "redis-cluster"`), on a simulated clock:
//! the hub reads the slot map, puts every channel's sharded subscription and publishes on the
//! master owning its slot, follows a failover to the promoted replica, and moves channels
//! whose slots went to a new master.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use support::{Sim, text};
use switchboard_core::{ConnId, LinkConn, redis_cluster_slot};

const CONFIG: &str = r#"
[heartbeat]
idle_timeout = "0s"
ping_interval = "1h"

[broker]
kind = "redis-cluster"
urls = ["redis://127.0.0.1:7000"]
"#;

/// A scripted cluster: masters by slot range, the sockets the hub opened, and what it did.
struct Cluster {
    sim: Sim,
    /// `(first slot, last slot, port)` of each master.
    map: Vec<(u16, u16, u16)>,
    /// Ports that refuse connections (a dead master).
    dead: BTreeSet<String>,
    /// Where each open socket goes.
    addr: BTreeMap<LinkConn, String>,
    /// Shard channels each subscriber socket holds.
    subs: BTreeMap<LinkConn, BTreeSet<String>>,
    /// `(address, shard channel)` of every SPUBLISH but probes.
    published: Vec<(String, String)>,
}

fn args_of(frame: OwnedFrame) -> Vec<Vec<u8>> {
    let OwnedFrame::Array(items) = frame else { panic!("a command: {frame:?}") };
    items.into_iter().map(|i| if let OwnedFrame::BulkString(b) = i { b } else { Vec::new() }).collect()
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

impl Cluster {
    fn new(map: Vec<(u16, u16, u16)>) -> Self {
        let sim = Sim::with_toml(CONFIG);
        let mut cluster = Self {
            sim,
            map,
            dead: BTreeSet::new(),
            addr: BTreeMap::new(),
            subs: BTreeMap::new(),
            published: Vec::new(),
        };
        cluster.serve();
        cluster
    }

    fn slots_reply(&self) -> Vec<u8> {
        let mut out = format!("*{}\r\n", self.map.len()).into_bytes();
        for &(first, last, port) in &self.map {
            out.extend(format!("*3\r\n:{first}\r\n:{last}\r\n*3\r\n").bytes());
            out.extend(bulk(b"127.0.0.1"));
            out.extend(format!(":{port}\r\n").bytes());
            out.extend(bulk(b"id"));
        }
        out
    }

    /// Runs the hub's Redis traffic until nothing moves.
    fn serve(&mut self) {
        for _ in 0..50 {
            self.sim.pump();
            let mut moved = false;
            for conn in std::mem::take(&mut self.sim.redis_closes) {
                self.addr.remove(&conn);
                self.subs.remove(&conn);
            }
            for (conn, addr) in std::mem::take(&mut self.sim.redis_opens) {
                moved = true;
                if self.dead.contains(&addr) {
                    self.sim.hub.handle_redis_connect_failed(self.sim.now, conn);
                } else {
                    self.addr.insert(conn, addr);
                    self.subs.remove(&conn);
                    self.sim.hub.handle_redis_connected(self.sim.now, conn);
                }
            }
            let conns: Vec<LinkConn> = self.addr.keys().copied().collect();
            for conn in conns {
                let bytes = self.sim.take_redis(conn);
                let mut rest = bytes.as_slice();
                let mut answers: Vec<u8> = Vec::new();
                let mut replies: Vec<(LinkConn, Vec<u8>)> = Vec::new();
                while let Ok(Some((frame, used))) = decode(rest) {
                    rest = &rest[used..];
                    moved = true;
                    let args = args_of(frame);
                    let verb = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "CLUSTER" => self.slots_reply(),
                        "INCR" => b":1\r\n".to_vec(),
                        "KEYS" => b"*0\r\n".to_vec(),
                        "SSUBSCRIBE" | "SUNSUBSCRIBE" => {
                            let key = String::from_utf8_lossy(&args[1]).into_owned();
                            let held = self.subs.entry(conn).or_default();
                            if verb == "SSUBSCRIBE" {
                                held.insert(key.clone());
                            } else {
                                held.remove(&key);
                            }
                            let kind = verb.to_ascii_lowercase();
                            let mut r = format!("*3\r\n${}\r\n{kind}\r\n", kind.len()).into_bytes();
                            r.extend(bulk(key.as_bytes()));
                            r.extend(b":1\r\n");
                            r
                        }
                        "PING" => b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec(),
                        "SPUBLISH" => {
                            let key = String::from_utf8_lossy(&args[1]).into_owned();
                            let addr = self.addr[&conn].clone();
                            // Sharded pub/sub: the subscribers on this node hear it.
                            for (sub, keys) in &self.subs {
                                if keys.contains(&key) && self.addr.get(sub) == Some(&addr) {
                                    let mut push = b"*3\r\n$8\r\nsmessage\r\n".to_vec();
                                    push.extend(bulk(key.as_bytes()));
                                    push.extend(bulk(&args[2]));
                                    replies.push((*sub, push));
                                }
                            }
                            if !key.contains(":probe:") {
                                self.published.push((addr, key));
                            }
                            b":1\r\n".to_vec()
                        }
                        _ => b":1\r\n".to_vec(),
                    };
                    answers.extend(reply);
                }
                replies.insert(0, (conn, answers));
                for (to, reply) in replies {
                    if self.addr.contains_key(&to) && !reply.is_empty() {
                        self.sim.hub.handle_redis_bytes(self.sim.now, to, &reply);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the hub's Redis traffic never settled");
    }

    /// The address of the master that owns `channel`'s slot.
    fn owner(&self, channel: &str) -> String {
        let slot = redis_cluster_slot(channel);
        let port = self.map.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).map(|m| m.2);
        format!("127.0.0.1:{}", port.expect("a master owns every slot"))
    }

    /// The addresses whose subscriber sockets hold `channel`.
    fn held_at(&self, channel: &str) -> Vec<String> {
        self.subs
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| k.ends_with(&format!("}}{channel}"))))
            .map(|(conn, _)| self.addr[conn].clone())
            .collect()
    }

    fn advance(&mut self, ms: u64) {
        for _ in 0..ms / 50 {
            self.sim.advance(Duration::from_millis(50));
            self.serve();
        }
    }

    fn healthz(&mut self) -> String {
        let id = self.sim.accept();
        self.sim.send(id, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = String::from_utf8_lossy(&self.sim.take_output(id)).into_owned();
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
    }

    fn every_channel_on_its_master(&self, names: &[String]) {
        for name in names {
            assert_eq!(self.held_at(name), [self.owner(name)], "{name} (slot {})", redis_cluster_slot(name));
        }
    }
}

fn subscriber(c: &mut Cluster, names: &[String]) -> ConnId {
    let id = c.sim.open("/ws");
    for (i, name) in names.iter().enumerate() {
        c.sim.send(id, &text(&format!(r#"{{"op":"subscribe","channel":"{name}","id":{i}}}"#)));
    }
    id
}

#[test]
fn channels_follow_the_slot_map_through_a_failover_and_a_resharding() {
    let mut c = Cluster::new(vec![(0, 8191, 7000), (8192, 16383, 7001)]);
    let names: Vec<String> = (0..16).map(|i| format!("room{i}")).collect();
    assert!(names.iter().any(|n| redis_cluster_slot(n) < 8192) && names.iter().any(|n| redis_cluster_slot(n) >= 8192));
    let client = subscriber(&mut c, &names);
    c.serve();
    c.every_channel_on_its_master(&names);
    assert!(c.healthz().contains(r#""ok""#), "{} {:?}", c.healthz(), c.addr);

    // Publishes go to the channel's master.
    for name in &names {
        c.sim.send(client, &text(&format!(r#"{{"op":"publish","channel":"{name}","data":1}}"#)));
    }
    c.serve();
    let mut expected: Vec<(String, String)> = names.iter().map(|n| (c.owner(n), n.clone())).collect();
    let mut published: Vec<(String, String)> = std::mem::take(&mut c.published)
        .into_iter()
        .map(|(addr, key)| (addr, key.rsplit('}').next().unwrap_or_default().to_owned()))
        .collect();
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "each publish once, to its channel's master");

    // 7001 dies: degraded; its replica 7003 is promoted and the map says so.
    c.dead.insert("127.0.0.1:7001".into());
    let lost: Vec<LinkConn> = c.addr.iter().filter(|(_, a)| *a == "127.0.0.1:7001").map(|(l, _)| *l).collect();
    assert_eq!(lost.len(), 2, "a command and a subscriber socket");
    for conn in lost {
        c.addr.remove(&conn);
        c.subs.remove(&conn);
        c.sim.hub.handle_redis_eof(c.sim.now, conn);
    }
    c.serve();
    assert!(c.healthz().contains("reconnecting"), "{}", c.healthz());
    c.map[1].2 = 7003;
    c.advance(500);
    c.every_channel_on_its_master(&names);
    assert!(c.healthz().contains(r#""ok""#), "{}", c.healthz());

    // Resharding: a third master takes 4096–8191 from 7000. Its channels move there, and
    // only there.
    c.map = vec![(0, 4095, 7000), (4096, 8191, 7005), (8192, 16383, 7003)];
    c.advance(2500);
    c.every_channel_on_its_master(&names);
    assert!(names.iter().any(|n| c.owner(n) == "127.0.0.1:7005"), "some channels moved");
    assert!(c.healthz().contains(r#""ok""#), "{}", c.healthz());
}
