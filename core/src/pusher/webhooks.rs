//! Webhook delivery, sans-IO: which receiver gets which events, in what requests, and what is
//! retried when. The hub decides *that* an event happened (and that this hub is the one to
//! report it); this queue decides when it is posted, and the shell performs the `POST`.
//!
//! Each receiver (an app's `[[pusher.app.webhook]]`) has its own queue and at most one request
//! in flight, so its events arrive in order. A request carries one event, or with
//! `webhook_batch` every event collected for that long. A request answered other than 2xx, or
//! not answered, is retried after 1 s, 2 s, 4 s … (at most 60 s) until `webhook_retry_for`
//! has passed since its first attempt; then its events count as failed. Events beyond
//! `webhook_queue` (all receivers of the hub together) are dropped and counted.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{PusherConfig, WebhookEvent};
use crate::hub::WebhookRequest;
use crate::time::later;

use super::json::{push_str, push_u64};
use super::sign::webhook_signature;

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One event, its JSON object already written (`{"name":…,"channel":…,…}`).
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// What kind, to match receivers' `events`.
    pub(crate) kind: WebhookEvent,
    /// The channel, to match receivers' `filter_prefix`.
    pub(crate) channel: String,
    /// The object as it goes in the body's `events`.
    pub(crate) json: String,
}

impl Event {
    /// An event with just `name` and `channel` (occupied, vacated, cache miss), plus
    /// `user_id` for the member events.
    pub(crate) fn channel_event(kind: WebhookEvent, channel: &str, user_id: Option<&str>) -> Self {
        let mut json = String::with_capacity(48 + channel.len());
        json.push_str("{\"name\":\"");
        json.push_str(kind.name());
        json.push_str("\",\"channel\":");
        push_str(&mut json, channel);
        if let Some(user_id) = user_id {
            json.push_str(",\"user_id\":");
            push_str(&mut json, user_id);
        }
        json.push('}');
        Self { kind, channel: channel.to_owned(), json }
    }

    /// A `client_event`: its `data` as the client sent it (JSON), `user_id` on presence channels.
    pub(crate) fn client_event(
        channel: &str,
        event: &str,
        data: Option<&str>,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Self {
        let mut json = String::with_capacity(96 + channel.len() + event.len() + data.map_or(4, str::len));
        json.push_str("{\"name\":\"client_event\",\"channel\":");
        push_str(&mut json, channel);
        json.push_str(",\"event\":");
        push_str(&mut json, event);
        json.push_str(",\"data\":");
        json.push_str(data.unwrap_or("null"));
        json.push_str(",\"socket_id\":");
        push_str(&mut json, socket_id);
        if let Some(user_id) = user_id {
            json.push_str(",\"user_id\":");
            push_str(&mut json, user_id);
        }
        json.push('}');
        Self { kind: WebhookEvent::ClientEvent, channel: channel.to_owned(), json }
    }
}

/// A request posted and not answered yet, or waiting to be tried again.
#[derive(Debug)]
struct Attempt {
    receiver: usize,
    events: Vec<Event>,
    first_at: Instant,
    tries: u32,
}

/// One receiver: where it is and what waits for it.
#[derive(Debug)]
struct Receiver {
    app: usize,
    url: String,
    headers: Vec<(String, String)>,
    queue: VecDeque<Event>,
    /// A request is out (or waits for its retry): the queue waits behind it.
    busy: bool,
    /// With batching: when the collected events go.
    batch_due: Option<Instant>,
}

/// Delivery counts, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WebhookCounts {
    /// Requests answered 2xx (each counts its events).
    pub(crate) sent: u64,
    /// Attempts after the first.
    pub(crate) retried: u64,
    /// Events given up after `webhook_retry_for`.
    pub(crate) failed: u64,
    /// Events refused for a full queue.
    pub(crate) dropped: u64,
    /// Events waiting (queued, in flight or to be retried).
    pub(crate) queued: u64,
}

/// Every receiver of every app, their queues and their requests; see the module docs.
#[derive(Debug)]
pub(crate) struct Webhooks {
    receivers: Vec<Receiver>,
    /// `(app key, app secret)` by app index, for the headers and the signature.
    apps: Vec<(String, String)>,
    batch: Duration,
    retry_for: Duration,
    capacity: usize,
    in_flight: HashMap<u64, Attempt>,
    retries: Vec<(Instant, Attempt)>,
    out: VecDeque<WebhookRequest>,
    next_id: u64,
    counts: WebhookCounts,
}

impl Webhooks {
    /// The receivers `config` lists.
    pub(crate) fn new(config: &PusherConfig) -> Self {
        let mut receivers = Vec::new();
        for (app, settings) in config.app.iter().enumerate() {
            for hook in &settings.webhook {
                let headers = hook.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                receivers.push(Receiver {
                    app,
                    url: hook.url.clone(),
                    headers,
                    queue: VecDeque::new(),
                    busy: false,
                    batch_due: None,
                });
            }
        }
        Self {
            receivers,
            apps: config.app.iter().map(|a| (a.key.clone(), a.secret.clone())).collect(),
            batch: config.webhook_batch,
            retry_for: config.webhook_retry_for,
            capacity: config.webhook_queue,
            in_flight: HashMap::new(),
            retries: Vec::new(),
            out: VecDeque::new(),
            next_id: 0,
            counts: WebhookCounts::default(),
        }
    }

