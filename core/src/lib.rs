//! Switchboard's sans-IO core: the whole WebSocket hub as a state machine.
//!
//! The core never reads a clock, opens a socket or starts a thread. Bytes and time come in as
//! arguments; bytes to write and events to act on come out. A shell (mio, smol, or your own
//! loop) only moves them.
//!
//! # Run loop
//!
//! A shell owns the sockets and the clock. After every input, it drains [`Hub::poll_event`],
//! writes what [`Hub::transmit`] offers for each connection named, and sleeps until
//! [`Hub::poll_timeout`]. One turn, for any socket type:
//!
//! ```
//! use std::collections::HashMap;
//! use std::io::{ErrorKind, IoSlice, Read, Write};
//! use std::time::Instant;
//! use switchboard_core::{ConnId, Event, Hub};
//!
//! /// `readable` names the sockets with input; `now` is the time the shell read its clock.
//! fn turn<S: Read + Write>(
//!     hub: &mut Hub,
//!     now: Instant,
//!     sockets: &mut HashMap<ConnId, S>,
//!     readable: &[ConnId],
//!     buf: &mut [u8],
//! ) {
//!     for &id in readable {
//!         let Some(socket) = sockets.get_mut(&id) else { continue };
//!         match socket.read(buf) {
//!             Ok(0) => hub.handle_eof(now, id),
//!             Ok(n) => hub.handle_bytes(now, id, &buf[..n]),
//!             Err(e) if e.kind() == ErrorKind::WouldBlock => {}
//!             Err(_) => hub.handle_eof(now, id),
//!         }
//!     }
//!     if hub.poll_timeout().is_some_and(|t| t <= now) {
//!         hub.handle_timeout(now);
//!     }
//!     while let Some(event) = hub.poll_event() {
//!         match event {
//!             Event::Transmit(id) => {
//!                 let Some(socket) = sockets.get_mut(&id) else { continue };
//!                 let mut slices = [IoSlice::new(&[]); 64];
//!                 let n = hub.transmit(id, &mut slices);
//!                 if let Ok(written) = socket.write_vectored(&slices[..n]) {
//!                     hub.consume(id, written);
//!                 }
//!                 // What did not fit waits for writability; `wants_write` says whether any did.
//!             }
//!             Event::Close(id) => {
//!                 sockets.remove(&id);
//!             }
//!         }
//!     }
//! }
//! ```
//!
//! `shell/examples/embed.rs` serves the default routes with such a loop over `std::net`
//! (accepting with [`Hub::handle_accept`]), complete and runnable.
//!
//! Two more duties fall to a shell that runs several workers or nodes: forward what
//! [`Hub::poll_broker`] yields to the other workers' hubs ([`Hub::handle_broker`]), and, with
//! `broker.kind = "redis"`, open the sockets [`Hub::poll_redis_connect`] names and move their
//! bytes (`handle_redis_*`, `redis_transmit`, `redis_consume`). Call [`Hub::handle_timeout`]
//! once at start so the Redis link begins connecting before the first client arrives.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod broker;
pub mod channel;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod deflate;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod pubsub;
pub mod queue;
pub mod redis;
mod time;

pub use broker::{BrokerCommand, Envelope, Origin};
pub use config::Config;
pub use hub::{ConnId, Event, Footprint, Hub, PublishError};
pub use metrics::Metrics;
pub use redis::LinkConn;
