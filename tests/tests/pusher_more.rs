//! The next Pusher features: webhooks (every kind, signed; the grace; retries with backoff; a
//! full queue while the receiver is down; once per transition across three nodes, also when a
//! node is SIGKILLed), user authentication (`pusher.signin()`, `sendToUser` and
//! `terminateUserConnections` across nodes, `user_authentication_timeout`), watchlists and cache
//! channels. The scenarios are in `tests/node/pusher-more.mjs`; webhooks go to
//! `tests/node/webhook-receiver.mjs`, which checks every signature. Every test runs against
//! every shell binary.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::cluster::{API_KEY, LEASE_TTL, Redis, broker_toml, wait_until};
use switchboard_tests::pusher::{
    KEY, Raw, WebhookReceiver, assert_checks, closed_port, node_ready, pusher_toml_apps, python_ready, repo,
    run_node_file, run_script,
};
use switchboard_tests::{Server, Settings, body, for_each_binary, get_json, http, wait_for_stats};

/// `webhook_grace` of every test server here.
const GRACE: Duration = Duration::from_secs(1);
/// The scenarios' file in `tests/node`.
const SCRIPT: &str = "pusher-more.mjs";

/// A one-node Pusher server of `workers` with `[pusher]` lines `extra` and app lines `main`
/// (app 1001) and `quiet` (app 1002).
fn server(bin: &std::path::Path, workers: usize, extra: &str, main: &str, quiet: &str) -> Server {
    let settings = Settings { workers, pusher: pusher_toml_apps("120s", extra, main, quiet), ..Settings::default() };
    Server::with(bin, &settings)
}

/// Three nodes on `redis`, each with `extra` `[pusher]` lines and `main` lines for app 1001.
fn nodes(bin: &std::path::Path, redis: &Redis, extra: &str, main: &str) -> Vec<Server> {
    (1..=3)
        .map(|n| {
            let settings = Settings {
                workers: 1,
                api_key: API_KEY,
                node_id: format!("n{n}"),
                broker: broker_toml(redis.port),
                pusher: pusher_toml_apps("120s", extra, main, ""),
                ..Settings::default()
            };
            Server::with(bin, &settings)
        })
        .collect()
}

fn node_args(nodes: &[Server]) -> Vec<serde_json::Value> {
    nodes.iter().map(|s| json!({ "port": s.addr.port(), "pid": s.pid() })).collect()
}

fn grace_toml() -> String {
    format!("webhook_grace = \"{}ms\"\nwebhook_batch = \"0ms\"", GRACE.as_millis())
}

/// The sum of every sample of metric `name` in `/metrics` on `addr` (labelled or not); `None`
/// when there is none.
fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let samples: Vec<f64> = body(&response)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?.trim();
            (series_name == name).then(|| value.trim().parse().ok()).flatten()
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// The `webhooks` object of `/api/stats`, figure `key` (0 when absent).
fn figure(stats: &serde_json::Value, key: &str) -> u64 {
    stats["webhooks"][key].as_u64().unwrap_or(0)
}

