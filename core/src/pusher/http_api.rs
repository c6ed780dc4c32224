//! The HTTP API (`/apps/{id}/…`), parsed: which endpoint a request is for ([`route`]), its query
//! string ([`parse_query`]), the bodies of the two trigger endpoints ([`parse_trigger`],
//! [`parse_batch`]) and the parameters of the channel queries ([`parse_channels_query`],
//! [`parse_channel_query`]); and the JSON answers, built from counts the hub supplies. The
//! request's signature is `api_auth`'s job; nothing here acts on a request.
//!
//! Every refusal is an [`ApiError`]: a status (400 naming the bad field, 404, 405, 413) and a
//! message that says what is wrong. Parsing never panics and its work is linear in the input.

use std::fmt;

use serde_json::value::RawValue;

use super::json::{self, ObjectError, clip, push_str, push_u64};
use super::names::{self, ChannelType};
use super::protocol::{Limits, UserId};

/// Most query parameters a request may carry (the SDKs send at most seven).
pub(crate) const MAX_QUERY_PARAMS: usize = 64;

/// The endpoints, each with the app id from its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `POST /apps/{id}/events`: trigger one event ([`parse_trigger`]).
    Events {
        /// The app id, as in the path.
        app_id: &'a str,
    },
    /// `POST /apps/{id}/batch_events`: trigger several ([`parse_batch`]).
    BatchEvents {
        /// The app id, as in the path.
        app_id: &'a str,
    },
    /// `GET /apps/{id}/channels`: the occupied channels ([`parse_channels_query`]).
    Channels {
        /// The app id, as in the path.
        app_id: &'a str,
    },
    /// `GET /apps/{id}/channels/{name}`: one channel ([`parse_channel_query`]).
    Channel {
        /// The app id, as in the path.
        app_id: &'a str,
        /// A valid channel name, percent-decoded.
        channel: String,
    },
    /// `GET /apps/{id}/channels/{name}/users`: a presence channel's users.
    Users {
        /// The app id, as in the path.
        app_id: &'a str,
        /// A valid presence channel name, percent-decoded.
        channel: String,
    },
}

impl<'a> Route<'a> {
    /// The app the request is for.
    pub(crate) fn app_id(&self) -> &'a str {
        match self {
            Self::Events { app_id }
            | Self::BatchEvents { app_id }
            | Self::Channels { app_id }
            | Self::Channel { app_id, .. }
            | Self::Users { app_id, .. } => app_id,
        }
    }
}

/// A refused request: its status, the field at fault and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: u16,
    field: String,
    message: String,
}

impl ApiError {
    /// A refusal with `status`, blaming `field`.
    pub(crate) fn new(status: u16, field: &str, message: &str) -> Self {
        Self { status, field: field.to_owned(), message: message.to_owned() }
    }

    /// 400: `field` is wrong, as `problem` says.
    fn bad(field: &str, problem: impl fmt::Display) -> Self {
        Self { status: 400, field: field.to_owned(), message: format!("`{field}` {problem}") }
    }

    /// The HTTP status to answer with.
    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    /// The field (or `path`, `method`, `body`, `query`) at fault.
    #[cfg(test)]
    pub(crate) fn field(&self) -> &str {
        &self.field
    }

