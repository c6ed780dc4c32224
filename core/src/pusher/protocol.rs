//! The WebSocket side of the Pusher protocol (v7): what a client sends ([`parse_client_message`]),
//! what the server sends (one function per frame, each returning the frame's text), a presence
//! subscription's `channel_data` ([`parse_channel_data`]), the connect URL
//! ([`parse_connect_url`]) and the close codes ([`close_code`]).
//!
//! Every message is one JSON object in a text frame: `{"event", "channel"?, "data"?}`. Clients
//! send `data` as an object (pusher-js) or, some of them, as a JSON-encoded string; both are
//! read. The server sends `data` as a JSON-encoded string wherever Pusher does, because the
//! protocol says it "tries to send the data field as a string" and every client `JSON.parse`s a
//! string `data`; the exceptions are `pusher:error`, `pusher:pong`/`pusher:ping`,
//! `pusher:subscription_error` and `pusher:signin_success`, whose `data` is an object as in the
//! protocol text and the servers clients are tested against.
//!
//! Parsing never panics, and its work and what it allocates are linear in the input; nothing
//! is copied before the limit that applies to it is checked. Encoding writes each frame into
//! one buffer of its final size.

use std::borrow::Cow;
use std::fmt;
use std::ops::RangeInclusive;

use serde_json::value::RawValue;

use super::http_api;
use super::json::{self, ObjectError, clip, push_str, push_u64, quoted_len};
use super::names::{self, NameError};
use crate::config::PusherConfig;

/// Close codes (and `pusher:error` codes) of the protocol. The range says what pusher-js does:
/// 4000–4099 never reconnect, 4100–4199 reconnect after backing off, 4200–4299 reconnect at
/// once; pusher-js also treats 4300 and above as "refused" when used to close.
pub(crate) mod close_code {
    /// The app key in the URL names no app.
    pub(crate) const UNKNOWN_APP: u16 = 4001;
    /// The app is disabled.
    pub(crate) const APP_DISABLED: u16 = 4003;
    /// The app is over its connection quota.
    pub(crate) const OVER_QUOTA: u16 = 4004;
    /// The path is not `/app/{key}`.
    pub(crate) const PATH_NOT_FOUND: u16 = 4005;
    /// The `protocol` query parameter names a version this server does not speak.
    pub(crate) const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// The connect URL has no `protocol` query parameter.
    pub(crate) const NO_PROTOCOL: u16 = 4008;
    /// The connection is not authorized: a bad sign-in, or none in time.
    pub(crate) const UNAUTHORIZED: u16 = 4009;
    /// The node is over capacity; the client backs off and retries.
    pub(crate) const OVER_CAPACITY: u16 = 4100;
    /// Reconnect now (a generic reason, such as a node shutting down).
    pub(crate) const RECONNECT: u16 = 4200;
    /// A `pusher:ping` went unanswered.
    pub(crate) const PONG_NOT_RECEIVED: u16 = 4201;
    /// A client event was refused (sent as a `pusher:error`; the connection stays open).
    pub(crate) const CLIENT_EVENT_REJECTED: u16 = 4301;
}

/// Protocol versions a client may ask for. 7 is the current one (pusher-js and
/// pusher-websocket-swift send it); the official Java/Android client still sends 5
/// (`PusherOptions.URI_SUFFIX` in pusher-websocket-java), and 6 lies between them. They differ
/// only in what the server sends (7 adds `activity_timeout`, which older clients ignore) and
/// 5 is the first that answers `pusher:ping`, so the server speaks 7 to all three. Pusher
/// itself still accepts 4 and later (`protocol.adoc`), but nothing current sends 4, and a v4
/// client would not answer the server's pings.
pub(crate) const PROTOCOL_VERSIONS: RangeInclusive<u8> = 5..=7;

/// Largest user id of a presence member, in bytes (Pusher's documented limit is 128
/// characters; "Presence channels", pusher.com).
pub(crate) const MAX_USER_ID_BYTES: usize = 128;

