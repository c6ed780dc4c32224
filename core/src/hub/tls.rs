//! The TLS front of a connection: ciphertext from `handle_bytes` through rustls into the
//! HTTP / WebSocket layer, and everything that layer queues sealed on its way out. The layer
//! above never knows; a broadcast is still framed once, and sealed per connection.

use std::io::Read;
use std::time::Instant;

use bytes::Bytes;

use super::conn::{Connection, Phase, Timer, live_conn};
use super::{ConnId, Hub};
use crate::queue::{FrameId, FrameStore};
use crate::time::later;
use crate::tls::{Tls, TlsKeys};

impl Hub {
    /// Serves TLS with `keys` (see [`TlsKeys::from_pem`]): a hub whose config sets `tls.cert`
    /// needs them, and closes every connection at accept until it has them.
    pub fn with_tls(mut self, keys: TlsKeys) -> Self {
        self.handle_tls_keys(keys);
        self
    }

    /// A new certificate and key (a reload): handshakes from now on present them; connections
    /// already open keep the session they have.
    pub fn handle_tls_keys(&mut self, keys: TlsKeys) {
        if let Some((_, unix_ms)) = self.wall {
            keys.set_wall_clock(unix_ms);
        }
        self.tls = Some(keys);
    }

    /// The new connection's record layer when the listener speaks TLS; false when it must be
    /// closed (TLS is on but no keys were given).
    pub(super) fn start_tls(&mut self, id: ConnId) -> bool {
        if !self.config.tls.enabled() {
            return true;
        }
        let session = self.tls.as_ref().and_then(TlsKeys::accept);
        let Some(conn) = self.conn_mut(id) else { return true };
        let started = session.is_some();
        conn.tls = session.map(Box::new);
        if !started {
            self.metrics.tls_failures += 1;
        }
        started
    }

