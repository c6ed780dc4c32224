//! Three nodes of one shell around a real `redis-server`: fan-out and presence across nodes,
//! losing Redis and getting it back, a node that dies without a word. Every scenario runs
//! against every shell binary, each with its own Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use switchboard_tests::cluster::{
    BACKOFF_MAX, LEASE_TTL, Listener, OPEN_FOR, Redis, Reply, api_presence, api_publish, healthz, member_ids, metric,
    start_nodes, wait_until,
};
use switchboard_tests::{PubSub, Server, for_each_binary};

/// Messages per publisher in the fan-out scenario.
const PER_PUBLISHER: usize = 100;
/// How long a message may take to arrive once it is due.
const ARRIVAL: Duration = Duration::from_secs(10);
/// Time for subscriptions and presence to reach Redis after the acks.
const SETTLE: Duration = Duration::from_secs(5);
/// A dead node's members disappear within the lease TTL; this covers the presence request
/// itself and the poll interval.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// Subscribes `per_node` listeners on every node to `channel`, each with its node in its
/// presence info, and waits until every hub holding one is subscribed in Redis.
fn listeners(redis: &Redis, nodes: &[Server], per_node: usize, channel: &str) -> Vec<Listener> {
    let mut all = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..per_node {
            let client = PubSub::connect(node, "/ws");
            all.push(Listener::subscribe(client, channel, &format!(r#"{{"node":{n},"i":{i}}}"#)));
        }
    }
    let hubs: BTreeSet<_> = all.iter().map(|l| l.hub.clone()).collect();
    redis.wait_subscribed(channel, hubs.len(), SETTLE);
    all
}

/// The sorted `conn_id`s of the listeners that `keep` picks.
fn conn_ids(listeners: &[Listener], keep: impl Fn(&Listener) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = listeners.iter().filter(|l| keep(l)).map(|l| l.conn_id.clone()).collect();
    ids.sort();
    ids
}

/// Publishes probes from `publisher` until every listener not on node `n1` has heard one;
/// returns how long the slowest took, or panics after `limit`.
fn probe_until_heard(publisher: &mut PubSub, listeners: &[Listener], tag: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let remote: Vec<&Listener> = listeners.iter().filter(|l| l.hub.0 != "n1").collect();
    let mut heard: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut probe = 0;
    while heard.len() < remote.len() {
        assert!(start.elapsed() < limit, "{tag}: cross-node delivery did not resume within {limit:?}: {heard:?}");
        publisher.send(&format!(r#"{{"op":"publish","channel":"load","data":{{"p":"{tag}","i":{probe}}}}}"#));
        probe += 1;
        thread::sleep(Duration::from_millis(10));
        for listener in &remote {
            if listener.drain().iter().any(|f| f["data"]["p"] == tag) {
                heard.entry(&listener.conn_id).or_insert_with(|| start.elapsed());
            }
        }
    }
    heard.values().max().copied().unwrap_or_default()
}

/// Reads `count` messages from `listener`; panics naming the listener if one is late.
fn take(listener: &Listener, count: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|k| match listener.next(ARRIVAL) {
            Some((_, frame)) => frame,
            None => panic!("{} got {k} of {count} messages", listener.conn_id),
        })
        .collect()
}

/// Checks that `frames` hold, per publisher (`data.p`), the numbers 0.. exactly once, in order
/// for the publishers in `ordered`, and that `seq` counts up from `first_seq` without a gap.
fn assert_once(who: &str, frames: &[serde_json::Value], first_seq: u64, ordered: &[&str]) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, frame) in frames.iter().enumerate() {
        assert_eq!(frame["seq"], first_seq + k as u64, "{who}: seq of message {k}: {frame}");
        let publisher = frame["data"]["p"].as_str().unwrap_or_else(|| panic!("{who}: no publisher in {frame}"));
        let i = frame["data"]["i"].as_u64().unwrap_or_else(|| panic!("{who}: no number in {frame}"));
        seen.entry(publisher.to_owned()).or_default().push(i);
    }
    seen.into_iter()
        .map(|(publisher, mut numbers)| {
            if !ordered.contains(&publisher.as_str()) {
                numbers.sort_unstable();
            }
            let expected: Vec<u64> = (0..numbers.len() as u64).collect();
            assert_eq!(numbers, expected, "{who}: from {publisher}, missing, twice or out of order");
            (publisher, numbers.len())
        })
        .collect()
}

#[test]
fn three_nodes_deliver_every_publish_exactly_once_in_order_and_share_presence() {
    for_each_binary(|bin| {
        for workers in [1, 2] {
            eprintln!("--- {workers} worker(s) per node");
            fan_out_and_presence(bin, workers);
        }
    });
}

fn fan_out_and_presence(bin: &std::path::Path, workers: usize) {
    let Some(redis) = Redis::start() else { return };
    let nodes = start_nodes(bin, redis.port, 3, workers);
    let listeners = listeners(&redis, &nodes, 4, "news");

    // Presence: every member of the three nodes, from the HTTP API and from the op.
    let expected = conn_ids(&listeners, |_| true);
    wait_until(SETTLE, "GET /api/presence lists all three nodes' members", || {
        api_presence(nodes[1].addr, "news") == (expected.clone(), true)
    });
    let mut asker = PubSub::connect(&nodes[2], "/ws");
    asker.send(r#"{"op":"presence","channel":"news","id":7}"#);
    let reply = asker.recv_json();
    assert_eq!((reply["type"].as_str(), reply["id"].as_u64()), (Some("presence"), Some(7)), "{reply}");
    assert_eq!(member_ids(&reply), expected, "{reply}");
    let infos: BTreeSet<u64> = reply["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["info"]["node"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(infos, BTreeSet::from([0, 1, 2]), "presence info travels with the member: {reply}");

    // Two publishers at once: a client on node 1 and the HTTP API of node 2.
    let mut publisher = PubSub::connect(&nodes[0], "/ws");
    let api = nodes[1].addr;
    let http_publisher = thread::spawn(move || {
        for i in 0..PER_PUBLISHER {
            assert_eq!(api_publish(api, "news", &format!(r#"{{"p":"api","i":{i}}}"#)), 202);
        }
    });
    for i in 0..PER_PUBLISHER {
        publisher.send(&format!(r#"{{"op":"publish","channel":"news","data":{{"p":"ws","i":{i}}}}}"#));
    }
    assert!(http_publisher.join().is_ok(), "the HTTP publisher failed");
    // Each `/api/publish` is a new connection, which may land on either worker of node 2: with
    // two workers those are two publishers (one Redis connection each), not ordered together.
    let ordered: &[&str] = if workers == 1 { &["ws", "api"] } else { &["ws"] };
    for listener in &listeners {
        let frames = take(listener, 2 * PER_PUBLISHER);
        let counts = assert_once(&listener.conn_id, &frames, 1, ordered);
        let all = BTreeMap::from([("api".to_owned(), PER_PUBLISHER), ("ws".to_owned(), PER_PUBLISHER)]);
        assert_eq!(counts, all, "{}", listener.conn_id);
    }
    // A duplicate would arrive before these end markers, which leave after everything above.
    publisher.send(r#"{"op":"publish","channel":"news","data":{"p":"ws","i":100}}"#);
    assert_eq!(api_publish(api, "news", r#"{"p":"api","i":100}"#), 202);
    for listener in &listeners {
        let frames = take(listener, 2);
        let ends: BTreeSet<_> =
            frames.iter().map(|f| (f["data"]["p"].to_string(), f["data"]["i"].to_string())).collect();
        assert_eq!(ends.len(), 2, "{}: {frames:?}", listener.conn_id);
        assert!(ends.iter().all(|(_, i)| i == "100"), "{} got an extra message: {frames:?}", listener.conn_id);
    }
}

#[test]
fn losing_redis_keeps_local_delivery_and_opens_the_breaker_then_the_cluster_heals() {
    for_each_binary(|bin| {
        let Some(mut redis) = Redis::start() else { return };
        // One worker per node: with Redis down, a node's workers do not reach each other either.
        let nodes = start_nodes(bin, redis.port, 3, 1);
        let listeners = listeners(&redis, &nodes, 2, "load");
        let mut publishers: Vec<PubSub> = nodes.iter().map(|node| PubSub::connect(node, "/ws")).collect();

        // Load from every node while Redis dies.
        let started = Instant::now();
        let mut killed = false;
        let mut sent = 0;
        while started.elapsed() < Duration::from_millis(800) {
            for (n, publisher) in (1..).zip(&mut publishers) {
                publisher.send(&format!(r#"{{"op":"publish","channel":"load","data":{{"p":"n{n}","i":{sent}}}}}"#));
            }
            sent += 1;
            if !killed && started.elapsed() >= Duration::from_millis(300) {
                assert!(redis.pid().is_some(), "Redis is running");
                redis.kill();
                killed = true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        for node in &nodes {
            wait_until(Duration::from_secs(5), "the breaker opens", || {
                metric(node.addr, r#"switchboard_broker_state{state="open"}"#) == Some(1.0)
            });
            let (code, health) = healthz(node.addr);
            assert_eq!(code, 200, "{health}");
            assert_eq!(health["status"], "degraded", "{health}");
            assert!(
                metric(node.addr, "switchboard_broker_dropped_total").is_some_and(|n| n > 0.0),
                "publishes while Redis is gone are counted as dropped"
            );
        }
        // What arrived during the load: in order per publisher, never twice; local ones complete.
        thread::sleep(Duration::from_millis(200));
        for listener in &listeners {
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let frames = listener.drain();
            for frame in &frames {
                let p = frame["data"]["p"].as_str().unwrap_or_default().to_owned();
                let i = frame["data"]["i"].as_i64().unwrap_or(-1);
                let before = last.insert(p.clone(), i).unwrap_or(-1);
                assert!(i > before, "{}: from {p}, {i} after {before}", listener.conn_id);
            }
            let local_count = frames.iter().filter(|f| f["data"]["p"] == listener.hub.0.as_str()).count();
            assert_eq!(local_count, sent, "{}: every publish of its own node arrives", listener.conn_id);
        }

        // Redis stays down: each node still delivers to its own subscribers, and only to them.
        for (n, publisher) in (1..).zip(&mut publishers) {
            publisher.send(&format!(r#"{{"op":"publish","channel":"load","data":{{"p":"down","i":"n{n}"}}}}"#));
        }
        for listener in &listeners {
            let Some((_, frame)) = listener.next(ARRIVAL) else { panic!("{}: no local delivery", listener.conn_id) };
            assert_eq!(frame["data"], serde_json::json!({"p": "down", "i": listener.hub.0}), "{}", listener.conn_id);
        }
        thread::sleep(Duration::from_millis(200));
        for listener in &listeners {
            let late = listener.drain();
            assert!(late.is_empty(), "{}: got another node's message while Redis was down: {late:?}", listener.conn_id);
        }

        // Redis comes back on the same port: cross-node delivery resumes with the next probe
        // of each breaker, within open_for plus twice the backoff maximum.
        redis.restart();
        let bound = OPEN_FOR + 2 * BACKOFF_MAX;
        let took = probe_until_heard(&mut publishers[0], &listeners, "back", bound + Duration::from_secs(5));
        eprintln!("cross-node delivery resumed {took:?} after Redis came back (bound {bound:?})");
        assert!(took <= bound, "resumed after {took:?}, more than {bound:?}");
        for node in &nodes {
            wait_until(Duration::from_secs(2), "the breaker closes", || healthz(node.addr).1["status"] == "ok");
        }
        // The new Redis knows nothing: every hub wrote its lease and members again.
        let everyone = conn_ids(&listeners, |_| true);
        wait_until(SETTLE, "presence is whole again", || {
            api_presence(nodes[2].addr, "load") == (everyone.clone(), true)
        });

        // Only the subscriber connections drop (one failure each, below the threshold): the
        // breaker stays closed and they come back after a backoff, within twice its maximum.
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(matches!(killed, Ok(Reply::Integer(3))), "one subscriber connection per node: {killed:?}");
        let bound = 2 * BACKOFF_MAX;
        let took = probe_until_heard(&mut publishers[0], &listeners, "again", bound + Duration::from_secs(5));
        eprintln!("cross-node delivery resumed {took:?} after the subscriber connections dropped (bound {bound:?})");
        assert!(took <= bound, "resumed after {took:?}, more than {bound:?}");
        for node in &nodes {
            assert_eq!(healthz(node.addr).1["status"], "ok", "the breaker stayed closed");
        }
    });
}

#[test]
fn a_node_killed_with_sigkill_leaves_presence_within_the_lease_ttl() {
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let mut nodes = start_nodes(bin, redis.port, 3, 2);
        let listeners = listeners(&redis, &nodes, 3, "room");
        let all = conn_ids(&listeners, |_| true);
        wait_until(SETTLE, "presence lists every member", || {
            api_presence(nodes[0].addr, "room") == (all.clone(), true)
        });

        let mut victim = nodes.pop().unwrap_or_else(|| panic!("three nodes"));
        victim.signal("KILL");
        let killed = Instant::now();
        assert!(victim.wait_exit(Duration::from_secs(5)).is_some(), "the node did not die");
        let survivors = conn_ids(&listeners, |l| l.hub.0 != "n3");
        let limit = LEASE_TTL + LEASE_MARGIN;
        wait_until(limit, "the dead node's members leave presence", || {
            api_presence(nodes[0].addr, "room") == (survivors.clone(), true)
        });
        eprintln!("a dead node left presence {:?} after SIGKILL (lease TTL {LEASE_TTL:?})", killed.elapsed());
        // Every live node agrees.
        assert_eq!(api_presence(nodes[1].addr, "room"), (survivors, true));
    });
}

#[test]
fn a_node_without_redis_still_joins_its_own_workers() {
    for_each_binary(|bin| {
        let Some(mut redis) = Redis::start() else { return };
        let nodes = start_nodes(bin, redis.port, 1, 2);
        let node = &nodes[0];
        // Connect until both workers hold listeners (SO_REUSEPORT spreads them by hash).
        let mut listeners: Vec<Listener> = Vec::new();
        for i in 0..64 {
            let workers: BTreeSet<u32> = listeners.iter().map(|l| l.hub.1).collect();
            if workers.len() == 2 && listeners.len() >= 4 {
                break;
            }
            listeners.push(Listener::subscribe(PubSub::connect(node, "/ws"), "solo", &format!(r#"{{"i":{i}}}"#)));
        }
        let workers: BTreeSet<u32> = listeners.iter().map(|l| l.hub.1).collect();
        assert_eq!(workers.len(), 2, "listeners on both workers");
        redis.kill();
        wait_until(Duration::from_secs(5), "the breaker opens", || {
            metric(node.addr, r#"switchboard_broker_state{state="open"}"#) == Some(1.0)
        });
        let mut publisher = PubSub::connect(node, "/ws");
        publisher.send(r#"{"op":"publish","channel":"solo","data":"while Redis is down"}"#);
        for listener in &listeners {
            let Some((_, frame)) = listener.next(ARRIVAL) else {
                panic!("{} (worker {}) missed a publish of its own node", listener.conn_id, listener.hub.1)
            };
            assert_eq!(frame["data"], "while Redis is down");
        }
    });
}
