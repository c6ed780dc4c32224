//! Channel history in Redis Streams, shared by every node.
//!
//! Keys, per native channel with history:
//! - `{prefix}:meta:{channel}` — a hash: `e` the stream's epoch, `o` its last offset;
//! - `{prefix}:stream:{channel}` — the stream, entry ids `{offset}-0`, field `d` the data.
//!
//! A publication is one script: it creates the epoch when the stream is new (a candidate the
//! hub drew), increments the offset, appends with `MAXLEN`, sets both keys' expiry, and
//! publishes the envelope with `{epoch}:{offset}` in it — atomically, so every node sees the
//! same positions in the same order (Redis delivers a channel's messages in publish order).
//! Such envelopes reach the publishing node through Redis too, unlike the others: that order
//! is the only one there is.
//!
//! A read is one script returning the epoch, the last offset and the entries after an offset.
//! It is sent only once the hub's subscription to the channel is confirmed, so that whatever
//! is published after the read is delivered live: the hub merges the two without gap.

use std::time::Instant;

use bytes::Bytes;
use redis_protocol::resp2::types::OwnedFrame;

use super::conn::Expect;
use super::resp::bulk;
use super::{Envelope, ProtocolError, RedisLink, encode_envelope};
use crate::history::{StreamRead, StreamRules, StreamTop};

/// Appends a publication and publishes it. KEYS: stream, meta, Redis channel. ARGV: envelope
/// header (with the payload's marker byte), data, candidate epoch, MAXLEN, TTL in ms, and
/// `PUBLISH` or (in a cluster, to the shard channel) `SPUBLISH`.
pub(super) const PUBLISH: &str = "\
local e = redis.call('HGET', KEYS[2], 'e')
if not e then
  e = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', e)
end
local o = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], o .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call(ARGV[6], KEYS[3], ARGV[1] .. e .. ':' .. o .. '\\n' .. ARGV[2])
return o";

/// Reads a stream's position and entries. KEYS: stream, meta. ARGV: first offset wanted,
/// count (0: none), candidate epoch, TTL in ms.
const READ: &str = "\
local e = redis.call('HGET', KEYS[2], 'e')
if not e then
  e = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', e, 'o', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local o = redis.call('HGET', KEYS[2], 'o') or '0'
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {e, tostring(o), entries}";

/// A read the hub asked for.
#[derive(Debug, Clone)]
pub(crate) struct HistoryRead {
    /// Names the answer.
    pub(crate) token: u64,
    /// The channel.
    pub(crate) channel: String,
    /// Publications after this offset.
    pub(crate) after: u64,
    /// At most this many.
    pub(crate) limit: usize,
    /// The stream's rules (its expiry, when the read creates it).
    pub(crate) rules: StreamRules,
    /// The epoch to give the stream if it is new.
    pub(crate) epoch: String,
}

/// What a read found; `None` when Redis could not be asked.
#[derive(Debug)]
pub(crate) struct HistoryAnswer {
    /// The read's token.
    pub(crate) token: u64,
    /// The stream's position and entries.
    pub(crate) read: Option<StreamRead>,
}

impl RedisLink {
    fn stream_keys(&self, channel: &str) -> (String, String) {
        (self.channel_scoped("stream", channel), self.channel_scoped("meta", channel))
    }

    /// Appends `envelope`'s payload (the data) to its channel's stream and publishes it to
    /// every node (this one included); false (and counted as dropped) when Redis is out of
    /// reach.
    #[must_use]
    pub(crate) fn history_publish(
        &mut self,
        now: Instant,
        envelope: &Envelope,
        rules: StreamRules,
        epoch: &str,
    ) -> bool {
        let header = Envelope { payload: Bytes::from_static(&[crate::hub::STREAMED]), ..envelope.clone() };
        let Some(header) =
            self.epoch.filter(|_| self.writable()).and_then(|e| encode_envelope(e, self.next_seq, &header))
        else {
            self.dropped += 1;
            return false;
        };
        self.next_seq += 1;
        let (stream, meta) = self.stream_keys(&envelope.channel);
        let key = self.channel_key(&envelope.channel);
        let (size, ttl) = (rules.size.to_string(), rules.ttl.as_millis().max(1).to_string());
        if !self.script_loading {
            // Until Redis answers with its SHA1, publications go as EVAL.
            self.script_loading = true;
            self.cmd.send(now, &[b"SCRIPT", b"LOAD", PUBLISH.as_bytes()], Expect::ScriptLoad);
        }
        let (verb, script): (&[u8], &[u8]) = match &self.publish_sha {
            Some(sha) => (b"EVALSHA", sha.as_bytes()),
            None => (b"EVAL", PUBLISH.as_bytes()),
        };
        let publish = self.publish_verb();
        let args: [&[u8]; 12] = [
            verb,
            script,
            b"3",
            stream.as_bytes(),
            meta.as_bytes(),
            key.as_bytes(),
            &header,
            &envelope.payload,
            epoch.as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
            publish,
        ];
        self.cmd.send(now, &args, Expect::HistoryPublish);
        true
    }