    /// Whether app `app` has a receiver for `kind` on `channel` (so the caller can skip
    /// building an event nobody hears).
    pub(crate) fn wanted(&self, config: &PusherConfig, app: usize, kind: WebhookEvent, channel: &str) -> bool {
        config.app.get(app).is_some_and(|a| a.webhook.iter().any(|hook| hook.wants(kind, channel)))
    }

    /// Queues `event` of app `app` for each of its receivers that wants it.
    pub(crate) fn push(&mut self, config: &PusherConfig, app: usize, event: &Event, now: Instant, unix_ms: u64) {
        let Some(settings) = config.app.get(app) else { return };
        let mut hooks = settings.webhook.iter();
        for receiver in self.receivers.iter_mut().filter(|r| r.app == app) {
            let Some(hook) = hooks.next() else { break };
            if !hook.wants(event.kind, &event.channel) {
                continue;
            }
            if self.counts.queued >= self.capacity as u64 {
                self.counts.dropped += 1;
                continue;
            }
            self.counts.queued += 1;
            receiver.queue.push_back(event.clone());
            if !self.batch.is_zero() && receiver.batch_due.is_none() {
                receiver.batch_due = Some(later(now, self.batch));
            }
        }
        self.dispatch(now, unix_ms);
    }

    /// The next request for the shell.
    pub(crate) fn poll_request(&mut self) -> Option<WebhookRequest> {
        self.out.pop_front()
    }