    /// The answer's body: `{"error":"…","code":400}` (the shape soketi answers with).
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::with_capacity(24 + json::quoted_len(&self.message));
        out.push_str("{\"error\":");
        push_str(&mut out, &self.message);
        out.push_str(",\"code\":");
        push_u64(&mut out, u64::from(self.status));
        out.push('}');
        out
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Which endpoint `method` and `path` (the request target before `?`, as received) are for.
///
/// A path under `/apps/` that is no endpoint is a 404; a known one with another method a
/// 405. A channel name in the path is percent-decoded (so `%23server-to-user-1` reaches
/// `#server-to-user-1`) and must be valid (400).
pub(crate) fn route<'a>(method: &str, path: &'a str, limits: &Limits) -> Result<Route<'a>, ApiError> {
    let not_found = || ApiError {
        status: 404,
        field: "path".to_owned(),
        message: format!("no such endpoint: {}", json::quote(&clip(path))),
    };
    let rest = path.strip_prefix("/apps/").ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.splitn(5, '/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    let (allowed, route) = match segments[..] {
        [app_id, "events"] => ("POST", Route::Events { app_id }),
        [app_id, "batch_events"] => ("POST", Route::BatchEvents { app_id }),
        [app_id, "channels"] => ("GET", Route::Channels { app_id }),
        [app_id, "channels", name] => ("GET", Route::Channel { app_id, channel: path_channel(name, limits)? }),
        [app_id, "channels", name, "users"] => {
            let channel = path_channel(name, limits)?;
            if !ChannelType::of(&channel).is_presence() {
                return Err(ApiError::bad("channel_name", "must be a presence channel to list its users"));
            }
            ("GET", Route::Users { app_id, channel })
        }
        _ => return Err(not_found()),
    };
    if method != allowed {
        return Err(ApiError {
            status: 405,
            field: "method".to_owned(),
            message: format!("{} {} is not allowed; use {allowed}", clip(method), clip(path)),
        });
    }
    Ok(route)
}

fn path_channel(segment: &str, limits: &Limits) -> Result<String, ApiError> {
    let name = percent_decode(segment).ok_or_else(|| ApiError::bad("channel_name", "has invalid percent-encoding"))?;
    match names::validate_channel_name(&name, limits.max_channel_name_bytes) {
        Ok(_) => Ok(name),
        Err(e) => Err(ApiError::bad("channel_name", e)),
    }
}

/// The query string's parameters, percent-decoded, in order (for
/// `api_auth::verify_api_request`, which signs them decoded, and for the endpoints).
///
/// `+` stays `+`: the official SDKs never encode a space as `+` (pusher-http-node and
/// pusher-http-python join the pairs without escaping anything, pusher-http-php lets Guzzle
/// encode them RFC 3986 style, a space as `%20`), and the values they send (keys, times,
/// hex digests, `info` lists, channel-name prefixes) hold no space. A parameter without `=`
/// has an empty value; empty pieces (`a=1&&b=2`) are skipped.
pub(crate) fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let pieces = query.split('&').filter(|piece| !piece.is_empty());
    if pieces.clone().count() > MAX_QUERY_PARAMS {
        return Err(ApiError::bad("query", format_args!("has more than {MAX_QUERY_PARAMS} parameters")));
    }
    pieces
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            match (percent_decode(key), percent_decode(value)) {
                (Some(key), Some(value)) => Ok((key, value)),
                _ => Err(ApiError::bad(
                    "query",
                    format_args!("parameter {} has invalid percent-encoding", json::quote(&clip(piece))),
                )),
            }
        })
        .collect()
}

/// `text` with every `%XX` decoded; `None` for a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex_digit(*bytes.get(i + 1)?)?;
            let low = hex_digit(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The channel attributes a request asks for (`info=user_count,subscription_count`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Info {
    /// Distinct users, on presence channels.
    pub(crate) user_count: bool,
    /// Connections subscribed.
    pub(crate) subscription_count: bool,
}

impl Info {
    /// Whether any attribute was asked for.
    pub(crate) fn any(self) -> bool {
        self.user_count || self.subscription_count
    }

    /// Reads a comma list; `field` names it in a refusal.
    fn parse(list: &str, field: &str) -> Result<Self, ApiError> {
        let mut info = Self::default();
        for attribute in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attribute {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                other => {
                    return Err(ApiError::bad(
                        field,
                        format_args!(
                            "asks for {}; the attributes are user_count and subscription_count",
                            json::quote(&clip(other))
                        ),
                    ));
                }
            }
        }
        Ok(info)
    }
}

/// One event to publish, from `POST /apps/{id}/events` or an item of `batch_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trigger {
    /// The event name: within the limit, not `pusher:*` or `pusher_internal:*`.
    pub(crate) name: String,
    /// The data string, exactly as posted (sent to subscribers as is), within
    /// `max_event_bytes`.
    pub(crate) data: String,
    /// Valid channel names, at least one, at most `max_channels_per_event`, each once.
    pub(crate) channels: Vec<String>,
    /// A connection not to deliver to (`^\d+\.\d+$`).
    pub(crate) socket_id: Option<String>,
    /// Attributes to answer with, per channel.
    pub(crate) info: Info,
}

