//! `[auth]` (JSON Web Tokens for the native protocol) and `[[namespace]]` (per-prefix channel
//! rules: permissions, presence, join/leave, history and recovery), and the rules they pass.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_serde;
use super::pusher::REDACTED;
use super::validate::{Invalid, check, positive};

/// `[auth]`: how native-protocol connections prove who they are.
///
/// `Debug` never shows the HMAC secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret; empty: HS256 tokens are refused.
    pub hmac_secret: String,
    /// PEM files of public keys (SubjectPublicKeyInfo) for RS256, ES256 and EdDSA; the shell
    /// reads them and hands their text to the hub.
    pub public_keys: Vec<String>,
    /// When set, a token's `aud` must name it.
    pub audience: String,
    /// When set, a token's `iss` must equal it.
    pub issuer: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration_serde")]
    pub leeway: Duration,
    /// A connection whose token is past `exp` by this much is closed (4401).
    #[serde(with = "duration_serde")]
    pub expire_grace: Duration,
    /// Refuse anonymous connections: each must present a valid connection token.
    pub require: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: String::new(),
            public_keys: Vec::new(),
            audience: String::new(),
            issuer: String::new(),
            leeway: Duration::from_secs(5),
            expire_grace: Duration::from_secs(30),
            require: false,
        }
    }
}

impl AuthConfig {
    /// Whether any key can verify a token.
    pub fn has_keys(&self) -> bool {
        !self.hmac_secret.is_empty() || !self.public_keys.is_empty()
    }

    pub(super) fn redact(&mut self) {
        if !self.hmac_secret.is_empty() {
            REDACTED.clone_into(&mut self.hmac_secret);
        }
    }

    pub(super) fn check_rules(&self) -> Result<(), Invalid> {
        check(!self.require || self.has_keys(), "auth.require", || {
            "needs auth.hmac_secret or auth.public_keys to verify tokens with".to_owned()
        })?;
        for (i, path) in self.public_keys.iter().enumerate() {
            check(!path.is_empty(), &format!("auth.public_keys[{i}]"), || "must name a PEM file".to_owned())?;
        }
        Ok(())
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.hmac_secret.is_empty() { "" } else { REDACTED };
        f.debug_struct("AuthConfig")
            .field("hmac_secret", &secret)
            .field("public_keys", &self.public_keys)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("expire_grace", &self.expire_grace)
            .field("require", &self.require)
            .finish()
    }
}

/// Who may subscribe to a namespace's channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Every connection, anonymous ones included.
    Anyone,
    /// Connections with a verified connection token that names a user.
    #[default]
    Authenticated,
    /// Connections that present a subscription token for the channel.
    Token,
}

/// Who may publish to a namespace's channels from a WebSocket (the HTTP API always may).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Nobody: only the backend publishes.
    #[default]
    None,
    /// Connections subscribed to the channel.
    Subscribers,
    /// Connections with a verified connection token that names a user.
    Authenticated,
}

/// One `[[namespace]]`: the rules of channels named `{name}:…`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The prefix before the first `:` of the channels it governs.
    pub name: String,
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: SubscribeRule,
    /// Who may publish from a client.
    #[serde(default)]
    pub publish: PublishRule,
    /// Whether members are tracked and the `presence` op answers.
    #[serde(default)]
    pub presence: bool,
    /// Whether subscribers get `join` and `leave` frames.
    #[serde(default)]
    pub join_leave: bool,
    /// Publications kept per channel; 0: no history (and no offsets).
    #[serde(default)]
    pub history_size: usize,
    /// How long a channel's history outlives its last publication.
    #[serde(default = "default_history_ttl", with = "duration_serde")]
    pub history_ttl: Duration,
    /// Whether `subscribe` may recover missed publications.
    #[serde(default)]
    pub recover: bool,
    /// Recovery of more missed publications than this is refused (`recovered: false`).
    #[serde(default = "default_max_recover")]
    pub max_recover: usize,
}

fn default_history_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_recover() -> usize {
    300
}

impl NamespaceConfig {
    /// A namespace with every rule at its default.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            subscribe: SubscribeRule::default(),
            publish: PublishRule::default(),
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: default_history_ttl(),
            recover: false,
            max_recover: default_max_recover(),
        }
    }

    /// Whether its channels keep history (and number publications).
    pub fn has_history(&self) -> bool {
        self.history_size > 0
    }
}

/// The first rule the namespaces break.
pub(super) fn check_namespaces(namespaces: &[NamespaceConfig], auth: &AuthConfig) -> Result<(), Invalid> {
    for (i, ns) in namespaces.iter().enumerate() {
        let key = |field: &str| format!("namespace[{i}].{field}");
        let name_ok = !ns.name.is_empty()
            && ns.name.len() <= 64
            && ns.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        check(name_ok, &key("name"), || format!("{:?} must be 1..=64 bytes of [A-Za-z0-9_.-]", ns.name))?;
        if let Some(first) = namespaces[..i].iter().position(|earlier| earlier.name == ns.name) {
            return Err(Invalid::new(
                &key("name"),
                format!("duplicate namespace {:?} (already namespace[{first}])", ns.name),
            ));
        }
        positive(ns.history_ttl, &key("history_ttl"))?;
        check(ns.history_ttl <= super::MAX_DURATION, &key("history_ttl"), || "must be at most 365 days".to_owned())?;
        check(ns.history_size <= 1_000_000, &key("history_size"), || "must be at most 1000000".to_owned())?;
        check(!ns.recover || ns.has_history(), &key("recover"), || {
            "needs history_size > 0: recovery reads the history".to_owned()
        })?;
        check(ns.max_recover >= 1, &key("max_recover"), || "must be at least 1".to_owned())?;
        let needs_tokens = ns.subscribe != SubscribeRule::Anyone || ns.publish == PublishRule::Authenticated;
        check(!needs_tokens || auth.has_keys(), &key("subscribe"), || {
            "needs [auth] hmac_secret or public_keys: only tokens authenticate".to_owned()
        })?;
    }
    Ok(())
}
