//! What a name says: a channel's type from its prefix, which channel and event names are valid,
//! which events are client events, and socket ids.

use std::fmt;

/// The channel every socket signed in as user `{id}` may subscribe to, and only those:
/// `#server-to-user-{id}` (pusher-js subscribes to it after `pusher:signin_success`).
pub(crate) const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// Events a client may send to the other subscribers of a private or presence channel.
const CLIENT_EVENT_PREFIX: &str = "client-";

/// What a channel's name makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a subscription needs a signed `auth`.
    Private,
    /// `private-encrypted-`: authorized like a private channel; the payloads are end-to-end
    /// encrypted, so the server never reads them, and client events are refused.
    PrivateEncrypted,
    /// `presence-`: a signed `auth` over `channel_data`, which names the member.
    Presence,
    /// `#server-to-user-{id}`: only for sockets signed in as user `{id}`.
    ServerToUser,
}

/// A channel's kind, and whether it is a cache channel (`cache-`, `private-cache-`,
/// `private-encrypted-cache-`, `presence-cache-`: a new subscriber gets the last event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChannelType {
    /// Who may subscribe, and how.
    pub(crate) kind: ChannelKind,
    /// Whether the channel keeps its last event for new subscribers.
    pub(crate) cache: bool,
}

/// Every prefix that gives a channel its type, each before any prefix of itself, all anchored at
/// the start of the name (so `foo-private-x` is public: soketi's unanchored match gets it wrong).
const PREFIXES: [(&str, ChannelKind, bool); 8] = [
    ("private-encrypted-cache-", ChannelKind::PrivateEncrypted, true),
    ("private-encrypted-", ChannelKind::PrivateEncrypted, false),
    ("private-cache-", ChannelKind::Private, true),
    ("private-", ChannelKind::Private, false),
    ("presence-cache-", ChannelKind::Presence, true),
    ("presence-", ChannelKind::Presence, false),
    ("cache-", ChannelKind::Public, true),
    (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser, false),
];

impl ChannelType {
    /// The type a channel name gives, valid or not.
    pub(crate) fn of(name: &str) -> Self {
        PREFIXES
            .iter()
            .find(|(prefix, ..)| name.starts_with(prefix))
            .map_or(Self { kind: ChannelKind::Public, cache: false }, |&(_, kind, cache)| Self { kind, cache })
    }

    /// Whether a subscription needs a signed `auth` (private, private-encrypted, presence).
    /// `#server-to-user-` channels need a sign-in instead.
    pub(crate) fn needs_auth(self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence)
    }

    /// Whether the channel has members (`channel_data`, member events, user counts).
    pub(crate) fn is_presence(self) -> bool {
        self.kind == ChannelKind::Presence
    }

    /// Whether clients may send client events on it: private and presence channels only
    /// (pusher-js itself refuses them on encrypted ones).
    pub(crate) fn allows_client_events(self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::Presence)
    }
}

/// The user id a `#server-to-user-{id}` channel is for.
pub(crate) fn server_to_user_id(channel: &str) -> Option<&str> {
    channel.strip_prefix(SERVER_TO_USER_PREFIX)
}

/// Checks a channel name, within `max_bytes`, and tells its type.
///
/// A name is `[A-Za-z0-9_\-=@,.;]+`, or `#server-to-user-` followed by such a user id (the form
/// pusher-http-python validates).
pub(crate) fn validate_channel_name(name: &str, max_bytes: usize) -> Result<ChannelType, NameError> {
    const WHAT: &str = "channel name";
    check_length(WHAT, name, max_bytes)?;
    let (offset, rest) = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
        Some("") => return Err(NameError::NoUser),
        Some(user) => (SERVER_TO_USER_PREFIX.len(), user),
        None => (0, name),
    };
    if let Some((at, ch)) = rest.char_indices().find(|&(_, c)| !is_channel_char(c)) {
        return Err(NameError::BadChar { ch, at: offset + at });
    }
    Ok(ChannelType::of(name))
}