#[test]
fn pusher_webhooks_every_kind_signed() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let receiver = WebhookReceiver::start(0);
        let main = format!(
            r#"
[[pusher.app.webhook]]
url = "{hook}"
headers = {{ "X-Test" = "yes" }}

[[pusher.app.webhook]]
url = "{filtered}"
events = ["channel_occupied"]
filter_prefix = "wh-f-"
"#,
            hook = receiver.url("/webhook"),
            filtered = receiver.url("/filtered"),
        );
        let server = server(bin, 2, &grace_toml(), &main, "");
        let args = json!({ "port": server.addr.port(), "receiver": receiver.port, "grace_ms": GRACE.as_millis() });
        let stdout = run_node_file(SCRIPT, "webhooks", &args);
        assert_checks(
            &stdout,
            &[
                "channel_occupied: {name, channel}",
                "channel_occupied request: X-Pusher-Signature is the HMAC-SHA256 of the body with the app secret",
                "channel_occupied request: the pusher SDK's webhook({headers, rawBody}).isValid() and getEvents()",
                "channel_occupied request: X-Pusher-Key is the app key",
                "channel_occupied request: Content-Type application/json",
                "channel_occupied request: time_ms is the unix time in ms",
                "the configured headers are sent (X-Test: yes)",
                "channel_vacated: {name, channel}",
                "channel_vacated waits webhook_grace",
                "member_added: {name, channel, user_id}",
                "client_event on presence: {name, channel, event, socket_id, user_id}",
                "client_event data is what the client sent",
                "client_event on a private channel: no user_id",
                "member_removed: {name, channel, user_id}",
                "member_removed waits webhook_grace",
                "a member who rejoins within the grace: no member_removed, no second member_added",
                "a channel re-occupied within the grace: no channel_vacated, no second channel_occupied",
                "then leaving for good: one channel_vacated",
                "cache_miss: {name, channel}",
                "a second webhook with filter_prefix hears its channel",
                "the filtered webhook hears only channel_occupied of channels with its prefix",
                "webhook_batch 0: one event per request",
                "every request is signed",
                "/api/stats webhooks has sent, retried, failed, dropped, queued",
                "scenario webhooks passed",
            ],
        );
    });
}

#[test]
fn pusher_webhook_retries_with_backoff() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let receiver = WebhookReceiver::start(2);
        let main = format!(
            "[[pusher.app.webhook]]\nurl = \"{}\"\nevents = [\"channel_occupied\"]\n",
            receiver.url("/webhook")
        );
        let extra = format!("{}\nwebhook_retry_for = \"30s\"", grace_toml());
        let server = server(bin, 1, &extra, &main, "");
        let (mut raw, _) = Raw::connect(server.addr, KEY);
        raw.subscribe_public("retry-room");
        let mut requests = Vec::new();
        wait_until(Duration::from_secs(15), "three attempts of channel_occupied", || {
            requests = receiver.requests_for("/webhook", "channel_occupied", "retry-room");
            requests.len() >= 3
        });
        let statuses: Vec<u64> = requests.iter().map(|r| r["status"].as_u64().unwrap_or(0)).collect();
        assert_eq!(statuses[..3], [500, 500, 200], "the receiver failed twice, then took it: {requests:?}");
        assert!(
            requests.iter().all(|r| r["valid"] == true && r["sdk"]["valid"] == true),
            "every attempt is signed: {requests:?}"
        );
        let events: Vec<&serde_json::Value> = requests.iter().map(|r| &r["body"]["events"]).collect();
        assert!(events.iter().all(|e| *e == events[0]), "every attempt carries the same events: {events:?}");
        let at: Vec<i64> = requests.iter().map(|r| r["at"].as_i64().unwrap_or(0)).collect();
        let gaps = [at[1] - at[0], at[2] - at[1]];
        assert!((800..=3000).contains(&gaps[0]), "first retry after about 1 s: {gaps:?}");
        assert!((1600..=6000).contains(&gaps[1]), "second retry after about 2 s: {gaps:?}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            receiver.requests_for("/webhook", "channel_occupied", "retry-room").len(),
            3,
            "nothing is sent again after a 200"
        );
        let stats = wait_for_stats(server.addr, 2, "webhooks.retried >= 2 and sent >= 1", |s| {
            figure(s, "retried") >= 2 && figure(s, "sent") >= 1
        });
        assert_eq!((figure(&stats, "failed"), figure(&stats, "dropped")), (0, 0), "{stats}");
        let retried = metric(server.addr, "switchboard_webhooks_retried_total");
        assert!(retried.is_some_and(|n| n >= 2.0), "switchboard_webhooks_retried_total: {retried:?}");
        let sent = metric(server.addr, "switchboard_webhooks_sent_total");
        assert!(sent.is_some_and(|n| n >= 1.0), "switchboard_webhooks_sent_total: {sent:?}");
        raw.ping();
    });
}

