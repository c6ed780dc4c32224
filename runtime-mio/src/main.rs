//! `switchboard-mio`: the Switchboard hub on mio, one event loop and one `Hub` per worker thread.
//!
//! The main thread starts the workers and waits for signals; the workers do everything else
//! (see `worker.rs`). Startup and listeners come from `switchboard-shell`.

mod bus;
mod redis;
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use log::{info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use switchboard_shell::{Message, Node};

use bus::{Bus, Peer};
use worker::Worker;

const SIGNAL: Token = Token(0);
/// A worker thread has ended.
const WORKER_DONE: Token = Token(1);

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-mio", serve)
}

/// A running worker thread and the way to reach it.
struct WorkerHandle {
    peer: Peer,
    thread: Option<JoinHandle<bool>>,
}

fn serve(mut node: Node) -> io::Result<()> {
    let mut poll = Poll::new()?;
    // Installed before the address is announced, so a signal sent right after it is a drain.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    poll.registry().register(&mut signals, SIGNAL, Interest::READABLE)?;
    let done = Arc::new(Waker::new(poll.registry(), WORKER_DONE)?);
    let (report, finished) = mpsc::channel();

    // Every worker's way in exists before any worker starts, so each can reach all the others.
    let count = node.workers;
    let mut ends = Vec::with_capacity(count);
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
        let (control, inbox) = mpsc::channel();
        peers.push(Peer::new(control, waker));
        ends.push((poll, inbox));
    }
    let listeners = std::mem::take(&mut node.listeners);
    let mut workers = Vec::with_capacity(count);
    for (index, (listener, (poll, inbox))) in (0u32..).zip(listeners.into_iter().zip(ends)) {
        let listener = mio::net::TcpListener::from_std(listener);
        let worker = Worker::new(index, poll, listener, inbox, node.hub(index)?, Bus::new(index, &peers))?;
        let (report, done) = (report.clone(), Arc::clone(&done));
        let thread = switchboard_shell::spawn_worker(
            index as usize,
            move || worker.run(),
            move |ok| {
                // `JoinHandle::is_finished` may still be false right after a wake sent from here, so
                // the result itself travels to the main thread.
                let _ = report.send((index as usize, ok));
                let _ = done.wake();
            },
        )?;
        workers.push(WorkerHandle { peer: peers[index as usize].clone(), thread: Some(thread) });
    }
    drop(peers);
    node.announce()?;

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
                    info!("signal {signal}: draining for up to {:?}", node.config.drain.timeout);
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
            if !result {
                failed = true;
                // One worker down means the port serves only part of its clients: stop all.
                drain = true;
            }
        }
        if drain && !draining {
            draining = true;
            let deadline = Instant::now() + node.config.drain.timeout;
            for worker in &workers {
                worker.peer.send(Message::Shutdown { deadline });
            }
        }
    }
    if failed { Err(io::Error::other("a worker failed")) } else { Ok(()) }
}
