//! A worker's two Redis sockets, for its hub's link. `switchboard_shell::pump_redis` opens,
//! writes and drops them; their wake-ups arrive through the mailbox as `Ready::Redis` and land
//! in `Redis::ready`. A connect is a future polled by the worker loop, never awaited.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_io::Async;
use log::debug;
use switchboard_core::{Hub, LinkConn};
use switchboard_shell::{Flush, RedisSockets, read_redis, write_redis};

use crate::mailbox::{Mailbox, Ready};

type Connecting = Pin<Box<dyn Future<Output = io::Result<Async<TcpStream>>> + Send>>;

/// Writes retried in one flush when the reactor says a blocked socket is writable already.
const WRITE_RETRIES: usize = 4;

enum Socket {
    Connecting(Connecting),
    Connected(Async<TcpStream>),
}

pub(crate) struct Redis {
    /// Makes the wakers of connections not seen before (two per instance of `broker.urls`).
    mailbox: Arc<Mailbox>,
    /// Each names its connection in the mailbox; indexed by `LinkConn::index`.
    wakers: Vec<Waker>,
    sockets: Vec<Option<Socket>>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = |s: &Option<Socket>| match s {
            None => "closed",
            Some(Socket::Connecting(_)) => "connecting",
            Some(Socket::Connected(_)) => "connected",
        };
        let states: Vec<&str> = self.sockets.iter().map(state).collect();
        f.debug_struct("Redis").field("sockets", &states).finish()
    }
}

impl Redis {
    pub(crate) fn new(mailbox: &Arc<Mailbox>) -> Self {
        Self { mailbox: Arc::clone(mailbox), wakers: Vec::new(), sockets: Vec::new() }
    }

    /// Makes room for `which` (its waker and socket slot); returns its index.
    fn slot(&mut self, which: LinkConn) -> usize {
        let index = which.index();
        while self.wakers.len() <= index {
            let next = LinkConn::from_index(self.wakers.len());
            self.wakers.push(self.mailbox.waker(Ready::Redis(next)));
            self.sockets.push(None);
        }
        index
    }

    /// The reactor woke `which`: the connect may have completed, or bytes arrived, or a blocked
    /// socket became writable (the pump at the end of the turn writes).
    pub(crate) fn ready(&mut self, hub: &mut Hub, now: Instant, which: LinkConn, buf: &mut [u8]) {
        let index = which.index();
        let Some(waker) = self.wakers.get(index) else { return };
        let mut cx = Context::from_waker(waker);
        let stream = match &mut self.sockets[index] {
            None => return,
            Some(Socket::Connected(stream)) => stream,
            Some(Socket::Connecting(connect)) => match connect.as_mut().poll(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Err(e)) => {
                    debug!("redis {which:?}: connect: {e}");
                    self.sockets[index] = None;
                    hub.handle_redis_connect_failed(now, which);
                    return;
                }
                Poll::Ready(Ok(stream)) => {
                    // Commands are small and a publish waits on them.
                    let _ = stream.get_ref().set_nodelay(true);
                    hub.handle_redis_connected(now, which);
                    let socket = self.sockets[index].insert(Socket::Connected(stream));
                    let Socket::Connected(stream) = socket else { return };
                    stream
                }
            },
        };
        // Read until the reactor has armed readability again, so the next bytes wake us.
        while stream.poll_readable(&mut cx).is_ready() {
            if !read_redis(hub, now, which, stream.get_ref(), buf) {
                self.sockets[index] = None;
                return;
            }
        }
    }
}

impl RedisSockets for Redis {
    fn close(&mut self, which: LinkConn) {
        if let Some(socket) = self.sockets.get_mut(which.index()) {
            *socket = None;
        }
    }

    fn connect(&mut self, which: LinkConn, addr: SocketAddr) -> io::Result<()> {
        let index = self.slot(which);
        self.sockets[index] = Some(Socket::Connecting(Box::pin(Async::<TcpStream>::connect(addr))));
        // The first poll happens in the loop, like every later one.
        self.wakers[index].wake_by_ref();
        Ok(())
    }

    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool {
        let index = which.index();
        let Some(Some(Socket::Connected(stream))) = self.sockets.get(index) else { return true };
        let mut cx = Context::from_waker(&self.wakers[index]);
        for _ in 0..WRITE_RETRIES {
            match write_redis(hub, now, which, stream.get_ref()) {
                Flush::Done => return true,
                // Pending arms writability: the wake-up brings the next flush.
                Flush::Blocked if stream.poll_writable(&mut cx).is_pending() => return true,
                Flush::Blocked => {}
                Flush::Failed => {
                    self.sockets[index] = None;
                    return false;
                }
            }
        }
        true
    }
}
