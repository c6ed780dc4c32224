//! Pusher webhooks and cache channels, as the hub decides them.
//!
//! **Who reports a transition.** Every hub sees every directory change, so every hub knows
//! when a channel is occupied or vacated, or a member added or removed, in the cluster. Only
//! one reports it: the hub whose own change caused it; for the changes a dead hub's pruning
//! causes, the live hub with the smallest name. **The grace.** A vacated channel (a removed
//! member) is reported `webhook_grace` later, and not at all if it is occupied again (the
//! member rejoins) meanwhile; whoever reoccupies it within the grace reports no
//! `channel_occupied` either, since the receiver never heard it was vacated. Every hub
//! remembers the recent leaves it saw, from any hub, for that.
//!
//! **Cache channels** keep their last event on every hub (it travels with the directory), for
//! `cache_ttl`, the newest by publication time winning.

use std::time::Instant;

use super::pusher::Source;
use super::{ConnId, Hub};
use crate::config::WebhookEvent;
use crate::pusher::directory::MemberChange;
use crate::pusher::names::ChannelType;
use crate::pusher::protocol;
use crate::pusher::webhooks::Event;
use crate::time::later;

/// What cancels a held event: `(app id, channel, user id for member events)`.
pub(super) type HoldKey = (String, String, Option<String>);

/// A `channel_vacated` or `member_removed` waiting out the grace.
#[derive(Debug)]
pub(super) struct Held {
    due: Instant,
    app: usize,
    key: HoldKey,
    event: Event,
}

/// A cache channel's last event.
#[derive(Debug)]
pub(super) struct Cached {
    published_ms: u64,
    expires: Instant,
    frame: String,
}

impl Hub {
    /// A channel was occupied or vacated in the cluster.
    pub(super) fn occupancy_hook(&mut self, now: Instant, app_id: &str, channel: &str, occupied: bool, source: Source) {
        let kind = if occupied { WebhookEvent::ChannelOccupied } else { WebhookEvent::ChannelVacated };
        let event = Event::channel_event(kind, channel, None);
        self.transition_hook(now, app_id, (app_id.to_owned(), channel.to_owned(), None), occupied, event, source);
    }

    /// A presence channel's member was added or removed in the cluster.
    pub(super) fn member_hook(
        &mut self,
        now: Instant,
        app_id: &str,
        channel: &str,
        change: &MemberChange,
        source: Source,
    ) {
        let (added, user_id) = match change {
            MemberChange::Added(member) => (true, member.user_id.as_str()),
            MemberChange::Removed(user_id) => (false, user_id.as_str()),
        };
        let kind = if added { WebhookEvent::MemberAdded } else { WebhookEvent::MemberRemoved };
        let event = Event::channel_event(kind, channel, Some(user_id));
        let key = (app_id.to_owned(), channel.to_owned(), Some(user_id.to_owned()));
        self.transition_hook(now, app_id, key, added, event, source);
    }

    fn transition_hook(&mut self, now: Instant, app_id: &str, key: HoldKey, up: bool, event: Event, source: Source) {
        let Some(app) = self.config.pusher.app.iter().position(|a| a.id == app_id) else { return };
        let grace = self.config.pusher.webhook_grace;
        let reporter = matches!(source, Source::Local | Source::Dead { report: true });
        if up {
            // Back within the grace: the leave is not reported, nor is this return.
            let before = self.held.len();
            self.held.retain(|held| held.key != key);
            let recent = self.recent_leaves.remove(&key).is_some_and(|at| now.saturating_duration_since(at) < grace);
            if reporter && !recent && self.held.len() == before {
                self.webhook(now, app, &event);
            }
        } else {
            self.recent_leaves.insert(key.clone(), now);
            if reporter {
                self.held.push(Held { due: later(now, grace), app, key, event });
            }
        }
    }

    /// Queues `event` of app `app` for its receivers.
    pub(super) fn webhook(&mut self, now: Instant, app: usize, event: &Event) {
        let unix_ms = self.unix_ms(now);
        self.webhooks.push(&self.config.pusher, app, event, now, unix_ms);
        self.webhook_metrics();
    }

