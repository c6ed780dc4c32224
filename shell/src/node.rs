//! A node's threads, written once: one per worker, a signal thread, and the main thread that
//! turns signals and worker failures into a drain. A runtime supplies how to build a worker.

use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use switchboard_core::Hub;

use crate::{Message, Node, Peers, Post, Webhooks, spawn_worker, webhook};

/// How long the end of a node waits for webhook deliveries still in flight.
const WEBHOOK_GRACE: Duration = Duration::from_secs(1);

/// A worker's thread body; it returns when its drain is over.
pub type Run = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// What the main thread hears.
enum Event {
    Signal(i32),
    /// A worker's thread ended, well (`true`) or not.
    Ended(bool),
}

/// Runs `node`: `posts` reach each worker (one per worker, made before any starts, so each can
/// reach all the others), and `start` builds worker `index` around its hub, its listener and
/// its peers; every worker gets its own thread. SIGHUP re-reads the `[tls]` files (a bad one is
/// logged and the old keys kept). The first SIGTERM or SIGINT drains every worker
/// for up to `drain.timeout`, a second exits at once; a worker that fails or panics drains the
/// others and the node exits with an error once all have ended. Webhooks go out from a few
/// threads of the node's (one per worker, at most [`webhook::MAX_THREADS`]), and their outcomes
/// come back to the asking worker through its `Post`.
pub fn run(
    mut node: Node,
    posts: Vec<Post>,
    mut start: impl FnMut(u32, Hub, std::net::TcpListener, Peers) -> io::Result<Run>,
) -> io::Result<()> {
    // Installed before the address is announced, so a signal sent right after it is a drain.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (events, inbox) = mpsc::channel();
    let webhooks = Webhooks::start(node.workers.clamp(1, webhook::MAX_THREADS), webhook::TIMEOUT)?;
    let mut threads = Vec::with_capacity(node.workers);
    for (index, listener) in (0u32..).zip(std::mem::take(&mut node.listeners)) {
        let own = posts.get(index as usize).ok_or_else(|| io::Error::other("more listeners than workers"))?;
        let peers = Peers::new(index as usize, &posts).with_webhooks(webhooks.client(Arc::clone(own)));
        let run = start(index, node.hub(index)?, listener, peers)?;
        let events = events.clone();
        let ended = move |ok| {
            let _ = events.send(Event::Ended(ok));
        };
        threads.push(spawn_worker(index as usize, run, ended)?);
    }
    node.announce()?;
    // Detached: it blocks in the signal iterator, and the process ends when the workers do.
    thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    })?;

    let timeout = node.config.drain.timeout;
    let (mut running, mut draining, mut failed) = (threads.len(), false, false);
    while running > 0 {
        let Ok(event) = inbox.recv() else { break };
        let drain = match event {
            Event::Signal(SIGHUP) => {
                reload_tls(&node, &posts);
                false
            }
            Event::Signal(signal) if draining => {
                warn!("second signal {signal}: exiting now");
                std::process::exit(128 + signal);
            }
            Event::Signal(signal) => {
                info!("signal {signal}: draining for up to {timeout:?}");
                true
            }
            Event::Ended(ok) => {
                running -= 1;
                failed |= !ok;
                // One worker down means the port serves only part of its clients: stop all.
                !ok
            }
        };
        if drain && !draining {
            draining = true;
            let deadline = Instant::now() + timeout;
            for post in &posts {
                post(Message::Shutdown { deadline });
            }
        }
    }
    // Every thread has reported its end: these joins return at once.
    for thread in threads {
        let _ = thread.join();
    }
    // The workers' clients went with them: the delivery threads end once idle.
    webhooks.shutdown(WEBHOOK_GRACE);
    if failed { Err(io::Error::other("a worker failed")) } else { Ok(()) }
}

/// SIGHUP: the `[tls]` files again, for every worker's new handshakes; open connections keep
/// their sessions. A file that no longer reads or matches is logged, and the old keys stay.
fn reload_tls(node: &Node, posts: &[Post]) {
    match crate::read_tls(&node.config) {
        Ok(Some(keys)) => {
            info!("SIGHUP: reloaded tls.cert {} and tls.key {}", node.config.tls.cert, node.config.tls.key);
            for post in posts {
                post(Message::TlsKeys(keys.clone()));
            }
        }
        Ok(None) => info!("SIGHUP: no [tls] to reload"),
        Err(e) => warn!("SIGHUP: {e}; keeping the certificate in use"),
    }
}
