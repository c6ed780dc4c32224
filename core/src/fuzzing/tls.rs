//! The TLS front's target: arbitrary bytes into a TLS connection, either raw (ciphertext as a
//! socket would bring it) or sealed by a real client after a real handshake (plaintext under
//! TLS, reaching the HTTP and WebSocket layer). Neither may panic; the raw bytes never complete
//! a handshake; what the server seals always opens on the client; nothing is left behind.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::Choices;
use super::rig::Rig;
use crate::config::{Config, TlsVersion};
use crate::hub::ConnId;
use crate::tls::TlsKeys;

/// What the TLS target builds once: the server's keys and a client that trusts them.
#[derive(Debug, Clone)]
pub struct TlsFixture {
    keys: TlsKeys,
    client: Arc<ClientConfig>,
}

impl TlsFixture {
    /// From a PEM certificate for `localhost` and its PEM key; the caller makes them (the core
    /// makes no certificate, and none is committed).
    pub fn new(cert_pem: &str, key_pem: &str) -> Self {
        let keys = TlsKeys::from_pem(&Config::default().tls, cert_pem.as_bytes(), key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("the fixture's certificate and key: {e}"));
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap_or_else(|e| panic!("fixture cert: {e}"));
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap_or_else(|e| panic!("fixture root: {e}"));
        let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("client versions: {e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self { keys, client: Arc::new(client) }
    }
}

/// Input: a flags byte (bit 0: `min_version = "1.3"`; bit 1: through a real client; bit 2:
/// three seconds pass after each piece), a split count, then the bytes, cut at the given points.
pub fn tls(t0: Instant, data: &[u8], fixture: &TlsFixture) {
    let mut input = Choices::new(data);
    let flags = input.byte();
    let mut config = Config::default();
    config.tls.cert = "fuzz-cert.pem".to_owned();
    config.tls.key = "fuzz-key.pem".to_owned();
    config.tls.min_version = if flags & 1 == 0 { TlsVersion::V1_2 } else { TlsVersion::V1_3 };
    let splits = usize::from(input.byte() % 8);
    let mut points: Vec<usize> = (0..splits).map(|_| usize::from(input.u16())).collect();
    let bytes = input.rest();
    points.sort_unstable();
    let pieces = pieces(bytes, &points);

    let mut rig = Rig::new(config, t0);
    rig.hub.handle_tls_keys(fixture.keys.clone());
    let id = rig.accept(1);
    if flags & 2 == 0 {
        for piece in pieces {
            rig.send(id, piece);
            rig.read_all(id);
            if flags & 4 != 0 {
                rig.advance(Duration::from_secs(3));
            }
        }
        assert_eq!(rig.hub.metrics().tls_handshakes, 0, "raw bytes completed a TLS handshake");
    } else {
        let mut client = handshake(&mut rig, id, fixture);
        for piece in pieces {
            if rig.is_closed(id) {
                break;
            }
            client.writer().write_all(piece).unwrap_or_else(|e| panic!("client buffers plaintext: {e}"));
            exchange(&mut rig, id, &mut client);
            if flags & 4 != 0 {
                rig.advance(Duration::from_secs(3));
            }
        }
    }
    if !rig.is_closed(id) {
        rig.eof(id);
    }
    rig.assert_empty();
}

/// `bytes` cut at `points` (sorted; past the end they cut nothing).
fn pieces<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut start = 0;
    let mut out = Vec::new();
    for &point in points.iter().chain([&bytes.len()]) {
        let end = point.clamp(start, bytes.len());
        out.push(&bytes[start..end]);
        start = end;
    }
    out
}

/// A real client's handshake with the hub; it must succeed.
fn handshake(rig: &mut Rig, id: ConnId, fixture: &TlsFixture) -> ClientConnection {
    let name = ServerName::try_from("localhost").unwrap_or_else(|e| panic!("server name: {e}"));
    let mut client =
        ClientConnection::new(Arc::clone(&fixture.client), name).unwrap_or_else(|e| panic!("client session: {e}"));
    for _ in 0..8 {
        if !client.is_handshaking() {
            break;
        }
        exchange(rig, id, &mut client);
    }
    // The client is done first: its Finished still has to reach the server.
    exchange(rig, id, &mut client);
    assert!(!client.is_handshaking() && !rig.is_closed(id), "a real client's handshake failed");
    assert_eq!(rig.hub.metrics().tls_handshakes, 1);
    client
}

/// One round trip: what the client has goes to the hub, what the hub queued comes back and
/// must open (the server never seals what its client cannot read).
fn exchange(rig: &mut Rig, id: ConnId, client: &mut ClientConnection) {
    let mut sealed = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut sealed).unwrap_or_else(|e| panic!("client seals into a Vec: {e}"));
    }
    rig.send(id, &sealed);
    let answer = rig.read_all(id);
    let mut rest = &answer[..];
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap_or_else(|e| panic!("client reads the server's records: {e}"));
        let state = client.process_new_packets().unwrap_or_else(|e| panic!("the server's records do not open: {e}"));
        let mut plain = vec![0; state.plaintext_bytes_to_read()];
        client.reader().read_exact(&mut plain).unwrap_or_else(|e| panic!("reading what opened: {e}"));
    }
}
