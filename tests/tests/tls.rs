//! `wss://` and `https://` served by the binaries themselves (`[tls]`): echo, broadcast and
//! pub/sub through tungstenite over rustls' client and through Python `websockets` over `ssl`,
//! TLS 1.2 and 1.3, a plaintext or garbage client closed while TLS clients carry on, and a
//! SIGHUP that swaps the certificate under open connections; and `rediss://` between nodes and
//! a redis-server on TLS. Certificates are made here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion};
use switchboard_tests::{Message, Server, Settings, for_each_binary, run_python_client, status, tcp};

type Tls = StreamOwned<ClientConnection, TcpStream>;
type Wss = tungstenite::WebSocket<Tls>;
type Version = &'static SupportedProtocolVersion;

/// `http.api_key` of these servers, for `POST /api/publish` over https.
const API_KEY: &str = "tls-api-key";

const TLS12: Version = &rustls::version::TLS12;
const TLS13: Version = &rustls::version::TLS13;

/// A self-signed certificate for `localhost` and 127.0.0.1, named `name`, written as
/// `cert.pem` and `key.pem` in `dir`; returns the certificate's DER.
fn write_certificate(dir: &Path, name: &str) -> CertificateDer<'static> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).expect("valid names");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key generation");
    let cert = params.self_signed(&key).expect("self-signing");
    // Written next to each other, then renamed: a reload never reads half a file.
    for (file, text) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        let temporary = dir.join(format!("{file}.new"));
        std::fs::write(&temporary, text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
        std::fs::rename(&temporary, dir.join(file)).unwrap_or_else(|e| panic!("renaming {file}: {e}"));
    }
    cert.der().clone()
}

/// A server on a fresh certificate (kept in the returned directory) with `min_version`.
fn tls_server(bin: &Path, min_version: &str) -> (tempfile::TempDir, CertificateDer<'static>, Server) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = write_certificate(dir.path(), "switchboard test");
    let server = Server::with(bin, &tls_settings(dir.path(), min_version));
    (dir, root, server)
}

/// The `[tls]` lines for the files `write_certificate` put in `dir`.
fn tls_settings(dir: &Path, min_version: &str) -> Settings {
    let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
    let tls = format!("cert = {:?}\nkey = {:?}\nmin_version = {min_version:?}\n", path("cert.pem"), path("key.pem"));
    Settings { tls, api_key: API_KEY, ..Settings::default() }
}

