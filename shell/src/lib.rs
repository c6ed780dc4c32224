//! What the Switchboard shells (`switchboard-mio`, `switchboard-smol`) have in common and is not
//! protocol: the startup flow, the listening sockets, what an accept error does, and the Redis
//! sockets' side of the hub's link. The shells keep only what their runtime decides: how readiness
//! arrives and how a worker sleeps.

mod accept;
mod admission;
pub mod cli;
mod driver;
mod history;
mod listen;
pub mod node;
mod redis;
mod turn;
pub mod webhook;

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cli::Command;
use log::{debug, error, info};
use switchboard_core::{AdmissionTable, Config, ConnId, Envelope, HistoryTable, Hub, TlsKeys};

pub use accept::Accepting;
pub use admission::SharedAdmission;
pub use driver::{Message, Next, Peers, Post, Reactor, Worker};
pub use history::{SharedHistory, SharedPresence};
pub use redis::{Flush, RedisSockets, read_redis, resolve, write_redis};
pub use turn::{Sockets, drain_outputs, resume_redis};
pub use webhook::{WebhookClient, Webhooks};

/// One buffer serves every read of a worker: the hub copies what it keeps.
pub const READ_BUFFER: usize = 64 * 1024;
/// Frames offered to one `write_vectored`; Linux takes at most 1024 (`IOV_MAX`).
pub const MAX_SLICES: usize = 64;
/// How stale another worker's figures in `/metrics` and `/api/stats` may be.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Reads spent discarding a closed connection's unread input, so the kernel sends FIN, not RST.
const LINGER_READS: usize = 4;

/// Everything decided before the first worker starts.
#[derive(Debug)]
pub struct Node {
    /// The binary's name, for messages.
    pub program: &'static str,
    /// The effective configuration.
    pub config: Config,
    /// `broker.node_id`, or a random one when the config leaves it empty.
    pub node_id: String,
    /// Worker threads to run (`server.workers`, 0 resolved to the core count).
    pub workers: usize,
    /// One non-blocking listener per worker, all on the same port.
    pub listeners: Vec<TcpListener>,
    /// The address the listeners got (the port is known even for `:0`).
    pub local: SocketAddr,
    /// The node's connection counts, lent to every worker's hub.
    pub admission: SharedAdmission,
    /// Randomness for the hubs (their Pusher socket ids), drawn at start.
    pub seed: u64,
    /// The text of each `auth.public_keys` file, in order.
    pub public_keys: Vec<String>,
    /// The `[tls]` certificate and key, when the listener speaks TLS.
    pub tls: Option<TlsKeys>,
    /// The text of `broker.tls_ca`, when set (the CA `rediss://` servers are checked against).
    pub broker_ca: Option<Vec<u8>>,
    /// The node's channel history, lent to every worker's hub.
    pub history: SharedHistory,
    /// The node's native presence (without Redis), lent to every worker's hub.
    pub presence: SharedPresence,
}

impl Node {
    /// The hub of worker `index`: it counts its connections in the node's shared admission,
    /// so the limits hold for the node whatever the worker count.
    pub fn hub(&self, index: u32) -> io::Result<Hub> {
        let mut hub = Hub::new(self.config.clone(), self.node_id.clone()).map_err(io::Error::other)?;
        if let Some(keys) = &self.tls {
            hub = hub.with_tls(keys.clone());
        }
        if let Some(ca) = &self.broker_ca {
            hub = hub.with_broker_ca(ca).map_err(io::Error::other)?;
        }
        Ok(hub
            .with_public_keys(&self.public_keys)
            .map_err(io::Error::other)?
            .with_worker(index)
            .with_seed(self.seed)
            .with_workers(self.workers)
            .with_admission(Box::new(self.admission.clone()))
            .with_history(Box::new(self.history.clone()))
            .with_presence(Box::new(self.presence.clone())))
    }

    /// Prints `listening on ADDR`, the line tests and scripts wait for. Call it once signals
    /// are handled, so that a signal sent right after it is a drain.
    pub fn announce(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {}", self.local)?;
        out.flush()?;
        info!(
            "{} {}: {} worker(s) on {}, node {}",
            self.program,
            env!("CARGO_PKG_VERSION"),
            self.workers,
            self.local,
            self.node_id
        );
        Ok(())
    }
}

