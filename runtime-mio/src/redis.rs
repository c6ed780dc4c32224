//! A worker's Redis sockets (two per instance of `broker.urls`), for its hub's links. `switchboard_shell::pump_redis` opens,
//! writes and drops them; readiness on their tokens lands in `Redis::ready`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use switchboard_core::{Hub, LinkConn};
use switchboard_shell::{Flush, RedisSockets, read_redis, write_redis};

/// The Redis sockets' tokens count down from here, one per `LinkConn::index`, where no slab
/// index reaches (the listener and the waker hold the two above).
const REDIS_TOP: usize = usize::MAX - 2;
/// Tokens kept for Redis sockets: two per instance, at most 256 instances.
const REDIS_TOKENS: usize = 512;

/// The Redis connection behind `token`, if it is one.
pub(crate) fn redis_conn(token: Token) -> Option<LinkConn> {
    let below = REDIS_TOP.checked_sub(token.0)?;
    (below < REDIS_TOKENS).then(|| LinkConn::from_index(below))
}

fn token(which: LinkConn) -> Token {
    Token(REDIS_TOP - which.index())
}

#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    /// The non-blocking connect has completed.
    connected: bool,
    /// The last write hit `WouldBlock`; a WRITABLE event clears it.
    blocked: bool,
}

#[derive(Debug)]
pub(crate) struct Redis {
    registry: Registry,
    /// Indexed by `LinkConn::index`.
    sockets: Vec<Option<Socket>>,
}

impl Redis {
    pub(crate) fn new(registry: Registry) -> Self {
        Self { registry, sockets: Vec::new() }
    }

    /// Readiness of the socket behind `event`'s token: completes a connect, reads, unblocks
    /// writing. Writes themselves wait for the pump at the end of the turn.
    pub(crate) fn ready(&mut self, hub: &mut Hub, now: Instant, event: &Event, buf: &mut [u8]) {
        let Some(which) = redis_conn(event.token()) else { return };
        let Some(socket) = self.sockets.get_mut(which.index()).and_then(Option::as_mut) else { return };
        if !socket.connected {
            match connect_outcome(&socket.stream) {
                Ok(false) => return,
                Ok(true) => {
                    socket.connected = true;
                    hub.handle_redis_connected(now, which);
                }
                Err(e) => {
                    debug!("redis {which:?}: connect: {e}");
                    self.close(which);
                    hub.handle_redis_connect_failed(now, which);
                    return;
                }
            }
        }
        if event.is_writable() {
            socket.blocked = false;
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error())
            && !read_redis(hub, now, which, &mut socket.stream, buf)
        {
            self.close(which);
        }
    }
}

impl RedisSockets for Redis {
    fn close(&mut self, which: LinkConn) {
        if let Some(mut socket) = self.sockets.get_mut(which.index()).and_then(Option::take) {
            let _ = self.registry.deregister(&mut socket.stream);
        }
    }

    fn connect(&mut self, which: LinkConn, addr: SocketAddr) -> io::Result<()> {
        self.close(which);
        let mut stream = TcpStream::connect(addr)?;
        // Completion shows as WRITABLE; both interests stay, edge-triggered, for the socket's life.
        self.registry.register(&mut stream, token(which), Interest::READABLE | Interest::WRITABLE)?;
        // Commands are small and a publish waits on them.
        let _ = stream.set_nodelay(true);
        if self.sockets.len() <= which.index() {
            self.sockets.resize_with(which.index() + 1, || None);
        }
        self.sockets[which.index()] = Some(Socket { stream, connected: false, blocked: false });
        Ok(())
    }

    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool {
        let Some(socket) =
            self.sockets.get_mut(which.index()).and_then(Option::as_mut).filter(|s| s.connected && !s.blocked)
        else {
            return true;
        };
        match write_redis(hub, now, which, &mut socket.stream) {
            Flush::Done => true,
            Flush::Blocked => {
                socket.blocked = true;
                true
            }
            Flush::Failed => {
                self.close(which);
                false
            }
        }
    }
}

/// Whether a non-blocking connect has completed (`Ok(false)`: still in progress).
fn connect_outcome(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
