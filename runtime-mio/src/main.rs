//! `switchboard-mio`: the Switchboard hub on mio, one event loop and one `Hub` per worker thread.
//!
//! `switchboard_shell` runs the node (threads, signals, the drain) and each worker's turn; this
//! crate says how mio registers sockets, reports readiness and wakes a worker (`worker.rs`,
//! `redis.rs`).

mod redis;
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;

use mio::{Poll, Waker};
use switchboard_shell::{Node, Post};

use worker::Worker;

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-mio", serve)
}

fn serve(node: Node) -> io::Result<()> {
    // Every worker's way in exists before any worker starts, so each can reach all the others:
    // a message goes down a channel, then the worker's poller is woken to read it.
    let mut ends = Vec::with_capacity(node.workers);
    let mut posts: Vec<Post> = Vec::with_capacity(node.workers);
    for _ in 0..node.workers {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), worker::WAKER)?;
        let (control, inbox) = mpsc::channel();
        posts.push(Arc::new(move |message| {
            // A worker that has already ended (it drained) needs no message.
            if control.send(message).is_ok() {
                let _ = waker.wake();
            }
        }));
        ends.push(Some((poll, inbox)));
    }
    switchboard_shell::node::run(node, posts, |index, hub, listener, peers| {
        let Some((poll, inbox)) = ends.get_mut(index as usize).and_then(Option::take) else {
            return Err(io::Error::other("more listeners than workers"));
        };
        let worker = Worker::new(index, poll, mio::net::TcpListener::from_std(listener), inbox, hub, peers)?;
        Ok(Box::new(move || worker.run()))
    })
}
