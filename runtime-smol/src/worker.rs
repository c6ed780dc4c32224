//! One worker: a loop over async-io readiness around `switchboard_shell::Worker`, which runs
//! the turn. No task per connection: a socket's readiness wakes the loop through the mailbox,
//! naming the socket, so an idle connection costs its `Async` registration and no buffer.

use std::future::Future;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::future;
use switchboard_core::{ConnId, Hub};
use switchboard_shell::{Next, Peers, Reactor};

use crate::mailbox::{Inbox, Mailbox, Ready};
use crate::redis::Redis;

/// A client socket and the waker that names it in the mailbox (the same one every time, so
/// re-arming costs no wake-up).
#[derive(Debug)]
pub(crate) struct Stream {
    stream: Async<TcpStream>,
    waker: Waker,
}

/// smol's side of a worker: the mailbox readiness lands in, and the Redis pair.
#[derive(Debug)]
pub(crate) struct Smol {
    mailbox: Arc<Mailbox>,
    redis: Redis,
}

#[derive(Debug)]
pub(crate) struct Worker {
    listener: Async<TcpListener>,
    listener_waker: Waker,
    mailbox: Arc<Mailbox>,
    timer: Timer,
    timer_at: Option<Instant>,
    turn: switchboard_shell::Worker<Smol>,
}

impl Worker {
    pub(crate) fn new(index: u32, hub: Hub, listener: Async<TcpListener>, mailbox: Arc<Mailbox>, peers: Peers) -> Self {
        let smol = Smol { mailbox: Arc::clone(&mailbox), redis: Redis::new(&mailbox) };
        Self {
            listener,
            listener_waker: mailbox.waker(Ready::Listener),
            turn: switchboard_shell::Worker::new(index, peers, hub, smol),
            mailbox,
            timer: Timer::never(),
            timer_at: None,
        }
    }

    /// Serves until a drain has finished.
    pub(crate) async fn run(mut self) {
        let mut inbox = Inbox::default();
        self.turn.start(Instant::now());
        self.accept(Instant::now());
        loop {
            let now = Instant::now();
            self.mailbox.take(&mut inbox);
            for message in inbox.messages.drain(..) {
                self.turn.on_message(now, message);
            }
            for ready in inbox.ready.drain(..) {
                match ready {
                    Ready::Listener => self.accept(now),
                    Ready::Conn(id) => {
                        // Reading starts only on the reactor's word: a wake-up for writing
                        // then costs no futile read.
                        self.turn.read(now, id, false);
                        self.turn.writable(id);
                    }
                    Ready::Redis(which) => {
                        self.turn.redis_ready(now, which, |smol, hub, buf| smol.redis.ready(hub, now, which, buf));
                    }
                }
            }
            if self.turn.resume_accepting(now) {
                self.accept(now);
            }
            match self.turn.finish_turn(now) {
                Next::Done => return,
                Next::Continue => {}
                Next::Wait(at) => self.wait(at).await,
            }
        }
    }

    /// Sleeps until the mailbox has something or `next` passes.
    async fn wait(&mut self, next: Option<Instant>) {
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

    /// Accepts until the listener would block, then re-arms its readiness.
    fn accept(&mut self, now: Instant) {
        while self.turn.may_accept() {
            match self.listener.get_ref().accept() {
                Ok((stream, peer)) => {
                    // Messages are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    let admitted = self.turn.admit(now, peer, |smol, id| {
                        Ok(Stream { stream: Async::new(stream)?, waker: smol.mailbox.waker(Ready::Conn(id)) })
                    });
                    // The request is often here already.
                    if let Some(id) = admitted {
                        self.turn.read(now, id, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.listener.poll_readable(&mut Context::from_waker(&self.listener_waker)).is_pending() {
                        return;
                    }
                }
                Err(e) => {
                    self.turn.accept_failed(now, &e);
                }
            }
        }
    }
}

impl Reactor for Smol {
    type Stream = Stream;
    type Redis = Redis;

    fn redis(&mut self) -> &mut Redis {
        &mut self.redis
    }

    fn io(stream: &mut Stream) -> impl io::Read + io::Write + '_ {
        stream.stream.get_ref()
    }

    /// Asking re-arms the interest: the reactor wakes us when bytes come.
    fn readable_again(&mut self, stream: &mut Stream) -> bool {
        stream.stream.poll_readable(&mut Context::from_waker(&stream.waker)).is_ready()
    }

    /// A blocked socket arms writability and comes back through the mailbox; a short write
    /// without blocking is retried next turn.
    fn after_write(&mut self, _: ConnId, stream: &mut Stream, blocked: bool, backlog: bool) -> io::Result<bool> {
        Ok(backlog && (!blocked || self.writable_now(stream)))
    }

    fn writable_now(&mut self, stream: &mut Stream) -> bool {
        stream.stream.poll_writable(&mut Context::from_waker(&stream.waker)).is_ready()
    }

    /// Dropping the `Async` deregisters it.
    fn deregister(&mut self, _: &mut Stream) {}
}
