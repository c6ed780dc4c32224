//! `switchboard-mio`: the Switchboard hub on mio, one event loop and one `Hub` per worker thread.
//!
//! The main thread only reads the command line and the config file, starts the workers and
//! waits for signals; the workers do everything else (see `worker.rs`).

mod bus;
mod listener;
mod worker;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use switchboard_core::cli::{self, Command};
use switchboard_core::{Config, Hub};

use bus::{Bus, Control, Peer};
use worker::Worker;

const PROGRAM: &str = "switchboard-mio";
const SIGNAL: Token = Token(0);
/// A worker thread has ended.
const WORKER_DONE: Token = Token(1);

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
    let text = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("{PROGRAM}: {path}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let config = match cli::resolve(&args, text.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::CheckConfig => {
            println!("{}: ok", args.config.as_deref().unwrap_or("built-in defaults"));
            ExitCode::SUCCESS
        }
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        _ => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A running worker thread and the way to reach it.
struct WorkerHandle {
    peer: Peer,
    thread: Option<JoinHandle<()>>,
}

fn serve(config: Config) -> io::Result<()> {
    let addr: SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server.listen: {e}")))?;
    let count = match config.server.workers {
        0 => thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listeners = listener::bind(addr, count)?;
    let local = listeners.first().map(mio::net::TcpListener::local_addr).transpose()?.unwrap_or(addr);

    let mut poll = Poll::new()?;
    // Installed before the address is announced, so a signal sent right after it is a drain.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    poll.registry().register(&mut signals, SIGNAL, Interest::READABLE)?;
    let done = Arc::new(Waker::new(poll.registry(), WORKER_DONE)?);
    let (report, finished) = mpsc::channel();

    let node_id = if config.broker.node_id.is_empty() { random_node_id() } else { config.broker.node_id.clone() };
    // Every worker's way in exists before any worker starts, so each can reach all the others.
    let mut ends = Vec::with_capacity(count);
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
        let (control, inbox) = mpsc::channel();
        peers.push(Peer::new(control, waker));
        ends.push((poll, inbox));
    }
    let mut workers = Vec::with_capacity(count);
    for (index, (listener, (poll, inbox))) in (0u32..).zip(listeners.into_iter().zip(ends)) {
        let hub = Hub::new(config.clone(), node_id.clone()).with_worker(index).with_share(count);
        let worker = Worker::new(poll, listener, inbox, hub, Bus::new(index, &peers))?;
        let thread = spawn_worker(index as usize, worker, (report.clone(), Arc::clone(&done)))?;
        workers.push(WorkerHandle { peer: peers[index as usize].clone(), thread: Some(thread) });
    }
    drop(peers);

    let mut out = io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    drop(out);
    info!("{PROGRAM} {}: {count} worker(s) on {local}, node {node_id}", env!("CARGO_PKG_VERSION"));

    let mut events = Events::with_capacity(8);
    let mut draining = false;
    let mut failed = false;
    let mut running = workers.len();
    while running > 0 {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut drain = false;
        for event in &events {
            if event.token() == SIGNAL {
                for signal in signals.pending() {
                    if draining {
                        warn!("second signal {signal}: exiting now");
                        std::process::exit(128 + signal);
                    }
                    info!("signal {signal}: draining for up to {:?}", config.drain.timeout);
                    drain = true;
                }
            }
        }
        while let Ok((index, result)) = finished.try_recv() {
            running -= 1;
            if let Some(thread) = workers.get_mut(index).and_then(|w| w.thread.take()) {
                // The worker sent its result as its last act, so this join returns at once.
                let _ = thread.join();
            }
            if let Err(e) = result {
                error!("worker {index} stopped: {e}");
                failed = true;
                // One worker down means the port serves only part of its clients: stop all.
                drain = true;
            }
        }
        if drain && !draining {
            draining = true;
            let deadline = Instant::now() + config.drain.timeout;
            for worker in &workers {
                worker.peer.send(Control::Shutdown { deadline });
            }
        }
    }
    if failed { Err(io::Error::other("a worker failed")) } else { Ok(()) }
}

/// Where a worker reports its end: its index and result, then a wake of the main thread.
type Finished = (Sender<(usize, io::Result<()>)>, Arc<Waker>);

fn spawn_worker(index: usize, worker: Worker, (report, done): Finished) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        // `JoinHandle::is_finished` may still be false right after a wake sent from here, so the
        // result itself travels to the main thread.
        let _ = report.send((index, worker.run()));
        let _ = done.wake();
    })
}

/// Distinct across restarts and across processes on one host, which is all a node id needs.
fn random_node_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}
