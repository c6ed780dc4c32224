//! The hub's side of the broker: the in-process bus between the workers of a node (commands
//! out as [`Output::Broker`]) and, with `broker.kind = "redis"`, the Redis link to other nodes,
//! whose two sockets the shell opens and feeds. Cluster presence and counts come back here.

use std::io::IoSlice;
use std::time::Instant;

use serde_json::value::RawValue;

use super::{ConnId, Hub, Phase, link_in, pusher};
use crate::api::BrokerState;
use crate::broker::{BrokerCommand, Envelope};
use crate::handshake::HttpResponse;
use crate::pubsub::{self, RequestId};
use crate::redis::{LinkConn, RedisLink};

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
        self.with_link(now, which, |link, role| link.handle_connected(now, role));
    }

    /// Connecting `which` failed (refused, unreachable, timed out).
    pub fn handle_redis_connect_failed(&mut self, now: Instant, which: LinkConn) {
        self.with_link(now, which, |link, role| link.handle_connect_failed(now, role));
    }

    /// Bytes read from Redis connection `which`.
    pub fn handle_redis_bytes(&mut self, now: Instant, which: LinkConn, bytes: &[u8]) {
        self.with_link(now, which, |link, role| link.handle_bytes(now, role, bytes));
    }

    /// Redis connection `which` ended or failed; the shell drops the socket.
    pub fn handle_redis_eof(&mut self, now: Instant, which: LinkConn) {
        self.with_link(now, which, |link, role| link.handle_eof(now, role));
    }

    /// Fills `out` with what is to be written to Redis connection `which`.
    pub fn redis_transmit<'a>(&'a self, which: LinkConn, out: &mut [IoSlice<'a>]) -> usize {
        self.redis.get(which.shard()).map_or(0, |link| link.transmit(which.role(), out))
    }

    /// `n` bytes of what `redis_transmit` offered were written.
    pub fn handle_redis_written(&mut self, now: Instant, which: LinkConn, n: usize) {
        self.touch(now);
        if let Some(link) = self.redis.get_mut(which.shard()) {
            link.consume(which.role(), n);
        }
    }

    /// True while Redis connection `which` has bytes to write (after a blocked write, the
    /// shell asks again once the socket is writable).
    pub fn redis_wants_write(&self, which: LinkConn) -> bool {
        self.redis.get(which.shard()).is_some_and(|link| link.wants_write(which.role()))
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
        for (shard, link) in self.redis.iter_mut().enumerate() {
            if link.take_reconnected() {
                reconnected.push(shard);
            }
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

    /// Hands a publish to the node's other workers (the in-process bus) and, with Redis, to
    /// the other nodes. The bus carries it even while Redis is down, so a node keeps
    /// delivering to all of its own clients.
    pub(super) fn broker_publish(&mut self, now: Instant, envelope: Envelope) {
        if let Some(link) = link_in(&mut self.redis, &envelope.channel)
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
        match (link_in(&mut self.redis, channel), joined) {
            (Some(link), true) => link.subscribe(now, channel),
            (Some(link), false) => link.unsubscribe(now, channel),
            (None, _) if !self.has_peers => {}
            (None, true) => self.broker_out.push_back(BrokerCommand::Subscribe(channel.to_owned())),
            (None, false) => self.broker_out.push_back(BrokerCommand::Unsubscribe(channel.to_owned())),
        }
    }

    /// Registers (or, with `info` None and `joined` false, removes) a presence member.
    pub(super) fn broker_presence(&mut self, now: Instant, channel: &str, member: &str, joined: Option<Option<&str>>) {
        match (link_in(&mut self.redis, channel), joined) {
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
        if let Some(link) = link_in(&mut self.redis, &channel) {
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