#[test]
fn pusher_webhook_queue_full_drops_and_server_serves() {
    for_each_binary(|bin| {
        let down = closed_port();
        let main = format!("[[pusher.app.webhook]]\nurl = \"http://127.0.0.1:{down}/webhook\"\n");
        let extra = format!("{}\nwebhook_queue = 5\nwebhook_retry_for = \"2s\"", grace_toml());
        let server = server(bin, 1, &extra, &main, "");
        let (mut raw, _) = Raw::connect(server.addr, KEY);
        let start = Instant::now();
        for i in 0..40 {
            raw.subscribe_public(&format!("flood-{i}"));
        }
        let stats = wait_for_stats(server.addr, 1, "webhooks.dropped > 0", |s| figure(s, "dropped") > 0);
        assert!(figure(&stats, "queued") <= 5, "at most webhook_queue events wait: {stats}");
        assert_eq!(figure(&stats, "sent"), 0, "nothing can be sent to a closed port: {stats}");
        // The server still serves, old and new connections alike.
        raw.ping();
        let (mut fresh, _) = Raw::connect(server.addr, KEY);
        fresh.subscribe_public("after-the-flood");
        fresh.ping();
        let _ = get_json(server.addr, "/api/stats");
        // Held events are given up once webhook_retry_for has passed.
        let stats = wait_for_stats(server.addr, 1, "webhooks.failed > 0", |s| figure(s, "failed") > 0);
        assert!(start.elapsed() >= Duration::from_secs(2), "failed before webhook_retry_for: {stats}");
        assert!(figure(&stats, "retried") > 0, "the held events were retried before failing: {stats}");
        let dropped = metric(server.addr, "switchboard_webhooks_dropped_total");
        assert!(dropped.is_some_and(|n| n > 0.0), "switchboard_webhooks_dropped_total: {dropped:?}");
        for series in ["switchboard_webhooks_failed_total", "switchboard_webhooks_queued"] {
            assert!(metric(server.addr, series).is_some(), "no {series} in /metrics");
        }
        raw.ping();
    });
}

#[test]
fn pusher_webhooks_once_per_transition_across_three_nodes() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let receiver = WebhookReceiver::start(0);
        let main = format!("[[pusher.app.webhook]]\nurl = \"{}\"\n", receiver.url("/webhook"));
        let nodes = nodes(bin, &redis, &grace_toml(), &main);
        let args = json!({
            "nodes": node_args(&nodes),
            "receiver": receiver.port,
            "grace_ms": GRACE.as_millis(),
            "lease_ms": LEASE_TTL.as_millis(),
        });
        let stdout = run_node_file(SCRIPT, "cluster-webhooks", &args);
        assert_checks(
            &stdout,
            &[
                "subscribers moving n1 -> n2 -> n3: one channel_occupied",
                "the last subscriber leaving (n3): one channel_vacated",
                "handed from n2 to n1 within the grace: nothing sent",
                "re-occupied then vacated: exactly one more of each",
                "alice on n1 and n2, bob on n3: one member_added each",
                "alice leaving n1 while on n2: no member_removed",
                "alice's last connection (n2) leaving: one member_removed",
                "webhooks for the dead node's channels come after lease and grace",
                "n2 killed with the last subscriber: exactly one channel_vacated",
                "n2 killed with dave's only connection: exactly one member_removed",
                "every request of the cluster is signed",
                "scenario cluster-webhooks passed",
            ],
        );
    });
}

#[test]
fn pusher_users_watchlists_and_cache_across_three_nodes() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let nodes = nodes(bin, &redis, "", "");
        let stdout = run_node_file(SCRIPT, "cluster-users", &json!({ "nodes": node_args(&nodes) }));
        assert_checks(
            &stdout,
            &[
                "alice signed in on n1 and n2, bob on n3",
                "sendToUser from n3 reaches alice on n1 and n2, once each",
                "bob does not get alice's event",
                "sendToUser from n1 reaches bob on n3",
                "terminateUserConnections answers 200",
                "terminateUserConnections: alice on n1: pusher:error 4009, then closed",
                "terminateUserConnections: alice on n2: pusher:error 4009, then closed",
                "bob after alice's connections were terminated: connection stays open",
                "bob still receives sendToUser after alice was terminated",
                "signin: online right away for a watched user already online (other node)",
                "watched user's first connection (n2): online",
                "a second connection of a watched user: no second online",
                "one of two connections gone: no offline",
                "watched user's last connection gone (n3): offline",
                "cache hit on n2 for an event triggered on n1",
                "cache hit on n3 for an event triggered on n1",
                "cache miss on another node",
                "scenario cluster-users passed",
            ],
        );
    });
}