/// A shell's `main`: the command line, the config file, then `serve` with the listeners bound.
pub fn main(program: &'static str, serve: impl FnOnce(Node) -> io::Result<()>) -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::Help => {
            print!("{}", cli::help(program));
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{program} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Serve | Command::CheckConfig | Command::PrintConfig => {}
    }
    let text = match args.config.as_deref().map(|path| (path, std::fs::read_to_string(path))) {
        None => None,
        Some((_, Ok(text))) => Some(text),
        Some((path, Err(e))) => {
            eprintln!("{program}: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match cli::resolve(&args, text.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every file the configuration names, read and checked before anything starts.
    let files = read_public_keys(&config)
        .and_then(|public_keys| Ok((public_keys, read_tls(&config)?, read_broker_ca(&config)?)));
    let (public_keys, tls, broker_ca) = match files {
        Ok(files) => files,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::CheckConfig => println!("{}: ok", args.config.as_deref().unwrap_or("built-in defaults")),
        // Secrets (the API key, app secrets) never leave the process.
        Command::PrintConfig => print!("{}", config.to_toml_redacted()),
        _ => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            if let Err(e) = prepare(program, config, public_keys, tls, broker_ca).and_then(serve) {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// The text of every `auth.public_keys` file, checked as keys; the error names the entry.
fn read_public_keys(config: &Config) -> Result<Vec<String>, String> {
    let mut pems = Vec::with_capacity(config.auth.public_keys.len());
    for (i, path) in config.auth.public_keys.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("auth.public_keys[{i}]: {path}: {e}"))?;
        pems.push(text);
    }
    switchboard_core::check_public_keys(config, &pems).map_err(|e| {
        let path = e.key.strip_prefix("auth.public_keys[").and_then(|rest| rest.strip_suffix(']'));
        let file = path.and_then(|i| i.parse::<usize>().ok()).and_then(|i| config.auth.public_keys.get(i));
        match file {
            Some(file) => format!("{}: {file}: {}", e.key, e.message),
            None => format!("{}: {}", e.key, e.message),
        }
    })?;
    Ok(pems)
}

/// The `[tls]` certificate chain and key, read and checked against each other, when
/// `tls.cert` is set; the error names the key and its file. At start and on SIGHUP.
pub fn read_tls(config: &Config) -> Result<Option<TlsKeys>, String> {
    let tls = &config.tls;
    if !tls.enabled() {
        return Ok(None);
    }
    let cert = std::fs::read(&tls.cert).map_err(|e| format!("tls.cert: {}: {e}", tls.cert))?;
    let key = std::fs::read(&tls.key).map_err(|e| format!("tls.key: {}: {e}", tls.key))?;
    TlsKeys::from_pem(tls, &cert, &key).map(Some).map_err(|e| match e.key.as_str() {
        "tls.cert" => format!("{}: {}: {}", e.key, tls.cert, e.message),
        "tls.key" => format!("{}: {}: {}", e.key, tls.key, e.message),
        _ => format!("{}: {}", e.key, e.message),
    })
}

/// The text of `broker.tls_ca`, checked as a CA list, when it is set; the error names the key
/// and its file.
fn read_broker_ca(config: &Config) -> Result<Option<Vec<u8>>, String> {
    let path = &config.broker.tls_ca;
    if path.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path).map_err(|e| format!("broker.tls_ca: {path}: {e}"))?;
    switchboard_core::check_broker_ca(&pem).map_err(|e| format!("{}: {path}: {}", e.key, e.message))?;
    Ok(Some(pem))
}

fn prepare(
    program: &'static str,
    config: Config,
    public_keys: Vec<String>,
    tls: Option<TlsKeys>,
    broker_ca: Option<Vec<u8>>,
) -> io::Result<Node> {
    let addr: SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server.listen: {e}")))?;
    let workers = match config.server.workers {
        0 => thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listeners = listen::bind(addr, workers)?;
    let local = listeners.first().map(TcpListener::local_addr).transpose()?.unwrap_or(addr);
    let node_id = if config.broker.node_id.is_empty() { random_node_id() } else { config.broker.node_id.clone() };
    let admission = SharedAdmission::new(AdmissionTable::new(&config.limits));
    let seed = random_seed();
    // Epochs come from the node's seed too, so a restarted node starts new ones.
    let history = SharedHistory::new(HistoryTable::new(seed.rotate_left(17) ^ 0x5eed));
    let presence = SharedPresence::default();
    Ok(Node {
        program,
        config,
        node_id,
        workers,
        listeners,
        local,
        admission,
        seed,
        public_keys,
        tls,
        broker_ca,
        history,
        presence,
    })
}

/// 64 random bits from the standard library's hasher keys (themselves drawn from the OS),
/// mixed with the time and the process id: no crate needed for one number at start.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Distinct across restarts and across processes on one host, which is all a node id needs.
fn random_node_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Set to a worker's index, that worker panics as it starts: how the tests check the panic
/// policy of [`spawn_worker`] against the real binaries.
pub const PANIC_WORKER_ENV: &str = "SWITCHBOARD_TEST_PANIC_WORKER";

/// Starts worker `index` on a thread of its own under the node's one failure policy: a worker
/// whose body fails or panics is logged, and `ended(false)` tells the shell, which must then
/// drain the other workers (one worker down means the port serves only part of its clients)
/// and exit non-zero. `ended(true)` follows a normal end. The handle's value is the same flag.
pub fn spawn_worker(
    index: usize,
    body: impl FnOnce() -> io::Result<()> + Send + 'static,
    ended: impl FnOnce(bool) + Send + 'static,
) -> io::Result<thread::JoinHandle<bool>> {
    let fault = std::env::var(PANIC_WORKER_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(index);
    thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if fault {
                panic!("{PANIC_WORKER_ENV}={index}");
            }
            body()
        }));
        let ok = match outcome {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                error!("worker {index} stopped: {e}");
                false
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!("worker {index} panicked: {message}; draining the others");
                false
            }
        };
        ended(ok);
        ok
    })
}