/// Largest magnitude of a numeric user id: JavaScript's `Number.MAX_SAFE_INTEGER`. pusher-js
/// keys members by `String(id)`, which for larger numbers is no longer the id that was sent.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The limits the codecs enforce, from `[pusher]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest event `data`: a client event's as sent, an HTTP API event's string.
    pub(crate) max_event_bytes: usize,
    /// Longest event name.
    pub(crate) max_event_name_bytes: usize,
    /// Longest channel name.
    pub(crate) max_channel_name_bytes: usize,
    /// Channels one HTTP API trigger may name.
    pub(crate) max_channels_per_event: usize,
    /// Events one `batch_events` request may hold.
    pub(crate) max_batch_events: usize,
    /// Largest `user_info` of a presence member, as JSON text.
    pub(crate) max_presence_member_bytes: usize,
}

impl Limits {
    /// The limits `[pusher]` sets.
    pub(crate) fn new(config: &PusherConfig) -> Self {
        Self {
            max_event_bytes: config.max_event_bytes.as_usize(),
            max_event_name_bytes: config.max_event_name_bytes,
            max_channel_name_bytes: config.max_channel_name_bytes,
            max_channels_per_event: config.max_channels_per_event,
            max_batch_events: config.max_batch_events,
            max_presence_member_bytes: config.max_presence_member_bytes.as_usize(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(&PusherConfig::default())
    }
}

/// One message from a client, validated against the [`Limits`].
#[derive(Debug)]
pub(crate) enum ClientMessage {
    /// `pusher:subscribe`.
    Subscribe {
        /// A valid channel name.
        channel: String,
        /// The signature, `"key:hex"`, as sent (pusher-js sends `""` for public channels);
        /// `None` when absent or `null`.
        auth: Option<String>,
        /// The presence member, as the exact JSON text the signature covers (parse it with
        /// [`parse_channel_data`] once the signature checks out).
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// A valid channel name.
        channel: String,
    },
    /// `pusher:ping`: answer with [`pong`].
    Ping,
    /// `pusher:pong`: the answer to the server's [`ping`].
    Pong,
    /// `pusher:signin`.
    Signin {
        /// The signature, `"key:hex"`.
        auth: String,
        /// The user, as the exact JSON text the signature covers.
        user_data: String,
    },
    /// A `client-*` event, to relay to the channel's other subscribers (the caller checks the
    /// channel's type, the subscription, the app's switch and the rate).
    ClientEvent {
        /// The event name, `client-…`, within the limit.
        event: String,
        /// A valid channel name.
        channel: String,
        /// The data exactly as sent (any JSON: object, string, number, …), at most
        /// `max_event_bytes` of it; `None` when the message had no `data` (pusher-js omits it
        /// when `trigger` is called without data).
        data: Option<Box<RawValue>>,
    },
    /// Any other `pusher:*` or `pusher_internal:*` event: one this server does not know. The
    /// caller ignores or refuses it.
    UnknownProtocolEvent {
        /// The event name, within the limit.
        #[cfg_attr(
            not(any(test, feature = "fuzzing")),
            allow(dead_code, reason = "the server ignores these; tests read it")
        )]
        event: String,
    },
}

