//! The admin page and API (`[admin]`) on both shells: the credential, redaction, what the API
//! sees and does on one node, figures for the whole cluster with two nodes on redis-server,
//! and the page itself in headless Chromium (which takes the screenshots; with
//! `SWITCHBOARD_SCREENSHOTS=docs` it writes them to `docs/admin.png` and `docs/admin-phone.png`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::cluster::{Redis, broker_toml};
use switchboard_tests::native::{AUTH_AND_NAMESPACES, SECRET, user_token};
use switchboard_tests::pusher::{repo, run_script_with_env};
use switchboard_tests::{
    Message, NODE_ID, PubSub, Server, Settings, body, for_each_binary, header, http, recv, status,
};

const PASSWORD: &str = "admin-pw-s3cret";
const TOKEN: &str = "admin-token-s3cret";
const API_KEY: &str = "api-s3cret";
/// The page as the binary embeds it.
const PAGE: &str = include_str!("../../core/src/admin/index.html");
/// Reports travel once a second; this covers a few of them and a slow machine.
const SETTLE: Duration = Duration::from_secs(8);

/// A test server's configuration with the admin page on, JWT auth and the test namespaces.
fn config(settings: &Settings) -> String {
    let admin = format!("\n[admin]\nenabled = true\npassword = \"{PASSWORD}\"\ntoken = \"{TOKEN}\"\n");
    format!("{}{admin}{AUTH_AND_NAMESPACES}", settings.to_toml())
}

fn start(bin: &Path, settings: Settings) -> Server {
    Server::start(bin, &config(&Settings { api_key: API_KEY, ..settings }))
}

/// One admin API call; `auth` is the whole `Authorization` value. Returns the status and
/// the JSON body (every admin API answer is JSON, errors included).
fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, request_body: Option<&str>) -> (u16, Value) {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let payload = request_body.unwrap_or("");
    let request = format!(
        "{method} /admin/api/{path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let response = http(addr, &request);
    let text = body(&response);
    let value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {response}"));
    (status(&response), value)
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, value) = call(addr, "GET", path, Some(&format!("Bearer {TOKEN}")), None);
    assert_eq!(code, 200, "GET {path}: {value}");
    value
}

fn post(addr: SocketAddr, path: &str, request_body: &str) -> (u16, Value) {
    call(addr, "POST", path, Some(&format!("Bearer {TOKEN}")), Some(request_body))
}

/// Polls `GET path` until `check` holds; panics with the last answer after [`SETTLE`].
fn wait_for(addr: SocketAddr, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let value = get(addr, path);
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{path} never showed {what}; last answer: {value}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The channel's entry in `GET channels`, if listed.
fn channel(channels: &Value, name: &str) -> Option<Value> {
    channels["channels"].as_array()?.iter().find(|c| c["name"] == name).cloned()
}

/// Reads until the server closes; returns its close code.
fn closed_with(client: &mut PubSub) -> u16 {
    loop {
        match recv(&mut client.ws) {
            Message::Close(frame) => return frame.map_or(1005, |f| u16::from(f.code)),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?} while waiting for a close"),
        }
    }
}

/// The next `message` frame on `client`.
fn next_message(client: &mut PubSub) -> Value {
    loop {
        let frame = client.recv_json();
        if frame["type"] == "message" {
            return frame;
        }
    }
}

