//! History in Redis Streams across three nodes on a real redis-server, on both shells: one
//! stream per channel whatever node publishes, recovery on another node than the one a
//! client left, and a Redis that lost its data giving a new epoch that clients are told of.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::cluster::{API_KEY, Redis, Reply, api_publish, broker_toml, healthz, wait_until};
use switchboard_tests::native::{AUTH_AND_NAMESPACES, next_of_type, offsets, subscribe_from, user_token};
use switchboard_tests::{PubSub, Server, Settings, for_each_binary};

/// Node `n` of a cluster around the Redis on `port`, with the native test namespaces.
fn node(bin: &std::path::Path, port: u16, n: usize) -> Server {
    let settings = Settings {
        workers: 2,
        api_key: API_KEY,
        node_id: format!("n{n}"),
        broker: broker_toml(port),
        ..Settings::default()
    };
    Server::start(bin, &format!("{}{AUTH_AND_NAMESPACES}", settings.to_toml()))
}

#[test]
fn three_nodes_share_one_stream_and_recover_across_nodes() {
    for_each_binary(|bin| {
        let Some(mut redis) = Redis::start() else { return };
        let nodes: Vec<Server> = (1..=3).map(|n| node(bin, redis.port, n)).collect();
        // Every hub's link is up (it writes its lease first): publications are not dropped.
        wait_until(
            Duration::from_secs(10),
            "six hubs hold a lease",
            || matches!(redis.command(&["KEYS", "switchboard:lease:*"]), Ok(Reply::Array(keys)) if keys.len() == 6),
        );
        let path = format!("/ws?token={}", user_token("ann"));
        let mut ann = PubSub::connect(&nodes[0], &path);
        let mut bob = PubSub::connect(&nodes[2], &format!("/ws?token={}", user_token("bob")));
        let first = subscribe_from(&mut ann, "chat:h", None);
        let epoch = first["epoch"].as_str().expect("an epoch").to_owned();
        assert_eq!(first["offset"], 0);
        assert_eq!(subscribe_from(&mut bob, "chat:h", None)["epoch"], epoch.as_str(), "one stream for the cluster");
        // Every hub of every node that holds the channel is subscribed before publishing.
        redis.wait_subscribed("chat:h", 2, Duration::from_secs(5));

        // Published from all three nodes: both see the same offsets, in order.
        for i in 0..6 {
            assert_eq!(api_publish(nodes[i % 3].addr, "chat:h", &format!("{{\"i\":{i}}}")), 202);
        }
        for client in [&mut ann, &mut bob] {
            let got: Vec<Value> = (0..6).map(|_| next_of_type(client, "message")).collect();
            assert_eq!(got.iter().map(|m| m["offset"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
            assert_eq!(got[5]["data"], json!({"i": 5}));
        }

        // Ann leaves node 1; four more; she comes back on node 2 and recovers exactly those.
        switchboard_tests::close_and_wait(ann.ws);
        for i in 6..10 {
            assert_eq!(api_publish(nodes[(i + 1) % 3].addr, "chat:h", &format!("{{\"i\":{i}}}")), 202);
        }
        let mut back = PubSub::connect(&nodes[1], &path);
        let reply = subscribe_from(&mut back, "chat:h", Some((&epoch, 6)));
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(offsets(reply["publications"].as_array().expect("publications")), [7, 8, 9, 10]);
        assert_eq!(api_publish(nodes[2].addr, "chat:h", "\"live\""), 202);
        assert_eq!(next_of_type(&mut back, "message")["offset"], 11, "live right after, no duplicate");

        // The history op reads the same stream on any node.
        back.send(
            &json!({"op":"history","channel":"chat:h","id":2,"since":{"epoch":epoch,"offset":8},"limit":2}).to_string(),
        );
        let page = next_of_type(&mut back, "history");
        assert_eq!(offsets(page["publications"].as_array().expect("publications")), [9, 10]);

        // Redis loses everything. The links' subscriber connections come back, and what was
        // published meanwhile never reached the hubs: every subscriber of a channel with history
        // is told to resubscribe. Recovering from the old epoch is refused: the stream is new.
        redis.restart();
        for client in [&mut back, &mut bob] {
            let told = next_of_type(client, "unsubscribed");
            assert_eq!(told["code"], "resubscribe", "{told}");
        }
        for server in &nodes {
            wait_until(Duration::from_secs(10), "the breaker closes", || healthz(server.addr).1["status"] == "ok");
        }
        wait_until(
            Duration::from_secs(10),
            "six hubs hold a lease again",
            || matches!(redis.command(&["KEYS", "switchboard:lease:*"]), Ok(Reply::Array(keys)) if keys.len() == 6),
        );
        assert_eq!(api_publish(nodes[0].addr, "chat:h", "\"after\""), 202);
        let reply = subscribe_from(&mut bob, "chat:h", Some((&epoch, 11)));
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_ne!(reply["epoch"], epoch.as_str(), "a new epoch");
        assert_eq!(reply["offset"], 1);
    });
}
