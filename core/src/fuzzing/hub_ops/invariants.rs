//! What `hub_ops` checks: what each client hears, and the hub's gauges, queues and broker view
//! after every step.

use std::time::Duration;

use super::{Client, Driver, Published, ROOM, SLOTS};
use crate::broker::BrokerCommand;
use crate::fuzzing::client::{MASK, ServerItem, client_frame, pubsub_frame};
use crate::fuzzing::rig::{advance, assert_hub_empty, drain};
use crate::hub::ConnId;

/// Largest data frame the driver can cause: its biggest payload plus JSON wrapping and header.
const MAX_DATA_FRAME: usize = 2048;
/// Room for control frames (pings, close) beyond the data bound.
const CONTROL_SLACK: usize = 512;

impl Driver {
    pub(super) fn on_item(&mut self, slot: usize, item: ServerItem) {
        let strict = self.strict_gaps;
        let publishes = &self.publishes;
        let Some(client) = &mut self.slots[slot] else { return };
        let reply = match item {
            ServerItem::Response { status, .. } => {
                assert_eq!(status == 101, client.upgraded, "the driver misread the handshake's outcome");
                None
            }
            ServerItem::Message { data, .. } => {
                heard_message(client, publishes, &data, strict);
                None
            }
            ServerItem::Ping(payload) => {
                (client.answers_pings && !client.sent_close).then(|| client_frame(0x8a, &payload, MASK))
            }
            ServerItem::Pong(_) => None,
            ServerItem::Close(_) => {
                let reply = client.replies_to_close && !client.sent_close;
                client.sent_close = true;
                client.subscribed.clear();
                reply.then(|| client_frame(0x88, &[0x03, 0xe8], MASK))
            }
        };
        if let Some(frame) = reply {
            self.client_sends(slot, &frame);
        }
    }

    /// Drains events and broker commands, updating the driver's view.
    pub(super) fn pump(&mut self) {
        let _ = self.pump_events();
    }

    /// Drains events; returns the connections the hub closed.
    pub(super) fn pump_events(&mut self) -> Vec<ConnId> {
        let mut closed = Vec::new();
        let out = drain(&mut self.hub);
        self.timeout = out.timeout;
        for id in out.closed {
            let slot = self.slots.iter().position(|c| c.as_ref().is_some_and(|c| c.id == id));
            if let Some(slot) = slot {
                self.slots[slot] = None;
            }
            assert!(!closed.contains(&id), "two Close events for {id:?}");
            closed.push(id);
        }
        for command in out.broker {
            match command {
                BrokerCommand::Publish(envelope) => self.broker_out.push_back(envelope),
                BrokerCommand::Subscribe(channel) => {
                    assert!(self.broker_channels.insert(channel.clone()), "broker Subscribe({channel}) twice");
                }
                BrokerCommand::Unsubscribe(channel) => {
                    assert!(self.broker_channels.remove(&channel), "broker Unsubscribe({channel}) without Subscribe");
                }
            }
        }
        closed
    }

    /// The invariants that hold after every step.
    pub(super) fn check(&mut self) {
        let live: Vec<&Client> = self.slots.iter().flatten().collect();
        let m = self.hub.metrics();
        // HTTP publish connections close within their step, so every held connection is a client's.
        assert_eq!(self.hub.connection_count(), live.len(), "connection_count vs clients the driver holds");
        assert_eq!(m.connections_open as usize, live.len(), "connections_open gauge");
        let upgraded = live.iter().filter(|c| c.upgraded).count() as u64;
        let by_route: u64 = m.connections_by_route.values().sum();
        assert_eq!(by_route, upgraded, "route gauges vs upgraded clients: {:?}", m.connections_by_route);
        let queued: usize = live.iter().map(|c| self.hub.queued_bytes(c.id)).sum();
        assert_eq!(m.queued_bytes as usize, queued, "queued_bytes gauge vs the connections' queues");
        assert!(
            m.channels <= m.subscriptions,
            "more channels ({}) than subscriptions ({})",
            m.channels,
            m.subscriptions
        );
        assert_eq!(self.broker_channels.len() as u64, m.channels, "broker subscriptions vs the hub's channels");
        for client in &live {
            let queued = self.hub.queued_bytes(client.id);
            // Fan-out, echoes and replies stop at the bound (one frame may start an empty
            // queue past it); pongs to a ping flood may reach twice the bound before a close.
            let bound = 2 * self.queue_limit + MAX_DATA_FRAME + CONTROL_SLACK;
            assert!(queued <= bound, "{:?} holds {queued} queued bytes, bound {bound}", client.id);
        }
        if self.strict_gaps && m.messages_dropped != self.last_drop_count {
            panic!("messages dropped under slow_consumer = close");
        }
        self.last_drop_count = m.messages_dropped;
        // Unmatched envelopes mean the hub published something nobody asked for.
        if !self.trusted {
            self.broker_out.clear();
        }
        assert!(self.broker_out.is_empty(), "unexpected broker publishes: {:?}", self.broker_out);
        if live.is_empty() {
            assert_hub_empty(&self.hub);
        }
    }

