//! One connection's state, the slab slot that holds it, and its typed timers.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::ConnId;
use crate::channel::ChannelId;
use crate::deflate::DeflateParams;
use crate::frame::Decoder;
use crate::limits::TokenBucket;
use crate::queue::OutQueue;
use crate::time::later;
use crate::tls::Tls;

/// What a connection's deadline is for; each has its own slot in the [`TimerTable`], so a
/// deadline never means one thing in one phase and another in the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The request must be in (`Handshake`) or answered (`Responding`) by then.
    Handshake,
    /// Give up on the connection: the peer's close reply, or flushing the last response, or
    /// a drain's deadline.
    GiveUp,
    /// Send the next ping.
    Ping,
    /// The pong to our ping is due.
    Pong,
}

/// One optional deadline per [`Timer`] (quinn's `TimerTable` idea, sized for a connection):
/// nanoseconds after the hub's epoch (its first input), plus one so that 0 means unset. Eight
/// bytes a timer instead of an `Instant`'s sixteen, since a million connections hold them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TimerTable([u64; 4]);

impl TimerTable {
    pub(super) fn get(&self, timer: Timer, epoch: Instant) -> Option<Instant> {
        let raw = self.0[timer as usize];
        (raw != 0).then(|| later(epoch, Duration::from_nanos(raw - 1)))
    }

    pub(super) fn set(&mut self, timer: Timer, epoch: Instant, at: Instant) {
        self.0[timer as usize] = encode(epoch, at);
    }

    /// Sets `timer` to `at` unless it is already due earlier.
    pub(super) fn cap(&mut self, timer: Timer, epoch: Instant, at: Instant) {
        let slot = &mut self.0[timer as usize];
        let at = encode(epoch, at);
        *slot = if *slot == 0 { at } else { (*slot).min(at) };
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = 0;
    }

    /// True when `timer` is set and due at `now`.
    pub(super) fn expired(&self, timer: Timer, epoch: Instant, now: Instant) -> bool {
        let raw = self.0[timer as usize];
        raw != 0 && raw <= encode(epoch, now)
    }

    pub(super) fn next(&self, epoch: Instant) -> Option<Instant> {
        let earliest = self.0.iter().copied().filter(|&raw| raw != 0).min()?;
        Some(later(epoch, Duration::from_nanos(earliest - 1)))
    }
}

/// `at` as a timer table entry: saturating, and never 0 (which means unset).
fn encode(epoch: Instant, at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(epoch).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading the HTTP request head (and body, for the API).
    Handshake,
    /// WebSocket frames flow both ways.
    Open,
    /// A close frame was sent or received, or an HTTP response is the last thing to send.
    Closing,
    /// An HTTP request waits for an answer from other nodes; further bytes are ignored.
    Responding,
    /// An HTTP response is the last thing to send; further bytes are ignored.
    Answered,
}

/// A channel the connection is subscribed to.
#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) channel: ChannelId,
    /// Position in the channel's subscriber list.
    pub(super) position: u32,
    /// What presence shows for this member (raw JSON given at subscribe).
    pub(super) info: Option<Box<str>>,
}

