//! What a user sees on the wire, checked against every shell binary.

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_tests::{
    Message, RawClient, Server, Settings, for_each_binary, http, op, recv, send, status, upgrade_request, ws,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn echoes_text_and_binary_on_every_worker() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        // Enough connections that both workers' listeners get some.
        let mut sockets: Vec<_> = (0..8).map(|_| ws(&server, "/echo")).collect();
        for (i, socket) in sockets.iter_mut().enumerate() {
            send(socket, Message::text(format!("hello {i}")));
            assert_eq!(recv(socket), Message::text(format!("hello {i}")));
            send(socket, Message::binary(vec![i as u8, 0, 255]));
            assert_eq!(recv(socket), Message::binary(vec![i as u8, 0, 255]));
        }
    });
}

#[test]
fn echoes_one_mebibyte() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut socket = ws(&server, "/echo");
        let binary: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        send(&mut socket, Message::binary(binary.clone()));
        assert_eq!(recv(&mut socket), Message::binary(binary));
        let text = "switchboard ".repeat((1 << 20) / 12);
        send(&mut socket, Message::text(text.clone()));
        assert_eq!(recv(&mut socket), Message::text(text));
    });
}

#[test]
fn reassembles_fragments_around_a_ping() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_frame(false, op::TEXT, "frag".as_bytes(), true);
        client.send_frame(false, op::CONTINUATION, "men".as_bytes(), true);
        client.send_frame(true, op::PING, b"mid", true);
        client.send_frame(true, op::CONTINUATION, "ted ✓".as_bytes(), true);
        let pong = client.read_frame();
        assert_eq!(pong.as_ref().map(|f| (f.opcode, f.payload.as_slice())), Some((op::PONG, &b"mid"[..])));
        let Some(echo) = client.read_frame() else { panic!("no echo") };
        assert_eq!((echo.fin, echo.opcode, echo.masked), (true, op::TEXT, false));
        assert_eq!(echo.payload, "fragmented ✓".as_bytes());
    });
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut socket = ws(&server, "/echo");
        send(&mut socket, Message::Ping(b"are you there".to_vec().into()));
        assert_eq!(recv(&mut socket), Message::Pong(b"are you there".to_vec().into()));
    });
}

#[test]
fn close_handshake_echoes_the_code_and_drops_tcp() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut socket = ws(&server, "/echo");
        let frame = CloseFrame { code: CloseCode::from(4000), reason: "bye".into() };
        socket.close(Some(frame)).unwrap_or_else(|e| panic!("close: {e}"));
        match socket.read() {
            Ok(Message::Close(Some(reply))) => assert_eq!(u16::from(reply.code), 4000),
            other => panic!("expected a close reply, got {other:?}"),
        }
        // tungstenite reports the server's TCP close as the end of the connection.
        assert!(matches!(socket.read(), Err(tungstenite::Error::ConnectionClosed)));

        let mut raw = RawClient::open(server.addr, "/echo");
        raw.send_frame(true, op::CLOSE, &1000u16.to_be_bytes(), true);
        assert_eq!(raw.expect_close(), 1000);
        assert!(raw.closed_by_server(), "server kept TCP open after the close handshake");
    });
}

#[test]
fn unknown_path_is_404() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let (_client, head) = RawClient::upgrade(server.addr, "/nowhere", &[]);
        assert_eq!(status(&head), 404, "{head}");
        let response = http(server.addr, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&response), 404, "{response}");
    });
}

#[test]
fn origin_outside_the_allowed_list_is_403() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let (_client, head) = RawClient::upgrade(server.addr, "/guarded", &["Origin: https://evil.example"]);
        assert_eq!(status(&head), 403, "{head}");
        let (_client, head) = RawClient::upgrade(server.addr, "/guarded", &["Origin: https://good.example"]);
        assert_eq!(status(&head), 101, "{head}");
        let (_client, head) = RawClient::upgrade(server.addr, "/echo", &["Origin: https://evil.example"]);
        assert_eq!(status(&head), 101, "{head}");
    });
}

#[test]
fn wrong_version_is_426_naming_13() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let request = upgrade_request("/echo", &["Sec-WebSocket-Version: 8"], &["sec-websocket-version"]);
        let response = http(server.addr, &request);
        assert_eq!(status(&response), 426, "{response}");
        assert!(response.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{response}");
        // A plain GET on a WebSocket path is told to upgrade.
        let response = http(server.addr, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&response), 426, "{response}");
    });
}

#[test]
fn missing_key_is_400() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let response = http(server.addr, &upgrade_request("/echo", &[], &["sec-websocket-key"]));
        assert_eq!(status(&response), 400, "{response}");
    });
}

#[test]
fn oversized_head_is_431() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let filler = format!("X-Filler: {}", "a".repeat(10_000));
        let response = http(server.addr, &upgrade_request("/echo", &[&filler], &[]));
        assert_eq!(status(&response), 431, "{response}");
    });
}

#[test]
fn oversized_message_is_closed_with_1009() {
    for_each_binary(|bin| {
        let settings = Settings { max_message: "64KiB", ..Settings::default() };
        let server = Server::with(bin, &settings);
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_frame(true, op::BINARY, &vec![7u8; 100 * 1024], true);
        assert_eq!(client.expect_close(), 1009);
        // The same limit holds for a message split into small fragments.
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_frame(false, op::BINARY, &[1u8; 4096], true);
        for _ in 0..40 {
            client.send_frame(false, op::CONTINUATION, &[1u8; 4096], true);
        }
        assert_eq!(client.expect_close(), 1009);
    });
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_frame(true, op::TEXT, &[b'o', b'k', 0xff, 0xfe], true);
        assert_eq!(client.expect_close(), 1007);
    });
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_frame(true, op::TEXT, b"naked", false);
        assert_eq!(client.expect_close(), 1002);
    });
}

