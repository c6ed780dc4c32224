//! `switchboard-mio`: the Switchboard hub on mio, one event loop and one `Hub` per worker thread.
//!
//! `switchboard_shell` runs the node (threads, signals, the drain) and each worker's turn; this
//! crate says how mio registers sockets, reports readiness and wakes a worker (`worker.rs`,
//! `bus.rs`, `redis.rs`).

mod bus;
mod redis;
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;

use mio::{Poll, Waker};
use switchboard_shell::Node;
use switchboard_shell::node::Started;

use bus::{Bus, Peer};
use worker::Worker;

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-mio", serve)
}

fn serve(node: Node) -> io::Result<()> {
    // Every worker's way in exists before any worker starts, so each can reach all the others.
    let mut ends = Vec::with_capacity(node.workers);
    let mut peers = Vec::with_capacity(node.workers);
    for _ in 0..node.workers {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
        let (control, inbox) = mpsc::channel();
        peers.push(Peer::new(control, waker));
        ends.push(Some((poll, inbox)));
    }
    switchboard_shell::node::run(node, |index, hub, listener| {
        let Some((poll, inbox)) = ends.get_mut(index as usize).and_then(Option::take) else {
            return Err(io::Error::other("more listeners than workers"));
        };
        let listener = mio::net::TcpListener::from_std(listener);
        let worker = Worker::new(index, poll, listener, inbox, hub, Bus::new(index, &peers))?;
        let peer = peers[index as usize].clone();
        Ok(Started { run: Box::new(move || worker.run()), post: Arc::new(move |message| peer.send(message)) })
    })
}
