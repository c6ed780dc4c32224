//! The TLS front on a simulated wire: rustls' own client on one side, the hub on the other,
//! bytes moved by hand. What the black-box tests cannot force: a sealed queue's size, and a
//! failure that must end one connection and leave the rest alone.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use switchboard_core::config::{Size, TlsVersion};
use switchboard_core::fuzzing::{MASK, client_frame, peer_addr, take_output, upgrade_request};
use switchboard_core::{Config, ConnId, Hub, Output, TlsKeys};

/// A self-signed certificate for `localhost` and its key, as PEM.
fn certificate(name: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("a valid name");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key generation");
    let cert = params.self_signed(&key).expect("self-signing");
    (cert.pem(), key.serialize_pem())
}

fn tls_config(min_version: TlsVersion) -> Config {
    let mut config = Config::default();
    config.tls.cert = "cert.pem".to_owned();
    config.tls.key = "key.pem".to_owned();
    config.tls.min_version = min_version;
    config
}

fn hub_with(config: &Config, cert: &str, key: &str) -> Hub {
    let keys = TlsKeys::from_pem(&config.tls, cert.as_bytes(), key.as_bytes()).expect("matching cert and key");
    Hub::new(config.clone(), "tls-test").expect("valid config").with_tls(keys)
}

fn client(cert_pem: &str, versions: &[Version]) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    let cert = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).expect("PEM cert");
    roots.add(cert).expect("a usable root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions the provider has")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a DNS name");
    ClientConnection::new(Arc::new(config), name).expect("client session")
}

/// Drains the hub's outputs; true when `id` was closed.
fn drain(hub: &mut Hub, id: ConnId) -> bool {
    let mut closed = false;
    loop {
        match hub.poll_output() {
            Output::Close(c) if c == id => closed = true,
            Output::Timeout(_) => return closed,
            _ => {}
        }
    }
}

/// What the client has sealed, into the hub in one read, and the hub's outputs drained
/// (nothing read back).
fn send_records(hub: &mut Hub, now: Instant, id: ConnId, client: &mut ClientConnection) {
    let mut records = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut records).expect("into a Vec");
    }
    hub.handle_bytes(now, id, &records);
    drain(hub, id);
}

/// Moves bytes both ways until neither side has any left; returns the plaintext the client
/// read.
fn pump(hub: &mut Hub, now: Instant, id: ConnId, client: &mut ClientConnection) -> Vec<u8> {
    let mut plain = Vec::new();
    for _ in 0..20 {
        let mut to_hub = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_hub).expect("into a Vec");
        }
        if !to_hub.is_empty() {
            hub.handle_bytes(now, id, &to_hub);
        }
        drain(hub, id);
        let from_hub = take_output(hub, now, id, usize::MAX);
        if to_hub.is_empty() && from_hub.is_empty() {
            break;
        }
        let mut rest = &from_hub[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).expect("client reads records");
            client.process_new_packets().expect("the server speaks TLS");
        }
        let mut buf = [0; 4096];
        while let Ok(n) = client.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&buf[..n]);
        }
    }
    plain
}

/// A client of `hub` on `/echo` over TLS `version`, trusting `cert`, upgraded.
fn open_echo(hub: &mut Hub, now: Instant, peer: u8, cert: &str, version: Version) -> (ConnId, ClientConnection) {
    let id = hub.handle_accept(now, peer_addr(peer));
    let mut client = client(cert, &[version]);
    client.writer().write_all(upgrade_request("/echo", "").as_bytes()).expect("buffered");
    let response = pump(hub, now, id, &mut client);
    assert!(response.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&response));
    (id, client)
}

/// A hub with one TLS 1.3 client upgraded on `/echo`.
fn one_client() -> (Hub, Instant, ConnId, ClientConnection) {
    let (cert, key) = certificate("one");
    let now = switchboard_testkit::origin();
    let mut hub = hub_with(&tls_config(TlsVersion::V1_2), &cert, &key);
    let (id, client) = open_echo(&mut hub, now, 1, &cert, &rustls::version::TLS13);
    (hub, now, id, client)
}

type Version = &'static rustls::SupportedProtocolVersion;

#[test]
fn wss_echo_over_tls_1_2_and_1_3() {
    let (cert, key) = certificate("one");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let now = switchboard_testkit::origin();
        let mut hub = hub_with(&tls_config(TlsVersion::V1_2), &cert, &key);
        let (id, mut client) = open_echo(&mut hub, now, 1, &cert, version);
        assert_eq!(client.protocol_version(), Some(version.version));
        assert_eq!(client.alpn_protocol(), None, "no ALPN asked, none chosen");
        client.writer().write_all(&client_frame(0x81, b"hello over tls", MASK)).expect("buffered");
        let echoed = pump(&mut hub, now, id, &mut client);
        assert_eq!(echoed, [&[0x81, 14][..], b"hello over tls"].concat());
        assert_eq!(hub.metrics().tls_handshakes, 1);
        assert_eq!(hub.metrics().queued_bytes, 0, "everything sealed was written");
    }
}

