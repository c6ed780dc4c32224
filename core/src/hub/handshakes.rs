//! Connections in their handshake: counted for the node, and the oldest makes room when
//! there are too many.

use std::net::IpAddr;

use super::{ConnId, Hub, live};
use crate::handshake::HttpResponse;
use crate::proxy;

impl Hub {
    /// The address a connection's handshake counts against: none for a trusted proxy, whose
    /// sockets carry many clients.
    pub(super) fn handshake_key(&self, peer: IpAddr) -> Option<IpAddr> {
        let trusted = self.config.server.trusted_proxies.iter().any(|cidr| cidr.contains(peer));
        (!trusted).then(|| proxy::client_key(peer, self.config.limits.ipv6_prefix))
    }

    /// The node has more connections in their handshake than `max_handshaking`: this hub's
    /// oldest one (never `newest`) makes room, so slow sockets cannot lock real clients out.
    /// A hub whose only handshake is the newest lets the node run over until its others act.
    pub(super) fn evict_oldest_handshake(&mut self, newest: ConnId) {
        while let Some(&oldest) = self.handshakes.front() {
            if oldest == newest {
                return;
            }
            self.handshakes.pop_front();
            if let Some(proxy_pending) = self.conn(oldest).filter(|c| c.handshaking).map(|c| c.proxy_pending) {
                self.metrics.handshake_evictions += 1;
                if proxy_pending {
                    return self.finish(oldest);
                }
                let response =
                    HttpResponse::error(503, "too many connections in their handshake").with_header("Retry-After", "1");
                return self.respond_http(oldest, &response);
            }
        }
    }

    /// The connection's handshake is over (upgraded, answered or gone): the node counts it no
    /// longer.
    pub(super) fn end_handshake(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        if !std::mem::take(&mut conn.handshaking) {
            return;
        }
        let peer = conn.peer.ip();
        self.metrics.handshaking -= 1;
        let key = self.handshake_key(peer);
        self.admission.end_handshake(key);
        // Ended handshakes are skipped when met at the front; this keeps the rest from piling
        // up behind one slow socket.
        if self.handshakes.len() > 2 * self.metrics.handshaking as usize + 64 {
            let slots = &self.slots;
            self.handshakes.retain(|&id| live(slots, id).is_some_and(|c| c.handshaking));
        }
    }
}