#[test]
fn reserved_opcode_is_closed_with_1002() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        for opcode in [0x3, 0xB] {
            let mut client = RawClient::open(server.addr, "/echo");
            client.send_frame(true, opcode, b"?", true);
            assert_eq!(client.expect_close(), 1002, "opcode {opcode:#x}");
        }
    });
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    for_each_binary(|bin| {
        let settings = Settings { handshake_timeout: "300ms", ..Settings::default() };
        let server = Server::with(bin, &settings);
        let started = Instant::now();
        let mut client = RawClient::connect(server.addr);
        let head = client.read_head();
        let waited = started.elapsed();
        assert_eq!(status(&head), 408, "{head}");
        assert!(waited >= Duration::from_millis(250), "closed after only {waited:?}");
        assert!(waited < Duration::from_secs(3), "closed only after {waited:?}");
        assert!(client.closed_by_server());
    });
}

#[test]
fn healthz_answers_200() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let response = http(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&response), 200, "{response}");
        assert!(response.contains("ok"), "{response}");
    });
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    for_each_binary(|bin| {
        let mut server = Server::with(bin, &Settings::default());
        let mut sockets: Vec<_> = (0..6).map(|_| ws(&server, "/echo")).collect();
        for socket in &mut sockets {
            send(socket, Message::text("before"));
            assert_eq!(recv(socket), Message::text("before"));
        }
        server.signal("TERM");
        for socket in &mut sockets {
            match socket.read() {
                Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
                other => panic!("expected close 1001, got {other:?}"),
            }
            // Sends the close reply tungstenite queued, which lets the server finish early.
            let _ = socket.flush();
        }
        let status = server.wait_exit(Duration::from_secs(4));
        assert!(status.is_some_and(|s| s.success()), "exit status {status:?}; stderr:\n{}", server.stderr());
    });
}

#[test]
fn drain_deadline_ends_the_process_despite_a_silent_client() {
    for_each_binary(|bin| {
        let settings = Settings { drain_timeout: "500ms", ..Settings::default() };
        let mut server = Server::with(bin, &settings);
        // Never answers the close frame.
        let mut client = RawClient::open(server.addr, "/echo");
        let started = Instant::now();
        server.signal("TERM");
        assert_eq!(client.expect_close(), 1001);
        let status = server.wait_exit(Duration::from_secs(4));
        assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
        assert!(started.elapsed() >= Duration::from_millis(400), "exited after {:?}", started.elapsed());
    });
}

#[test]
fn second_signal_exits_at_once() {
    for_each_binary(|bin| {
        let settings = Settings { drain_timeout: "30s", ..Settings::default() };
        let mut server = Server::with(bin, &settings);
        let mut client = RawClient::open(server.addr, "/echo");
        server.signal("TERM");
        assert_eq!(client.expect_close(), 1001);
        server.signal("INT");
        let status = server.wait_exit(Duration::from_secs(3));
        assert!(status.is_some_and(|s| !s.success()), "exit status {status:?}");
    });
}

#[test]
fn check_and_print_config() {
    for_each_binary(|bin| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let bad = dir.path().join("bad.toml");
        let good = dir.path().join("good.toml");
        std::fs::write(&bad, "[server]\nworkers = \"four\"\n").unwrap_or_else(|e| panic!("write: {e}"));
        let settings = Settings { api_key: "api-s3cret", ..Settings::default() };
        let with_app = "\n[[pusher.app]]\nid = \"1\"\nkey = \"k\"\nsecret = \"app-s3cret\"\n";
        // Tables after `[[route]]` would belong to it: the app goes before the routes.
        let toml = settings.to_toml().replacen("[[route]]", &format!("{with_app}\n[[route]]"), 1);
        std::fs::write(&good, toml).unwrap_or_else(|e| panic!("write: {e}"));

        let run = |args: &[&str]| {
            let output = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("run: {e}"));
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            (output.status.code(), text)
        };
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();

        let (code, text) = run(&["--check-config", "--config", &path(&bad)]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("line 2, column 11") && text.contains("server.workers"), "{text}");
        let (code, text) = run(&["--check-config", "--config", &path(&good)]);
        assert_eq!(code, Some(0), "{text}");

        let (code, text) = run(&["--print-config", "--config", &path(&good), "--listen", "127.0.0.1:7777"]);
        assert_eq!(code, Some(0), "{text}");
        let printed = switchboard_core::Config::from_toml(&text);
        let Ok(printed) = printed else { panic!("printed config does not parse: {printed:?}\n{text}") };
        assert_eq!(printed.server.listen, "127.0.0.1:7777");
        // Secrets are never printed.
        assert!(!text.contains("api-s3cret") && !text.contains("app-s3cret"), "{text}");
        assert_eq!(printed.http.api_key, "<redacted>");
        assert_eq!(printed.pusher.app.len(), 1);
        let routes = switchboard_core::Config::from_toml(&Settings::default().to_toml()).map(|c| c.route.len());
        assert_eq!(Ok(printed.route.len()), routes.map_err(|e| e.to_string()));

        let (code, text) = run(&["--workers", "lots"]);
        assert_eq!(code, Some(2), "{text}");
        assert!(text.contains("--workers"), "{text}");
        let (code, text) = run(&["--version"]);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    });
}
