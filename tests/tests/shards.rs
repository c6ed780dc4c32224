//! Three nodes over two independent Redis instances (`broker.urls`), on both shells: each
//! channel lives on one instance, delivery is exactly once on both, and when one instance dies
//! only its channels stop reaching other nodes (and come back with it), while the other
//! instance's channels never stop.

use std::time::Duration;

use switchboard_tests::cluster::{API_KEY, Redis, api_publish, healthz, next_data, subscribe_pairs, wait_until};
use switchboard_tests::{Server, Settings, for_each_binary};

fn broker(a: u16, b: u16) -> String {
    format!(
        "kind = \"redis\"\nurls = [\"redis://127.0.0.1:{a}\", \"redis://127.0.0.1:{b}\"]\nlease_ttl = \"2s\"\n\
         \n[broker.backoff]\nmin = \"50ms\"\nmax = \"300ms\"\n\n[broker.breaker]\nfailure_threshold = 2\nopen_for = \"500ms\"\n"
    )
}

fn node(bin: &std::path::Path, a: u16, b: u16, n: usize) -> Server {
    let settings = Settings {
        workers: 1,
        api_key: API_KEY,
        node_id: format!("s{n}"),
        broker: broker(a, b),
        ..Settings::default()
    };
    Server::with(bin, &settings)
}

#[test]
fn channels_spread_over_two_instances_and_one_dying_spares_the_other() {
    for_each_binary(|bin| {
        let (Some(mut a), Some(b)) = (Redis::start(), Redis::start()) else { return };
        let nodes: Vec<Server> = (1..=3).map(|n| node(bin, a.port, b.port, n)).collect();
        // Enough channels that both instances get some; each is subscribed on nodes 2 and 3.
        let names: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
        let mut listeners = subscribe_pairs(&nodes[1], &nodes[2], &names);
        let key = |name: &str| format!("switchboard:ch:{name}");
        // Where each channel lives: exactly one instance holds its two subscriptions.
        let mut on_a = Vec::new();
        for (i, name) in names.iter().enumerate() {
            wait_until(Duration::from_secs(5), "the channel is subscribed on one instance", || {
                a.subscribers(&key(name)) + b.subscribers(&key(name)) == 2
            });
            let here = a.subscribers(&key(name)) == 2;
            assert!(here || b.subscribers(&key(name)) == 2, "{name} is split over both instances");
            if here {
                on_a.push(i);
            }
        }
        assert!(!on_a.is_empty() && on_a.len() < names.len(), "both instances hold channels: {on_a:?}");

        // Published on node 1: every listener gets each message once.
        for (i, name) in names.iter().enumerate() {
            assert_eq!(api_publish(nodes[0].addr, name, &format!("{i}")), 202);
        }
        for (i, (x, y)) in listeners.iter_mut().enumerate() {
            for client in [x, y] {
                assert_eq!(next_data(client, Duration::from_secs(5)), Some(serde_json::json!(i)), "channel {i}");
            }
        }
        for (x, y) in &mut listeners {
            for client in [x, y] {
                assert_eq!(next_data(client, Duration::from_millis(50)), None, "a duplicate");
            }
        }

        // Instance A dies: its channels no longer cross nodes, B's never stop.
        a.kill();
        wait_until(Duration::from_secs(5), "node 1 sees the broker degraded", || {
            healthz(nodes[0].addr).1["status"] == "degraded"
        });
        for (i, name) in names.iter().enumerate() {
            assert_eq!(api_publish(nodes[0].addr, name, &format!("{}", 100 + i)), 202);
        }
        for (i, (x, y)) in listeners.iter_mut().enumerate() {
            let expected = if on_a.contains(&i) { None } else { Some(serde_json::json!(100 + i)) };
            // B's channels arrive within the first wait; A's get a shorter one to show silence.
            let wait = Duration::from_millis(if expected.is_some() { 2000 } else { 300 });
            for client in [x, y] {
                assert_eq!(next_data(client, wait), expected, "channel {i} while A is down");
            }
        }

        // A comes back: its channels resume.
        a.restart();
        for server in &nodes {
            wait_until(Duration::from_secs(10), "the breakers close", || healthz(server.addr).1["status"] == "ok");
        }
        for &i in &on_a {
            wait_until(Duration::from_secs(5), "resubscribed on A", || a.subscribers(&key(&names[i])) == 2);
            assert_eq!(api_publish(nodes[0].addr, &names[i], "\"back\""), 202);
            let (x, y) = &mut listeners[i];
            for client in [x, y] {
                assert_eq!(next_data(client, Duration::from_secs(5)), Some(serde_json::json!("back")), "channel {i}");
            }
        }
    });
}
