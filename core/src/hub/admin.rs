//! The admin page and API under `admin.path` (see [`crate::admin`] for how hubs share their
//! figures): routing, the hub's own report, history and connection details for the API, and
//! the orders and questions other hubs send on the admin channel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::native::HistoryWaiter;
use super::{ConnId, Hub, Phase};
use crate::admin::{self, ChannelFilter, Message, Report, Target};
use crate::broker::{BrokerCommand, Envelope};
use crate::channel::ChannelId;
use crate::config::RouteMode;
use crate::handshake::{HttpResponse, RequestHead};
use crate::history::StreamRead;
use crate::pubsub;
use crate::time::later;

/// Most channels one `GET {path}/api/channels` lists.
const MAX_LISTED: usize = 500;

/// How long a request for another hub's connection details waits for its answer.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most publications `GET {path}/api/history` shows.
const LAST_PUBLICATIONS: usize = 20;

/// What the hub keeps for the admin API.
#[derive(Debug, Default)]
pub(super) struct AdminState {
    /// When this hub next reports itself; `None` until the first input (or with admin off).
    next_report: Option<Instant>,
    /// The message counters at the last report, for the rates.
    last_counts: Option<(Instant, u64, u64)>,
    /// Messages per second in and out over the last interval.
    rates: (f64, f64),
    /// The other hubs' latest reports, with when each came.
    peers: HashMap<(String, u32), (Instant, Report)>,
    /// Requests for another hub's connection details: token, the waiting request, the
    /// connection's name and when to give up.
    describing: Vec<(u64, ConnId, String, Instant)>,
}

/// How an admin request was answered.
pub(super) enum Routed {
    /// Not under `admin.path` (or admin is off): the other routes decide.
    NotAdmin,
    /// Answered now.
    Answer(HttpResponse),
    /// The connection waits in `Responding` for the cluster (presence, history in Redis,
    /// another hub's connection details).
    Waiting,
}

impl Hub {
    /// Answers a request under `admin.path`. The page itself holds no data and is served to
    /// anyone (it asks for the credential); every API call needs it.
    pub(super) fn admin_route(&mut self, now: Instant, id: ConnId, head: &RequestHead, body: &[u8]) -> Routed {
        let admin = &self.config.admin;
        let Some(rest) = head.path.strip_prefix(admin.path.as_str()).filter(|_| admin.enabled) else {
            return Routed::NotAdmin;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Routed::NotAdmin;
        }
        let method = head.method.as_str();
        if rest.is_empty() || rest == "/" {
            return Routed::Answer(match method {
                "GET" => page(),
                _ => json_error(405, "method not allowed").with_header("Allow", "GET"),
            });
        }
        if let Err((status, reason)) = admin::check_auth(admin, head.header("authorization")) {
            // No `Basic` challenge: a browser would pop its own dialog over the page's form.
            return Routed::Answer(json_error(status, reason).with_header("WWW-Authenticate", "Bearer"));
        }
        let answer = match (method, rest) {
            ("GET", "/api/nodes") => self.admin_nodes(now),
            ("GET", "/api/channels") => self.admin_channels(now, &head.query),
            ("GET", "/api/presence") => {
                return match self.presence_request(now, id, head) {
                    Some(response) => Routed::Answer(as_json_error(response)),
                    None => Routed::Waiting,
                };
            }
            ("GET", "/api/history") => return self.admin_history(now, id, &head.query),
            ("GET", "/api/connection") => return self.admin_connection(now, id, &head.query),
            ("GET", "/api/config") => match serde_json::to_string(&self.config.redacted()) {
                Ok(json) => HttpResponse::json(200, json),
                Err(e) => json_error(500, &format!("the configuration could not be rendered: {e}")),
            },
            ("POST", "/api/publish") => as_json_error(self.publish_body(now, body)),
            ("POST", "/api/disconnect") => self.admin_disconnect(now, body),
            (
                _,
                "/api/nodes" | "/api/channels" | "/api/presence" | "/api/history" | "/api/connection" | "/api/config",
            ) => json_error(405, "method not allowed").with_header("Allow", "GET"),
            (_, "/api/publish" | "/api/disconnect") => {
                json_error(405, "method not allowed").with_header("Allow", "POST")
            }
            _ => json_error(404, "no such admin endpoint"),
        };
        Routed::Answer(answer)
    }

