//! One worker: a loop over async-io readiness that owns a `Hub`. It moves bytes and time; the
//! hub decides. No task per connection: a socket's readiness wakes the loop through the
//! mailbox, naming the socket, so an idle connection costs its `Async` registration and no
//! buffer.

use std::future::Future;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::future;
use log::{debug, warn};
use switchboard_core::{ConnId, Envelope, Hub, LinkConn};
use switchboard_shell::{Accepting, ClientWrite, METRICS_INTERVAL, READ_BUFFER, RedisSockets, Sockets};

use crate::mailbox::{Inbox, Mailbox, Message, Ready};
use crate::redis::Redis;

/// A socket the hub knows as `id`.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    stream: Async<TcpStream>,
    /// Puts `id` in the mailbox; the same waker every time, so re-arming costs no wake-up.
    waker: Waker,
    /// Already in `Worker::flush`.
    scheduled: bool,
}

/// The worker's sockets: what the hub's outputs act on.
#[derive(Debug)]
struct Io {
    /// Indexed by `ConnId::index`, which the hub keeps dense.
    conns: Vec<Option<Conn>>,
    buf: Vec<u8>,
    /// Connections to write to in this turn.
    flush: Vec<ConnId>,
    redis: Redis,
}

#[derive(Debug)]
pub(crate) struct Worker {
    index: u32,
    hub: Hub,
    listener: Async<TcpListener>,
    listener_waker: Waker,
    mailbox: Arc<Mailbox>,
    /// Every worker's mailbox, this one's included, indexed by worker.
    peers: Arc<[Arc<Mailbox>]>,
    io: Io,
    timer: Timer,
    timer_at: Option<Instant>,
    accepting: Accepting,
    metrics_at: Instant,
    drain_deadline: Option<Instant>,
    /// The hub's last word on when its timers are due.
    timeout: Option<Instant>,
    /// This turn's publishes, for the other workers.
    publishes: Vec<Envelope>,
}

impl Worker {
    pub(crate) fn new(index: u32, hub: Hub, listener: Async<TcpListener>, peers: Arc<[Arc<Mailbox>]>) -> Self {
        let mailbox = Arc::clone(&peers[index as usize]);
        Self {
            index,
            hub,
            listener,
            listener_waker: mailbox.waker(Ready::Listener),
            io: Io { conns: Vec::new(), buf: vec![0; READ_BUFFER], flush: Vec::new(), redis: Redis::new(&mailbox) },
            mailbox,
            peers,
            timer: Timer::never(),
            timer_at: None,
            accepting: Accepting::default(),
            metrics_at: Instant::now(),
            drain_deadline: None,
            timeout: None,
            publishes: Vec::new(),
        }
    }

    /// Serves until a drain has finished.
    pub(crate) async fn run(mut self) {
        let mut inbox = Inbox::default();
        // The Redis link, if configured, starts connecting before the first client arrives.
        self.hub.handle_timeout(Instant::now());
        self.drain_outputs(Instant::now());
        self.accept(Instant::now());
        loop {
            let now = Instant::now();
            self.mailbox.take(&mut inbox);
            for message in inbox.messages.drain(..) {
                self.handle_message(now, message);
            }
            self.drain_outputs(now);
            for ready in inbox.ready.drain(..) {
                match ready {
                    Ready::Listener => self.accept(now),
                    Ready::Conn(id) => {
                        self.read(now, id, false);
                        self.resume_write(id);
                    }
                    Ready::Redis(which) => {
                        self.io.redis.ready(&mut self.hub, now, which, &mut self.io.buf);
                        switchboard_shell::resume_redis(&mut self.hub, now, &mut self.io, which);
                        self.drain_outputs(now);
                    }
                }
            }
            if self.accepting.resume(now) {
                self.accept(now);
            }
            switchboard_shell::run_timers(&mut self.hub, now, self.timeout);
            if now >= self.metrics_at {
                self.metrics_at = now + METRICS_INTERVAL;
                self.send_metrics();
            }
            // Before the clients' writes, so a publish is on its way to Redis when its ack or
            // `202` leaves.
            self.drain_outputs(now);
            self.write(now);
            self.send_broker();
            if switchboard_shell::drained(&self.hub, self.drain_deadline, now) {
                return;
            }
            if self.io.flush.is_empty() {
                self.wait().await;
            }
        }
    }

