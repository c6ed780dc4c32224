//! One worker: a mio `Poll`, a listener and a `Hub`. It moves bytes and time; the hub decides.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use switchboard_core::{ConnId, Envelope, Hub, LinkConn};
use switchboard_shell::{Accepting, ClientWrite, READ_BUFFER, RedisSockets, Sockets};

use crate::bus::{Bus, Control};
use crate::redis::Redis;

/// Connections use their hub index as token; these sit where no slab index reaches.
const LISTENER: Token = Token(usize::MAX);
/// The token of the worker's `mio::Waker`: a message waits in the control channel.
pub(crate) const WAKER: Token = Token(usize::MAX - 1);
/// The tokens of the worker's two Redis sockets (see `redis.rs`).
pub(crate) const REDIS_COMMAND: Token = Token(usize::MAX - 2);
pub(crate) const REDIS_SUBSCRIBER: Token = Token(usize::MAX - 3);

/// A socket the hub knows as `id`.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    stream: TcpStream,
    /// WRITABLE is part of the registered interest.
    writable: bool,
    /// Already in `Io::flush`.
    scheduled: bool,
}

/// The worker's sockets: what the hub's outputs act on.
#[derive(Debug)]
struct Io {
    poll: Poll,
    /// Indexed by `ConnId::index`, which the hub keeps dense.
    conns: Vec<Option<Conn>>,
    /// Connections to write to in this turn.
    flush: Vec<ConnId>,
    buf: Vec<u8>,
    redis: Redis,
}

/// The worker's whole state; `run` is its thread's body.
#[derive(Debug)]
pub(crate) struct Worker {
    listener: TcpListener,
    control: Receiver<Control>,
    hub: Hub,
    bus: Bus,
    io: Io,
    accepting: Accepting,
    drain_deadline: Option<Instant>,
    /// The hub's last word on when its timers are due.
    timeout: Option<Instant>,
    /// This turn's publishes, for the other workers.
    publishes: Vec<Envelope>,
}