/// Why a client message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// Not a JSON object.
    NotAnObject(ObjectError),
    /// No `event`, or not a string.
    NoEvent,
    /// The event name is empty or too long.
    BadEventName(NameError),
    /// A `pusher:*` event whose `data` is missing, or neither an object nor a JSON-encoded one.
    BadData {
        /// The event.
        event: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A required field is absent or `null`.
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    WrongType {
        /// The field (`data.auth`, …).
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
    },
    /// A channel name breaks the rules.
    BadChannel {
        /// The name, clipped.
        name: String,
        /// The rule.
        error: NameError,
    },
    /// An event that is neither `pusher:*` nor `client-*`: clients send only those.
    NotClientEvent {
        /// The event name, within the limit.
        event: String,
        /// Its channel, when it named a valid one.
        channel: Option<String>,
    },
    /// A client event's data is over `max_event_bytes`.
    TooBig {
        /// The event's channel.
        channel: String,
        /// The data's length, in bytes of JSON text.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The channel the refused message was for, when it named a valid one: a `pusher:error`
    /// carrying it is emitted on that channel object by pusher-js.
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            Self::NotClientEvent { channel, .. } => channel.as_deref(),
            Self::TooBig { channel, .. } => Some(channel),
            _ => None,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject(e) => write!(f, "message {e}"),
            Self::NoEvent => f.write_str("message must have an `event` string"),
            Self::BadEventName(e) => e.fmt(f),
            Self::BadData { event, problem } => write!(f, "{event}: `data` {problem}"),
            Self::MissingField(field) => write!(f, "missing field `{field}`"),
            Self::WrongType { field, expected } => write!(f, "field `{field}` must be {expected}"),
            Self::BadChannel { name, error } => write!(f, "bad channel {}: {error}", json::quote(name)),
            Self::NotClientEvent { event, .. } => {
                write!(
                    f,
                    "event {} refused: clients may send only pusher:* and client-* events",
                    json::quote(&clip(event))
                )
            }
            Self::TooBig { len, max, .. } => write!(f, "client event data is {len} bytes (at most {max})"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Parses one text frame from a client.
pub(crate) fn parse_client_message(text: &str, limits: &Limits) -> Result<ClientMessage, ProtocolError> {
    let [event, channel, data] = json::pick(text, ["event", "channel", "data"]).map_err(ProtocolError::NotAnObject)?;
    let event = event.and_then(json::string).ok_or(ProtocolError::NoEvent)?;
    names::validate_event_name(&event, limits.max_event_name_bytes).map_err(ProtocolError::BadEventName)?;
    let message = match event.as_str() {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => {
            let data = DataObject::read("pusher:subscribe", data)?;
            let [channel, auth, channel_data] = data.pick(["channel", "auth", "channel_data"])?;
            ClientMessage::Subscribe {
                channel: valid_channel(required(channel, "data.channel")?, "data.channel", limits)?,
                auth: optional_string(auth, "data.auth")?,
                channel_data: optional_string(channel_data, "data.channel_data")?,
            }
        }
        "pusher:unsubscribe" => {
            let data = DataObject::read("pusher:unsubscribe", data)?;
            let [channel] = data.pick(["channel"])?;
            ClientMessage::Unsubscribe {
                channel: valid_channel(required(channel, "data.channel")?, "data.channel", limits)?,
            }
        }
        "pusher:signin" => {
            let data = DataObject::read("pusher:signin", data)?;
            let [auth, user_data] = data.pick(["auth", "user_data"])?;
            ClientMessage::Signin {
                auth: required_string(auth, "data.auth")?,
                user_data: required_string(user_data, "data.user_data")?,
            }
        }
        _ if names::is_reserved_event(&event) => ClientMessage::UnknownProtocolEvent { event },
        _ if names::is_client_event(&event) => {
            let channel = valid_channel(required(channel, "channel")?, "channel", limits)?;
            if let Some(raw) = data
                && raw.get().len() > limits.max_event_bytes
            {
                return Err(ProtocolError::TooBig { channel, len: raw.get().len(), max: limits.max_event_bytes });
            }
            ClientMessage::ClientEvent { event, channel, data: data.map(ToOwned::to_owned) }
        }
        _ => {
            let channel = channel
                .and_then(json::string)
                .filter(|name| names::validate_channel_name(name, limits.max_channel_name_bytes).is_ok());
            return Err(ProtocolError::NotClientEvent { event, channel });
        }
    };
    Ok(message)
}

/// The `data` of a `pusher:*` event: an object's text, as sent (borrowed) or decoded from a
/// string.
struct DataObject<'a> {
    event: &'static str,
    text: Cow<'a, str>,
}

impl<'a> DataObject<'a> {
    fn read(event: &'static str, data: Option<&'a RawValue>) -> Result<Self, ProtocolError> {
        let bad = |problem: &str| ProtocolError::BadData { event, problem: problem.to_owned() };
        let raw = data.filter(|raw| !json::is_null(raw)).ok_or_else(|| bad("is missing"))?;
        let text = match raw.get().as_bytes().first() {
            Some(b'{') => Cow::Borrowed(raw.get()),
            // Some clients send the object JSON-encoded, as the server sends its own.
            Some(b'"') => Cow::Owned(json::string(raw).ok_or_else(|| bad("is not a valid string"))?),
            _ => return Err(bad("must be an object")),
        };
        Ok(Self { event, text })
    }

    fn pick<const N: usize>(&self, names: [&'static str; N]) -> Result<[Option<&RawValue>; N], ProtocolError> {
        json::pick(&self.text, names).map_err(|e| ProtocolError::BadData {
            event: self.event,
            problem: match e {
                ObjectError::NotAnObject => "must be an object or a JSON-encoded object".to_owned(),
                e => e.to_string(),
            },
        })
    }
}

/// A field that must be there, `null` counting as absent.
fn required<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<&'a RawValue, ProtocolError> {
    raw.filter(|raw| !json::is_null(raw)).ok_or(ProtocolError::MissingField(field))
}

fn required_string(raw: Option<&RawValue>, field: &'static str) -> Result<String, ProtocolError> {
    json::string(required(raw, field)?).ok_or(ProtocolError::WrongType { field, expected: "a string" })
}

/// An optional string field; absent and `null` are both `None`.
fn optional_string(raw: Option<&RawValue>, field: &'static str) -> Result<Option<String>, ProtocolError> {
    match raw.filter(|raw| !json::is_null(raw)) {
        None => Ok(None),
        Some(raw) => json::string(raw).map(Some).ok_or(ProtocolError::WrongType { field, expected: "a string" }),
    }
}

/// A channel name field, checked against the rules before it is kept.
fn valid_channel(raw: &RawValue, field: &'static str, limits: &Limits) -> Result<String, ProtocolError> {
    let name = json::string(raw).ok_or(ProtocolError::WrongType { field, expected: "a string" })?;
    match names::validate_channel_name(&name, limits.max_channel_name_bytes) {
        Ok(_) => Ok(name),
        Err(error) => Err(ProtocolError::BadChannel { name: clip(&name), error }),
    }
}

/// A presence member's user id: compared as a string (so `"7"` and `7` are one user), sent
/// back in the JSON type it came in.
///
/// Equality, order and hash look at the string only.
#[derive(Clone, Debug)]
pub(crate) struct UserId {
    id: String,
    numeric: bool,
}

impl UserId {
    /// A string id.
    pub(crate) fn string(id: &str) -> Self {
        Self { id: id.to_owned(), numeric: false }
    }

    /// A numeric id.
    pub(crate) fn number(id: i64) -> Self {
        Self { id: id.to_string(), numeric: true }
    }

    /// The id as a string: what members are compared by, and the key of the presence `hash`.
    pub(crate) fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether it came as a JSON number.
    pub(crate) fn is_numeric(&self) -> bool {
        self.numeric
    }

    /// Appends the id as JSON, in the type it came in.
    pub(crate) fn push_json(&self, out: &mut String) {
        if self.numeric { out.push_str(&self.id) } else { push_str(out, &self.id) }
    }

    /// Length of [`UserId::push_json`]'s output.
    pub(crate) fn json_len(&self) -> usize {
        if self.numeric { self.id.len() } else { quoted_len(&self.id) }
    }
}

impl PartialEq for UserId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for UserId {}

impl std::hash::Hash for UserId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialOrd for UserId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UserId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

/// One member of a presence channel, from a subscription's `channel_data`.
#[derive(Clone, Debug)]
pub(crate) struct PresenceMember {
    /// Who it is.
    pub(crate) user_id: UserId,
    /// What the other members see of it, exactly as the auth endpoint wrote it; `None` when
    /// absent or `null`.
    pub(crate) user_info: Option<Box<RawValue>>,
}

/// Why a presence subscription's `channel_data` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PresenceError {
    /// Not a JSON object.
    NotAnObject(ObjectError),
    /// No `user_id`, or `null`.
    MissingUserId,
    /// `user_id` is neither a non-empty string nor a whole number within ±(2^53−1).
    InvalidUserId,
    /// `user_id` is longer than [`MAX_USER_ID_BYTES`].
    UserIdTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// `user_info` is over `max_presence_member_bytes`.
    UserInfoTooBig {
        /// Its length in bytes of JSON text.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject(e) => write!(f, "channel_data {e}"),
            Self::MissingUserId => f.write_str("channel_data must have a `user_id`"),
            Self::InvalidUserId => f.write_str(
                "channel_data `user_id` must be a non-empty string or a whole number within ±9007199254740991",
            ),
            Self::UserIdTooLong { len } => {
                write!(f, "channel_data `user_id` is {len} bytes long (at most {MAX_USER_ID_BYTES})")
            }
            Self::UserInfoTooBig { len, max } => {
                write!(f, "channel_data `user_info` is {len} bytes of JSON (at most {max})")
            }
        }
    }
}