#[test]
fn pusher_cache_channels_hit_and_miss() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let receiver = WebhookReceiver::start(0);
        let main =
            format!("[[pusher.app.webhook]]\nurl = \"{}\"\nevents = [\"cache_miss\"]\n", receiver.url("/webhook"));
        let server = server(bin, 2, "cache_ttl = \"2s\"", &main, "");
        let args = json!({ "port": server.addr.port(), "receiver": receiver.port, "ttl_ms": 2000 });
        let stdout = run_node_file(SCRIPT, "cache", &args);
        assert_checks(
            &stdout,
            &[
                "cache hit: a new subscriber gets the last event",
                "the cached event comes right after subscription_succeeded",
                "only the last event is kept",
                "no pusher:cache_miss on a hit",
                "live events after the cached one arrive once",
                "the cache follows the newest event",
                "private-cache-: a new subscriber gets the last client event",
                "presence-cache-: a new member gets the last event",
                "private-encrypted-cache-: the cached ciphertext decrypts",
                "cache miss: channel.bind('pusher:cache_miss') fires",
                "pusher:cache_miss comes right after subscription_succeeded",
                "cache miss: the cache_miss webhook",
                "no pusher:cache_miss on a channel without the cache- prefix",
                "a webhook with events = [cache_miss] hears nothing else",
                "after cache_ttl the event is gone: pusher:cache_miss instead",
                "scenario cache passed",
            ],
        );
    });
}

#[test]
fn pusher_signin_errors_and_user_authentication_timeout() {
    if !node_ready() {
        return;
    }
    for_each_binary(|bin| {
        let server = server(bin, 2, "user_authentication_timeout = \"1s\"", "", "user_authentication = true");
        let stdout = run_node_file(SCRIPT, "signin", &json!({ "port": server.addr.port(), "timeout_ms": 1000 }));
        assert_checks(
            &stdout,
            &[
                "pusher:signin_success data.user_data is a JSON string",
                "pusher.signin(): user_data as signed",
                "sendToUser reaches pusher.user.bind",
                "bob subscribing to #server-to-user-alice: subscription_error 403",
                "a connection not signed in subscribing to #server-to-user-alice: 403",
                "alice's events reach nobody else",
                "signin with a wrong signature: pusher:error 4009, then closed",
                "signin with a wrong signature: pusher-js does not reconnect",
                "signin with user_data without an id: pusher:error 4009, then closed",
                "signin with a numeric id: pusher:error 4009, then closed",
                "signin with an empty id: pusher:error 4009, then closed",
                "user_authentication = true: a connection that never signs in: pusher:error 4009, then closed",
                "user_authentication = true: a connection with only public channels: pusher:error 4009, then closed",
                "closed after user_authentication_timeout, not before",
                "signed in, past user_authentication_timeout: connection stays open",
                "subscribed to a private channel instead of signing in: connection stays open",
                "scenario signin passed",
            ],
        );
    });
}

#[test]
fn pusher_python_sdk_users() {
    let Some(python) = python_ready() else { return };
    let script = repo().join("scripts/pusher-python.py");
    for_each_binary(|bin| {
        let server = server(bin, 2, "", "", "");
        let stdout = run_script(&python, &[&script.to_string_lossy(), &server.addr.port().to_string(), "users"]);
        assert_checks(
            &stdout,
            &[
                "alice 1: pusher:signin_success",
                "alice 1: signin_success carries user_data",
                "send_to_user reaches alice 1",
                "send_to_user reaches alice 2",
                "send_to_user reaches bob",
                "alice 1: each note arrives once, to its user only",
                "terminate_user_connections: alice 1: pusher:error 4009",
                "terminate_user_connections: alice 1: close 4009",
                "terminate_user_connections: alice 2: close 4009",
                "bob stays connected",
                "python sdk users passed",
            ],
        );
    });
}
