//! The worker turn, written once for every shell: reading, feeding the hub, its outputs,
//! writing, the bus between workers, timers and the drain. A runtime supplies only its
//! [`Reactor`]: how a socket is registered, how readiness is asked for, and how a worker sleeps.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use switchboard_core::{ConnId, Envelope, Hub, LinkConn, Metrics, WebhookOutcome, WebhookRequest};

use crate::redis::RedisSockets;
use crate::turn::Sockets;
use crate::{Accepting, ClientWrite, METRICS_INTERVAL, READ_BUFFER, WebhookClient};

/// A message to a worker from another thread of the process.
#[derive(Debug)]
pub enum Message {
    /// Drain: close every connection with 1001 and stop once none is left or at `deadline`.
    Shutdown {
        /// When whatever is left is dropped.
        deadline: Instant,
    },
    /// What another worker's hub published during one of its turns, in order.
    Envelopes(Arc<[Envelope]>),
    /// Another worker's latest figures.
    Metrics {
        /// Its index.
        worker: u32,
        /// Its hub's figures.
        metrics: Box<Metrics>,
    },
    /// New `[tls]` keys (SIGHUP): new handshakes present them.
    TlsKeys(switchboard_core::TlsKeys),
    /// How a webhook this worker's hub asked for went (from the node's delivery threads).
    WebhookDone {
        /// The request's id.
        id: u64,
        /// Its status, or `Failed`.
        outcome: WebhookOutcome,
    },
}

/// How a runtime registers sockets and asks for their readiness. Everything else a worker does
/// is [`Worker`]'s.
pub trait Reactor: std::fmt::Debug {
    /// A client socket as the runtime holds it.
    type Stream: std::fmt::Debug;
    /// The runtime's two Redis sockets.
    type Redis: RedisSockets;

    /// The Redis sockets, for the hub's link.
    fn redis(&mut self) -> &mut Self::Redis;

    /// The socket for reading and writing.
    fn io(stream: &mut Self::Stream) -> impl Read + Write + '_;

    /// After a read would block: true when the socket is readable again already. A runtime
    /// that reports every new readiness (edge-triggered) says false; one that must re-arm its
    /// interest does so here.
    fn readable_again(&mut self, stream: &mut Self::Stream) -> bool;

    /// A write left `backlog` bytes unwritten or none (`blocked`: the socket said
    /// `WouldBlock`). Arms writability as the runtime needs; returns true when the socket can
    /// take more in the next turn without waiting.
    fn after_write(&mut self, id: ConnId, stream: &mut Self::Stream, blocked: bool, backlog: bool) -> io::Result<bool>;

    /// Whether a socket the runtime woke the worker for is writable now (re-arming the
    /// interest when it is not).
    fn writable_now(&mut self, stream: &mut Self::Stream) -> bool;

    /// The hub forgot the connection: stop watching its socket (the socket closes on drop).
    fn deregister(&mut self, stream: &mut Self::Stream);
}

/// A socket the hub knows as `id`.
#[derive(Debug)]
struct Conn<S> {
    id: ConnId,
    stream: S,
    /// Already in `Io::flush`.
    scheduled: bool,
}

/// The worker's sockets: what the hub's outputs act on.
#[derive(Debug)]
struct Io<R: Reactor> {
    reactor: R,
    /// Indexed by `ConnId::index`, which the hub keeps dense.
    conns: Vec<Option<Conn<R::Stream>>>,
    /// Connections to write to in this turn.
    flush: Vec<ConnId>,
    buf: Vec<u8>,
    /// The node's delivery threads (`None`: no webhook can be sent, each fails at once).
    webhooks: Option<WebhookClient>,
}

/// What the worker asks of its runtime at the end of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for readiness or a message, at most until this instant (`None`: no limit).
    Wait(Option<Instant>),
    /// Writes are pending: start the next turn without waiting.
    Continue,
    /// The drain is over: the worker ends.
    Done,
}