/// How one write to a client's socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWrite {
    /// Some or all was written (or the write was interrupted): `Hub::wants_write` tells
    /// whether to try again next turn.
    Wrote,
    /// The socket is full: wait for it to become writable.
    Blocked,
    /// The write failed; the hub was told (`handle_eof`), and its Close event follows.
    Failed,
}

/// One `write_vectored` of what the hub queued for client `id`: one per connection per turn,
/// so a connection with a long backlog does not hold up the others.
pub fn write_client(hub: &mut Hub, now: Instant, id: ConnId, mut stream: impl Write) -> ClientWrite {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let filled = hub.transmit(id, &mut slices);
    if filled == 0 {
        return ClientWrite::Wrote;
    }
    match stream.write_vectored(&slices[..filled]) {
        Ok(n) => {
            hub.handle_written(now, id, n);
            ClientWrite::Wrote
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ClientWrite::Blocked,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => ClientWrite::Wrote,
        Err(_) => {
            hub.handle_eof(now, id);
            ClientWrite::Failed
        }
    }
}

/// What the hub published in this turn (gathered by [`drain_outputs`]), for every other worker
/// of the process in one message. One message per publish would wake a peer at the first of
/// them, and it would then write each frame to its subscribers on its own instead of a turn's
/// frames together. Allocates nothing when the turn published nothing.
pub fn take_publishes(publishes: &mut Vec<Envelope>) -> Option<Arc<[Envelope]>> {
    (!publishes.is_empty()).then(|| std::mem::take(publishes).into())
}

/// True once a drain has finished: nothing left, or its deadline passed.
pub fn drained(hub: &Hub, deadline: Option<Instant>, now: Instant) -> bool {
    let done = deadline.is_some_and(|deadline| hub.connection_count() == 0 || now >= deadline);
    if done {
        debug!("drained; {} connection(s) left", hub.connection_count());
    }
    done
}

/// Reads and discards what a closed connection's peer still sent. Unread input makes close()
/// send RST, which can destroy the response still in flight (an HTTP error, our close frame)
/// before the peer reads it.
pub fn linger(mut stream: impl Read, buf: &mut [u8]) {
    for _ in 0..LINGER_READS {
        match stream.read(buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs to nobody: what a turn publishes is all that is watched.
    struct NoSockets;

    impl RedisSockets for NoSockets {
        fn close(&mut self, _: switchboard_core::LinkConn) {}
        fn connect(&mut self, _: switchboard_core::LinkConn, _: SocketAddr) -> io::Result<()> {
            Err(io::Error::other("no sockets here"))
        }
        fn flush(&mut self, _: &mut Hub, _: Instant, _: switchboard_core::LinkConn) -> bool {
            true
        }
    }

    impl Sockets for NoSockets {
        fn transmit(&mut self, _: ConnId) {}
        fn close_client(&mut self, _: ConnId) {}
        fn webhook(&mut self, _: switchboard_core::WebhookRequest) -> bool {
            false
        }
    }

    #[test]
    fn a_turns_publishes_travel_as_one_batch_in_order() {
        let mut hub = Hub::new(Config::default(), "test").expect("defaults are valid").with_workers(2);
        let now = Instant::now();
        let mut publishes = Vec::new();
        drain_outputs(&mut hub, now, &mut NoSockets, &mut publishes);
        assert!(take_publishes(&mut publishes).is_none(), "nothing published, nothing sent");
        for data in ["1", "2", "3"] {
            hub.handle_publish(now, "news", data).expect("valid channel and JSON");
        }
        drain_outputs(&mut hub, now, &mut NoSockets, &mut publishes);
        let batch = take_publishes(&mut publishes).expect("three publishes");
        let payloads: Vec<&[u8]> = batch.iter().map(|e| &e.payload[..]).collect();
        assert_eq!(payloads, [b"1", b"2", b"3"]);
        assert!(take_publishes(&mut publishes).is_none(), "the batch took them all");
    }
}
