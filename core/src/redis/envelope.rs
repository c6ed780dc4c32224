//! The envelope: the PUBLISH payload's wire format (see the module docs), and the rules a received one
//! must pass before it is delivered.

use super::RedisLink;
use crate::broker::{Envelope, Origin};

const ENVELOPE_VERSION: u8 = 1;
const FLAG_TEXT: u8 = 1;
/// Bytes before the node id in an encoded envelope.
const ENVELOPE_FIXED: usize = 1 + 1 + 8 + 8 + 4;

/// An envelope as read from the wire.
#[cfg(test)]
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

/// An envelope's header, read in place.
pub(super) struct Head<'a> {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) worker: u32,
    pub(super) node: &'a str,
    pub(super) channel: &'a str,
    pub(super) text: bool,
    /// Where the payload starts.
    pub(super) payload_at: usize,
}

/// The header of an encoded envelope; `None` for anything malformed, including a text payload
/// that is not UTF-8.
pub(super) fn decode_head(bytes: &[u8]) -> Option<Head<'_>> {
    let mut r = Reader(bytes);
    if r.take(1)? != [ENVELOPE_VERSION] {
        return None;
    }
    let flags = r.take(1)?[0];
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let worker = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let node = r.str()?;
    let channel = r.str()?;
    let payload = r.0;
    let text = flags & FLAG_TEXT != 0;
    if flags & !FLAG_TEXT != 0 || (text && std::str::from_utf8(payload).is_err()) {
        return None;
    }
    Some(Head { epoch, seq, worker, node, channel, text, payload_at: bytes.len() - payload.len() })
}

/// The inverse of [`encode_envelope`]; `None` for anything malformed, including a text payload that is not UTF-8.
#[cfg(test)]
pub(super) fn decode_envelope(bytes: &[u8]) -> Option<Wire> {
    let head = decode_head(bytes)?;
    let origin = Origin { node: head.node.to_owned(), worker: head.worker };
    let payload = bytes[head.payload_at..].to_vec().into();
    let envelope = Envelope { origin, channel: head.channel.to_owned(), text: head.text, payload };
    Some(Wire { epoch: head.epoch, seq: head.seq, envelope })
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

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

impl RedisLink {
    /// A pushed message, queued for the hub if it passes the receiver's rules in the module docs.
    /// The envelope's payload is a slice of `message`, not a copy.
    pub(super) fn deliver(&mut self, key: &[u8], message: bytes::Bytes) {
        let Some(head) = decode_head(&message) else { return };
        // Workers of one node reach each other through the node's in-process bus, which keeps
        // working while Redis is down; through Redis they would hear each other twice. A
        // stream publication is the exception: it goes through Redis only, for its order.
        let streamed = message.get(head.payload_at) == Some(&crate::hub::STREAMED);
        if (head.node == self.origin.node && !streamed) || !self.channels.contains(head.channel) {
            return;
        }
        if self.channel_of_key(key) != Some(head.channel.as_bytes()) {
            return;
        }
        let seen = match self.last_seen.get_mut(head.node) {
            Some(workers) => workers,
            None => self.last_seen.entry(head.node.to_owned()).or_default(),
        };
        match seen.get_mut(&head.worker) {
            Some((epoch, seq)) if *epoch == head.epoch && head.seq <= *seq => return,
            Some(last) => *last = (head.epoch, head.seq),
            None => {
                seen.insert(head.worker, (head.epoch, head.seq));
            }
        }
        let origin = Origin { node: head.node.to_owned(), worker: head.worker };
        let (channel, text, payload_at) = (head.channel.to_owned(), head.text, head.payload_at);
        self.deliveries.push_back(Envelope { origin, channel, text, payload: message.slice(payload_at..) });
    }
}
