//! A hub on a simulated clock with the shell's side of it, and the shell helpers the targets and
//! the simulation tests share.

use std::collections::BTreeSet;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::{ServerItem, ServerStream, upgrade_request};
use crate::broker::BrokerCommand;
use crate::config::Config;
use crate::hub::{ConnId, Hub, Output};
use crate::redis::LinkConn;

/// What the hub asked of the shell in one pass of `poll_output` until `Timeout`, by kind.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    /// Connections to close, in order.
    pub closed: Vec<ConnId>,
    /// Commands for the other hubs, in order.
    pub broker: Vec<BrokerCommand>,
    /// Redis sockets to open (`true`) or drop (`false`), in order.
    pub redis: Vec<(LinkConn, bool)>,
    /// The hub's next timer.
    pub timeout: Option<Instant>,
    /// Webhook requests, in order.
    pub webhooks: Vec<crate::hub::WebhookRequest>,
}

/// Polls the hub until `Timeout`, as the crate docs' loop does; transmits are left to the
/// caller, who reads queued bytes with [`take_output`] when it likes.
pub(crate) fn drain(hub: &mut Hub) -> Outputs {
    let mut out = Outputs::default();
    for _ in 0..1_000_000 {
        match hub.poll_output() {
            Output::Transmit(_) | Output::RedisTransmit(_) => {}
            Output::Close(id) => out.closed.push(id),
            Output::Broker(command) => out.broker.push(command),
            Output::RedisOpen { conn, .. } => out.redis.push((conn, true)),
            Output::RedisClose(conn) => out.redis.push((conn, false)),
            Output::Webhook(request) => out.webhooks.push(request),
            Output::Timeout(at) => {
                out.timeout = at;
                return out;
            }
        }
    }
    panic!("poll_output never reached Timeout: the output queue refills itself");
}

/// A hub on a simulated clock, with the shell's side: outputs drained, sockets tracked.
#[derive(Debug)]
pub(super) struct Rig {
    pub(super) hub: Hub,
    pub(super) now: Instant,
    live: BTreeSet<ConnId>,
    /// Redis sockets the hub asked to open (`true`) or drop, not yet taken by the target.
    pub(super) redis: Vec<(LinkConn, bool)>,
    /// The hub's last `Timeout`.
    timeout: Option<Instant>,
}

/// A connection `Rig::open` upgraded, with the client's reader.
pub(super) struct Opened {
    pub(super) id: ConnId,
    pub(super) stream: ServerStream,
}

impl Rig {
    pub(super) fn new(config: Config, t0: Instant) -> Self {
        // The targets build their configs from valid parts or from TOML that parsed: a refusal
        // here is a disagreement between parsing and validation, which is worth a crash.
        let hub = Hub::new(config, "fuzz").unwrap_or_else(|e| panic!("a parsed config was refused: {e}"));
        Self { hub, now: t0, live: BTreeSet::new(), redis: Vec::new(), timeout: None }
    }

    pub(super) fn accept(&mut self, peer: u8) -> ConnId {
        let id = self.hub.handle_accept(self.now, peer_addr(peer));
        assert!(self.live.insert(id), "handle_accept returned a live id");
        self.pump();
        id
    }

    pub(super) fn open(&mut self, peer: u8, path: &str, deflate: Option<&str>) -> Opened {
        let id = self.accept(peer);
        let extra = deflate.map(|d| format!("Sec-WebSocket-Extensions: {d}\r\n")).unwrap_or_default();
        self.send(id, upgrade_request(path, &extra).as_bytes());
        let mut stream = ServerStream::new();
        let items = stream.read(&self.read_all(id));
        assert!(
            matches!(items.first(), Some(ServerItem::Response { status: 101, .. })),
            "the harness's upgrade was refused: {items:?}"
        );
        Opened { id, stream }
    }

    pub(super) fn send(&mut self, id: ConnId, bytes: &[u8]) {
        self.hub.handle_bytes(self.now, id, bytes);
        self.pump();
    }