/// Checks an event name: not empty, at most `max_bytes`. Pusher sets no alphabet for them.
pub(crate) fn validate_event_name(name: &str, max_bytes: usize) -> Result<(), NameError> {
    check_length("event name", name, max_bytes)
}

/// Whether `event` is a client event (`client-…`), which only a client sends.
pub(crate) fn is_client_event(event: &str) -> bool {
    event.starts_with(CLIENT_EVENT_PREFIX)
}

/// Whether `event` is in the protocol's own namespace (`pusher:…`, `pusher_internal:…`), which
/// neither clients nor the HTTP API may send as an ordinary event.
pub(crate) fn is_reserved_event(event: &str) -> bool {
    event.starts_with("pusher:") || event.starts_with("pusher_internal:")
}

/// A socket id, `"{node_seed}.{counter}"`: it matches `^\d+\.\d+$`, as the SDKs require, and two
/// differ whenever their (node, counter) pairs do. The caller picks the numbers (a node's seed
/// and its own counter), so ids stay unique across the cluster.
pub(crate) fn socket_id(node_seed: u64, counter: u64) -> String {
    format!("{node_seed}.{counter}")
}

/// Whether `text` has a socket id's shape, `^\d+\.\d+$` (as the HTTP API's `socket_id` must).
pub(crate) fn is_socket_id(text: &str) -> bool {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once('.').is_some_and(|(node, counter)| all_digits(node) && all_digits(counter))
}

/// Why a channel or event name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameError {
    /// The name is empty.
    Empty {
        /// `"channel name"` or `"event name"`.
        what: &'static str,
    },
    /// The name is longer than the configured limit.
    TooLong {
        /// `"channel name"` or `"event name"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A channel name holds a character outside `[A-Za-z0-9_\-=@,.;]`.
    BadChar {
        /// The first such character.
        ch: char,
        /// Its byte offset in the name.
        at: usize,
    },
    /// `#server-to-user-` with no user id after it.
    NoUser,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty { what } => write!(f, "{what} must not be empty"),
            Self::TooLong { what, len, max } => write!(f, "{what} is {len} bytes long (at most {max})"),
            Self::BadChar { ch, at } => {
                write!(f, "channel name has {ch:?} at byte {at}; only A-Z, a-z, 0-9 and _ - = @ , . ; are allowed")
            }
            Self::NoUser => write!(f, "channel name {SERVER_TO_USER_PREFIX:?} must be followed by a user id"),
        }
    }
}

impl std::error::Error for NameError {}

