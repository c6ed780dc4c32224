//! Every upgrade and framing rule of the core, driven with raw bytes.

mod support;

use std::time::Duration;

use support::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

const ECHO: &str = "/echo";

fn rejected(request: &str) -> u16 {
    let mut sim = Sim::new(Default::default());
    let id = sim.accept();
    sim.send(id, request.as_bytes());
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert!(sim.is_closed(id), "a rejected request closes the connection: {out}");
    status_of(&out)
}

#[test]
fn upgrade_gets_101_with_the_rfc_accept_key() {
    let mut sim = Sim::new(Default::default());
    let (_, response) = sim.connect(ECHO, "");
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
    // The RFC 6455 §1.3 example key and its accept value.
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{response}");
}

#[test]
fn upgrade_validation_statuses() {
    let base = |path: &str, drop: &str, add: &str| {
        upgrade_request(path, add)
            .lines()
            .filter(|l| drop.is_empty() || !l.starts_with(drop))
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    };
    assert_eq!(rejected(&base(ECHO, "Sec-WebSocket-Key", "")), 400, "missing key");
    assert_eq!(rejected(&base(ECHO, "Host", "")), 400, "missing host");
    assert_eq!(rejected(&base(ECHO, "Connection", "Connection: keep-alive\r\n")), 400, "no upgrade token");
    assert_eq!(rejected(&upgrade_request(ECHO, "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short")), 400, "malformed key");
    assert_eq!(rejected(&upgrade_request(ECHO, "").replace("HTTP/1.1", "HTTP/1.0")), 400, "HTTP/1.0");
    assert_eq!(rejected(&upgrade_request(ECHO, "").replace("GET", "POST")), 405, "POST");
    assert_eq!(rejected(&upgrade_request("/nowhere", "")), 404, "unknown route");
    assert_eq!(rejected("NOT HTTP AT ALL\r\n\r\n"), 400, "garbage");
}

#[test]
fn other_versions_get_426_naming_version_13() {
    let mut sim = Sim::new(Default::default());
    let id = sim.accept();
    sim.send(id, upgrade_request(ECHO, "").replace("Version: 13", "Version: 8").as_bytes());
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert_eq!(status_of(&out), 426);
    assert!(out.contains("Sec-WebSocket-Version: 13\r\n"), "{out}");
}

#[test]
fn oversized_head_gets_431() {
    let padding = format!("X-Pad: {}\r\n", "a".repeat(9000));
    assert_eq!(rejected(&upgrade_request(ECHO, &padding)), 431);
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(rejected(&upgrade_request(ECHO, &many)), 431);
}

#[test]
fn origin_allowlist_gives_403() {
    let config = r#"
        [[route]]
        path = "/echo"
        mode = "echo"
        allowed_origins = ["https://good.example"]
    "#;
    let mut sim = Sim::with_toml(config);
    let (_, response) = sim.connect(ECHO, "Origin: https://evil.example\r\n");
    assert_eq!(status_of(&response), 403);
    let (_, response) = sim.connect(ECHO, "Origin: https://good.example\r\n");
    assert_eq!(status_of(&response), 101);
}

#[test]
fn subprotocol_is_the_servers_first_choice_the_client_offered() {
    let config = r#"
        [[route]]
        path = "/echo"
        mode = "echo"
        subprotocols = ["v2.switchboard", "v1.switchboard"]
    "#;
    let mut sim = Sim::with_toml(config);
    let (_, response) = sim.connect(ECHO, "Sec-WebSocket-Protocol: v1.switchboard, v2.switchboard\r\n");
    assert!(response.contains("Sec-WebSocket-Protocol: v2.switchboard\r\n"), "{response}");
    let (_, response) = sim.connect(ECHO, "Sec-WebSocket-Protocol: other\r\n");
    assert!(!response.contains("Sec-WebSocket-Protocol"), "{response}");
}