    /// Whether app `app` has a receiver for `kind` on `channel`.
    pub(super) fn wants_webhook(&self, app: usize, kind: WebhookEvent, channel: &str) -> bool {
        self.webhooks.wanted(&self.config.pusher, app, kind, channel)
    }

    /// Held events whose grace is over are queued; recent leaves older than the grace are
    /// forgotten; retries and batches due run.
    pub(super) fn run_webhooks(&mut self, now: Instant) {
        let grace = self.config.pusher.webhook_grace;
        let (due, waiting): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.due <= now);
        self.held = waiting;
        for held in due {
            self.webhook(now, held.app, &held.event);
        }
        self.recent_leaves.retain(|_, at| now.saturating_duration_since(*at) < grace);
        let unix_ms = self.unix_ms(now);
        self.webhooks.handle_timeout(now, unix_ms);
        self.webhook_metrics();
    }

    /// When webhook work is next due.
    pub(super) fn webhook_timeout(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.due).min();
        [held, self.webhooks.poll_timeout()].into_iter().flatten().min()
    }

    /// The shell finished webhook request `id`.
    pub(super) fn webhook_done(&mut self, now: Instant, id: u64, status: Option<u16>) {
        let unix_ms = self.unix_ms(now);
        self.webhooks.done(id, status, now, unix_ms);
        self.webhook_metrics();
    }

    fn webhook_metrics(&mut self) {
        let counts = self.webhooks.counts();
        let m = &mut self.metrics;
        (m.webhooks_sent, m.webhooks_retried, m.webhooks_failed) = (counts.sent, counts.retried, counts.failed);
        (m.webhooks_dropped, m.webhooks_queued) = (counts.dropped, counts.queued);
        while let Some(request) = self.webhooks.poll_request() {
            self.webhooks_out.push_back(request);
        }
    }

    /// Wall time at `now` in Unix milliseconds (0 before the shell said).
    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        self.wall.map_or(0, |(at, unix_ms)| {
            let since = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
            unix_ms.saturating_add(since)
        })
    }

    /// Keeps `frame` as the last event of a cache channel, unless a newer one is kept.
    pub(super) fn cache_store(&mut self, now: Instant, app_id: &str, channel: &str, published_ms: u64, frame: &str) {
        let key = (app_id.to_owned(), channel.to_owned());
        if self.cache.get(&key).is_some_and(|kept| kept.published_ms > published_ms && kept.expires > now) {
            return;
        }
        let expires = later(now, self.config.pusher.cache_ttl);
        self.cache.insert(key, Cached { published_ms, expires, frame: frame.to_owned() });
        if self.cache.len() > 256 && self.cache.len().is_power_of_two() {
            self.cache.retain(|_, kept| kept.expires > now);
        }
    }

    /// Every cache entry still fresh, for a snapshot.
    pub(super) fn cache_entries(&self, now: Instant) -> Vec<(String, String, u64, String)> {
        self.cache
            .iter()
            .filter(|(_, kept)| kept.expires > now)
            .map(|((app, channel), kept)| (app.clone(), channel.clone(), kept.published_ms, kept.frame.clone()))
            .collect()
    }

    /// A new subscriber of a cache channel gets its last event, or `pusher:cache_miss` (and the
    /// `cache_miss` webhook).
    pub(super) fn serve_cache(&mut self, now: Instant, id: ConnId, app: usize, app_id: &str, channel: &str) {
        if !ChannelType::of(channel).cache {
            return;
        }
        let key = (app_id.to_owned(), channel.to_owned());
        match self.cache.get(&key).filter(|kept| kept.expires > now) {
            Some(kept) => {
                let frame = kept.frame.clone();
                self.reply(id, frame);
            }
            None => {
                self.reply(id, protocol::cache_miss(channel));
                if self.wants_webhook(app, WebhookEvent::CacheMiss, channel) {
                    self.webhook(now, app, &Event::channel_event(WebhookEvent::CacheMiss, channel, None));
                }
            }
        }
    }
}