impl std::error::Error for PresenceError {}

/// Parses a presence subscription's `channel_data`:
/// `{"user_id": <string or whole number>, "user_info": <any JSON, optional>}`.
pub(crate) fn parse_channel_data(text: &str, max_user_info_bytes: usize) -> Result<PresenceMember, PresenceError> {
    let [user_id, user_info] = json::pick(text, ["user_id", "user_info"]).map_err(PresenceError::NotAnObject)?;
    let raw = user_id.filter(|raw| !json::is_null(raw)).ok_or(PresenceError::MissingUserId)?;
    let user_id = match raw.get().as_bytes().first() {
        Some(b'"') => {
            let id = json::string(raw).ok_or(PresenceError::InvalidUserId)?;
            if id.is_empty() {
                return Err(PresenceError::InvalidUserId);
            }
            if id.len() > MAX_USER_ID_BYTES {
                return Err(PresenceError::UserIdTooLong { len: id.len() });
            }
            UserId { id, numeric: false }
        }
        _ => UserId::number(whole_number(raw.get()).ok_or(PresenceError::InvalidUserId)?),
    };
    let user_info = user_info.filter(|raw| !json::is_null(raw));
    if let Some(raw) = user_info
        && raw.get().len() > max_user_info_bytes
    {
        return Err(PresenceError::UserInfoTooBig { len: raw.get().len(), max: max_user_info_bytes });
    }
    Ok(PresenceMember { user_id, user_info: user_info.map(ToOwned::to_owned) })
}