    pub(super) fn eof(&mut self, id: ConnId) {
        self.hub.handle_eof(self.now, id);
        self.pump();
        assert!(!self.live.contains(&id), "handle_eof did not close the connection");
    }

    pub(super) fn is_closed(&self, id: ConnId) -> bool {
        !self.live.contains(&id)
    }

    /// Everything queued for `id`, as if the socket took it all.
    pub(super) fn read_all(&mut self, id: ConnId) -> Vec<u8> {
        let out = take_output(&mut self.hub, self.now, id, usize::MAX);
        self.pump();
        out
    }

    pub(super) fn pump(&mut self) {
        let out = drain(&mut self.hub);
        for id in out.closed {
            assert!(self.live.remove(&id), "Close event for a connection not open: {id:?}");
        }
        self.redis.extend(out.redis);
        self.timeout = out.timeout;
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.pump();
        let (live, redis) = (&mut self.live, &mut self.redis);
        self.now = advance(&mut self.hub, self.now, self.now + by, self.timeout, &mut |hub| {
            let out = drain(hub);
            for id in out.closed {
                assert!(live.remove(&id), "Close event for a connection not open: {id:?}");
            }
            redis.extend(out.redis);
            out.timeout
        });
        self.pump();
    }

    /// With every connection gone, nothing may remain: gauges, channels, queued bytes, timers.
    pub(super) fn assert_empty(&mut self) {
        assert!(self.live.is_empty(), "the harness left connections open");
        assert_hub_empty(&self.hub);
    }
}

/// A distinct loopback peer per number.
pub fn peer_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 40_000 + u16::from(n)))
}

/// Writes up to `max` of the connection's queued bytes, as a socket that took that much would.
pub fn take_output(hub: &mut Hub, now: Instant, id: ConnId, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = hub.transmit(id, &mut slices);
        if n == 0 {
            break;
        }
        let before = out.len();
        for slice in &slices[..n] {
            let room = max - out.len();
            out.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        hub.handle_written(now, id, out.len() - before);
    }
    out
}

/// Runs every timer up to `end` in order, as a shell sleeping on `Output::Timeout` would:
/// `timeout` is the hub's last word, and `after` drains the outputs after each wake-up and
/// returns the next one. Returns the new now.
pub fn advance(
    hub: &mut Hub,
    mut now: Instant,
    end: Instant,
    mut timeout: Option<Instant>,
    after: &mut dyn FnMut(&mut Hub) -> Option<Instant>,
) -> Instant {
    let mut spins = 0;
    while let Some(at) = timeout {
        if at > end {
            break;
        }
        if at <= now {
            // A timer already due after handle_timeout(now) would spin a shell forever.
            spins += 1;
            assert!(spins < 10_000, "poll_timeout stays at {:?} past now: a busy loop", at);
        }
        now = now.max(at);
        hub.handle_timeout(now);
        timeout = after(hub);
    }
    now = now.max(end);
    hub.handle_timeout(now);
    after(hub);
    now
}

/// An empty hub holds nothing: no connection, subscription, channel, queued byte or timer.
pub fn assert_hub_empty(hub: &Hub) {
    let m = hub.metrics();
    assert_eq!(hub.connection_count(), 0, "connections left");
    assert_eq!(m.connections_open, 0, "connections_open gauge left at {}", m.connections_open);
    assert!(m.connections_by_route.values().all(|&n| n == 0), "route gauges left: {:?}", m.connections_by_route);
    assert_eq!(m.subscriptions, 0, "subscriptions gauge left at {}", m.subscriptions);
    assert_eq!(m.channels, 0, "channels gauge left at {}", m.channels);
    assert_eq!(m.queued_bytes, 0, "queued_bytes gauge left at {}", m.queued_bytes);
    assert_eq!(hub.footprint().pusher_channels, 0, "the Pusher directory kept channels");
}