/// Subscribes and reads the answer: an `ack`, or `subscribed` on a channel with history.
fn subscribe(client: &mut PubSub, channel: &str) {
    client.send(&format!(r#"{{"op":"subscribe","channel":"{channel}","id":1}}"#));
    let reply = client.recv_json();
    assert!(matches!(reply["type"].as_str(), Some("ack" | "subscribed")) && reply["id"] == 1, "{channel}: {reply}");
}

#[test]
fn the_admin_api_needs_its_credential_and_never_shows_a_secret() {
    for_each_binary(|bin| {
        let server = start(bin, Settings::default());
        let addr = server.addr;

        // The page holds no data: it is served to anyone, and asks for the credential.
        let page = http(addr, "GET /admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&page), 200, "{page}");
        assert_eq!(header(&page, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(body(&page), PAGE, "the page is the embedded file, byte for byte");
        assert!(header(&page, "content-security-policy").is_some_and(|csp| csp.contains("default-src 'none'")));

        let endpoints = [
            ("GET", "nodes", None),
            ("GET", "channels", None),
            ("GET", "presence?channel=lobby", None),
            ("GET", "history?channel=news:today", None),
            ("GET", "connection?id=t-0-0.0", None),
            ("GET", "config", None),
            ("POST", "publish", Some(r#"{"channel":"lobby","data":1}"#)),
            ("POST", "disconnect", Some(r#"{"user":"ann"}"#)),
        ];
        let basic_token = "Basic dTphZG1pbi10b2tlbi1zM2NyZXQ="; // u:admin-token-s3cret
        for (method, path, request_body) in endpoints {
            for auth in [None, Some("Bearer wrong"), Some("Bearer admin-token-s3cre"), Some(basic_token)] {
                let (code, value) = call(addr, method, path, auth, request_body);
                assert_eq!(code, 401, "{method} {path} with {auth:?}: {value}");
                assert!(value["error"].is_string(), "{value}");
            }
        }
        // The token as a bearer, the password as a bearer (the page's form) or over Basic.
        for auth in [format!("Bearer {TOKEN}"), format!("Bearer {PASSWORD}"), "Basic dTphZG1pbi1wdy1zM2NyZXQ=".into()] {
            let (code, value) = call(addr, "GET", "nodes", Some(&auth), None);
            assert_eq!(code, 200, "{auth}: {value}");
            assert_eq!(value["nodes"][0]["id"], NODE_ID);
        }

        let (code, config) = call(addr, "GET", "config", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!(code, 200, "{config}");
        let text = config.to_string();
        for secret in [PASSWORD, TOKEN, API_KEY, SECRET] {
            assert!(!text.contains(secret), "the config view shows {secret}: {text}");
        }
        assert_eq!(config["admin"]["password"], "<redacted>");
        assert_eq!(config["admin"]["token"], "<redacted>");
        assert_eq!(config["http"]["api_key"], "<redacted>");
        assert_eq!(config["auth"]["hmac_secret"], "<redacted>");
        assert_eq!(config["server"]["workers"], 2, "the effective configuration: {config}");
        assert!(!server.stderr().contains(TOKEN) && !server.stderr().contains(PASSWORD), "a credential was logged");

        let (code, value) = call(addr, "GET", "nothing", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!((code, value["error"].is_string()), (404, true), "{value}");
        let (code, value) = call(addr, "DELETE", "nodes", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!(code, 405, "{value}");

        // Off (the default), neither the page nor the API exists.
        let plain = Server::with(bin, &Settings::default());
        for path in ["/admin", "/admin/api/nodes"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
            assert_eq!(status(&http(plain.addr, &request)), 404, "{path} is served while admin is off");
        }
    });
}

#[test]
fn the_server_refuses_to_start_an_admin_api_without_a_credential() {
    for_each_binary(|bin| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let file = dir.path().join("open.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nenabled = true\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let running = child.try_wait().is_ok_and(|s| s.is_none());
        // Only this child, by its handle, and only if it wrongly kept running.
        let _ = child.kill();
        let output = child.wait_with_output().unwrap_or_else(|e| panic!("wait: {e}"));
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!running, "the server started with an open admin API");
        assert!(!output.status.success(), "{text}");
        assert!(text.contains("admin.password") && text.contains("line 5"), "{text}");
    });
}

#[test]
fn the_admin_api_lists_publishes_and_disconnects_on_a_node() {
    for_each_binary(|bin| {
        let server = start(bin, Settings::default());
        let addr = server.addr;
        let mut ann = PubSub::connect(&server, &format!("/ws?token={}", user_token("ann")));
        let mut anon = PubSub::connect(&server, "/ws");
        subscribe(&mut ann, "lobby");
        subscribe(&mut anon, "lobby");
        subscribe(&mut anon, "news:today");

        // Either worker answers, for both: their reports meet on the in-process bus.
        let nodes = wait_for(addr, "nodes", "two connections on two workers", |n| {
            n["totals"]["connections"] == 2 && n["nodes"][0]["workers"] == 2
        });
        assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
        assert_eq!((nodes["nodes"][0]["id"].clone(), nodes["nodes"][0]["workers"].clone()), (json!(NODE_ID), json!(2)));
        assert_eq!(nodes["nodes"][0]["version"], env!("CARGO_PKG_VERSION"));
        let channels =
            wait_for(addr, "channels", "lobby with 2", |c| channel(c, "lobby").is_some_and(|l| l["subscribers"] == 2));
        assert_eq!(channel(&channels, "news:today").map(|c| c["subscribers"].clone()), Some(json!(1)), "{channels}");
        // Each worker hears the other's figures once a second: wait for the one asked too.
        let filtered =
            wait_for(addr, "channels?contains=news&min_subscribers=1", "news:today alone", |c| c["total"] == 1);
        assert_eq!(channel(&filtered, "news:today").map(|c| c["subscribers"].clone()), Some(json!(1)), "{filtered}");
        let busy = wait_for(addr, "channels?min_subscribers=2&limit=1", "lobby alone", |c| c["total"] == 1);
        assert_eq!(busy["channels"].as_array().map(Vec::len), Some(1), "{busy}");
        assert!(channel(&busy, "lobby").is_some(), "{busy}");
        let (code, value) = call(addr, "GET", "channels?limit=lots", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!(code, 400, "{value}");

        // Either worker gives a connection's details: the other asks the one holding it.
        for _ in 0..4 {
            let details = get(addr, &format!("connection?id={}", anon.conn_id));
            assert_eq!((details["route"].clone(), details["protocol"].clone()), (json!("/ws"), json!("pubsub")));
            let mut listed: Vec<&str> =
                details["channels"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            listed.sort_unstable();
            assert_eq!(listed, ["lobby", "news:today"], "{details}");
            let details = get(addr, &format!("connection?id={}", ann.conn_id));
            assert_eq!(details["user"], "ann", "{details}");
        }
        for bad in ["connection?id=nonsense", "connection?id="] {
            let (code, value) = call(addr, "GET", bad, Some(&format!("Bearer {TOKEN}")), None);
            assert_eq!((code, value["error"].is_string()), (400, true), "{bad}: {value}");
        }
        let (code, value) = call(addr, "GET", "connection?id=t-0-4000.7", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!(code, 404, "{value}");

        let (code, value) = post(addr, "publish", r#"{"channel":"lobby","data":{"from":"admin"}}"#);
        assert_eq!(code, 202, "{value}");
        assert_eq!(next_message(&mut ann)["data"], json!({"from": "admin"}));
        assert_eq!(next_message(&mut anon)["data"], json!({"from": "admin"}));
        // news keeps ten publications: the channel view lists them, newest first.
        for i in 0..3 {
            let (code, value) = post(addr, "publish", &format!(r#"{{"channel":"news:today","data":{{"n":{i}}}}}"#));
            assert_eq!(code, 202, "{value}");
        }
        let history = get(addr, "history?channel=news:today");
        assert_eq!(history["publications"][0]["data"], json!({"n": 2}), "{history}");
        assert_eq!(history["publications"].as_array().map(Vec::len), Some(3), "{history}");
        let (code, value) = call(addr, "GET", "history?channel=lobby", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!((code, value["error"].is_string()), (404, true), "lobby keeps no history: {value}");
        for bad in [r#"{"channel":"lobby""#, r#"{"channel":"no spaces","data":1}"#, r#"{"data":1}"#] {
            let (code, value) = post(addr, "publish", bad);
            assert_eq!((code, value["error"].is_string()), (400, true), "{bad}: {value}");
        }

        for bad in ["{", r#"{"who":"ann"}"#, r#"{"connection":"x"}"#, r#"{"connection":"t-0-1.0","user":"ann"}"#] {
            let (code, value) = post(addr, "disconnect", bad);
            assert_eq!((code, value["error"].is_string()), (400, true), "{bad}: {value}");
        }
        let (code, value) = post(addr, "disconnect", r#"{"connection":"elsewhere-3-1.0"}"#);
        assert_eq!(code, 404, "a node nobody knows: {value}");

        let (code, value) = post(addr, "disconnect", &json!({"connection": anon.conn_id}).to_string());
        assert_eq!(code, 202, "{value}");
        assert_eq!(closed_with(&mut anon), 1008);
        let (code, value) = post(addr, "disconnect", r#"{"user":"ann"}"#);
        assert_eq!(code, 202, "{value}");
        assert_eq!(closed_with(&mut ann), 1008);
        wait_for(addr, "nodes", "no connection left", |n| n["totals"]["connections"] == 0);
    });
}

#[test]
fn two_nodes_on_redis_answer_for_the_whole_cluster() {
    for_each_binary(|bin| {
        let Some(redis) = Redis::start() else { return };
        let node = |n: u32| {
            let settings = Settings {
                workers: 1,
                node_id: format!("n{n}"),
                broker: broker_toml(redis.port),
                ..Settings::default()
            };
            start(bin, settings)
        };
        let n1 = node(1);
        let mut n2 = Some(node(2));
        let Some(second) = n2.as_ref() else { return };
        let mut far = PubSub::connect(second, "/ws");
        subscribe(&mut far, "lobby");
        let mut near = PubSub::connect(&n1, "/ws");

        let nodes =
            wait_for(n1.addr, "nodes", "both nodes", |n| n["totals"]["nodes"] == 2 && n["totals"]["connections"] == 2);
        let ids: Vec<&str> = nodes["nodes"].as_array().into_iter().flatten().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(ids, ["n1", "n2"], "{nodes}");
        assert_eq!(nodes["this_node"], "n1");
        assert_eq!(
            (nodes["nodes"][1]["connections"].clone(), nodes["nodes"][1]["broker"].clone()),
            (json!(1), json!("closed"))
        );
        let channels = wait_for(n1.addr, "channels", "lobby on n2", |c| channel(c, "lobby").is_some());
        assert_eq!(channel(&channels, "lobby").map(|c| c["nodes"].clone()), Some(json!(["n2"])), "{channels}");

        // Asked of n1, about a client of n2: n1 asks n2 through Redis.
        let details = get(n1.addr, &format!("connection?id={}", far.conn_id));
        assert_eq!(
            (details["node"].clone(), details["channels"].clone()),
            (json!("n2"), json!(["lobby"])),
            "{details}"
        );
        // History in Redis Streams, read by n1 for a publish made on n2.
        let (code, value) = post(second.addr, "publish", r#"{"channel":"news:x","data":"kept"}"#);
        assert_eq!(code, 202, "{value}");
        // The 202 says the publish left n2, not that Redis has run it: wait for it there.
        wait_for(n1.addr, "history?channel=news:x", "the publication from n2", |h| {
            h["publications"][0]["data"] == "kept"
        });

        // Published and disconnected from n1, for a client of n2.
        let (code, value) = post(n1.addr, "publish", r#"{"channel":"lobby","data":"across"}"#);
        assert_eq!(code, 202, "{value}");
        assert_eq!(next_message(&mut far)["data"], "across");
        let (code, value) = post(n1.addr, "disconnect", &json!({"connection": far.conn_id}).to_string());
        assert_eq!((code, value["disconnected_here"].clone()), (202, json!(0)), "{value}");
        assert_eq!(closed_with(&mut far), 1008);
        wait_for(n1.addr, "nodes", "n2 without connections", |n| n["totals"]["connections"] == 1);

        // A node that stops is forgotten within a few seconds.
        drop(n2.take());
        wait_for(n1.addr, "nodes", "n1 alone", |n| n["totals"]["nodes"] == 1);
        near.send(r#"{"op":"ping","id":9}"#);
        assert_eq!(near.recv_json()["id"], 9, "n1's own client is untouched");
    });
}

#[test]
fn the_dashboard_works_in_headless_chromium() {
    let playwright = repo().join("clients/js/node_modules/playwright-core/package.json");
    assert!(playwright.exists(), "{} is missing: run scripts/js-client", playwright.display());
    assert!(Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: run scripts/chromium");
    let mut first = true;
    for_each_binary(|bin| {
        let server = start(bin, Settings::default());
        let addr = server.addr;
        let mut watcher = PubSub::connect(&server, &format!("/ws?token={}", user_token("ann")));
        subscribe(&mut watcher, "chat:lobby");
        let mut others: Vec<PubSub> = (0..5).map(|_| PubSub::connect(&server, "/ws")).collect();
        for (i, other) in others.iter_mut().enumerate() {
            subscribe(other, if i % 2 == 0 { "news:today" } else { "lobby" });
        }
        // Some traffic, so the charts have something to draw.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let data = json!({"tick": i}).to_string();
                    let payload = format!(r#"{{"channel":"lobby","data":{data}}}"#);
                    let request = format!(
                        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                        payload.len()
                    );
                    let _ = http(addr, &request);
                    i += 1;
                    thread::sleep(Duration::from_millis(30 + (i % 7) * 20));
                }
            })
        };
        let script = repo().join("tests/browser/admin.mjs");
        // The docs' pictures are rewritten only on request (SWITCHBOARD_SCREENSHOTS=docs), so
        // a test run leaves the checkout as it was; otherwise they land in a scratch directory.
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let to_docs = first && std::env::var("SWITCHBOARD_SCREENSHOTS").is_ok_and(|v| v == "docs");
        let shots = if to_docs { repo().join("docs") } else { scratch.path().to_path_buf() };
        first = false;
        let url = format!("http://{addr}/admin");
        let env = [
            ("ADMIN_URL", url.as_str()),
            ("ADMIN_PASSWORD", PASSWORD),
            ("ADMIN_NODE", NODE_ID),
            ("ADMIN_CHANNEL", "chat:lobby"),
            ("ADMIN_SHOTS", &*shots.to_string_lossy()),
        ];
        let out = run_script_with_env(Path::new("node"), &[&script.to_string_lossy()], &env);
        stop.store(true, Ordering::Relaxed);
        let _ = traffic.join();
        assert!(out.contains("admin page: ok"), "{out}");
        for picture in ["admin.png", "admin-phone.png"] {
            let size = std::fs::metadata(shots.join(picture)).map_or(0, |m| m.len());
            assert!(size > 10_000, "{picture} was not taken ({size} bytes)");
        }
        // What the page published reached the subscriber.
        assert_eq!(next_message(&mut watcher)["data"], json!({"from": "the admin page"}));
        drop(others);
    });
}
