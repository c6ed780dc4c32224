//! RFC 6455 framing on top of tungstenite's codec types: a streaming decoder that enforces the
//! protocol rules, and encoders that build whole frames into shareable `Bytes`.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::deflate::{InflateError, Inflater};

/// Largest payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
const MAX_HEADER: usize = 14;

/// What a peer did wrong, as it goes on the wire: a close code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The close code to send (1002, 1007 or 1009).
    pub code: u16,
    /// A short reason; it fits a close frame (≤ 123 bytes).
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Self {
        Self { code: 1002, reason }
    }
}

/// One complete unit the decoder hands to the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole data message (reassembled, inflated, UTF-8 checked when text).
    Message {
        /// True for a text message.
        text: bool,
        /// The message payload.
        data: Vec<u8>,
    },
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong with its payload.
    Pong(Vec<u8>),
    /// The peer's close frame: `None` when it carried no status code.
    Close(Option<(u16, String)>),
    /// The peer broke a rule; the decoder now only looks for a close frame.
    Fail(Violation),
}

/// Size limits the decoder enforces before allocating.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame payload accepted.
    pub max_frame: u64,
    /// Largest (inflated) message accepted.
    pub max_message: usize,
}

/// The frame being read: its header facts and how much payload is still to come.
#[derive(Debug)]
struct Current {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Position in the mask for the next payload byte.
    mask_pos: usize,
    remaining: u64,
    /// Payload bytes are counted but not kept (we are closing, or the frame broke a rule).
    skip: bool,
}

