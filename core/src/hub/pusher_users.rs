//! Pusher user authentication: `pusher:signin`, the user's `#server-to-user-{id}` channel,
//! watchlists, `terminate_connections`, and the sign-in deadline of apps with
//! `user_authentication`.
//!
//! Who is online is one more directory channel, [`ONLINE`], whose members are the signed-in
//! users: a user's first signed-in connection anywhere is `online` to their watchers, the last
//! one `offline`, with the same cluster-wide bookkeeping as presence.

use std::time::Instant;

use super::conn::SignedIn;
use super::pusher::{pusher_key, split_pusher_key};
use super::{ConnId, Hub};
use crate::pusher::directory::{Effects, MemberChange};
use crate::pusher::names::{ChannelType, SERVER_TO_USER_PREFIX};
use crate::pusher::protocol::{self, MAX_USER_ID_BYTES, PresenceMember, UserId, close_code};
use crate::pusher::sign::verify_user_auth;

/// The directory channel whose members are the signed-in users (no Pusher channel name starts
/// with `#` but the server-to-user ones).
pub(super) const ONLINE: &str = "#online";

/// Most users one watchlist may name (Pusher's documented limit).
const MAX_WATCHLIST: usize = 100;

/// The fan-out "socket to skip" that means: close every subscriber (`terminate_connections`).
/// Socket ids are digits, so it cannot be one.
pub(super) const TERMINATE: &[u8] = b"!terminate";

impl Hub {
    /// `pusher:signin`: checked, then the connection is its user's (see the module docs).
    pub(super) fn pusher_signin(&mut self, now: Instant, id: ConnId, auth: &str, user_data: &str) {
        let Some(pusher) = self.conn(id).and_then(|c| c.pusher.as_ref()) else { return };
        let Some(app) = self.config.pusher.app.get(pusher.app) else { return };
        if pusher.user.is_some() {
            return self.unauthorized(now, id, "this connection is already signed in");
        }
        if let Err(e) = verify_user_auth(&app.key, &app.secret, &pusher.socket_id, user_data, auth) {
            return self.unauthorized(now, id, &format!("invalid sign-in: {e}"));
        }
        let (user_id, watchlist) = match parse_user_data(user_data) {
            Ok(user) => user,
            Err(problem) => return self.unauthorized(now, id, &format!("invalid user_data: {problem}")),
        };
        let app_id = app.id.clone();
        let Some(pusher) = self.conn_mut(id).and_then(|c| c.pusher.as_mut()) else { return };
        pusher.user = Some(Box::new(SignedIn { id: user_id.clone(), watchlist: watchlist.clone() }));
        self.reply(id, protocol::signin_success(user_data));
        // Events sent to the user reach every connection signed in as them, whether or not
        // the client subscribes to the channel itself (pusher-js does).
        let own = pusher_key(&app_id, &format!("{SERVER_TO_USER_PREFIX}{user_id}"));
        if self.subscription_index(id, &own).is_none() {
            self.subscribe(id, &own, None);
        }
        self.online_changed(&app_id, &user_id, 1);
        for watched in &watchlist {
            self.watchers.entry((app_id.clone(), watched.clone())).or_default().push(id);
        }
        let online: Vec<&str> =
            watchlist.iter().map(String::as_str).filter(|w| self.directory.has_user(&app_id, ONLINE, w)).collect();
        if !online.is_empty() {
            self.reply(id, protocol::watchlist_events("online", &online));
        }
    }

    /// The connection ends: its user (if signed in) loses a connection.
    pub(super) fn pusher_release(&mut self, id: ConnId) {
        let Some(pusher) = self.conn_mut(id).and_then(|c| c.pusher.as_mut()) else { return };
        let Some(user) = pusher.user.take() else { return };
        let app = pusher.app;
        let Some(app_id) = self.config.pusher.app.get(app).map(|a| a.id.clone()) else { return };
        for watched in &user.watchlist {
            let key = (app_id.clone(), watched.clone());
            if let Some(list) = self.watchers.get_mut(&key) {
                list.retain(|&w| w != id);
                if list.is_empty() {
                    self.watchers.remove(&key);
                }
            }
        }
        self.online_changed(&app_id, &user.id, -1);
    }