impl Worker {
    pub(crate) fn new(
        poll: Poll,
        mut listener: TcpListener,
        control: Receiver<Control>,
        hub: Hub,
        bus: Bus,
    ) -> io::Result<Self> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let redis = Redis::new(poll.registry().try_clone()?);
        let io = Io { poll, conns: Vec::new(), flush: Vec::new(), buf: vec![0; READ_BUFFER], redis };
        Ok(Self {
            listener,
            control,
            hub,
            bus,
            io,
            accepting: Accepting::default(),
            drain_deadline: None,
            timeout: None,
            publishes: Vec::new(),
        })
    }

    /// Serves until a drain has finished; returns early only if the poller itself fails.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The Redis link, if configured, starts connecting before the first client arrives.
        self.hub.handle_timeout(Instant::now());
        self.drain_outputs(Instant::now());
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.io.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.read_control(now),
                    REDIS_COMMAND | REDIS_SUBSCRIBER => {
                        self.io.redis.ready(&mut self.hub, now, event, &mut self.io.buf);
                        let which =
                            if event.token() == REDIS_COMMAND { LinkConn::Command } else { LinkConn::Subscriber };
                        if event.is_writable() {
                            switchboard_shell::resume_redis(&mut self.hub, now, &mut self.io, which);
                        }
                        self.drain_outputs(now);
                    }
                    Token(index) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(now, index);
                        }
                        if event.is_writable() {
                            self.io.schedule_by_index(index);
                        }
                    }
                }
            }
            if self.accepting.resume(now) {
                self.accept(now);
            }
            switchboard_shell::run_timers(&mut self.hub, now, self.timeout);
            self.bus.send_metrics(now, &self.hub);
            // Before the clients' writes, so a publish is on its way to Redis when its ack or
            // `202` leaves.
            self.drain_outputs(now);
            self.write(now);
            self.bus.send_publishes(&mut self.publishes);
            if switchboard_shell::drained(&self.hub, self.drain_deadline, now) {
                return Ok(());
            }
        }
    }

    /// Everything the hub asked for since the last input, up to its next timeout.
    fn drain_outputs(&mut self, now: Instant) {
        self.timeout = switchboard_shell::drain_outputs(&mut self.hub, now, &mut self.io, &mut self.publishes);
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.io.flush.is_empty() {
            return Some(Duration::ZERO);
        }
        [self.timeout, self.accepting.resume_at(), self.drain_deadline, self.bus.next_metrics()]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        while self.accepting.may_accept() {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.accepting.failed(now, &e, &mut self.hub);
                    continue;
                }
            };
            self.admit(now, stream, peer);
        }
    }

    fn admit(&mut self, now: Instant, mut stream: TcpStream, peer: SocketAddr) {
        // Messages are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let id = self.hub.handle_accept(now, peer);
        if let Err(e) = self.io.poll.registry().register(&mut stream, Token(id.index()), Interest::READABLE) {
            warn!("register {peer}: {e}");
            self.hub.handle_eof(now, id);
            return self.drain_outputs(now);
        }
        let conns = &mut self.io.conns;
        if conns.len() <= id.index() {
            conns.resize_with(id.index() + 1, || None);
        }
        // A stale socket in the slot belongs to a connection the hub already forgot.
        conns[id.index()] = Some(Conn { id, stream, writable: false, scheduled: false });
        debug!("accepted {peer} as {id:?}");
        // The hub may already have refused it (too many handshakes from its address).
        self.drain_outputs(now);
    }

    fn read_control(&mut self, now: Instant) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Shutdown { deadline }) => {
                    self.drain_deadline.get_or_insert(deadline);
                    self.hub.handle_shutdown(now, deadline);
                }
                Ok(Control::Envelopes(batch)) => {
                    for envelope in batch.iter() {
                        self.hub.handle_broker(now, envelope);
                    }
                }
                Ok(Control::Metrics { worker, metrics }) => self.hub.handle_peer_metrics(worker, *metrics),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // Nobody can ask for a drain any more: drain now rather than run forever.
                    if self.drain_deadline.is_none() {
                        self.drain_deadline = Some(now);
                        self.hub.handle_shutdown(now, now);
                    }
                    break;
                }
            }
        }
        self.drain_outputs(now);
    }

    /// Reads until `WouldBlock` (the poller is edge-triggered) or until the hub lets go.
    fn read(&mut self, now: Instant, index: usize) {
        loop {
            let Some(conn) = self.io.conns.get_mut(index).and_then(Option::as_mut) else { return };
            let id = conn.id;
            match conn.stream.read(&mut self.io.buf) {
                Ok(0) => self.hub.handle_eof(now, id),
                Ok(n) => self.hub.handle_bytes(now, id, &self.io.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.hub.handle_eof(now, id),
            }
            // A close the hub decided on removes the socket here, which ends the loop.
            self.drain_outputs(now);
        }
    }

    /// One `write_vectored` per scheduled connection. WRITABLE interest is kept only while a
    /// backlog exists; a write that did not hit `WouldBlock` is retried next turn, since an
    /// edge-triggered poller will not report a socket that never stopped being writable.
    fn write(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.io.flush) {
            let Some(conn) = self.io.conn_mut(id) else { continue };
            conn.scheduled = false;
            let blocked = match switchboard_shell::write_client(&mut self.hub, now, id, &mut conn.stream) {
                ClientWrite::Wrote => false,
                ClientWrite::Blocked => true,
                ClientWrite::Failed => continue,
            };
            let backlog = self.hub.wants_write(id);
            if let Err(e) = self.io.set_writable(id, backlog) {
                warn!("reregister {id:?}: {e}");
                self.hub.handle_eof(now, id);
            } else if backlog && !blocked {
                self.io.schedule(id);
            }
        }
        // Writing finishes connections whose last bytes (an HTTP error, a close reply) went out.
        self.drain_outputs(now);
    }
}

impl Io {
    fn schedule_by_index(&mut self, index: usize) {
        if let Some(Some(conn)) = self.conns.get(index) {
            let id = conn.id;
            self.schedule(id);
        }
    }

    fn schedule(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id)
            && !conn.scheduled
        {
            conn.scheduled = true;
            self.flush.push(id);
        }
    }

    fn set_writable(&mut self, id: ConnId, writable: bool) -> io::Result<()> {
        let registry = self.poll.registry();
        let Some(conn) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return Ok(());
        };
        if conn.writable == writable {
            return Ok(());
        }
        let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        registry.reregister(&mut conn.stream, Token(id.index()), interest)?;
        conn.writable = writable;
        Ok(())
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id)
    }
}

impl Sockets for Io {
    fn transmit(&mut self, id: ConnId) {
        self.schedule(id);
    }

    /// Closes the socket of a connection the hub has forgotten.
    fn close_client(&mut self, id: ConnId) {
        let Some(slot) = self.conns.get_mut(id.index()) else { return };
        if slot.as_ref().is_none_or(|c| c.id != id) {
            return;
        }
        let Some(mut conn) = slot.take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        switchboard_shell::linger(&mut conn.stream, &mut self.buf);
        debug!("closed {id:?}");
    }
}

impl RedisSockets for Io {
    fn close(&mut self, which: LinkConn) {
        self.redis.close(which);
    }

    fn connect(&mut self, which: LinkConn, addr: SocketAddr) -> io::Result<()> {
        self.redis.connect(which, addr)
    }

    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool {
        self.redis.flush(hub, now, which)
    }
}
