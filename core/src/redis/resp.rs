//! RESP2 on the wire: commands encoded with `redis-protocol`, replies cut from the byte stream only after a
//! bounded scan has vetted them.

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

/// Unparsed reply bytes allowed to pile up; more means a broken or hostile peer.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Our replies nest one level; the decoder recurses per level, so deep nesting is refused before it runs.
const MAX_DEPTH: usize = 4;

/// The peer broke the protocol: the connection cannot be trusted any more.
#[derive(Debug)]
pub(super) struct ProtocolError;

/// Encodes one command onto `out`; false (and `out` untouched) if it could not be encoded.
pub(super) fn write_command(out: &mut BytesMut, args: &[&[u8]]) -> bool {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|arg| BorrowedFrame::BulkString(arg)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    match encode_borrowed(&mut out[start..], &frame, false) {
        Ok(n) => {
            out.truncate(start + n);
            true
        }
        // Cannot happen: the buffer was sized by `encode_len`. Drop the command rather than send garbage.
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// The next complete frame in `buf`, removed from it.
pub(super) fn next_frame(buf: &mut BytesMut) -> Result<Option<OwnedFrame>, ProtocolError> {
    match scan_frame(buf) {
        Scan::Bad => Err(ProtocolError),
        Scan::Incomplete if buf.len() > MAX_REPLY_BYTES => Err(ProtocolError),
        Scan::Incomplete => Ok(None),
        Scan::Complete => match decode(buf) {
            Ok(Some((frame, used))) => {
                buf.advance(used);
                Ok(Some(frame))
            }
            // The scan saw a whole frame; a decoder that disagrees would stall us forever.
            Ok(None) | Err(_) => Err(ProtocolError),
        },
    }
}

/// What [`scan_frame`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    Incomplete,
    Complete,
    Bad,
}

/// Walks the first frame's headers without recursion, so the recursive decoder only ever sees frames of
/// bounded depth and size (a stream of `*1\r\n` would otherwise overflow the stack, which aborts).
pub(super) fn scan_frame(buf: &[u8]) -> Scan {
    let mut pos = 0usize;
    let mut open: Vec<u64> = Vec::new();
    loop {
        let Some(&kind) = buf.get(pos) else { return Scan::Incomplete };
        let Some(line) = buf.get(pos + 1..).and_then(|rest| rest.windows(2).position(|w| w == b"\r\n")) else {
            return Scan::Incomplete;
        };
        let header = &buf[pos + 1..pos + 1 + line];
        pos += line + 3;
        match kind {
            b'*' => match parse_len(header) {
                Some(Some(0)) | Some(None) => {}
                Some(Some(n)) if open.len() < MAX_DEPTH => {
                    open.push(n);
                    continue;
                }
                _ => return Scan::Bad,
            },
            b'$' => match parse_len(header) {
                Some(None) => {}
                Some(Some(n)) if n <= MAX_REPLY_BYTES as u64 => {
                    // Bounded by MAX_REPLY_BYTES, so this cannot overflow.
                    pos += n as usize + 2;
                }
                _ => return Scan::Bad,
            },
            b'+' | b'-' | b':' => {}
            _ => return Scan::Bad,
        }
        // One element is complete: close every array it completes.
        loop {
            let Some(left) = open.last_mut() else {
                return if pos <= buf.len() { Scan::Complete } else { Scan::Incomplete };
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
    }
}

/// A RESP length: `Some(None)` for the null length -1.
fn parse_len(header: &[u8]) -> Option<Option<u64>> {
    if header == b"-1" {
        return Some(None);
    }
    std::str::from_utf8(header).ok()?.parse::<u64>().ok().map(Some)
}

/// A bulk string's bytes; `None` for any other frame.
pub(super) fn bulk(frame: &OwnedFrame) -> Option<&[u8]> {
    match frame {
        OwnedFrame::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}
