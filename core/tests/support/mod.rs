//! A scripted client for driving a `Hub` with raw bytes on a simulated clock.
#![allow(dead_code, unreachable_pub)]

use std::io::{Cursor, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_core::{BrokerCommand, Config, ConnId, Hub, LinkConn, Output};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;

/// A fixed mask so test output is reproducible.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A hub, a simulated clock, and what the hub told the shell.
pub struct Sim {
    pub hub: Hub,
    pub t0: Instant,
    pub now: Instant,
    pub closed: Vec<ConnId>,
    /// The hub's last `Output::Timeout`.
    pub timeout: Option<Instant>,
    /// `Output::Broker` commands, in order.
    pub broker: Vec<BrokerCommand>,
    /// `Output::RedisOpen` requests, in order.
    pub redis_opens: Vec<(LinkConn, String)>,
    /// `Output::Webhook` requests, in order.
    pub webhooks: Vec<switchboard_core::WebhookRequest>,
    /// `Output::RedisClose` orders, in order.
    pub redis_closes: Vec<LinkConn>,
}

impl Sim {
    pub fn new(config: Config) -> Self {
        let t0 = switchboard_testkit::origin();
        let hub = Hub::new(config, "test-node").expect("valid config");
        Self {
            hub,
            t0,
            now: t0,
            closed: Vec::new(),
            timeout: None,
            broker: Vec::new(),
            redis_opens: Vec::new(),
            webhooks: Vec::new(),
            redis_closes: Vec::new(),
        }
    }

    /// A hub that is one of `workers` of its node: it queues its publishes for the others.
    pub fn worker_of(config: Config, workers: usize) -> Self {
        let mut sim = Self::new(config);
        let hub = Hub::new(sim.hub.config().clone(), "test-node").expect("valid config");
        sim.hub = hub.with_workers(workers);
        sim
    }

    pub fn with_toml(toml: &str) -> Self {
        Self::new(Config::from_toml(toml).expect("test config parses"))
    }

    pub fn peer(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 40000 + u16::from(n)))
    }

    pub fn accept(&mut self) -> ConnId {
        self.hub.handle_accept(self.now, Self::peer(1))
    }

    pub fn send(&mut self, id: ConnId, bytes: &[u8]) {
        self.hub.handle_bytes(self.now, id, bytes);
        self.pump();
    }

    /// Moves the clock forward, running every timer on the way (like a shell would).
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        self.pump();
        while let Some(at) = self.timeout {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.hub.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
        self.hub.handle_timeout(self.now);
        self.pump();
    }

    /// Follows the hub's outputs until `Timeout`: records closes, broker commands and Redis
    /// opens; transmits are served by `take_output`.
    pub fn pump(&mut self) {
        loop {
            match self.hub.poll_output() {
                Output::Close(id) => self.closed.push(id),
                Output::Broker(command) => self.broker.push(command),
                Output::RedisOpen { conn, addr } => self.redis_opens.push((conn, addr)),
                Output::Webhook(request) => self.webhooks.push(request),
                Output::RedisClose(conn) => self.redis_closes.push(conn),
                Output::Transmit(_) | Output::RedisTransmit(_) => {}
                Output::Timeout(at) => {
                    self.timeout = at;
                    return;
                }
            }
        }
    }

    /// Everything the hub queued for Redis connection `conn`, as if the socket took it all.
    pub fn take_redis(&mut self, conn: LinkConn) -> Vec<u8> {
        let mut bytes = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); 4];
            let n = self.hub.redis_transmit(conn, &mut slices);
            let chunk: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            if chunk.is_empty() {
                return bytes;
            }
            self.hub.handle_redis_written(self.now, conn, chunk.len());
            bytes.extend(chunk);
        }
    }

    pub fn is_closed(&self, id: ConnId) -> bool {
        self.closed.contains(&id)
    }

    /// Everything queued for `id`, as if the socket took it all.
    pub fn take_output(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = self.hub.transmit(id, &mut slices);
            if n == 0 {
                break;
            }
            let mut written = 0;
            for slice in &slices[..n] {
                out.extend_from_slice(slice);
                written += slice.len();
            }
            self.hub.handle_written(self.now, id, written);
        }
        self.pump();
        out
    }

    /// Accepts a connection and upgrades it on `path` with extra request header lines.
    pub fn connect(&mut self, path: &str, extra: &str) -> (ConnId, String) {
        let id = self.accept();
        self.send(id, upgrade_request(path, extra).as_bytes());
        let out = self.take_output(id);
        (id, String::from_utf8_lossy(&out).into_owned())
    }

    /// Connects and asserts a 101.
    pub fn open(&mut self, path: &str) -> ConnId {
        let (id, response) = self.connect(path, "");
        assert!(response.starts_with("HTTP/1.1 101"), "expected 101, got {response}");
        id
    }
}

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame: `first` is the first header byte (FIN, RSV, opcode), masked unless told not.
pub fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

pub fn text(payload: &str) -> Vec<u8> {
    client_frame(0x81, payload.as_bytes(), true)
}

pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    client_frame(0x88, &payload, true)
}

/// Parses server frames (unmasked) from `bytes`.
pub fn server_frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut cursor = Cursor::new(bytes);
    let mut frames = Vec::new();
    while let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
        assert!(header.mask.is_none(), "server frames are never masked");
        let start = cursor.position() as usize;
        let end = start + len as usize;
        assert!(end <= bytes.len(), "truncated server frame");
        frames.push((header, bytes[start..end].to_vec()));
        cursor.set_position(end as u64);
    }
    assert_eq!(cursor.position() as usize, bytes.len(), "trailing bytes after server frames");
    frames
}

/// The close code of the single close frame in `bytes`.
pub fn close_code(bytes: &[u8]) -> Option<u16> {
    server_frames(bytes).into_iter().find_map(|(header, payload)| match header.opcode {
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) if payload.len() >= 2 => {
            Some(u16::from_be_bytes([payload[0], payload[1]]))
        }
        _ => None,
    })
}

pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