    /// Ciphertext read from a TLS connection: decrypted record by record, each batch of
    /// plaintext handed to the layer above before rustls reads on (it holds at most 16 KiB of
    /// plaintext), and what rustls answers (handshake messages, alerts) queued.
    pub(super) fn read_tls(&mut self, now: Instant, id: ConnId, mut data: &[u8]) {
        let mut plain = std::mem::take(&mut self.tls_plain);
        while !data.is_empty() {
            let Some(conn) = self.conn_mut(id) else { break };
            // Answered (or waiting on other nodes for the answer): further input is ignored, as
            // on plain TCP; rustls, which may have said close_notify already, sees none of it.
            let ignored = matches!(conn.phase, Phase::Answered | Phase::Responding);
            let Some(tls) = conn.tls.as_deref_mut().filter(|tls| !tls.failed && !ignored) else { break };
            let handshaking = tls.session.is_handshaking();
            let state = match tls.session.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => tls.session.process_new_packets().ok(),
                // Its buffers are full: the peer sent more than any record may hold.
                Err(_) => None,
            };
            let Some(state) = state else {
                self.tls_failed(now, id);
                break;
            };
            plain.clear();
            plain.resize(state.plaintext_bytes_to_read(), 0);
            if tls.session.reader().read_exact(&mut plain).is_err() {
                plain.clear();
            }
            if handshaking && !tls.session.is_handshaking() {
                self.metrics.tls_handshakes += 1;
            }
            self.flush_tls(id);
            if !plain.is_empty() {
                self.read_plain(now, id, &plain);
            }
            if state.peer_has_closed() {
                self.handle_eof(now, id);
                break;
            }
        }
        // A record's plaintext at most: kept for the next read rather than allocated again.
        self.tls_plain = plain;
    }

    /// Queues what rustls has to send on its own (handshake messages, alerts, close_notify).
    pub(super) fn flush_tls(&mut self, id: ConnId) {
        let sealed = self.conn_mut(id).and_then(|c| c.tls.as_deref_mut()).and_then(|tls| tls.take_sealed());
        if let Some(sealed) = sealed {
            self.enqueue_as_is(id, sealed);
        }
    }

    /// The connection will send nothing more after what is queued: on TLS, say so with
    /// close_notify (after what waits to be sealed), so the peer can tell the end from a
    /// truncation.
    pub(super) fn close_notify(&mut self, id: ConnId) {
        self.seal(id);
        if let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_deref_mut())
            && !tls.failed
        {
            tls.session.send_close_notify();
            self.flush_tls(id);
        }
    }

    /// Seals what the connections noted in `unsealed` queued since the last poll: one run of
    /// records per connection per turn.
    pub(super) fn seal_pending(&mut self) {
        let mut unsealed = std::mem::take(&mut self.unsealed);
        for &id in &unsealed {
            self.seal(id);
        }
        // The list's allocation is kept for the next turn.
        unsealed.clear();
        self.unsealed = unsealed;
    }

    /// Seals what waits on connection `id` into its out queue. A transmit was announced when
    /// it started to wait (or its queue was not empty then), so none is announced again.
    fn seal(&mut self, id: ConnId) {
        let Some(conn) = live_conn(&mut self.slots, id) else { return };
        let Some((plain, sealed)) = conn.tls.as_deref_mut().map(Tls::seal_pending) else { return };
        let len = sealed.as_ref().map_or(0, Bytes::len);
        if let Some(sealed) = sealed.filter(|s| !s.is_empty()) {
            let frame = self.frames.insert(sealed);
            conn.out.push(&mut self.frames, frame);
            self.frames.forget_unread(frame);
        }
        // Counted as plaintext when queued; the wire carries the records.
        self.metrics.bytes_out = self.metrics.bytes_out + len as u64 - plain as u64;
        self.metrics.queued_bytes = self.metrics.queued_bytes + len as u64 - plain as u64;
    }

    /// The peer broke TLS (not TLS at all, a bad record, a fatal alert): this connection
    /// alone ends, after the alert rustls owes it, if any, is written.
    fn tls_failed(&mut self, now: Instant, id: ConnId) {
        self.metrics.tls_failures += 1;
        self.flush_tls(id);
        let give_up = (self.epoch(now), later(now, self.config.server.close_timeout));
        let Some(conn) = live_conn(&mut self.slots, id) else { return };
        if let Some(tls) = conn.tls.as_deref_mut() {
            tls.failed = true;
            self.metrics.queued_bytes -= std::mem::take(&mut tls.pending).len() as u64;
        }
        if conn.flushed() {
            return self.finish(id);
        }
        // Further bytes are ignored, and nothing else is queued (the session seals nothing).
        conn.phase = Phase::Answered;
        conn.close_when_flushed = true;
        conn.timers.stop(Timer::Handshake);
        conn.timers.stop(Timer::Ping);
        conn.timers.stop(Timer::Pong);
        // A peer that never reads its alert is let go.
        conn.timers.cap(Timer::GiveUp, give_up.0, give_up.1);
        self.rearm(id);
    }

    /// Queues `bytes` exactly as given, for a connection's socket: already sealed, or for a
    /// plain TCP connection.
    fn enqueue_as_is(&mut self, id: ConnId, bytes: Bytes) {
        self.enqueue_sealed(id, bytes, false);
    }
}

/// Queues stored `frame` on connection `id`: shared as it is, or on TLS copied to what waits
/// to be sealed (and `id` noted in `unsealed` when it starts to wait). Returns the bytes
/// queued; `None` when nothing was (the session failed or is in its handshake).
pub(super) fn push_frame(
    conn: &mut Connection,
    id: ConnId,
    frames: &mut FrameStore,
    frame: FrameId,
    unsealed: &mut Vec<ConnId>,
) -> Option<usize> {
    let len = frames.get(frame).len();
    let Some(tls) = conn.tls.as_deref_mut() else {
        conn.out.push(frames, frame);
        return Some(len);
    };
    let first = tls.pending.is_empty();
    if !tls.queue(frames.get(frame)) {
        return None;
    }
    if first {
        unsealed.push(id);
    }
    Some(len)
}
