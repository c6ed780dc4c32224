//! Redis Cluster: hash slots, the slot map (`CLUSTER SLOTS`), and the connection that reads it.
//!
//! A cluster hub keeps one [`super::RedisLink`] per master, and sends each channel's commands
//! and its sharded subscription (`SSUBSCRIBE`) to the master that owns the channel's slot.
//! Every key of a channel carries the same hash tag (`{…}`, a hash of the channel's name), so a
//! channel's stream, presence hash and shard channel share a slot and a script never spans two.
//! A link's own keys (epoch, lease, probe channel) carry a tag chosen to land on a slot its
//! master owns, so one `KEYS`/`MGET` on that master sees every hub's lease for it.
//!
//! The map is read by a [`MapReader`] on its own connection: at start, every `refresh` after,
//! and at once when a link meets `MOVED`/`CLUSTERDOWN` or loses its socket. It asks the seeds
//! and every node the last map named, in turn, until one answers, so a dead seed or a failed
//! master is passed over.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::Buf;
use redis_protocol::resp2::types::OwnedFrame;

use super::conn::{Conn, Expect, Phase};
use super::resp::{ProtocolError, next_frame};
use super::{CONNECT_TIMEOUT, LinkConn};
use crate::time::later;

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with.
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |c, _| if c & 0x8000 != 0 { (c << 1) ^ 0x1021 } else { c << 1 })
    })
}

/// The slot of `key`: of its hash tag (the text between the first `{` and the next `}`) when
/// that is not empty, else of the whole key.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// The hash tag every key of `channel` carries: 16 hex digits of a hash of its name, so any
/// name (braces included) gives one well-formed tag.
pub(crate) fn channel_tag(channel: &str) -> String {
    let hash = channel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{{{hash:016x}}}")
}

/// The slot `channel`'s keys live in.
pub(crate) fn channel_slot(channel: &str) -> u16 {
    key_slot(channel_tag(channel).as_bytes())
}

/// The Redis Cluster hash slot that holds a channel's keys and shard channel with
/// `broker.kind = "redis-cluster"` (to find the master a channel's traffic goes to).
pub fn redis_cluster_slot(channel: &str) -> u16 {
    channel_slot(channel)
}

/// The hash tag for a link's own keys: the first `{n<i>}` whose slot one of `ranges` holds.
pub(crate) fn owned_tag(ranges: &[(u16, u16)]) -> String {
    (0u32..100_000)
        .map(|i| format!("{{n{i}}}"))
        .find(|tag| {
            let slot = key_slot(tag.as_bytes());
            ranges.iter().any(|&(first, last)| (first..=last).contains(&slot))
        })
        // Only an empty range list has no tag; its link is never used.
        .unwrap_or_default()
}

/// One master of the cluster and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Master {
    /// `host:port` to connect to.
    pub addr: String,
    /// Inclusive slot ranges, sorted.
    pub ranges: Vec<(u16, u16)>,
}