/// The message being reassembled from data frames.
#[derive(Debug, Default)]
struct Assembly {
    /// Some while a message is in progress: true for text.
    text: Option<bool>,
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` already known to be valid UTF-8 (for failing fast on text).
    utf8_valid: usize,
}

/// Streaming decoder for client frames: feed any chunking of the byte stream, get messages.
///
/// It never loses frame sync, even after a violation, so that the peer's closing handshake
/// can still be read. Idle, it holds no heap memory: the header remainder is inline and
/// buffers are released after each message.
#[derive(Debug, Default)]
pub struct Decoder {
    head: [u8; MAX_HEADER],
    head_len: u8,
    current: Option<Current>,
    assembly: Assembly,
    control: Vec<u8>,
    /// Boxed: most connections never negotiate compression, and the state is large.
    inflater: Option<Box<Inflater>>,
    /// After a close was sent or received, data frames are skipped unread.
    closing: bool,
}

impl Decoder {
    /// A decoder; `inflater` is present when permessage-deflate was negotiated.
    pub fn new(inflater: Option<Inflater>) -> Self {
        Self { inflater: inflater.map(Box::new), ..Self::default() }
    }

    /// From now on skip data frames and look only for the peer's close frame.
    pub fn set_closing(&mut self) {
        self.closing = true;
        self.assembly = Assembly::default();
        self.inflater = None;
        if let Some(current) = &mut self.current
            && matches!(current.opcode, OpCode::Data(_))
        {
            current.skip = true;
        }
    }

    /// True while a frame or message is partly read (the connection holds buffered state).
    pub fn is_mid_message(&self) -> bool {
        self.head_len > 0 || self.current.is_some() || self.assembly.text.is_some()
    }

    /// Consumes all of `input`, pushing each complete unit (or the first violation) to `out`.
    pub fn feed(&mut self, mut input: &[u8], limits: Limits, out: &mut Vec<Decoded>) {
        loop {
            if self.current.is_none() {
                if input.is_empty() {
                    return;
                }
                let (used, verdict) = self.read_header(input, limits);
                input = &input[used..];
                if let Err(violation) = verdict {
                    self.fail(violation, out);
                }
                if self.current.is_none() {
                    // Header still incomplete: everything was stashed.
                    return;
                }
            }
            let (used, verdict) = self.read_payload(input, limits);
            input = &input[used..];
            if let Err(violation) = verdict {
                self.fail(violation, out);
            }
            if self.current.as_ref().is_some_and(|c| c.remaining > 0) {
                return;
            }
            if let Err(violation) = self.finish_frame(limits, out) {
                self.fail(violation, out);
            }
        }
    }

    /// Reports the first violation and turns to skipping; later ones are noise.
    fn fail(&mut self, violation: Violation, out: &mut Vec<Decoded>) {
        if !self.closing {
            out.push(Decoded::Fail(violation));
        }
        self.set_closing();
        if let Some(current) = &mut self.current {
            current.skip = true;
        }
    }

    /// Reads (part of) a header; returns how many input bytes were used and whether the
    /// frame is acceptable. A rejected frame is still tracked, to be skipped.
    fn read_header(&mut self, input: &[u8], limits: Limits) -> (usize, Result<(), Violation>) {
        let stashed = usize::from(self.head_len);
        let take = input.len().min(MAX_HEADER - stashed);
        self.head[stashed..stashed + take].copy_from_slice(&input[..take]);
        let available = stashed + take;
        let opcode_nibble = self.head[0] & 0x0F;
        let reserved_opcode = matches!(opcode_nibble, 0x3..=0x7 | 0xB..=0xF);
        // tungstenite rejects reserved opcodes without telling the length; parse a copy with a
        // valid opcode so the stream stays in sync and the error is reported by us.
        let mut probe = self.head;
        if reserved_opcode {
            probe[0] = (probe[0] & 0xF0) | 0x2;
        }
        let mut cursor = Cursor::new(&probe[..available]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                self.head_len = available as u8;
                return (take, Ok(()));
            }
            // Only a reserved opcode makes tungstenite fail, and the probe has none.
            Err(_) => return (take, Err(Violation::protocol("malformed frame header"))),
        };
        let used = cursor.position() as usize - stashed;
        self.head_len = 0;
        let mut current = Current {
            opcode: header.opcode,
            fin: header.is_final,
            mask: header.mask.unwrap_or_default(),
            mask_pos: 0,
            remaining: length,
            skip: self.closing && matches!(header.opcode, OpCode::Data(_)),
        };
        let verdict = if reserved_opcode {
            Err(Violation::protocol("reserved opcode"))
        } else {
            self.check_header(&header, length, limits)
        };
        if verdict.is_err() {
            current.skip = true;
        } else if !current.skip {
            match header.opcode {
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    self.assembly.text = Some(data == Data::Text);
                    self.assembly.compressed = header.rsv1;
                }
                OpCode::Control(_) => self.control = Vec::with_capacity(length as usize),
                OpCode::Data(_) => {}
            }
        }
        self.current = Some(current);
        (used, verdict)
    }

    /// The RFC 6455 rules a frame header must meet, given what came before it.
    fn check_header(&self, header: &FrameHeader, length: u64, limits: Limits) -> Result<(), Violation> {
        if header.mask.is_none() {
            return Err(Violation::protocol("client frame not masked"));
        }
        if header.rsv2 || header.rsv3 {
            return Err(Violation::protocol("reserved bits set"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(Violation::protocol("fragmented control frame"));
                }
                if length > MAX_CONTROL_PAYLOAD {
                    return Err(Violation::protocol("control frame payload over 125 bytes"));
                }
                if header.rsv1 {
                    return Err(Violation::protocol("reserved bit on control frame"));
                }
            }
            _ if self.closing => {}
            OpCode::Data(Data::Continue) => {
                if header.rsv1 {
                    return Err(Violation::protocol("RSV1 on continuation frame"));
                }
                if self.assembly.text.is_none() {
                    return Err(Violation::protocol("continuation without a message to continue"));
                }
            }
            OpCode::Data(_) => {
                if header.rsv1 && self.inflater.is_none() {
                    return Err(Violation::protocol("RSV1 set without permessage-deflate"));
                }
                if self.assembly.text.is_some() {
                    return Err(Violation::protocol("new message before the previous one ended"));
                }
            }
        }
        if matches!(header.opcode, OpCode::Data(_)) && !self.closing && length > limits.max_frame {
            return Err(Violation { code: 1009, reason: "frame too big" });
        }
        Ok(())
    }

    /// Moves payload bytes of the current frame into the message or control buffer.
    fn read_payload(&mut self, input: &[u8], limits: Limits) -> (usize, Result<(), Violation>) {
        let Some(current) = &mut self.current else { return (0, Ok(())) };
        let take = (input.len() as u64).min(current.remaining) as usize;
        let chunk = &input[..take];
        current.remaining -= take as u64;
        if current.skip {
            return (take, Ok(()));
        }
        let mask = current.mask;
        let mask_pos = current.mask_pos;
        current.mask_pos = (mask_pos + take) % 4;
        if let OpCode::Control(_) = current.opcode {
            let start = self.control.len();
            self.control.extend_from_slice(chunk);
            unmask(&mut self.control[start..], mask, mask_pos);
            return (take, Ok(()));
        }
        (take, self.append_data(chunk, mask, mask_pos, limits))
    }

    /// Appends unmasked (and, when compressed, inflated) message bytes, within the limits.
    fn append_data(&mut self, chunk: &[u8], mask: [u8; 4], mask_pos: usize, limits: Limits) -> Result<(), Violation> {
        let assembly = &mut self.assembly;
        if assembly.compressed {
            let Some(inflater) = &mut self.inflater else {
                return Err(Violation::protocol("compressed frame without permessage-deflate"));
            };
            // Unmask through a small stack buffer so compressed input is never copied whole.
            let mut scratch = [0u8; 4096];
            let mut pos = mask_pos;
            for piece in chunk.chunks(scratch.len()) {
                let buf = &mut scratch[..piece.len()];
                buf.copy_from_slice(piece);
                unmask(buf, mask, pos);
                pos = (pos + piece.len()) % 4;
                inflater.push(buf, &mut assembly.data, limits.max_message).map_err(inflate_violation)?;
            }
        } else {
            if assembly.data.len() + chunk.len() > limits.max_message {
                return Err(Violation { code: 1009, reason: "message too big" });
            }
            let start = assembly.data.len();
            assembly.data.extend_from_slice(chunk);
            unmask(&mut assembly.data[start..], mask, mask_pos);
        }
        if assembly.text == Some(true) {
            check_utf8_prefix(assembly)?;
        }
        Ok(())
    }

    /// Completes the current frame: a control frame or the last fragment yields a unit.
    fn finish_frame(&mut self, limits: Limits, out: &mut Vec<Decoded>) -> Result<(), Violation> {
        let Some(current) = self.current.take() else { return Ok(()) };
        if current.skip {
            return Ok(());
        }
        match current.opcode {
            OpCode::Control(Control::Ping) => out.push(Decoded::Ping(std::mem::take(&mut self.control))),
            OpCode::Control(Control::Pong) => out.push(Decoded::Pong(std::mem::take(&mut self.control))),
            OpCode::Control(_) => {
                let payload = std::mem::take(&mut self.control);
                let close = parse_close(&payload)?;
                out.push(Decoded::Close(close));
                // Nothing after a close frame is meaningful.
                self.set_closing();
            }
            OpCode::Data(_) if current.fin => {
                let mut assembly = std::mem::take(&mut self.assembly);
                if assembly.compressed
                    && let Some(inflater) = &mut self.inflater
                {
                    inflater.finish(&mut assembly.data, limits.max_message).map_err(inflate_violation)?;
                }
                let text = assembly.text == Some(true);
                if text {
                    check_utf8_prefix(&mut assembly)?;
                    if assembly.utf8_valid != assembly.data.len() {
                        return Err(Violation { code: 1007, reason: "text message is not valid UTF-8" });
                    }
                }
                out.push(Decoded::Message { text, data: assembly.data });
            }
            OpCode::Data(_) => {}
        }
        Ok(())
    }
}

fn inflate_violation(error: InflateError) -> Violation {
    match error {
        InflateError::TooBig => Violation { code: 1009, reason: "message too big" },
        InflateError::Corrupt => Violation { code: 1007, reason: "corrupt compressed data" },
    }
}

/// Validates the newly added bytes of a text message, failing as soon as an invalid sequence
/// is certain (a sequence cut at the end may still be completed by the next bytes).
fn check_utf8_prefix(assembly: &mut Assembly) -> Result<(), Violation> {
    match std::str::from_utf8(&assembly.data[assembly.utf8_valid..]) {
        Ok(_) => assembly.utf8_valid = assembly.data.len(),
        Err(error) if error.error_len().is_none() => assembly.utf8_valid += error.valid_up_to(),
        Err(_) => return Err(Violation { code: 1007, reason: "text message is not valid UTF-8" }),
    }
    Ok(())
}

/// Parses a close payload: empty, or a valid code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Violation { code: 1007, reason: "close reason is not valid UTF-8" })?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XORs `data` with the mask, starting at position `offset` of the 4-byte mask.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, byte) in rotated.iter_mut().enumerate() {
        *byte = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i];
    }
}

/// Builds one unmasked server frame (header and payload in one allocation).
pub fn encode(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let header = FrameHeader { is_final: true, rsv1, rsv2: false, rsv3: false, opcode, mask: None };
    let length = payload.len() as u64;
    let mut buf = BytesMut::with_capacity(header.len(length) + payload.len());
    let mut writer = (&mut buf).writer();
    // Writing into a growable in-memory buffer cannot fail.
    let _ = header.format(length, &mut writer);
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// Builds a close frame with `code` and `reason` (truncated to fit 125 bytes on a char boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), false, &payload)
}

/// The opcode of a data message.
pub fn data_opcode(text: bool) -> OpCode {
    OpCode::Data(if text { Data::Text } else { Data::Binary })
}