    /// Sleeps until the mailbox has something or the next deadline passes.
    async fn wait(&mut self) {
        let next = [self.timeout, self.accepting.resume_at(), self.drain_deadline]
            .into_iter()
            .flatten()
            .chain((self.peers.len() > 1).then_some(self.metrics_at))
            .min();
        if next != self.timer_at {
            // Re-arming only on change keeps the reactor's timer table out of most turns.
            match next {
                Some(at) => self.timer.set_at(at),
                None => self.timer = Timer::never(),
            }
            self.timer_at = next;
        }
        future::poll_fn(|cx| {
            if self.mailbox.poll_wait(cx).is_ready() {
                return Poll::Ready(());
            }
            if self.timer_at.is_some() && Pin::new(&mut self.timer).poll(cx).is_ready() {
                // A fired timer stays silent until set again.
                self.timer_at = None;
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }

    fn handle_message(&mut self, now: Instant, message: Message) {
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
        }
    }

    /// Accepts until the listener would block, then re-arms its readiness.
    fn accept(&mut self, now: Instant) {
        while self.accepting.may_accept() {
            match self.listener.get_ref().accept() {
                Ok((stream, peer)) => self.admit(now, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.listener.poll_readable(&mut Context::from_waker(&self.listener_waker)).is_pending() {
                        return;
                    }
                }
                Err(e) => {
                    self.accepting.failed(now, &e, &mut self.hub);
                }
            }
        }
    }

    fn admit(&mut self, now: Instant, stream: TcpStream, peer: std::net::SocketAddr) {
        // Messages are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let stream = match Async::new(stream) {
            Ok(stream) => stream,
            Err(e) => {
                warn!("register {peer}: {e}");
                return;
            }
        };
        let id = self.hub.handle_accept(now, peer);
        let conns = &mut self.io.conns;
        if conns.len() <= id.index() {
            conns.resize_with(id.index() + 1, || None);
        }
        let waker = self.mailbox.waker(Ready::Conn(id));
        // A stale socket in the slot belongs to a connection the hub already forgot.
        conns[id.index()] = Some(Conn { id, stream, waker, scheduled: false });
        debug!("accepted {peer} as {id:?}");
        // The hub may already have refused it (too many handshakes from its address).
        self.drain_outputs(now);
        // The request is often here already.
        self.read(now, id, true);
    }

    /// Reads until the socket would block and the reactor re-arms it, or the hub lets go.
    /// Without `eager`, reading starts only on the reactor's word: a wake-up for writing then
    /// costs no futile read.
    fn read(&mut self, now: Instant, id: ConnId, eager: bool) {
        let mut ready = eager;
        loop {
            let Some(conn) = conn_mut(&mut self.io.conns, id) else { return };
            if !ready && conn.stream.poll_readable(&mut Context::from_waker(&conn.waker)).is_pending() {
                return;
            }
            ready = true;
            match conn.stream.get_ref().read(&mut self.io.buf) {
                Ok(n) if n > 0 => self.hub.handle_bytes(now, id, &self.io.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(_) | Err(_) => {
                    self.hub.handle_eof(now, id);
                    self.drain_outputs(now);
                    return;
                }
            }
            // A close the hub decided on removes the socket here, which ends the loop.
            self.drain_outputs(now);
        }
    }

    /// Writing waits for the reactor only after a blocked write; this picks it up again.
    fn resume_write(&mut self, id: ConnId) {
        if let Some(conn) = conn_mut(&mut self.io.conns, id)
            && self.hub.wants_write(id)
            && conn.stream.poll_writable(&mut Context::from_waker(&conn.waker)).is_ready()
        {
            self.io.schedule(id);
        }
    }

    /// Everything the hub asked for since the last input, up to its next timeout.
    fn drain_outputs(&mut self, now: Instant) {
        self.timeout = switchboard_shell::drain_outputs(&mut self.hub, now, &mut self.io, &mut self.publishes);
    }

    /// One `write_vectored` per scheduled connection. A blocked socket arms writability and
    /// comes back through the mailbox; a short write without blocking is retried next turn.
    fn write(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.io.flush) {
            let Some(conn) = conn_mut(&mut self.io.conns, id) else { continue };
            conn.scheduled = false;
            let ready_again = match switchboard_shell::write_client(&mut self.hub, now, id, conn.stream.get_ref()) {
                ClientWrite::Wrote => true,
                ClientWrite::Blocked => conn.stream.poll_writable(&mut Context::from_waker(&conn.waker)).is_ready(),
                ClientWrite::Failed => continue,
            };
            if ready_again && self.hub.wants_write(id) {
                self.io.schedule(id);
            }
        }
        // Writing finishes connections whose last bytes (an HTTP error, a close reply) went out.
        self.drain_outputs(now);
    }

    /// The in-process bus: every publish goes to every other worker, whose hub delivers it to
    /// its own subscribers; a turn's publishes travel together (one wake per peer per turn).
    fn send_broker(&mut self) {
        let Some(batch) = switchboard_shell::take_publishes(&mut self.publishes) else { return };
        for peer in self.other_peers() {
            peer.post(Message::Envelopes(Arc::clone(&batch)));
        }
    }

    fn send_metrics(&self) {
        for peer in self.other_peers() {
            let metrics = Box::new(self.hub.metrics().clone());
            peer.post(Message::Metrics { worker: self.index, metrics });
        }
    }

    fn other_peers(&self) -> impl Iterator<Item = &Arc<Mailbox>> {
        let me = self.index as usize;
        self.peers.iter().enumerate().filter(move |&(i, _)| i != me).map(|(_, peer)| peer)
    }
}

impl Io {
    fn schedule(&mut self, id: ConnId) {
        if let Some(conn) = conn_mut(&mut self.conns, id)
            && !conn.scheduled
        {
            conn.scheduled = true;
            self.flush.push(id);
        }
    }
}

impl Sockets for Io {
    fn transmit(&mut self, id: ConnId) {
        self.schedule(id);
    }

    /// Closes the socket of a connection the hub has forgotten.
    fn close_client(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.index()).and_then(|slot| slot.take_if(|c| c.id == id)) else {
            return;
        };
        switchboard_shell::linger(conn.stream.get_ref(), &mut self.buf);
        debug!("closed {id:?}");
    }
}

impl RedisSockets for Io {
    fn close(&mut self, which: LinkConn) {
        self.redis.close(which);
    }

    fn connect(&mut self, which: LinkConn, addr: std::net::SocketAddr) -> io::Result<()> {
        self.redis.connect(which, addr)
    }

    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool {
        self.redis.flush(hub, now, which)
    }
}

fn conn_mut(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id)
}