    /// Reads a stream; the answer comes from `poll_history`. Sent once the link can write and,
    /// when the hub holds the channel, once its subscription is confirmed (so nothing falls
    /// between the read and live delivery); answered `None` at once while the breaker is open,
    /// and when the connection it waits for is lost.
    pub(crate) fn history_read(&mut self, now: Instant, read: HistoryRead) {
        if !matches!(self.breaker, super::breaker::Breaker::Closed { .. }) {
            self.history_answers.push_back(HistoryAnswer { token: read.token, read: None });
            return;
        }
        self.waiting_reads.push(read);
        self.send_waiting_reads(now);
    }

    /// Sends the waiting reads that may go now.
    pub(super) fn send_waiting_reads(&mut self, now: Instant) {
        if !self.writable() || self.waiting_reads.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<HistoryRead>, Vec<HistoryRead>) = std::mem::take(&mut self.waiting_reads)
            .into_iter()
            .partition(|r| !self.channels.contains(&r.channel) || self.confirmed.contains(&r.channel));
        self.waiting_reads = waiting;
        for read in ready {
            self.send_read(now, read);
        }
    }

    fn send_read(&mut self, now: Instant, read: HistoryRead) {
        let (stream, meta) = self.stream_keys(&read.channel);
        let first = read.after.saturating_add(1).to_string();
        let count = read.limit.to_string();
        let ttl = read.rules.ttl.as_millis().max(1).to_string();
        let args: [&[u8]; 9] = [
            b"EVAL",
            READ.as_bytes(),
            b"2",
            stream.as_bytes(),
            meta.as_bytes(),
            first.as_bytes(),
            count.as_bytes(),
            read.epoch.as_bytes(),
            ttl.as_bytes(),
        ];
        self.cmd.send(now, &args, Expect::History { token: read.token, after: read.after });
    }

    /// The next answer to a [`Self::history_read`].
    #[must_use]
    pub(crate) fn poll_history(&mut self) -> Option<HistoryAnswer> {
        self.history_answers.pop_front()
    }

    /// The subscription to `channel` is confirmed: reads waiting for it go out.
    pub(super) fn on_confirmed(&mut self, now: Instant, channel: String) {
        self.confirmed.insert(channel);
        self.send_waiting_reads(now);
    }

    /// Reads that can no longer be sent (a connection was lost) are answered `None`.
    pub(super) fn abandon_reads(&mut self) {
        self.confirmed.clear();
        for read in std::mem::take(&mut self.waiting_reads) {
            self.history_answers.push_back(HistoryAnswer { token: read.token, read: None });
        }
    }

    /// The read script's reply: `[epoch, offset, [[id, [field, value, …]], …]]`.
    pub(super) fn on_history_reply(
        &mut self,
        token: u64,
        after: u64,
        items: &[OwnedFrame],
    ) -> Result<(), ProtocolError> {
        let [epoch, offset, OwnedFrame::Array(entries)] = items else { return Err(ProtocolError) };
        let text = |frame: &OwnedFrame| bulk(frame).and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned);
        let (Some(epoch), Some(offset)) = (text(epoch), text(offset).and_then(|o| o.parse::<u64>().ok())) else {
            return Err(ProtocolError);
        };
        let mut publications = Vec::with_capacity(entries.len());
        for entry in entries {
            let OwnedFrame::Array(parts) = entry else { return Err(ProtocolError) };
            let [id, OwnedFrame::Array(fields)] = parts.as_slice() else { return Err(ProtocolError) };
            let id = text(id).and_then(|id| id.split('-').next().and_then(|n| n.parse::<u64>().ok()));
            let data =
                fields.chunks(2).find(|pair| bulk(&pair[0]) == Some(b"d")).and_then(|pair| pair.get(1)).and_then(bulk);
            let (Some(id), Some(data)) = (id, data) else { return Err(ProtocolError) };
            publications.push((id, Bytes::copy_from_slice(data)));
        }
        let first = publications.first().map(|(o, _)| *o);
        let complete = after >= offset || first == Some(after + 1);
        let read = StreamRead { top: StreamTop { epoch, offset }, publications, complete };
        self.history_answers.push_back(HistoryAnswer { token, read: Some(read) });
        Ok(())
    }
}
