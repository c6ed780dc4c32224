//! The end-to-end check of the subscriber connection: every `probe_interval` the link
//! publishes a numbered probe on its own Redis channel (`{prefix}:probe:{node}:{worker}`),
//! which it subscribes to like any channel. A probe that is not back within `probe_timeout`
//! means the subscription no longer hears what Redis publishes (a failover that lost it, a
//! proxy that stopped forwarding) while every command still succeeds: the link reports itself
//! deaf and drops the subscriber connection, which reconnects and subscribes to everything
//! again. The next probe that comes back clears the state.

use std::time::Instant;

use super::conn::{Expect, Phase};
use super::{LinkConn, RedisLink};
use crate::time::later;

impl RedisLink {
    /// The link's own probe channel.
    pub(super) fn probe_key(&self) -> String {
        self.probe_channel.clone()
    }

    /// When the probe logic next wants `handle_timeout`.
    pub(super) fn probe_wake(&self) -> Option<Instant> {
        match self.probe_out {
            Some((_, sent)) => Some(later(sent, self.probe_timeout)),
            None if self.probe_confirmed => self.probe_next,
            None => None,
        }
    }

    /// Sends a probe when one is due, and gives up on one that is late.
    pub(super) fn probe_tick(&mut self, now: Instant) {
        if let Some((_, sent)) = self.probe_out
            && later(sent, self.probe_timeout) <= now
        {
            self.probe_out = None;
            self.deaf = true;
            self.probe_failures += 1;
            // Drop the subscription's connection: it reconnects and subscribes again.
            if self.sub.phase == Phase::Ready {
                self.lose(now, LinkConn::Subscriber, true);
            }
            return;
        }
        let due = self.probe_next.is_some_and(|at| at <= now);
        if due && self.probe_out.is_none() && self.probe_confirmed && self.writable() {
            self.probe_seq += 1;
            let (key, seq) = (self.probe_key(), self.probe_seq.to_string());
            let verb = self.publish_verb();
            self.cmd.send(now, &[verb, key.as_bytes(), seq.as_bytes()], Expect::Ack);
            self.probe_out = Some((self.probe_seq, now));
            self.probe_next = Some(later(now, self.probe_interval));
        }
    }

    /// A message on the probe channel: the outstanding probe, when its number matches.
    pub(super) fn on_probe(&mut self, payload: &[u8]) {
        let seq = std::str::from_utf8(payload).ok().and_then(|s| s.parse::<u64>().ok());
        if let (Some(seq), Some((outstanding, _))) = (seq, self.probe_out)
            && seq == outstanding
        {
            self.probe_out = None;
            self.deaf = false;
        }
    }

    /// The probe channel's subscription is confirmed: probing starts (again).
    pub(super) fn on_probe_confirmed(&mut self, now: Instant) {
        self.probe_confirmed = true;
        self.probe_next = Some(later(now, self.probe_interval));
    }

    /// The subscriber connection is gone: its probe cannot come back.
    pub(super) fn probe_reset(&mut self) {
        self.probe_confirmed = false;
        self.probe_out = None;
    }

    /// Probes that did not come back in time, so far.
    pub(crate) fn probe_failures(&self) -> u64 {
        self.probe_failures
    }
}
