//! One worker turn's outputs, handled once for every shell: the hub says what to do, the
//! runtime's [`Sockets`] do it.

use std::time::Instant;

use log::debug;
use switchboard_core::{BrokerCommand, ConnId, Envelope, Hub, LinkConn, Output, WebhookOutcome, WebhookRequest};

use crate::redis::{RedisSockets, resolve};

/// A runtime's sockets as the hub's outputs need them: clients and the Redis pair.
pub trait Sockets: RedisSockets {
    /// Client `id` has bytes queued: write them this turn (or when the socket is writable).
    fn transmit(&mut self, id: ConnId);
    /// The hub forgot client `id`: drop its socket.
    fn close_client(&mut self, id: ConnId);
    /// Performs `request` off the worker's thread; its outcome comes back as
    /// `Message::WebhookDone`. False when it cannot even be queued: it has then failed.
    fn webhook(&mut self, request: WebhookRequest) -> bool;
}

/// Follows the hub's outputs until it says `Timeout`, which it returns. Publishes for the
/// node's other workers are added to `publishes`: a turn's go out together, so a peer wakes
/// once and writes them to its subscribers in one pass.
pub fn drain_outputs(
    hub: &mut Hub,
    now: Instant,
    sockets: &mut impl Sockets,
    publishes: &mut Vec<Envelope>,
) -> Option<Instant> {
    loop {
        match hub.poll_output() {
            Output::Transmit(id) => sockets.transmit(id),
            Output::Close(id) => sockets.close_client(id),
            // Subscriptions need no bookkeeping: a hub with no subscriber drops an envelope.
            Output::Broker(BrokerCommand::Publish(envelope)) => publishes.push(envelope),
            Output::Broker(BrokerCommand::Subscribe(_) | BrokerCommand::Unsubscribe(_)) => {}
            Output::RedisClose(which) => RedisSockets::close(sockets, which),
            Output::RedisOpen { conn, addr } => {
                if let Err(e) = resolve(&addr).and_then(|target| sockets.connect(conn, target)) {
                    // The link counts it and backs off; its breaker speaks for a Redis that stays away.
                    debug!("redis {conn:?}: connect {addr}: {e}");
                    hub.handle_redis_connect_failed(now, conn);
                }
            }
            Output::RedisTransmit(which) => {
                sockets.flush(hub, now, which);
            }
            Output::Webhook(request) => {
                let id = request.id;
                if !sockets.webhook(request) {
                    // The hub's retry policy applies as to any other failed delivery.
                    hub.handle_webhook_done(now, id, WebhookOutcome::Failed);
                }
            }
            Output::Timeout(at) => return at,
        }
    }
}

/// After a blocked Redis socket became writable: write what waits.
pub fn resume_redis(hub: &mut Hub, now: Instant, sockets: &mut impl Sockets, which: LinkConn) {
    if hub.redis_wants_write(which) {
        sockets.flush(hub, now, which);
    }
}
