//! Plain HTTP on the WebSocket port: reading a request, the upgrade and admission, and the
//! `/healthz`, `/metrics`, `/api/stats` and `/api/publish` endpoints.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::admin::Routed;
use super::{ConnId, Hub, Phase, PresenceWaiter, PublishError, Timer, live_conn, room_name};
use crate::api::{self, NodeInfo};
use crate::config::RouteMode;
use crate::deflate::{self, Inflater};
use crate::frame::Decoder;
use crate::handshake::{self, HeadError, HttpResponse, RequestHead};
use crate::limits::Refusal;
use crate::proxy::{self, ProxyHeader};
use crate::pubsub;
use crate::redis::RedisLink;
use crate::time::later;

impl Hub {
    pub(super) fn read_head(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = live_conn(&mut self.slots, id) else { return };
        conn.head.extend_from_slice(data);
        // Pipelined requests on a kept-alive connection are answered in order.
        while self.next_request(now, id) {}
    }

    /// Answers the request at the start of the connection's buffer, if it is all there;
    /// true when the connection was kept alive with bytes of a next request waiting.
    fn next_request(&mut self, now: Instant, id: ConnId) -> bool {
        let max = self.config.server.max_header_bytes;
        let max_body = self.config.http.max_body_bytes.as_usize();
        let (pusher_api, pusher_body) = (self.pusher_on(), self.pusher_body_limit());
        let Some(conn) = live_conn(&mut self.slots, id) else { return false };
        if conn.proxy_pending {
            match proxy::parse_proxy_header(&conn.head) {
                ProxyHeader::Incomplete => return false,
                ProxyHeader::Invalid(_) => {
                    // Not from the proxy we were told sits in front: nothing to answer.
                    self.metrics.proxy_header_errors += 1;
                    self.finish(id);
                    return false;
                }
                ProxyHeader::Parsed { len, source } => {
                    conn.head.drain(..len.min(conn.head.len()));
                    conn.proxy_pending = false;
                    let trusted = &self.config.server.trusted_proxies;
                    // With a list, only the listed proxies may name the client.
                    if let Some(source) = source
                        && (trusted.is_empty() || trusted.iter().any(|cidr| cidr.contains(conn.peer.ip())))
                    {
                        conn.client = source.ip();
                    }
                }
            }
        }
        let refuse = |hub: &mut Self, status: u16, reason: &str| {
            hub.respond_http(id, &HttpResponse::error(status, reason));
            false
        };
        let head = match handshake::parse_head(&conn.head) {
            Ok(None) if conn.head.len() > max => return refuse(self, 431, "request head too large"),
            Ok(None) => return false,
            Ok(Some(head)) if head.head_len > max => return refuse(self, 431, "request head too large"),
            Ok(Some(head)) => head,
            Err(HeadError::TooManyHeaders) => return refuse(self, 431, "too many header fields"),
            Err(HeadError::Malformed(reason)) => return refuse(self, 400, reason),
        };
        let trusted = &self.config.server.trusted_proxies;
        conn.client = proxy::client_from_headers(
            trusted,
            conn.client,
            head.header_values("forwarded"),
            head.header_values("x-forwarded-for"),
        );
        if head.is_upgrade() {
            let rest = conn.head.split_off(head.head_len);
            conn.head = Vec::new();
            self.upgrade(now, id, &head, &rest);
            return false;
        }
        if head.header("transfer-encoding").is_some() {
            return refuse(self, 411, "send the body with Content-Length");
        }
        let body_len = match head.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(len)) => len,
            Some(Err(_)) => return refuse(self, 400, "malformed Content-Length"),
        };
        let max_body = if pusher_api && head.path.starts_with("/apps/") { pusher_body } else { max_body };
        if body_len > max_body {
            return refuse(self, 413, "request body too large");
        }
        if conn.head.len() < head.head_len.saturating_add(body_len) {
            return false;
        }
        let next = conn.head.split_off(head.head_len + body_len);
        let body = conn.head.split_off(head.head_len);
        // The whole request is here: it is being answered, not holding a handshake place.
        self.end_handshake(id);
        if head.path == "/api/presence" && head.method == "GET" {
            self.api_presence(now, id, &head);
            return false;
        }
        let response = match self.admin_route(now, id, &head, &body) {
            Routed::NotAdmin => self.http_request(now, &head, &body),
            Routed::Answer(response) => response,
            Routed::Waiting => return false,
        };
        let close_asked =
            head.header_values("connection").any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        if head.http11 && !close_asked && self.drain.is_none() {
            return self.respond_keep_alive(now, id, &response, next);
        }
        self.respond_http(id, &response);
        false
    }

    /// Answers and waits for the connection's next request (HTTP/1.1 keeps connections
    /// open unless asked not to): the connection is counted among those in their handshake
    /// again and has `handshake_timeout` to send it. True when its bytes are already here.
    fn respond_keep_alive(&mut self, now: Instant, id: ConnId, response: &HttpResponse, next: Vec<u8>) -> bool {
        if response.status >= 400 {
            self.metrics.count_rejection(response.status);
        }
        self.enqueue(id, response.to_bytes_kept_alive());
        let limit = self.config.limits.send_queue_bytes.as_usize();
        let Some(conn) = self.conn(id) else { return false };
        // A client that pipelines requests without reading the answers is let go.
        let flooded = conn.unsent() > limit.max(64 * 1024);
        let peer = conn.peer.ip();
        let handshake = if flooded { None } else { self.admission.begin_handshake(self.handshake_key(peer), now).ok() };
        let Some(handshaking) = handshake else {
            let Some(conn) = self.conn_mut(id) else { return false };
            conn.phase = Phase::Answered;
            conn.close_when_flushed = true;
            return false;
        };
        let epoch = self.epoch(now);
        let handshake_timeout = self.config.server.handshake_timeout;
        let Some(conn) = self.conn_mut(id) else { return false };
        conn.head = next;
        conn.handshaking = true;
        conn.kept_alive = true;
        conn.timers.set(Timer::Handshake, epoch, later(now, handshake_timeout));
        self.metrics.handshaking += 1;
        self.handshakes.push_back(id);
        if handshaking > self.config.limits.max_handshaking {
            self.evict_oldest_handshake(id);
        }
        self.rearm(id);
        self.conn(id).is_some_and(|c| c.phase == Phase::Handshake && !c.head.is_empty())
    }

    /// `GET /api/presence?channel=NAME`: members from every live node. It needs the API key
    /// when one is configured (presence names your users); it is answered when the cluster
    /// has been asked, so the connection waits in `Responding`.
    fn api_presence(&mut self, now: Instant, id: ConnId, head: &RequestHead) {
        if !self.config.http.api_key.is_empty()
            && let Err((status, reason)) = api::check_auth(&self.config.http.api_key, head.header("authorization"))
        {
            let response = HttpResponse::error(status, reason);
            let response = if status == 401 { response.with_header("WWW-Authenticate", "Bearer") } else { response };
            return self.respond_http(id, &response);
        }
        if let Some(response) = self.presence_request(now, id, head) {
            self.respond_http(id, &response);
        }
    }

    /// Asks the cluster who is on `?channel=` for connection `id`, which then waits in
    /// `Responding`; the answer now when the request is bad.
    pub(super) fn presence_request(&mut self, now: Instant, id: ConnId, head: &RequestHead) -> Option<HttpResponse> {
        let channel = query_value(&head.query, "channel").unwrap_or_default();
        if !pubsub::valid_channel(&channel, self.config.pubsub.max_channel_bytes) {
            let reason = "give ?channel= with a valid channel name ([A-Za-z0-9_.:-])";
            return Some(HttpResponse::error(400, reason));
        }
        let conn = self.conn_mut(id)?;
        conn.phase = Phase::Responding;
        conn.head = Vec::new();
        self.ask_presence(now, PresenceWaiter::Http { conn: id, channel });
        None
    }

    pub(super) fn node_info(&self, now: Instant) -> NodeInfo {
        NodeInfo {
            node_id: self.origin.node.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.map_or(0, |s| now.saturating_duration_since(s).as_secs()),
            draining: self.drain.is_some(),
            broker: self.broker_state,
            cluster_connections: self.redis.iter().find(|l| !l.is_retired()).and_then(RedisLink::cluster_connections),
        }
    }

    /// Plain HTTP on the WebSocket port.
    pub(super) fn http_request(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> HttpResponse {
        let get_only =
            |allowed: &'static str| HttpResponse::error(405, "method not allowed").with_header("Allow", allowed);
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/healthz") => {
                let (status, body) = api::healthz_json(&self.node_info(now));
                HttpResponse::json(status, body)
            }
            ("GET", "/metrics") if self.config.http.metrics => HttpResponse {
                status: 200,
                headers: Vec::new(),
                content_type: api::PROMETHEUS_CONTENT_TYPE,
                body: api::prometheus_text(&self.node_metrics(), &self.node_info(now)).into_bytes(),
            },
            ("GET", "/api/stats") => {
                HttpResponse::json(200, api::stats_json(&self.node_metrics(), &self.node_info(now)))
            }
            ("POST", "/api/publish") => self.api_publish(now, head, body),
            (_, "/healthz" | "/api/stats") => get_only("GET"),
            (_, "/metrics") if self.config.http.metrics => get_only("GET"),
            (_, "/api/publish") => get_only("POST"),
            (_, "/api/presence") => get_only("GET"),
            (_, path) if (path.starts_with("/apps/") || is_users_path(path)) && self.pusher_on() => {
                self.pusher_api(now, head, body)
            }
            _ if self.config.route(&head.path).is_some() => {
                HttpResponse::error(426, "this path serves WebSocket: send an upgrade request")
                    .with_header("Sec-WebSocket-Version", "13")
            }
            _ => HttpResponse::error(404, "no such path"),
        }
    }

    pub(super) fn api_publish(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> HttpResponse {
        if let Err((status, reason)) = api::check_auth(&self.config.http.api_key, head.header("authorization")) {
            let response = HttpResponse::error(status, reason);
            return if status == 401 { response.with_header("WWW-Authenticate", "Bearer") } else { response };
        }
        self.publish_body(now, body)
    }

    /// Publishes what a `POST /api/publish` body asks (the caller checked its credential).
    pub(super) fn publish_body(&mut self, now: Instant, body: &[u8]) -> HttpResponse {
        let request = match api::parse_publish(body, self.config.pubsub.max_channel_bytes) {
            Ok(request) => request,
            Err(reason) => return HttpResponse::error(400, &reason),
        };
        self.metrics.api_publishes += 1;
        let result = match &request.target {
            api::PublishTarget::Channel(channel) => self.handle_publish(now, channel, request.data.get()),
            api::PublishTarget::Route(path) => self.handle_broadcast(now, path, true, request.data.get().as_bytes()),
        };
        match result {
            Ok(()) => HttpResponse::json(202, r#"{"status":"accepted"}"#.to_owned()),
            Err(PublishError::NoSuchRoute) => HttpResponse::error(404, "no broadcast route at that path"),
            Err(PublishError::BadChannel) => HttpResponse::error(400, "bad channel name"),
            Err(PublishError::BadJson) => HttpResponse::error(400, "data is not valid JSON"),
            Err(PublishError::HistoryUnavailable) => HttpResponse::error(
                503,
                "the channel's history is in Redis, which is out of reach; nothing was published",
            )
            .with_header("Retry-After", "1"),
        }
    }

    /// Decides admission for an upgrade from `client`; an error is the response to send.
    pub(super) fn admit(&mut self, now: Instant, client: IpAddr) -> Result<(), HttpResponse> {
        if self.drain.is_some() {
            return Err(HttpResponse::error(503, "server is draining").with_header("Retry-After", "5"));
        }
        let key = proxy::client_key(client, self.config.limits.ipv6_prefix);
        self.admission.open(key, now).map_err(Self::refusal_response)
    }

    /// The answer to an upgrade admission refused.
    pub(super) fn refusal_response(refusal: Refusal) -> HttpResponse {
        match refusal {
            Refusal::Capacity => HttpResponse::error(503, "server at capacity").with_header("Retry-After", "5"),
            Refusal::TooManyFromAddress => {
                HttpResponse::error(429, "too many connections from this address").with_header("Retry-After", "5")
            }
            Refusal::TooFast(wait) => {
                let wait = wait.as_secs_f64().ceil().max(1.0);
                HttpResponse::error(429, "connecting too fast from this address")
                    .with_header("Retry-After", format!("{wait}"))
            }
            Refusal::TooManyHandshaking => HttpResponse::error(429, "too many handshakes from this address"),
        }
    }

    pub(super) fn upgrade(&mut self, now: Instant, id: ConnId, head: &RequestHead, rest: &[u8]) {
        let request = match handshake::validate_upgrade(head) {
            Ok(request) => request,
            Err(response) => return self.respond_http(id, &response),
        };
        if self.pusher_on() && head.path.starts_with("/app/") {
            return self.pusher_upgrade(now, id, head, &request.key, rest);
        }
        let Some((route_index, route)) = self.config.route(&head.path) else {
            return self.respond_http(id, &HttpResponse::error(404, "no WebSocket route at this path"));
        };
        if !route.allowed_origins.is_empty()
            && let Some(origin) = &request.origin
            && !route.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            return self.respond_http(id, &HttpResponse::error(403, "origin not allowed"));
        }
        let protocol = handshake::select_protocol(&route.subprotocols, &request.protocols).map(str::to_owned);
        let mode = route.mode;
        let path = route.path.clone();
        let Some(client) = self.conn(id).map(|c| c.client) else { return };
        if let Err(response) = self.admit(now, client) {
            return self.respond_http(id, &response);
        }
        let heartbeat = self.config.heartbeat.clone();
        self.accept_websocket(now, id, head, &request.key, protocol.as_deref(), heartbeat.ping_interval);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.route = route_index;
        conn.counted = true;
        *self.metrics.connections_by_route.entry(path.clone()).or_default() += 1;
        match mode {
            RouteMode::Broadcast => self.subscribe(id, &room_name(&path), None),
            RouteMode::Pubsub => self.native_open(now, id, query_value(&head.query, "token")),
            RouteMode::Echo => {}
        }
        self.rearm(id);
        if !rest.is_empty() {
            self.read_frames(now, id, rest);
        }
    }

    /// Completes the WebSocket handshake: the `101` (with permessage-deflate when offered and
    /// enabled); the connection is open, its first ping due in `ping_every`.
    pub(super) fn accept_websocket(
        &mut self,
        now: Instant,
        id: ConnId,
        head: &RequestHead,
        key: &str,
        protocol: Option<&str>,
        ping_every: Duration,
    ) {
        self.end_handshake(id);
        let negotiated = if self.config.compression.enabled {
            deflate::negotiate(
                head.header_values("sec-websocket-extensions"),
                self.config.compression.server_no_context_takeover,
            )
        } else {
            None
        };
        let response =
            handshake::accept_response(key, protocol, negotiated.as_ref().map(|(_, header)| header.as_str()));
        let epoch = self.epoch(now);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.phase = Phase::Open;
        conn.timers.stop(Timer::Handshake);
        conn.last_active = now;
        conn.timers.set(Timer::Ping, epoch, later(now, ping_every));
        conn.deflate = negotiated.as_ref().map(|(params, _)| *params);
        conn.decoder = Decoder::new(conn.deflate.as_ref().map(Inflater::new));
        self.metrics.upgrades += 1;
        self.enqueue(id, response);
    }

    /// The public name of a connection: node, worker and slot.
    pub(super) fn conn_name(&self, id: ConnId) -> String {
        format!("{}-{}-{}.{}", self.origin.node, self.origin.worker, id.index, id.generation)
    }
}

/// A Pusher API path without the `/apps/{id}` prefix (the Python SDK's terminate_connections).
fn is_users_path(path: &str) -> bool {
    path.starts_with("/users/") && path.ends_with("/terminate_connections")
}

/// The percent-decoded value of `key` in a query string.
pub(super) fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            }
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
