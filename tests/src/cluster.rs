//! Several nodes sharing a real `redis-server`: the server's process, a few Redis commands, node
//! configs, and a subscriber that reads on a thread of its own so that a test can watch many
//! at once.
//!
//! `scripts/test` installs `redis-server` when it is missing. A test without Redis fails, naming
//! the install step, unless `SWITCHBOARD_SKIP_REDIS` asks to skip it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{Message, PubSub, Server, Settings, body, http, status};

/// Leases are checked at this scale: short, so a dead node leaves presence quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// `broker.breaker.open_for`.
pub const OPEN_FOR: Duration = Duration::from_secs(1);
/// `broker.backoff.max`.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// `http.api_key` of cluster nodes (presence and `/api/publish` need it).
pub const API_KEY: &str = "cluster-key";
/// The oldest Redis the link works with (`SET .. GET`).
const MIN_VERSION: (u32, u32) = (6, 2);
/// How long Redis may take to answer its first PING.
const REDIS_START: Duration = Duration::from_secs(10);

/// The `[broker]` lines of a node of the cluster around the Redis on `port`.
pub fn broker_toml(port: u16) -> String {
    format!(
        r#"kind = "redis"
url = "redis://127.0.0.1:{port}"
lease_ttl = "{lease}ms"

[broker.backoff]
min = "50ms"
max = "{backoff}ms"

[broker.breaker]
failure_threshold = 2
open_for = "{open}ms"
"#,
        lease = LEASE_TTL.as_millis(),
        backoff = BACKOFF_MAX.as_millis(),
        open = OPEN_FOR.as_millis(),
    )
}

/// Starts node `n1`, `n2`, … of a cluster around the Redis on `port`, each with `workers`.
pub fn start_nodes(bin: &Path, port: u16, count: usize, workers: usize) -> Vec<Server> {
    (1..=count)
        .map(|n| {
            let settings = Settings {
                workers,
                api_key: API_KEY,
                node_id: format!("n{n}"),
                broker: broker_toml(port),
                ..Settings::default()
            };
            Server::with(bin, &settings)
        })
        .collect()
}

/// A `redis-server` on a free port of 127.0.0.1, without persistence; killed on drop.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    /// Its port, kept across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Arguments beyond the port, bind address and persistence.
    extra: Vec<String>,
}

impl Redis {
    /// Starts one, or returns `None` (after saying why) when `redis-server` is not installed
    /// and `SWITCHBOARD_SKIP_REDIS` asks to skip; without it a missing Redis fails the test.
    pub fn start() -> Option<Self> {
        Self::start_with(&[], free_port)
    }

