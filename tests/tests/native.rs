//! The native protocol's tokens, namespaces and history on both shells, over real sockets:
//! what a client sees for good and bad tokens, the namespace rules, and a client that drops
//! and comes back on another worker recovering exactly what it missed.

use std::process::Command;

use serde_json::{Value, json};
use switchboard_tests::native::{API_KEY, CONFIG, token, token_signed, unix_now, user_token};
use switchboard_tests::{Message, PubSub, Server, for_each_binary, http, recv_data, status, ws};

/// Publishes `data` on `channel` through `POST /api/publish`.
fn api_publish(server: &Server, channel: &str, data: &Value) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = http(server.addr, &request);
    assert_eq!(status(&response), 202, "{response}");
}

/// The close code a client gets right after opening `path`.
fn refused_with(server: &Server, path: &str) -> u16 {
    let mut socket = ws(server, path);
    match recv_data(&mut socket) {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close, got {other:?}"),
    }
}

fn next_of_type(client: &mut PubSub, kind: &str) -> Value {
    loop {
        let frame = client.recv_json();
        if frame["type"] == kind {
            return frame;
        }
        assert_ne!(frame["type"], "error", "waiting for {kind}: {frame}");
    }
}

#[test]
fn tokens_open_or_close_the_door() {
    for_each_binary(|bin| {
        let server = Server::start(bin, CONFIG);
        let expired = token(&json!({"sub": "ann", "exp": unix_now() - 600}));
        let forged = token_signed("not-the-secret", &json!({"sub": "ann"}));
        assert_eq!(refused_with(&server, &format!("/ws?token={expired}")), 4401, "expired: fetch a new one");
        assert_eq!(refused_with(&server, &format!("/ws?token={forged}")), 4403, "forged: do not retry");
        assert_eq!(refused_with(&server, "/ws?token=not.a.jwt"), 4403);

        let mut ws = ws(&server, &format!("/ws?token={}", user_token("ann")));
        let Message::Text(welcome) = recv_data(&mut ws) else { panic!("no welcome") };
        let welcome: Value = serde_json::from_str(welcome.as_str()).expect("JSON welcome");
        assert_eq!(welcome["user"], "ann");

        let mut anon = PubSub::connect(&server, "/ws");
        anon.send(r#"{"op":"subscribe","channel":"chat:a","id":1}"#);
        assert_eq!(next_of_type(&mut anon, "error")["code"], "not_authenticated");
        anon.send(&json!({"op":"connect","token": user_token("bob"),"id":2}).to_string());
        assert_eq!(next_of_type(&mut anon, "connected")["user"], "bob");
        anon.send(r#"{"op":"subscribe","channel":"secret:x","id":3}"#);
        assert_eq!(next_of_type(&mut anon, "error")["code"], "bad_token");
        let sub = token(&json!({"sub": "bob", "channel": "secret:x", "exp": unix_now() + 60}));
        anon.send(&json!({"op":"subscribe","channel":"secret:x","token": sub,"id":4}).to_string());
        assert_eq!(next_of_type(&mut anon, "ack")["id"], 4);

        // Three refused connection tokens and one refused subscription token, on any worker.
        switchboard_tests::wait_for_stats(server.addr, 4, "four auth failures", |s| s["auth_failures"] == 4);
    });
}

#[test]
fn a_client_recovers_on_another_worker_exactly_what_it_missed() {
    for_each_binary(|bin| {
        let server = Server::start(bin, &format!("[server]\nworkers = 2\n{CONFIG}"));
        let path = format!("/ws?token={}", user_token("ann"));
        let mut first = PubSub::connect_on_worker(&server, &path, 0);
        first.send(r#"{"op":"subscribe","channel":"chat:r","id":1}"#);
        let subscribed = next_of_type(&mut first, "subscribed");
        let epoch = subscribed["epoch"].as_str().expect("an epoch").to_owned();
        let mut last = subscribed["offset"].as_u64().expect("an offset");
        for n in 0..3 {
            api_publish(&server, "chat:r", &json!({"n": n}));
        }
        for _ in 0..3 {
            let message = next_of_type(&mut first, "message");
            assert_eq!(message["offset"], last + 1, "{message}");
            last += 1;
        }
        switchboard_tests::close_and_wait(first.ws);

        // Missed while away: published from both workers (the API lands on either).
        let mut other = PubSub::connect_on_worker(&server, &format!("/ws?token={}", user_token("bob")), 0);
        other.send(r#"{"op":"subscribe","channel":"chat:r","id":1}"#);
        next_of_type(&mut other, "subscribed");
        for n in 3..8 {
            api_publish(&server, "chat:r", &json!({"n": n}));
        }
        other.send(r#"{"op":"publish","channel":"chat:r","data":{"n":8},"id":2}"#);
        next_of_type(&mut other, "ack");

        let mut back = PubSub::connect_on_worker(&server, &path, 1);
        back.send(
            &json!({"op":"subscribe","channel":"chat:r","id":3,"recover":{"epoch": epoch,"offset": last}}).to_string(),
        );
        let reply = next_of_type(&mut back, "subscribed");
        assert_eq!(reply["recovered"], true, "{reply}");
        let recovered: Vec<u64> = reply["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(recovered, (last + 1..=last + 6).collect::<Vec<_>>(), "{reply}");
        assert_eq!(reply["publications"][5]["data"], json!({"n": 8}));
        api_publish(&server, "chat:r", &json!({"n": 9}));
        assert_eq!(next_of_type(&mut back, "message")["offset"], last + 7, "live continues right after");

        // A client from another epoch is told it cannot recover.
        let mut stale = PubSub::connect(&server, &path);
        stale.send(
            &json!({"op":"subscribe","channel":"chat:r","id":4,"recover":{"epoch":"0000","offset":1}}).to_string(),
        );
        let reply = next_of_type(&mut stale, "subscribed");
        assert_eq!((reply["recovered"].clone(), reply["publications"].clone()), (json!(false), json!([])));
    });
}

#[test]
fn check_config_names_bad_key_files_and_namespace_rules() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bad_key = dir.path().join("bad.pem");
    std::fs::write(&bad_key, "not a key").expect("write");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (format!("[auth]\npublic_keys = [{:?}]\n", bad_key.display().to_string()), "auth.public_keys[0]"),
        (format!("[auth]\npublic_keys = [{:?}]\n", missing.display().to_string()), "auth.public_keys[0]"),
        ("[[namespace]]\nname = \"c\"\nsubscribe = \"token\"\n".to_owned(), "namespace[0].subscribe"),
        ("[[namespace]]\nname = \"c\"\nrecover = true\n".to_owned(), "namespace[0].recover"),
    ];
    for bin in switchboard_tests::binaries() {
        for (config, key) in &cases {
            let file = dir.path().join("config.toml");
            std::fs::write(&file, config).expect("write");
            let out = Command::new(&bin).arg("--check-config").arg("--config").arg(&file).output().expect("runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{config} passed");
            assert!(stderr.contains(key), "{key} not named: {stderr}");
        }
    }
}

#[test]
fn presence_lists_the_members_on_every_worker() {
    for_each_binary(|bin| {
        let server = Server::start(bin, &format!("[server]\nworkers = 2\n{CONFIG}"));
        let mut ann = PubSub::connect_on_worker(&server, &format!("/ws?token={}", user_token("ann")), 0);
        let mut ben = PubSub::connect_on_worker(&server, &format!("/ws?token={}", user_token("ben")), 1);
        ann.send(r#"{"op":"subscribe","channel":"chat:p","id":1,"presence":{"n":1}}"#);
        next_of_type(&mut ann, "subscribed");
        ben.send(r#"{"op":"subscribe","channel":"chat:p","id":1}"#);
        next_of_type(&mut ben, "subscribed");
        for client in [&mut ann, &mut ben] {
            client.send(r#"{"op":"presence","channel":"chat:p","id":2}"#);
            let reply = next_of_type(client, "presence");
            let mut users: Vec<&str> =
                reply["members"].as_array().expect("members").iter().filter_map(|m| m["user"].as_str()).collect();
            users.sort_unstable();
            assert_eq!(users, ["ann", "ben"], "{reply}");
        }
        switchboard_tests::close_and_wait(ben.ws);
        ann.send(r#"{"op":"presence","channel":"chat:p","id":3}"#);
        let reply = next_of_type(&mut ann, "presence");
        assert_eq!(reply["members"].as_array().map(Vec::len), Some(1), "{reply}");
    });
}
