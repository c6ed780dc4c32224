//! The hub's side of the broker: the in-process bus between the workers of a node (commands
//! out as [`Output::Broker`]) and, with `broker.kind = "redis"`, the Redis link to other nodes,
//! whose two sockets the shell opens and feeds. Cluster presence and counts come back here.

use std::io::IoSlice;
use std::time::Instant;

use serde_json::value::RawValue;

use super::{ConnId, Hub, Phase, Route, link_in, pusher};
use crate::api::BrokerState;
use crate::broker::{BrokerCommand, Envelope};
use crate::handshake::HttpResponse;
use crate::pubsub::{self, RequestId};
use crate::redis::{LinkConn, MapReader, RedisLink, SlotMap, owned_tag};

/// Who waits for a cluster presence answer.
#[derive(Debug)]
pub(super) enum PresenceWaiter {
    /// A pub/sub client's `presence` op.
    Op { conn: ConnId, request: Option<RequestId>, channel: String },
    /// A `GET /api/presence` request.
    Http { conn: ConnId, channel: String },
}

impl Hub {
    /// The Redis connection `which` is established.
    pub fn handle_redis_connected(&mut self, now: Instant, which: LinkConn) {
        if let Some(tls) = &self.redis_tls {
            // `rediss://`: the session's ClientHello goes out with the link's first commands.
            let host: Option<String> = self.redis_addrs.get(&which).map(|addr| crate::redis::host_of(addr).to_owned());
            match host.and_then(|host| tls.connect(&host)) {
                Some(session) => {
                    self.redis_sessions.insert(which, session);
                }
                None => return self.handle_redis_connect_failed(now, which),
            }
        }
        if which.is_map() {
            return self.with_map(now, |reader| reader.handle_connected(now));
        }
        self.with_link(now, which, |link, role| link.handle_connected(now, role));
    }

    /// Connecting `which` failed (refused, unreachable, timed out).
    pub fn handle_redis_connect_failed(&mut self, now: Instant, which: LinkConn) {
        self.redis_sessions.remove(&which);
        if which.is_map() {
            return self.with_map(now, |reader| reader.handle_lost(now));
        }
        self.with_link(now, which, |link, role| link.handle_connect_failed(now, role));
    }

    /// Bytes read from Redis connection `which`.
    pub fn handle_redis_bytes(&mut self, now: Instant, which: LinkConn, bytes: &[u8]) {
        let mut opened = Vec::new();
        let opened_ok = self.redis_sessions.get_mut(&which).map(|session| session.open(bytes, &mut opened));
        let bytes = match opened_ok {
            Some(true) => opened.as_slice(),
            Some(false) => {
                // A bad record, an alert, a certificate that does not verify: the connection
                // is lost like any other (the link's backoff and breaker apply).
                self.redis_tls_failures.push_back(which);
                return self.handle_redis_eof(now, which);
            }
            None => bytes,
        };
        if which.is_map() {
            return self.with_map(now, |reader| reader.handle_bytes(now, bytes));
        }
        self.with_link(now, which, |link, role| link.handle_bytes(now, role, bytes));
    }

    /// Redis connection `which` ended or failed; the shell drops the socket.
    pub fn handle_redis_eof(&mut self, now: Instant, which: LinkConn) {
        self.redis_sessions.remove(&which);
        if which.is_map() {
            return self.with_map(now, |reader| reader.handle_lost(now));
        }
        self.with_link(now, which, |link, role| link.handle_eof(now, role));
    }

    /// Fills `out` with what is to be written to Redis connection `which`.
    pub fn redis_transmit<'a>(&'a self, which: LinkConn, out: &mut [IoSlice<'a>]) -> usize {
        if let Some(session) = self.redis_sessions.get(&which) {
            return match out.first_mut() {
                Some(slot) if !session.sealed.is_empty() => {
                    *slot = IoSlice::new(&session.sealed);
                    1
                }
                _ => 0,
            };
        }
        plain_transmit(&self.redis, self.map_reader.as_ref(), which, out)
    }

