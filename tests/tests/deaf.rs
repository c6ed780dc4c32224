//! A node whose Redis subscription goes silent while every command still succeeds (a proxy
//! that stops forwarding, as a failover can) says so within `broker.probe_timeout`, on both
//! shells: `/healthz` degraded with `"broker":"deaf"`, the metric, and then it subscribes
//! again on its own and delivery resumes.

use std::time::Duration;

use switchboard_tests::cluster::{API_KEY, Blackhole, Redis, api_publish, healthz, metric, wait_until};
use switchboard_tests::{PubSub, Server, Settings, for_each_binary};

/// `[broker]` through `port` with fast probes.
fn broker(port: u16) -> String {
    format!(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nlease_ttl = \"2s\"\nprobe_interval = \"200ms\"\n\
         probe_timeout = \"1s\"\n\n[broker.backoff]\nmin = \"50ms\"\nmax = \"200ms\"\n"
    )
}

fn node(bin: &std::path::Path, port: u16, n: usize) -> Server {
    let settings = Settings {
        workers: 1,
        api_key: API_KEY,
        node_id: format!("d{n}"),
        broker: broker(port),
        ..Settings::default()
    };
    Server::with(bin, &settings)
}

#[test]
fn a_node_that_stops_hearing_redis_says_so_and_resubscribes() {
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let proxy = Blackhole::start(redis.port);
        let publisher = node(bin, redis.port, 1);
        let listener = node(bin, proxy.port, 2);
        let mut client = PubSub::connect(&listener, "/ws");
        client.expect_ack(r#"{"op":"subscribe","channel":"d","id":1}"#, 1);
        redis.wait_subscribed("d", 1, Duration::from_secs(5));
        // Delivery works, and a probe has come back (healthz ok).
        assert_eq!(api_publish(publisher.addr, "d", "\"before\""), 202);
        assert_eq!(client.recv_json()["data"], "before");
        wait_until(Duration::from_secs(5), "the listener is healthy", || healthz(listener.addr).1["status"] == "ok");

        proxy.mute();
        let took = wait_until(Duration::from_secs(5), "the listener reports itself deaf", || {
            healthz(listener.addr).1 == serde_json::json!({"status": "degraded", "broker": "deaf"})
        });
        eprintln!("deaf reported {took:?} after the subscription went silent (probe timeout 1 s)");
        assert!(took <= Duration::from_millis(2500), "{took:?}");
        assert!(metric(listener.addr, "switchboard_broker_probe_failures_total").is_some_and(|n| n >= 1.0));

        // It subscribes again on a new connection (which the proxy passes): delivery resumes.
        wait_until(Duration::from_secs(5), "the listener hears again", || healthz(listener.addr).1["status"] == "ok");
        redis.wait_subscribed("d", 1, Duration::from_secs(5));
        assert_eq!(api_publish(publisher.addr, "d", "\"after\""), 202);
        assert_eq!(client.recv_json()["data"], "after");
    });
}
