//! The Pusher HTTP API on the WebSocket port (`/apps/{id}/…`): signed as Pusher signs it,
//! answered from the directory, so counts and member lists are the cluster's.

use std::time::Instant;

use super::Hub;
use super::pusher::pusher_key;
use crate::config::PusherApp;
use crate::handshake::{HttpResponse, RequestHead};
use crate::pusher::api_auth::verify_api_request;
use crate::pusher::http_api::{self, ApiError, ChannelCounts, Route, Trigger};
use crate::pusher::protocol::{self, Limits};

impl Hub {
    /// The largest body a `/apps/…` request may carry: a whole batch of the largest events,
    /// every data byte escaped, whatever `http.max_body_bytes` says for the rest of the API.
    pub(super) fn pusher_body_limit(&self) -> usize {
        let pusher = &self.config.pusher;
        let event = 6 * pusher.max_event_bytes.as_usize()
            + pusher.max_channels_per_event * (pusher.max_channel_name_bytes + 3)
            + 2 * pusher.max_event_name_bytes
            + 1024;
        self.config.http.max_body_bytes.as_usize().max(pusher.max_batch_events.saturating_mul(event))
    }

    /// A request under `/apps/`.
    pub(super) fn pusher_api(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> HttpResponse {
        match self.pusher_api_result(now, head, body) {
            Ok(json) => HttpResponse::json(200, json),
            Err(error) => {
                let response = HttpResponse::json(error.status(), error.to_json());
                if error.status() == 405 { response.with_header("Allow", allowed(&head.path)) } else { response }
            }
        }
    }

    fn pusher_api_result(&mut self, now: Instant, head: &RequestHead, body: &[u8]) -> Result<String, ApiError> {
        let limits = Limits::new(&self.config.pusher);
        let query = http_api::parse_query(&head.query)?;
        if let Some((app_id, user_id)) = terminate_path(&head.path) {
            if head.method != "POST" {
                return Err(ApiError::new(405, "method", "terminate_connections takes POST"));
            }
            // The Python SDK leaves out `/apps/{id}`: its key says which app.
            let key = query.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v.as_str());
            let app = match app_id {
                Some(id) => self.config.pusher.app.iter().find(|app| app.id == id),
                None => self.config.pusher.app.iter().find(|app| Some(app.key.as_str()) == key),
            };
            let Some(app) = app else { return Err(ApiError::new(404, "app_id", "no app has this id or key")) };
            self.check_signature(now, head, &query, body, app)?;
            let app_id = app.id.clone();
            self.terminate_user(now, &app_id, &user_id);
            return Ok("{}".to_owned());
        }
        let route = http_api::route(&head.method, &head.path, &limits)?;
        let app_id = route.app_id();
        let Some(app) = self.config.pusher.app.iter().find(|app| app.id == app_id) else {
            return Err(ApiError::new(404, "app_id", "no app has this id"));
        };
        self.check_signature(now, head, &query, body, app)?;
        let app_id = app.id.clone();
        self.metrics.api_publishes += u64::from(matches!(route, Route::Events { .. } | Route::BatchEvents { .. }));
        match route {
            Route::Events { .. } => {
                let trigger = http_api::parse_trigger(body, &limits)?;
                self.trigger(now, &app_id, &trigger);
                let counts: Vec<(&str, ChannelCounts)> =
                    trigger.channels.iter().map(|c| (c.as_str(), self.directory.counts(&app_id, c))).collect();
                Ok(http_api::trigger_response(trigger.info, counts))
            }
            Route::BatchEvents { .. } => {
                let batch = http_api::parse_batch(body, &limits)?;
                for trigger in &batch {
                    self.trigger(now, &app_id, trigger);
                }
                let answers: Vec<_> = batch
                    .iter()
                    .filter_map(|t| {
                        let channel = t.channels.first()?;
                        Some((t.info, channel.as_str(), self.directory.counts(&app_id, channel)))
                    })
                    .collect();
                Ok(http_api::batch_response(&answers))
            }
            Route::Channels { .. } => {
                let wanted = http_api::parse_channels_query(&query)?;
                let channels = self.directory.channels(&app_id).filter(|(name, _)| wanted.matches(name));
                Ok(http_api::channels_response(wanted.info, channels))
            }
            Route::Channel { channel, .. } => {
                let info = http_api::parse_channel_query(&channel, &query)?;
                Ok(http_api::channel_response(info, &channel, self.directory.counts(&app_id, &channel)))
            }
            Route::Users { channel, .. } => {
                let members = self.directory.members(&app_id, &channel);
                Ok(http_api::users_response(members.iter().map(|m| &m.user_id)))
            }
        }
    }

    /// The request's signature, at the wall clock's time, and the app's switch.
    fn check_signature(
        &self,
        now: Instant,
        head: &RequestHead,
        query: &[(String, String)],
        body: &[u8],
        app: &PusherApp,
    ) -> Result<(), ApiError> {
        let Some(unix) = self.unix_secs(now) else {
            return Err(ApiError::new(503, "auth_timestamp", "the server does not know the time yet"));
        };
        verify_api_request(&head.method, &head.path, query, body, &app.key, &app.secret, unix)
            .map_err(|e| ApiError::new(e.status(), e.field(), &e.to_string()))?;
        if !app.enabled {
            return Err(ApiError::new(403, "app_id", "this app is disabled"));
        }
        Ok(())
    }

    /// Publishes one triggered event on each of its channels, skipping its `socket_id`.
    fn trigger(&mut self, now: Instant, app_id: &str, trigger: &Trigger) {
        for channel in &trigger.channels {
            let frame = protocol::event(channel, &trigger.name, &trigger.data);
            self.pusher_publish(now, &pusher_key(app_id, channel), trigger.socket_id.as_deref(), &frame);
        }
    }

    /// Wall time at `now`, in Unix seconds, from the latest `handle_wall_clock`.
    pub(super) fn unix_secs(&self, now: Instant) -> Option<u64> {
        let (at, unix_ms) = self.wall?;
        let since = now.saturating_duration_since(at).as_millis();
        let ms = u128::from(unix_ms) + since;
        u64::try_from(ms / 1000).ok()
    }
}

/// The app id (when the path has it) and user id of a `terminate_connections` path:
/// `/apps/{id}/users/{user}/terminate_connections` or `/users/{user}/terminate_connections`.
fn terminate_path(path: &str) -> Option<(Option<&str>, String)> {
    let rest = path.strip_suffix("/terminate_connections")?;
    let (app, user) = match rest.strip_prefix("/apps/") {
        Some(rest) => {
            let (app, user) = rest.split_once("/users/")?;
            (Some(app).filter(|a| !a.is_empty() && !a.contains('/')), user)
        }
        None => (None, rest.strip_prefix("/users/")?),
    };
    let user = http_api::percent_decode(user).filter(|u| !u.is_empty() && !u.contains('/'))?;
    Some((app, user))
}

/// The method an `/apps/…` endpoint takes.
fn allowed(path: &str) -> &'static str {
    if path.ends_with("/events") || path.ends_with("/batch_events") { "POST" } else { "GET" }
}
