//! permessage-deflate (RFC 7692), server side: offer negotiation, a
//! streaming size-limited inflater for client messages, and a per-message
//! deflater for server messages.
//!
//! Decisions worth knowing:
//! - zlib cannot emit raw deflate for an 8-bit window (it silently uses 9),
//!   so a [`Deflater`] for 8 bits compresses at level 0: stored blocks carry no
//!   back-references, so any window size can follow them.
//! - zlib's inflate is given at least 9 bits; a larger window accepts every
//!   stream made for a smaller one.
//! - Bytes after a final (`BFINAL`) block in a message are ignored: RFC 7692's
//!   own `BFINAL` example (§7.2.3) puts the appended tail there, and ignored
//!   bytes produce no output, so leniency costs nothing. The stream is
//!   restarted for the next message because the peer's ended too.

use std::borrow::Cow;
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension token, also used verbatim in the response.
const EXTENSION: &str = "permessage-deflate";

/// The empty stored block a sync flush ends with (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib refuses raw deflate windows below this many bits.
const ZLIB_MIN_WINDOW_BITS: u8 = 9;

/// Smallest step the inflate output buffer grows by, so tiny messages don't
/// reallocate byte by byte.
const MIN_OUTPUT_GROWTH: usize = 4096;

/// Parameters agreed for one connection's permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server starts every message with an empty LZ77 window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty LZ77 window.
    pub client_no_context_takeover: bool,
    /// Largest window (log2, 8..=15) the server may compress with.
    pub server_max_window_bits: u8,
    /// Largest window (log2, 8..=15) the client may compress with.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// Picks the first acceptable permessage-deflate offer from every `Sec-WebSocket-Extensions` value and returns the agreed parameters with the response header value.
///
/// `force_server_no_context_takeover` always adds `server_no_context_takeover`
/// to the response (RFC 7692 §7.1.1.1 lets the server do so), so that one
/// compressed broadcast can be shared by every connection.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    force_server_no_context_takeover: bool,
) -> Option<(DeflateParams, String)> {
    header_values
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, b','))
        .find_map(|offer| accept_offer(offer, force_server_no_context_takeover))
}

/// What one offer asked for; `None` fields were absent.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Outer `Some` means offered; inner `Some` means offered with a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Returns `None` when the offer is not permessage-deflate or breaks a rule of
/// RFC 7692 §7.1, which means declining it.
fn accept_offer(offer: &str, force_server_no_context_takeover: bool) -> Option<(DeflateParams, String)> {
    let mut parts = split_outside_quotes(offer, b';').into_iter();
    let name = trim_ows(parts.next()?);
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = Offer::default();
    for part in parts {
        let part = trim_ows(part);
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (trim_ows(key), Some(unquote(trim_ows(value))?)),
            None => (part, None),
        };
        if key.eq_ignore_ascii_case("server_no_context_takeover") {
            if value.is_some() || seen.server_no_context_takeover {
                return None;
            }
            seen.server_no_context_takeover = true;
        } else if key.eq_ignore_ascii_case("client_no_context_takeover") {
            if value.is_some() || seen.client_no_context_takeover {
                return None;
            }
            seen.client_no_context_takeover = true;
        } else if key.eq_ignore_ascii_case("server_max_window_bits") {
            if seen.server_max_window_bits.is_some() {
                return None;
            }
            seen.server_max_window_bits = Some(parse_window_bits(&value?)?);
        } else if key.eq_ignore_ascii_case("client_max_window_bits") {
            if seen.client_max_window_bits.is_some() {
                return None;
            }
            let bits = match value {
                Some(value) => Some(parse_window_bits(&value)?),
                None => None,
            };
            seen.client_max_window_bits = Some(bits);
        } else {
            return None;
        }
    }

    let params = DeflateParams {
        server_no_context_takeover: seen.server_no_context_takeover || force_server_no_context_takeover,
        client_no_context_takeover: seen.client_no_context_takeover,
        server_max_window_bits: seen.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: seen.client_max_window_bits.flatten().unwrap_or(15),
    };
    let mut response = String::from(EXTENSION);
    if params.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = seen.server_max_window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    // Echoing the client's own limit lets us size the inflate window to it;
    // a valueless offer gains nothing from a reply, so 15 is kept silently.
    if let Some(Some(bits)) = seen.client_max_window_bits {
        response.push_str(&format!("; client_max_window_bits={bits}"));
    }
    Some((params, response))
}

