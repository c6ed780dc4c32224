//! `tls_scale`: what TLS costs the core alone, beside plain TCP, with real rustls clients on a
//! simulated wire (their own work is not timed, and their memory is freed before the heap is
//! read). Prints, for plain and TLS: heap bytes per idle upgraded connection, the time to
//! broadcast one 64-byte message to `subscribers` connections and hand every byte to the
//! socket (framed once; on TLS sealed per connection), and handshakes (TLS and upgrade) per
//! second of the hub's own time.
//!
//! `cargo run --release -p switchboard-bench --bin tls_scale -- [connections] [subscribers] [rounds]`

use std::io::{IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use switchboard_bench::Counting;
use switchboard_core::{Config, ConnId, Hub, Output, TlsKeys};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// One side of the comparison: a hub, and for TLS the client config that trusts it.
struct Setup {
    hub: Hub,
    client: Option<Arc<ClientConfig>>,
    /// Time spent inside the hub while connections were opened.
    hub_time: Duration,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(19_500);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(21);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    // What rustls' buffered API keeps per connection, for reading the heap figure.
    println!("size_of::<rustls::ServerConnection>() = {}", size_of::<rustls::ServerConnection>());
    for tls in [false, true] {
        let name = if tls { "tls" } else { "plain" };
        let (mut setup, held) = idle(connections, tls, &cert, &key);
        let per_second = connections as f64 / setup.hub_time.as_secs_f64();
        println!("{name}: heap bytes per idle connection at {connections}: {:.0}", held as f64 / connections as f64);
        println!("{name}: handshakes per second of hub time: {per_second:.0}");
        drop(setup.hub);
        setup = open(subscribers, tls, &cert, &key).0;
        let median = broadcast(&mut setup.hub, subscribers, rounds);
        println!("{name}: broadcast 64 B to {subscribers} and write it all: median {median:.2?} over {rounds} rounds");
    }
}

/// `connections` upgraded connections, their clients dropped: the heap the hub holds for them.
fn idle(connections: usize, tls: bool, cert: &str, key: &str) -> (Setup, usize) {
    let before = Counting::live();
    let (setup, clients) = open(connections, tls, cert, key);
    drop(clients);
    (setup, Counting::live() - before)
}

/// A hub on `/chat` with `connections` upgraded clients (kept, for TLS, so they could read).
fn open(connections: usize, tls: bool, cert: &str, key: &str) -> (Setup, Vec<Option<ClientConnection>>) {
    let mut config = Config::from_toml(&format!(
        "[limits]\nmax_connections = {connections}\nmax_handshaking = {connections}\n\
         send_queue_bytes = \"1MiB\"\n[[route]]\npath = \"/chat\"\nmode = \"broadcast\"\n"
    ))
    .expect("benchmark config is valid");
    let mut client = None;
    if tls {
        config.tls.cert = "cert.pem".to_owned();
        config.tls.key = "key.pem".to_owned();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM certificate");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("a usable root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client = Some(Arc::new(config));
    }
    let mut hub = Hub::new(config.clone(), "bench").expect("valid config");
    if tls {
        hub = hub.with_tls(TlsKeys::from_pem(&config.tls, cert.as_bytes(), key.as_bytes()).expect("a pair"));
    }
    let mut setup = Setup { hub, client, hub_time: Duration::ZERO };
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(connections);
    for n in 0..connections {
        let peer = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000));
        let started = Instant::now();
        let id = setup.hub.handle_accept(t0, peer);
        setup.hub_time += started.elapsed();
        clients.push(connect(&mut setup, t0, id));
    }
    (setup, clients)
}

/// Upgrades connection `id`, through a TLS client when the setup has one.
fn connect(setup: &mut Setup, now: Instant, id: ConnId) -> Option<ClientConnection> {
    let Some(config) = setup.client.clone() else {
        let started = Instant::now();
        setup.hub.handle_bytes(now, id, REQUEST);
        written(&mut setup.hub, now, id);
        setup.hub_time += started.elapsed();
        return None;
    };
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut client = ClientConnection::new(config, name).expect("client session");
    client.writer().write_all(REQUEST).expect("buffered until the handshake is done");
    for _ in 0..6 {
        let mut sealed = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut sealed).expect("into a Vec");
        }
        let started = Instant::now();
        if !sealed.is_empty() {
            setup.hub.handle_bytes(now, id, &sealed);
        }
        let answer = written(&mut setup.hub, now, id);
        setup.hub_time += started.elapsed();
        let mut rest = &answer[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).expect("the hub's records");
            client.process_new_packets().expect("the hub speaks TLS");
        }
        let mut plain = Vec::new();
        let _ = client.reader().read_to_end(&mut plain);
        if plain.starts_with(b"HTTP/1.1 101") {
            return Some(client);
        }
    }
    panic!("connection {id:?} did not upgrade over TLS");
}

/// Everything queued for `id`, as a socket that takes it all would.
fn written(hub: &mut Hub, now: Instant, id: ConnId) -> Vec<u8> {
    while !matches!(hub.poll_output(), Output::Timeout(_)) {}
    let mut out = Vec::new();
    loop {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = hub.transmit(id, &mut slices);
        if n == 0 {
            return out;
        }
        let before = out.len();
        slices[..n].iter().for_each(|s| out.extend_from_slice(s));
        hub.handle_written(now, id, out.len() - before);
    }
}

/// Median time to broadcast one 64-byte message and hand every queued byte to the "socket".
fn broadcast(hub: &mut Hub, subscribers: usize, rounds: usize) -> Duration {
    let now = Instant::now();
    let message = [b'x'; 64];
    let mut timings = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        hub.handle_broadcast(now, "/chat", true, &message).expect("route exists");
        let mut transmits = 0;
        loop {
            match hub.poll_output() {
                Output::Transmit(id) => {
                    let mut slices = [IoSlice::new(&[]); 8];
                    let n = hub.transmit(id, &mut slices);
                    let len = slices[..n].iter().map(|s| s.len()).sum();
                    hub.handle_written(now, id, len);
                    transmits += 1;
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        timings.push(start.elapsed());
        assert_eq!(transmits, subscribers, "every subscriber got the message");
    }
    timings.sort();
    timings[timings.len() / 2]
}