/// One worker's hub and sockets, and the turn every runtime runs.
#[derive(Debug)]
pub struct Worker<R: Reactor> {
    index: u32,
    peers: Peers,
    hub: Hub,
    io: Io<R>,
    accepting: Accepting,
    drain_deadline: Option<Instant>,
    /// The hub's last word on when its timers are due.
    timeout: Option<Instant>,
    /// This turn's publishes, for the other workers.
    publishes: Vec<Envelope>,
    metrics_at: Instant,
}

/// Delivers a message to one worker and wakes it, from any thread: the runtime's side of the
/// bus between workers.
pub type Post = Arc<dyn Fn(Message) + Send + Sync>;

/// The rest of the process, as a worker reaches it: the other workers, and the node's
/// webhook delivery threads.
#[derive(Clone)]
pub struct Peers {
    others: Vec<Post>,
    webhooks: Option<WebhookClient>,
}

impl Peers {
    /// Every worker's `Post` but `index`'s; no webhook delivery (see [`Peers::with_webhooks`]).
    pub fn new(index: usize, posts: &[Post]) -> Self {
        let others = posts.iter().enumerate().filter(|&(i, _)| i != index).map(|(_, p)| Arc::clone(p)).collect();
        Self { others, webhooks: None }
    }

    /// Webhooks go to the node's delivery threads through `client`, whose outcomes come back
    /// to this worker's own `Post`.
    pub fn with_webhooks(mut self, client: Option<WebhookClient>) -> Self {
        self.webhooks = client;
        self
    }

    /// Sends `message` to every other worker.
    fn broadcast(&self, message: impl Fn() -> Message) {
        for post in &self.others {
            post(message());
        }
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("others", &self.others.len()).field("webhooks", &self.webhooks.is_some()).finish()
    }
}

impl<R: Reactor> Worker<R> {
    /// Worker `index`, serving `hub` through `reactor`, reaching the node's other workers
    /// through `peers`.
    pub fn new(index: u32, mut peers: Peers, hub: Hub, reactor: R) -> Self {
        let webhooks = peers.webhooks.take();
        let io = Io { reactor, conns: Vec::new(), flush: Vec::new(), buf: vec![0; READ_BUFFER], webhooks };
        Self {
            index,
            peers,
            hub,
            io,
            accepting: Accepting::default(),
            drain_deadline: None,
            timeout: None,
            publishes: Vec::new(),
            metrics_at: Instant::now(),
        }
    }

    /// The first turn: the hub asks for what it needs before any client (the Redis sockets),
    /// and learns the time (which starts their connect deadlines).
    pub fn start(&mut self, now: Instant) {
        self.hub.handle_wall_clock(now, unix_ms());
        self.drain_outputs(now);
        self.hub.handle_timeout(now);
        self.drain_outputs(now);
    }

    /// The runtime, for its own readiness bookkeeping.
    pub fn reactor(&mut self) -> &mut R {
        &mut self.io.reactor
    }

    /// True while accepting is not paused after an accept error.
    pub fn may_accept(&self) -> bool {
        self.accepting.may_accept()
    }

    /// An accept failed with `e` (not `WouldBlock`); returns true when the next may follow at once.
    pub fn accept_failed(&mut self, now: Instant, e: &io::Error) -> bool {
        self.accepting.failed(now, e, &mut self.hub)
    }

