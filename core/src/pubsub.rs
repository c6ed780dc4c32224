//! The pub/sub wire protocol: parsing client ops and encoding server frames.
//!
//! Every frame is one compact JSON object in a WebSocket text message. Parsing is strict
//! (unknown and duplicate fields are errors) so a client's typo surfaces at once instead of
//! being silently ignored. Published `data` and presence info stay raw JSON text from parse to
//! encode, so a publish is framed once, byte-for-byte as the publisher sent it, however many
//! subscribers receive it.
//!
//! Parsing and encoding never panic on input and do no I/O. Raw values are skipped by
//! `serde_json` without recursion, so deeply nested `data` cannot overflow the stack.

use std::fmt::{self, Write as _};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest accepted `presence` info, counted in bytes of JSON text as received.
pub(crate) const MAX_PRESENCE_BYTES: usize = 1024;

/// Longest accepted string `id`, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 64;

/// The characters a channel name may use, as quoted to clients in error messages.
pub(crate) const CHANNEL_CHARSET: &str = "[A-Za-z0-9_.:-] (then optionally #user1,user2)";

/// Longest piece of client text (op or field name) quoted back in an error message.
const MAX_QUOTED_BYTES: usize = 64;

/// A client-chosen request id, echoed in the reply to the op that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum RequestId {
    /// A non-negative integer id.
    Number(u64),
    /// A string id of at most [`MAX_ID_BYTES`] bytes.
    Text(String),
}

/// One client → server op, validated.
#[derive(Clone, Debug)]
pub(crate) enum ClientOp {
    /// Join a channel, optionally with presence info shown to other members.
    Subscribe {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// Channel to join.
        channel: String,
        /// Presence info as raw JSON; `None` when absent or `null`.
        presence: Option<Box<RawValue>>,
        /// A subscription token, for namespaces that require one.
        token: Option<String>,
        /// Where the client's copy of the stream ends: recover what came after.
        recover: Option<Position>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// Channel to leave.
        channel: String,
    },
    /// Send `data` to every subscriber of a channel.
    Publish {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// Channel to publish to.
        channel: String,
        /// The payload exactly as received, framed without re-serialising.
        data: Box<RawValue>,
    },
    /// Application-level ping for clients that cannot see WebSocket pings.
    Ping {
        /// Request id to echo in the pong.
        id: Option<RequestId>,
    },
    /// Ask for the members of a channel.
    Presence {
        /// Request id to echo in the presence reply.
        id: Option<RequestId>,
        /// Channel whose members are listed.
        channel: String,
    },
    /// Authenticate with a connection token.
    Connect {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// The connection token (a JWT).
        token: String,
    },
    /// Replace the connection token before it expires.
    Refresh {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// The new connection token (a JWT).
        token: String,
    },
    /// Read a page of a channel's history.
    History {
        /// Request id to echo in the reply.
        id: Option<RequestId>,
        /// Channel whose history is read.
        channel: String,
        /// Only publications after this position (all kept ones when absent).
        since: Option<Position>,
        /// At most this many publications (the namespace's `max_recover` when absent).
        limit: Option<usize>,
    },
}

/// A position in a channel's stream: the stream's epoch and an offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// The stream's epoch (changes when the stream is created afresh).
    pub epoch: String,
    /// The last offset the client holds.
    pub offset: u64,
}

impl ClientOp {
    /// The request id the client sent with this op, if any.
    pub(crate) fn id(&self) -> Option<&RequestId> {
        match self {
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Publish { id, .. }
            | Self::Ping { id }
            | Self::Presence { id, .. }
            | Self::Connect { id, .. }
            | Self::Refresh { id, .. }
            | Self::History { id, .. } => id.as_ref(),
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// The channel this op names; `None` for `ping`.
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            Self::Subscribe { channel, .. }
            | Self::Unsubscribe { channel, .. }
            | Self::Publish { channel, .. }
            | Self::Presence { channel, .. }
            | Self::History { channel, .. } => Some(channel),
            Self::Ping { .. } | Self::Connect { .. } | Self::Refresh { .. } => None,
        }
    }

    #[cfg(test)]
    /// The op's wire name, e.g. `"subscribe"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Ping { .. } => "ping",
            Self::Presence { .. } => "presence",
            Self::Connect { .. } => "connect",
            Self::Refresh { .. } => "refresh",
            Self::History { .. } => "history",
        }
    }
}

/// Why an op was refused; each has a stable wire string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ErrorCode {
    /// The text is not JSON or not a JSON object.
    BadJson,
    /// The `op` field names no known op.
    UnknownOp,
    /// A field is missing, unknown, duplicated or of the wrong type.
    BadRequest,
    /// The channel name breaks the length or charset rule.
    BadChannel,
    /// The connection already holds its maximum number of subscriptions.
    TooManySubscriptions,
    /// Unsubscribe from a channel the connection is not subscribed to.
    NotSubscribed,
    /// Subscribe to a channel the connection is already subscribed to.
    AlreadySubscribed,
    /// The route does not let clients publish.
    PublishForbidden,
    /// The connection exceeded its message or byte rate.
    RateLimited,
    /// A field (presence info) is larger than allowed.
    TooBig,
    /// The op needs an authenticated connection (`auth.require`, or the namespace's rule).
    NotAuthenticated,
    /// A second `connect` on an authenticated connection.
    AlreadyConnected,
    /// The namespace's rules or a user-limited channel refuse this connection.
    Forbidden,
    /// A subscription or refresh token is invalid, expired or for something else.
    BadToken,
    /// The `since` position of a history read is from another epoch.
    EpochChanged,
    /// The channel keeps no history.
    HistoryUnavailable,
}

