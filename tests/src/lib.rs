//! Black-box harness: start a server binary on a free port, talk to it over real sockets.
//!
//! Every scenario runs against every shell binary in [`binaries`], so a new shell joins the
//! suite by joining that list. Nothing here knows the protocol beyond what a client must.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub use tungstenite::Message;

pub mod cluster;

/// The shells under test, by binary name.
pub const SHELLS: &[&str] = &["switchboard-mio", "switchboard-smol"];

/// How long any single read may block before a test gives up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The binaries to test: `SWITCHBOARD_BINS` (paths separated by `:`) if set, else [`SHELLS`]
/// in the release target directory, which `scripts/test` builds before `cargo test`.
pub fn binaries() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("SWITCHBOARD_BINS") {
        return list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    SHELLS.iter().map(|name| target.join("release").join(name)).collect()
}

/// Runs `scenario` once per binary, naming the binary first so a failure says which shell.
pub fn for_each_binary(mut scenario: impl FnMut(&Path)) {
    for bin in binaries() {
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --release --bins` first (or set SWITCHBOARD_BINS)",
            bin.display()
        );
        eprintln!("--- against {}", bin.display());
        scenario(&bin);
    }
}

/// The settings tests vary; everything else is fixed in [`Settings::to_toml`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// `server.workers`.
    pub workers: usize,
    /// `server.handshake_timeout`.
    pub handshake_timeout: &'static str,
    /// `server.close_timeout`.
    pub close_timeout: &'static str,
    /// `limits.max_message_bytes` and `limits.max_frame_bytes`.
    pub max_message: &'static str,
    /// `limits.max_connections` (for the whole node).
    pub max_connections: usize,
    /// `limits.max_connections_per_ip`; 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// `limits.connect_rate_per_ip` (0 is unlimited) and `limits.connect_burst_per_ip`.
    pub connect_rate: (f64, u32),
    /// `limits.send_queue_bytes`.
    pub send_queue: &'static str,
    /// `heartbeat.ping_interval`, `heartbeat.pong_timeout` and `heartbeat.idle_timeout`.
    pub heartbeat: (&'static str, &'static str, &'static str),
    /// `http.api_key`; empty disables `/api/publish`.
    pub api_key: &'static str,
    /// `drain.timeout`.
    pub drain_timeout: &'static str,
    /// `broker.node_id`.
    pub node_id: String,
    /// More lines for the `[broker]` section (and its subsections), e.g. from
    /// [`cluster::broker_toml`]; empty keeps the in-process broker.
    pub broker: String,
    /// More lines for the `[server]` section (e.g. `trusted_proxies`, `proxy_protocol`).
    pub server_extra: String,
    /// More lines for the `[limits]` section (e.g. `max_handshaking`).
    pub limits_extra: String,
    /// TOML appended after the routes: `[pusher]` and its `[[pusher.app]]` tables.
    pub pusher: String,
    /// Lines of a `[tls]` section (`cert`, `key`, `min_version`); empty: plain TCP.
    pub tls: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: 2,
            handshake_timeout: "10s",
            close_timeout: "5s",
            max_message: "2MiB",
            max_connections: 10_000,
            max_connections_per_ip: 0,
            connect_rate: (0.0, 200),
            send_queue: "8MiB",
            heartbeat: ("25s", "10s", "300s"),
            api_key: "",
            drain_timeout: "5s",
            node_id: NODE_ID.to_owned(),
            broker: String::new(),
            server_extra: String::new(),
            limits_extra: String::new(),
            pusher: String::new(),
            tls: String::new(),
        }
    }
}

impl Settings {
    /// The config file: rate limits off (tests open many connections from one address quickly)
    /// and one route per behaviour under test.
    pub fn to_toml(&self) -> String {
        let (rate, burst) = self.connect_rate;
        let (ping, pong, idle) = self.heartbeat;
        format!(
            r#"[server]
listen = "127.0.0.1:1"
workers = {workers}
handshake_timeout = "{handshake}"
close_timeout = "{close}"
{server_extra}

[limits]
max_connections = {max_connections}
max_connections_per_ip = {per_ip}
connect_rate_per_ip = {rate:?}
connect_burst_per_ip = {burst}
max_message_bytes = "{max}"
max_frame_bytes = "{max}"
send_queue_bytes = "{queue}"
{limits_extra}

[heartbeat]
ping_interval = "{ping}"
pong_timeout = "{pong}"
idle_timeout = "{idle}"

[rate_limit]
messages_per_second = 0.0
bytes_per_second = 0

[http]
api_key = "{api_key}"

[broker]
node_id = "{node_id}"
{broker}

[drain]
timeout = "{drain}"

[tls]
{tls}

[[route]]
path = "/echo"
mode = "echo"

[[route]]
path = "/guarded"
mode = "echo"
allowed_origins = ["https://good.example"]

[[route]]
path = "/proto"
mode = "echo"
subprotocols = ["v2.switchboard", "v1.switchboard"]

[[route]]
path = "/chat"
mode = "broadcast"

[[route]]
path = "/chat-drop"
mode = "broadcast"
slow_consumer = "drop"

[[route]]
path = "/ws"
mode = "pubsub"

{pusher}
"#,
            workers = self.workers,
            handshake = self.handshake_timeout,
            close = self.close_timeout,
            max_connections = self.max_connections,
            per_ip = self.max_connections_per_ip,
            max = self.max_message,
            queue = self.send_queue,
            api_key = self.api_key,
            drain = self.drain_timeout,
            node_id = self.node_id,
            broker = self.broker,
            server_extra = self.server_extra,
            limits_extra = self.limits_extra,
            pusher = self.pusher,
            tls = self.tls,
        )
    }
}

/// `broker.node_id` of test servers unless [`Settings::node_id`] says otherwise.
pub const NODE_ID: &str = "t";

/// A running server; killed and reaped on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `bin` with a config file of `config` and `--listen 127.0.0.1:0`.
    pub fn start(bin: &Path, config: &str) -> Self {
        Self::try_start(bin, config).unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// Starts `bin` with [`Settings`].
    pub fn with(bin: &Path, settings: &Settings) -> Self {
        Self::start(bin, &settings.to_toml())
    }

    /// Starts `bin` like [`Server::start`], with `env` added to its environment.
    pub fn start_with_env(bin: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::try_start_with_env(bin, config, env).unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    fn try_start(bin: &Path, config: &str) -> io::Result<Self> {
        Self::try_start_with_env(bin, config, &[])
    }

    fn try_start_with_env(bin: &Path, config: &str, env: &[(&str, &str)]) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("switchboard.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let Some(stdout) = child.stdout.take() else {
            return Err(io::Error::other("no stdout pipe"));
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let mut server = Self { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), dir };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other(format!("no address line; stderr:\n{}", server.stderr()))),
        };
        let addr = line.trim().strip_prefix("listening on ").and_then(|a| a.parse().ok());
        server.addr = addr.ok_or_else(|| {
            io::Error::other(format!("expected `listening on ADDR`, got {line:?}; stderr:\n{}", server.stderr()))
        })?;
        Ok(server)
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (by name, e.g. "TERM") to this server's process only.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A `ws://` URL for `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- server stderr:\n{}", self.stderr());
        }
    }
}