/// Parses the body of `POST /apps/{id}/events`:
/// `{"name", "data" (a string), "channel" | "channels", "socket_id"?, "info"?}`.
///
/// Unknown fields are ignored; `null` is as good as absent for the optional ones.
pub(crate) fn parse_trigger(body: &[u8], limits: &Limits) -> Result<Trigger, ApiError> {
    let text = body_text(body)?;
    let fields = json::pick(text, EVENT_FIELDS).map_err(|e| body_error("", e))?;
    read_event(fields, "", false, limits)
}

/// Parses the body of `POST /apps/{id}/batch_events`: `{"batch": [event, …]}`, at most
/// `max_batch_events` of them, each as for [`parse_trigger`] but naming one `channel`.
pub(crate) fn parse_batch(body: &[u8], limits: &Limits) -> Result<Vec<Trigger>, ApiError> {
    let text = body_text(body)?;
    let [batch] = json::pick(text, ["batch"]).map_err(|e| body_error("", e))?;
    let batch = batch.filter(|raw| !json::is_null(raw)).ok_or_else(|| ApiError::bad("batch", "is missing"))?;
    let items = array(batch).ok_or_else(|| ApiError::bad("batch", "must be an array of events"))?;
    if items.len() > limits.max_batch_events {
        return Err(ApiError::bad(
            "batch",
            format_args!("holds {} events (at most {})", items.len(), limits.max_batch_events),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("batch[{i}].");
            let fields = json::pick(item.get(), EVENT_FIELDS).map_err(|e| body_error(&prefix, e))?;
            read_event(fields, &prefix, true, limits)
        })
        .collect()
}

const EVENT_FIELDS: [&str; 6] = ["name", "data", "channel", "channels", "socket_id", "info"];

fn body_text(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|_| ApiError::bad("body", "is not UTF-8"))
}

/// A refusal of an object, `prefix` saying which (`""` for the body, `batch[2].` for an item).
fn body_error(prefix: &str, e: ObjectError) -> ApiError {
    match e {
        ObjectError::Duplicate(name) => ApiError::bad(&format!("{prefix}{name}"), "appears more than once"),
        e => {
            let what = if prefix.is_empty() { "body".to_owned() } else { prefix.trim_end_matches('.').to_owned() };
            ApiError::bad(&what, e)
        }
    }
}

/// A raw JSON array's elements, unparsed; `None` when it is not an array.
fn array(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// A present, non-null field.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| !json::is_null(raw))
}