    /// This hub has one connection more (`step` 1) or fewer of `user_id` signed in.
    fn online_changed(&mut self, app_id: &str, user_id: &str, step: i32) {
        let hub = self.hub_key();
        let member = PresenceMember { user_id: UserId::string(user_id), user_info: None };
        let count = self.directory.member_connections(&hub, app_id, ONLINE, user_id).saturating_add_signed(step);
        let mut effects = Effects::default();
        self.directory.set_member(&hub, app_id, ONLINE, &member, count, &mut effects);
        self.directory_out.members.push(crate::pusher::directory::member_entry(app_id, ONLINE, &member, count));
        self.queue_effects(effects, None, super::pusher::Source::Local);
    }

    /// A watched user came online or went offline: their watchers on this hub hear it.
    pub(super) fn watchlist_change(&mut self, app_id: &str, change: &MemberChange) {
        let (name, user_id) = match change {
            MemberChange::Added(member) => ("online", member.user_id.as_str()),
            MemberChange::Removed(user_id) => ("offline", user_id.as_str()),
        };
        let Some(watchers) = self.watchers.get(&(app_id.to_owned(), user_id.to_owned())).cloned() else { return };
        let frame = protocol::watchlist_events(name, &[user_id]);
        for watcher in watchers {
            self.reply(watcher, frame.clone());
        }
    }

    /// `terminate_connections`: every connection of `user_id` in the cluster is closed.
    pub(super) fn terminate_user(&mut self, now: Instant, app_id: &str, user_id: &str) {
        let key = pusher_key(app_id, &format!("{SERVER_TO_USER_PREFIX}{user_id}"));
        let mut payload = TERMINATE.to_vec();
        payload.extend_from_slice(b"\n{}");
        self.fan_out(now, key, true, bytes::Bytes::from(payload));
    }

    /// Closes each of `ids` as `terminate_connections` asked.
    pub(super) fn terminate_connections(&mut self, now: Instant, ids: Vec<ConnId>) {
        for id in ids {
            self.unauthorized(now, id, "the app terminated this user's connections");
        }
    }

    /// `pusher:error` 4009 and a close with it (pusher-js does not reconnect).
    fn unauthorized(&mut self, now: Instant, id: ConnId, message: &str) {
        let code = close_code::UNAUTHORIZED;
        self.reply(id, protocol::error(Some(code), message, None));
        self.close(now, id, code, "unauthorized");
    }

    /// The sign-in deadline of an app with `user_authentication` passed: a connection that
    /// neither signed in nor holds a private or presence channel is closed with 4009.
    pub(super) fn pusher_sign_in_due(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        let Some(pusher) = conn.pusher.as_ref() else { return };
        if pusher.user.is_some() {
            return;
        }
        let authorized = conn.subscriptions.iter().any(|s| {
            self.channels
                .get(s.channel)
                .and_then(|c| split_pusher_key(&c.name))
                .is_some_and(|(_, channel)| ChannelType::of(channel).needs_auth())
        });
        if !authorized {
            self.unauthorized(now, id, "sign in or subscribe to a private or presence channel in time");
        }
    }

    /// The user a connection signed in as.
    pub(super) fn signed_in_as(&self, id: ConnId) -> Option<&str> {
        self.conn(id)?.pusher.as_ref()?.user.as_ref().map(|u| u.id.as_str())
    }
}

/// `user_data`'s `id` (a non-empty string, as pusher-js requires) and `watchlist`.
fn parse_user_data(user_data: &str) -> Result<(String, Vec<String>), String> {
    let value: serde_json::Value = serde_json::from_str(user_data).map_err(|e| format!("not JSON: {e}"))?;
    let id = value.get("id").and_then(serde_json::Value::as_str).unwrap_or_default();
    if id.is_empty() || id.len() > MAX_USER_ID_BYTES {
        return Err(format!("`id` must be a non-empty string of at most {MAX_USER_ID_BYTES} bytes"));
    }
    let watchlist = match value.get("watchlist") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(ids)) if ids.len() <= MAX_WATCHLIST => ids
            .iter()
            .map(|w| w.as_str().filter(|w| !w.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "`watchlist` must hold user id strings".to_owned())?,
        Some(_) => return Err(format!("`watchlist` must be an array of at most {MAX_WATCHLIST} user ids")),
    };
    Ok((id.to_owned(), watchlist))
}
