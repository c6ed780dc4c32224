//! The native protocol's test server: JWT keys, namespaces, and tokens signed as an
//! application's backend would sign them. The Node client tests (`clients/js/test/`) assume
//! this same configuration.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::PubSub;

/// The HS256 secret of [`CONFIG`].
pub const SECRET: &str = "native-test-secret";
/// The `http.api_key` of [`CONFIG`].
pub const API_KEY: &str = "native-api-key";

/// `[http]` with [`API_KEY`], then [`AUTH_AND_NAMESPACES`]: every native test server's.
pub const CONFIG: &str = concat!("[http]\napi_key = \"native-api-key\"\n", auth_and_namespaces!());

/// `[auth]` and `[[namespace]]` of the native test servers, to append to any configuration.
pub const AUTH_AND_NAMESPACES: &str = auth_and_namespaces!();

macro_rules! auth_and_namespaces {
    () => {
        r#"
[auth]
hmac_secret = "native-test-secret"
expire_grace = "2s"

[[namespace]]
name = "chat"
subscribe = "authenticated"
publish = "subscribers"
presence = true
join_leave = true
history_size = 100
history_ttl = "5m"
recover = true

[[namespace]]
name = "secret"
subscribe = "token"
publish = "subscribers"

[[namespace]]
name = "news"
subscribe = "anyone"
publish = "none"
history_size = 10
recover = true
"#
    };
}
use auth_and_namespaces;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn token_signed(secret: &str, claims: &Value) -> String {
    switchboard_core::sign_hs256(secret, &claims.to_string())
}

/// An HS256 token over `claims`, signed with [`SECRET`].
pub fn token(claims: &Value) -> String {
    token_signed(SECRET, claims)
}

/// A connection token for `user`, valid for an hour.
pub fn user_token(user: &str) -> String {
    token(&serde_json::json!({"sub": user, "exp": unix_now() + 3600}))
}

/// The next frame of `kind`, skipping joins, leaves and acks; fails on an error frame.
pub fn next_of_type(client: &mut PubSub, kind: &str) -> Value {
    loop {
        let frame = client.recv_json();
        if frame["type"] == kind {
            return frame;
        }
        assert_ne!(frame["type"], "error", "waiting for {kind}: {frame}");
    }
}

/// Subscribes to `channel` (recovering from `(epoch, offset)` if given); the `subscribed` reply.
pub fn subscribe_from(client: &mut PubSub, channel: &str, recover: Option<(&str, u64)>) -> Value {
    let mut op = json!({"op":"subscribe","channel":channel,"id":1});
    if let Some((epoch, offset)) = recover {
        op["recover"] = json!({"epoch": epoch, "offset": offset});
    }
    client.send(&op.to_string());
    next_of_type(client, "subscribed")
}

/// The `offset`s of a list of publications.
pub fn offsets(list: &[Value]) -> Vec<u64> {
    list.iter().map(|p| p["offset"].as_u64().unwrap_or(0)).collect()
}