/// A TLS connection to `addr` that trusts `root` alone and speaks only `version`; the
/// handshake is done, or its error returned.
fn connect_tls(addr: SocketAddr, root: &CertificateDer<'static>, version: Version) -> Result<Tls, String> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let session = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(session, tcp(addr));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// A `wss://` client of `path` over TLS `version`, trusting `root`.
fn wss(server: &Server, path: &str, root: &CertificateDer<'static>, version: Version) -> Wss {
    let stream = connect_tls(server.addr, root, version).unwrap_or_else(|e| panic!("TLS to {path}: {e}"));
    let url = format!("wss://localhost:{}{path}", server.addr.port());
    let (socket, response) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade {path}: {e}"));
    assert_eq!(response.status(), 101);
    socket
}

fn send(socket: &mut Wss, text: &str) {
    socket.send(Message::text(text)).unwrap_or_else(|e| panic!("send: {e}"));
}

/// The next text message (pings are answered by tungstenite on the way).
fn recv_text(socket: &mut Wss) -> String {
    loop {
        match socket.read().unwrap_or_else(|e| panic!("read: {e}")) {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// `GET path` over TLS `version`; the whole response.
fn https_get(addr: SocketAddr, root: &CertificateDer<'static>, version: Version, path: &str) -> String {
    https(addr, root, version, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
}

/// Sends `request` (which asks to close after it) over TLS `version`; the whole response.
fn https(addr: SocketAddr, root: &CertificateDer<'static>, version: Version, request: &str) -> String {
    let mut stream = connect_tls(addr, root, version).unwrap_or_else(|e| panic!("TLS for {request:?}: {e}"));
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN chose http/1.1");
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = Vec::new();
    // The server ends its answer with close_notify: reading to the end is a clean EOF.
    stream.read_to_end(&mut response).unwrap_or_else(|e| panic!("read the answer to {request:?}: {e}"));
    String::from_utf8_lossy(&response).into_owned()
}

/// True when the server ends a plain TCP connection after `bytes` (it may write an alert).
fn closed_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = tcp(addr);
    stream.write_all(bytes).unwrap_or_else(|e| panic!("write: {e}"));
    let mut sink = [0; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Polls `/metrics` until `name` reads at least `at_least` (workers share figures each second).
fn wait_for_metric(server: &Server, root: &CertificateDer<'static>, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = https_get(server.addr, root, TLS13, "/metrics");
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wss_echo_broadcast_pubsub_and_https_on_both_tls_versions() {
    for_each_binary(|bin| {
        let (_dir, root, server) = tls_server(bin, "1.2");
        for version in [TLS12, TLS13] {
            let mut echo = wss(&server, "/echo", &root, version);
            assert_eq!(echo.get_ref().conn.protocol_version(), Some(version.version));
            send(&mut echo, "hello over wss");
            assert_eq!(recv_text(&mut echo), "hello over wss");
            let big = "x".repeat(100_000);
            send(&mut echo, &big);
            assert_eq!(recv_text(&mut echo), big, "a message over many records");

            let mut alice = wss(&server, "/chat", &root, version);
            let mut bob = wss(&server, "/chat", &root, version);
            send(&mut alice, "to the room");
            assert_eq!(recv_text(&mut bob), "to the room");

            let mut subscriber = wss(&server, "/ws", &root, version);
            assert!(recv_text(&mut subscriber).contains("welcome"));
            send(&mut subscriber, r#"{"op":"subscribe","channel":"news","id":1}"#);
            assert!(recv_text(&mut subscriber).contains(r#""id":1"#));
            let mut publisher = wss(&server, "/ws", &root, version);
            assert!(recv_text(&mut publisher).contains("welcome"));
            send(&mut publisher, r#"{"op":"publish","channel":"news","data":{"tls":true},"id":2}"#);
            let message = recv_text(&mut subscriber);
            assert!(message.contains(r#"{"tls":true}"#) && message.contains("news"), "{message}");
            let body = r#"{"channel":"news","data":{"via":"https"}}"#;
            let publish = format!(
                "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\n\
                 Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let published = https(server.addr, &root, version, &publish);
            assert_eq!(status(&published), 202, "{published}");
            let message = recv_text(&mut subscriber);
            assert!(message.contains(r#"{"via":"https"}"#), "{message}");

            let health = https_get(server.addr, &root, version, "/healthz");
            assert_eq!(status(&health), 200, "{health}");
        }
        assert!(wait_for_metric(&server, &root, "switchboard_tls_handshakes_total", 12) >= 12);
    });
}

#[test]
fn plaintext_and_garbage_on_the_tls_port_are_closed_and_others_carry_on() {
    for_each_binary(|bin| {
        let (_dir, root, server) = tls_server(bin, "1.2");
        let mut echo = wss(&server, "/echo", &root, TLS13);
        let garbage: [&[u8]; 3] = [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0x42; 4096],
        ];
        for bytes in garbage {
            assert!(closed_after(server.addr, bytes), "the server closes a non-TLS client");
            send(&mut echo, "still here");
            assert_eq!(recv_text(&mut echo), "still here");
        }
        assert!(wait_for_metric(&server, &root, "switchboard_tls_failures_total", 3) >= 3);
    });
}

#[test]
fn min_version_1_3_refuses_a_1_2_client() {
    for_each_binary(|bin| {
        let (_dir, root, server) = tls_server(bin, "1.3");
        let refused = connect_tls(server.addr, &root, TLS12);
        assert!(refused.is_err(), "a TLS 1.2 handshake succeeded");
        let mut echo = wss(&server, "/echo", &root, TLS13);
        send(&mut echo, "1.3");
        assert_eq!(recv_text(&mut echo), "1.3");
    });
}

/// Sends SIGHUP and waits until the server logs `line`: one more time than it already has.
fn hang_up(server: &Server, line: &str) {
    let before = server.stderr().matches(line).count();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stderr().matches(line).count() == before {
        assert!(Instant::now() < deadline, "no {line:?} logged:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_swaps_the_certificate_and_open_connections_stay() {
    for_each_binary(|bin| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let first = write_certificate(dir.path(), "first");
        let server = Server::with(bin, &tls_settings(dir.path(), "1.2"));
        let mut old = wss(&server, "/echo", &first, TLS13);

        let second = write_certificate(dir.path(), "second");
        hang_up(&server, "SIGHUP: reloaded");
        // Every worker hears the reload through its inbox: a few tries cover the slowest.
        let mut served = None;
        for _ in 0..50 {
            if let Ok(stream) = connect_tls(server.addr, &second, TLS12) {
                served = stream.conn.peer_certificates().and_then(|chain| chain.first().cloned());
                if connect_tls(server.addr, &first, TLS13).is_err() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(served.as_ref(), Some(&second), "new handshakes present the new certificate");
        for _ in 0..8 {
            assert!(connect_tls(server.addr, &first, TLS13).is_err(), "a worker still presents the old certificate");
        }
        send(&mut old, "opened before the reload");
        assert_eq!(recv_text(&mut old), "opened before the reload");

        // A key that does not match: logged, and the certificate in use stays.
        std::fs::write(dir.path().join("key.pem"), rcgen::KeyPair::generate().expect("a key").serialize_pem())
            .expect("writing key.pem");
        hang_up(&server, "keeping the certificate in use");
        assert!(server.stderr().contains("tls.key"), "the log names the key:\n{}", server.stderr());
        let mut after = wss(&server, "/echo", &second, TLS13);
        send(&mut after, "still the second");
        assert_eq!(recv_text(&mut after), "still the second");
        send(&mut old, "and the first client");
        assert_eq!(recv_text(&mut old), "and the first client");
    });
}

#[test]
fn check_config_names_unreadable_and_mismatched_files() {
    for_each_binary(|bin| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        write_certificate(dir.path(), "switchboard test");
        let config = dir.path().join("switchboard.toml");
        let check = |toml: String| {
            std::fs::write(&config, toml).expect("writing the config");
            let output = Command::new(bin).arg("--check-config").arg("--config").arg(&config).output();
            let output = output.unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
            (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
        };
        let good = tls_settings(dir.path(), "1.3").to_toml();
        assert_eq!(check(good.clone()), (Some(0), String::new()));

        let missing = good.replace("cert.pem", "absent.pem");
        let (code, text) = check(missing);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("tls.cert") && text.contains("absent.pem"), "{text}");

        std::fs::write(dir.path().join("other.pem"), rcgen::KeyPair::generate().expect("a key").serialize_pem())
            .expect("writing other.pem");
        let (code, text) = check(good.replace("key.pem", "other.pem"));
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("tls.key") && text.contains("does not match"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "no key material in {text}");

        std::fs::write(&config, good).expect("writing the config");
        let printed = Command::new(bin).arg("--print-config").arg("--config").arg(&config).output();
        let printed = String::from_utf8_lossy(&printed.expect("--print-config runs").stdout).into_owned();
        assert!(printed.contains("[tls]") && printed.contains("min_version = \"1.3\""), "{printed}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    });
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn python_websockets_over_ssl() {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-venv", python.display());
    for_each_binary(|bin| {
        let (dir, _, server) = tls_server(bin, "1.2");
        let url = |path: &str| format!("wss://localhost:{}{path}", server.addr.port());
        // Python's default context trusts SSL_CERT_FILE: the test's certificate, alone.
        let cert = dir.path().join("cert.pem");
        run_python_client(&python, &[url("/echo"), url("/chat")], &[("SSL_CERT_FILE", &cert)]);
    });
}

/// A CA (`ca.pem`) and a certificate it signed for 127.0.0.1 (`cert.pem`, `key.pem`) in `dir`,
/// as a managed Redis service presents.
fn write_chain(dir: &Path, name: &str) {
    let ca_key = rcgen::KeyPair::generate().expect("key generation");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("self-signing the CA");
    let key = rcgen::KeyPair::generate().expect("key generation");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("valid names");
    let cert = params.signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key)).expect("signing");
    for (file, text) in [("ca.pem", ca.pem()), ("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    }
}

/// Two nodes whose broker is a redis-server speaking TLS only to them (`rediss://`, its
/// certificate's CA in `broker.tls_ca`): a publication crosses; a node that trusts another CA
/// refuses the server (degraded), and `--check-config` names a `tls_ca` that is no CA.
#[test]
fn rediss_carries_publications_between_nodes_and_checks_the_server() {
    use switchboard_tests::cluster::{API_KEY as CLUSTER_KEY, Redis, api_publish, free_port, healthz, wait_until};
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_chain(dir.path(), "redis test");
    let other = tempfile::tempdir().expect("a temporary directory");
    write_chain(other.path(), "someone else");
    let path = |dir: &Path, file: &str| dir.join(file).to_string_lossy().into_owned();
    let (cert, key, ca) = (path(dir.path(), "cert.pem"), path(dir.path(), "key.pem"), path(dir.path(), "ca.pem"));
    let tls_port = free_port().to_string();
    let args = [
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &cert,
        "--tls-auth-clients",
        "no",
    ];
    let Some(_redis) = Redis::start_with(&args, free_port) else { return };
    let broker = |ca: &str| {
        format!(
            "kind = \"redis\"\nurl = \"rediss://127.0.0.1:{tls_port}\"\ntls_ca = {ca:?}\nlease_ttl = \"2s\"\n\
             \n[broker.backoff]\nmin = \"50ms\"\nmax = \"300ms\"\n\n[broker.breaker]\nfailure_threshold = 2\nopen_for = \"500ms\"\n"
        )
    };
    for_each_binary(|bin| {
        let node = |n: usize, ca: &str| {
            let settings =
                Settings { api_key: CLUSTER_KEY, node_id: format!("t{n}"), broker: broker(ca), ..Settings::default() };
            Server::with(bin, &settings)
        };
        let (one, two) = (node(1, &ca), node(2, &ca));
        for server in [&one, &two] {
            wait_until(Duration::from_secs(10), "the node reaches Redis over TLS", || {
                healthz(server.addr).1["status"] == "ok"
            });
        }
        let mut client = switchboard_tests::PubSub::connect(&two, "/ws");
        client.expect_ack(r#"{"op":"subscribe","channel":"over-tls","id":1}"#, 1);
        let got = wait_until(Duration::from_secs(10), "a publication crosses rediss://", || {
            assert_eq!(api_publish(one.addr, "over-tls", "\"sealed\""), 202);
            switchboard_tests::cluster::next_data(&mut client, Duration::from_millis(200))
                == Some(serde_json::json!("sealed"))
        });
        eprintln!("crossed after {got:?}");

        // Trusting another CA: the handshake fails, every time, and the node says so.
        let doubter = node(3, &path(other.path(), "ca.pem"));
        wait_until(Duration::from_secs(10), "a node that cannot verify Redis is degraded", || {
            healthz(doubter.addr).1["status"] == "degraded"
        });
        assert_eq!(healthz(one.addr).1["status"], "ok", "the others carry on");

        // A tls_ca that is no certificate is named by --check-config.
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, format!("[broker]\n{}", broker(&key))).expect("writing the config");
        let output = Command::new(bin).arg("--check-config").arg("--config").arg(&config).output();
        let output = output.unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("broker.tls_ca") && text.contains("key.pem"), "{text}");
    });
}