fn read_event(
    [name, data, channel, channels, socket_id, info]: [Option<&RawValue>; 6],
    prefix: &str,
    batch: bool,
    limits: &Limits,
) -> Result<Trigger, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let string = |raw: Option<&RawValue>, name: &str| -> Result<Option<String>, ApiError> {
        match present(raw) {
            None => Ok(None),
            Some(raw) => json::string(raw).map(Some).ok_or_else(|| ApiError::bad(&field(name), "must be a string")),
        }
    };

    let name = string(name, "name")?.ok_or_else(|| ApiError::bad(&field("name"), "is missing"))?;
    names::validate_event_name(&name, limits.max_event_name_bytes).map_err(|e| ApiError::bad(&field("name"), e))?;
    if names::is_reserved_event(&name) {
        return Err(ApiError::bad(&field("name"), "must not start with pusher: or pusher_internal: (reserved)"));
    }

    let data = match present(data) {
        None => return Err(ApiError::bad(&field("data"), "is missing")),
        Some(raw) => json::string(raw)
            .ok_or_else(|| ApiError::bad(&field("data"), "must be a string (JSON-encode an object first)"))?,
    };
    if data.len() > limits.max_event_bytes {
        return Err(ApiError {
            status: 413,
            field: field("data"),
            message: format!("`{}` is {} bytes (at most {})", field("data"), data.len(), limits.max_event_bytes),
        });
    }

    let channels = match (present(channel), present(channels)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(&field("channels"), "and `channel` are both given; give one of them"));
        }
        (None, Some(_)) if batch => {
            return Err(ApiError::bad(&field("channels"), "is not allowed: a batch event names one `channel`"));
        }
        (Some(raw), None) => vec![event_channel(raw, &field("channel"), limits)?],
        (None, Some(raw)) => {
            let list = array(raw).ok_or_else(|| ApiError::bad(&field("channels"), "must be an array of strings"))?;
            if list.is_empty() {
                return Err(ApiError::bad(&field("channels"), "must name at least one channel"));
            }
            if list.len() > limits.max_channels_per_event {
                return Err(ApiError::bad(
                    &field("channels"),
                    format_args!("names {} channels (at most {})", list.len(), limits.max_channels_per_event),
                ));
            }
            let mut channels: Vec<String> = Vec::with_capacity(list.len());
            for (i, raw) in list.into_iter().enumerate() {
                let channel = event_channel(raw, &format!("{prefix}channels[{i}]"), limits)?;
                if !channels.contains(&channel) {
                    channels.push(channel);
                }
            }
            channels
        }
        (None, None) => {
            let which = if batch { "channel" } else { "channels" };
            return Err(ApiError::bad(&field(which), "is missing: name the channel(s) to publish to"));
        }
    };

    let socket_id = string(socket_id, "socket_id")?;
    if let Some(id) = &socket_id
        && !names::is_socket_id(id)
    {
        return Err(ApiError::bad(&field("socket_id"), "must look like \"123.456\" (digits.digits)"));
    }
    let info = match string(info, "info")? {
        Some(list) => Info::parse(&list, &field("info"))?,
        None => Info::default(),
    };
    Ok(Trigger { name, data, channels, socket_id, info })
}

fn event_channel(raw: &RawValue, field: &str, limits: &Limits) -> Result<String, ApiError> {
    let name = json::string(raw).ok_or_else(|| ApiError::bad(field, "must be a string"))?;
    match names::validate_channel_name(&name, limits.max_channel_name_bytes) {
        Ok(_) => Ok(name),
        Err(e) => Err(ApiError::bad(field, e)),
    }
}

/// What `GET /apps/{id}/channels` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChannelsQuery {
    /// Only channels whose name starts with this (`filter_by_prefix`).
    pub(crate) prefix: Option<String>,
    /// Attributes to answer with, per channel.
    pub(crate) info: Info,
}

impl ChannelsQuery {
    /// Whether `channel` passes the filter.
    pub(crate) fn matches(&self, channel: &str) -> bool {
        self.prefix.as_deref().is_none_or(|prefix| channel.starts_with(prefix))
    }
}

/// Reads the parameters of `GET /apps/{id}/channels` from the decoded query. `user_count`
/// needs a `filter_by_prefix` starting with `presence-` (a 400 otherwise, as the HTTP API
/// reference says). The first of a repeated parameter counts (`api_auth` refuses repeats).
pub(crate) fn parse_channels_query<K: AsRef<str>, V: AsRef<str>>(query: &[(K, V)]) -> Result<ChannelsQuery, ApiError> {
    let prefix = param(query, "filter_by_prefix").filter(|p| !p.is_empty()).map(str::to_owned);
    let info = param(query, "info").map_or(Ok(Info::default()), |list| Info::parse(list, "info"))?;
    if info.user_count && !prefix.as_deref().is_some_and(|p| p.starts_with("presence-")) {
        return Err(ApiError::bad("info", "asks for user_count, which needs filter_by_prefix=presence-"));
    }
    Ok(ChannelsQuery { prefix, info })
}

/// Reads the parameters of `GET /apps/{id}/channels/{channel}`: `user_count` only on a
/// presence channel (a 400 otherwise).
pub(crate) fn parse_channel_query<K: AsRef<str>, V: AsRef<str>>(
    channel: &str,
    query: &[(K, V)],
) -> Result<Info, ApiError> {
    let info = param(query, "info").map_or(Ok(Info::default()), |list| Info::parse(list, "info"))?;
    if info.user_count && !ChannelType::of(channel).is_presence() {
        return Err(ApiError::bad("info", "asks for user_count, which only presence channels have"));
    }
    Ok(info)
}