/// The cluster as `CLUSTER SLOTS` described it: its masters, each with its slots, ordered by
/// their first slot; and every node named (replicas too), as places to ask next time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SlotMap {
    /// The masters, ordered by their first slot.
    pub masters: Vec<Master>,
    /// Every node the reply named.
    pub nodes: Vec<String>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply; `asked` is the node that answered (a node may name
    /// itself with an empty host). `None` when the reply is not one, or covers no slot.
    pub(crate) fn parse(reply: &OwnedFrame, asked: &str) -> Option<Self> {
        let OwnedFrame::Array(entries) = reply else { return None };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(host, _)| host);
        let mut by_addr: Vec<Master> = Vec::new();
        let mut nodes: Vec<String> = Vec::new();
        for entry in entries {
            let OwnedFrame::Array(parts) = entry else { return None };
            let [OwnedFrame::Integer(first), OwnedFrame::Integer(last), servers @ ..] = parts.as_slice() else {
                return None;
            };
            let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
            if first > last || last >= SLOTS {
                return None;
            }
            let mut addrs = Vec::new();
            for server in servers {
                let OwnedFrame::Array(fields) = server else { return None };
                let host = match fields.first()? {
                    OwnedFrame::BulkString(h) | OwnedFrame::SimpleString(h) => std::str::from_utf8(h).ok()?,
                    _ => return None,
                };
                let OwnedFrame::Integer(port) = fields.get(1)? else { return None };
                let host = if host.is_empty() || host == "?" { asked_host } else { host };
                let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                addrs.push(addr);
            }
            let master = addrs.first()?.clone();
            for addr in addrs {
                if !nodes.contains(&addr) {
                    nodes.push(addr);
                }
            }
            match by_addr.iter_mut().find(|m| m.addr == master) {
                Some(m) => m.ranges.push((first, last)),
                None => by_addr.push(Master { addr: master, ranges: vec![(first, last)] }),
            }
        }
        for master in &mut by_addr {
            master.ranges.sort_unstable();
        }
        by_addr.sort_by_key(|m| m.ranges.first().map_or(u16::MAX, |r| r.0));
        nodes.sort();
        (!by_addr.is_empty()).then_some(Self { masters: by_addr, nodes })
    }

    /// The index of the master serving `slot`, if any does.
    pub(crate) fn master_of(&self, slot: u16) -> Option<usize> {
        self.masters.iter().position(|m| m.ranges.iter().any(|&(first, last)| (first..=last).contains(&slot)))
    }
}

/// Reads the slot map on its own connection; see the module docs.
#[derive(Debug)]
pub(crate) struct MapReader {
    /// Where to ask: the seeds, then the nodes of the last map; `next` is the one to try.
    candidates: Vec<String>,
    seeds: Vec<String>,
    next: usize,
    /// The node the connection is (being) opened to.
    asking: String,
    conn: Conn,
    refresh: Duration,
    retry: Duration,
    /// When to ask again (`None`: a question is out, or no connection yet).
    ask_at: Option<Instant>,
    started: bool,
    map: Option<SlotMap>,
    /// A map differing from the last one handed out, for the hub.
    fresh: Option<SlotMap>,
    closes: VecDeque<LinkConn>,
}

impl MapReader {
    /// A reader asking `seeds` (`host:port`) every `refresh`, retrying after `retry`.
    pub(crate) fn new(seeds: Vec<String>, refresh: Duration, retry: Duration) -> Self {
        let asking = seeds.first().cloned().unwrap_or_default();
        Self {
            candidates: seeds.clone(),
            seeds,
            next: 0,
            asking,
            conn: Conn { phase: Phase::Connecting { deadline: None, asked: false }, ..Conn::default() },
            refresh,
            retry,
            ask_at: None,
            started: false,
            map: None,
            fresh: None,
            closes: VecDeque::new(),
        }
    }

    /// The map last read, if any.
    pub(crate) fn map(&self) -> Option<&SlotMap> {
        self.map.as_ref()
    }

    /// A map that differs from the one before, once.
    pub(crate) fn take_fresh(&mut self) -> Option<SlotMap> {
        self.fresh.take()
    }

    /// Ask again soon: a link was told `MOVED`, or lost its master.
    pub(crate) fn refresh_soon(&mut self, now: Instant) {
        if self.conn.phase == Phase::Ready && self.conn.expect.is_empty() {
            let soon = later(now, self.retry.min(Duration::from_millis(200)));
            self.ask_at = Some(self.ask_at.map_or(soon, |at| at.min(soon)));
        }
    }

    /// The connection to open, if one is wanted now.
    pub(crate) fn poll_connect(&mut self) -> Option<(LinkConn, String)> {
        if let Phase::Connecting { deadline, asked: false } = self.conn.phase {
            self.conn.phase = Phase::Connecting { deadline, asked: true };
            return Some((LinkConn::MAP, self.asking.clone()));
        }
        None
    }

