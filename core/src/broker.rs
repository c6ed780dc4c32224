//! The broker interface: how a hub reaches the other hubs of its node (an in-process bus) and
//! other nodes (Redis). Commands go out through `Hub::poll_broker`; messages come in through
//! `Hub::handle_broker`.

use bytes::Bytes;

/// Which hub a message came from, so it is never delivered twice to the same hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The node's id.
    pub node: String,
    /// The worker (hub) within the node.
    pub worker: u32,
}

/// A message travelling between hubs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The hub that accepted it from a client or the API.
    pub origin: Origin,
    /// The channel (`route:<path>` for a broadcast route's room).
    pub channel: String,
    /// True when the payload is text (pub/sub data is always JSON text).
    pub text: bool,
    /// For a room, the message as sent; for a pub/sub channel, the raw JSON `data`.
    pub payload: Bytes,
}

/// What a hub asks of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerCommand {
    /// Deliver to every other hub with subscribers on the channel.
    Publish(Envelope),
    /// The hub has its first local subscriber on this channel.
    Subscribe(String),
    /// The hub's last local subscriber on this channel left.
    Unsubscribe(String),
}
