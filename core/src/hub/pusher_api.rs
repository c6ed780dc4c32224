//! The Pusher HTTP API on the WebSocket port (`/apps/{id}/…`): signed as Pusher signs it,
//! answered from the directory, so counts and member lists are the cluster's.

use std::time::Instant;

use super::Hub;
use super::pusher::pusher_key;
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
        let route = http_api::route(&head.method, &head.path, &limits)?;
        let app_id = route.app_id();
        let Some(app) = self.config.pusher.app.iter().find(|app| app.id == app_id) else {
            return Err(ApiError::new(404, "app_id", "no app has this id"));
        };
        let query = http_api::parse_query(&head.query)?;
        let Some(unix) = self.unix_secs(now) else {
            return Err(ApiError::new(503, "auth_timestamp", "the server does not know the time yet"));
        };
        verify_api_request(&head.method, &head.path, &query, body, &app.key, &app.secret, unix)
            .map_err(|e| ApiError::new(e.status(), e.field(), &e.to_string()))?;
        if !app.enabled {
            return Err(ApiError::new(403, "app_id", "this app is disabled"));
        }
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

/// The method an `/apps/…` endpoint takes.
fn allowed(path: &str) -> &'static str {
    if path.ends_with("/events") || path.ends_with("/batch_events") { "POST" } else { "GET" }
}