    /// The socket to drop, if any.
    pub(crate) fn poll_close(&mut self) -> Option<LinkConn> {
        self.closes.pop_front()
    }

    /// The first time the hub hears: arms the connect deadline.
    pub(crate) fn start(&mut self, now: Instant) {
        self.started = true;
        if let Phase::Connecting { deadline: None, asked } = self.conn.phase {
            self.conn.phase = Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked };
        }
    }

    /// The connection is up: ask at once.
    pub(crate) fn handle_connected(&mut self, now: Instant) {
        if matches!(self.conn.phase, Phase::Connecting { asked: true, .. }) {
            self.conn.phase = Phase::Ready;
            self.ask(now);
        }
    }

    /// Connecting failed, or the connection ended: try the next candidate after `retry`.
    pub(crate) fn handle_lost(&mut self, now: Instant) {
        if self.conn.phase == Phase::Idle {
            return;
        }
        self.fail(now, false);
    }

    /// Bytes from the connection.
    pub(crate) fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.conn.phase != Phase::Ready {
            return;
        }
        self.conn.inbuf.extend_from_slice(bytes);
        loop {
            match next_frame(&mut self.conn.inbuf) {
                Ok(Some(frame)) => {
                    if self.conn.expect.pop_front().is_none() {
                        return self.fail(now, true);
                    }
                    match SlotMap::parse(&frame, &self.asking) {
                        Some(map) => self.on_map(now, map),
                        // An error (a node still joining, CLUSTERDOWN) or nonsense: ask elsewhere.
                        None => return self.fail(now, true),
                    }
                }
                Ok(None) => return,
                Err(ProtocolError) => return self.fail(now, true),
            }
        }
    }

    /// What to write.
    pub(crate) fn transmit<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        match out.first_mut() {
            Some(slot) if self.wants_write() => {
                *slot = IoSlice::new(&self.conn.out);
                1
            }
            _ => 0,
        }
    }

    /// `n` bytes were written.
    pub(crate) fn consume(&mut self, n: usize) {
        self.conn.out.advance(n.min(self.conn.out.len()));
    }

    /// True while bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.phase == Phase::Ready && !self.conn.out.is_empty()
    }

    /// When `handle_timeout` is next needed.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.conn.wake_at(), self.ask_at].into_iter().flatten().min()
    }

    /// Runs what is due: a reconnect, a timed-out connect or reply, the next question.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if !self.started {
            self.start(now);
        }
        match self.conn.phase {
            Phase::Backoff(at) if at <= now => {
                self.conn.phase = Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked: false };
            }
            Phase::Connecting { deadline: Some(deadline), asked } if deadline <= now => self.fail(now, asked),
            Phase::Ready if self.conn.expect.front().is_some_and(|(deadline, _)| *deadline <= now) => {
                self.fail(now, true)
            }
            Phase::Ready if self.ask_at.is_some_and(|at| at <= now) => self.ask(now),
            _ => {}
        }
    }

    fn ask(&mut self, now: Instant) {
        self.ask_at = None;
        self.conn.send(now, &[b"CLUSTER", b"SLOTS"], Expect::Slots);
    }

    fn on_map(&mut self, now: Instant, map: SlotMap) {
        self.ask_at = Some(later(now, self.refresh));
        if self.map.as_ref() != Some(&map) {
            self.candidates = self.seeds.iter().chain(&map.nodes).cloned().collect();
            self.candidates.dedup();
            self.fresh = Some(map.clone());
            self.map = Some(map);
        }
    }

    /// Drops the connection and moves to the next candidate.
    fn fail(&mut self, now: Instant, close: bool) {
        if close {
            self.closes.push_back(LinkConn::MAP);
        }
        drop(self.conn.reset());
        self.ask_at = None;
        self.next = (self.next + 1) % self.candidates.len().max(1);
        self.asking = self.candidates.get(self.next).cloned().unwrap_or_default();
        self.conn.phase = Phase::Backoff(later(now, self.retry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> OwnedFrame {
        OwnedFrame::Array(vec![bulk(host), OwnedFrame::Integer(port), bulk("id")])
    }

    fn range(first: i64, last: i64, servers: Vec<OwnedFrame>) -> OwnedFrame {
        let mut parts = vec![OwnedFrame::Integer(first), OwnedFrame::Integer(last)];
        parts.extend(servers);
        OwnedFrame::Array(parts)
    }

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"{}foo"), crc16(b"{}foo") % SLOTS, "an empty tag hashes the whole key");
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn every_key_of_a_channel_shares_a_slot_whatever_its_name() {
        for channel in ["room", "a}b", "{x}", "", "presence-chat#u1,u2"] {
            let tag = channel_tag(channel);
            let slot = key_slot(format!("sb:ch:{tag}{channel}").as_bytes());
            assert_eq!(key_slot(format!("sb:stream:{tag}{channel}").as_bytes()), slot, "{channel}");
            assert_eq!(channel_slot(channel), slot, "{channel}");
        }
    }

    #[test]
    fn owned_tags_land_in_their_masters_ranges() {
        for ranges in [vec![(0u16, 5460u16)], vec![(5461, 10922)], vec![(10923, 16383)], vec![(7, 7)]] {
            let tag = owned_tag(&ranges);
            let slot = key_slot(format!("sb:lease:{tag}n1:0").as_bytes());
            assert!(ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)), "{ranges:?} {tag}");
        }
        assert_eq!(owned_tag(&[]), "");
    }

    #[test]
    fn a_slots_reply_becomes_masters_by_first_slot() {
        let reply = OwnedFrame::Array(vec![
            range(5461, 10922, vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)]),
            range(0, 5460, vec![node("", 7000), node("127.0.0.1", 7003)]),
            range(10923, 16383, vec![node("127.0.0.1", 7002)]),
        ]);
        let map = SlotMap::parse(&reply, "127.0.0.1:7000").expect("a map");
        let addrs: Vec<&str> = map.masters.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(map.nodes.len(), 5);
        assert_eq!(map.master_of(0), Some(0));
        assert_eq!(map.master_of(10922), Some(1));
        assert_eq!(map.master_of(16383), Some(2));
        assert!(SlotMap::parse(&OwnedFrame::Error("CLUSTERDOWN".into()), "x:1").is_none());
        assert!(SlotMap::parse(&OwnedFrame::Array(vec![range(9, 3, vec![node("h", 1)])]), "x:1").is_none());
        assert!(SlotMap::parse(&OwnedFrame::Array(vec![]), "x:1").is_none());
    }

    #[test]
    fn the_reader_asks_again_elsewhere_after_a_failure() {
        let t0 = switchboard_testkit::origin();
        let mut reader =
            MapReader::new(vec!["a:1".into(), "b:2".into()], Duration::from_secs(5), Duration::from_millis(100));
        reader.start(t0);
        assert_eq!(reader.poll_connect(), Some((LinkConn::MAP, "a:1".into())));
        reader.handle_lost(t0);
        assert_eq!(reader.poll_connect(), None, "waits the retry delay");
        reader.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(reader.poll_connect(), Some((LinkConn::MAP, "b:2".into())));
        reader.handle_connected(t0 + Duration::from_millis(101));
        assert!(reader.wants_write());
        let mut slices = [IoSlice::new(&[])];
        assert_eq!(reader.transmit(&mut slices), 1);
        assert_eq!(&*slices[0], b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n");
        let n = slices[0].len();
        reader.consume(n);
        reader.handle_bytes(
            t0 + Duration::from_millis(102),
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
        );
        let map = reader.take_fresh().expect("a map");
        assert_eq!(map.masters, [Master { addr: "127.0.0.1:7000".into(), ranges: vec![(0, 16383)] }]);
        assert!(reader.take_fresh().is_none());
        // The same map again is not news; a question is due after `refresh`.
        assert_eq!(reader.poll_timeout(), Some(t0 + Duration::from_millis(102) + Duration::from_secs(5)));
    }
}
