//! One worker: a mio `Poll`, a listener and a `Hub`. It moves bytes and time; the hub decides.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use switchboard_core::{ConnId, Event, Hub};
use switchboard_shell::{Accepting, ClientWrite, READ_BUFFER};

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
    /// Already in `Worker::flush`.
    scheduled: bool,
}

/// The worker's whole state; `run` is its thread's body.
#[derive(Debug)]
pub(crate) struct Worker {
    poll: Poll,
    listener: TcpListener,
    control: Receiver<Control>,
    hub: Hub,
    bus: Bus,
    /// Indexed by `ConnId::index`, which the hub keeps dense.
    conns: Vec<Option<Conn>>,
    buf: Vec<u8>,
    /// Connections to write to in this turn.
    flush: Vec<ConnId>,
    accepting: Accepting,
    redis: Redis,
    drain_deadline: Option<Instant>,
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
        Ok(Self {
            poll,
            listener,
            control,
            hub,
            bus,
            conns: Vec::new(),
            buf: vec![0; READ_BUFFER],
            flush: Vec::new(),
            accepting: Accepting::default(),
            redis,
            drain_deadline: None,
        })
    }

    /// Serves until a drain has finished; returns early only if the poller itself fails.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The Redis link, if configured, starts connecting before the first client arrives.
        self.hub.handle_timeout(Instant::now());
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
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
                        self.redis.ready(&mut self.hub, now, event, &mut self.buf);
                        self.drain_events();
                    }
                    Token(index) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(now, index);
                        }
                        if event.is_writable() {
                            self.schedule_by_index(index);
                        }
                    }
                }
            }
            if self.accepting.resume(now) {
                self.accept(now);
            }
            switchboard_shell::run_timers(&mut self.hub, now);
            self.bus.send_metrics(now, &self.hub);
            // Before the clients' writes, so a publish is on its way to Redis when its ack or
            // `202` leaves.
            switchboard_shell::pump_redis(&mut self.hub, now, &mut self.redis);
            self.drain_events();
            self.write(now);
            self.bus.send_broker(&mut self.hub);
            // Again, since writing may have ended connections, which leave channels and presence.
            switchboard_shell::pump_redis(&mut self.hub, now, &mut self.redis);
            self.drain_events();
            if switchboard_shell::drained(&self.hub, self.drain_deadline, now) {
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.flush.is_empty() {
            return Some(Duration::ZERO);
        }
        [self.hub.poll_timeout(), self.accepting.resume_at(), self.drain_deadline, self.bus.next_metrics()]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        while self.accepting.may_accept() {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.accepting.failed(now, &e, &mut self.hub);
                    continue;
                }
            };
            // Messages are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            let id = self.hub.handle_accept(now, peer);
            let token = Token(id.index());
            if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE) {
                warn!("register {peer}: {e}");
                self.hub.handle_eof(now, id);
                continue;
            }
            if self.conns.len() <= id.index() {
                self.conns.resize_with(id.index() + 1, || None);
            }
            // A stale socket in the slot belongs to a connection the hub already forgot.
            self.conns[id.index()] = Some(Conn { id, stream, writable: false, scheduled: false });
            debug!("accepted {peer} as {id:?}");
        }
    }

    fn read_control(&mut self, now: Instant) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Shutdown { deadline }) => {
                    self.drain_deadline.get_or_insert(deadline);
                    self.hub.shutdown(now, deadline);
                }
                Ok(Control::Envelopes(batch)) => {
                    for envelope in batch.iter() {
                        self.hub.handle_broker(now, envelope);
                    }
                }
                Ok(Control::Metrics { worker, metrics }) => self.hub.handle_peer_metrics(worker, *metrics),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    // Nobody can ask for a drain any more: drain now rather than run forever.
                    if self.drain_deadline.is_none() {
                        self.drain_deadline = Some(now);
                        self.hub.shutdown(now, now);
                    }
                    return;
                }
            }
        }
    }

    /// Reads until `WouldBlock` (the poller is edge-triggered) or until the hub lets go.
    fn read(&mut self, now: Instant, index: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
            let id = conn.id;
            match conn.stream.read(&mut self.buf) {
                Ok(0) => self.hub.handle_eof(now, id),
                Ok(n) => self.hub.handle_bytes(now, id, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.hub.handle_eof(now, id),
            }
            // A close the hub decided on removes the socket here, which ends the loop.
            self.drain_events();
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.hub.poll_event() {
            match event {
                Event::Transmit(id) => self.schedule(id),
                Event::Close(id) => self.close(id),
            }
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

    fn schedule_by_index(&mut self, index: usize) {
        if let Some(Some(conn)) = self.conns.get(index) {
            self.schedule(conn.id);
        }
    }

    /// One `write_vectored` per scheduled connection. WRITABLE interest is kept only while a
    /// backlog exists; a write that did not hit `WouldBlock` is retried next turn, since an
    /// edge-triggered poller will not report a socket that never stopped being writable.
    fn write(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.flush) {
            let Some(conn) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
                continue;
            };
            conn.scheduled = false;
            let blocked = match switchboard_shell::write_client(&mut self.hub, now, id, &mut conn.stream) {
                ClientWrite::Wrote => false,
                ClientWrite::Blocked => true,
                ClientWrite::Failed => continue,
            };
            let backlog = self.hub.wants_write(id);
            self.set_writable(now, id, backlog);
            if backlog && !blocked {
                self.schedule(id);
            }
        }
        // `consume` finishes connections whose last bytes (an HTTP error, a close reply) went out.
        self.drain_events();
    }

    fn set_writable(&mut self, now: Instant, id: ConnId, writable: bool) {
        let registry = self.poll.registry();
        let Some(conn) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return;
        };
        if conn.writable == writable {
            return;
        }
        let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        match registry.reregister(&mut conn.stream, Token(id.index()), interest) {
            Ok(()) => conn.writable = writable,
            Err(e) => {
                warn!("reregister {id:?}: {e}");
                self.hub.handle_eof(now, id);
            }
        }
    }

    /// Closes the socket of a connection the hub has forgotten.
    fn close(&mut self, id: ConnId) {
        let Some(slot) = self.conns.get_mut(id.index()) else { return };
        if slot.as_ref().is_none_or(|c| c.id != id) {
            return;
        }
        let Some(mut conn) = slot.take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        switchboard_shell::linger(&mut conn.stream, &mut self.buf);
        debug!("closed {id:?}");
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id)
    }
}
