//! The hub's one output queue: everything a shell must do, in order, until `Timeout`.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{ConnId, Hub};
use crate::broker::BrokerCommand;
use crate::redis::{LinkConn, RedisSession};

/// A socket event, queued small and cheap apart from the rarer outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Transmit(ConnId),
    Close(ConnId),
}

/// An HTTP `POST` for the shell to perform: a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// Names this delivery in [`Hub::handle_webhook_done`].
    pub id: u64,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Request headers (`Content-Type`, `X-Pusher-Key`, `X-Pusher-Signature` and the
    /// receiver's own), to send as given.
    pub headers: Vec<(String, String)>,
    /// The body, to send as given (its signature covers these exact bytes).
    pub body: Vec<u8>,
}

/// How a webhook delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: refused, unreachable, TLS failure, timed out.
    Failed,
}

/// What the hub asks of its shell. After every input, call [`Hub::poll_output`] until it
/// returns `Timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// The connection has bytes to send: write what [`Hub::transmit`] offers when its socket
    /// is writable and report it with [`Hub::handle_written`]; [`Hub::wants_write`] says
    /// whether any is left.
    Transmit(ConnId),
    /// Close the connection's socket. The hub has already forgotten the connection.
    Close(ConnId),
    /// Hand this to the node's other hubs (each calls `handle_broker` with the publishes).
    Broker(BrokerCommand),
    /// Open a TCP connection to Redis for `conn` at `addr` (`host:port`); report the outcome
    /// with `handle_redis_connected` or `handle_redis_connect_failed`.
    RedisOpen {
        /// Which of the link's two connections.
        conn: LinkConn,
        /// Where to connect.
        addr: String,
    },
    /// The Redis connection has bytes to send: write what `redis_transmit` offers and report
    /// it with `handle_redis_written`.
    RedisTransmit(LinkConn),
    /// Drop this Redis socket; nothing more is reported for it.
    RedisClose(LinkConn),
    /// Perform this HTTP `POST` (a Pusher webhook) and report how it went with
    /// [`Hub::handle_webhook_done`]; the hub decides what to send, when, and what to retry.
    Webhook(WebhookRequest),
    /// Nothing more to do now: call `handle_timeout` at this instant (`None`: no timer is set;
    /// wait for input).
    Timeout(Option<Instant>),
}

impl Hub {
    /// The next thing the shell must do. Poll after every input until `Timeout`: nothing is
    /// left behind then.
    pub fn poll_output(&mut self) -> Output {
        if !self.pusher_effects.is_empty() || !self.directory_out.is_empty() {
            self.pusher_flush();
        }
        if !self.unsealed.is_empty() {
            self.seal_pending();
        }
        if let Some(event) = self.events.pop_front() {
            return match event {
                Event::Transmit(id) => Output::Transmit(id),
                Event::Close(id) => Output::Close(id),
            };
        }
        if let Some(command) = self.broker_out.pop_front() {
            return Output::Broker(command);
        }
        if let Some(request) = self.webhooks_out.pop_front() {
            return Output::Webhook(request);
        }
        if let Some(conn) = self.redis_tls_failures.pop_front() {
            return Output::RedisClose(conn);
        }
        if let Some(output) = self.poll_redis() {
            return output;
        }
        Output::Timeout(self.poll_timeout())
    }
}

impl Hub {
    /// The next Redis socket to drop, open or write to, if any.
    fn poll_redis(&mut self) -> Option<Output> {
        let latest = self.latest;
        if let Some(now) = latest {
            self.seal_redis(now);
        }
        // What the shell is told to open is remembered (its TLS server name); what it is told
        // to drop loses its session.
        let opening = |sessions: &mut BTreeMap<LinkConn, RedisSession>,
                       addrs: &mut BTreeMap<LinkConn, String>,
                       conn: LinkConn,
                       addr: String| {
            sessions.remove(&conn);
            addrs.insert(conn, addr.clone());
            Output::RedisOpen { conn, addr }
        };
        if let Some(reader) = &mut self.map_reader {
            if let Some(conn) = reader.poll_close() {
                self.redis_sessions.remove(&conn);
                return Some(Output::RedisClose(conn));
            }
            if let Some((conn, addr)) = reader.poll_connect() {
                return Some(opening(&mut self.redis_sessions, &mut self.redis_addrs, conn, addr));
            }
            let wants = match self.redis_sessions.get(&LinkConn::MAP) {
                Some(session) => !session.sealed.is_empty(),
                None => reader.wants_write(),
            };
            if !self.map_told && wants {
                self.map_told = true;
                return Some(Output::RedisTransmit(LinkConn::MAP));
            }
        }
        for (shard, link) in self.redis.iter_mut().enumerate() {
            // Closes first: a reconnect of the same connection may follow at once.
            if let Some(conn) = link.poll_close() {
                self.redis_sessions.remove(&conn.on_shard(shard));
                return Some(Output::RedisClose(conn.on_shard(shard)));
            }
            if let Some((conn, addr)) = link.poll_connect() {
                return Some(opening(&mut self.redis_sessions, &mut self.redis_addrs, conn.on_shard(shard), addr));
            }
            // Said once per input while bytes wait: the shell writes, or waits for writability.
            for conn in [LinkConn::Command, LinkConn::Subscriber] {
                let which = conn.on_shard(shard);
                let wants = match self.redis_sessions.get(&which) {
                    Some(session) => !session.sealed.is_empty(),
                    None => link.wants_write(conn),
                };
                let Some(told) = self.redis_told.get_mut(which.index()) else { continue };
                if !*told && wants {
                    *told = true;
                    return Some(Output::RedisTransmit(which));
                }
            }
        }
        None
    }
}