    /// Every hub's report that is still fresh, this hub's own first.
    fn admin_reports(&self, now: Instant) -> Vec<Report> {
        let fresh = self
            .admin
            .peers
            .values()
            .filter(|(seen, _)| now.saturating_duration_since(*seen) < admin::STALE_AFTER)
            .map(|(_, report)| report.clone());
        std::iter::once(self.admin_report(now)).chain(fresh).collect()
    }

    fn admin_nodes(&self, now: Instant) -> HttpResponse {
        let nodes = admin::nodes(&self.admin_reports(now));
        HttpResponse::json(200, admin::nodes_json(&self.origin.node, &nodes))
    }

    /// `?contains=&min_subscribers=&limit=`.
    fn admin_channels(&self, now: Instant, query: &str) -> HttpResponse {
        let number = |key: &str| super::http::query_value(query, key).filter(|v| !v.is_empty());
        let mut filter = ChannelFilter {
            contains: super::http::query_value(query, "contains").unwrap_or_default(),
            min_subscribers: 0,
            limit: MAX_LISTED,
        };
        if let Some(min) = number("min_subscribers") {
            let Ok(min) = min.parse() else { return json_error(400, "min_subscribers must be a whole number") };
            filter.min_subscribers = min;
        }
        if let Some(limit) = number("limit") {
            let Ok(limit) = limit.parse::<usize>() else { return json_error(400, "limit must be a whole number") };
            filter.limit = limit.min(MAX_LISTED);
        }
        HttpResponse::json(200, admin::channels_json(&self.admin_reports(now), &filter))
    }

    /// `?channel=NAME`: the channel's last publications, from the node's table or Redis.
    fn admin_history(&mut self, now: Instant, id: ConnId, query: &str) -> Routed {
        let channel = super::http::query_value(query, "channel").unwrap_or_default();
        if !pubsub::valid_channel(&channel, self.config.pubsub.max_channel_bytes) {
            return Routed::Answer(json_error(400, "give ?channel= with a valid channel name ([A-Za-z0-9_.:-])"));
        }
        let Some(rules) = self.stream_rules(&channel) else {
            let reason = format!("{channel:?} keeps no history (its namespace has no history_size)");
            return Routed::Answer(json_error(404, &reason));
        };
        // All the stream keeps (at most `history_size`): the page shows the last of them.
        let limit = rules.size;
        if self.redis.is_empty() {
            let read = self.history.read(&channel, 0, limit, rules, now);
            return Routed::Answer(history_json(&channel, Some(read)));
        }
        let Some(conn) = self.conn_mut(id) else { return Routed::Waiting };
        conn.phase = Phase::Responding;
        conn.head = Vec::new();
        self.next_token += 1;
        let waiter = HistoryWaiter::Admin { conn: id, channel: channel.clone() };
        self.read_from_redis(now, self.next_token, waiter, &channel, 0, limit, rules);
        Routed::Waiting
    }

    /// A history read for the admin API came back (`None`: Redis was out of reach).
    pub(super) fn admin_history_answer(&mut self, conn: ConnId, channel: &str, read: Option<StreamRead>) {
        if self.conn(conn).is_some_and(|c| c.phase == Phase::Responding) {
            self.respond_http(conn, &history_json(channel, read));
        }
    }

    /// `?id=NAME`: a connection's details, from the hub holding it (another hub is asked
    /// through the broker, and the request waits for its answer).
    fn admin_connection(&mut self, now: Instant, id: ConnId, query: &str) -> Routed {
        let name = super::http::query_value(query, "id").unwrap_or_default();
        let Some((node, worker, conn)) = parse_conn_name(&name) else {
            let reason = "give ?id= with a connection id as its welcome names it (node-worker-slot.generation)";
            return Routed::Answer(json_error(400, reason));
        };
        if (node, worker) == (self.origin.node.as_str(), self.origin.worker) {
            return Routed::Answer(details_response(&name, self.connection_details(conn, &name)));
        }
        if !self.admin.peers.contains_key(&(node.to_owned(), worker)) {
            return Routed::Answer(json_error(404, &format!("no live node {node} worker {worker} holds {name}")));
        }
        let Some(waiting) = self.conn_mut(id) else { return Routed::Waiting };
        waiting.phase = Phase::Responding;
        waiting.head = Vec::new();
        self.next_token += 1;
        let token = self.next_token;
        self.admin.describing.push((token, id, name.clone(), later(now, DESCRIBE_TIMEOUT)));
        self.admin_broadcast(now, &Message::Describe { token, connection: name });
        Routed::Waiting
    }

