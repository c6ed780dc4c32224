//! Three nodes on a Redis Cluster of three masters (each with a replica), on both shells:
//! channels spread over the masters through sharded pub/sub, each delivered exactly once
//! across nodes; a master killed → `/healthz` degraded until its replica is promoted, then
//! the nodes follow the new slot map and delivery resumes on every channel.

use std::time::Duration;

use switchboard_tests::cluster::{
    API_KEY, RedisCluster, api_presence, api_publish, healthz, next_data, subscribe_pairs, wait_until,
};
use switchboard_tests::{PubSub, Server, Settings, for_each_binary, wait_for_stats};

fn node_settings(seeds: &[u16], n: usize) -> Settings {
    let urls: Vec<String> = seeds.iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let broker = format!(
        "kind = \"redis-cluster\"\nurls = [{}]\nlease_ttl = \"2s\"\n\
         \n[broker.backoff]\nmin = \"50ms\"\nmax = \"300ms\"\n\n[broker.breaker]\nfailure_threshold = 3\nopen_for = \"500ms\"\n",
        urls.join(", ")
    );
    Settings { workers: 1, api_key: API_KEY, node_id: format!("c{n}"), broker, ..Settings::default() }
}

fn node(bin: &std::path::Path, seeds: &[u16], n: usize) -> Server {
    Server::with(bin, &node_settings(seeds, n))
}

/// Publishes `tag` on every channel from `from` until both listeners of each got it (a new
/// subscription is live once a message comes through), then drains what came twice.
fn warm(from: &Server, names: &[String], listeners: &mut [(PubSub, PubSub)], tag: &str) {
    for (name, (x, y)) in names.iter().zip(listeners.iter_mut()) {
        for client in [x, y] {
            wait_until(Duration::from_secs(20), &format!("{name} crosses nodes"), || {
                assert_eq!(api_publish(from.addr, name, &format!("\"{tag}\"")), 202);
                next_data(client, Duration::from_millis(200)) == Some(serde_json::json!(tag))
            });
        }
    }
    for (x, y) in listeners.iter_mut() {
        for client in [x, y] {
            while next_data(client, Duration::from_millis(100)).is_some() {}
        }
    }
}

/// Publishes a distinct number on every channel from `from`; each listener gets its
/// channel's number once.
fn exactly_once(from: &Server, names: &[String], listeners: &mut [(PubSub, PubSub)], base: usize) {
    for (i, name) in names.iter().enumerate() {
        assert_eq!(api_publish(from.addr, name, &format!("{}", base + i)), 202);
    }
    for (i, (x, y)) in listeners.iter_mut().enumerate() {
        for client in [&mut *x, &mut *y] {
            assert_eq!(next_data(client, Duration::from_secs(5)), Some(serde_json::json!(base + i)), "channel {i}");
        }
        for client in [x, y] {
            assert_eq!(next_data(client, Duration::from_millis(30)), None, "a duplicate on channel {i}");
        }
    }
}

