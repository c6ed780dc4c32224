//! The hub's one output queue: everything a shell must do, in order, until `Timeout`.

use std::time::Instant;

use super::{ConnId, Hub};
use crate::broker::BrokerCommand;
use crate::redis::LinkConn;

/// A socket event, queued small and cheap apart from the rarer outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Transmit(ConnId),
    Close(ConnId),
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
        if let Some(event) = self.events.pop_front() {
            return match event {
                Event::Transmit(id) => Output::Transmit(id),
                Event::Close(id) => Output::Close(id),
            };
        }
        if let Some(command) = self.broker_out.pop_front() {
            return Output::Broker(command);
        }
        if let Some(link) = &mut self.redis {
            // Closes first: a reconnect of the same connection may follow at once.
            if let Some(conn) = link.poll_close() {
                return Output::RedisClose(conn);
            }
            if let Some((conn, addr)) = link.poll_connect() {
                return Output::RedisOpen { conn, addr };
            }
            // Said once per input while bytes wait: the shell writes, or waits for writability.
            for conn in [LinkConn::Command, LinkConn::Subscriber] {
                let told = &mut self.redis_told[conn.index()];
                if !*told && link.wants_write(conn) {
                    *told = true;
                    return Output::RedisTransmit(conn);
                }
            }
        }
        Output::Timeout(self.poll_timeout())
    }
}