/// Runs `scripts/python-client.py` (Python `websockets`, an independent client) from the
/// repository's `.venv` with `args` and `envs` for at most two minutes; asserts that it passed
/// its echo (plain and deflate) and broadcast checks.
pub fn run_python_client(python: &Path, args: &[String], envs: &[(&str, &Path)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-client.py");
    let mut child = Command::new(python)
        .arg(&script)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    // Kills only a client that overran its time; a finished one is reaped either way.
    let _ = child.kill();
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for python: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "python client failed ({})", output.status);
    for check in ["ok: plain", "ok: deflate", "ok: broadcast"] {
        assert!(stdout.contains(check), "no {check:?} in {stdout}");
    }
}

/// A TCP connection with bounded reads.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    stream
}

/// A TCP connection from `source` (any 127.0.0.0/8 address works on loopback), with bounded
/// reads: how a test plays several client addresses.
pub fn tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("socket: {e}"));
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let stream = TcpStream::from(socket);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    stream
}

/// Sends `request` as is and returns the whole response (the server closes after it).
pub fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("write request: {e}"));
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Read the head, then as much body as Content-Length says: an HTTP/1.1 response may
    // leave the connection open for the next request.
    while !response_complete(&response) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A reset after the response still leaves the response readable above.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !response.is_empty() => break,
            Err(e) => panic!("reading response: {e} (after {:?})", String::from_utf8_lossy(&response)),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// True once `bytes` hold a whole response head and the body its Content-Length announces.
fn response_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|len| bytes.len() >= end + 4 + len)
}

