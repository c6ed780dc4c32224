//! The in-process bus: how the workers of one process reach each other. Every publish goes to
//! every other worker, whose hub delivers it to its own subscribers; every second each worker
//! sends its figures so that `/metrics` and `/api/stats` on any worker show the whole node.
//! With `broker.kind = "redis"` it still joins the workers of this node (so they reach each
//! other while Redis is down); Redis carries publishes to the other nodes.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use mio::Waker;
use switchboard_core::{Envelope, Hub, Metrics};
use switchboard_shell::METRICS_INTERVAL;

/// Messages to a worker from outside its thread; each send is followed by a wake.
#[derive(Debug)]
pub(crate) enum Control {
    /// Drain: close every connection with 1001 and stop once none is left or at `deadline`.
    Shutdown { deadline: Instant },
    /// What another worker's hub published during one of its turns, in order.
    Envelopes(Arc<[Envelope]>),
    /// Another worker's latest figures.
    Metrics { worker: u32, metrics: Box<Metrics> },
}

/// The way into one worker from another thread.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    control: Sender<Control>,
    waker: Arc<Waker>,
}

impl Peer {
    pub(crate) fn new(control: Sender<Control>, waker: Arc<Waker>) -> Self {
        Self { control, waker }
    }

    pub(crate) fn send(&self, message: Control) {
        // A worker that has already ended (it drained) needs no message.
        if self.control.send(message).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// One worker's end of the bus.
#[derive(Debug)]
pub(crate) struct Bus {
    index: u32,
    /// Every other worker of the process.
    others: Vec<Peer>,
    metrics_at: Instant,
}

impl Bus {
    /// `peers` holds every worker's `Peer`, this one's at `index` included.
    pub(crate) fn new(index: u32, peers: &[Peer]) -> Self {
        let others = peers.iter().enumerate().filter(|&(i, _)| i != index as usize).map(|(_, p)| p.clone()).collect();
        Self { index, others, metrics_at: Instant::now() }
    }

    /// Hands what the hub published this turn to every other worker, one message per peer.
    pub(crate) fn send_publishes(&mut self, publishes: &mut Vec<Envelope>) {
        let Some(batch) = switchboard_shell::take_publishes(publishes) else { return };
        for peer in &self.others {
            peer.send(Control::Envelopes(Arc::clone(&batch)));
        }
    }

    /// Sends this worker's figures to the others once they are due.
    pub(crate) fn send_metrics(&mut self, now: Instant, hub: &Hub) {
        if self.others.is_empty() || now < self.metrics_at {
            return;
        }
        self.metrics_at = now + METRICS_INTERVAL;
        for peer in &self.others {
            peer.send(Control::Metrics { worker: self.index, metrics: Box::new(hub.metrics().clone()) });
        }
    }

    /// When `send_metrics` next has something to do.
    pub(crate) fn next_metrics(&self) -> Option<Instant> {
        (!self.others.is_empty()).then_some(self.metrics_at)
    }
}