/// Splits on `sep` except inside quoted strings, so a quoted `,` or `;`
/// cannot cut an offer in two.
fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
        } else if in_quotes && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        } else if b == sep && !in_quotes {
            // `sep` is ASCII, so `i` is always a char boundary.
            pieces.push(&s[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&s[start..]);
    pieces.retain(|piece| sep != b',' || !trim_ows(piece).is_empty());
    pieces
}

/// HTTP optional whitespace is only spaces and tabs, not Unicode spaces.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Undoes quoted-string syntax; `None` for a malformed one, which declines
/// the offer.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix('"')?;
    let mut unescaped = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unescaped.push(chars.next()?),
            '"' => return None,
            c => unescaped.push(c),
        }
    }
    Some(Cow::Owned(unescaped))
}

/// RFC 7692 §7.1.2 wants 8..=15 as decimal without leading zeros, and Rust's
/// integer parser would also take `+9`, hence the digit check.
fn parse_window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u8>().ok().filter(|bits| (8..=15).contains(bits))
}

/// Why inflating a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would exceed the size limit.
    TooBig,
    /// The payload is not valid deflate data.
    Corrupt,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooBig => "inflated message exceeds the size limit",
            Self::Corrupt => "invalid deflate data",
        })
    }
}

impl std::error::Error for InflateError {}

/// Streaming, size-limited decompressor for one connection's incoming messages.
#[derive(Debug)]
pub struct Inflater {
    window_bits: u8,
    reset_each_message: bool,
    /// Allocated on first use; dropped between messages without context
    /// takeover so an idle connection holds no zlib state.
    state: Option<Decompress>,
    /// The peer sent a final block in the current message.
    stream_ended: bool,
}

impl Inflater {
    /// Creates an inflater for the client side of the agreed parameters.
    pub fn new(params: &DeflateParams) -> Self {
        Self {
            window_bits: params.client_max_window_bits.clamp(ZLIB_MIN_WINDOW_BITS, 15),
            reset_each_message: params.client_no_context_takeover,
            state: None,
            stream_ended: false,
        }
    }

    /// Inflates more compressed payload of the current message into `out`, failing with `TooBig` once `out.len()` would exceed `limit`.
    ///
    /// After an error the message is abandoned and the state dropped; the
    /// connection is expected to close.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        if input.is_empty() {
            return Ok(());
        }
        let result = self.inflate(input, out, limit);
        if result.is_err() {
            self.drop_state();
        }
        result
    }

    /// Ends the current message: inflates the implied `00 00 ff ff` tail (RFC 7692 §7.2.2) into `out` under the same `limit`.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        // Without state nothing was pushed, and the tail alone is an empty
        // stored block: no output and no window change, so skip allocating.
        let result = if self.state.is_some() { self.inflate(&TAIL, out, limit) } else { Ok(()) };
        if result.is_err() || self.reset_each_message || self.stream_ended {
            self.drop_state();
        }
        result
    }

    fn drop_state(&mut self) {
        self.state = None;
        self.stream_ended = false;
    }

    fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        if self.stream_ended {
            return Ok(());
        }
        let window_bits = self.window_bits;
        let state = self.state.get_or_insert_with(|| Decompress::new_with_window_bits(false, window_bits));
        // One byte past the limit is enough room to tell "exactly at the
        // limit" from "more to come" without allocating for a zip bomb.
        let max_capacity = limit.saturating_add(1);
        loop {
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if out.len() == out.capacity() {
                let room = max_capacity - out.len();
                out.reserve_exact(out.len().max(MIN_OUTPUT_GROWTH).min(room));
            }
            let in_before = state.total_in();
            let out_before = state.total_out();
            let status = state.decompress_vec(input, out, FlushDecompress::None).map_err(|_| InflateError::Corrupt)?;
            let consumed = usize::try_from(state.total_in() - in_before).unwrap_or(usize::MAX);
            input = input.get(consumed..).unwrap_or_default();
            let progressed = consumed > 0 || state.total_out() != out_before;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                self.stream_ended = true;
                return Ok(());
            }
            let output_full = out.len() == out.capacity();
            if !output_full && input.is_empty() {
                return Ok(());
            }
            // With output space and input left, inflate always moves; if it
            // didn't, looping again would spin forever.
            if !progressed && !output_full {
                return Err(InflateError::Corrupt);
            }
        }
    }
}