/// One connection: its protocol state and its outbound queue of shared frames.
#[derive(Debug)]
pub(super) struct Connection {
    /// The TCP peer (a proxy, when there is one).
    pub(super) peer: SocketAddr,
    /// The client as far as per-IP rules go: the peer, or whom a trusted proxy names.
    pub(super) client: IpAddr,
    pub(super) phase: Phase,
    /// Counted among the node's connections in their handshake.
    pub(super) handshaking: bool,
    /// A PROXY protocol header is expected before the request.
    pub(super) proxy_pending: bool,
    pub(super) route: usize,
    /// Admitted among the node's connections, and counted in the per-route gauges.
    pub(super) counted: bool,
    /// Answered an HTTP request and waits for the next one on the same connection.
    pub(super) kept_alive: bool,
    /// Request bytes until the head (and body) is complete; unallocated afterwards.
    pub(super) head: Vec<u8>,
    pub(super) decoder: Decoder,
    pub(super) deflate: Option<DeflateParams>,
    pub(super) out: OutQueue,
    pub(super) close_sent: bool,
    /// Close the socket as soon as the queue is flushed.
    pub(super) close_when_flushed: bool,
    /// Its deadlines, by what they are for.
    pub(super) timers: TimerTable,
    /// Last data message (or app-level ping) from the client, for the idle timeout.
    pub(super) last_active: Instant,
    pub(super) messages: TokenBucket,
    pub(super) bytes: TokenBucket,
    pub(super) strikes: u32,
    pub(super) subscriptions: Vec<Subscription>,
    /// The wake-up currently in the timer heap for this connection.
    pub(super) wake_at: Option<Instant>,
    /// Set on a Pusher protocol connection (`/app/{key}`); boxed, as most connections are not.
    pub(super) pusher: Option<Box<PusherConn>>,
    /// What a native connection's token proved; `None` until one is verified.
    pub(super) native: Option<Box<super::native::NativeAuth>>,
    /// The TLS record layer under everything above, on a `[tls]` listener.
    pub(super) tls: Option<Box<Tls>>,
}

/// What a Pusher protocol connection adds.
#[derive(Debug)]
pub(super) struct PusherConn {
    /// The app's index in `[[pusher.app]]`.
    pub(super) app: usize,
    /// Its `socket_id`, unique in the cluster.
    pub(super) socket_id: Box<str>,
    /// It holds a place among the app's `max_connections`.
    pub(super) counted: bool,
    /// Client events allowed (`max_client_events_per_second`).
    pub(super) client_events: TokenBucket,
    /// The user it signed in as (`pusher:signin`).
    pub(super) user: Option<Box<SignedIn>>,
}

/// A signed-in Pusher connection's user.
#[derive(Debug)]
pub(super) struct SignedIn {
    /// `user_data.id`.
    pub(super) id: String,
    /// `user_data.watchlist`: whose coming and going it hears.
    pub(super) watchlist: Vec<String>,
}

impl Connection {
    /// Bytes queued and not yet written: in the out queue and, on TLS, still to be sealed.
    pub(super) fn unsent(&self) -> usize {
        self.out.unsent() + self.tls.as_ref().map_or(0, |tls| tls.pending.len())
    }

    /// True when nothing at all waits to be written.
    pub(super) fn flushed(&self) -> bool {
        self.out.is_empty() && self.tls.as_ref().is_none_or(|tls| tls.pending.is_empty())
    }

    /// True when queueing `len` more bytes would take a non-empty queue past `limit` bytes (an
    /// empty queue always takes one message, however large, so a big message still goes out).
    pub(super) fn would_overflow(&self, len: usize, limit: usize) -> bool {
        let unsent = self.unsent();
        unsent > 0 && unsent + len > limit
    }

    /// The earliest of its timers, the idle timeout included (derived from `last_active`, so
    /// a message costs no timer update).
    pub(super) fn next_deadline(&self, idle_timeout: Duration, epoch: Instant) -> Option<Instant> {
        let idle =
            (self.phase == Phase::Open && !idle_timeout.is_zero()).then(|| later(self.last_active, idle_timeout));
        [self.timers.next(epoch), idle].into_iter().flatten().min()
    }
}

/// A slab slot: the generation tells a live id from a stale one.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) generation: u32,
    pub(super) conn: Option<Connection>,
}

/// The connection `id` names, if it is still the one in its slot. A free function so that a
/// caller can hold it while it uses the hub's other fields (the frame store, the metrics).
pub(super) fn live_conn(slots: &mut [Slot], id: ConnId) -> Option<&mut Connection> {
    let slot = slots.get_mut(id.index as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.conn.as_mut()
}

/// Shared-borrow twin of [`live_conn`].
pub(super) fn live(slots: &[Slot], id: ConnId) -> Option<&Connection> {
    let slot = slots.get(id.index as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.conn.as_ref()
}