    /// What the admin API shows of connection `id` (named `name`), if it is open here.
    fn connection_details(&self, id: ConnId, name: &str) -> Option<serde_json::Value> {
        let conn = self.conn(id).filter(|c| c.phase == Phase::Open)?;
        let route = self.config.route.get(conn.route);
        let channels: Vec<&str> =
            conn.subscriptions.iter().filter_map(|s| self.channels.get(s.channel)).map(|c| c.name.as_str()).collect();
        let user = conn.native.as_ref().map(|a| &*a.user).or(self.signed_in_as(id));
        let protocol = match (conn.pusher.is_some(), route.map(|r| r.mode)) {
            (true, _) => "pusher",
            (false, Some(RouteMode::Pubsub)) => "pubsub",
            (false, Some(RouteMode::Broadcast)) => "broadcast",
            (false, Some(RouteMode::Echo)) => "echo",
            (false, None) => "",
        };
        Some(serde_json::json!({
            "id": name,
            "node": self.origin.node,
            "worker": self.origin.worker,
            "client": conn.client.to_string(),
            "route": route.map(|r| r.path.as_str()),
            "protocol": protocol,
            "user": user.filter(|u| !u.is_empty()),
            "channels": channels,
            "queued_bytes": conn.out.unsent(),
            "compression": conn.deflate.is_some(),
        }))
    }

    /// Answers the requests for connection details that waited long enough: the hub asked
    /// did not answer (gone, or Redis out of reach).
    fn describe_timeouts(&mut self, now: Instant) {
        let (due, waiting) = std::mem::take(&mut self.admin.describing).into_iter().partition(|w| w.3 <= now);
        self.admin.describing = waiting;
        for (_, conn, name, _) in due {
            if self.conn(conn).is_some_and(|c| c.phase == Phase::Responding) {
                let reason = format!("the hub holding {name} did not answer in time");
                self.respond_http(conn, &json_error(504, &reason));
            }
        }
    }

    /// `{"connection": id}` or `{"user": id}`: closed here at once, and on every other hub
    /// through the broker.
    fn admin_disconnect(&mut self, now: Instant, body: &[u8]) -> HttpResponse {
        let target: Target = match serde_json::from_slice(body) {
            Ok(target) => target,
            Err(e) => return json_error(400, &format!("body must be {{\"connection\": id}} or {{\"user\": id}}: {e}")),
        };
        if let Target::Connection(name) = &target {
            let Some((node, worker, id)) = parse_conn_name(name) else {
                return json_error(400, "not a connection id (node-worker-slot.generation)");
            };
            if (node, worker) == (self.origin.node.as_str(), self.origin.worker) {
                if self.conn(id).is_none_or(|c| c.phase != Phase::Open) {
                    return json_error(404, &format!("no open connection {name}"));
                }
            } else if !self.admin.peers.contains_key(&(node.to_owned(), worker)) {
                return json_error(404, &format!("no live node {node} worker {worker} holds connection {name}"));
            }
        }
        let mut here = self.disconnect_local(now, &target);
        if let Target::User(user) = &target {
            // A Pusher user goes the way `terminate_connections` sends them, across the
            // cluster: `pusher:error` 4009, which pusher-js does not retry.
            here += self.live_ids().filter(|&id| self.signed_in_as(id) == Some(user.as_str())).count();
            let apps: Vec<String> = self.config.pusher.app.iter().map(|app| app.id.clone()).collect();
            for app in apps {
                self.terminate_user(now, &app, user);
            }
        }
        self.admin_broadcast(now, &Message::Disconnect(target));
        let body = serde_json::json!({ "status": "accepted", "disconnected_here": here });
        HttpResponse::json(202, body.to_string())
    }