    /// When `handle_timeout` has work (a retry or a batch due).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.retries.iter().map(|(at, _)| *at).min();
        let batch = self.receivers.iter().filter(|r| !r.busy && !r.queue.is_empty()).filter_map(|r| r.batch_due).min();
        [retry, batch].into_iter().flatten().min()
    }

    /// Runs the retries and batches due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant, unix_ms: u64) {
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retries).into_iter().partition(|(at, _)| *at <= now);
        self.retries = waiting;
        for (_, attempt) in due {
            self.counts.retried += 1;
            self.post(attempt, unix_ms);
        }
        self.dispatch(now, unix_ms);
    }

    /// The shell finished request `id`: 2xx is done, anything else is retried or given up.
    pub(crate) fn done(&mut self, id: u64, status: Option<u16>, now: Instant, unix_ms: u64) {
        let Some(mut attempt) = self.in_flight.remove(&id) else { return };
        let events = attempt.events.len() as u64;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            self.counts.sent += events;
            self.finish(attempt.receiver, events);
        } else if now.saturating_duration_since(attempt.first_at) < self.retry_for {
            let wait = FIRST_BACKOFF.saturating_mul(1 << attempt.tries.min(6)).min(MAX_BACKOFF);
            attempt.tries += 1;
            self.retries.push((later(now, wait), attempt));
        } else {
            self.counts.failed += events;
            self.finish(attempt.receiver, events);
        }
        self.dispatch(now, unix_ms);
    }

    /// Delivery counts so far.
    pub(crate) fn counts(&self) -> WebhookCounts {
        self.counts
    }

    /// Requests out or waiting for a retry, for footprints.
    pub(crate) fn pending(&self) -> usize {
        self.in_flight.len() + self.retries.len()
    }

    fn finish(&mut self, receiver: usize, events: u64) {
        self.counts.queued = self.counts.queued.saturating_sub(events);
        if let Some(receiver) = self.receivers.get_mut(receiver) {
            receiver.busy = false;
        }
    }

    /// Starts a request for every idle receiver with events ready.
    fn dispatch(&mut self, now: Instant, unix_ms: u64) {
        for index in 0..self.receivers.len() {
            let receiver = &mut self.receivers[index];
            if receiver.busy || receiver.queue.is_empty() {
                continue;
            }
            if !self.batch.is_zero() {
                match receiver.batch_due {
                    Some(due) if due <= now => {}
                    Some(_) => continue,
                    None => receiver.batch_due = Some(later(now, self.batch)),
                }
                if receiver.batch_due.is_some_and(|due| due > now) {
                    continue;
                }
            }
            let events: Vec<Event> = if self.batch.is_zero() {
                receiver.queue.pop_front().into_iter().collect()
            } else {
                receiver.batch_due = None;
                receiver.queue.drain(..).collect()
            };
            receiver.busy = true;
            self.post(Attempt { receiver: index, events, first_at: now, tries: 0 }, unix_ms);
        }
    }

    fn post(&mut self, attempt: Attempt, unix_ms: u64) {
        let Some(receiver) = self.receivers.get(attempt.receiver) else { return };
        let Some((key, secret)) = self.apps.get(receiver.app) else { return };
        let mut body = String::with_capacity(32 + attempt.events.iter().map(|e| e.json.len() + 1).sum::<usize>());
        body.push_str("{\"time_ms\":");
        push_u64(&mut body, unix_ms);
        body.push_str(",\"events\":[");
        for (i, event) in attempt.events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&event.json);
        }
        body.push_str("]}");
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("X-Pusher-Key".to_owned(), key.clone()),
            ("X-Pusher-Signature".to_owned(), webhook_signature(secret, body.as_bytes())),
        ];
        headers.extend(receiver.headers.iter().cloned());
        self.next_id += 1;
        let id = self.next_id;
        self.out.push_back(WebhookRequest { id, url: receiver.url.clone(), headers, body: body.into_bytes() });
        self.in_flight.insert(id, attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> PusherConfig {
        let toml = format!(
            "[pusher]\n{extra}\n[[pusher.app]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
             [[pusher.app.webhook]]\nurl = \"http://127.0.0.1:9/hook\"\nheaders = {{ X-Test = \"yes\" }}\n\
             [[pusher.app.webhook]]\nurl = \"http://127.0.0.1:9/members\"\nevents = [\"member_added\"]\n"
        );
        Config::from_toml(&toml).expect("test config").pusher
    }

    fn occupied(channel: &str) -> Event {
        Event::channel_event(WebhookEvent::ChannelOccupied, channel, None)
    }

    #[test]
    fn an_event_goes_to_the_receivers_that_want_it_signed_and_in_order() {
        let config = config("");
        let mut hooks = Webhooks::new(&config);
        let t0 = switchboard_testkit::origin();
        hooks.push(&config, 0, &occupied("a"), t0, 1_000);
        hooks.push(&config, 0, &occupied("b"), t0, 1_000);
        let first = hooks.poll_request().expect("one request");
        assert!(hooks.poll_request().is_none(), "one in flight per receiver; the members hook wants none");
        assert_eq!(first.url, "http://127.0.0.1:9/hook");
        assert_eq!(
            String::from_utf8_lossy(&first.body),
            r#"{"time_ms":1000,"events":[{"name":"channel_occupied","channel":"a"}]}"#
        );
        let header = |name: &str| first.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(header("X-Pusher-Signature"), Some(webhook_signature("s", &first.body)));
        assert_eq!(header("X-Pusher-Key").as_deref(), Some("k"));
        assert_eq!(header("X-Test").as_deref(), Some("yes"));
        hooks.done(first.id, Some(200), t0, 1_000);
        let second = hooks.poll_request().expect("the next event goes once the first is answered");
        assert!(String::from_utf8_lossy(&second.body).contains("\"b\""));
        hooks.done(second.id, Some(204), t0, 1_000);
        assert_eq!(hooks.counts(), WebhookCounts { sent: 2, ..WebhookCounts::default() });
    }

    #[test]
    fn failures_are_retried_with_backoff_until_retry_for_then_counted_failed() {
        let config = config("webhook_retry_for = \"5s\"");
        let mut hooks = Webhooks::new(&config);
        let t0 = switchboard_testkit::origin();
        hooks.push(&config, 0, &occupied("a"), t0, 0);
        let mut request = hooks.poll_request().expect("a request");
        let mut now = t0;
        let mut waits = Vec::new();
        loop {
            hooks.done(request.id, if waits.len() % 2 == 0 { Some(500) } else { None }, now, 0);
            let Some(at) = hooks.poll_timeout() else { break };
            waits.push(at - now);
            now = at;
            hooks.handle_timeout(now, 0);
            request = hooks.poll_request().expect("the retry");
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4], "1 s, 2 s, 4 s; the next would pass 5 s");
        let counts = hooks.counts();
        assert_eq!((counts.retried, counts.failed, counts.queued, counts.sent), (3, 1, 0, 0));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let config = config("webhook_queue = 2");
        let mut hooks = Webhooks::new(&config);
        let t0 = switchboard_testkit::origin();
        for channel in ["a", "b", "c", "d"] {
            hooks.push(&config, 0, &occupied(channel), t0, 0);
        }
        assert_eq!((hooks.counts().queued, hooks.counts().dropped), (2, 2));
    }

    #[test]
    fn batching_collects_events_for_the_batch_time() {
        let config = config("webhook_batch = \"100ms\"");
        let mut hooks = Webhooks::new(&config);
        let t0 = switchboard_testkit::origin();
        hooks.push(&config, 0, &occupied("a"), t0, 0);
        hooks.push(&config, 0, &occupied("b"), t0 + Duration::from_millis(50), 0);
        assert!(hooks.poll_request().is_none());
        assert_eq!(hooks.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        hooks.handle_timeout(t0 + Duration::from_millis(100), 0);
        let request = hooks.poll_request().expect("the batch");
        let body = String::from_utf8_lossy(&request.body).into_owned();
        assert!(body.contains("\"a\"") && body.contains("\"b\""), "{body}");
    }
}
