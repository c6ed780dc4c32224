//! Listening sockets: one per worker, all on the same port through `SO_REUSEPORT`.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Deep enough for a burst of thousands of connects while workers are busy; the kernel caps
/// it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds `count` non-blocking listeners. The first one decides the port, so `127.0.0.1:0`
/// works: the others join the port it was given and the kernel spreads new connections
/// across them.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind_one(addr)?;
    let local = first.local_addr()?;
    let mut listeners = Vec::with_capacity(count.max(1));
    listeners.push(first);
    for _ in 1..count {
        listeners.push(bind_one(local)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for the old process's connections to leave TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