    /// `n` bytes of what `redis_transmit` offered were written.
    pub fn handle_redis_written(&mut self, now: Instant, which: LinkConn, n: usize) {
        self.touch(now);
        if let Some(session) = self.redis_sessions.get_mut(&which) {
            session.sealed.drain(..n.min(session.sealed.len()));
            return;
        }
        plain_consume(&mut self.redis, self.map_reader.as_mut(), which, n);
    }

    /// True while Redis connection `which` has bytes to write (after a blocked write, the
    /// shell asks again once the socket is writable).
    pub fn redis_wants_write(&self, which: LinkConn) -> bool {
        if let Some(session) = self.redis_sessions.get(&which) {
            return !session.sealed.is_empty();
        }
        if which.is_map() {
            return self.map_reader.as_ref().is_some_and(MapReader::wants_write);
        }
        self.redis.get(which.shard()).is_some_and(|link| link.wants_write(which.role()))
    }

    /// Seals what the links and the map reader queued on `rediss://` connections, so the
    /// outputs can say which have ciphertext to write; a session that refuses is lost.
    pub(super) fn seal_redis(&mut self, now: Instant) {
        if self.redis_sessions.is_empty() {
            return;
        }
        let conns: Vec<LinkConn> = self.redis_sessions.keys().copied().collect();
        for which in conns {
            let Some(session) = self.redis_sessions.get_mut(&which) else { continue };
            let mut sealed_all = true;
            loop {
                let mut slices = [IoSlice::new(&[]); 4];
                let n = plain_transmit(&self.redis, self.map_reader.as_ref(), which, &mut slices);
                if n == 0 {
                    break;
                }
                let len: usize = slices[..n].iter().map(|s| s.len()).sum();
                sealed_all = slices[..n].iter().all(|s| session.seal(s));
                plain_consume(&mut self.redis, self.map_reader.as_mut(), which, len);
                if !sealed_all {
                    break;
                }
            }
            if !sealed_all || !session.seal(&[]) {
                self.redis_tls_failures.push_back(which);
                self.handle_redis_eof(now, which);
            }
        }
    }

    /// Runs `input` on the cluster map reader, then takes in what it and the links produced.
    fn with_map(&mut self, now: Instant, input: impl FnOnce(&mut MapReader)) {
        self.touch(now);
        if let Some(reader) = &mut self.map_reader {
            input(reader);
        }
        self.pump_redis(now);
    }

    /// Runs `input` on the link of `which`'s shard (with the connection as that link names
    /// it), then takes in what the links produced.
    fn with_link(&mut self, now: Instant, which: LinkConn, input: impl FnOnce(&mut RedisLink, LinkConn)) {
        self.touch(now);
        if let Some(link) = self.redis.get_mut(which.shard()) {
            input(link, which.role());
        }
        self.pump_redis(now);
    }