    /// A connection from `peer` was accepted; `register` makes its readiness reach this worker
    /// as the id it is given. Returns the id, or `None` when registering failed.
    pub fn admit(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        register: impl FnOnce(&mut R, ConnId) -> io::Result<R::Stream>,
    ) -> Option<ConnId> {
        let id = self.hub.handle_accept(now, peer);
        let stream = match register(&mut self.io.reactor, id) {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("register {peer}: {e}");
                self.hub.handle_eof(now, id);
                self.drain_outputs(now);
                return None;
            }
        };
        let conns = &mut self.io.conns;
        if conns.len() <= id.index() {
            conns.resize_with(id.index() + 1, || None);
        }
        // A stale socket in the slot belongs to a connection the hub already forgot.
        conns[id.index()] = Some(Conn { id, stream, scheduled: false });
        debug!("accepted {peer} as {id:?}");
        // The hub may already have refused it (too many handshakes from its address).
        self.drain_outputs(now);
        Some(id)
    }

    /// The connection at slab `index`, if any.
    pub fn conn_at(&self, index: usize) -> Option<ConnId> {
        self.io.conns.get(index).and_then(Option::as_ref).map(|c| c.id)
    }

    /// Reads `id` until it would block (and is not readable again) or the hub lets go.
    /// `ready`: the runtime knows the socket is readable.
    pub fn read(&mut self, now: Instant, id: ConnId, mut ready: bool) {
        loop {
            let Some(conn) = conn_mut(&mut self.io.conns, id) else { return };
            if !ready && !self.io.reactor.readable_again(&mut conn.stream) {
                return;
            }
            ready = true;
            match R::io(&mut conn.stream).read(&mut self.io.buf) {
                Ok(n) if n > 0 => self.hub.handle_bytes(now, id, &self.io.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(_) | Err(_) => self.hub.handle_eof(now, id),
            }
            // A close the hub decided on removes the socket here, which ends the loop.
            self.drain_outputs(now);
        }
    }

    /// The runtime woke the worker for `id`'s writability: write in this turn if anything
    /// waits and the socket takes it.
    pub fn writable(&mut self, id: ConnId) {
        let wants = self.hub.wants_write(id);
        if let Some(conn) = conn_mut(&mut self.io.conns, id)
            && wants
            && self.io.reactor.writable_now(&mut conn.stream)
        {
            self.io.schedule(id);
        }
    }

    /// After an accept pause: true when it ran out at `now` and the runtime must accept at
    /// once (connections that queued meanwhile raise no new readiness).
    pub fn resume_accepting(&mut self, now: Instant) -> bool {
        self.accepting.resume(now)
    }

    /// Redis connection `which` had readiness: `ready` (the runtime's) reads it and completes
    /// a connect; a writable socket then writes what waits.
    pub fn redis_ready(&mut self, now: Instant, which: LinkConn, ready: impl FnOnce(&mut R, &mut Hub, &mut [u8])) {
        ready(&mut self.io.reactor, &mut self.hub, &mut self.io.buf);
        crate::resume_redis(&mut self.hub, now, &mut self.io, which);
        self.drain_outputs(now);
    }

    /// A message from another worker or the main thread.
    pub fn on_message(&mut self, now: Instant, message: Message) {
        match message {
            Message::Shutdown { deadline } => {
                self.drain_deadline.get_or_insert(deadline);
                self.hub.handle_shutdown(now, deadline);
            }
            Message::Envelopes(batch) => {
                for envelope in batch.iter() {
                    self.hub.handle_broker(now, envelope);
                }
            }
            Message::Metrics { worker, metrics } => self.hub.handle_peer_metrics(worker, *metrics),
            Message::WebhookDone { id, outcome } => self.hub.handle_webhook_done(now, id, outcome),
            Message::TlsKeys(keys) => self.hub.handle_tls_keys(keys),
        }
        self.drain_outputs(now);
    }

    /// Nobody can send a drain any more: drain now rather than run forever.
    pub fn orphaned(&mut self, now: Instant) {
        if self.drain_deadline.is_none() {
            self.on_message(now, Message::Shutdown { deadline: now });
        }
    }

    /// The rest of a turn, after the runtime fed in what was ready: runs due timers, sends
    /// the figures and the turn's publishes to the other workers, writes, and says what is
    /// next.
    pub fn finish_turn(&mut self, now: Instant) -> Next {
        let alone = self.peers.others.is_empty();
        // For the next turn's inputs: the Pusher API's signatures are checked against it.
        self.hub.handle_wall_clock(now, unix_ms());
        if self.timeout.is_some_and(|at| at <= now) {
            self.hub.handle_timeout(now);
        }
        if !alone && now >= self.metrics_at {
            self.metrics_at = now + METRICS_INTERVAL;
            let (worker, metrics) = (self.index, self.hub.metrics());
            self.peers.broadcast(|| Message::Metrics { worker, metrics: Box::new(metrics.clone()) });
        }
        // Before the clients' writes, so a publish is on its way to Redis when its ack or
        // `202` leaves.
        self.drain_outputs(now);
        self.write(now);
        if let Some(batch) = crate::take_publishes(&mut self.publishes) {
            self.peers.broadcast(|| Message::Envelopes(Arc::clone(&batch)));
        }
        if crate::drained(&self.hub, self.drain_deadline, now) {
            return Next::Done;
        }
        if !self.io.flush.is_empty() {
            return Next::Continue;
        }
        let metrics = (!alone).then_some(self.metrics_at);
        let wake = [self.timeout, self.accepting.resume_at(), self.drain_deadline, metrics].into_iter().flatten().min();
        Next::Wait(wake)
    }

    /// How long to sleep for `next`, from `now`.
    pub fn sleep(next: Next, now: Instant) -> Option<Duration> {
        match next {
            Next::Wait(at) => at.map(|at| at.saturating_duration_since(now)),
            Next::Continue | Next::Done => Some(Duration::ZERO),
        }
    }

    /// Everything the hub asked for since the last input, up to its next timeout.
    fn drain_outputs(&mut self, now: Instant) {
        self.timeout = crate::drain_outputs(&mut self.hub, now, &mut self.io, &mut self.publishes);
    }

    /// One `write_vectored` per scheduled connection, so a long backlog cannot hold up the
    /// others; what is left is tried again next turn or when the socket is writable.
    fn write(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.io.flush) {
            let Some(conn) = conn_mut(&mut self.io.conns, id) else { continue };
            conn.scheduled = false;
            let blocked = match crate::write_client(&mut self.hub, now, id, R::io(&mut conn.stream)) {
                ClientWrite::Wrote => false,
                ClientWrite::Blocked => true,
                ClientWrite::Failed => continue,
            };
            let backlog = self.hub.wants_write(id);
            match self.io.reactor.after_write(id, &mut conn.stream, blocked, backlog) {
                Ok(true) => self.io.schedule(id),
                Ok(false) => {}
                Err(e) => {
                    log::warn!("{id:?}: {e}");
                    self.hub.handle_eof(now, id);
                }
            }
        }
        // Writing finishes connections whose last bytes (an HTTP error, a close reply) went out.
        self.drain_outputs(now);
    }
}