fn check_length(what: &'static str, name: &str, max_bytes: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max_bytes {
        return Err(NameError::TooLong { what, len: name.len(), max: max_bytes });
    }
    Ok(())
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 200;

    fn of(name: &str) -> (ChannelKind, bool) {
        let t = ChannelType::of(name);
        (t.kind, t.cache)
    }

    #[test]
    fn prefixes_give_the_type() {
        use ChannelKind::*;
        let table = [
            ("news", (Public, false)),
            ("cache-news", (Public, true)),
            ("private-a", (Private, false)),
            ("private-cache-a", (Private, true)),
            ("private-encrypted-a", (PrivateEncrypted, false)),
            ("private-encrypted-cache-a", (PrivateEncrypted, true)),
            ("presence-a", (Presence, false)),
            ("presence-cache-a", (Presence, true)),
            ("#server-to-user-42", (ServerToUser, false)),
            // Bare prefixes are channels of that type too.
            ("private-", (Private, false)),
            ("presence-", (Presence, false)),
            // Anchored at the start, and case-sensitive.
            ("foo-private-x", (Public, false)),
            ("xpresence-a", (Public, false)),
            ("public-cache-a", (Public, false)),
            ("Private-a", (Public, false)),
            ("private", (Public, false)),
            ("private-encrypted", (Private, false)),
            ("presence-private-a", (Presence, false)),
            ("private-presence-a", (Private, false)),
            ("private-cache", (Private, false)),
            ("cache", (Public, false)),
        ];
        for (name, expected) in table {
            assert_eq!(of(name), expected, "{name}");
        }
    }

    #[test]
    fn what_each_type_allows() {
        let rules = |name: &str| {
            let t = ChannelType::of(name);
            (t.needs_auth(), t.is_presence(), t.allows_client_events())
        };
        assert_eq!(rules("news"), (false, false, false));
        assert_eq!(rules("cache-news"), (false, false, false));
        assert_eq!(rules("private-a"), (true, false, true));
        assert_eq!(rules("private-cache-a"), (true, false, true));
        assert_eq!(rules("private-encrypted-a"), (true, false, false));
        assert_eq!(rules("private-encrypted-cache-a"), (true, false, false));
        assert_eq!(rules("presence-a"), (true, true, true));
        assert_eq!(rules("presence-cache-a"), (true, true, true));
        assert_eq!(rules("#server-to-user-1"), (false, false, false));
        assert_eq!(server_to_user_id("#server-to-user-1"), Some("1"));
        assert_eq!(server_to_user_id("private-1"), None);
    }

    #[test]
    fn valid_channel_names() {
        let every_char = "AZaz09_-=@,.;";
        for name in [every_char, "a", "private-encrypted-cache-x", "#server-to-user-u=1@x.y", &"x".repeat(MAX)] {
            assert_eq!(validate_channel_name(name, MAX), Ok(ChannelType::of(name)), "{name}");
        }
        assert_eq!(validate_channel_name("ab", 2).map(|t| t.kind), Ok(ChannelKind::Public));
    }

    #[test]
    fn invalid_channel_names() {
        let bad = |name: &str, max: usize| validate_channel_name(name, max).expect_err(name);
        assert_eq!(bad("", MAX), NameError::Empty { what: "channel name" });
        assert_eq!(bad(&"x".repeat(MAX + 1), MAX), NameError::TooLong { what: "channel name", len: 201, max: MAX });
        // Bytes, not characters: 'é' is two. Length is checked before the alphabet.
        assert_eq!(bad("éé", 3), NameError::TooLong { what: "channel name", len: 4, max: 3 });
        for (name, ch, at) in [
            ("a b", ' ', 1),
            ("a/b", '/', 1),
            ("a:b", ':', 1),
            ("a*", '*', 1),
            ("#a", '#', 0),
            ("private-#server-to-user-1", '#', 8),
            ("#server-to-user-a#b", '#', 17),
            ("#server-to-user-a b", ' ', 17),
            ("caf\u{e9}", '\u{e9}', 3),
            ("a\0", '\0', 1),
            ("a\n", '\n', 1),
            ("#Server-to-user-1", '#', 0),
        ] {
            assert_eq!(bad(name, MAX), NameError::BadChar { ch, at }, "{name:?}");
        }
        assert_eq!(bad("#server-to-user-", MAX), NameError::NoUser);
    }

    #[test]
    fn event_names() {
        assert_eq!(validate_event_name("my-event", MAX), Ok(()));
        assert_eq!(validate_event_name("any thing: \u{1f600}", MAX), Ok(()));
        assert_eq!(validate_event_name(&"e".repeat(MAX), MAX), Ok(()));
        assert_eq!(validate_event_name("", MAX), Err(NameError::Empty { what: "event name" }));
        let long = validate_event_name(&"e".repeat(MAX + 1), MAX);
        assert_eq!(long, Err(NameError::TooLong { what: "event name", len: 201, max: MAX }));
        assert!(is_client_event("client-typing"));
        assert!(!is_client_event("client"));
        assert!(!is_client_event("my-client-typing"));
        assert!(!is_client_event("Client-typing"));
        assert!(is_reserved_event("pusher:subscribe"));
        assert!(is_reserved_event("pusher_internal:member_added"));
        assert!(!is_reserved_event("pusher-thing"));
        assert!(!is_reserved_event("client-pusher:x"));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let message = |e: NameError| e.to_string();
        assert_eq!(message(NameError::Empty { what: "event name" }), "event name must not be empty");
        assert_eq!(
            message(NameError::TooLong { what: "channel name", len: 201, max: 200 }),
            "channel name is 201 bytes long (at most 200)"
        );
        assert_eq!(
            message(NameError::BadChar { ch: '#', at: 0 }),
            "channel name has '#' at byte 0; only A-Z, a-z, 0-9 and _ - = @ , . ; are allowed"
        );
        assert_eq!(message(NameError::NoUser), "channel name \"#server-to-user-\" must be followed by a user id");
    }

    #[test]
    fn socket_ids() {
        assert_eq!(socket_id(0, 0), "0.0");
        assert_eq!(socket_id(123, 456), "123.456");
        assert_eq!(socket_id(u64::MAX, u64::MAX), "18446744073709551615.18446744073709551615");
        for good in ["1.2", "0.0", "1234.1234", "00.01"] {
            assert!(is_socket_id(good), "{good}");
        }
        for bad in ["", ".", "1.", ".1", "1", "1.2.3", "a.1", "1.a", " 1.2", "1.2 ", "-1.2", "+1.2", "1,2", "١.٢"] {
            assert!(!is_socket_id(bad), "{bad:?}");
        }
    }

    /// `^\d+\.\d+$` over ASCII digits, written as a tiny state machine: the reference model.
    fn matches_socket_id_pattern(text: &str) -> bool {
        let (mut digits_before, mut dot, mut digits_after) = (0, false, 0);
        for c in text.chars() {
            match (c, dot) {
                ('0'..='9', false) => digits_before += 1,
                ('0'..='9', true) => digits_after += 1,
                ('.', false) => dot = true,
                _ => return false,
            }
        }
        digits_before > 0 && dot && digits_after > 0
    }

    proptest! {
        #[test]
        fn any_text_is_judged_without_panicking(name in ".{0,300}", max in 0usize..260) {
            let verdict = validate_channel_name(&name, max);
            if let Ok(t) = verdict {
                prop_assert!(!name.is_empty() && name.len() <= max);
                prop_assert_eq!(t, ChannelType::of(&name));
            }
            let _ = validate_event_name(&name, max);
            let _ = (is_client_event(&name), is_reserved_event(&name), server_to_user_id(&name));
            prop_assert_eq!(is_socket_id(&name), matches_socket_id_pattern(&name));
        }

        #[test]
        fn the_alphabet_within_the_limit_is_accepted(
            prefix in "(|cache-|private-|private-cache-|private-encrypted-|private-encrypted-cache-|presence-|presence-cache-|#server-to-user-)",
            rest in "[A-Za-z0-9_=@,.;-]{1,150}",
        ) {
            let name = format!("{prefix}{rest}");
            prop_assert_eq!(validate_channel_name(&name, MAX), Ok(ChannelType::of(&name)));
            prop_assert_eq!(validate_channel_name(&name, name.len() - 1).map_err(|e| matches!(e, NameError::TooLong { .. })), Err(true));
        }

        #[test]
        fn socket_ids_have_the_shape_and_are_unique(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>()) {
            let id = socket_id(a, b);
            prop_assert!(is_socket_id(&id));
            prop_assert!(matches_socket_id_pattern(&id));
            prop_assert_eq!(socket_id(a, b) == socket_id(c, d), (a, b) == (c, d));
            let parsed = id.split_once('.').map(|(x, y)| (x.parse::<u64>(), y.parse::<u64>()));
            prop_assert_eq!(parsed, Some((Ok(a), Ok(b))));
        }
    }
}
