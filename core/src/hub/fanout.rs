//! Fan-out: a message framed once (and compressed once per window size) and the same bytes
//! queued to every subscriber, with the slow-consumer policy applied per reader.

use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::native::Payload;
use super::pusher::{DIRECTORY, is_pusher, split_payload};
use super::pusher_users::TERMINATE;
use super::{ConnId, Event, Hub, Phase, slow_consumer_policy};
use crate::broker::Envelope;
use crate::channel::ChannelId;
use crate::config::SlowConsumerPolicy;
use crate::deflate::Deflater;
use crate::frame;
use crate::pubsub;
use crate::queue::FrameId;

impl Hub {
    /// Delivers locally and hands the message to the broker for every other hub.
    pub(super) fn fan_out(&mut self, now: Instant, channel: String, text: bool, payload: Bytes) {
        self.metrics.publishes += 1;
        if let Some(id) = self.channels.find(&channel) {
            self.deliver(now, id, text, &payload, None);
        }
        let envelope = Envelope { origin: self.origin.clone(), channel, text, payload };
        self.broker_publish(now, envelope);
    }

    /// Delivers a message from another hub. Pub/sub data is spliced into our frames unparsed,
    /// so it must be JSON: another node's is checked, since we trust it no more than a client;
    /// a worker of this node checked its own when it was published.
    pub(super) fn deliver_remote(&mut self, now: Instant, envelope: &Envelope) {
        if envelope.channel == DIRECTORY {
            return self.on_directory(now, envelope);
        }
        if envelope.channel == crate::admin::CHANNEL {
            return self.on_admin(now, envelope);
        }
        let Some(channel) = self.channels.find(&envelope.channel) else { return };
        let checked = envelope.origin.node == self.origin.node;
        let json = if is_pusher(&envelope.channel) {
            split_payload(&envelope.payload).1
        } else {
            Payload::parse(&envelope.payload).map_or(&b""[..], |p| p.json())
        };
        if !checked && !is_room(&envelope.channel) && serde_json::from_slice::<&RawValue>(json).is_err() {
            self.metrics.protocol_errors += 1;
            return;
        }
        self.deliver(now, channel, envelope.text, &envelope.payload, None);
    }

    /// Frames a message once (and compresses it once per window size) and queues the same
    /// bytes to every subscriber of `channel` but `skip`. On a Pusher channel the payload
    /// names a socket to skip too, and carries the frame's text; on a native channel it is
    /// the data, a whole frame, or a stream publication (see `native`).
    pub(super) fn deliver(
        &mut self,
        now: Instant,
        channel: ChannelId,
        text: bool,
        payload: &[u8],
        skip: Option<ConnId>,
    ) {
        let Some(chan) = self.channels.get_mut(channel) else { return };
        if is_pusher(&chan.name) {
            let (socket, frame) = split_payload(payload);
            return self.send_frame(now, channel, true, frame, skip.as_slice(), socket);
        }
        if is_room(&chan.name) {
            return self.send_frame(now, channel, text, payload, skip.as_slice(), &[]);
        }
        match Payload::parse(payload) {
            Some(Payload::Data(data)) => {
                chan.seq += 1;
                let raw = std::str::from_utf8(data).unwrap_or("null");
                let wire = pubsub::message_from_raw(&chan.name, chan.seq, raw);
                self.send_frame(now, channel, true, wire.as_bytes(), skip.as_slice(), &[]);
            }
            Some(Payload::Framed(frame)) => self.send_frame(now, channel, true, frame, skip.as_slice(), &[]),
            Some(Payload::Streamed { epoch, offset, data }) => self.deliver_streamed(now, channel, epoch, offset, data),
            None => self.metrics.protocol_errors += 1,
        }
    }

    /// Queues `body`, framed once (and compressed once per window size), to every open
    /// subscriber of `channel` but those in `skip` and the Pusher socket `skip_socket`.
    pub(super) fn send_frame(
        &mut self,
        now: Instant,
        channel: ChannelId,
        text: bool,
        body: &[u8],
        skip: &[ConnId],
        skip_socket: &[u8],
    ) {
        let Some(chan) = self.channels.get(channel) else { return };
        let pusher = is_pusher(&chan.name);
        let plain = frame::encode(frame::data_opcode(text), false, body);
        // Stored on first use, so a frame that no subscriber takes is never stored.
        let mut plain_frame = None;
        let mut compressed: [Option<FrameId>; 8] = Default::default();
        let compressible = body.len() as u64 >= self.config.compression.min_bytes.0;
        let limit = self.config.limits.send_queue_bytes.as_usize();
        let mut slow = Vec::new();
        let terminate = pusher && skip_socket == TERMINATE;
        let mut terminated = Vec::new();
        let Self { channels, slots, metrics, events, deflaters, config, frames, unsealed, .. } = self;
        let Some(chan) = channels.get(channel) else { return };
        for &id in &chan.subscribers {
            let Some(conn) = slots.get_mut(id.index as usize).and_then(|s| s.conn.as_mut()) else { continue };
            if conn.phase != Phase::Open || skip.contains(&id) {
                continue;
            }
            if terminate {
                terminated.push(id);
                continue;
            }
            if !skip_socket.is_empty() && conn.pusher.as_ref().is_some_and(|p| p.socket_id.as_bytes() == skip_socket) {
                continue;
            }
            let frame = match conn.deflate {
                Some(params) if compressible => {
                    let bits = params.server_max_window_bits.clamp(8, 15);
                    let slot = usize::from(bits - 8);
                    *compressed[slot].get_or_insert_with(|| {
                        let level = config.compression.level;
                        let deflater = deflaters[slot].get_or_insert_with(|| Deflater::new(bits, level));
                        let mut out = Vec::with_capacity(body.len() / 2 + 16);
                        deflater.compress_message(body, &mut out);
                        frames.insert(frame::encode(frame::data_opcode(text), true, &out))
                    })
                }
                _ => *plain_frame.get_or_insert_with(|| frames.insert(plain.clone())),
            };
            let len = frames.get(frame).len();
            if conn.would_overflow(len, limit) {
                match slow_consumer_policy(config, conn.route) {
                    SlowConsumerPolicy::Drop => metrics.messages_dropped += 1,
                    SlowConsumerPolicy::Close => slow.push(id),
                }
                continue;
            }
            let was_idle = conn.flushed();
            let Some(len) = super::tls::push_frame(conn, id, frames, frame, unsealed) else { continue };
            if was_idle {
                events.push_back(Event::Transmit(id));
            }
            metrics.bytes_out += len as u64;
            metrics.queued_bytes += len as u64;
            metrics.messages_out += 1;
        }
        for frame in compressed.into_iter().chain([plain_frame]).flatten() {
            frames.forget_unread(frame);
        }
        for id in slow {
            self.metrics.slow_consumer_closes += 1;
            self.close(now, id, 1008, "slow consumer");
        }
        self.terminate_connections(now, terminated);
    }
}

/// The channel behind broadcast route `path`; `/` keeps it apart from pub/sub channel names.
pub(super) fn room_name(path: &str) -> String {
    format!("{ROOM_PREFIX}{path}")
}

/// Prefix of broadcast rooms' channel names.
const ROOM_PREFIX: &str = "route:";

/// True for a broadcast route's room (its messages go out as sent, not as pub/sub JSON).
pub(super) fn is_room(channel: &str) -> bool {
    channel.starts_with(ROOM_PREFIX)
}
