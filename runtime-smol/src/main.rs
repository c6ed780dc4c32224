//! `switchboard-smol`: the Switchboard hub on smol's reactor (async-io), one thread and one
//! `Hub` per worker.
//!
//! `switchboard_shell` runs the node (threads, signals, the drain) and each worker's turn; this
//! crate says how async-io registers sockets, reports readiness and wakes a worker
//! (`worker.rs`, `mailbox.rs`, `redis.rs`).

mod mailbox;
mod redis;
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use async_io::Async;
use switchboard_shell::{Node, Post};

use mailbox::Mailbox;
use worker::Worker;

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-smol", serve)
}

fn serve(node: Node) -> io::Result<()> {
    let mailboxes: Vec<Arc<Mailbox>> = (0..node.workers).map(|_| Arc::default()).collect();
    let posts = mailboxes
        .iter()
        .map(|mailbox| {
            let mailbox = Arc::clone(mailbox);
            Arc::new(move |message| mailbox.post(message)) as Post
        })
        .collect();
    switchboard_shell::node::run(node, posts, |index, hub, listener, peers| {
        let mailbox = Arc::clone(&mailboxes[index as usize]);
        let worker = Worker::new(index, hub, Async::new(listener)?, mailbox, peers);
        Ok(Box::new(move || {
            async_io::block_on(worker.run());
            Ok(())
        }))
    })
}