/// Per-message compressor for one window size and level, shared across connections.
#[derive(Debug)]
pub struct Deflater {
    compress: Compress,
}

impl Deflater {
    /// Creates a deflater; `window_bits` is clamped to 8..=15 and `level` to 0..=9, and 8 bits forces level 0.
    pub fn new(window_bits: u8, level: u32) -> Self {
        let window_bits = window_bits.clamp(8, 15);
        let (window_bits, level) = if window_bits < ZLIB_MIN_WINDOW_BITS {
            // zlib would quietly use a 9-bit window and reach back further
            // than an 8-bit peer can; stored blocks never reach back at all.
            (ZLIB_MIN_WINDOW_BITS, 0)
        } else {
            (window_bits, level.min(9))
        };
        Self { compress: Compress::new_with_window_bits(Compression::new(level), false, window_bits) }
    }

    /// Appends one whole message compressed without context takeover to `out`, tail stripped (RFC 7692 §7.2.1).
    pub fn compress_message(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // Shared across connections, so no message may lean on another's window.
        self.compress.reset();
        let start = out.len();
        let mut input = data;
        out.reserve(data.len() / 4 + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(64));
            }
            let in_before = self.compress.total_in();
            // Invariant: deflate only errors on an inconsistent stream state
            // or bad flush sequence, neither of which reset + Sync can make.
            let _status = self
                .compress
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("sync flush after reset cannot fail");
            let consumed = usize::try_from(self.compress.total_in() - in_before).unwrap_or(usize::MAX);
            input = input.get(consumed..).unwrap_or_default();
            // zlib signals a finished flush by leaving output space unused.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty payload is not valid deflate; one 0x00 byte is the RFC 7692
            // §7.2.3 spelling of an empty message.
            out.push(0x00);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(client_bits: u8, client_no_context_takeover: bool) -> DeflateParams {
        DeflateParams { client_max_window_bits: client_bits, client_no_context_takeover, ..DeflateParams::default() }
    }

    fn inflate_message(inflater: &mut Inflater, payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        inflater.push(payload, &mut out, limit)?;
        inflater.finish(&mut out, limit)?;
        Ok(out)
    }

