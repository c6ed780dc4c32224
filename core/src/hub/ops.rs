//! The JSON pub/sub protocol on a connection: ops, replies, strikes, and channel membership.

use std::time::Instant;

use super::native::SubscribeOp;
use super::pusher::is_pusher;
use super::{ConnId, Hub, PresenceWaiter, Subscription, is_room};
use crate::frame;
use crate::pubsub::{self, ClientOp, ErrorCode, OpError};

impl Hub {
    pub(super) fn on_pubsub(&mut self, now: Instant, id: ConnId, text: bool, data: &[u8]) {
        let parsed = match std::str::from_utf8(data) {
            Ok(json) if text => pubsub::parse_op(json, self.config.pubsub.max_channel_bytes),
            _ => Err(OpError {
                id: None,
                code: ErrorCode::BadJson,
                message: "pub/sub messages are JSON text".to_owned(),
            }),
        };
        let op = match parsed {
            Ok(op) => op,
            Err(error) => return self.op_error(now, id, error),
        };
        if self.needs_connect(id) && !matches!(op, ClientOp::Connect { .. } | ClientOp::Ping { .. }) {
            let message = "authenticate first: a connection token in ?token= or a connect op".to_owned();
            return self.op_error(
                now,
                id,
                OpError { id: op.id().cloned(), code: ErrorCode::NotAuthenticated, message },
            );
        }
        let (request, result) = match op {
            ClientOp::Ping { id: request } => return self.reply(id, pubsub::pong(request.as_ref())),
            ClientOp::Connect { id: request, token } => return self.op_connect(now, id, request, &token),
            ClientOp::Refresh { id: request, token } => return self.op_refresh(now, id, request, &token),
            ClientOp::History { id: request, channel, since, limit } => {
                return self.op_history(now, id, request, &channel, since, limit);
            }
            ClientOp::Presence { id: request, channel } => match self.may_see_presence(id, &channel) {
                Ok(()) => return self.ask_presence(now, PresenceWaiter::Op { conn: id, request, channel }),
                Err(refusal) => (request, Err(refusal)),
            },
            ClientOp::Subscribe { id: request, channel, presence, token, recover } => {
                let presence = presence.map(|p| p.get().into());
                let op = SubscribeOp { request, channel, presence, token, recover };
                return self.op_subscribe_native(now, id, op);
            }
            ClientOp::Unsubscribe { id: request, channel } => (request, self.op_unsubscribe(id, &channel)),
            ClientOp::Publish { id: request, channel, data } => match self.may_publish(id, &channel) {
                Ok(()) if self.publish_native(now, channel, data.get().as_bytes()) => (request, Ok(())),
                Ok(()) => {
                    let message = "the channel's history is in Redis, which is out of reach: nothing was published";
                    (request, Err((ErrorCode::HistoryUnavailable, message.to_owned())))
                }
                Err(refusal) => (request, Err(refusal)),
            },
        };
        match result {
            Ok(()) => {
                if let Some(request) = request {
                    self.reply(id, pubsub::ack(&request));
                }
            }
            Err((code, message)) => self.op_error(now, id, OpError { id: request, code, message }),
        }
    }

    pub(super) fn op_error(&mut self, now: Instant, id: ConnId, error: OpError) {
        self.metrics.protocol_errors += 1;
        self.reply(id, pubsub::error(error.id.as_ref(), error.code, &error.message));
        if !error.code.is_strike() {
            return;
        }
        let max = self.config.pubsub.max_protocol_errors;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.strikes += 1;
        if conn.strikes >= max {
            self.close(now, id, 1008, "too many protocol errors");
        }
    }

    pub(super) fn op_subscribe(
        &mut self,
        id: ConnId,
        channel: &str,
        info: Option<Box<str>>,
    ) -> Result<(), (ErrorCode, String)> {
        let max = self.config.pubsub.max_subscriptions;
        let Some(conn) = self.conn(id) else { return Ok(()) };
        if self.subscription_index(id, channel).is_some() {
            return Err((ErrorCode::AlreadySubscribed, format!("already subscribed to \"{channel}\"")));
        }
        if conn.subscriptions.len() >= max {
            return Err((ErrorCode::TooManySubscriptions, format!("at most {max} subscriptions per connection")));
        }
        self.subscribe(id, channel, info);
        Ok(())
    }

    pub(super) fn op_unsubscribe(&mut self, id: ConnId, channel: &str) -> Result<(), (ErrorCode, String)> {
        let Some(index) = self.subscription_index(id, channel) else {
            return Err((ErrorCode::NotSubscribed, format!("not subscribed to \"{channel}\"")));
        };
        self.unsubscribe_at(id, index);
        Ok(())
    }

    pub(super) fn subscription_index(&self, id: ConnId, channel: &str) -> Option<usize> {
        let chan = self.channels.find(channel)?;
        self.conn(id)?.subscriptions.iter().position(|s| s.channel == chan)
    }

    pub(super) fn subscribe(&mut self, id: ConnId, channel: &str, info: Option<Box<str>>) {
        let (chan, position, created) = self.channels.subscribe(channel, id);
        if let Some(conn) = self.conn_mut(id) {
            // Most connections hold one subscription (a broadcast room): keep the vector exact.
            conn.subscriptions.reserve_exact(1);
            conn.subscriptions.push(Subscription { channel: chan, position, info });
        }
        self.metrics.subscriptions += 1;
        self.metrics.channels = self.channels.len() as u64;
        let Some(now) = self.latest else { return };
        if created {
            self.broker_interest(now, channel, true);
        }
        if is_pusher(channel) {
            let info = self.conn(id).and_then(|c| c.subscriptions.last()).and_then(|s| s.info.clone());
            self.pusher_joined(id, channel, info.as_deref());
        } else if !is_room(channel) {
            let member = self.member_name(id);
            let info = self.conn(id).and_then(|c| c.subscriptions.last()).and_then(|s| s.info.clone());
            if self.tracks_presence(channel) {
                self.broker_presence(now, channel, &member, Some(info.as_deref()));
            }
            if self.announces_members(channel) {
                self.announce_member(now, channel, "join", &member, info.as_deref(), Some(id));
            }
        }
    }

    pub(super) fn unsubscribe_at(&mut self, id: ConnId, index: usize) {
        let Some(conn) = self.conn_mut(id) else { return };
        let subscription = conn.subscriptions.swap_remove(index);
        let name = self.channels.get(subscription.channel).map(|c| c.name.clone());
        let removal = self.channels.unsubscribe(subscription.channel, subscription.position);
        if let Some(moved) = removal.moved
            && let Some(other) = self.conn_mut(moved)
            && let Some(entry) = other.subscriptions.iter_mut().find(|s| s.channel == subscription.channel)
        {
            entry.position = subscription.position;
        }
        self.metrics.subscriptions -= 1;
        self.metrics.channels = self.channels.len() as u64;
        let (Some(now), Some(name)) = (self.latest, name) else { return };
        if is_pusher(&name) {
            self.pusher_left(id, &name, subscription.info.as_deref());
        } else if !is_room(&name) {
            self.forget_recovering(id, &name);
            let member = self.member_name(id);
            if self.tracks_presence(&name) {
                self.broker_presence(now, &name, &member, None);
            }
            if self.announces_members(&name) {
                self.announce_member(now, &name, "leave", &member, subscription.info.as_deref(), None);
            }
        }
        if removal.emptied {
            self.broker_interest(now, &name, false);
        }
    }

    pub(super) fn reply(&mut self, id: ConnId, json: String) {
        self.enqueue_bounded(id, frame::encode(frame::data_opcode(true), false, json.as_bytes()));
    }
}
