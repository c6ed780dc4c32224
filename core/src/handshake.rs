//! The HTTP/1.1 side of the server: parsing a request head, validating a WebSocket upgrade
//! (RFC 6455 §4.2.1) and writing the `101` or an HTTP error.

use std::fmt::Write as _;

use bytes::Bytes;

/// Headers we read at most; more is refused with 431 rather than parsed.
const MAX_HEADERS: usize = 64;

/// A parsed request head, owning the few fields the hub acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestHead {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string, without `?` (empty when none).
    pub query: String,
    /// True for HTTP/1.1 (false for 1.0).
    pub http11: bool,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Length of the head in bytes, including the blank line.
    pub head_len: usize,
}

impl RequestHead {
    /// The first value of header `name` (give it lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (give it lower-case).
    pub(crate) fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// True when header `name` holds `token` in its comma-separated list (case-insensitive).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// True when the client asks for a WebSocket upgrade (validated later).
    pub(crate) fn is_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }
}

/// Why a request head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP: answered with 400.
    Malformed(&'static str),
    /// Too many headers: answered with 431.
    TooManyHeaders,
}

/// Parses a request head from `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("malformed HTTP request")),
    };
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parsed = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        http11: version == 1,
        headers: Vec::with_capacity(request.headers.len()),
        head_len,
    };
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(HeadError::Malformed("header value is not UTF-8"));
        };
        parsed.headers.push((header.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(parsed))
}

/// An HTTP response the core writes: status, extra headers and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Extra headers (beyond Content-Type, Content-Length and Connection).
    pub headers: Vec<(&'static str, String)>,
    /// Content type of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A plain-text error whose body names what was wrong.
    pub(crate) fn error(status: u16, reason: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{reason}\n").into_bytes(),
        }
    }

    /// A JSON response.
    pub(crate) fn json(status: u16, body: String) -> Self {
        Self { status, headers: Vec::new(), content_type: "application/json", body: body.into_bytes() }
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises the response; the connection is closed after it, so it says so.
    pub(crate) fn to_bytes(&self) -> Bytes {
        self.encode("close")
    }

    /// The response on a connection that stays open for the next request.
    pub(crate) fn to_bytes_kept_alive(&self) -> Bytes {
        self.encode("keep-alive")
    }

    fn encode(&self, connection: &str) -> Bytes {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            self.content_type,
            self.body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        Bytes::from(bytes)
    }
}

/// The standard reason phrase of the statuses we send.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// What an upgrade request asked for, once it passed RFC 6455 §4.2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Key`.
    pub key: String,
    /// Subprotocols the client offered, in its order.
    pub protocols: Vec<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
}

/// Checks the upgrade rules of RFC 6455 §4.2.1; an error is the response to send.
pub(crate) fn validate_upgrade(head: &RequestHead) -> Result<Upgrade, HttpResponse> {
    if head.method != "GET" {
        return Err(HttpResponse::error(405, "WebSocket upgrade requires GET").with_header("Allow", "GET"));
    }
    if !head.http11 {
        return Err(HttpResponse::error(400, "WebSocket upgrade requires HTTP/1.1"));
    }
    if head.header("host").is_none() {
        return Err(HttpResponse::error(400, "missing Host header"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(HttpResponse::error(400, "Connection header must contain \"Upgrade\""));
    }
    match head.header("sec-websocket-version") {
        Some("13") => {}
        Some(_) | None => {
            return Err(HttpResponse::error(426, "unsupported WebSocket version: only 13 is supported")
                .with_header("Sec-WebSocket-Version", "13"));
        }
    }
    let mut keys = head.header_values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key) => key.to_owned(),
        (Some(_), Some(_)) => return Err(HttpResponse::error(400, "more than one Sec-WebSocket-Key")),
        _ => return Err(HttpResponse::error(400, "missing or malformed Sec-WebSocket-Key")),
    };
    let protocols = head
        .header_values("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    Ok(Upgrade { key, protocols, origin: head.header("origin").map(str::to_owned) })
}

/// A key is the base64 form of 16 bytes: 22 base64 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes[22..] == *b"=="
        && bytes[..22].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Picks the first of the server's `supported` subprotocols that the client offered.
pub(crate) fn select_protocol<'a>(supported: &'a [String], offered: &[String]) -> Option<&'a str> {
    supported.iter().find(|s| offered.iter().any(|o| o == *s)).map(String::as_str)
}

/// The `101 Switching Protocols` response.
pub(crate) fn accept_response(key: &str, protocol: Option<&str>, extensions: Option<&str>) -> Bytes {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = protocol {
        let _ = write!(head, "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    if let Some(extensions) = extensions {
        let _ = write!(head, "Sec-WebSocket-Extensions: {extensions}\r\n");
    }
    head.push_str("\r\n");
    Bytes::from(head)
}
