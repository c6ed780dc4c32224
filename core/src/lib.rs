//! Switchboard's sans-IO core: the whole WebSocket hub as a state machine.
//!
//! The core never reads a clock, opens a socket or starts a thread. Bytes and time come in as
//! arguments; bytes to write and events to act on come out. A shell (mio, smol, or your own
//! loop) only moves them.
//!
//! # Run loop
//!
//! After every input, drain [`Hub::poll_event`], write what [`Hub::transmit`] offers for each
//! connection named, and sleep until [`Hub::poll_timeout`]:
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::io::{IoSlice, Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//! use switchboard_core::{Config, ConnId, Event, Hub};
//!
//! let listener = TcpListener::bind("127.0.0.1:8080")?;
//! listener.set_nonblocking(true)?;
//! let mut hub = Hub::new(Config::default(), "node-1");
//! let mut sockets: HashMap<ConnId, TcpStream> = HashMap::new();
//! let mut buf = vec![0u8; 64 * 1024];
//! loop {
//!     let now = Instant::now();
//!     while let Ok((stream, peer)) = listener.accept() {
//!         stream.set_nonblocking(true)?;
//!         sockets.insert(hub.handle_accept(now, peer), stream);
//!     }
//!     let ids: Vec<ConnId> = sockets.keys().copied().collect();
//!     for id in ids {
//!         let Some(stream) = sockets.get_mut(&id) else { continue };
//!         match stream.read(&mut buf) {
//!             Ok(0) => hub.handle_eof(now, id),
//!             Ok(n) => hub.handle_bytes(now, id, &buf[..n]),
//!             Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
//!             Err(_) => hub.handle_eof(now, id),
//!         }
//!     }
//!     if hub.poll_timeout().is_some_and(|t| t <= now) {
//!         hub.handle_timeout(now);
//!     }
//!     while let Some(event) = hub.poll_event() {
//!         if let Event::Close(id) = event {
//!             sockets.remove(&id);
//!         }
//!     }
//!     for (id, stream) in &mut sockets {
//!         let mut slices = [IoSlice::new(&[]); 64];
//!         let n = hub.transmit(*id, &mut slices);
//!         if n > 0 {
//!             if let Ok(written) = stream.write_vectored(&slices[..n]) {
//!                 hub.consume(*id, written);
//!             }
//!         }
//!     }
//!     std::thread::sleep(Duration::from_millis(1));
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `core/examples/embed.rs` is the same loop, complete and runnable.
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
pub mod pubsub;
pub mod queue;
pub mod redis;

pub use broker::{BrokerCommand, Envelope, Origin};
pub use config::Config;
pub use hub::{ConnId, Event, Hub, PublishError};
pub use metrics::Metrics;
pub use redis::LinkConn;
