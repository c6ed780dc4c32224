//! RESP2 on the wire: commands encoded with `redis-protocol`, replies cut from the byte stream only after a
//! bounded scan has vetted them.

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

/// Unparsed reply bytes allowed to pile up; more means a broken or hostile peer.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Our replies nest one level; the decoder recurses per level, so deep nesting is refused before it runs.
const MAX_DEPTH: usize = 4;

/// The peer broke the protocol: the connection cannot be trusted any more.
#[derive(Debug)]
pub(super) struct ProtocolError;

/// Encodes one command onto `out` (an array of bulk strings); always true.
///
/// Written by hand rather than through `redis-protocol`'s encoder: a command is the same four
/// pieces every time, and this way a publish costs no allocation (the encoder wanted a frame
/// vector per command) and no logarithm per length.
pub(super) fn write_command(out: &mut BytesMut, args: &[&[u8]]) -> bool {
    let mut digits = itoa_buffer();
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(b"*");
    out.extend_from_slice(format_len(&mut digits, args.len()));
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.extend_from_slice(b"$");
        out.extend_from_slice(format_len(&mut digits, arg.len()));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    true
}

fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// `n` in decimal, in `buf`.
fn format_len(buf: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A `message` push (`*3 $7 message $key $payload`) at the front of `buf`: the key's and the
/// payload's ranges and the bytes it takes, read in place (no frame built, nothing allocated).
/// `None` when `buf` does not start with a whole one: the general decoder takes over, and it
/// is the one that judges what is malformed.
pub(super) fn message_push(
    buf: &[u8],
    sharded: bool,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>, usize)> {
    const HEAD: &[u8] = b"*3\r\n$7\r\nmessage\r\n";
    const SHARDED: &[u8] = b"*3\r\n$8\r\nsmessage\r\n";
    let head = if sharded { SHARDED } else { HEAD };
    let rest = buf.strip_prefix(head)?;
    let (key, used) = bulk_at(rest)?;
    let (payload, more) = bulk_at(&rest[used..])?;
    let base = head.len();
    let key = base + key.start..base + key.end;
    let payload = base + used + payload.start..base + used + payload.end;
    Some((key, payload, base + used + more))
}

/// A bulk string at the front of `buf`: its bytes' range and the length taken.
fn bulk_at(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    let rest = buf.strip_prefix(b"$")?;
    let line = rest.iter().take(21).position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
    if len > MAX_REPLY_BYTES {
        return None;
    }
    let start = 1 + line + 2;
    let end = start.checked_add(len)?;
    if buf.get(start - 2..start)? != b"\r\n" || buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((start..end, end + 2))
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