impl ErrorCode {
    #[cfg(test)]
    /// Every code, in declaration order.
    pub(crate) const ALL: [Self; 16] = [
        Self::BadJson,
        Self::UnknownOp,
        Self::BadRequest,
        Self::BadChannel,
        Self::TooManySubscriptions,
        Self::NotSubscribed,
        Self::AlreadySubscribed,
        Self::PublishForbidden,
        Self::RateLimited,
        Self::TooBig,
        Self::NotAuthenticated,
        Self::AlreadyConnected,
        Self::Forbidden,
        Self::BadToken,
        Self::EpochChanged,
        Self::HistoryUnavailable,
    ];

    /// The stable wire string, e.g. `"bad_channel"`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownOp => "unknown_op",
            Self::BadRequest => "bad_request",
            Self::BadChannel => "bad_channel",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::NotSubscribed => "not_subscribed",
            Self::AlreadySubscribed => "already_subscribed",
            Self::PublishForbidden => "publish_forbidden",
            Self::RateLimited => "rate_limited",
            Self::TooBig => "too_big",
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyConnected => "already_connected",
            Self::Forbidden => "forbidden",
            Self::BadToken => "bad_token",
            Self::EpochChanged => "epoch_changed",
            Self::HistoryUnavailable => "history_unavailable",
        }
    }

    /// True for malformed-input codes, which count towards `max_protocol_errors`.
    pub(crate) fn is_strike(self) -> bool {
        // Only input no correct client would send is a strike; the rest are state or policy
        // refusals a well-behaved client can hit by racing the server.
        matches!(self, Self::BadJson | Self::UnknownOp | Self::BadRequest | Self::BadChannel)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused op: the reply to send, with the request id when one could be recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpError {
    /// The op's request id; `None` when absent or unreadable.
    pub id: Option<RequestId>,
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail naming the offending part.
    pub message: String,
}

impl OpError {
    /// Builds an error reply.
    pub(crate) fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, code, message: message.into() }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Encodes this error as an `error` frame.
    pub(crate) fn to_frame(&self) -> String {
        error(self.id.as_ref(), self.code, &self.message)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for OpError {}

/// True when `name` is 1..=`max` bytes of `[A-Za-z0-9_.:-]`, optionally followed by `#` and a
/// user list of `[A-Za-z0-9_.:@,-]` (a user-limited channel).
pub(crate) fn valid_channel(name: &str, max: usize) -> bool {
    let plain = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    };
    if !(1..=max).contains(&name.len()) {
        return false;
    }
    match name.split_once('#') {
        None => plain(name),
        Some((base, users)) => {
            plain(base)
                && !users.is_empty()
                && users
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b',' | b'-'))
        }
    }
}

/// The users a user-limited channel (`name#u1,u2`) admits; `None` for any other channel.
pub(crate) fn channel_users(name: &str) -> Option<impl Iterator<Item = &str>> {
    name.split_once('#').map(|(_, users)| users.split(',').filter(|u| !u.is_empty()))
}

/// Parses one client text message into an op.
///
/// The error carries the request id whenever the text is a JSON object with exactly one valid
/// `id`, so the client can match the error to its request even if the rest is wrong.
pub(crate) fn parse_op(text: &str, max_channel_bytes: usize) -> Result<ClientOp, OpError> {
    let members = Members::parse(text)?;
    let id = members.request_id()?;
    let req = Request { members: &members, id: &id };

    let op = req.string(req.required("op")?, "op")?;
    let op = match op.as_str() {
        "subscribe" => {
            req.allow(&["op", "id", "channel", "presence", "token", "recover"])?;
            let channel = req.channel(max_channel_bytes)?;
            let presence = req.presence()?;
            let token = req.members.get("token").map(|raw| req.string(raw, "token")).transpose()?;
            let recover = req.position("recover")?;
            ClientOp::Subscribe { id, channel, presence, token, recover }
        }
        "unsubscribe" => {
            req.allow(&["op", "id", "channel"])?;
            let channel = req.channel(max_channel_bytes)?;
            ClientOp::Unsubscribe { id, channel }
        }
        "publish" => {
            req.allow(&["op", "id", "channel", "data"])?;
            let channel = req.channel(max_channel_bytes)?;
            let data = req.required("data")?.to_owned();
            ClientOp::Publish { id, channel, data }
        }
        "ping" => {
            req.allow(&["op", "id"])?;
            ClientOp::Ping { id }
        }
        "presence" => {
            req.allow(&["op", "id", "channel"])?;
            let channel = req.channel(max_channel_bytes)?;
            ClientOp::Presence { id, channel }
        }
        "connect" => {
            req.allow(&["op", "id", "token"])?;
            let token = req.string(req.required("token")?, "token")?;
            ClientOp::Connect { id, token }
        }
        "refresh" => {
            req.allow(&["op", "id", "token"])?;
            let token = req.string(req.required("token")?, "token")?;
            ClientOp::Refresh { id, token }
        }
        "history" => {
            req.allow(&["op", "id", "channel", "since", "limit"])?;
            let channel = req.channel(max_channel_bytes)?;
            let since = req.position("since")?;
            let limit = match req.members.get("limit") {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str::<usize>(raw.get())
                        .map_err(|_| req.fail(ErrorCode::BadRequest, "field `limit` must be a non-negative integer"))?,
                ),
            };
            ClientOp::History { id, channel, since, limit }
        }
        other => return Err(req.fail(ErrorCode::UnknownOp, format!("unknown op {}", quote(other)))),
    };
    Ok(op)
}

