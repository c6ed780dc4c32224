//! The shell's side of the hub's Redis link: open the sockets the hub names, move their bytes,
//! drop them when told. The link decides everything else (what to send, when to reconnect,
//! the breaker). The order of the steps is the link's (see "Run loop" in `core/src/redis.rs`).

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use log::debug;
use switchboard_core::{Hub, LinkConn};

/// A runtime's two Redis sockets (per worker).
pub trait RedisSockets {
    /// Drops the socket `which`, or abandons its pending connect.
    fn close(&mut self, which: LinkConn);

    /// Starts a non-blocking connect of `which` to `addr`. An error means it failed at once;
    /// otherwise the shell later reports `handle_redis_connected` or `handle_redis_connect_failed`.
    fn connect(&mut self, which: LinkConn, addr: SocketAddr) -> io::Result<()>;

    /// Writes what the hub has for `which` if its socket is connected and not blocked (see
    /// [`write_redis`]); a blocked socket writes again once writable (`resume_redis`).
    /// Returns false when the socket failed and was dropped.
    fn flush(&mut self, hub: &mut Hub, now: Instant, which: LinkConn) -> bool;
}

/// The first address of `target` (`host:port`). An IP literal is parsed without a lookup; a
/// host name is resolved by the system resolver, which blocks the calling worker for as long
/// as the lookup takes, once per connect attempt (at most every `broker.backoff.min`).
pub fn resolve(target: &str) -> io::Result<SocketAddr> {
    target.to_socket_addrs()?.next().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))
}

/// How a [`write_redis`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket is full: wait for it to become writable.
    Blocked,
    /// The write failed; the hub was told (`handle_redis_eof`) and the socket must go.
    Failed,
}

/// Writes what the hub queued for `which` until it is all out or the socket blocks.
pub fn write_redis(hub: &mut Hub, now: Instant, which: LinkConn, mut stream: impl Write) -> Flush {
    loop {
        let mut slices = [IoSlice::new(&[]); 4];
        let filled = hub.redis_transmit(which, &mut slices);
        if filled == 0 {
            return Flush::Done;
        }
        match stream.write_vectored(&slices[..filled]) {
            Ok(0) => {}
            Ok(n) => {
                hub.handle_redis_written(now, which, n);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => debug!("redis {which:?}: write: {e}"),
        }
        hub.handle_redis_eof(now, which);
        return Flush::Failed;
    }
}

/// Reads `which` until it would block, feeding the hub. Returns false when the stream ended or
/// failed: the hub was told and the socket must go.
pub fn read_redis(hub: &mut Hub, now: Instant, which: LinkConn, mut stream: impl Read, buf: &mut [u8]) -> bool {
    loop {
        match stream.read(buf) {
            Ok(0) => {}
            Ok(n) => {
                hub.handle_redis_bytes(now, which, &buf[..n]);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => debug!("redis {which:?}: read: {e}"),
        }
        hub.handle_redis_eof(now, which);
        return false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_without_a_lookup_and_bad_targets_fail() {
        assert_eq!(resolve("127.0.0.1:6379").ok(), Some(SocketAddr::from(([127, 0, 0, 1], 6379))));
        assert!(resolve("[::1]:1").is_ok_and(|a| a.is_ipv6()));
        assert!(resolve("no port").is_err());
    }
}