#[test]
fn min_version_1_3_refuses_a_1_2_client() {
    let (cert, key) = certificate("one");
    let now = switchboard_testkit::origin();
    let mut hub = hub_with(&tls_config(TlsVersion::V1_3), &cert, &key);
    let id = hub.handle_accept(now, peer_addr(1));
    let mut client = client(&cert, &[&rustls::version::TLS12]);
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("into a Vec");
    hub.handle_bytes(now, id, &hello);
    drain(&mut hub, id);
    let alert = take_output(&mut hub, now, id, usize::MAX);
    assert!(drain(&mut hub, id), "closed once its alert was written");
    assert_eq!(alert.first(), Some(&0x15), "an alert record");
    assert_eq!(hub.metrics().tls_failures, 1);
    assert_eq!(hub.connection_count(), 0);
}

#[test]
fn plaintext_on_the_tls_port_closes_that_connection_only() {
    let (mut hub, now, good, mut client) = one_client();
    for garbage in
        [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0], &[0; 64]]
    {
        let bad = hub.handle_accept(now, peer_addr(2));
        hub.handle_bytes(now, bad, garbage);
        drain(&mut hub, bad);
        take_output(&mut hub, now, bad, usize::MAX);
        drain(&mut hub, bad);
        hub.handle_bytes(now, bad, b"more bytes after the failure are ignored");
        drain(&mut hub, bad);
        take_output(&mut hub, now, bad, usize::MAX);
        drain(&mut hub, bad);
    }
    assert_eq!(hub.metrics().tls_failures, 3);
    assert_eq!(hub.connection_count(), 1, "the TLS client alone is left");
    client.writer().write_all(&client_frame(0x81, b"still here", MASK)).expect("buffered");
    assert_eq!(pump(&mut hub, now, good, &mut client), [&[0x81, 10][..], b"still here"].concat());
}

#[test]
fn unsent_ciphertext_counts_toward_the_send_queue() {
    let (mut hub, now, id, mut client) = one_client();
    client.writer().write_all(&client_frame(0x82, &[7; 1000], MASK)).expect("buffered");
    send_records(&mut hub, now, id, &mut client);
    // A 1,004-byte frame, sealed: one record's header, tag and content type more.
    assert_eq!(hub.queued_bytes(id), 1004 + 5 + 16 + 1);
    assert_eq!(hub.metrics().queued_bytes, 1004 + 5 + 16 + 1);
}

#[test]
fn what_one_input_queues_is_sealed_into_one_record() {
    let (mut hub, now, id, mut client) = one_client();
    for word in [&b"one"[..], b"two", b"three"] {
        client.writer().write_all(&client_frame(0x81, word, MASK)).expect("buffered");
    }
    send_records(&mut hub, now, id, &mut client);
    let sealed = take_output(&mut hub, now, id, usize::MAX);
    // One record header: three echoes (5 + 5 + 7 bytes), a content type byte and a 16-byte tag.
    assert_eq!(sealed.len(), 5 + 17 + 1 + 16, "{sealed:?}");
    assert_eq!(usize::from(u16::from_be_bytes([sealed[3], sealed[4]])), 17 + 1 + 16);
    let mut rest = &sealed[..];
    client.read_tls(&mut rest).expect("reads the record");
    client.process_new_packets().expect("it opens");
    let mut echoed = Vec::new();
    client.reader().read_to_end(&mut echoed).ok();
    assert_eq!(echoed, [&[0x81, 3][..], b"one", &[0x81, 3], b"two", &[0x81, 5], b"three"].concat());
}

#[test]
fn a_tls_client_that_does_not_read_is_a_slow_consumer() {
    let (cert, key) = certificate("one");
    let now = switchboard_testkit::origin();
    let mut config = tls_config(TlsVersion::V1_2);
    config.limits.send_queue_bytes = Size(4096);
    let mut hub = hub_with(&config, &cert, &key);
    let (id, mut client) = open_echo(&mut hub, now, 1, &cert, &rustls::version::TLS13);
    for _ in 0..10 {
        client.writer().write_all(&client_frame(0x82, &[7; 1000], MASK)).expect("buffered");
    }
    send_records(&mut hub, now, id, &mut client);
    // Four 1,004-byte echoes fit the bound while they wait to be sealed; the fifth does not.
    assert_eq!(hub.metrics().slow_consumer_closes, 1);
    let queued = hub.queued_bytes(id);
    assert!((4 * 1004..4096 + 64).contains(&queued), "{queued} bytes queued: four echoes, a close, one record");
    assert_eq!(hub.metrics().queued_bytes, queued as u64);
}