#[test]
fn plain_http_is_answered_by_the_core() {
    let mut sim = Sim::new(Default::default());
    let id = sim.accept();
    sim.send(id, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert_eq!(status_of(&out), 200, "{out}");
    // Plain HTTP keeps the connection alive unless the client says otherwise.
    assert!(!sim.is_closed(id), "HTTP/1.1 keeps the connection alive: {out}");
    assert_eq!(rejected("GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 404);
    assert_eq!(rejected("DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 405);
}

#[test]
fn handshake_timeout_closes_a_silent_client() {
    let mut sim = Sim::with_toml("[server]\nhandshake_timeout = \"2s\"\n");
    let id = sim.accept();
    sim.send(id, b"GET /echo HTTP/1.1\r\n");
    sim.advance(Duration::from_millis(1999));
    assert!(!sim.is_closed(id), "closed before the timeout");
    sim.advance(Duration::from_millis(1));
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert_eq!(status_of(&out), 408, "{out}");
    assert!(sim.is_closed(id));
    assert_eq!(sim.hub.metrics().handshake_timeouts, 1);
}

#[test]
fn echo_text_binary_and_fragments() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.send(id, &text("hello"));
    sim.send(id, &client_frame(0x82, &[0, 1, 2, 255], true));
    // "héllo" split inside the two-byte é, plus a ping between fragments.
    let word = "héllo".as_bytes();
    sim.send(id, &client_frame(0x01, &word[..2], true));
    sim.send(id, &client_frame(0x89, b"p", true));
    sim.send(id, &client_frame(0x80, &word[2..], true));
    let frames = server_frames(&sim.take_output(id));
    let got: Vec<(OpCode, Vec<u8>)> = frames.into_iter().map(|(h, p)| (h.opcode, p)).collect();
    assert_eq!(
        got,
        vec![
            (OpCode::Data(Data::Text), b"hello".to_vec()),
            (OpCode::Data(Data::Binary), vec![0, 1, 2, 255]),
            (OpCode::Control(Control::Pong), b"p".to_vec()),
            (OpCode::Data(Data::Text), word.to_vec()),
        ]
    );
}

#[test]
fn close_handshake_echoes_the_code_and_server_closes_tcp() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.send(id, &close_frame(4001, "bye"));
    let out = sim.take_output(id);
    assert_eq!(close_code(&out), Some(4001));
    assert!(sim.is_closed(id));
    assert_eq!(sim.hub.connection_count(), 0);
}

#[test]
fn empty_close_gets_empty_close() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.send(id, &client_frame(0x88, &[], true));
    let frames = server_frames(&sim.take_output(id));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.opcode, OpCode::Control(Control::Close));
    assert!(frames[0].1.is_empty());
    assert!(sim.is_closed(id));
}

/// Sends `bytes` on a fresh echo connection and returns the close code the server sent.
fn violation_code(config: &str, bytes: &[u8]) -> Option<u16> {
    let mut sim = Sim::with_toml(config);
    let id = sim.open(ECHO);
    sim.send(id, bytes);
    let out = sim.take_output(id);
    let code = close_code(&out);
    // The server waits for the peer's close; answering it ends the connection.
    sim.send(id, &close_frame(1000, ""));
    sim.take_output(id);
    assert!(sim.is_closed(id), "connection ends after the closing handshake");
    code
}

#[test]
fn frame_rules_map_to_close_codes() {
    let cases: &[(&str, Vec<u8>, u16)] = &[
        ("unmasked frame", client_frame(0x81, b"hi", false), 1002),
        ("RSV1 without deflate", client_frame(0xC1, b"hi", true), 1002),
        ("RSV2", client_frame(0xA1, b"hi", true), 1002),
        ("RSV3", client_frame(0x91, b"hi", true), 1002),
        ("reserved data opcode", client_frame(0x83, b"hi", true), 1002),
        ("reserved control opcode", client_frame(0x8B, b"", true), 1002),
        ("control payload over 125", client_frame(0x89, &[0; 126], true), 1002),
        ("fragmented ping", client_frame(0x09, b"x", true), 1002),
        ("continuation first", client_frame(0x80, b"x", true), 1002),
        ("new message mid-message", [client_frame(0x01, b"a", true), client_frame(0x81, b"b", true)].concat(), 1002),
        ("bad UTF-8", client_frame(0x81, &[0xce, 0xba, 0xff], true), 1007),
        ("truncated UTF-8 at end", client_frame(0x81, &[0xce], true), 1007),
        ("close with one byte", client_frame(0x88, &[3], true), 1002),
        ("close code 1005", close_frame(1005, ""), 1002),
        ("close code 999", close_frame(999, ""), 1002),
        ("close reason bad UTF-8", [client_frame(0x88, &[0x03, 0xe8, 0xff], true)].concat(), 1007),
    ];
    for (name, bytes, code) in cases {
        assert_eq!(violation_code("", bytes), Some(*code), "{name}");
    }
}

#[test]
fn size_limits_give_1009_before_allocating() {
    let config = "[limits]\nmax_frame_bytes = 1024\nmax_message_bytes = 2048\n";
    // The header alone announces 1 GiB; the server must not wait for (or buffer) the payload.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
    huge.extend_from_slice(&MASK);
    let mut sim = Sim::with_toml(config);
    let id = sim.open(ECHO);
    sim.send(id, &huge);
    assert_eq!(close_code(&sim.take_output(id)), Some(1009), "frame over max_frame_bytes");
    let fragments = [
        client_frame(0x02, &[1; 1000], true),
        client_frame(0x00, &[1; 1000], true),
        client_frame(0x80, &[1; 1000], true),
    ]
    .concat();
    assert_eq!(violation_code(config, &fragments), Some(1009), "message over max_message_bytes");
}

#[test]
fn bad_utf8_fails_fast_before_the_message_ends() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.send(id, &client_frame(0x01, &[b'a', 0xff], true));
    assert_eq!(close_code(&sim.take_output(id)), Some(1007), "fails on the first fragment");
}