/// A JSON number without fraction or exponent, within JavaScript's safe integers.
fn whole_number(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|n| n.abs() <= MAX_SAFE_INTEGER)
}

/// What a connect URL asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectRequest<'a> {
    /// The app key, as it appears in the path (keys hold no character that needs escaping).
    pub(crate) key: &'a str,
    /// The protocol version, within [`PROTOCOL_VERSIONS`].
    pub(crate) protocol: u8,
}

/// Why a connect URL was refused; each maps to a close code ([`ConnectError::code`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// The path is not `/app/{key}`.
    PathNotFound,
    /// No `protocol` query parameter, or an empty one.
    NoProtocol,
    /// A `protocol` outside [`PROTOCOL_VERSIONS`] (or not a number).
    UnsupportedProtocol(String),
}

impl ConnectError {
    /// The code to send in `pusher:error` and to close with.
    pub(crate) fn code(&self) -> u16 {
        match self {
            Self::PathNotFound => close_code::PATH_NOT_FOUND,
            Self::NoProtocol => close_code::NO_PROTOCOL,
            Self::UnsupportedProtocol(_) => close_code::UNSUPPORTED_PROTOCOL,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = (PROTOCOL_VERSIONS.start(), PROTOCOL_VERSIONS.end());
        match self {
            Self::PathNotFound => f.write_str("path must be /app/{key}"),
            Self::NoProtocol => write!(f, "no protocol version supplied (add ?protocol={high})"),
            Self::UnsupportedProtocol(given) => {
                write!(f, "unsupported protocol version {}: {low} to {high} are supported", json::quote(given))
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Parses a connect request target, `/app/{key}?protocol=7&client=js&version=8.6.0&flash=false`.
///
/// Only `protocol` is read (the first one, percent-decoded); other parameters are ignored, even
/// malformed ones.
pub(crate) fn parse_connect_url(target: &str) -> Result<ConnectRequest<'_>, ConnectError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let key = path.strip_prefix("/app/").filter(|key| !key.is_empty() && !key.contains('/'));
    let key = key.ok_or(ConnectError::PathNotFound)?;
    let given = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| http_api::percent_decode(name).as_deref() == Some("protocol"))
        .map(|(_, value)| value);
    let given = given.filter(|value| !value.is_empty()).ok_or(ConnectError::NoProtocol)?;
    let version = http_api::percent_decode(given)
        .filter(|v| (1..=3).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|v| PROTOCOL_VERSIONS.contains(v));
    match version {
        Some(protocol) => Ok(ConnectRequest { key, protocol }),
        None => Err(ConnectError::UnsupportedProtocol(clip(given))),
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client frames.

/// `pusher:connection_established`, the first frame on a connection:
/// `{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}`.
pub(crate) fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let mut data = String::with_capacity(48 + socket_id.len());
    data.push_str("{\"socket_id\":");
    push_str(&mut data, socket_id);
    data.push_str(",\"activity_timeout\":");
    push_u64(&mut data, activity_timeout_secs);
    data.push('}');
    frame("pusher:connection_established", None, &Data::Encoded(&data))
}

/// `pusher:error`, with `data` an object (`{"message":…,"code":…}`, as in the protocol text);
/// `code` is `null` when `None` (as Pusher sends it for a bad signature). With a channel,
/// pusher-js emits the error on that channel.
pub(crate) fn error(code: Option<u16>, message: &str, channel: Option<&str>) -> String {
    let mut data = String::with_capacity(32 + quoted_len(message));
    data.push_str("{\"message\":");
    push_str(&mut data, message);
    data.push_str(",\"code\":");
    match code {
        Some(code) => push_u64(&mut data, u64::from(code)),
        None => data.push_str("null"),
    }
    data.push('}');
    frame("pusher:error", channel, &Data::Object(&data))
}

/// `pusher:pong`, the answer to a client's `pusher:ping`: `{"event":"pusher:pong","data":{}}`.
pub(crate) fn pong() -> String {
    "{\"event\":\"pusher:pong\",\"data\":{}}".to_owned()
}

/// `pusher:ping`, sent after `activity_timeout` of silence: `{"event":"pusher:ping","data":{}}`.
pub(crate) fn ping() -> String {
    "{\"event\":\"pusher:ping\",\"data\":{}}".to_owned()
}

/// The members of a presence channel as a new subscriber first sees them: each user once
/// (the first of several connections of one user counts), in the order given.
#[derive(Clone, Debug)]
pub(crate) struct PresenceData<'a> {
    members: Vec<&'a PresenceMember>,
}

impl<'a> PresenceData<'a> {
    /// The members, with repeated user ids (compared as strings) dropped.
    pub(crate) fn new(members: impl IntoIterator<Item = &'a PresenceMember>) -> Self {
        let members: Vec<&PresenceMember> = members.into_iter().collect();
        let mut order: Vec<usize> = (0..members.len()).collect();
        // Stable: among equal ids the first given stays first.
        order.sort_by(|&a, &b| members[a].user_id.cmp(&members[b].user_id));
        let mut keep = vec![false; members.len()];
        for (i, &at) in order.iter().enumerate() {
            keep[at] = i == 0 || members[order[i - 1]].user_id != members[at].user_id;
        }
        let members = members.into_iter().zip(keep).filter_map(|(m, keep)| keep.then_some(m)).collect();
        Self { members }
    }

    /// How many distinct users.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn count(&self) -> usize {
        self.members.len()
    }

    /// `{"presence":{"ids":[…],"hash":{…},"count":n}}`: ids as strings, `user_info` raw
    /// (`null` for a member without one).
    fn to_json(&self) -> String {
        let size: usize =
            self.members.iter().map(|m| 2 * quoted_len(m.user_id.as_str()) + info_text(m).len() + 3).sum();
        let mut out = String::with_capacity(48 + size);
        out.push_str("{\"presence\":{\"ids\":[");
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, member.user_id.as_str());
        }
        out.push_str("],\"hash\":{");
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, member.user_id.as_str());
            out.push(':');
            out.push_str(info_text(member));
        }
        out.push_str("},\"count\":");
        push_u64(&mut out, self.members.len() as u64);
        out.push_str("}}");
        out
    }
}