    /// Delivers what the link received, answers presence waiters, and mirrors its state.
    pub(super) fn pump_redis(&mut self, now: Instant) {
        if self.redis.is_empty() {
            return;
        }
        let open: u64 = self.metrics.connections_by_route.values().sum();
        let (mut deliveries, mut answers, mut reads) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dropped, mut probe_failures) = (0, 0);
        let mut state = BrokerState::Closed;
        let mut reconnected = Vec::new();
        let mut stale = false;
        for (shard, link) in self.redis.iter_mut().enumerate() {
            if link.take_reconnected() {
                reconnected.push(shard);
            }
            stale |= link.take_moved();
            deliveries.extend(std::iter::from_fn(|| link.poll_delivery()));
            answers.extend(std::iter::from_fn(|| link.poll_presence()));
            reads.extend(std::iter::from_fn(|| link.poll_history()));
            dropped += link.dropped();
            probe_failures += link.probe_failures();
            state = state.worse(link.state());
            link.set_local_connections(open);
        }
        // The Pusher directory travels on its channel's shard, and so do its resyncs.
        let (resync, live, can_publish) = match self.link_of(pusher::DIRECTORY) {
            Some(link) => (link.take_resync(), link.take_live_hubs(), link.can_publish()),
            None => (false, None, false),
        };
        if let Some(reader) = &mut self.map_reader {
            // A lost master may have been replaced: look at the map again soon.
            if stale || state != BrokerState::Closed {
                reader.refresh_soon(now);
            }
            if reader.map().is_none() {
                state = state.worse(BrokerState::Reconnecting);
            }
            if let Some(map) = reader.take_fresh() {
                self.apply_map(now, &map);
                return self.pump_redis(now);
            }
        }
        self.broker_state = state;
        self.metrics.broker_dropped = dropped;
        self.metrics.broker_probe_failures = probe_failures;
        for envelope in deliveries {
            self.deliver_remote(now, &envelope);
        }
        if !reconnected.is_empty() {
            self.streams_lost(now, &reconnected);
        }
        for answer in reads {
            self.on_history_answer(now, answer.token, answer.read);
        }
        if self.pusher_on() {
            if let Some(live) = live {
                self.prune_directory(now, &live);
            }
            self.directory_resync |= resync;
            if self.directory_resync && can_publish {
                // Redis is back (or our directory subscription is): tell every node all we
                // hold, and ask for all they hold.
                self.directory_resync = false;
                self.queue_snapshot(true);
            }
        }
        for answer in answers {
            if let Some(waiter) = self.presence_waiters.remove(&answer.token) {
                self.answer_presence(waiter, &answer.members, answer.complete);
            }
        }
    }

    /// Follows a new cluster slot map: a master whose slots stayed keeps its link (moved to
    /// the master's new address after a failover), a new master gets a new link, a link whose
    /// slots went elsewhere is retired; then every channel and member moves to its slot's link.
    fn apply_map(&mut self, now: Instant, map: &SlotMap) {
        let mut link_of_master = Vec::with_capacity(map.masters.len());
        for master in &map.masters {
            let tag = owned_tag(&master.ranges);
            let kept = self.redis.iter().position(|l| !l.is_retired() && !tag.is_empty() && l.tag() == tag);
            let index = match kept {
                Some(i) => {
                    self.redis[i].retarget(now, &master.addr);
                    i
                }
                // Links are never removed (the shells name sockets by link index): at most 255.
                None if self.redis.len() < usize::from(u8::MAX) => {
                    let mut link =
                        RedisLink::new_cluster(&self.config.broker, master.addr.clone(), self.origin.clone(), tag);
                    link.start(now);
                    self.redis.push(link);
                    self.redis.len() - 1
                }
                None => 0,
            };
            link_of_master.push(u8::try_from(index).unwrap_or(0));
        }
        for (i, link) in self.redis.iter_mut().enumerate() {
            if !link_of_master.contains(&u8::try_from(i).unwrap_or(0)) {
                link.retire();
            }
        }
        // Slots no master serves go to the placeholder (0, retired): nothing is sent there.
        let table: Box<[u8]> = (0..crate::redis::SLOTS)
            .map(|slot| map.master_of(slot).and_then(|m| link_of_master.get(m).copied()).unwrap_or(0))
            .collect();
        self.route = Route::Slots(table);
        self.redis_told.resize(2 * self.redis.len(), false);
        let mut moved_to = Vec::new();
        for from in 0..self.redis.len() {
            let (route, links) = (&self.route, &mut self.redis);
            let count = links.len();
            let channels = links[from].take_channels(now, |c| route.shard(c, count) == from);
            let members = links[from].take_members(now, |c| route.shard(c, count) == from);
            for channel in channels {
                let to = route.shard(&channel, count);
                links[to].subscribe(now, &channel);
                // Publications between the old subscription and the new one were missed.
                if from != 0 && !moved_to.contains(&to) {
                    moved_to.push(to);
                }
            }
            for (channel, member, info) in members {
                links[route.shard(&channel, count)].presence_join(now, &channel, &member, info.as_deref());
            }
        }
        if self.pusher_on()
            && let Some(link) = self.link_of(pusher::DIRECTORY)
        {
            link.watch(pusher::DIRECTORY);
        }
        if !moved_to.is_empty() {
            self.streams_lost(now, &moved_to);
        }
    }

    /// Hands a publish to the node's other workers (the in-process bus) and, with Redis, to
    /// the other nodes. The bus carries it even while Redis is down, so a node keeps
    /// delivering to all of its own clients.
    pub(super) fn broker_publish(&mut self, now: Instant, envelope: Envelope) {
        if let Some(link) = link_in(&mut self.redis, &self.route, &envelope.channel)
            && !link.publish(now, &envelope)
        {
            self.metrics.broker_dropped += 1;
        }
        // Alone, a hub has nobody to tell, and nobody would drain the queue.
        if self.has_peers {
            self.broker_out.push_back(BrokerCommand::Publish(envelope));
        }
    }

    /// The hub has its first local subscriber on `channel` (`joined`) or lost its last.
    pub(super) fn broker_interest(&mut self, now: Instant, channel: &str, joined: bool) {
        match (link_in(&mut self.redis, &self.route, channel), joined) {
            (Some(link), true) => link.subscribe(now, channel),
            (Some(link), false) => link.unsubscribe(now, channel),
            (None, _) if !self.has_peers => {}
            (None, true) => self.broker_out.push_back(BrokerCommand::Subscribe(channel.to_owned())),
            (None, false) => self.broker_out.push_back(BrokerCommand::Unsubscribe(channel.to_owned())),
        }
    }

    /// Registers (or, with `info` None and `joined` false, removes) a presence member.
    pub(super) fn broker_presence(&mut self, now: Instant, channel: &str, member: &str, joined: Option<Option<&str>>) {
        match (link_in(&mut self.redis, &self.route, channel), joined) {
            (Some(link), Some(info)) => link.presence_join(now, channel, member, info),
            (Some(link), None) => link.presence_leave(now, channel, member),
            (None, Some(info)) => self.members.join(channel, member, info),
            (None, None) => self.members.leave(channel, member),
        }
    }

    /// Answers `waiter` now with local members, or asks the cluster and answers later.
    pub(super) fn ask_presence(&mut self, now: Instant, waiter: PresenceWaiter) {
        let channel = match &waiter {
            PresenceWaiter::Op { channel, .. } | PresenceWaiter::Http { channel, .. } => channel.clone(),
        };
        if let Some(link) = link_in(&mut self.redis, &self.route, &channel) {
            self.next_token += 1;
            let token = self.next_token;
            self.presence_waiters.insert(token, waiter);
            link.request_presence(now, &channel, token);
            self.pump_redis(now);
            return;
        }
        let members = self.members.members(&channel);
        self.answer_presence(waiter, &members, true);
    }

    fn answer_presence(&mut self, waiter: PresenceWaiter, members: &[(String, Option<String>)], complete: bool) {
        let listed: Vec<(String, Option<&RawValue>)> = members
            .iter()
            .map(|(name, info)| (name.clone(), info.as_deref().and_then(|i| serde_json::from_str(i).ok())))
            .collect();
        match waiter {
            PresenceWaiter::Op { conn, request, channel } => {
                if self.conn(conn).is_some_and(|c| c.phase == Phase::Open) {
                    self.reply(conn, pubsub::presence(request.as_ref(), &channel, &listed));
                }
            }
            PresenceWaiter::Http { conn, channel } => {
                let mut body = pubsub::presence(None, &channel, &listed);
                // The HTTP answer also says whether every node could be asked.
                if body.ends_with('}') {
                    body.pop();
                    body.push_str(&format!(",\"complete\":{complete}}}"));
                }
                if self.conn(conn).is_some_and(|c| c.phase == Phase::Responding) {
                    self.respond_http(conn, &HttpResponse::json(200, body));
                }
            }
        }
    }
}

/// What the link (or the map reader) behind `which` has to write, before any TLS.
fn plain_transmit<'a>(
    links: &'a [RedisLink],
    reader: Option<&'a MapReader>,
    which: LinkConn,
    out: &mut [IoSlice<'a>],
) -> usize {
    if which.is_map() {
        return reader.map_or(0, |reader| reader.transmit(out));
    }
    links.get(which.shard()).map_or(0, |link| link.transmit(which.role(), out))
}

/// `n` bytes of what `plain_transmit` offered are gone (written, or sealed).
fn plain_consume(links: &mut [RedisLink], reader: Option<&mut MapReader>, which: LinkConn, n: usize) {
    if which.is_map() {
        if let Some(reader) = reader {
            reader.consume(n);
        }
    } else if let Some(link) = links.get_mut(which.shard()) {
        link.consume(which.role(), n);
    }
}
