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
use switchboard_shell::Node;
use switchboard_shell::node::Started;

use mailbox::Mailbox;
use worker::Worker;

fn main() -> ExitCode {
    switchboard_shell::main("switchboard-smol", serve)
}

fn serve(node: Node) -> io::Result<()> {
    let peers: Arc<[Arc<Mailbox>]> = (0..node.workers).map(|_| Arc::default()).collect();
    switchboard_shell::node::run(node, |index, hub, listener| {
        let worker = Worker::new(index, hub, Async::new(listener)?, Arc::clone(&peers));
        let mailbox = Arc::clone(&peers[index as usize]);
        let run = move || {
            async_io::block_on(worker.run());
            Ok(())
        };
        Ok(Started { run: Box::new(run), post: Arc::new(move |message| mailbox.post(message)) })
    })
}
