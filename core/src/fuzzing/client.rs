//! The harness's WebSocket client: the frames and requests it sends, and a reader of the
//! server's byte stream that panics on anything a correct server would not send.

use std::collections::BTreeMap;
use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::deflate::{DeflateParams, Inflater};

/// Close codes the server sends of its own accord (docs/PROTOCOL.md); it may also echo any
/// valid code the client sent (RFC 6455 §5.5.1).
const SERVER_CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];

/// The mask every harness client uses; a fixed one keeps corpus files reproducible.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame with first header byte `first` (FIN, RSV, opcode), masked with `mask`.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An upgrade request for `path` with extra header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// What a client reads from the server, one unit at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerItem {
    /// An HTTP response (a `101` has no body; frames follow it).
    Response {
        /// Status code.
        status: u16,
        /// The head as text.
        head: String,
        /// The body.
        body: Vec<u8>,
    },
    /// A whole data message, inflated.
    Message {
        /// True for text.
        text: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A pong and its payload.
    Pong(Vec<u8>),
    /// A close frame and its code, if any.
    Close(Option<u16>),
}

#[derive(Debug)]
enum StreamState {
    Head,
    Body { status: u16, head: String, len: usize },
    Frames,
    Done,
}

/// A client's reader of the server's byte stream, fed any chunking; it panics on anything a
/// correct server would not send (malformed frames, masked frames, data after close).
#[derive(Debug)]
pub struct ServerStream {
    buf: Vec<u8>,
    state: StreamState,
    inflater: Option<Inflater>,
}

impl Default for ServerStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerStream {
    /// A reader expecting an HTTP response first.
    pub fn new() -> Self {
        Self { buf: Vec::new(), state: StreamState::Head, inflater: None }
    }

    /// True once the `101` agreed permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.inflater.is_some()
    }

    /// True once a close frame or a non-101 response was read: nothing more may come.
    pub fn is_done(&self) -> bool {
        matches!(self.state, StreamState::Done)
    }

    /// Reads `bytes` and returns every unit completed by them.
    pub fn read(&mut self, bytes: &[u8]) -> Vec<ServerItem> {
        let mut items = Vec::new();
        self.push(bytes, &mut items);
        items
    }

    /// Reads `bytes`, appending every unit completed by them to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ServerItem>) {
        self.buf.extend_from_slice(bytes);
        loop {
            match &self.state {
                StreamState::Head => {
                    let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
                    let head = match std::str::from_utf8(&self.buf[..end + 4]) {
                        Ok(head) => head.to_owned(),
                        Err(_) => panic!("response head is not UTF-8: {:?}", &self.buf[..end + 4]),
                    };
                    self.buf.drain(..end + 4);
                    let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
                    let Some(status) = status.filter(|_| head.starts_with("HTTP/1.1 ")) else {
                        panic!("bad status line: {head:?}");
                    };
                    if status == 101 {
                        let deflate = head.lines().any(|l| {
                            l.to_ascii_lowercase().starts_with("sec-websocket-extensions: permessage-deflate")
                        });
                        if deflate {
                            let params = DeflateParams { client_no_context_takeover: true, ..DeflateParams::default() };
                            self.inflater = Some(Inflater::new(&params));
                        }
                        out.push(ServerItem::Response { status, head, body: Vec::new() });
                        self.state = StreamState::Frames;
                    } else {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        let Some(len) = len else { panic!("response without Content-Length: {head:?}") };
                        self.state = StreamState::Body { status, head, len };
                    }
                }
                StreamState::Body { status, head, len } => {
                    if self.buf.len() < *len {
                        return;
                    }
                    let body = self.buf.drain(..*len).collect();
                    // A kept-alive connection may answer a next (pipelined) request.
                    let kept_alive = head.lines().any(|l| l == "Connection: keep-alive");
                    out.push(ServerItem::Response { status: *status, head: head.clone(), body });
                    self.state = if kept_alive { StreamState::Head } else { StreamState::Done };
                }
                StreamState::Frames => match self.frame() {
                    Some(item) => {
                        if matches!(item, ServerItem::Close(_)) {
                            self.state = StreamState::Done;
                        }
                        out.push(item);
                    }
                    None => return,
                },
                StreamState::Done => {
                    assert!(
                        self.buf.is_empty(),
                        "server sent {} bytes after its last response or close: {:?}",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(64)])
                    );
                    return;
                }
            }
        }
    }

    fn frame(&mut self) -> Option<ServerItem> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return None,
            Err(e) => panic!("server sent a malformed frame header: {e}"),
        };
        let start = cursor.position() as usize;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if self.buf.len() < end {
            return None;
        }
        let payload: Vec<u8> = self.buf[start..end].to_vec();
        self.buf.drain(..end);
        assert!(header.mask.is_none(), "server frames are never masked");
        assert!(!header.rsv2 && !header.rsv3, "server set RSV2/RSV3");
        assert!(header.is_final, "the core sends every message in one frame");
        let data_frame = matches!(header.opcode, OpCode::Data(_));
        assert!(!header.rsv1 || (data_frame && self.inflater.is_some()), "RSV1 without permessage-deflate");
        if !data_frame {
            assert!(payload.len() <= 125, "control frame of {} bytes", payload.len());
        }
        Some(match header.opcode {
            OpCode::Data(Data::Continue) => panic!("the core never sends continuation frames"),
            OpCode::Data(Data::Reserved(n)) | OpCode::Control(Control::Reserved(n)) => panic!("reserved opcode {n}"),
            OpCode::Data(kind) => {
                let data = match (&mut self.inflater, header.rsv1) {
                    (Some(inflater), true) => {
                        let mut out = Vec::new();
                        let limit = usize::MAX / 2;
                        let inflated =
                            inflater.push(&payload, &mut out, limit).and_then(|()| inflater.finish(&mut out, limit));
                        assert!(inflated.is_ok(), "server sent a corrupt compressed message");
                        out
                    }
                    _ => payload,
                };
                let text = kind == Data::Text;
                assert!(!text || std::str::from_utf8(&data).is_ok(), "server sent a text message that is not UTF-8");
                ServerItem::Message { text, data }
            }
            OpCode::Control(Control::Ping) => ServerItem::Ping(payload),
            OpCode::Control(Control::Pong) => ServerItem::Pong(payload),
            OpCode::Control(Control::Close) => {
                assert_ne!(payload.len(), 1, "a close payload of one byte");
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                if let Some(code) = code {
                    let echoable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                    assert!(SERVER_CLOSE_CODES.contains(&code) || echoable, "server sent close code {code}");
                    assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason is not UTF-8");
                }
                ServerItem::Close(code)
            }
        })
    }
}

/// A server frame on a pub/sub route: its `type` and its members as raw JSON.
///
/// Members stay raw so that deeply nested published data (valid, and passed through as
/// sent) is not refused by a recursion limit of the checker's own.
pub(super) fn pubsub_frame(data: &[u8]) -> (String, BTreeMap<String, &serde_json::value::RawValue>) {
    let members: BTreeMap<String, &serde_json::value::RawValue> = match serde_json::from_slice(data) {
        Ok(members) => members,
        Err(e) => panic!("pub/sub frame is not a JSON object ({e}): {:?}", String::from_utf8_lossy(data)),
    };
    let kind = members.get("type").and_then(|t| serde_json::from_str::<String>(t.get()).ok());
    let Some(kind) = kind else { panic!("pub/sub frame without a type: {:?}", String::from_utf8_lossy(data)) };
    (kind, members)
}