fn param<'q, K: AsRef<str>, V: AsRef<str>>(query: &'q [(K, V)], name: &str) -> Option<&'q str> {
    query.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v.as_ref())
}

/// A channel's counts, as the hub knows them cluster-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChannelCounts {
    /// Connections subscribed; 0 means the channel is not occupied.
    pub(crate) subscription_count: u64,
    /// Distinct users (presence channels).
    pub(crate) user_count: u64,
}

/// The answer to a trigger: `{}`, or with `info` the attributes of each channel,
/// `{"channels":{"presence-x":{"user_count":1},"c":{"subscription_count":1}}}` (`user_count`
/// only for presence channels).
pub(crate) fn trigger_response<'a>(info: Info, channels: impl IntoIterator<Item = (&'a str, ChannelCounts)>) -> String {
    if !info.any() {
        return "{}".to_owned();
    }
    let mut out = String::from("{\"channels\":{");
    for (i, (channel, counts)) in channels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, channel);
        out.push(':');
        push_attributes(&mut out, None, info, channel, counts);
    }
    out.push_str("}}");
    out
}

/// The answer to a batch: `{}` when no event asked for `info`, else one object of attributes
/// per event, in order: `{"batch":[{"user_count":1},{}]}`.
pub(crate) fn batch_response(events: &[(Info, &str, ChannelCounts)]) -> String {
    if !events.iter().any(|(info, ..)| info.any()) {
        return "{}".to_owned();
    }
    let mut out = String::from("{\"batch\":[");
    for (i, &(info, channel, counts)) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_attributes(&mut out, None, info, channel, counts);
    }
    out.push_str("]}");
    out
}

/// The answer to `GET /apps/{id}/channels`: the occupied ones among `channels` (those with a
/// subscription), each with the attributes asked for: `{"channels":{"c":{}}}`.
pub(crate) fn channels_response<'a>(
    info: Info,
    channels: impl IntoIterator<Item = (&'a str, ChannelCounts)>,
) -> String {
    let mut out = String::from("{\"channels\":{");
    let mut first = true;
    for (channel, counts) in channels.into_iter().filter(|(_, counts)| counts.subscription_count > 0) {
        if !first {
            out.push(',');
        }
        first = false;
        push_str(&mut out, channel);
        out.push(':');
        push_attributes(&mut out, None, info, channel, counts);
    }
    out.push_str("}}");
    out
}

/// The answer to `GET /apps/{id}/channels/{channel}`:
/// `{"occupied":true,"user_count":1,"subscription_count":2}`, the counts only when asked for.
pub(crate) fn channel_response(info: Info, channel: &str, counts: ChannelCounts) -> String {
    let mut out = String::new();
    let occupied = if counts.subscription_count > 0 { "\"occupied\":true" } else { "\"occupied\":false" };
    push_attributes(&mut out, Some(occupied), info, channel, counts);
    out
}

/// The answer to `GET /apps/{id}/channels/{channel}/users`: `{"users":[{"id":"1"},{"id":2}]}`,
/// each id in the JSON type it came in.
pub(crate) fn users_response<'a>(users: impl IntoIterator<Item = &'a UserId>) -> String {
    let mut out = String::from("{\"users\":[");
    for (i, id) in users.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        id.push_json(&mut out);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{first?,"user_count":…,"subscription_count":…}` with what `info` asks for and applies to
/// `channel`.
fn push_attributes(out: &mut String, first: Option<&str>, info: Info, channel: &str, counts: ChannelCounts) {
    out.push('{');
    let mut empty = true;
    let mut field = |out: &mut String, text: &str| {
        if !empty {
            out.push(',');
        }
        empty = false;
        out.push_str(text);
    };
    if let Some(text) = first {
        field(out, text);
    }
    if info.user_count && ChannelType::of(channel).is_presence() {
        field(out, "\"user_count\":");
        push_u64(out, counts.user_count);
    }
    if info.subscription_count {
        field(out, "\"subscription_count\":");
        push_u64(out, counts.subscription_count);
    }
    out.push('}');
}

#[cfg(test)]
mod tests;