    /// Deterministic data mixing repetition (for matches) with noise.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let words: [&[u8]; 6] = [b"switchboard ", b"hub ", b"message ", b"{\"id\":", b"42,", b"\n"];
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = (x >> 33) as usize;
            if r.is_multiple_of(4) {
                data.push((r >> 8) as u8);
            } else {
                data.extend_from_slice(words[r % words.len()]);
            }
        }
        data.truncate(len);
        data
    }

    fn neg(values: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate(values.iter().copied(), false)
    }

    #[test]
    fn plain_offer() {
        let (p, resp) = neg(&["permessage-deflate"]).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(resp, "permessage-deflate");
    }

    #[test]
    fn browser_offer() {
        let (p, resp) = neg(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(resp, "permessage-deflate");
    }

    #[test]
    fn all_params() {
        let (p, resp) = neg(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"])
        .unwrap();
        assert_eq!(
            p,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 10,
                client_max_window_bits: 12,
            }
        );
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    #[test]
    fn first_invalid_offer_is_skipped() {
        let (p, resp) =
            neg(&["permessage-deflate; server_max_window_bits=16, permessage-deflate; client_max_window_bits=9"])
                .unwrap();
        assert_eq!(p.client_max_window_bits, 9);
        assert_eq!(p.server_max_window_bits, 15);
        assert_eq!(resp, "permessage-deflate; client_max_window_bits=9");
    }

    #[test]
    fn offers_span_header_values() {
        let (p, _) = neg(&["x-webkit-deflate-frame", "foo, permessage-deflate; server_max_window_bits=11"]).unwrap();
        assert_eq!(p.server_max_window_bits, 11);
    }

    #[test]
    fn invalid_offers_are_declined() {
        let bad = [
            "permessage-deflate; unknown",
            "permessage-deflate; unknown=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=\"9",
            "permessage-deflate; client_max_window_bits=\"1\"0\"",
            "permessage-deflate;",
            "permessage-deflate;; server_no_context_takeover",
            "permessage-deflatex",
            "deflate-frame",
            "",
        ];
        for offer in bad {
            assert_eq!(neg(&[offer]), None, "{offer}");
            // The next offer must still be found, in the next header value
            // and, unless an open quote swallows the rest, in the same one.
            let next = "permessage-deflate; client_no_context_takeover";
            let (p, _) = neg(&[offer, next]).unwrap_or_else(|| panic!("{offer}"));
            assert!(p.client_no_context_takeover, "{offer}");
            let combined = format!("{offer}, {next}");
            let found = neg(&[combined.as_str()]).is_some();
            assert_eq!(found, offer.matches('"').count().is_multiple_of(2), "{offer}");
        }
    }

    #[test]
    fn quoted_values() {
        let (p, resp) =
            neg(&["permessage-deflate; client_max_window_bits=\"10\"; server_max_window_bits = \"1\\2\""]).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert_eq!(p.server_max_window_bits, 12);
        assert_eq!(resp, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10");
        // A quoted separator must not split the offer.
        assert_eq!(neg(&["permessage-deflate; client_max_window_bits=\"1,0\""]), None);
        assert_eq!(neg(&["permessage-deflate; client_max_window_bits=\"1;0\""]), None);
    }

    #[test]
    fn window_bits_bounds() {
        for bits in 8..=15u8 {
            let offer = format!("permessage-deflate; server_max_window_bits={bits}; client_max_window_bits={bits}");
            let (p, resp) = neg(&[offer.as_str()]).unwrap();
            assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (bits, bits));
            assert_eq!(resp, offer);
        }
    }

    #[test]
    fn forced_server_no_context_takeover() {
        let (p, resp) = negotiate(["permessage-deflate; client_max_window_bits"], true).unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover");
        let (_, resp) = negotiate(["permessage-deflate; server_no_context_takeover"], true).unwrap();
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover");
    }

    #[test]
    fn no_offer() {
        assert_eq!(neg(&[]), None);
        assert_eq!(neg(&["foo", "bar; baz=1"]), None);
        assert_eq!(neg(&[" , ,"]), None);
    }

    #[test]
    fn case_and_whitespace_are_tolerated() {
        let (p, resp) =
            neg(&["  PerMessage-Deflate ;\tClient_No_Context_Takeover ; SERVER_MAX_WINDOW_BITS=9 "]).unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, 9);
        assert_eq!(resp, "permessage-deflate; client_no_context_takeover; server_max_window_bits=9");
    }

    #[test]
    fn round_trip_every_window_and_level() {
        let messages = [sample(0, 1), sample(1, 2), sample(300, 3), sample(5000, 4), sample(70_000, 5)];
        for bits in 8..=15u8 {
            for level in [0, 1, 6, 9] {
                let mut deflater = Deflater::new(bits, level);
                for no_context in [false, true] {
                    let mut inflater = Inflater::new(&params(bits, no_context));
                    for msg in &messages {
                        let mut payload = Vec::new();
                        deflater.compress_message(msg, &mut payload);
                        assert!(!payload.is_empty());
                        let out = inflate_message(&mut inflater, &payload, usize::MAX).unwrap();
                        assert_eq!(&out, msg, "bits {bits} level {level}");
                    }
                    assert_eq!(inflater.state.is_some(), !no_context);
                }
            }
        }
    }

    #[test]
    fn empty_message_is_single_zero_byte() {
        let mut payload = Vec::new();
        Deflater::new(15, 6).compress_message(b"", &mut payload);
        assert_eq!(payload, [0x00]);
        let out = inflate_message(&mut Inflater::new(&DeflateParams::default()), &payload, 0).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn compress_appends() {
        let mut out = b"head".to_vec();
        let mut deflater = Deflater::new(15, 6);
        deflater.compress_message(b"hello hello hello", &mut out);
        assert!(out.starts_with(b"head"));
        let msg = inflate_message(&mut Inflater::new(&DeflateParams::default()), &out[4..], 100).unwrap();
        assert_eq!(msg, b"hello hello hello");
    }

    /// Walks a deflate stream that must consist only of stored blocks; since
    /// stored blocks end byte-aligned, every header starts on a byte.
    fn assert_only_stored_blocks(stream: &[u8]) {
        let mut rest = stream;
        while let Some((&header, tail)) = rest.split_first() {
            assert_eq!((header >> 1) & 0b11, 0, "non-stored block");
            let len = u16::from_le_bytes([tail[0], tail[1]]);
            let nlen = u16::from_le_bytes([tail[2], tail[3]]);
            assert_eq!(len, !nlen);
            rest = &tail[4 + usize::from(len)..];
        }
    }

    #[test]
    fn eight_bit_window_uses_stored_blocks_only() {
        let mut deflater = Deflater::new(8, 9);
        for msg in [sample(0, 9), sample(10, 9), sample(1000, 9), sample(200_000, 9)] {
            let mut payload = Vec::new();
            deflater.compress_message(&msg, &mut payload);
            payload.extend_from_slice(&TAIL);
            assert_only_stored_blocks(&payload);
        }
    }

    #[test]
    fn rfc_7692_examples() {
        let mut inflater = Inflater::new(&DeflateParams::default());
        // Compressed "Hello", then the same sent again leaning on the window.
        assert_eq!(inflate_message(&mut inflater, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 5).unwrap(), b"Hello");
        assert_eq!(inflate_message(&mut inflater, &[0xf2, 0x00, 0x11, 0x00, 0x00], 5).unwrap(), b"Hello");
        // A stored block, a BFINAL block, and two blocks in one message.
        let mut fresh = Inflater::new(&DeflateParams::default());
        let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
        assert_eq!(inflate_message(&mut fresh, &stored, 5).unwrap(), b"Hello");
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate_message(&mut fresh, &bfinal, 5).unwrap(), b"Hello");
        assert!(fresh.state.is_none(), "an ended stream restarts");
        let two = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_message(&mut fresh, &two, 5).unwrap(), b"Hello");
        assert_eq!(inflate_message(&mut fresh, &two, 4), Err(InflateError::TooBig));
    }

    /// A peer compressing with flate2 directly: raw, window 15, sync flush.
    fn peer_message(peer: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 1024);
        peer.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn interop_with_context_takeover() {
        let first = sample(3000, 11);
        let mut second = first.clone();
        second.extend_from_slice(b"tail");
        let mut peer = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let p1 = peer_message(&mut peer, &first);
        let p2 = peer_message(&mut peer, &second);
        assert!(p2.len() < 100, "second message must lean on the first's window");

        let mut keeps = Inflater::new(&params(15, false));
        assert_eq!(inflate_message(&mut keeps, &p1, usize::MAX).unwrap(), first);
        assert_eq!(inflate_message(&mut keeps, &p2, usize::MAX).unwrap(), second);

        // Dropping the window must break the second message.
        let mut forgets = Inflater::new(&params(15, true));
        assert_eq!(inflate_message(&mut forgets, &p1, usize::MAX).unwrap(), first);
        assert_ne!(inflate_message(&mut forgets, &p2, usize::MAX).ok(), Some(second));
    }

    #[test]
    fn interop_with_peer_resetting_each_message() {
        let first = sample(3000, 12);
        let second = first.clone();
        let mut peer = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let p1 = peer_message(&mut peer, &first);
        peer.reset();
        let p2 = peer_message(&mut peer, &second);
        assert_eq!(p1, p2);
        let mut inflater = Inflater::new(&params(15, true));
        assert_eq!(inflate_message(&mut inflater, &p1, usize::MAX).unwrap(), first);
        assert!(inflater.state.is_none());
        assert_eq!(inflate_message(&mut inflater, &p2, usize::MAX).unwrap(), second);
    }

    #[test]
    fn split_at_every_byte_and_tiny_output_steps() {
        let msg = sample(40_000, 13);
        let mut payload = Vec::new();
        Deflater::new(15, 9).compress_message(&msg, &mut payload);
        let mut inflater = Inflater::new(&params(15, false));
        for _ in 0..2 {
            let mut out = Vec::new();
            for byte in payload.chunks(1) {
                inflater.push(byte, &mut out, msg.len()).unwrap();
            }
            inflater.finish(&mut out, msg.len()).unwrap();
            assert_eq!(out, msg);
        }
    }

    #[test]
    fn zip_bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut bomb = Vec::new();
        Deflater::new(15, 9).compress_message(&zeros, &mut bomb);
        assert!(bomb.len() < 20_000, "bomb is {} bytes", bomb.len());
        let limit = 1 << 20;
        for chunk in [bomb.len(), 1000, 7] {
            let mut inflater = Inflater::new(&params(15, false));
            let mut out = Vec::new();
            let result = bomb
                .chunks(chunk)
                .try_for_each(|c| inflater.push(c, &mut out, limit))
                .and_then(|()| inflater.finish(&mut out, limit));
            assert_eq!(result, Err(InflateError::TooBig));
            assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
            assert!(inflater.state.is_none());
        }
    }

    #[test]
    fn exact_limit_is_allowed() {
        let msg = sample(10_000, 14);
        let mut payload = Vec::new();
        Deflater::new(15, 6).compress_message(&msg, &mut payload);
        let mut inflater = Inflater::new(&params(15, true));
        assert_eq!(inflate_message(&mut inflater, &payload, msg.len()).unwrap(), msg);
        assert_eq!(inflate_message(&mut inflater, &payload, msg.len() - 1), Err(InflateError::TooBig));
    }

    #[test]
    fn limit_counts_what_out_already_holds() {
        let mut payload = Vec::new();
        Deflater::new(15, 6).compress_message(b"abcdef", &mut payload);
        let mut inflater = Inflater::new(&params(15, true));
        let mut out = b"12345".to_vec();
        assert_eq!(inflater.push(&payload, &mut out, 10), Err(InflateError::TooBig));
    }

    #[test]
    fn corrupt_input() {
        let mut inflater = Inflater::new(&DeflateParams::default());
        // BTYPE 11 is reserved.
        assert_eq!(inflate_message(&mut inflater, &[0xff, 0xff, 0xff], 100), Err(InflateError::Corrupt));
        // Stored block whose NLEN doesn't complement LEN.
        assert_eq!(inflate_message(&mut inflater, &[0x00, 0x05, 0x00, 0x00, 0x00], 100), Err(InflateError::Corrupt));
        // Back-reference before the start of a fresh stream.
        assert_eq!(inflate_message(&mut inflater, &[0xf2, 0x00, 0x11, 0x00, 0x00], 100), Err(InflateError::Corrupt));
        // Usable again afterwards.
        assert_eq!(inflate_message(&mut inflater, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 5).unwrap(), b"Hello");
    }

    #[test]
    fn idle_inflater_holds_no_state() {
        let mut inflater = Inflater::new(&params(15, true));
        assert!(inflater.state.is_none());
        let mut out = Vec::new();
        inflater.finish(&mut out, 10).unwrap();
        assert!(inflater.state.is_none() && out.is_empty());
    }

    proptest! {
        #[test]
        fn round_trip_with_arbitrary_chunking(
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..4),
            bits in 8u8..=15,
            level in 0u32..=9,
            no_context in any::<bool>(),
            cuts in prop::collection::vec(1usize..64, 1..20),
        ) {
            let mut deflater = Deflater::new(bits, level);
            let mut inflater = Inflater::new(&params(bits, no_context));
            for msg in &msgs {
                let mut payload = Vec::new();
                deflater.compress_message(msg, &mut payload);
                let mut out = Vec::new();
                let mut rest = payload.as_slice();
                for &cut in cuts.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                    inflater.push(chunk, &mut out, msg.len()).unwrap();
                    rest = tail;
                }
                inflater.finish(&mut out, msg.len()).unwrap();
                prop_assert_eq!(&out, msg);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..6),
            limit in 0usize..5000,
            no_context in any::<bool>(),
            bits in 8u8..=15,
        ) {
            let mut inflater = Inflater::new(&params(bits, no_context));
            for _ in 0..2 {
                let mut out = Vec::new();
                let result = chunks
                    .iter()
                    .try_for_each(|c| inflater.push(c, &mut out, limit))
                    .and_then(|()| inflater.finish(&mut out, limit));
                if result.is_ok() {
                    prop_assert!(out.len() <= limit);
                }
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(values in prop::collection::vec(".{0,80}", 0..4), force in any::<bool>()) {
            if let Some((p, resp)) = negotiate(values.iter().map(String::as_str), force) {
                prop_assert!(resp.starts_with(EXTENSION));
                prop_assert!((8..=15).contains(&p.server_max_window_bits));
                prop_assert!((8..=15).contains(&p.client_max_window_bits));
                // The response must itself be acceptable as an offer.
                prop_assert!(negotiate([resp.as_str()], false).is_some());
            }
        }
    }
}