    /// Everyone disconnects; nothing may be left behind, and an empty hub asks for no wake-up.
    pub(super) fn everyone_leaves(&mut self) {
        for slot in 0..SLOTS {
            self.eof(slot);
        }
        self.check();
        assert_hub_empty(&self.hub);
        assert!(self.broker_channels.is_empty(), "broker still subscribed to {:?}", self.broker_channels);
        let end = self.now + Duration::from_secs(3600);
        self.pump();
        self.now = advance(&mut self.hub, self.now, end, self.timeout, &mut |hub| {
            let out = drain(hub);
            assert!(out.closed.is_empty() && out.broker.is_empty(), "outputs from an empty hub: {out:?}");
            out.timeout
        });
        self.pump();
        if !self.drained {
            assert_eq!(self.timeout, None, "an empty hub still asks to be woken");
        }
    }
}

/// Checks one data message a client read, by its route's rules.
fn heard_message(client: &mut Client, publishes: &[Published], data: &[u8], strict: bool) {
    match client.route {
        0 => {
            if let Some(position) = client.echoes.iter().position(|e| e == data) {
                // Under the drop policy an echo past the queue bound is dropped; else none is.
                assert!(position == 0 || !client.trusted || !strict, "an echo was lost or reordered");
                client.echoes.drain(..=position);
            } else {
                assert!(!client.trusted, "an echo of something never sent: {:?}", String::from_utf8_lossy(data));
            }
        }
        1 => {
            let text = String::from_utf8_lossy(data);
            let number = text.strip_prefix("b:").and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok());
            match number {
                Some(number) => heard(client, publishes, ROOM, number, 0, strict),
                None => assert!(!client.trusted, "a room message nobody sent: {text:?}"),
            }
        }
        _ => {
            let (kind, members) = pubsub_frame(data);
            if kind == "message" {
                let field = |name: &str| members.get(name).map_or("", |raw| raw.get());
                let channel = serde_json::from_str::<String>(field("channel")).unwrap_or_default();
                let seq = serde_json::from_str::<u64>(field("seq")).unwrap_or_default();
                match serde_json::from_str::<Numbered>(field("data")).ok().and_then(|d| d.n) {
                    Some(number) => heard(client, publishes, &channel, number, seq, strict),
                    None => assert!(!client.trusted, "a message nobody published: {:?}", String::from_utf8_lossy(data)),
                }
            }
        }
    }
}

/// The `data` the driver publishes: `{"n": <publish number>, ...}`.
#[derive(serde::Deserialize)]
struct Numbered {
    n: Option<u64>,
}

/// Checks one publish heard by `client`: it was meant for it, on that channel, in order, and
/// (where nothing may be lost) with nothing skipped.
fn heard(client: &mut Client, publishes: &[Published], channel: &str, number: u64, seq: u64, strict: bool) {
    if !client.trusted {
        return;
    }
    let Some(publish) = publishes.get(number as usize) else {
        panic!("message {number} was never published");
    };
    assert_eq!(publish.channel, channel, "message {number} arrived on the wrong channel");
    assert!(publish.audience.contains(&client.serial), "message {number} on {channel} reached a non-subscriber");
    let previous = client.last.get(channel).copied();
    if let Some((last, last_seq)) = previous {
        assert!(number > last, "message {number} on {channel} after {last}: out of order or twice");
        let points = client.subscribed_at.get(channel).map_or(&[][..], Vec::as_slice);
        let resubscribed = points.iter().any(|&at| last < at && at <= number);
        assert!(seq == 0 || seq > last_seq || resubscribed, "seq {seq} on {channel} after {last_seq}");
    }
    if strict {
        let from = previous.map_or(0, |(last, _)| last + 1);
        for skipped in from..number {
            let p = &publishes[skipped as usize];
            assert!(
                !(p.channel == channel && p.audience.contains(&client.serial)),
                "message {skipped} on {channel} was lost before {number}"
            );
        }
    }
    client.last.insert(channel.to_owned(), (number, seq));
}