    /// Starts one with `extra` arguments on a port `port` picks.
    pub fn start_with(extra: &[&str], port: fn() -> u16) -> Option<Self> {
        if let Err(why) = check_version() {
            assert!(
                std::env::var_os("SWITCHBOARD_SKIP_REDIS").is_some(),
                "{why} (install it with `apt-get install redis-server`, as scripts/test does, \
                 or set SWITCHBOARD_SKIP_REDIS=1 to skip this test)"
            );
            eprintln!("skipped on request (SWITCHBOARD_SKIP_REDIS): {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut redis = Self { child: None, port: 0, dir, extra };
        // The port is free when chosen; another process could take it before Redis binds.
        for _ in 0..3 {
            redis.port = port();
            if redis.spawn().is_ok() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start; its log:\n{}", redis.log());
    }

    /// Kills the server with SIGKILL (no shutdown, as in a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("restarting redis-server on {}: {e}\n{}", self.port, self.log()));
    }

    /// Whether the server process is running (not killed).
    pub fn child_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends one command and returns its reply.
    pub fn command(&self, args: &[&str]) -> io::Result<Reply> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        read_reply(&mut BufReader::new(stream))
    }

    /// How many connections are subscribed to Redis channel `key`.
    pub fn subscribers(&self, key: &str) -> i64 {
        match self.command(&["PUBSUB", "NUMSUB", key]) {
            Ok(Reply::Array(items)) => match items.get(1) {
                Some(Reply::Integer(n)) => *n,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Waits up to `limit` until `hubs` hubs hold pub/sub `channel` in Redis, so a publish
    /// from any node reaches them all.
    pub fn wait_subscribed(&self, channel: &str, hubs: usize, limit: Duration) {
        let key = format!("switchboard:ch:{channel}");
        wait_until(limit, &format!("{hubs} hubs subscribed to {key}"), || self.subscribers(&key) == hubs as i64);
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START;
        loop {
            if matches!(self.command(&["PING"]), Ok(Reply::Simple(ref pong)) if pong == "PONG") {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(io::Error::other(format!("redis-server exited: {status}")));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::other("redis-server did not answer PING"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis reply, as far as the tests read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$n` (None for `$-1`)
    Bulk(Option<String>),
    /// `*n` (empty for `*-1`)
    Array(Vec<Self>),
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    let number = || rest.parse::<i64>().map_err(|_| io::Error::other(format!("bad RESP line {line:?}")));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Integer(number()?)),
        "$" => {
            let Ok(len) = usize::try_from(number()?) else { return Ok(Reply::Bulk(None)) };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            data.truncate(len);
            Ok(Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned())))
        }
        "*" => {
            let count = usize::try_from(number()?).unwrap_or(0);
            (0..count).map(|_| read_reply(reader)).collect::<io::Result<_>>().map(Reply::Array)
        }
        _ => Err(io::Error::other(format!("bad RESP line {line:?}"))),
    }
}

/// Ok when `redis-server` is installed and recent enough; otherwise why not.
fn check_version() -> Result<(), String> {
    let output = Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("redis-server: {e} (scripts/test installs it; or apt-get install redis-server)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "Redis server v=7.0.15 sha=…"
    let version = text.split_whitespace().find_map(|w| w.strip_prefix("v=")).unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(format!(
            "redis-server {version:?} is older than {}.{} (`{}`)",
            MIN_VERSION.0,
            MIN_VERSION.1,
            text.trim()
        ));
    }
    Ok(())
}

/// The next message's data within `limit`, or `None`.
pub fn next_data(client: &mut PubSub, limit: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    client.ws.get_mut().set_read_timeout(Some(limit)).ok()?;
    while Instant::now() < deadline {
        let frame = match client.ws.read() {
            Ok(Message::Text(text)) => serde_json::from_str::<serde_json::Value>(text.as_str()).ok()?,
            Ok(_) => continue,
            Err(_) => return None,
        };
        if frame["type"] == "message" {
            return Some(frame["data"].clone());
        }
    }
    None
}

/// For each of `names`, a client on `a` and one on `b` subscribed to it.
pub fn subscribe_pairs(a: &Server, b: &Server, names: &[String]) -> Vec<(PubSub, PubSub)> {
    let subscribed = |server: &Server, name: &str| {
        let mut client = PubSub::connect(server, "/ws");
        client.expect_ack(&format!(r#"{{"op":"subscribe","channel":"{name}","id":1}}"#), 1);
        client
    };
    names.iter().map(|name| (subscribed(a, name), subscribed(b, name))).collect()
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster on 127.0.0.1: `masters` masters with one replica each, made by
/// `redis-cli --cluster create`; every server is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// Masters first (as created), then their replicas.
    pub servers: Vec<Redis>,
}

impl RedisCluster {
    /// Starts and joins the servers; waits until every one says `cluster_state:ok`.
    pub fn start(masters: usize) -> Option<Self> {
        let args =
            ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file", "nodes.conf"];
        let mut servers = Vec::new();
        for _ in 0..masters * 2 {
            servers.push(Redis::start_with(&args, free_cluster_port)?);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!("redis-cli: {e} (install it with `apt-get install redis-tools`, as scripts/test does)")
        });
        assert!(out.status.success(), "redis-cli --cluster create failed:\n{}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { servers };
        for server in &cluster.servers {
            wait_until(
                Duration::from_secs(20),
                "the cluster is ok on every node",
                || matches!(server.command(&["CLUSTER", "INFO"]), Ok(Reply::Bulk(Some(info))) if info.contains("cluster_state:ok")),
            );
        }
        cluster.wait_replicas_synced();
        Some(cluster)
    }

    /// Waits until every running replica has synced with its master: a replica that never
    /// did would not stand for election when its master dies.
    pub fn wait_replicas_synced(&self) {
        for server in self.servers.iter().filter(|s| s.child_running()) {
            wait_until(Duration::from_secs(30), "every replica has synced with its master", || {
                match server.command(&["INFO", "replication"]) {
                    Ok(Reply::Bulk(Some(info))) => {
                        info.contains("role:master") || info.contains("master_link_status:up")
                    }
                    _ => false,
                }
            });
        }
    }

    /// The servers that are masters now (by `ROLE`), skipping dead ones.
    pub fn masters(&self) -> Vec<&Redis> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .filter(|s| matches!(s.command(&["ROLE"]), Ok(Reply::Array(r)) if r.first() == Some(&Reply::Bulk(Some("master".into())))))
            .collect()
    }

    /// The shard channels with subscribers on `server` that start with `prefix`.
    pub fn shard_channels(server: &Redis, prefix: &str) -> Vec<String> {
        match server.command(&["PUBSUB", "SHARDCHANNELS", &format!("{prefix}*")]) {
            Ok(Reply::Array(items)) => {
                items.into_iter().filter_map(|r| if let Reply::Bulk(Some(s)) = r { Some(s) } else { None }).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A port of 127.0.0.1 free when asked.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// A pub/sub client whose messages are read on a thread and stamped with their arrival time.
#[derive(Debug)]
pub struct Listener {
    /// `conn_id` from the welcome.
    pub conn_id: String,
    /// `n1`, `n2`, … and the worker that holds the connection.
    pub hub: (String, u32),
    messages: Receiver<(Instant, serde_json::Value)>,
    _reader: JoinHandle<()>,
}

impl Listener {
    /// Subscribes `client` to `channel` with `presence` info (JSON), then hands its reads to a thread.
    pub fn subscribe(mut client: PubSub, channel: &str, presence: &str) -> Self {
        client.expect_ack(&format!(r#"{{"op":"subscribe","channel":"{channel}","presence":{presence},"id":1}}"#), 1);
        let hub = client.hub();
        let mut ws = client.ws;
        // Quiet stretches (Redis down) are part of the tests; the thread ends when the server goes.
        let _ = ws.get_ref().set_read_timeout(Some(Duration::from_secs(120)));
        let (tx, messages) = mpsc::channel();
        let reader = thread::spawn(move || {
            while let Ok(message) = ws.read() {
                if let Message::Text(text) = message {
                    let at = Instant::now();
                    let Ok(value) = serde_json::from_str(text.as_str()) else { return };
                    if tx.send((at, value)).is_err() {
                        return;
                    }
                }
            }
        });
        Self { conn_id: client.conn_id, hub, messages, _reader: reader }
    }

    /// The next `message` frame (its arrival time and the whole frame), if one comes within `limit`.
    pub fn next(&self, limit: Duration) -> Option<(Instant, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok((at, frame)) if frame["type"] == "message" => return Some((at, frame)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every `message` frame that has arrived, without waiting.
    pub fn drain(&self) -> Vec<serde_json::Value> {
        self.messages.try_iter().map(|(_, frame)| frame).filter(|frame| frame["type"] == "message").collect()
    }
}

/// `POST /api/publish` of `data` to `channel` on `addr`; returns the status.
pub fn api_publish(addr: SocketAddr, channel: &str, data: &str) -> u16 {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    status(&http(addr, &request))
}

/// `GET /api/presence?channel=` on `addr`: the members' `conn_id`s and whether every node was asked.
pub fn api_presence(addr: SocketAddr, channel: &str) -> (Vec<String>, bool) {
    let request =
        format!("GET /api/presence?channel={channel} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n");
    let response = http(addr, &request);
    assert_eq!(status(&response), 200, "{response}");
    let value: serde_json::Value =
        serde_json::from_str(body(&response)).unwrap_or_else(|e| panic!("presence is not JSON ({e}): {response}"));
    (member_ids(&value), value["complete"] == true)
}

/// The `conn_id`s of a `presence` answer, sorted.
pub fn member_ids(presence: &serde_json::Value) -> Vec<String> {
    let members = presence["members"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut ids: Vec<String> = members.iter().filter_map(|m| m["conn_id"].as_str().map(String::from)).collect();
    ids.sort();
    ids
}

/// The value of metric sample `series` (e.g. `switchboard_broker_state{state="open"}`) on `addr`.
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    body(&response).lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The body of `GET /healthz` on `addr`, with its status.
pub fn healthz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let response = http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    (status(&response), serde_json::from_str(body(&response)).unwrap_or(serde_json::Value::Null))
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`. Returns the wait.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP proxy in front of a Redis that can go deaf on purpose: after [`Blackhole::mute`],
/// what Redis sends to the subscriber connections open at that moment (those that sent a
/// `SUBSCRIBE`) is read and thrown away, while commands keep their answers. That is a
/// subscription lost without a sign: what a failover behind a proxy can do. Connections made
/// after `mute` pass everything.
#[derive(Debug)]
pub struct Blackhole {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    state: std::sync::Arc<BlackholeState>,
}

#[derive(Debug, Default)]
struct BlackholeState {
    /// Connections accepted so far; those numbered below `muted_below` are muted.
    accepted: std::sync::atomic::AtomicU64,
    muted_below: std::sync::atomic::AtomicU64,
}

impl Blackhole {
    /// Starts a proxy to the Redis on `redis_port`.
    pub fn start(redis_port: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().expect("an address").port();
        let state = Arc::new(BlackholeState::default());
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)) else { continue };
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let subscriber = Arc::new(AtomicBool::new(false));
                let (mut from_client, mut to_server) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let seen = Arc::clone(&subscriber);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                            seen.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Both);
                });
                let (mut from_server, mut to_client) = (server, client);
                let state = Arc::clone(&shared);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let muted =
                            number < state.muted_below.load(Ordering::SeqCst) && subscriber.load(Ordering::SeqCst);
                        if !muted && to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, state }
    }

    /// From now on, the subscriber connections open so far hear nothing from Redis.
    pub fn mute(&self) {
        use std::sync::atomic::Ordering;
        let accepted = self.state.accepted.load(Ordering::SeqCst);
        self.state.muted_below.store(accepted, Ordering::SeqCst);
    }
}
