//! One worker: a mio `Poll` and a listener around `switchboard_shell::Worker`, which runs the
//! turn. This file says only how mio registers sockets and reports readiness.

use std::io;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use switchboard_core::{ConnId, Hub};
use switchboard_shell::{Message, Next, Peers, Reactor};

use crate::redis::{Redis, redis_conn};

/// Connections use their hub index as token; these sit where no slab index reaches.
const LISTENER: Token = Token(usize::MAX);
/// The token of the worker's `mio::Waker`: a message waits in the control channel.
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// A client socket and whether WRITABLE is part of its registered interest.
#[derive(Debug)]
pub(crate) struct Stream {
    stream: TcpStream,
    writable: bool,
}

/// mio's side of a worker: the registry its sockets are registered with, and the Redis pair.
#[derive(Debug)]
pub(crate) struct Mio {
    registry: Registry,
    redis: Redis,
}

/// The worker's whole state; `run` is its thread's body.
#[derive(Debug)]
pub(crate) struct Worker {
    poll: Poll,
    listener: TcpListener,
    control: Receiver<Message>,
    turn: switchboard_shell::Worker<Mio>,
}

impl Worker {
    pub(crate) fn new(
        index: u32,
        poll: Poll,
        mut listener: TcpListener,
        control: Receiver<Message>,
        hub: Hub,
        peers: Peers,
    ) -> io::Result<Self> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mio = Mio { registry: poll.registry().try_clone()?, redis: Redis::new(poll.registry().try_clone()?) };
        let turn = switchboard_shell::Worker::new(index, peers, hub, mio);
        Ok(Self { poll, listener, control, turn })
    }

    /// Serves until a drain has finished; returns early only if the poller itself fails.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.turn.start(Instant::now());
        let mut next = Next::Wait(None);
        loop {
            let timeout = switchboard_shell::Worker::<Mio>::sleep(next, Instant::now());
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
                    token if let Some(which) = redis_conn(token) => {
                        self.turn.redis_ready(now, which, |mio, hub, buf| mio.redis.ready(hub, now, event, buf));
                    }
                    Token(index) => {
                        let Some(id) = self.turn.conn_at(index) else { continue };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.turn.read(now, id, true);
                        }
                        if event.is_writable() {
                            self.turn.writable(id);
                        }
                    }
                }
            }
            if self.turn.resume_accepting(now) {
                self.accept(now);
            }
            next = self.turn.finish_turn(now);
            if next == Next::Done {
                return Ok(());
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        while self.turn.may_accept() {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.turn.accept_failed(now, &e);
                    continue;
                }
            };
            // Messages are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            // Registering reports a request that is already here as readiness.
            self.turn.admit(now, peer, |mio, id| {
                mio.registry.register(&mut stream, Token(id.index()), Interest::READABLE)?;
                Ok(Stream { stream, writable: false })
            });
        }
    }

    fn read_control(&mut self, now: Instant) {
        loop {
            match self.control.try_recv() {
                Ok(message) => self.turn.on_message(now, message),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => return self.turn.orphaned(now),
            }
        }
    }
}

impl Reactor for Mio {
    type Stream = Stream;
    type Redis = Redis;

    fn redis(&mut self) -> &mut Redis {
        &mut self.redis
    }

    fn io(stream: &mut Stream) -> impl io::Read + io::Write + '_ {
        &mut stream.stream
    }

    /// Edge-triggered: the next readiness is reported by the poller.
    fn readable_again(&mut self, _: &mut Stream) -> bool {
        false
    }

    /// WRITABLE interest is kept only while a backlog exists; a write that did not hit
    /// `WouldBlock` is retried next turn, since an edge-triggered poller will not report a
    /// socket that never stopped being writable.
    fn after_write(&mut self, id: ConnId, stream: &mut Stream, blocked: bool, backlog: bool) -> io::Result<bool> {
        if stream.writable != backlog {
            let interest = if backlog { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            self.registry.reregister(&mut stream.stream, Token(id.index()), interest)?;
            stream.writable = backlog;
        }
        Ok(backlog && !blocked)
    }

    fn writable_now(&mut self, _: &mut Stream) -> bool {
        true
    }

    fn deregister(&mut self, stream: &mut Stream) {
        let _ = self.registry.deregister(&mut stream.stream);
    }
}
