//! What a first real deployment meets, checked against every shell: node-wide limits that hold
//! whatever the worker count, clients behind proxies, slow handshakes, and a worker that panics.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use switchboard_tests::{
    IO_TIMEOUT, Message, PubSub, RawClient, Server, Settings, body, for_each_binary, get_json, http, recv_data, send,
    status, tcp, tcp_from, upgrade_request, wait_for_stats, ws,
};

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The status of an upgrade sent from `source` with `extra` header lines (and `before` the
/// request, e.g. a PROXY header); the client is returned so the connection stays open.
fn upgrade_from(addr: SocketAddr, source: IpAddr, before: &[u8], extra: &[&str]) -> (RawClient, u16, String) {
    let mut client = RawClient::from_stream(tcp_from(addr, source));
    let mut request = before.to_vec();
    request.extend_from_slice(upgrade_request("/echo", extra, &[]).as_bytes());
    client.send_raw(&request);
    let head = client.read_head();
    let code = status(&head);
    (client, code, head)
}

/// Connections held across workers: `PubSub` clients say which worker holds them.
fn spread(clients: &[PubSub]) -> BTreeMap<u32, usize> {
    let mut by_worker = BTreeMap::new();
    for client in clients {
        *by_worker.entry(client.worker()).or_default() += 1;
    }
    by_worker
}

#[test]
fn max_connections_is_exact_for_the_node_with_1_2_and_4_workers() {
    for_each_binary(|bin| {
        for workers in [1, 2, 4] {
            // 7 is not a multiple of any worker count: a per-worker share would round it.
            let limit = 7;
            let settings = Settings { workers, max_connections: limit, ..Settings::default() };
            let server = Server::with(bin, &settings);
            let mut held: Vec<PubSub> = (0..limit).map(|_| PubSub::connect(&server, "/ws")).collect();
            eprintln!("{workers} worker(s): {limit} connections spread {:?}", spread(&held));
            for _ in 0..3 {
                let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
                assert_eq!(status(&head), 503, "{workers} workers, connection {}: {head}", limit + 1);
            }
            drop(held.pop());
            // The freed place is the node's, whichever worker the next connection lands on.
            let deadline = Instant::now() + IO_TIMEOUT;
            loop {
                let (_client, head) = RawClient::upgrade(server.addr, "/echo", &[]);
                if status(&head) == 101 {
                    break;
                }
                assert!(Instant::now() < deadline, "the place freed never came back: {head}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    });
}

#[test]
fn per_ip_limit_and_connect_rate_are_exact_for_the_node() {
    for_each_binary(|bin| {
        for workers in [1, 2, 4] {
            let settings = Settings { workers, max_connections_per_ip: 3, ..Settings::default() };
            let server = Server::with(bin, &settings);
            let held: Vec<_> = (0..3)
                .map(|_| {
                    let (client, code, head) = upgrade_from(server.addr, local(1), b"", &[]);
                    assert_eq!(code, 101, "{workers} workers: {head}");
                    client
                })
                .collect();
            let (_c, code, head) = upgrade_from(server.addr, local(1), b"", &[]);
            assert_eq!(code, 429, "{workers} workers, 4th from one address: {head}");
            let (_c, code, head) = upgrade_from(server.addr, local(2), b"", &[]);
            assert_eq!(code, 101, "{workers} workers, another address has its own budget: {head}");
            drop(held);

            // A burst of 3, then one a minute: the 4th attempt is refused on any worker.
            let settings = Settings { workers, connect_rate: (1.0 / 60.0, 3), ..Settings::default() };
            let server = Server::with(bin, &settings);
            for n in 0..3 {
                let (_c, code, head) = upgrade_from(server.addr, local(1), b"", &[]);
                assert_eq!(code, 101, "{workers} workers, attempt {n}: {head}");
            }
            for _ in 0..4 {
                let (_c, code, head) = upgrade_from(server.addr, local(1), b"", &[]);
                assert_eq!(code, 429, "{workers} workers, past the burst: {head}");
            }
        }
    });
}

fn proxied(server_extra: &str, limits_extra: &str) -> Settings {
    Settings {
        max_connections_per_ip: 1,
        server_extra: server_extra.to_owned(),
        limits_extra: limits_extra.to_owned(),
        ..Settings::default()
    }
}

#[test]
fn a_trusted_proxy_names_the_client_and_an_untrusted_peer_does_not() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &proxied(r#"trusted_proxies = ["127.0.0.1/32"]"#, ""));
        let addr = server.addr;
        let (_a, code, head) = upgrade_from(addr, local(1), b"", &["X-Forwarded-For: 203.0.113.1"]);
        assert_eq!(code, 101, "{head}");
        let (_b, code, head) = upgrade_from(addr, local(1), b"", &["X-Forwarded-For: 203.0.113.2"]);
        assert_eq!(code, 101, "a second client behind the same proxy has its own budget: {head}");
        let (_c, code, head) = upgrade_from(addr, local(1), b"", &["X-Forwarded-For: 203.0.113.1"]);
        assert_eq!(code, 429, "the first client again: {head}");
        // The rightmost untrusted address counts; what the client itself wrote further left
        // cannot buy it a fresh budget.
        let spoof = "X-Forwarded-For: 198.51.100.9, 203.0.113.1";
        let (_d, code, head) = upgrade_from(addr, local(1), b"", &[spoof]);
        assert_eq!(code, 429, "{head}");
        let forwarded = r#"Forwarded: for="[2001:db8::7]:4711";proto=https"#;
        let (_e, code, head) = upgrade_from(addr, local(1), b"", &[forwarded]);
        assert_eq!(code, 101, "{head}");
        // IPv6 clients share a budget per /64.
        let (_f, code, head) = upgrade_from(addr, local(1), b"", &[r#"Forwarded: for="[2001:db8::8]""#]);
        assert_eq!(code, 429, "same /64: {head}");
        let (_g, code, head) = upgrade_from(addr, local(1), b"", &[r#"Forwarded: for="[2001:db8:0:1::8]""#]);
        assert_eq!(code, 101, "another /64: {head}");

        // The same headers from a peer the server does not trust change nothing.
        let server = Server::with(bin, &proxied(r#"trusted_proxies = ["10.0.0.0/8"]"#, ""));
        let (_a, code, head) = upgrade_from(server.addr, local(1), b"", &["X-Forwarded-For: 203.0.113.1"]);
        assert_eq!(code, 101, "{head}");
        let (_b, code, head) = upgrade_from(server.addr, local(1), b"", &["X-Forwarded-For: 203.0.113.2"]);
        assert_eq!(code, 429, "one peer, one budget: {head}");
    });
}

fn proxy_v2(source: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    match source {
        SocketAddr::V4(v4) => {
            header.push(0x11);
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&v4.ip().octets());
            header.extend_from_slice(&[127, 0, 0, 1]);
        }
        SocketAddr::V6(v6) => {
            header.push(0x21);
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6.ip().octets());
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&8080u16.to_be_bytes());
    header
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client_and_bad_headers_are_closed() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &proxied("proxy_protocol = true", ""));
        let addr = server.addr;
        let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 5555 8080\r\n").into_bytes();
        let (_a, code, head) = upgrade_from(addr, local(1), &v1("198.51.100.1"), &[]);
        assert_eq!(code, 101, "{head}");
        let (mut echo, code, head) = upgrade_from(addr, local(1), &v1("198.51.100.2"), &[]);
        assert_eq!(code, 101, "another client through the same balancer: {head}");
        let (_c, code, head) = upgrade_from(addr, local(1), &v1("198.51.100.1"), &[]);
        assert_eq!(code, 429, "{head}");
        let v2 = proxy_v2("198.51.100.3:4000".parse().expect("address"));
        let (_d, code, head) = upgrade_from(addr, local(1), &v2, &[]);
        assert_eq!(code, 101, "{head}");
        let (_e, code, head) = upgrade_from(addr, local(1), &proxy_v2("198.51.100.3:4001".parse().expect("a")), &[]);
        assert_eq!(code, 429, "v2 names the same client: {head}");
        let v6 = proxy_v2("[2001:db8::1]:4000".parse().expect("address"));
        let (_f, code, head) = upgrade_from(addr, local(1), &v6, &[]);
        assert_eq!(code, 101, "{head}");

        // Garbage, a plain request and a truncated header: closed, nothing answered.
        for bad in
            [&b"GET /echo HTTP/1.1\r\n\r\n"[..], b"PROXY TCP4 nonsense\r\n", b"PROXY TCP9 1 2 3 4\r\n", &[0xff; 40]]
        {
            let mut client = RawClient::from_stream(tcp(addr));
            client.send_raw(bad);
            let got = client.read_head();
            assert!(got.is_empty(), "{:?} got an answer: {got}", String::from_utf8_lossy(bad));
        }
        let mut truncated = RawClient::from_stream(tcp(addr));
        truncated.send_raw(&v2[..20]);
        truncated.shutdown_write();
        assert!(truncated.closed_by_server(), "a truncated header is closed");
        // The API needs the header too, as every connection through the balancer has one.
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let request = "PROXY TCP4 198.51.100.50 127.0.0.1 5555 8080\r\nGET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n";
            let head = http(addr, request);
            assert_eq!(status(&head), 200, "{head}");
            let stats: serde_json::Value = serde_json::from_str(body(&head)).unwrap_or_default();
            // Each worker learns the others' figures once a second.
            if stats["proxy_header_errors"].as_u64().is_some_and(|n| n >= 4) {
                break;
            }
            assert!(Instant::now() < deadline, "{head}{stats}");
            thread::sleep(Duration::from_millis(100));
        }

        // The clients already connected never noticed.
        echo.send_frame(true, switchboard_tests::op::TEXT, b"still here", true);
        let frame = echo.read_frame().expect("an echo");
        assert_eq!(frame.payload, b"still here");
    });
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_handshakes_cannot_lock_real_clients_out() {
    const SLOW: usize = 3000;
    for_each_binary(|bin| {
        let settings = Settings { handshake_timeout: "4s", ..Settings::default() };
        let server = Server::with(bin, &settings);
        let idle_rss = rss_kib(server.pid());
        // From several addresses, so the kernel's ephemeral ports are not the limit.
        let mut slow: Vec<TcpStream> = (0..SLOW).map(|i| tcp_from(server.addr, local(10 + (i % 50) as u8))).collect();
        let started = Instant::now();
        let request = upgrade_request("/echo", &[], &[]).into_bytes();
        let mut worst = Duration::ZERO;
        for second in 0..3 {
            for stream in &mut slow {
                let _ = stream.write(&request[second..=second]);
            }
            let before = Instant::now();
            let mut client = ws(&server, "/echo");
            worst = worst.max(before.elapsed());
            send(&mut client, Message::text("through"));
            assert_eq!(recv_data(&mut client), Message::text("through"));
            thread::sleep(Duration::from_secs(1).saturating_sub(before.elapsed()));
        }
        let rss = rss_kib(server.pid());
        let stats = get_json(server.addr, "/api/stats");
        eprintln!(
            "{SLOW} slow sockets: a real client upgraded in at most {worst:?}; server RSS {} KiB -> {} KiB; \
             evictions {}",
            idle_rss, rss, stats["handshakes"]["evictions"]
        );
        assert!(worst < Duration::from_secs(1), "a real client waited {worst:?}");
        assert!(stats["handshakes"]["evictions"].as_u64().is_some_and(|n| n > 0), "{stats}");
        assert!(rss < idle_rss + 64 * 1024, "RSS grew from {idle_rss} KiB to {rss} KiB");
        // Every slow socket is closed by the handshake timeout at the latest.
        let deadline = started + Duration::from_secs(4) + IO_TIMEOUT;
        for (i, stream) in slow.into_iter().enumerate() {
            let _ = stream.set_read_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)),
            ));
            let mut client = RawClient::from_stream(stream);
            assert!(client.closed_by_server(), "slow socket {i} still open");
        }
        // Each worker learns the others' figures once a second: wait for them to agree.
        wait_for_stats(server.addr, 3, "no handshake left", |s| s["handshakes"]["in_progress"] == 0);
    });
}

#[test]
fn handshaking_per_ip_limit_closes_at_once() {
    for_each_binary(|bin| {
        let server = Server::with(bin, &proxied("", "max_handshaking_per_ip = 2"));
        let _waiting: Vec<TcpStream> = (0..2).map(|_| tcp_from(server.addr, local(1))).collect();
        // Give the workers time to accept both before the third arrives.
        thread::sleep(Duration::from_millis(200));
        let mut third = RawClient::from_stream(tcp_from(server.addr, local(1)));
        assert!(third.closed_by_server(), "the third handshake from one address is closed");
        let (_ok, code, head) = upgrade_from(server.addr, local(2), b"", &[]);
        assert_eq!(code, 101, "another address is not affected: {head}");
    });
}

#[test]
fn a_worker_that_panics_takes_the_process_down_cleanly() {
    for_each_binary(|bin| {
        let settings = Settings { workers: 2, ..Settings::default() };
        let mut server = Server::start_with_env(bin, &settings.to_toml(), &[("SWITCHBOARD_TEST_PANIC_WORKER", "1")]);
        let status = server.wait_exit(Duration::from_secs(10));
        let Some(status) = status else { panic!("the process did not exit after a worker panicked") };
        assert!(!status.success(), "exit status {status}");
        let log = server.stderr();
        assert!(log.contains("worker 1 panicked"), "{log}");
    });
}