#[test]
fn new_keys_serve_new_handshakes_and_open_connections_stay() {
    let (first_cert, first_key) = certificate("first");
    let (second_cert, second_key) = certificate("second");
    let config = tls_config(TlsVersion::V1_2);
    let now = switchboard_testkit::origin();
    let mut hub = hub_with(&config, &first_cert, &first_key);
    let (old, mut old_client) = open_echo(&mut hub, now, 1, &first_cert, &rustls::version::TLS13);

    let keys = TlsKeys::from_pem(&config.tls, second_cert.as_bytes(), second_key.as_bytes()).expect("a pair");
    hub.handle_tls_keys(keys);
    let new = hub.handle_accept(now, peer_addr(2));
    // Only the second certificate is trusted: the handshake proves which one is served.
    let mut new_client = client(&second_cert, &[&rustls::version::TLS13]);
    new_client.writer().write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("buffered");
    let health = pump(&mut hub, now, new, &mut new_client);
    assert!(health.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&health));

    old_client.writer().write_all(&client_frame(0x81, b"old", MASK)).expect("buffered");
    assert_eq!(pump(&mut hub, now, old, &mut old_client), [&[0x81, 3][..], b"old"].concat());
}

#[test]
fn a_client_silent_in_its_tls_handshake_is_closed_at_the_handshake_timeout() {
    let (cert, key) = certificate("one");
    for says_hello in [false, true] {
        let now = switchboard_testkit::origin();
        let mut hub = hub_with(&tls_config(TlsVersion::V1_2), &cert, &key);
        let id = hub.handle_accept(now, peer_addr(1));
        if says_hello {
            let mut hello = Vec::new();
            client(&cert, &[&rustls::version::TLS13]).write_tls(&mut hello).expect("into a Vec");
            hub.handle_bytes(now, id, &hello);
            drain(&mut hub, id);
            assert!(!take_output(&mut hub, now, id, usize::MAX).is_empty(), "the server's flight");
        }
        assert!(!drain(&mut hub, id));
        // Past `handshake_timeout` (10 s): no 408 can be sealed yet; close_notify goes out, and
        // the connection closes as soon as it is written, not after `close_timeout`.
        let later = now + Duration::from_secs(11);
        hub.handle_timeout(later);
        drain(&mut hub, id);
        let goodbye = take_output(&mut hub, later, id, usize::MAX);
        assert!(!goodbye.is_empty() && goodbye.len() < 64, "an alert record alone: {goodbye:?}");
        assert!(drain(&mut hub, id), "closed at its handshake timeout (hello: {says_hello})");
        assert_eq!(hub.metrics().handshake_timeouts, 1);
        assert_eq!(hub.connection_count(), 0);
    }
}

#[test]
fn key_errors_name_the_file_and_never_show_the_key() {
    let (cert, key) = certificate("one");
    let (_, other_key) = certificate("two");
    let tls = tls_config(TlsVersion::V1_2).tls;
    let e = TlsKeys::from_pem(&tls, cert.as_bytes(), other_key.as_bytes()).expect_err("mismatched");
    assert_eq!(e.key, "tls.key", "{e}");
    assert!(e.message.contains("does not match"), "{e}");
    let e = TlsKeys::from_pem(&tls, b"not a certificate", key.as_bytes()).expect_err("no cert");
    assert_eq!(e.key, "tls.cert", "{e}");
    let e = TlsKeys::from_pem(&tls, cert.as_bytes(), cert.as_bytes()).expect_err("a cert is no key");
    assert_eq!(e.key, "tls.key", "{e}");
    let keys = TlsKeys::from_pem(&tls, cert.as_bytes(), key.as_bytes()).expect("a pair");
    let body = key.lines().nth(1).expect("a PEM body");
    assert!(!format!("{keys:?}").contains(body), "Debug shows no key material");
}

#[test]
fn a_tls_listener_without_keys_closes_every_connection() {
    let now = switchboard_testkit::origin();
    let mut hub = Hub::new(tls_config(TlsVersion::V1_2), "no-keys").expect("valid config");
    let id = hub.handle_accept(now, peer_addr(1));
    assert!(drain(&mut hub, id), "refused at accept, never served in plaintext");
    assert_eq!(hub.metrics().tls_failures, 1);
}
