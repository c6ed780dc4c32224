//! Three nodes on a Redis Cluster of three masters (each with a replica), on both shells:
//! channels spread over the masters through sharded pub/sub, each delivered exactly once
//! across nodes; a master killed → `/healthz` degraded until its replica is promoted, then
//! the nodes follow the new slot map and delivery resumes on every channel.

use std::time::Duration;

use switchboard_tests::cluster::{
    API_KEY, RedisCluster, api_presence, api_publish, healthz, next_data, subscribe_pairs, wait_until,
};
use switchboard_tests::{PubSub, Server, Settings, for_each_binary, wait_for_stats};

fn node(bin: &std::path::Path, seeds: &[u16], n: usize) -> Server {
    let urls: Vec<String> = seeds.iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let broker = format!(
        "kind = \"redis-cluster\"\nurls = [{}]\nlease_ttl = \"2s\"\n\
         \n[broker.backoff]\nmin = \"50ms\"\nmax = \"300ms\"\n\n[broker.breaker]\nfailure_threshold = 3\nopen_for = \"500ms\"\n",
        urls.join(", ")
    );
    let settings = Settings { workers: 1, api_key: API_KEY, node_id: format!("c{n}"), broker, ..Settings::default() };
    Server::with(bin, &settings)
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

#[test]
fn fan_out_through_a_cluster_survives_a_master_failover() {
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