/// A JSON object's members in order, each value left as unparsed JSON text.
///
/// Values borrow from the input, so only the few fields an op keeps are ever copied.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    fn parse(text: &'a str) -> Result<Self, OpError> {
        serde_json::from_str(text).map_err(|e| {
            // Keys are plain strings and values raw JSON, so a data error can only mean the
            // top-level value was valid JSON of the wrong type.
            let message =
                if e.is_data() { "message must be a JSON object".to_owned() } else { format!("invalid JSON: {e}") };
            OpError::new(None, ErrorCode::BadJson, message)
        })
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(key, _)| key == name).map(|&(_, raw)| raw)
    }

    fn request_id(&self) -> Result<Option<RequestId>, OpError> {
        let mut ids = self.0.iter().filter(|(key, _)| key == "id");
        let Some(&(_, raw)) = ids.next() else { return Ok(None) };
        // With two ids there is no right one to echo, so echo neither.
        if ids.next().is_some() {
            return Err(OpError::new(None, ErrorCode::BadRequest, "duplicate field `id`"));
        }
        // Dispatching on the first byte avoids untagged-enum buffering and its vague errors.
        let text = raw.get();
        let id = if text.starts_with('"') {
            serde_json::from_str::<String>(text).ok().filter(|s| s.len() <= MAX_ID_BYTES).map(RequestId::Text)
        } else {
            serde_json::from_str::<u64>(text).ok().map(RequestId::Number)
        };
        match id {
            Some(id) => Ok(Some(id)),
            None => Err(OpError::new(
                None,
                ErrorCode::BadRequest,
                format!("field `id` must be a number or a string of at most {MAX_ID_BYTES} bytes"),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(4);
        while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
            members.push(entry);
        }
        Ok(Members(members))
    }
}

/// A parsed object plus its recovered id, so every error path can echo the id.
struct Request<'r, 'a> {
    members: &'r Members<'a>,
    id: &'r Option<RequestId>,
}

impl<'a> Request<'_, 'a> {
    fn fail(&self, code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError::new(self.id.clone(), code, message)
    }

    /// Rejects fields outside `allowed` and repeated fields.
    fn allow(&self, allowed: &[&str]) -> Result<(), OpError> {
        // The loop ends at the first stray key, so a huge object costs at most
        // `allowed.len() + 1` comparisons here.
        let mut seen = 0u32;
        for (key, _) in &self.members.0 {
            let Some(bit) = allowed.iter().position(|a| a == key) else {
                let expected = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
                return Err(self.fail(
                    ErrorCode::BadRequest,
                    format!("unknown field `{}`, expected one of {expected}", clip(key)),
                ));
            };
            if seen & (1 << bit) != 0 {
                return Err(self.fail(ErrorCode::BadRequest, format!("duplicate field `{key}`")));
            }
            seen |= 1 << bit;
        }
        Ok(())
    }

    fn required(&self, name: &str) -> Result<&'a RawValue, OpError> {
        self.members.get(name).ok_or_else(|| self.fail(ErrorCode::BadRequest, format!("missing field `{name}`")))
    }

    fn string(&self, raw: &RawValue, name: &str) -> Result<String, OpError> {
        serde_json::from_str(raw.get())
            .map_err(|_| self.fail(ErrorCode::BadRequest, format!("field `{name}` must be a string")))
    }

    fn channel(&self, max: usize) -> Result<String, OpError> {
        let channel = self.string(self.required("channel")?, "channel")?;
        if !valid_channel(&channel, max) {
            return Err(
                self.fail(ErrorCode::BadChannel, format!("channel name must be 1..={max} bytes of {CHANNEL_CHARSET}"))
            );
        }
        Ok(channel)
    }

    /// An optional `{"epoch":"…","offset":N}` field.
    fn position(&self, name: &str) -> Result<Option<Position>, OpError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            epoch: String,
            offset: u64,
        }
        let Some(raw) = self.members.get(name) else { return Ok(None) };
        let wire: Wire = serde_json::from_str(raw.get()).map_err(|_| {
            self.fail(
                ErrorCode::BadRequest,
                format!("field `{name}` must be {{\"epoch\": string, \"offset\": non-negative integer}}"),
            )
        })?;
        if wire.epoch.len() > MAX_ID_BYTES {
            return Err(self.fail(ErrorCode::BadRequest, format!("`{name}.epoch` is longer than {MAX_ID_BYTES} bytes")));
        }
        Ok(Some(Position { epoch: wire.epoch, offset: wire.offset }))
    }

    fn presence(&self) -> Result<Option<Box<RawValue>>, OpError> {
        match self.members.get("presence") {
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) if raw.get().len() > MAX_PRESENCE_BYTES => Err(self.fail(
                ErrorCode::TooBig,
                format!("field `presence` must be at most {MAX_PRESENCE_BYTES} bytes of JSON"),
            )),
            Some(raw) => Ok(Some(raw.to_owned())),
            None => Ok(None),
        }
    }
}