/// An upgrade request for `path` with the standard headers plus `extra` lines ("Name: value").
/// Headers named in `omit` (lowercase) are left out.
pub fn upgrade_request(path: &str, extra: &[&str], omit: &[&str]) -> String {
    let standard = [
        ("host", "Host: 127.0.0.1"),
        ("upgrade", "Upgrade: websocket"),
        ("connection", "Connection: Upgrade"),
        ("sec-websocket-key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "Sec-WebSocket-Version: 13"),
    ];
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (name, line) in standard {
        if !omit.contains(&name) {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// The status code of an HTTP response text.
pub fn status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The value of header `name` in a response head, whatever the case of its name.
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The body of a response (after the blank line).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// `GET path` as JSON; panics unless the answer is 200 with a JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let response = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(status(&response), 200, "{response}");
    serde_json::from_str(body(&response)).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {response}"))
}

/// Polls `/api/stats` until `check` holds for `in_a_row` answers in a row, and returns the last.
///
/// Each request may land on any worker, and a worker learns the others' figures about once a
/// second: several agreeing answers mean every worker shows the whole node.
pub fn wait_for_stats(
    addr: SocketAddr,
    in_a_row: usize,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + STATS_TIMEOUT;
    let mut agreeing = 0;
    loop {
        let stats = get_json(addr, "/api/stats");
        agreeing = if check(&stats) { agreeing + 1 } else { 0 };
        if agreeing >= in_a_row {
            return stats;
        }
        assert!(Instant::now() < deadline, "/api/stats never showed {what}; last answer: {stats}");
        // Figures change on the workers' clock (once a second), not in answer to a request.
        thread::sleep(Duration::from_millis(50));
    }
}

/// How long the workers' figures may take to agree.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..3 as the top three bits of the first byte.
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// Whether the server masked it (it must not).
    pub masked: bool,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame (1005 when it has none).
    pub fn close_code(&self) -> u16 {
        match self.payload.as_slice() {
            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
            _ => 1005,
        }
    }
}

/// Opcodes for raw frames.
pub mod op {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// A hand-driven WebSocket client, for what a well-behaved client library refuses to send.
#[derive(Debug)]
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

impl RawClient {
    /// Sends an upgrade for `path` and returns the client with the response head, whatever
    /// its status.
    pub fn upgrade(addr: SocketAddr, path: &str, extra: &[&str]) -> (Self, String) {
        let mut client = Self::connect(addr);
        client.send_raw(upgrade_request(path, extra, &[]).as_bytes());
        let head = client.read_head();
        (client, head)
    }

    /// A connection that has sent nothing yet.
    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(tcp(addr))
    }

    /// Wraps a connected socket.
    pub fn from_stream(stream: TcpStream) -> Self {
        Self { stream, buf: Vec::new() }
    }

    /// A connection whose kernel receive buffer is as small as the kernel allows, so that a
    /// client that stops reading backs up into the server after a few KiB.
    pub fn connect_small_buffer(addr: SocketAddr) -> Self {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
            .unwrap_or_else(|e| panic!("socket: {e}"));
        // Before connect, so the window offered in the handshake is already small.
        socket.set_recv_buffer_size(1).unwrap_or_else(|e| panic!("SO_RCVBUF: {e}"));
        socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let stream = TcpStream::from(socket);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        Self::from_stream(stream)
    }

    /// Lets a client made by [`RawClient::connect_small_buffer`] read at loopback speed again:
    /// through a tiny receive buffer, the kernel trickles data in segments of a few hundred
    /// bytes with a delayed ACK between them.
    pub fn grow_receive_buffer(&self) {
        let socket = socket2::SockRef::from(&self.stream);
        socket.set_recv_buffer_size(1 << 20).unwrap_or_else(|e| panic!("SO_RCVBUF: {e}"));
    }

    /// Like [`RawClient::upgrade`], insisting on `101`.
    pub fn open(addr: SocketAddr, path: &str) -> Self {
        let (client, head) = Self::upgrade(addr, path, &[]);
        assert_eq!(status(&head), 101, "upgrade refused: {head}");
        client
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Sends one frame; clients must mask, and `masked = false` breaks that rule on purpose.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let bytes = encode_frame(fin, 0, opcode, payload, masked);
        self.send_raw(&bytes);
    }

    /// Reads the HTTP response head (up to the blank line); later bytes stay buffered.
    pub fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            if self.fill() == 0 {
                return String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            }
        }
    }

    /// The next frame, or `None` once the server has closed the connection.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Reads frames up to the server's close frame and returns its code; data frames before
    /// it are skipped. Panics if the connection ends without one.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame() {
                Some(frame) if frame.opcode == op::CLOSE => return frame.close_code(),
                Some(_) => {}
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// True once the server has closed the TCP connection (reads return end of file).
    pub fn closed_by_server(&mut self) -> bool {
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Half-closes our side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e} (buffered: {} bytes)", self.buf.len()),
        }
    }
}

/// A tungstenite client on a socket with bounded reads.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket on `path` with tungstenite.
pub fn ws(server: &Server, path: &str) -> Ws {
    match tungstenite::client(server.url(path), tcp(server.addr)) {
        Ok((socket, _response)) => socket,
        Err(e) => panic!("connecting to {}: {e}", server.url(path)),
    }
}

/// Sends one message.
pub fn send(socket: &mut Ws, message: Message) {
    socket.send(message).unwrap_or_else(|e| panic!("send: {e}"));
}