fn info_text(member: &PresenceMember) -> &str {
    member.user_info.as_deref().map_or("null", RawValue::get)
}

/// `pusher_internal:subscription_succeeded`: `data` is `"{}"`, or the members on a presence
/// channel.
pub(crate) fn subscription_succeeded(channel: &str, presence: Option<&PresenceData<'_>>) -> String {
    match presence {
        None => frame("pusher_internal:subscription_succeeded", Some(channel), &Data::Encoded("{}")),
        Some(presence) => {
            frame("pusher_internal:subscription_succeeded", Some(channel), &Data::Encoded(&presence.to_json()))
        }
    }
}

/// `pusher:subscription_error`, with `data` the object Laravel Echo's `.error()` receives:
/// `{"type":"AuthError","error":"…","status":401}` (soketi's shape; hosted Pusher sends a
/// `pusher:error` instead, which Echo does not hear).
pub(crate) fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let mut data = String::with_capacity(40 + quoted_len(kind) + quoted_len(message));
    data.push_str("{\"type\":");
    push_str(&mut data, kind);
    data.push_str(",\"error\":");
    push_str(&mut data, message);
    data.push_str(",\"status\":");
    push_u64(&mut data, u64::from(status));
    data.push('}');
    frame("pusher:subscription_error", Some(channel), &Data::Object(&data))
}

