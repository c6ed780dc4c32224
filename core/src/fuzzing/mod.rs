//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay in `cargo test`,
//! so both drive the core the same way. Not part of the stable API.
//!
//! Each entry takes the fuzzer's bytes and an origin instant (the core reads no clock, so the
//! caller brings one; only offsets from it matter). Bad input must never panic the core: a
//! panic here is either a core bug or a broken invariant, and says which in its message.
//!
//! The inputs are decoded by hand ([`Choices`]) rather than with the `arbitrary` crate, so
//! the core gains no dependency and a corpus file stays a plain byte string that a person can
//! write: most targets take the bytes almost verbatim after one or two leading choice bytes.
//!
//! Layout: the per-target entry points are in `targets` (and `hub_ops`, the operation-sequence
//! driver, in its own module); `client` is the harness's WebSocket client (frames it sends, a
//! checking reader of what the server sends); `rig` is a hub on a simulated clock with the
//! shell's bookkeeping. This file holds the input decoder and what the targets share.

mod client;
mod hub_ops;
mod rig;
mod targets;
mod tls;

pub use client::{MASK, ServerItem, ServerStream, client_frame, upgrade_request};
pub use hub_ops::hub_ops;
pub use rig::{advance, assert_hub_empty, peer_addr, take_output};
/// One step of the Redis link's generator, for seeded simulations outside the crate.
pub fn splitmix64(state: &mut u64) -> u64 {
    crate::redis::splitmix64(state)
}
pub use targets::{config, frames, handshake, http_api, native, pubsub_json, pusher, pusher_hub, resp};
pub use tls::{TlsFixture, tls};

/// Routes every hub here serves, in the order `Choices` picks them.
pub const ROUTES: [&str; 3] = ["/echo", "/chat", "/ws"];

/// The API key configured where the HTTP API is fuzzed.
pub const API_KEY: &str = "fuzz-key";
/// The `admin.token` of the `http_api` target's hub.
pub const ADMIN_TOKEN: &str = "fuzz-admin";

/// Fuzzer bytes read as a stream of small choices; an exhausted input reads as zeros.
#[derive(Debug, Clone)]
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    /// Choices drawn from `data`, front to back.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u16 from the next two bytes.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        if n <= 256 { usize::from(self.byte()) % n } else { usize::from(self.u16()) % n }
    }

    /// A yes/no choice.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` of the next bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
