//! `[admin]`: the dashboard and admin API served on the WebSocket port.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::pusher::REDACTED;
use super::validate::{Invalid, check};

/// `[admin]`: the live dashboard and its JSON API, under `path` on the same port.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether the page and the API are served at all (never, when false).
    pub enabled: bool,
    /// Password for HTTP Basic auth (any user name) and the page's sign-in form.
    pub password: String,
    /// Bearer token for scripts (`Authorization: Bearer <token>`).
    pub token: String,
    /// Where the page lives; the API is under `{path}/api/`.
    pub path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: false, password: String::new(), token: String::new(), path: "/admin".to_owned() }
    }
}

/// Written by hand so that `{:?}` of a config never shows the credentials.
impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { REDACTED };
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("path", &self.path)
            .finish()
    }
}

impl AdminConfig {
    pub(super) fn redact(&mut self) {
        for secret in [&mut self.password, &mut self.token] {
            if !secret.is_empty() {
                REDACTED.clone_into(secret);
            }
        }
    }

    pub(super) fn check_rules(&self) -> Result<(), Invalid> {
        // An open admin page could disconnect every client: it never runs without a credential.
        if self.enabled && self.password.is_empty() && self.token.is_empty() {
            return Err(Invalid {
                key: "admin.password".to_owned(),
                message: "admin.enabled needs admin.password or admin.token (refusing to serve an open admin API)"
                    .to_owned(),
                also: Some("admin.enabled"),
            });
        }
        let p = &self.path;
        let ok = p.starts_with('/')
            && p.len() > 1
            && !p.ends_with('/')
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
        check(ok, "admin.path", || {
            format!("{p:?} must start with '/', not end with one, and hold only [A-Za-z0-9/._-]")
        })
    }
}