/// The next message, control frames included.
pub fn recv(socket: &mut Ws) -> Message {
    socket.read().unwrap_or_else(|e| panic!("read: {e}"))
}

/// The next data message; pings and pongs are skipped (tungstenite answers pings itself).
pub fn recv_data(socket: &mut Ws) -> Message {
    loop {
        match recv(socket) {
            Message::Ping(_) | Message::Pong(_) => {}
            message => return message,
        }
    }
}

/// The next text message; anything else is a failure.
pub fn recv_text(socket: &mut Ws) -> String {
    match recv_data(socket) {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Closes the connection with 1000 and waits until the server has dropped it, so that the
/// server no longer counts it once this returns.
pub fn close_and_wait(mut socket: Ws) {
    let _ = socket.close(None);
    loop {
        match socket.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
}

/// A client of a pub/sub route that has read its `welcome`.
#[derive(Debug)]
pub struct PubSub {
    /// The socket.
    pub ws: Ws,
    /// `conn_id` from the welcome.
    pub conn_id: String,
}

impl PubSub {
    /// Connects to `path` and reads the welcome.
    pub fn connect(server: &Server, path: &str) -> Self {
        let mut ws = ws(server, path);
        let welcome = json(&recv_text(&mut ws));
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let conn_id = welcome["conn_id"].as_str().unwrap_or_else(|| panic!("no conn_id: {welcome}")).to_owned();
        Self { ws, conn_id }
    }

    /// Connects until the server places a connection on `worker` (the kernel spreads
    /// connections over the workers' listeners by address hash, so a few tries suffice).
    pub fn connect_on_worker(server: &Server, path: &str, worker: u32) -> Self {
        for _ in 0..200 {
            let client = Self::connect(server, path);
            if client.worker() == worker {
                return client;
            }
            close_and_wait(client.ws);
        }
        panic!("200 connections and none on worker {worker}");
    }

    /// The worker holding this connection, from `conn_id` (`node-worker-slot.generation`).
    pub fn worker(&self) -> u32 {
        self.hub().1
    }

    /// The node and worker holding this connection, from `conn_id`; the node id may hold
    /// dashes itself, so the fields are taken from the right.
    pub fn hub(&self) -> (String, u32) {
        let mut fields = self.conn_id.rsplitn(3, '-');
        let (_slot, worker, node) = (fields.next(), fields.next(), fields.next());
        match (node, worker.and_then(|w| w.parse().ok())) {
            (Some(node), Some(worker)) => (node.to_owned(), worker),
            _ => panic!("conn_id {:?} does not name a hub", self.conn_id),
        }
    }

    /// Sends one text message as is.
    pub fn send(&mut self, text: &str) {
        send(&mut self.ws, Message::text(text));
    }

    /// The next frame as raw text.
    pub fn next_text(&mut self) -> String {
        recv_text(&mut self.ws)
    }

    /// The next frame as JSON.
    pub fn recv_json(&mut self) -> serde_json::Value {
        json(&self.next_text())
    }

    /// Sends `op` and expects `{"type":"ack","id":id}` next.
    pub fn expect_ack(&mut self, op: &str, id: u64) {
        self.send(op);
        let reply = self.recv_json();
        assert_eq!(reply, serde_json::json!({"type": "ack", "id": id}), "reply to {op}");
    }
}

/// Parses JSON text the server sent.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Encodes a frame; `rsv` holds RSV1..3 in its top three bits, as on the wire.
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(u8::from(fin) << 7 | (rsv & 0x70) | (opcode & 0x0F));
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Decodes one frame from the front of `buf`, with the bytes it used; `None` if incomplete.
pub fn decode_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let key = if masked {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(key) = key {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    let frame = Frame { fin: b0 & 0x80 != 0, rsv: b0 & 0x70, opcode: b0 & 0x0F, masked, payload };
    Some((frame, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for len in [0, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for masked in [false, true] {
                let bytes = encode_frame(true, 0x40, op::BINARY, &payload, masked);
                let decoded = decode_frame(&bytes);
                let Some((frame, used)) = decoded else { panic!("len {len}: incomplete") };
                assert_eq!(used, bytes.len());
                assert_eq!((frame.fin, frame.rsv, frame.opcode, frame.masked), (true, 0x40, op::BINARY, masked));
                assert_eq!(frame.payload, payload);
                assert!(decode_frame(&bytes[..bytes.len() - 1]).is_none());
            }
        }
    }

    #[test]
    fn settings_are_a_valid_config() {
        let parsed = switchboard_core::Config::from_toml(&Settings::default().to_toml());
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn status_of_a_response() {
        assert_eq!(status("HTTP/1.1 404 Not Found\r\n\r\n"), 404);
        assert_eq!(status(""), 0);
    }
}
pub mod native;
pub mod pusher;