/// The two tests' clusters and nodes take the machine's two cores: one at a time, so a slow
/// cluster heartbeat does not look like a dead master.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn fan_out_through_a_cluster_survives_a_master_failover() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut cluster) = RedisCluster::start(3) else { return };
    for_each_binary(|bin| {
        // Two seeds: the first master and the last replica.
        let seeds = [cluster.servers[0].port, cluster.servers[5].port];
        let nodes: Vec<Server> = (1..=3).map(|n| node(bin, &seeds, n)).collect();
        for server in &nodes {
            wait_until(Duration::from_secs(10), "the node reads the slot map", || {
                healthz(server.addr).1["status"] == "ok"
            });
        }
        let names: Vec<String> =
            (0..12).map(|i| format!("{}-c{i}", bin.file_name().map_or("x".into(), |f| f.to_string_lossy()))).collect();
        let mut listeners = subscribe_pairs(&nodes[1], &nodes[2], &names);
        warm(&nodes[0], &names, &mut listeners, "warm");
        // Every master carries some of the channels, each through one sharded subscription
        // per node that holds it.
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3);
        let per_master: Vec<usize> = masters
            .iter()
            .map(|m| {
                RedisCluster::shard_channels(m, "switchboard:ch:")
                    .iter()
                    .filter(|c| names.iter().any(|n| c.ends_with(n.as_str())))
                    .count()
            })
            .collect();
        assert_eq!(per_master.iter().sum::<usize>(), names.len(), "{per_master:?}");
        assert!(per_master.iter().all(|&n| n > 0), "a master is idle: {per_master:?}");
        exactly_once(&nodes[0], &names, &mut listeners, 0);
        exactly_once(&nodes[2], &names, &mut listeners, 100);
        // Presence and the connection count are cluster-wide: each channel's members sit on
        // its master, every hub's lease on each master.
        for name in &names {
            let (members, complete) = api_presence(nodes[0].addr, name);
            assert_eq!((members.len(), complete), (2, true), "{name}: {members:?}");
        }
        let clients = 2 * names.len() as u64;
        wait_for_stats(nodes[0].addr, 1, "the cluster-wide count", |s| s["connections"]["cluster"] == clients);

        // A master dies: the nodes say degraded until its replica takes over, then follow.
        let victim = cluster
            .servers
            .iter()
            .position(|s| s.child_running() && cluster.masters().iter().any(|m| m.port == s.port))
            .unwrap_or(0);
        cluster.wait_replicas_synced();
        cluster.servers[victim].kill();
        wait_until(Duration::from_secs(5), "node 1 says degraded", || healthz(nodes[0].addr).1["status"] == "degraded");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while nodes.iter().any(|n| healthz(n.addr).1["status"] != "ok") {
            if std::time::Instant::now() > deadline {
                let states: Vec<_> = nodes.iter().map(|n| healthz(n.addr).1).collect();
                let alive = cluster.servers.iter().find(|s| s.child_running());
                let view = alive.map(|s| s.command(&["CLUSTER", "NODES"]));
                panic!("the nodes did not follow the promoted replica: {states:?}\n{view:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(cluster.masters().len(), 3, "a replica was promoted");
        warm(&nodes[0], &names, &mut listeners, "after");
        exactly_once(&nodes[1], &names, &mut listeners, 200);
        for name in &names {
            assert_eq!(api_presence(nodes[2].addr, name).0.len(), 2, "{name} after the failover");
        }
        // The dead master comes back as a replica, for the next shell's run.
        cluster.servers[victim].restart();
        wait_until(
            Duration::from_secs(20),
            "the old master rejoins",
            || matches!(cluster.servers[victim].command(&["CLUSTER", "INFO"]), Ok(switchboard_tests::cluster::Reply::Bulk(Some(i))) if i.contains("cluster_state:ok")),
        );
    });
}

/// Node `n` on the cluster, with the native test namespaces (history on `chat:`).
fn history_node(bin: &std::path::Path, seeds: &[u16], n: usize) -> Server {
    let base = node_settings(seeds, n);
    Server::start(bin, &format!("{}{}", base.to_toml(), switchboard_tests::native::AUTH_AND_NAMESPACES))
}

#[test]
fn history_streams_live_on_their_masters_and_recover_across_nodes() {
    use switchboard_tests::native::{next_of_type, offsets, subscribe_from, user_token};
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = RedisCluster::start(3) else { return };
    for_each_binary(|bin| {
        let seeds = [cluster.servers[1].port];
        let nodes: Vec<Server> = (1..=3).map(|n| history_node(bin, &seeds, n)).collect();
        for server in &nodes {
            wait_until(Duration::from_secs(10), "the node reads the slot map", || {
                healthz(server.addr).1["status"] == "ok"
            });
        }
        let channel = format!("chat:{}", bin.file_name().map_or("x".into(), |f| f.to_string_lossy()));
        let path = format!("/ws?token={}", user_token("ann"));
        let mut ann = PubSub::connect(&nodes[0], &path);
        let mut bob = PubSub::connect(&nodes[2], &format!("/ws?token={}", user_token("bob")));
        let epoch = subscribe_from(&mut ann, &channel, None)["epoch"].as_str().expect("an epoch").to_owned();
        assert_eq!(subscribe_from(&mut bob, &channel, None)["epoch"], epoch.as_str(), "one stream for the cluster");
        // The publish script (stream, meta and SPUBLISH in one call) runs on the channel's
        // master: its keys share the channel's hash tag.
        wait_until(Duration::from_secs(10), "publications go through", || {
            api_publish(nodes[1].addr, &channel, "\"first\"") == 202
        });
        let first = next_of_type(&mut ann, "message")["offset"].as_u64().unwrap_or(0);
        assert_eq!(next_of_type(&mut bob, "message")["offset"], first);
        for i in 0..6 {
            assert_eq!(api_publish(nodes[i % 3].addr, &channel, &format!("{{\"i\":{i}}}")), 202);
        }
        for client in [&mut ann, &mut bob] {
            let got: Vec<u64> =
                (0..6).map(|_| next_of_type(client, "message")["offset"].as_u64().unwrap_or(0)).collect();
            assert_eq!(got, (first + 1..=first + 6).collect::<Vec<_>>());
        }
        switchboard_tests::close_and_wait(ann.ws);
        for (i, server) in nodes.iter().enumerate() {
            assert_eq!(api_publish(server.addr, &channel, &format!("{i}")), 202);
        }
        let mut back = PubSub::connect(&nodes[1], &path);
        let reply = subscribe_from(&mut back, &channel, Some((&epoch, first + 6)));
        assert_eq!(reply["recovered"], true, "{reply}");
        let recovered = offsets(reply["publications"].as_array().expect("publications"));
        assert_eq!(recovered, [first + 7, first + 8, first + 9]);
        let stream = cluster.masters().into_iter().find(|m| {
            let keys = m.command(&["KEYS", &format!("switchboard:stream:*{channel}")]);
            matches!(keys, Ok(switchboard_tests::cluster::Reply::Array(k)) if k.len() == 1)
        });
        assert!(stream.is_some(), "one master holds the stream");
    });
}