    /// Closes this hub's connections `target` names (of a user: native ones; Pusher users
    /// are terminated by `admin_disconnect`); returns how many.
    fn disconnect_local(&mut self, now: Instant, target: &Target) -> usize {
        let ids: Vec<ConnId> = match target {
            Target::Connection(name) => parse_conn_name(name)
                .filter(|(node, worker, _)| (*node, *worker) == (self.origin.node.as_str(), self.origin.worker))
                .map(|(_, _, id)| id)
                .into_iter()
                .collect(),
            Target::User(user) => self
                .live_ids()
                .filter(|&id| self.conn(id).and_then(|c| c.native.as_ref()).is_some_and(|a| &*a.user == user))
                .collect(),
        };
        let mut closed = 0;
        for id in ids {
            if self.conn(id).is_some_and(|c| c.phase == Phase::Open) {
                self.close(now, id, 1008, "disconnected by an administrator");
                closed += 1;
            }
        }
        closed
    }

    /// Reports this hub to the others once a second, measures its message rates, and forgets
    /// hubs gone silent.
    pub(super) fn admin_tick(&mut self, now: Instant) {
        let Some(due) = self.admin.next_report else { return };
        if due > now {
            return;
        }
        self.admin.next_report = Some(later(now, admin::REPORT_EVERY));
        let (messages_in, messages_out) = (self.metrics.messages_in, self.metrics.messages_out);
        if let Some((at, last_in, last_out)) = self.admin.last_counts {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                self.admin.rates = (rate(messages_in, last_in), rate(messages_out, last_out));
            }
        }
        self.admin.last_counts = Some((now, messages_in, messages_out));
        self.admin.peers.retain(|_, (seen, _)| now.saturating_duration_since(*seen) < admin::STALE_AFTER);
        self.describe_timeouts(now);
        let report = self.admin_report(now);
        self.admin_broadcast(now, &Message::Report(report));
    }

    /// When `admin_tick` is next due.
    pub(super) fn admin_timeout(&self) -> Option<Instant> {
        self.admin.next_report
    }

    /// The first input: start reporting, and hear the other nodes' reports.
    pub(super) fn admin_start(&mut self, now: Instant) {
        if !self.config.admin.enabled {
            return;
        }
        self.admin.next_report = Some(now);
        if let Some(link) = self.link_of(admin::CHANNEL) {
            link.subscribe(now, admin::CHANNEL);
        }
    }

    /// A message on the admin channel from another hub.
    pub(super) fn on_admin(&mut self, now: Instant, envelope: &Envelope) {
        if envelope.origin == self.origin || !self.config.admin.enabled {
            return;
        }
        match serde_json::from_slice::<Message>(&envelope.payload) {
            // Keyed by the envelope's origin, so a hub cannot speak for another.
            Ok(Message::Report(report)) => {
                let key = (envelope.origin.node.clone(), envelope.origin.worker);
                let report = Report { node: key.0.clone(), worker: key.1, ..report };
                self.admin.peers.insert(key, (now, report));
            }
            Ok(Message::Disconnect(target)) => {
                self.disconnect_local(now, &target);
            }
            Ok(Message::Describe { token, connection }) => {
                let Some((node, worker, id)) = parse_conn_name(&connection) else { return };
                if (node, worker) != (self.origin.node.as_str(), self.origin.worker) {
                    return;
                }
                let details = self.connection_details(id, &connection);
                let to = (envelope.origin.node.clone(), envelope.origin.worker);
                self.admin_broadcast(now, &Message::Described { token, to, details });
            }
            Ok(Message::Described { token, to, details }) => {
                if to != (self.origin.node.clone(), self.origin.worker) {
                    return;
                }
                let Some(index) = self.admin.describing.iter().position(|w| w.0 == token) else { return };
                let (_, conn, name, _) = self.admin.describing.swap_remove(index);
                if self.conn(conn).is_some_and(|c| c.phase == Phase::Responding) {
                    self.respond_http(conn, &details_response(&name, details));
                }
            }
            Err(_) => self.metrics.protocol_errors += 1,
        }
    }

    /// Sends `message` to the node's other workers and, with Redis, to the other nodes.
    fn admin_broadcast(&mut self, now: Instant, message: &Message) {
        let Ok(json) = serde_json::to_vec(message) else { return };
        let envelope = Envelope {
            origin: self.origin.clone(),
            channel: admin::CHANNEL.to_owned(),
            text: true,
            payload: Bytes::from(json),
        };
        // A lost report is replaced a second later; it is not a client's message to count.
        if let Some(link) = self.link_of(admin::CHANNEL) {
            let _ = link.publish(now, &envelope);
        }
        if self.has_peers {
            self.broker_out.push_back(BrokerCommand::Publish(envelope));
        }
    }

    /// This hub's figures now (the rates are the last interval's).
    fn admin_report(&self, now: Instant) -> Report {
        let m = &self.metrics;
        // Counted first and named after the cut: only the listed channels' names are copied.
        let mut counts: Vec<(u64, ChannelId)> = self
            .channels
            .iter()
            .filter_map(|(_, id)| Some((self.channels.get(id)?.subscribers.len() as u64, id)))
            .collect();
        if counts.len() > admin::MAX_REPORTED_CHANNELS {
            counts.select_nth_unstable_by(admin::MAX_REPORTED_CHANNELS, |a, b| b.0.cmp(&a.0));
            counts.truncate(admin::MAX_REPORTED_CHANNELS);
        }
        let channels =
            counts.into_iter().filter_map(|(n, id)| Some((self.channels.get(id)?.name.clone(), n))).collect();
        let info = self.node_info(now);
        Report {
            node: info.node_id,
            worker: self.origin.worker,
            version: info.version.to_owned(),
            uptime_secs: info.uptime_secs,
            draining: info.draining,
            broker: info.broker.as_str().to_owned(),
            connections: m.connections_by_route.values().sum(),
            subscriptions: m.subscriptions,
            channel_count: self.channels.len() as u64,
            messages_in: m.messages_in,
            messages_out: m.messages_out,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            rate_in: self.admin.rates.0,
            rate_out: self.admin.rates.1,
            channels,
        }
    }
}

