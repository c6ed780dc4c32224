//! The envelope: the PUBLISH payload's wire format (see the module docs), and the rules a received one
//! must pass before it is delivered.

use super::RedisLink;
use crate::broker::{Envelope, Origin};

const ENVELOPE_VERSION: u8 = 1;
const FLAG_TEXT: u8 = 1;
/// Bytes before the node id in an encoded envelope.
const ENVELOPE_FIXED: usize = 1 + 1 + 8 + 8 + 4;

/// An envelope as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wire {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) envelope: Envelope,
}

/// See the module docs; `None` when the node id or channel is too long for its length field.
pub(super) fn encode_envelope(epoch: u64, seq: u64, envelope: &Envelope) -> Option<Vec<u8>> {
    let node = envelope.origin.node.as_bytes();
    let channel = envelope.channel.as_bytes();
    let node_len = u16::try_from(node.len()).ok()?;
    let channel_len = u16::try_from(channel.len()).ok()?;
    let mut out = Vec::with_capacity(ENVELOPE_FIXED + 4 + node.len() + channel.len() + envelope.payload.len());
    out.push(ENVELOPE_VERSION);
    out.push(if envelope.text { FLAG_TEXT } else { 0 });
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&envelope.origin.worker.to_be_bytes());
    out.extend_from_slice(&node_len.to_be_bytes());
    out.extend_from_slice(node);
    out.extend_from_slice(&channel_len.to_be_bytes());
    out.extend_from_slice(channel);
    out.extend_from_slice(&envelope.payload);
    Some(out)
}

/// The inverse of [`encode_envelope`]; `None` for anything malformed, including a text payload that is not UTF-8.
pub(super) fn decode_envelope(bytes: &[u8]) -> Option<Wire> {
    let mut r = Reader(bytes);
    if r.take(1)? != [ENVELOPE_VERSION] {
        return None;
    }
    let flags = r.take(1)?[0];
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let worker = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let node = r.string()?;
    let channel = r.string()?;
    let payload = r.0;
    let text = flags & FLAG_TEXT != 0;
    if flags & !FLAG_TEXT != 0 || (text && std::str::from_utf8(payload).is_err()) {
        return None;
    }
    let origin = Origin { node, worker };
    Some(Wire { epoch, seq, envelope: Envelope { origin, channel, text, payload: payload.to_vec().into() } })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

impl RedisLink {
    /// A pushed message, queued for the hub if it passes the receiver's rules in the module docs.
    pub(super) fn deliver(&mut self, key: &[u8], payload: &[u8]) {
        let Some(wire) = decode_envelope(payload) else { return };
        let envelope = wire.envelope;
        // Workers of one node reach each other through the node's in-process bus, which keeps
        // working while Redis is down; through Redis they would hear each other twice. A
        // stream publication is the exception: it goes through Redis only, for its order.
        let streamed = envelope.payload.first() == Some(&crate::hub::STREAMED);
        if (envelope.origin.node == self.origin.node && !streamed) || !self.channels.contains(&envelope.channel) {
            return;
        }
        let channel = key.strip_prefix(self.prefix.as_bytes()).and_then(|rest| rest.strip_prefix(b":ch:"));
        if channel != Some(envelope.channel.as_bytes()) {
            return;
        }
        let from = (envelope.origin.node.clone(), envelope.origin.worker);
        match self.last_seen.get_mut(&from) {
            Some((epoch, seq)) if *epoch == wire.epoch && wire.seq <= *seq => return,
            Some(seen) => *seen = (wire.epoch, wire.seq),
            None => {
                self.last_seen.insert(from, (wire.epoch, wire.seq));
            }
        }
        self.deliveries.push_back(envelope);
    }
}
