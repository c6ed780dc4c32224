//! `switchboard-smol`: the Switchboard hub on smol's reactor (async-io), one thread and one
//! `Hub` per worker.
//!
//! The main thread reads the command line and the config file, starts the workers and waits
//! for them; a signal thread turns SIGTERM/SIGINT into a drain (see `worker.rs` for the loop).

mod mailbox;
mod worker;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_io::Async;
use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use switchboard_core::cli::{self, Command};
use switchboard_core::{Config, Hub};

use mailbox::{Mailbox, Message};
use worker::Worker;

const PROGRAM: &str = "switchboard-smol";
/// Deep enough for a burst of thousands of connects while workers are busy; the kernel caps
/// it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::Help => {
            print!("{}", cli::help(PROGRAM));
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Serve | Command::CheckConfig | Command::PrintConfig => {}
    }
    let text = match args.config.as_deref().map(|path| (path, std::fs::read_to_string(path))) {
        None => None,
        Some((_, Ok(text))) => Some(text),
        Some((path, Err(e))) => {
            eprintln!("{PROGRAM}: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match cli::resolve(&args, text.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::CheckConfig => println!("{}: ok", args.config.as_deref().unwrap_or("built-in defaults")),
        Command::PrintConfig => print!("{}", config.to_toml()),
        _ => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            if let Err(e) = serve(&config) {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn serve(config: &Config) -> io::Result<()> {
    let addr: SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server.listen: {e}")))?;
    let count = match config.server.workers {
        0 => thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // The first listener decides the port, so `127.0.0.1:0` works: the others join the port it
    // was given and the kernel spreads new connections across them.
    let first = bind(addr)?;
    let local = first.local_addr()?;
    let mut listeners = vec![Async::new(first)?];
    for _ in 1..count {
        listeners.push(Async::new(bind(local)?)?);
    }
    // Installed before the address is announced, so a signal sent right after it is a drain.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;

    let node_id = if config.broker.node_id.is_empty() { random_node_id() } else { config.broker.node_id.clone() };
    let peers: Arc<[Arc<Mailbox>]> = (0..count).map(|_| Arc::default()).collect();
    let mut threads = Vec::with_capacity(count);
    for (index, listener) in (0u32..).zip(listeners) {
        let hub = Hub::new(config.clone(), node_id.clone()).with_worker(index);
        let worker = Worker::new(index, hub, listener, Arc::clone(&peers));
        let (peers, timeout) = (Arc::clone(&peers), config.drain.timeout);
        threads.push(thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| async_io::block_on(worker.run())));
            if result.is_err() {
                error!("worker {index} panicked");
                // One worker down means the port serves only part of its clients: stop all.
                shutdown(&peers, timeout);
            }
            result.is_ok()
        })?);
    }

    let mut out = io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    drop(out);
    info!("{PROGRAM} {}: {count} worker(s) on {local}, node {node_id}", env!("CARGO_PKG_VERSION"));

    let (peers, timeout) = (Arc::clone(&peers), config.drain.timeout);
    // Detached: it blocks in the signal iterator, and the process ends when the workers do.
    thread::Builder::new().name("signals".into()).spawn(move || {
        let mut draining = false;
        for signal in signals.forever() {
            if draining {
                warn!("second signal {signal}: exiting now");
                std::process::exit(128 + signal);
            }
            info!("signal {signal}: draining for up to {timeout:?}");
            draining = true;
            shutdown(&peers, timeout);
        }
    })?;

    // Every thread is joined, failed or not: the others are still draining.
    let failed = threads.into_iter().map(|thread| thread.join().unwrap_or(false)).filter(|ok| !ok).count();
    if failed == 0 { Ok(()) } else { Err(io::Error::other("a worker failed")) }
}

fn shutdown(peers: &[Arc<Mailbox>], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for peer in peers {
        peer.post(Message::Shutdown { deadline });
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for the old process's connections to leave TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Distinct across restarts and across processes on one host, which is all a node id needs.
fn random_node_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}
