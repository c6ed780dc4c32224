//! Switchboard's sans-IO core: the whole WebSocket hub as a state machine.
//!
//! The core never reads a clock, opens a socket or starts a thread. Bytes and time come in as
//! arguments (`handle_*`, each with the current `Instant`); what to do comes out of one queue,
//! [`Hub::poll_output`]. A shell (mio, smol, or your own loop) only moves bytes and time.
//!
//! # Run loop
//!
//! **After every input, poll until [`Output::Timeout`].** Following that rule leaves nothing
//! undrained: client writes, closes, messages for other workers and the Redis sockets all come
//! through the same queue. Writing is itself an input ([`Hub::handle_written`]), and so is the
//! clock ([`Hub::handle_timeout`], due at the instant `Timeout` names). One turn, for any
//! socket type:
//!
//! ```
//! use std::collections::HashMap;
//! use std::io::{ErrorKind, IoSlice, Read, Write};
//! use std::time::Instant;
//! use switchboard_core::{ConnId, Hub, Output};
//!
//! /// `readable` names the sockets with input; `now` is the time the shell read its clock.
//! /// Returns when the hub next wants `handle_timeout`.
//! fn turn<S: Read + Write>(
//!     hub: &mut Hub,
//!     now: Instant,
//!     due: Option<Instant>,
//!     sockets: &mut HashMap<ConnId, S>,
//!     readable: &[ConnId],
//!     buf: &mut [u8],
//! ) -> Option<Instant> {
//!     for &id in readable {
//!         let Some(socket) = sockets.get_mut(&id) else { continue };
//!         match socket.read(buf) {
//!             Ok(0) => hub.handle_eof(now, id),
//!             Ok(n) => hub.handle_bytes(now, id, &buf[..n]),
//!             Err(e) if e.kind() == ErrorKind::WouldBlock => {}
//!             Err(_) => hub.handle_eof(now, id),
//!         }
//!     }
//!     if due.is_some_and(|at| at <= now) {
//!         hub.handle_timeout(now);
//!     }
//!     loop {
//!         match hub.poll_output() {
//!             Output::Transmit(id) => {
//!                 let Some(socket) = sockets.get_mut(&id) else { continue };
//!                 let mut slices = [IoSlice::new(&[]); 64];
//!                 let n = hub.transmit(id, &mut slices);
//!                 if let Ok(written) = socket.write_vectored(&slices[..n]) {
//!                     hub.handle_written(now, id, written);
//!                 }
//!                 // What did not fit waits for writability; `wants_write` says whether any did.
//!             }
//!             Output::Close(id) => {
//!                 sockets.remove(&id);
//!             }
//!             // Several workers: hand publishes to the others' `handle_broker`. With
//!             // `broker.kind = "redis"`: open, write and drop the two Redis sockets.
//!             Output::Broker(_) | Output::RedisOpen { .. } | Output::RedisTransmit(_) | Output::RedisClose(_) => {}
//!             Output::Webhook(_) => {} // an HTTP POST to perform; see `Hub::handle_webhook_done`
//!             Output::Timeout(at) => return at,
//!         }
//!     }
//! }
//! ```
//!
//! `shell/examples/embed.rs` serves the default routes with such a loop over `std::net`
//! (accepting with [`Hub::handle_accept`]), complete and runnable. A hub alone (the default)
//! asks for no broker or Redis work; [`Hub::with_workers`] and `broker.kind = "redis"` do. With
//! Redis, polling a new hub (before any input) already asks for the link's two sockets; their
//! connect deadline starts with the first input.
//!
//! # What is public
//!
//! [`Hub`] and its inputs and [`Output`]; [`Config`] and its sections ([`config`]); the parsed
//! certificate and key a TLS listener presents ([`TlsKeys`]); the node-wide
//! [`Admission`] a shell shares between hubs; [`Metrics`]; the broker [`Envelope`]; and, in
//! [`codec`], the WebSocket frame decoder and permessage-deflate for reuse on their own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod api;
mod auth;
mod broker;
mod channel;
pub mod config;
mod deflate;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod history;
mod hub;
mod limits;
mod metrics;
mod presence;
mod proxy;
mod pubsub;
mod pusher;
mod queue;
mod redis;
mod time;
mod tls;

pub use auth::jwt::sign_hs256;
pub use broker::{BrokerCommand, Envelope, Origin};
pub use config::{Config, ConfigError};
pub use history::{HistoryStore, HistoryTable, StreamRead, StreamRules, StreamTop};
pub use hub::{
    ConnId, Footprint, Hub, Output, PublishError, WebhookOutcome, WebhookRequest, check_broker_ca, check_public_keys,
};
pub use limits::{Admission, AdmissionTable, Refusal};
pub use metrics::{Figure, Kind as FigureKind, Metrics};
pub use presence::{PresenceStore, PresenceTable};
pub use proxy::{Cidr, CidrError};
pub use redis::{LinkConn, redis_cluster_slot};
pub use tls::TlsKeys;

/// The WebSocket codec on its own: a streaming frame decoder with the RFC 6455 rules on top of
/// tungstenite's frame types, frame encoding, and permessage-deflate (RFC 7692).
pub mod codec {
    pub use crate::deflate::{DeflateParams, Deflater, InflateError, Inflater, negotiate};
    pub use crate::frame::{Decoded, Decoder, Limits, Violation, data_opcode, encode, encode_close, unmask};
}