/// Shortens client text before quoting it back, so an error reply stays small.
fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTED_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `s` as a JSON string literal, clipped.
fn quote(s: &str) -> String {
    let mut out = String::new();
    push_json_str(&mut out, &clip(s));
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // JSON requires escaping only `"`, `\` and control characters, exactly what serde_json
    // escapes, so the common clean string is copied as-is with identical output.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a str cannot fail; an empty string still keeps the frame valid JSON.
        Err(_) => out.push_str("\"\""),
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut String, n: u64) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{n}");
}

fn push_id(out: &mut String, id: &RequestId) {
    match id {
        RequestId::Number(n) => push_u64(out, *n),
        RequestId::Text(s) => push_json_str(out, s),
    }
}

/// Starts a frame: `{"type":"<kind>"` and, when given, `,"id":<id>`.
fn open(kind: &str, id: Option<&RequestId>, extra: usize) -> String {
    let mut out = String::with_capacity(32 + extra);
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push('"');
    if let Some(id) = id {
        out.push_str(",\"id\":");
        push_id(&mut out, id);
    }
    out
}

/// Encodes the `welcome` frame sent first on every pub/sub connection.
pub(crate) fn welcome(
    conn_id: &str,
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_message_bytes: u64,
) -> String {
    let mut out = open("welcome", None, 128 + conn_id.len());
    out.push_str(",\"conn_id\":");
    push_json_str(&mut out, conn_id);
    out.push_str(",\"ping_interval_ms\":");
    push_u64(&mut out, ping_interval_ms);
    out.push_str(",\"pong_timeout_ms\":");
    push_u64(&mut out, pong_timeout_ms);
    out.push_str(",\"idle_timeout_ms\":");
    push_u64(&mut out, idle_timeout_ms);
    out.push_str(",\"max_message_bytes\":");
    push_u64(&mut out, max_message_bytes);
    out.push('}');
    out
}

/// Adds `"user"` and `"expires_at"` to a frame (before its closing brace).
pub(crate) fn with_identity(mut frame: String, user: &str, expires_at: Option<u64>) -> String {
    frame.pop();
    frame.push_str(",\"user\":");
    push_json_str(&mut frame, user);
    frame.push_str(",\"expires_at\":");
    match expires_at {
        Some(at) => push_u64(&mut frame, at),
        None => frame.push_str("null"),
    }
    frame.push('}');
    frame
}

/// Encodes `connected` (or `refreshed`): the token was accepted.
pub(crate) fn connected(kind: &str, id: Option<&RequestId>, user: &str, expires_at: Option<u64>) -> String {
    let mut out = open(kind, id, 64 + user.len());
    out.push('}');
    with_identity(out, user, expires_at)
}

/// A stream position and the publications a reply carries.
pub(crate) struct Stream<'a> {
    /// The stream's epoch.
    pub epoch: &'a str,
    /// Its latest offset.
    pub offset: u64,
    /// `(offset, data)` in order.
    pub publications: &'a [(u64, bytes::Bytes)],
}

fn push_stream(out: &mut String, stream: &Stream<'_>) {
    out.push_str(",\"epoch\":");
    push_json_str(out, stream.epoch);
    out.push_str(",\"offset\":");
    push_u64(out, stream.offset);
    out.push_str(",\"publications\":[");
    for (i, (offset, data)) in stream.publications.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"offset\":");
        push_u64(out, *offset);
        out.push_str(",\"data\":");
        out.push_str(std::str::from_utf8(data).unwrap_or("null"));
        out.push('}');
    }
    out.push(']');
}

/// Encodes `subscribed`: the subscription is live, with the stream's position when the
/// channel keeps history (`recovered` says whether `publications` holds all that was missed).
pub(crate) fn subscribed(id: Option<&RequestId>, channel: &str, stream: Option<(&Stream<'_>, bool, bool)>) -> String {
    let extra = stream.map_or(0, |(s, _, _)| s.publications.iter().map(|(_, d)| d.len() + 24).sum());
    let mut out = open("subscribed", id, 96 + channel.len() + extra);
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    if let Some((stream, recoverable, recovered)) = stream {
        push_stream(&mut out, stream);
        out.push_str(if recoverable { ",\"recoverable\":true" } else { ",\"recoverable\":false" });
        out.push_str(if recovered { ",\"recovered\":true" } else { ",\"recovered\":false" });
    }
    out.push('}');
    out
}

/// Encodes a `history` reply.
pub(crate) fn history(id: Option<&RequestId>, channel: &str, stream: &Stream<'_>) -> String {
    let extra: usize = stream.publications.iter().map(|(_, d)| d.len() + 24).sum();
    let mut out = open("history", id, 64 + channel.len() + extra);
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    push_stream(&mut out, stream);
    out.push('}');
    out
}

/// Encodes `unsubscribed`: the server ended a subscription; `code` says why (`resubscribe`:
/// subscribe again, recovering from the last offset).
pub(crate) fn unsubscribed(channel: &str, code: &str, message: &str) -> String {
    let mut out = open("unsubscribed", None, 64 + channel.len() + message.len());
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"code\":");
    push_json_str(&mut out, code);
    out.push_str(",\"message\":");
    push_json_str(&mut out, message);
    out.push('}');
    out
}