impl<R: Reactor> Io<R> {
    fn schedule(&mut self, id: ConnId) {
        if let Some(conn) = conn_mut(&mut self.conns, id)
            && !conn.scheduled
        {
            conn.scheduled = true;
            self.flush.push(id);
        }
    }
}

/// The connection `id` names, if it is still the one in its slot; a free function so that
/// callers keep the rest of the worker at hand.
fn conn_mut<S>(conns: &mut [Option<Conn<S>>], id: ConnId) -> Option<&mut Conn<S>> {
    conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id)
}

impl<R: Reactor> Sockets for Io<R> {
    fn transmit(&mut self, id: ConnId) {
        self.schedule(id);
    }

    fn close_client(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.get_mut(id.index()).and_then(|slot| slot.take_if(|c| c.id == id)) else {
            return;
        };
        self.reactor.deregister(&mut conn.stream);
        crate::linger(R::io(&mut conn.stream), &mut self.buf);
        debug!("closed {id:?}");
    }

    fn webhook(&mut self, request: WebhookRequest) -> bool {
        self.webhooks.as_ref().is_some_and(|client| client.send(request))
    }
}

impl<R: Reactor> RedisSockets for Io<R> {
    fn close(&mut self, which: LinkConn) {
        self.reactor.redis().close(which);
    }

    fn connect(&mut self, which: LinkConn, addr: SocketAddr) -> io::Result<()> {
        self.reactor.redis().connect(which, addr)
    }

    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool {
        self.reactor.redis().flush(hub, now, which)
    }
}

/// The wall clock in Unix milliseconds (0 before 1970, which no real clock reads).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}