/// The page, with headers that keep it from being framed or cached.
fn page() -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![
            ("Cache-Control", "no-store".to_owned()),
            ("X-Frame-Options", "DENY".to_owned()),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 img-src data:; frame-ancestors 'none'"
                    .to_owned(),
            ),
        ],
        content_type: "text/html; charset=utf-8",
        body: admin::PAGE.as_bytes().to_vec(),
    }
}

/// The last [`LAST_PUBLICATIONS`] of `read`, newest first.
fn history_json(channel: &str, read: Option<StreamRead>) -> HttpResponse {
    let Some(read) = read else {
        return json_error(503, "the history is in Redis, which is out of reach").with_header("Retry-After", "1");
    };
    let publications: Vec<serde_json::Value> = read
        .publications
        .iter()
        .rev()
        .take(LAST_PUBLICATIONS)
        .map(|(offset, data)| {
            let data: serde_json::Value = serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "offset": offset, "data": data })
        })
        .collect();
    let body = serde_json::json!({
        "channel": channel,
        "epoch": read.top.epoch,
        "offset": read.top.offset,
        "publications": publications,
    });
    HttpResponse::json(200, body.to_string())
}

/// 200 with a connection's details, or 404 when it is not open.
fn details_response(name: &str, details: Option<serde_json::Value>) -> HttpResponse {
    match details {
        Some(details) => HttpResponse::json(200, details.to_string()),
        None => json_error(404, &format!("no open connection {name}")),
    }
}

/// A JSON error body: `{"error": reason}`.
fn json_error(status: u16, reason: &str) -> HttpResponse {
    HttpResponse::json(status, serde_json::json!({ "error": reason }).to_string())
}

/// The shared endpoints answer errors in plain text; the admin API answers them in JSON.
fn as_json_error(response: HttpResponse) -> HttpResponse {
    if response.status < 400 || response.content_type == "application/json" {
        return response;
    }
    let reason = String::from_utf8_lossy(&response.body).trim().to_owned();
    let body = serde_json::json!({ "error": reason }).to_string().into_bytes();
    HttpResponse { content_type: "application/json", body, ..response }
}

/// `node-worker-slot.generation` (the node id may hold `-` itself) → its parts.
fn parse_conn_name(name: &str) -> Option<(&str, u32, ConnId)> {
    let (rest, slot) = name.rsplit_once('-')?;
    let (node, worker) = rest.rsplit_once('-')?;
    let (index, generation) = slot.split_once('.')?;
    let id = ConnId { index: index.parse().ok()?, generation: generation.parse().ok()? };
    Some((node, worker.parse().ok()?, id))
}