#[test]
fn frames_after_a_violation_are_skipped_until_the_peer_closes() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    let stream = [client_frame(0x81, b"ok", false), text("ignored"), close_frame(1000, "")].concat();
    sim.send(id, &stream);
    let frames = server_frames(&sim.take_output(id));
    assert_eq!(frames.len(), 1, "only our close frame: {frames:?}");
    assert!(sim.is_closed(id));
}

#[test]
fn close_timeout_drops_a_peer_that_never_answers() {
    let mut sim = Sim::with_toml("[server]\nclose_timeout = \"3s\"\n");
    let id = sim.open(ECHO);
    sim.send(id, &client_frame(0x81, b"x", false));
    assert_eq!(close_code(&sim.take_output(id)), Some(1002));
    sim.advance(Duration::from_millis(2999));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(id));
}

#[test]
fn eof_forgets_the_connection() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.hub.handle_eof(sim.now, id);
    sim.pump();
    assert!(sim.is_closed(id));
    assert_eq!(sim.hub.connection_count(), 0);
    // A stale id is ignored.
    sim.send(id, &text("late"));
    assert!(sim.take_output(id).is_empty());
}

#[test]
fn permessage_deflate_round_trip() {
    let mut sim = Sim::with_toml("[compression]\nmin_bytes = 0\n");
    let (id, response) = sim.connect(ECHO, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    assert!(response.contains("Sec-WebSocket-Extensions: permessage-deflate"), "{response}");
    assert!(response.contains("server_no_context_takeover"), "{response}");
    let message = "switchboard ".repeat(50);
    let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
    let mut compressed = Vec::with_capacity(message.len() + 64);
    compressor.compress_vec(message.as_bytes(), &mut compressed, flate2::FlushCompress::Sync).expect("compress");
    assert!(compressed.ends_with(&[0, 0, 0xff, 0xff]));
    compressed.truncate(compressed.len() - 4);
    sim.send(id, &client_frame(0xC1, &compressed, true));
    let frames = server_frames(&sim.take_output(id));
    assert_eq!(frames.len(), 1);
    assert!(frames[0].0.rsv1, "reply is compressed");
    let mut inflater = flate2::Decompress::new(false);
    let mut payload = frames[0].1.clone();
    payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut plain = Vec::with_capacity(message.len() + 64);
    inflater.decompress_vec(&payload, &mut plain, flate2::FlushDecompress::Sync).expect("inflate");
    assert_eq!(plain, message.as_bytes());
}

#[test]
fn deflate_bomb_gets_1009() {
    let config = "[limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n";
    let mut sim = Sim::with_toml(config);
    let (id, _) = sim.connect(ECHO, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    let zeros = vec![0u8; 8 << 20];
    let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
    let mut bomb = Vec::with_capacity(64 << 10);
    compressor.compress_vec(&zeros, &mut bomb, flate2::FlushCompress::Sync).expect("compress");
    assert!(bomb.len() < 65536, "the bomb itself is small: {}", bomb.len());
    sim.send(id, &client_frame(0xC2, &bomb, true));
    assert_eq!(close_code(&sim.take_output(id)), Some(1009));
}

#[test]
fn idle_connection_holds_no_buffers() {
    let mut sim = Sim::new(Default::default());
    let id = sim.open(ECHO);
    sim.send(id, &text("x"));
    sim.take_output(id);
    assert_eq!(sim.hub.queued_bytes(id), 0);
    assert!(!sim.hub.wants_write(id));
}
