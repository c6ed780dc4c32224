//! `switchboard-smol`: the Switchboard hub on smol's reactor (async-io), one thread and one
//! `Hub` per worker.
//!
//! The main thread starts the workers and waits for them; a signal thread turns SIGTERM/SIGINT
//! into a drain (see `worker.rs` for the loop). Startup and listeners come from
//! `switchboard-shell`.

mod mailbox;
mod redis;
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use async_io::Async;
use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use switchboard_shell::Node;

use mailbox::Mailbox;
use switchboard_shell::Message;
use worker::Worker;

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-smol", serve)
}

fn serve(mut node: Node) -> io::Result<()> {
    // Installed before the address is announced, so a signal sent right after it is a drain.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let timeout = node.config.drain.timeout;
    let peers: Arc<[Arc<Mailbox>]> = (0..node.workers).map(|_| Arc::default()).collect();
    let mut threads = Vec::with_capacity(node.workers);
    for (index, listener) in (0u32..).zip(std::mem::take(&mut node.listeners)) {
        let worker = Worker::new(index, node.hub(index)?, Async::new(listener)?, Arc::clone(&peers));
        let peers = Arc::clone(&peers);
        let body = move || {
            async_io::block_on(worker.run());
            Ok(())
        };
        threads.push(switchboard_shell::spawn_worker(index as usize, body, move |ok| {
            if !ok {
                // One worker down means the port serves only part of its clients: stop all.
                shutdown(&peers, timeout);
            }
        })?);
    }
    node.announce()?;

    let peers = Arc::clone(&peers);
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
