//! What arrives on an open connection: frames decoded into messages, control frames and
//! violations, rate limits, and the echo route.

use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::{ConnId, Hub, Phase, Timer, room_name};
use crate::config::{RateLimitAction, RouteMode};
use crate::deflate::{DeflateParams, Deflater};
use crate::frame::{self, Decoded, Limits};
use crate::pubsub::{self, ErrorCode, RequestId};

/// Unsent bytes below which answering pings never counts as flooding, however small the
/// configured queue limit.
const PONG_FLOOD_FLOOR: usize = 64 * 1024;

impl Hub {
    pub(super) fn read_frames(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let limits = Limits {
            max_frame: self.config.limits.frame_limit().0,
            max_message: self.config.limits.max_message_bytes.as_usize(),
        };
        let mut decoded = std::mem::take(&mut self.decoded);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.decoder.feed(data, limits, &mut decoded);
        self.metrics.bytes_in += data.len() as u64;
        for unit in decoded.drain(..) {
            self.on_unit(now, id, unit);
        }
        self.decoded = decoded;
        self.rearm(id);
    }

    pub(super) fn on_unit(&mut self, now: Instant, id: ConnId, unit: Decoded) {
        let Some(conn) = self.conn_mut(id) else { return };
        let open = conn.phase == Phase::Open;
        match unit {
            Decoded::Message { text, data } => {
                if open {
                    self.metrics.messages_in += 1;
                    self.on_message(now, id, text, data);
                }
            }
            Decoded::Ping(payload) => {
                let flooded = conn.unsent()
                    > self.config.limits.send_queue_bytes.as_usize().saturating_mul(2).max(PONG_FLOOD_FLOOR);
                if open && flooded {
                    // Pongs are never dropped, but a peer that pings without ever reading would
                    // grow its queue forever: past twice the limit it is a slow consumer.
                    self.metrics.slow_consumer_closes += 1;
                    self.close(now, id, 1008, "slow consumer");
                } else if open {
                    self.enqueue(id, frame::encode(OpCode::Control(Control::Pong), false, &payload));
                }
            }
            Decoded::Pong(_) => conn.timers.stop(Timer::Pong),
            Decoded::Close(close) => {
                conn.close_when_flushed = true;
                if conn.close_sent {
                    if conn.flushed() {
                        self.finish(id);
                    }
                } else {
                    // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty reply.
                    let reply = match &close {
                        Some((code, _)) => frame::encode_close(*code, ""),
                        None => frame::encode(OpCode::Control(Control::Close), false, &[]),
                    };
                    self.metrics.count_close(close.as_ref().map_or(1005, |(code, _)| *code));
                    self.send_close_frame(now, id, reply);
                }
            }
            Decoded::Fail(violation) => self.close(now, id, violation.code, violation.reason),
        }
    }

    pub(super) fn on_message(&mut self, now: Instant, id: ConnId, text: bool, data: Vec<u8>) {
        let Some(conn) = self.conn_mut(id) else { return };
        conn.last_active = now;
        if conn.pusher.is_some() {
            return self.on_pusher(now, id, text, &data);
        }
        let route = conn.route;
        let Some(route) = self.config.route.get(route) else { return };
        let mode = route.mode;
        let path = route.path.clone();
        if !self.within_rate(now, id, data.len()) {
            self.metrics.rate_limited += 1;
            match self.config.rate_limit.on_exceed {
                RateLimitAction::Close => return self.close(now, id, 1008, "rate limit exceeded"),
                RateLimitAction::Error if mode == RouteMode::Pubsub => {
                    let id_field = serde_json::from_slice::<IdOnly>(&data).ok().and_then(|o| o.id);
                    return self
                        .reply(id, pubsub::error(id_field.as_ref(), ErrorCode::RateLimited, "rate limit exceeded"));
                }
                RateLimitAction::Error => return,
            }
        }
        match mode {
            RouteMode::Echo => {
                let Some(conn) = self.conn(id) else { return };
                let frame = self.encode_message(conn.deflate, text, &data);
                if self.enqueue_bounded(id, frame) {
                    self.metrics.messages_out += 1;
                }
            }
            RouteMode::Broadcast => self.fan_out(now, room_name(&path), text, Bytes::from(data)),
            RouteMode::Pubsub => self.on_pubsub(now, id, text, &data),
        }
    }

    pub(super) fn within_rate(&mut self, now: Instant, id: ConnId, len: usize) -> bool {
        let limits = self.config.rate_limit.clone();
        let byte_burst = self.byte_burst();
        let Some(conn) = self.conn_mut(id) else { return false };
        let messages_ok = limits.messages_per_second <= 0.0
            || conn.messages.try_take(now, limits.messages_per_second, f64::from(limits.burst), 1.0);
        let per_second = limits.bytes_per_second.0 as f64;
        let bytes_ok = per_second <= 0.0 || conn.bytes.try_take(now, per_second, byte_burst, len as f64);
        messages_ok && bytes_ok
    }

    /// Frames a message for a connection with `deflate` parameters, compressing it when
    /// negotiated and large enough.
    pub(super) fn encode_message(&mut self, deflate: Option<DeflateParams>, text: bool, data: &[u8]) -> Bytes {
        let opcode = frame::data_opcode(text);
        if let Some(params) = deflate
            && data.len() as u64 >= self.config.compression.min_bytes.0
        {
            let bits = params.server_max_window_bits.clamp(8, 15);
            let level = self.config.compression.level;
            let deflater = self.deflaters[usize::from(bits - 8)].get_or_insert_with(|| Deflater::new(bits, level));
            let mut compressed = Vec::with_capacity(data.len() / 2 + 16);
            deflater.compress_message(data, &mut compressed);
            return frame::encode(opcode, true, &compressed);
        }
        frame::encode(opcode, false, data)
    }
}

/// Just the `id` of a pub/sub request, to answer one that is refused before parsing.
#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<RequestId>,
}