/// `pusher_internal:member_added`: `data` `{"user_id":…,"user_info":…}` encoded, the id in
/// the JSON type it came in, `user_info` left out when the member has none.
pub(crate) fn member_added(channel: &str, user_id: &UserId, user_info: Option<&RawValue>) -> String {
    let info = user_info.map_or(0, |raw| raw.get().len() + 13);
    let mut data = String::with_capacity(14 + user_id.json_len() + info);
    data.push_str("{\"user_id\":");
    user_id.push_json(&mut data);
    if let Some(raw) = user_info {
        data.push_str(",\"user_info\":");
        data.push_str(raw.get());
    }
    data.push('}');
    frame("pusher_internal:member_added", Some(channel), &Data::Encoded(&data))
}

/// `pusher_internal:member_removed`: `data` `{"user_id":…}` encoded.
pub(crate) fn member_removed(channel: &str, user_id: &UserId) -> String {
    let mut data = String::with_capacity(13 + user_id.json_len());
    data.push_str("{\"user_id\":");
    user_id.push_json(&mut data);
    data.push('}');
    frame("pusher_internal:member_removed", Some(channel), &Data::Encoded(&data))
}

/// `pusher_internal:subscription_count`: `data` `{"subscription_count":n}` encoded.
pub(crate) fn subscription_count(channel: &str, count: u64) -> String {
    let mut data = String::with_capacity(44);
    data.push_str("{\"subscription_count\":");
    push_u64(&mut data, count);
    data.push('}');
    frame("pusher_internal:subscription_count", Some(channel), &Data::Encoded(&data))
}