/// Separates a presence member's connection name from its user in one member string (a
/// connection name never holds a control character).
pub(crate) const USER_SEPARATOR: char = '\u{1f}';

/// The member string for connection `conn_id` of `user` (`""`: anonymous).
pub(crate) fn member_key(conn_id: &str, user: &str) -> String {
    if user.is_empty() { conn_id.to_owned() } else { format!("{conn_id}{USER_SEPARATOR}{user}") }
}

fn push_member(out: &mut String, member: &str, info: Option<&str>) {
    let (conn_id, user) = member.split_once(USER_SEPARATOR).unwrap_or((member, ""));
    out.push_str("{\"conn_id\":");
    push_json_str(out, conn_id);
    if !user.is_empty() {
        out.push_str(",\"user\":");
        push_json_str(out, user);
    }
    out.push_str(",\"info\":");
    out.push_str(info.unwrap_or("null"));
    out.push('}');
}

/// Encodes `join` or `leave` for `member` (a [`member_key`]) on `channel`.
pub(crate) fn join_leave(kind: &str, channel: &str, member: &str, info: Option<&str>) -> String {
    let mut out = open(kind, None, 64 + channel.len() + member.len() + info.map_or(4, str::len));
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"member\":");
    push_member(&mut out, member, info);
    out.push('}');
    out
}

/// Encodes an `ack` frame for a successful op that carried `id`.
pub(crate) fn ack(id: &RequestId) -> String {
    let mut out = open("ack", Some(id), 0);
    out.push('}');
    out
}

