//! The in-process bus: how the workers of one process reach each other. Every publish goes to
//! every other worker, whose hub delivers it to its own subscribers; every second each worker
//! sends its figures so that `/metrics` and `/api/stats` on any worker show the whole node.
//! With `broker.kind = "redis"` it still joins the workers of this node (so they reach each
//! other while Redis is down); Redis carries publishes to the other nodes.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use mio::Waker;
use switchboard_shell::{Message, Peers};

/// The way into one worker from another thread.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    control: Sender<Message>,
    waker: Arc<Waker>,
}

impl Peer {
    pub(crate) fn new(control: Sender<Message>, waker: Arc<Waker>) -> Self {
        Self { control, waker }
    }

    pub(crate) fn send(&self, message: Message) {
        // A worker that has already ended (it drained) needs no message.
        if self.control.send(message).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// One worker's end of the bus: every other worker of the process.
#[derive(Debug)]
pub(crate) struct Bus {
    others: Vec<Peer>,
}

impl Bus {
    /// `peers` holds every worker's `Peer`, this one's at `index` included.
    pub(crate) fn new(index: u32, peers: &[Peer]) -> Self {
        let others = peers.iter().enumerate().filter(|&(i, _)| i != index as usize).map(|(_, p)| p.clone()).collect();
        Self { others }
    }

    /// Workers of the process, this one included.
    pub(crate) fn workers(&self) -> usize {
        self.others.len() + 1
    }
}

impl Peers for Bus {
    fn broadcast(&mut self, message: impl Fn() -> Message) {
        for peer in &self.others {
            peer.send(message());
        }
    }
}
