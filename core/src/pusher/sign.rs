//! The signatures of the WebSocket side: a channel authorization (`pusher:subscribe`'s `auth`), a
//! user sign-in (`pusher:signin`'s `auth`), and the server's own signature on a webhook.
//!
//! An `auth` string is `"<app key>:<hex HMAC-SHA256>"`, signed with the app's secret by the
//! application's auth endpoint (through an official server SDK). What is signed:
//! - a channel: `socket_id:channel`, plus `:channel_data` when the subscription carries one
//!   (always on presence channels; pusher-http-node adds it on private ones too when given);
//! - a sign-in: `socket_id::user::user_data`.
//!
//! `channel_data` and `user_data` are signed as the exact JSON text the client sent: never parse
//! and re-serialize them before checking.

use std::fmt;

use super::mac::{TagError, sign_hex, verify_hex};

/// Hex signature of a channel authorization (what an SDK computes; the tests sign with it).
#[cfg_attr(
    not(any(test, feature = "fuzzing")),
    allow(dead_code, reason = "what an SDK computes: the tests and fuzz targets sign with it")
)]
pub(crate) fn auth_signature(secret: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => sign_hex(secret, &[socket_id.as_bytes(), b":", channel.as_bytes(), b":", data.as_bytes()]),
        None => sign_hex(secret, &[socket_id.as_bytes(), b":", channel.as_bytes()]),
    }
}

#[cfg(test)]
/// The whole `auth` string an auth endpoint returns for a channel: `"key:signature"`.
pub(crate) fn channel_auth(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    format!("{app_key}:{}", auth_signature(secret, socket_id, channel, channel_data))
}

/// Checks the `auth` of a subscription to `channel` by `socket_id`, with the `channel_data` the
/// subscription carried (if any), in constant time.
pub(crate) fn verify_channel_auth(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    let mut signed = format!("{socket_id}:{channel}");
    if let Some(data) = channel_data {
        signed.push(':');
        signed.push_str(data);
    }
    verify_auth(app_key, secret, signed, auth)
}

/// Hex signature of a user sign-in.
#[cfg(test)]
pub(crate) fn user_auth_signature(secret: &str, socket_id: &str, user_data: &str) -> String {
    sign_hex(secret, &[socket_id.as_bytes(), b"::user::", user_data.as_bytes()])
}

/// Checks the `auth` of a `pusher:signin` by `socket_id` carrying `user_data`, in constant time.
pub(crate) fn verify_user_auth(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    verify_auth(app_key, secret, format!("{socket_id}::user::{user_data}"), auth)
}

/// `X-Pusher-Signature` of a webhook: hex HMAC-SHA256 of the exact body sent.
pub(crate) fn webhook_signature(secret: &str, body: &[u8]) -> String {
    sign_hex(secret, &[body])
}