/// Encodes an `error` frame; `id` is omitted when `None`.
pub(crate) fn error(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    let mut out = open("error", id, 32 + message.len());
    out.push_str(",\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    push_json_str(&mut out, message);
    out.push('}');
    out
}

#[cfg(test)]
/// Encodes a `message` frame carrying `data` byte-for-byte.
pub(crate) fn message(channel: &str, seq: u64, data: &RawValue) -> String {
    message_from_raw(channel, seq, data.get())
}

/// Encodes a `message` frame from JSON text the caller has already validated (e.g. a `RawValue`'s text).
pub(crate) fn message_from_raw(channel: &str, seq: u64, data: &str) -> String {
    message_at(channel, seq, false, data)
}

/// Encodes a `message` frame; with `offset`, `seq` is the stream's offset and is sent as both.
pub(crate) fn message_at(channel: &str, seq: u64, offset: bool, data: &str) -> String {
    debug_assert!(serde_json::from_str::<&RawValue>(data).is_ok(), "message data must be valid JSON");
    let mut out = open("message", None, 64 + channel.len() + data.len());
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"seq\":");
    push_u64(&mut out, seq);
    if offset {
        out.push_str(",\"offset\":");
        push_u64(&mut out, seq);
    }
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

/// Encodes a `pong` frame; `id` is omitted when `None`.
pub(crate) fn pong(id: Option<&RequestId>) -> String {
    let mut out = open("pong", id, 0);
    out.push('}');
    out
}

/// Encodes a `presence` frame listing `(conn_id, info)` members; absent info is `null`.
pub(crate) fn presence(id: Option<&RequestId>, channel: &str, members: &[(String, Option<&RawValue>)]) -> String {
    let size: usize = members.iter().map(|(conn, info)| 24 + conn.len() + info.map_or(4, |i| i.get().len())).sum();
    let mut out = open("presence", id, 32 + channel.len() + size);
    out.push_str(",\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"members\":[");
    for (i, (member, info)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_member(&mut out, member, info.map(|raw| raw.get()));
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const MAX: usize = 128;

    fn ok(text: &str) -> ClientOp {
        match parse_op(text, MAX) {
            Ok(op) => op,
            Err(e) => panic!("{text} should parse, got {e}"),
        }
    }

    fn err(text: &str) -> OpError {
        match parse_op(text, MAX) {
            Ok(op) => panic!("{text} should fail, got {op:?}"),
            Err(e) => e,
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        match RawValue::from_string(text.to_owned()) {
            Ok(raw) => raw,
            Err(e) => panic!("bad test JSON {text}: {e}"),
        }
    }

    fn json(text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("not JSON: {text}: {e}"),
        }
    }

    fn num(n: u64) -> Option<RequestId> {
        Some(RequestId::Number(n))
    }

    fn text(s: &str) -> Option<RequestId> {
        Some(RequestId::Text(s.to_owned()))
    }

    #[test]
    fn subscribe_parses_with_and_without_presence() {
        let op = ok(r#"{"op":"subscribe","channel":"news","id":1,"presence":{"name":"ann", "tags":[1, 2]}}"#);
        let ClientOp::Subscribe { id, channel, presence: Some(info), .. } = &op else { panic!("{op:?}") };
        assert_eq!((id, channel.as_str()), (&num(1), "news"));
        assert_eq!(info.get(), r#"{"name":"ann", "tags":[1, 2]}"#);
        assert_eq!((op.id(), op.channel(), op.name()), (num(1).as_ref(), Some("news"), "subscribe"));

        for text in [r#"{"op":"subscribe","channel":"a:b"}"#, r#"{"channel":"a:b","presence":null,"op":"subscribe"}"#] {
            let op = ok(text);
            assert!(matches!(&op, ClientOp::Subscribe { id: None, channel, presence: None, .. } if channel == "a:b"));
        }
    }

    #[test]
    fn other_ops_parse() {
        let op = ok(r#"{"op":"unsubscribe","channel":"news","id":"u-2"}"#);
        assert!(matches!(&op, ClientOp::Unsubscribe { id, channel } if *id == text("u-2") && channel == "news"));

        let op = ok(r#"{"op":"publish","channel":"news","data":{"x":1},"id":3}"#);
        assert!(matches!(&op, ClientOp::Publish { id, channel, data }
            if *id == num(3) && channel == "news" && data.get() == r#"{"x":1}"#));

        let op = ok(r#"{"op":"ping","id":4}"#);
        assert!(matches!(op, ClientOp::Ping { id } if id == num(4)));
        assert!(matches!(ok(r#"{"op":"ping"}"#), ClientOp::Ping { id: None }));

        let op = ok(r#"{"op":"presence","channel":"news","id":5}"#);
        assert!(matches!(&op, ClientOp::Presence { id, channel } if *id == num(5) && channel == "news"));
        assert_eq!(op.name(), "presence");
    }

    #[test]
    fn publish_keeps_data_bytes_exactly() {
        let data = "{ \"b\" : [1,\n\t2.50, 1e3],  \"a\":\"\\u00e9\\n\" }";
        let text = format!("{{\"op\":\"publish\",\"channel\":\"c\",\"data\":  {data}  }}");
        let ClientOp::Publish { data: got, .. } = ok(&text) else { panic!("not a publish") };
        assert_eq!(got.get(), data);
        assert_eq!(
            message("c", 1, &got),
            format!("{{\"type\":\"message\",\"channel\":\"c\",\"seq\":1,\"data\":{data}}}")
        );

        for data in ["null", "0", "-1.5e-7", "\"\"", "[]", "false"] {
            let ClientOp::Publish { data: got, .. } = ok(&format!(r#"{{"op":"publish","channel":"c","data":{data}}}"#))
            else {
                panic!("not a publish")
            };
            assert_eq!(got.get(), data);
        }
    }

    #[test]
    fn ids_are_numbers_or_short_strings() {
        let max_id = "x".repeat(MAX_ID_BYTES);
        assert_eq!(ok(&format!(r#"{{"op":"ping","id":"{max_id}"}}"#)).id(), text(&max_id).as_ref());
        assert_eq!(ok(r#"{"op":"ping","id":18446744073709551615}"#).id(), num(u64::MAX).as_ref());
        assert_eq!(ok(r#"{"op":"ping","id":"a\"b\u00e9"}"#).id(), text("a\"b\u{e9}").as_ref());

        let long = format!(r#"{{"op":"ping","id":"{max_id}x"}}"#);
        let bad = [
            long.as_str(),
            r#"{"op":"ping","id":-1}"#,
            r#"{"op":"ping","id":1.5}"#,
            r#"{"op":"ping","id":1e2}"#,
            r#"{"op":"ping","id":18446744073709551616}"#,
            r#"{"op":"ping","id":null}"#,
            r#"{"op":"ping","id":true}"#,
            r#"{"op":"ping","id":[1]}"#,
            r#"{"op":"ping","id":{}}"#,
        ];
        for text in bad {
            let e = err(text);
            assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest), "{text}");
            assert_eq!(e.message, "field `id` must be a number or a string of at most 64 bytes");
        }
    }

    #[test]
    fn bad_json_has_no_id() {
        for text in
            ["", "  ", "{", r#"{"op":"ping","id":1"#, "[1]", "\"ping\"", "42", "null", r#"{"op":"ping"} x"#, "{'op':1}"]
        {
            let e = err(text);
            assert_eq!((e.id, e.code), (None, ErrorCode::BadJson), "{text}");
        }
        assert_eq!(err("[]").message, "message must be a JSON object");
        assert!(err("{").message.starts_with("invalid JSON: "));
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let op = parse_op(&format!(r#"{{"op":"publish","channel":"c","data":{deep}}}"#), MAX);
        assert!(matches!(op, Ok(ClientOp::Publish { data, .. }) if data.get() == deep));
        let op = parse_op(&format!(r#"{{"op":"publish","channel":"c","data":{}}}"#, &deep[..100_001]), MAX);
        assert!(matches!(op, Err(OpError { code: ErrorCode::BadJson, id: None, .. })));
    }

    #[test]
    fn errors_echo_the_id() {
        let long_op = "y".repeat(200);
        let cases: Vec<(String, Option<RequestId>, ErrorCode, String)> = vec![
            (r#"{"op":"subscrib","id":7}"#.into(), num(7), ErrorCode::UnknownOp, r#"unknown op "subscrib""#.into()),
            (
                format!(r#"{{"op":"{long_op}","id":"q"}}"#),
                text("q"),
                ErrorCode::UnknownOp,
                format!(r#"unknown op "{}...""#, &long_op[..64]),
            ),
            (r#"{"id":1}"#.into(), num(1), ErrorCode::BadRequest, "missing field `op`".into()),
            (r#"{"id":1,"op":3}"#.into(), num(1), ErrorCode::BadRequest, "field `op` must be a string".into()),
            (
                r#"{"op":"subscribe","id":"s1"}"#.into(),
                text("s1"),
                ErrorCode::BadRequest,
                "missing field `channel`".into(),
            ),
            (
                r#"{"op":"publish","channel":"c","id":2}"#.into(),
                num(2),
                ErrorCode::BadRequest,
                "missing field `data`".into(),
            ),
            (
                r#"{"op":"publish","channel":7,"data":1,"id":2}"#.into(),
                num(2),
                ErrorCode::BadRequest,
                "field `channel` must be a string".into(),
            ),
            (
                r#"{"op":"subscribe","chanel":"news","id":8}"#.into(),
                num(8),
                ErrorCode::BadRequest,
                "unknown field `chanel`, expected one of `op`, `id`, `channel`, `presence`, `token`, `recover`".into(),
            ),
            (
                r#"{"op":"ping","id":9,"channel":"c"}"#.into(),
                num(9),
                ErrorCode::BadRequest,
                "unknown field `channel`, expected one of `op`, `id`".into(),
            ),
            (
                r#"{"op":"unsubscribe","channel":"a","channel":"b","id":3}"#.into(),
                num(3),
                ErrorCode::BadRequest,
                "duplicate field `channel`".into(),
            ),
            (r#"{"op":"ping","id":1,"id":2}"#.into(), None, ErrorCode::BadRequest, "duplicate field `id`".into()),
            (
                r#"{"op":"subscribe","channel":"bad channel","id":4}"#.into(),
                num(4),
                ErrorCode::BadChannel,
                "channel name must be 1..=128 bytes of [A-Za-z0-9_.:-] (then optionally #user1,user2)".into(),
            ),
            (
                r#"{"op":"presence","channel":"","id":"p"}"#.into(),
                text("p"),
                ErrorCode::BadChannel,
                "channel name must be 1..=128 bytes of [A-Za-z0-9_.:-] (then optionally #user1,user2)".into(),
            ),
            (
                format!(r#"{{"op":"subscribe","channel":"c","id":5,"presence":"{}"}}"#, "z".repeat(MAX_PRESENCE_BYTES)),
                num(5),
                ErrorCode::TooBig,
                "field `presence` must be at most 1024 bytes of JSON".into(),
            ),
        ];
        for (input, id, code, message) in cases {
            assert_eq!(err(&input), OpError { id, code, message }, "{input}");
        }
    }

    #[test]
    fn presence_limit_counts_raw_bytes() {
        let fits = format!(r#"{{"op":"subscribe","channel":"c","presence":"{}"}}"#, "z".repeat(MAX_PRESENCE_BYTES - 2));
        assert!(
            matches!(ok(&fits), ClientOp::Subscribe { presence: Some(p), .. } if p.get().len() == MAX_PRESENCE_BYTES)
        );
    }

    #[test]
    fn channel_validation_table() {
        let long = "a".repeat(MAX);
        let cases: &[(&str, usize, bool)] = &[
            ("news", MAX, true),
            ("a", 1, true),
            ("ab", 1, false),
            ("", MAX, false),
            (&long, MAX, true),
            (&long, MAX - 1, false),
            ("A-Z_a.z:0-9", MAX, true),
            ("tenant:room.42", MAX, true),
            ("..", MAX, true),
            ("has space", MAX, false),
            ("slash/no", MAX, false),
            ("star*", MAX, false),
            ("caf\u{e9}", MAX, false),
            ("tab\t", MAX, false),
            ("nul\0", MAX, false),
            ("x", 0, false),
        ];
        for &(name, max, want) in cases {
            assert_eq!(valid_channel(name, max), want, "{name:?} max {max}");
        }
        assert!(matches!(
            parse_op(r#"{"op":"unsubscribe","channel":"abc"}"#, 2),
            Err(OpError { code: ErrorCode::BadChannel, .. })
        ));
    }

    #[test]
    fn error_codes_are_stable() {
        let strings: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            strings,
            [
                "bad_json",
                "unknown_op",
                "bad_request",
                "bad_channel",
                "too_many_subscriptions",
                "not_subscribed",
                "already_subscribed",
                "publish_forbidden",
                "rate_limited",
                "too_big",
                "not_authenticated",
                "already_connected",
                "forbidden",
                "bad_token",
                "epoch_changed",
                "history_unavailable"
            ]
        );
        let strikes: Vec<ErrorCode> = ErrorCode::ALL.into_iter().filter(|c| c.is_strike()).collect();
        assert_eq!(strikes, [ErrorCode::BadJson, ErrorCode::UnknownOp, ErrorCode::BadRequest, ErrorCode::BadChannel]);
        assert_eq!(ErrorCode::TooBig.to_string(), "too_big");
    }

    #[test]
    fn encoders_produce_exact_frames() {
        let info = raw(r#"{"name":"ann"}"#);
        let cases = [
            (
                welcome("n1-7", 25_000, 10_000, 300_000, 1_048_576),
                r#"{"type":"welcome","conn_id":"n1-7","ping_interval_ms":25000,"pong_timeout_ms":10000,"idle_timeout_ms":300000,"max_message_bytes":1048576}"#,
            ),
            (ack(&RequestId::Number(1)), r#"{"type":"ack","id":1}"#),
            (ack(&RequestId::Text("a\"b".into())), r#"{"type":"ack","id":"a\"b"}"#),
            (
                error(num(3).as_ref(), ErrorCode::BadChannel, "channel name must be 1..=128 bytes of [A-Za-z0-9_.:-]"),
                r#"{"type":"error","id":3,"code":"bad_channel","message":"channel name must be 1..=128 bytes of [A-Za-z0-9_.:-]"}"#,
            ),
            (
                error(None, ErrorCode::BadJson, "line\n\"quoted\"\\ \u{1}"),
                r#"{"type":"error","code":"bad_json","message":"line\n\"quoted\"\\ \u0001"}"#,
            ),
            (message("news", 17, &raw(r#"{"x":1}"#)), r#"{"type":"message","channel":"news","seq":17,"data":{"x":1}}"#),
            (message_from_raw("news", 1, "[1, 2]"), r#"{"type":"message","channel":"news","seq":1,"data":[1, 2]}"#),
            (pong(num(4).as_ref()), r#"{"type":"pong","id":4}"#),
            (pong(None), r#"{"type":"pong"}"#),
            (
                presence(num(5).as_ref(), "news", &[("n1-3".into(), Some(&info)), ("n2-1".into(), None)]),
                r#"{"type":"presence","id":5,"channel":"news","members":[{"conn_id":"n1-3","info":{"name":"ann"}},{"conn_id":"n2-1","info":null}]}"#,
            ),
            (presence(None, "c", &[]), r#"{"type":"presence","channel":"c","members":[]}"#),
            (
                OpError::new(text("t"), ErrorCode::RateLimited, "slow down").to_frame(),
                r#"{"type":"error","id":"t","code":"rate_limited","message":"slow down"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
            // Values, not text, are compared because serde_json's default map sorts keys.
            let value = json(&got);
            assert_eq!(json(&value.to_string()), value);
            assert!(value.get("type").is_some_and(Value::is_string));
        }
    }

    #[test]
    fn encoders_escape_unusual_strings() {
        let weird = "\u{0}\u{1f}\"\\/\u{e9}\u{1f600}\u{7f}";
        let frame = welcome(weird, 1, 2, 0, 3);
        assert_eq!(json(&frame)["conn_id"], weird);
        // A member string is a connection name, the separator, then its user.
        let member = member_key("n1-0-3.1", weird);
        let frame = presence(text(weird).as_ref(), weird, &[(member, None)]);
        let v = json(&frame);
        assert_eq!([&v["id"], &v["channel"], &v["members"][0]["user"]], [weird; 3]);
        assert_eq!(v["members"][0]["conn_id"], "n1-0-3.1");
        assert_eq!(json(&error(None, ErrorCode::TooBig, weird))["message"], weird);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "\u{e9}".repeat(40);
        let clipped = clip(&s);
        assert!(clipped.ends_with("..."));
        assert_eq!(clipped.len(), 64 + 3);
        assert_eq!(clip("short"), "short");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Dyadic fractions have short exact decimal forms, so they parse back bit-exactly
            // without serde_json's `float_roundtrip` feature.
            (any::<i32>(), 0u32..8).prop_map(|(m, e)| Value::from(f64::from(m) / f64::from(1u32 << e))),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[derive(Deserialize)]
    struct MessageFrame {
        #[serde(rename = "type")]
        kind: String,
        channel: String,
        seq: u64,
        data: Box<RawValue>,
    }

    proptest! {
        #[test]
        fn parse_op_never_panics(s in any::<String>()) {
            let _ = parse_op(&s, MAX);
        }

        #[test]
        fn parse_op_never_panics_on_near_misses(
            s in r#"\{("(op|id|channel|data|presence|x)":("(subscribe|unsubscribe|publish|ping|presence|news|)"|[0-9.e-]{0,4}|null|\{\}|\[\]|"[^"]{0,8}"),?){0,5}\}"#
        ) {
            match parse_op(&s, 8) {
                Ok(op) => prop_assert!(op.channel().is_none_or(|c| valid_channel(c, 8))),
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }

        #[test]
        fn published_data_round_trips(value in json_value(), pretty in any::<bool>(), seq in any::<u64>()) {
            let data = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
            let data = data.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let op = parse_op(&format!(r#"{{"op":"publish","channel":"ch","data":{data}}}"#), MAX)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ClientOp::Publish { data: raw, .. } = op else { return Err(TestCaseError::fail("not a publish")) };
            prop_assert_eq!(raw.get(), data.as_str());

            let frame = message("ch", seq, &raw);
            let parsed: MessageFrame = serde_json::from_str(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!((parsed.kind.as_str(), parsed.channel.as_str(), parsed.seq), ("message", "ch", seq));
            prop_assert_eq!(parsed.data.get(), data.as_str());
            let back: Value = serde_json::from_str(parsed.data.get()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, value);
        }
    }
}