/// An event triggered through the HTTP API, `{"event":…,"channel":…,"data":"<data>"}`, `data`
/// being the string exactly as posted. The fan-out frame: built once per channel and
/// publish, in one allocation of its exact size.
pub(crate) fn event(channel: &str, event: &str, data: &str) -> String {
    frame(event, Some(channel), &Data::Encoded(data))
}

/// A client event as relayed to the channel's other subscribers: the client's `event`,
/// `channel` and `data` (byte for byte), plus `user_id` (its JSON type kept) on presence
/// channels.
pub(crate) fn client_event_relay(
    event: &str,
    channel: &str,
    data: Option<&RawValue>,
    user_id: Option<&UserId>,
) -> String {
    let len = 9
        + quoted_len(event)
        + 11
        + quoted_len(channel)
        + data.map_or(0, |raw| 8 + raw.get().len())
        + user_id.map_or(0, |id| 11 + id.json_len())
        + 1;
    let mut out = String::with_capacity(len);
    out.push_str("{\"event\":");
    push_str(&mut out, event);
    out.push_str(",\"channel\":");
    push_str(&mut out, channel);
    if let Some(raw) = data {
        out.push_str(",\"data\":");
        out.push_str(raw.get());
    }
    if let Some(id) = user_id {
        out.push_str(",\"user_id\":");
        id.push_json(&mut out);
    }
    out.push('}');
    debug_assert_eq!(out.len(), len, "client_event_relay sized its buffer wrong");
    out
}

/// `pusher:signin_success`: `{"event":"pusher:signin_success","data":{"user_data":"…"}}`,
/// `user_data` the signed text as the client sent it.
pub(crate) fn signin_success(user_data: &str) -> String {
    let mut data = String::with_capacity(14 + quoted_len(user_data));
    data.push_str("{\"user_data\":");
    push_str(&mut data, user_data);
    data.push('}');
    frame("pusher:signin_success", None, &Data::Object(&data))
}

/// `pusher:cache_miss`, sent on a cache channel with no cached event right after
/// `subscription_succeeded`: `{"event":"pusher:cache_miss","channel":"cache-x"}`.
pub(crate) fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), &Data::None)
}

/// `pusher_internal:watchlist_events`: `data` `{"events":[{"name":"online","user_ids":[…]}]}`
/// encoded, `name` being `online` or `offline`.
pub(crate) fn watchlist_events(name: &str, user_ids: &[&str]) -> String {
    let mut data = String::with_capacity(48 + user_ids.iter().map(|id| quoted_len(id) + 1).sum::<usize>());
    data.push_str("{\"events\":[{\"name\":");
    push_str(&mut data, name);
    data.push_str(",\"user_ids\":[");
    for (i, id) in user_ids.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        push_str(&mut data, id);
    }
    data.push_str("]}]}");
    frame("pusher_internal:watchlist_events", None, &Data::Encoded(&data))
}

/// How a frame carries `data`.
enum Data<'a> {
    /// No `data` field.
    None,
    /// JSON text written as is (an object).
    Object(&'a str),
    /// Text written as a JSON string.
    Encoded(&'a str),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Object(text) => 8 + text.len(),
            Self::Encoded(text) => 8 + quoted_len(text),
        }
    }
}

/// `{"event":…[,"channel":…][,"data":…]}`, in one buffer of its exact size.
fn frame(event: &str, channel: Option<&str>, data: &Data<'_>) -> String {
    let len = 10 + quoted_len(event) + channel.map_or(0, |c| 11 + quoted_len(c)) + data.len();
    let mut out = String::with_capacity(len);
    out.push_str("{\"event\":");
    push_str(&mut out, event);
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        push_str(&mut out, channel);
    }
    match data {
        Data::None => {}
        Data::Object(text) => {
            out.push_str(",\"data\":");
            out.push_str(text);
        }
        Data::Encoded(text) => {
            out.push_str(",\"data\":");
            push_str(&mut out, text);
        }
    }
    out.push('}');
    debug_assert_eq!(out.len(), len, "frame sized its buffer wrong");
    out
}

#[cfg(test)]
mod tests;