/// Why a channel authorization or sign-in `auth` was refused.
///
/// On a subscription the wire protocol answers `pusher:subscription_error` with status 401 and
/// keeps the connection; on a sign-in, `pusher:error` 4009 and a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// `auth` does not start with this app's key and `:`.
    WrongKey,
    /// What follows the key is not 64 hex digits.
    MalformedSignature,
    /// A well-formed signature, but not of this string with this app's secret.
    InvalidSignature {
        /// What a valid signature signs (no secret in it: it is what the client sent).
        string_to_sign: String,
    },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongKey => f.write_str("auth must be \"<app key>:<signature>\" with this app's key"),
            Self::MalformedSignature => {
                f.write_str("the signature in auth must be 64 hex digits (an HMAC-SHA256 hex digest)")
            }
            Self::InvalidSignature { string_to_sign } => write!(
                f,
                "invalid signature: expected the HMAC-SHA256 hex digest of {string_to_sign:?} with the app's secret"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// Splits `auth` at the app's key (which may itself hold a `:`) and checks the rest.
fn verify_auth(app_key: &str, secret: &str, signed: String, auth: &str) -> Result<(), AuthError> {
    let signature = auth.strip_prefix(app_key).and_then(|rest| rest.strip_prefix(':')).ok_or(AuthError::WrongKey)?;
    verify_hex(secret, signed.as_bytes(), signature).map_err(|e| match e {
        TagError::Malformed => AuthError::MalformedSignature,
        TagError::Mismatch => AuthError::InvalidSignature { string_to_sign: signed },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The credentials of Pusher's worked examples ("Generating authentication and authorization
    /// strings", pusher.com/docs/channels/library_auth_reference/auth-signatures).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";

    /// Published in Pusher's auth-signatures doc for `1234.1234:private-foobar`.
    const PRIVATE_SIG: &str = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
    /// Pusher's presence example: `channel_data` with a numeric `user_id`, as the doc has it.
    const PRESENCE_DATA: &str = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
    const PRESENCE_SIG: &str = "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
    /// The same with a string `user_id` (as pusher-http-node sends it); computed independently
    /// with Python's `hmac`/`hashlib` and recorded in the project's pusher-reference notes.
    const PRESENCE_DATA_STRING_ID: &str = r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#;
    const PRESENCE_SIG_STRING_ID: &str = "4c6d8fc42a207ba96a0779844171b0bb819d96ffceef9609f5cce596ab17a800";
    /// `1234.1234::user::{"id":"10","name":"Mr. Channels"}`, the string pusher-http-node's
    /// `authenticateUser` and pusher-http-python's `authenticate_user` sign; computed with
    /// Python's `hmac`/`hashlib`.
    const USER_DATA: &str = r#"{"id":"10","name":"Mr. Channels"}"#;
    const USER_SIG: &str = "8fd3662e72def9f6b5a6861e46f93506d8cc3916b19e84216feddd0aa1d15907";

    #[test]
    fn pusher_published_vectors() {
        assert_eq!(auth_signature(SECRET, SOCKET, "private-foobar", None), PRIVATE_SIG);
        assert_eq!(channel_auth(KEY, SECRET, SOCKET, "private-foobar", None), format!("{KEY}:{PRIVATE_SIG}"));
        assert_eq!(auth_signature(SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA)), PRESENCE_SIG);
        assert_eq!(
            auth_signature(SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA_STRING_ID)),
            PRESENCE_SIG_STRING_ID
        );
        assert_eq!(user_auth_signature(SECRET, SOCKET, USER_DATA), USER_SIG);

        let private = format!("{KEY}:{PRIVATE_SIG}");
        assert_eq!(verify_channel_auth(KEY, SECRET, SOCKET, "private-foobar", None, &private), Ok(()));
        let presence = format!("{KEY}:{PRESENCE_SIG}");
        assert_eq!(verify_channel_auth(KEY, SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA), &presence), Ok(()));
        assert_eq!(verify_user_auth(KEY, SECRET, SOCKET, USER_DATA, &format!("{KEY}:{USER_SIG}")), Ok(()));
    }

    #[test]
    fn webhook_signature_is_the_hmac_of_the_body() {
        // Computed with Python: hmac.new(b"7ad3773142a6692b25b8", body, hashlib.sha256).hexdigest().
        let body = br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#;
        assert_eq!(webhook_signature(SECRET, body), "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa");
    }

    #[test]
    fn every_refusal_is_distinct() {
        let ok = format!("{KEY}:{PRIVATE_SIG}");
        let verify = |channel: &str, data: Option<&str>, auth: &str| {
            verify_channel_auth(KEY, SECRET, SOCKET, channel, data, auth)
        };
        // The key: another app's, none, a missing colon, the key only as a prefix of a longer one.
        for auth in [
            format!("ffff:{PRIVATE_SIG}"),
            PRIVATE_SIG.to_owned(),
            format!("{KEY}{PRIVATE_SIG}"),
            format!(":{PRIVATE_SIG}"),
            format!("{KEY}x:{PRIVATE_SIG}"),
            String::new(),
        ] {
            assert_eq!(verify("private-foobar", None, &auth), Err(AuthError::WrongKey), "{auth:?}");
        }
        // The hex: short, long, not hex, empty.
        for signature in [&PRIVATE_SIG[1..], &format!("{PRIVATE_SIG}0"), &PRIVATE_SIG.replace('a', "z"), ""] {
            let auth = format!("{KEY}:{signature}");
            assert_eq!(verify("private-foobar", None, &auth), Err(AuthError::MalformedSignature), "{auth:?}");
        }
        // The signature: of another channel, another socket, other channel_data, another secret.
        let invalid = |signed: &str| Err(AuthError::InvalidSignature { string_to_sign: signed.to_owned() });
        assert_eq!(verify("private-foobaz", None, &ok), invalid("1234.1234:private-foobaz"));
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.4321", "private-foobar", None, &ok),
            invalid("1234.4321:private-foobar")
        );
        assert_eq!(verify("private-foobar", Some("{}"), &ok), invalid("1234.1234:private-foobar:{}"));
        let presence = format!("{KEY}:{PRESENCE_SIG}");
        // The same member with a string id is another text, so another signature.
        let signed = format!("1234.1234:presence-foobar:{PRESENCE_DATA_STRING_ID}");
        assert_eq!(verify("presence-foobar", Some(PRESENCE_DATA_STRING_ID), &presence), invalid(&signed));
        assert_eq!(verify("presence-foobar", None, &presence), invalid("1234.1234:presence-foobar"));
        assert_eq!(
            verify_channel_auth(KEY, "another-secret", SOCKET, "private-foobar", None, &ok),
            invalid("1234.1234:private-foobar")
        );
        // A sign-in signature is not a channel one, nor the other way round.
        let user = format!("{KEY}:{USER_SIG}");
        assert!(matches!(verify("private-foobar", None, &user), Err(AuthError::InvalidSignature { .. })));
        assert!(matches!(
            verify_user_auth(KEY, SECRET, SOCKET, USER_DATA, &ok),
            Err(AuthError::InvalidSignature { .. })
        ));
        assert_eq!(verify_user_auth(KEY, SECRET, SOCKET, USER_DATA, "nope"), Err(AuthError::WrongKey));
        assert_eq!(
            verify_user_auth(KEY, SECRET, SOCKET, USER_DATA, &format!("{KEY}:xyz")),
            Err(AuthError::MalformedSignature)
        );
    }

    #[test]
    fn a_key_with_a_colon_still_splits_right() {
        let auth = channel_auth("a:b", "s", "1.2", "private-x", None);
        assert_eq!(verify_channel_auth("a:b", "s", "1.2", "private-x", None, &auth), Ok(()));
        assert_eq!(verify_channel_auth("a", "s", "1.2", "private-x", None, &auth), Err(AuthError::MalformedSignature));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert_eq!(AuthError::WrongKey.to_string(), "auth must be \"<app key>:<signature>\" with this app's key");
        assert!(AuthError::MalformedSignature.to_string().contains("64 hex digits"));
        let invalid = AuthError::InvalidSignature { string_to_sign: "1.2:private-x".to_owned() };
        assert_eq!(
            invalid.to_string(),
            "invalid signature: expected the HMAC-SHA256 hex digest of \"1.2:private-x\" with the app's secret"
        );
        // The secret never appears, whatever the failure.
        let failures = [
            verify_channel_auth(KEY, SECRET, SOCKET, "private-a", None, &format!("{KEY}:{PRIVATE_SIG}")),
            verify_user_auth(KEY, SECRET, SOCKET, USER_DATA, &format!("{KEY}:{PRIVATE_SIG}")),
        ];
        for failure in failures {
            let text = failure.map_err(|e| e.to_string()).expect_err("a wrong signature");
            assert!(!text.contains(SECRET), "{text}");
        }
    }

    proptest! {
        #[test]
        fn sign_then_verify_round_trips(
            key in "[a-z0-9:]{1,20}",
            secret in ".{0,40}",
            socket in "[0-9]{1,10}\\.[0-9]{1,10}",
            channel in ".{0,60}",
            data in proptest::option::of(".{0,100}"),
            user_data in ".{0,100}",
        ) {
            let auth = channel_auth(&key, &secret, &socket, &channel, data.as_deref());
            prop_assert_eq!(verify_channel_auth(&key, &secret, &socket, &channel, data.as_deref(), &auth), Ok(()));
            let user = format!("{key}:{}", user_auth_signature(&secret, &socket, &user_data));
            prop_assert_eq!(verify_user_auth(&key, &secret, &socket, &user_data, &user), Ok(()));
        }

        #[test]
        fn any_auth_text_is_refused_without_panicking(
            auth in ".{0,120}",
            channel in ".{0,40}",
            data in proptest::option::of(".{0,40}"),
        ) {
            // A random string is a valid signature with negligible probability.
            prop_assert!(verify_channel_auth(KEY, SECRET, SOCKET, &channel, data.as_deref(), &auth).is_err());
            prop_assert!(verify_user_auth(KEY, SECRET, SOCKET, &channel, &auth).is_err());
        }

        #[test]
        fn a_signature_binds_every_part(socket in "[0-9]{1,6}\\.[0-9]{1,6}", channel in "[a-z-]{1,20}", other in "[a-z-]{1,20}") {
            prop_assume!(channel != other);
            let auth = channel_auth(KEY, SECRET, &socket, &channel, None);
            let refused = verify_channel_auth(KEY, SECRET, &socket, &other, None, &auth);
            let invalid = matches!(refused, Err(AuthError::InvalidSignature { .. }));
            prop_assert!(invalid, "{:?}", refused);
        }
    }
}
