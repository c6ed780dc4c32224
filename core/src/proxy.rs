//! Who the client is behind a reverse proxy: trusted networks, `Forwarded` / `X-Forwarded-For`
//! chains, and the PROXY protocol header (v1 text and v2 binary).
//!
//! Everything here reads bytes or strings it is handed and returns an answer; the shell decides
//! what a connection's TCP peer is and which header values arrived.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An IP network: an address and how many of its leading bits are fixed.
///
/// The address is stored with the host bits cleared, so `10.1.2.3/8` and `10.0.0.0/8` are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` leading bits; `None` if the family has fewer bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        if prefix > max_prefix(addr) {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(mask_v4(a.to_bits(), prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(mask_v6(a.to_bits(), prefix))),
        };
        Some(Self { addr, prefix })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in this network.
    ///
    /// IPv4 and IPv4-mapped IPv6 (`::ffff:a.b.c.d`) are the same host: a dual-stack socket reports
    /// IPv4 peers in the mapped form, and an operator should not have to list both.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip.to_bits(), self.prefix) == net.to_bits(),
            (IpAddr::V4(net), IpAddr::V6(ip)) => {
                ip.to_ipv4_mapped().is_some_and(|ip| mask_v4(ip.to_bits(), self.prefix) == net.to_bits())
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => mask_v6(ip.to_ipv6_mapped().to_bits(), self.prefix) == net.to_bits(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip.to_bits(), self.prefix) == net.to_bits(),
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress(s.to_owned()))?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                // A run of digits too big for a u8 is too long as well.
                _ => return Err(CidrError::PrefixTooLong { input: s.to_owned(), max }),
            },
            Some(_) => return Err(CidrError::BadPrefix(s.to_owned())),
        };
        Self::new(addr, prefix).ok_or(CidrError::PrefixTooLong { input: s.to_owned(), max })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CidrVisitor;
        impl Visitor<'_> for CidrVisitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network like \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.0.2.7\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(CidrVisitor)
    }
}

/// Why a string is not a [`Cidr`]; each variant holds the whole input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    BadAddress(String),
    /// The part after `/` is not a decimal number.
    BadPrefix(String),
    /// The prefix has more bits than the address family.
    PrefixTooLong {
        /// The string that was parsed.
        input: String,
        /// The longest prefix the family allows (32 or 128).
        max: u8,
    },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadAddress(input) => write!(f, "invalid network {input:?}: the address is not IPv4 or IPv6"),
            Self::BadPrefix(input) => {
                write!(f, "invalid network {input:?}: the prefix length after '/' is not a decimal number")
            }
            Self::PrefixTooLong { input, max } => {
                write!(f, "invalid network {input:?}: the prefix length is more than {max} bits, the address's size")
            }
        }
    }
}

impl std::error::Error for CidrError {}

/// The address per-IP rules count by.
///
/// An IPv4-mapped IPv6 address becomes its IPv4 address; other IPv6 addresses keep only their
/// first `ipv6_prefix` bits (clamped to 128), because one subscriber usually holds a whole /64
/// and could otherwise claim a fresh budget per address.
#[must_use]
pub(crate) fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(mask_v6(v6.to_bits(), ipv6_prefix.min(128)))),
        v4 => v4,
    }
}

/// The most hops of a forwarding chain looked at; a longer chain is cut from the left.
const MAX_HOPS: usize = 64;

/// The client's address, read from forwarding headers when `peer` is a trusted proxy.
///
/// `forwarded` is every `Forwarded` value (RFC 7239) in order, `x_forwarded_for` every
/// `X-Forwarded-For` value. Headers from an untrusted `peer` are ignored, since anyone can send
/// them. `Forwarded` is used when it holds any element, otherwise `X-Forwarded-For`; a trusted
/// proxy must therefore replace or strip the header it does not maintain itself.
///
/// The chain is walked from the right, skipping trusted hops: the first untrusted address is the
/// client. An entry that is not an address (`unknown`, an obfuscated name, garbage) ends the walk
/// at the trusted hop to its right, because nothing further left can be vouched for. When every
/// entry is trusted the leftmost one is the client. Only the last 64 entries are considered.
#[must_use]
pub(crate) fn client_from_headers<'a>(
    trusted: &[Cidr],
    peer: IpAddr,
    forwarded: impl IntoIterator<Item = &'a str>,
    x_forwarded_for: impl IntoIterator<Item = &'a str>,
) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let elements = last_entries(forwarded.into_iter().flat_map(|value| split_unquoted(value, b',')));
    if !elements.is_empty() {
        return walk(trusted, peer, &elements, forwarded_for);
    }
    let entries = last_entries(x_forwarded_for.into_iter().flat_map(|value| value.split(',')));
    walk(trusted, peer, &entries, |entry| parse_node(entry, false))
}

fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The last [`MAX_HOPS`] non-empty entries, trimmed.
fn last_entries<'a>(entries: impl Iterator<Item = &'a str>) -> VecDeque<&'a str> {
    let mut ring = VecDeque::new();
    for entry in entries {
        let entry = entry.trim();
        // HTTP list syntax allows empty elements, which recipients ignore.
        if entry.is_empty() {
            continue;
        }
        if ring.len() == MAX_HOPS {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
    ring
}

fn walk(trusted: &[Cidr], peer: IpAddr, entries: &VecDeque<&str>, parse: impl Fn(&str) -> Option<IpAddr>) -> IpAddr {
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse(entry) else { break };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    client
}

/// The `for=` address of one `Forwarded` element.
///
/// `None` when the element has no `for`, has two, or its node is not an address: each makes the
/// hop unknown.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim();
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Other parameters (`by`, `proto`, `host`, extensions) do not name the client.
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if node.is_some() {
            return None;
        }
        node = Some(unquote(value.trim())?);
    }
    parse_node(&node?, true)
}

/// A `token` or `quoted-string` value, unescaped; `None` if the quoting is broken.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return if value.contains('"') { None } else { Some(Cow::Borrowed(value)) };
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(Cow::Owned(out)),
            c => out.push(c),
        }
    }
    // No closing quote.
    None
}

/// Splits `s` at each `sep` byte that is not inside a quoted string.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in s.bytes().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && b == sep {
                // `sep` is ASCII, so both sides of it are char boundaries.
                rest = s.get(i + 1..);
                return s.get(..i);
            }
        }
        rest = None;
        Some(s)
    })
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`. `obfuscated_port` also accepts RFC 7239 ports like `_abc`.
fn parse_node(s: &str, obfuscated_port: bool) -> Option<IpAddr> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = v6.parse().ok()?;
        if !after.is_empty() {
            node_port(after.strip_prefix(':')?, obfuscated_port)?;
        }
        return Some(IpAddr::V6(ip));
    }
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // Without brackets only IPv4 can carry a port: in IPv6 the colon is ambiguous.
    let (v4, port) = s.rsplit_once(':')?;
    let ip: Ipv4Addr = v4.parse().ok()?;
    node_port(port, obfuscated_port)?;
    Some(IpAddr::V4(ip))
}

fn node_port(s: &str, obfuscated_ok: bool) -> Option<()> {
    if obfuscated_ok && let Some(name) = s.strip_prefix('_') {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        return valid.then_some(());
    }
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits && s.parse::<u16>().is_ok()).then_some(())
}

/// What the start of a connection says about its PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum ProxyHeader {
    /// A complete header of `len` bytes; `source` is the client's address, `None` for a LOCAL (v2)
    /// or UNKNOWN (v1) connection (a health check: use the TCP peer).
    Parsed {
        /// How many bytes the header takes; the connection's own data starts after them.
        len: usize,
        /// The client's address and port, when the header names one.
        source: Option<SocketAddr>,
    },
    /// Not enough bytes yet to decide.
    Incomplete,
    /// Not a valid header; the reason says what was wrong (for logs and metrics).
    Invalid(&'static str),
}

const NOT_PROXY: &str = "no PROXY protocol header";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (the spec's worst case: `UNKNOWN` with two full IPv6).
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_HEADER: usize = 16;
/// The most bytes of addresses and TLVs after the fixed v2 header we wait for.
const V2_MAX_PAYLOAD: usize = 2048;

/// Reads a PROXY protocol header (v1 or v2) at the start of `buf`.
///
/// Every byte is checked as soon as it arrives, so a connection that does not start with a header
/// (an HTTP request, say) is refused at its first byte rather than after a timeout.
pub(crate) fn parse_proxy_header(buf: &[u8]) -> ProxyHeader {
    match buf.first() {
        None => ProxyHeader::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => ProxyHeader::Invalid(NOT_PROXY),
    }
}

fn parse_v1(buf: &[u8]) -> ProxyHeader {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf.get(..seen) != V1_PREFIX.get(..seen) {
        return ProxyHeader::Invalid(NOT_PROXY);
    }
    let window = buf.get(..V1_MAX).unwrap_or(buf);
    let Some(body) = window.get(V1_PREFIX.len()..) else { return ProxyHeader::Incomplete };
    if let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let line = body.get(..end).unwrap_or_default();
        return match v1_fields(line, true) {
            Ok(source) => ProxyHeader::Parsed { len: V1_PREFIX.len() + end + 2, source },
            Err(reason) => ProxyHeader::Invalid(reason),
        };
    }
    // A trailing CR may be the start of the CRLF.
    let partial = body.strip_suffix(b"\r").unwrap_or(body);
    if let Err(reason) = v1_fields(partial, false) {
        return ProxyHeader::Invalid(reason);
    }
    if buf.len() >= V1_MAX {
        return ProxyHeader::Invalid("PROXY v1 header too long");
    }
    ProxyHeader::Incomplete
}

/// The fields of a v1 line after `PROXY `, checked left to right so that a broken line gives the
/// same reason whether or not its CRLF has arrived. Until it has (`complete` false), the last field
/// may be cut short and only has to be the start of something valid.
fn v1_fields(line: &[u8], complete: bool) -> Result<Option<SocketAddr>, &'static str> {
    let mut fields = line.split(|&b| b == b' ').enumerate().peekable();
    let mut v6 = false;
    let (mut src, mut sport, mut count) = (None, None, 0);
    while let Some((index, field)) = fields.next() {
        let cut = !complete && fields.peek().is_none();
        count = index + 1;
        match index {
            0 if cut => {
                let known: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
                return if known.iter().any(|p| p.starts_with(field)) { Ok(None) } else { Err(V1_BAD_PROTOCOL) };
            }
            0 => match field {
                // The spec has receivers ignore whatever follows UNKNOWN.
                b"UNKNOWN" => return Ok(None),
                b"TCP4" => v6 = false,
                b"TCP6" => v6 = true,
                _ => return Err(V1_BAD_PROTOCOL),
            },
            1 | 2 if cut => {
                if !v1_addr_start(field, v6) {
                    return Err(V1_BAD_ADDRESS);
                }
            }
            1 => src = Some(v1_addr(field, v6).ok_or(V1_BAD_ADDRESS)?),
            2 => {
                v1_addr(field, v6).ok_or(V1_BAD_ADDRESS)?;
            }
            // A non-empty prefix of a valid port is itself a valid port.
            3 | 4 if cut && field.is_empty() => {}
            3 => sport = Some(v1_port(field).ok_or(V1_BAD_PORT)?),
            4 => {
                v1_port(field).ok_or(V1_BAD_PORT)?;
            }
            _ => return Err(V1_BAD_FIELDS),
        }
    }
    match (src, sport) {
        (Some(ip), Some(port)) if count == 5 => Ok(Some(SocketAddr::new(ip, port))),
        _ if complete => Err(V1_BAD_FIELDS),
        _ => Ok(None),
    }
}

const V1_BAD_PROTOCOL: &str = "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN";
const V1_BAD_FIELDS: &str = "PROXY v1 header has the wrong number of fields";
const V1_BAD_ADDRESS: &str = "PROXY v1 address is not valid for its protocol";
const V1_BAD_PORT: &str = "PROXY v1 port is not a number from 0 to 65535";

fn v1_addr(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    if v6 { text.parse::<Ipv6Addr>().ok().map(IpAddr::V6) } else { text.parse::<Ipv4Addr>().ok().map(IpAddr::V4) }
}

/// Whether `field` can still grow into an address of its family.
fn v1_addr_start(field: &[u8], v6: bool) -> bool {
    if v6 {
        // Longest form: six groups and an embedded IPv4, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
        // Checked loosely; the complete field is parsed exactly.
        return field.len() <= 45 && field.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    if field.is_empty() {
        return true;
    }
    if field.len() > 15 || !field.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    // Octets can only get worse by growing, so the shortest completion is the test.
    let dots = field.iter().filter(|&&b| b == b'.').count();
    let mut completed = String::from_utf8_lossy(field).into_owned();
    if completed.ends_with('.') {
        completed.push('0');
    }
    for _ in dots..3 {
        completed.push_str(".0");
    }
    completed.parse::<Ipv4Addr>().is_ok()
}

fn v1_port(field: &[u8]) -> Option<u16> {
    // The spec forbids leading zeros, so "0" is a port and "080" is not.
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    if field.is_empty() || field.len() > 5 || leading_zero || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn parse_v2(buf: &[u8]) -> ProxyHeader {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..seen) != V2_SIGNATURE.get(..seen) {
        return ProxyHeader::Invalid(NOT_PROXY);
    }
    let Some(&version_command) = buf.get(12) else { return ProxyHeader::Incomplete };
    if version_command >> 4 != 2 {
        return ProxyHeader::Invalid("PROXY v2 version is not 2");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return ProxyHeader::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    let Some(&family) = buf.get(13) else { return ProxyHeader::Incomplete };
    // LOCAL discards the address block, family included, so only PROXY needs a known family.
    let addresses = match family {
        _ if local => 0,
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return ProxyHeader::Invalid("PROXY v2 address family or transport is unknown"),
    };
    let Some(&len_high) = buf.get(14) else { return ProxyHeader::Incomplete };
    if usize::from(len_high) << 8 > V2_MAX_PAYLOAD {
        return ProxyHeader::Invalid(V2_TOO_LONG);
    }
    let Some(&len_low) = buf.get(15) else { return ProxyHeader::Incomplete };
    let payload = usize::from(u16::from_be_bytes([len_high, len_low]));
    if payload > V2_MAX_PAYLOAD {
        return ProxyHeader::Invalid(V2_TOO_LONG);
    }
    if payload < addresses {
        return ProxyHeader::Invalid(V2_SHORT);
    }
    let len = V2_HEADER + payload;
    let Some(block) = buf.get(V2_HEADER..len) else { return ProxyHeader::Incomplete };
    let source = match family {
        _ if local => None,
        0x11 | 0x12 => {
            let Some((ip, port)) = v2_source::<4>(block) else { return ProxyHeader::Invalid(V2_SHORT) };
            Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        0x21 | 0x22 => {
            let Some((ip, port)) = v2_source::<16>(block) else { return ProxyHeader::Invalid(V2_SHORT) };
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        // UNSPEC and AF_UNIX name no IP client.
        _ => None,
    };
    ProxyHeader::Parsed { len, source }
}

const V2_TOO_LONG: &str = "PROXY v2 header too long";
const V2_SHORT: &str = "PROXY v2 length is shorter than its addresses";

/// The source address and port of an IP address block: source, destination, source port, dest port.
fn v2_source<const N: usize>(block: &[u8]) -> Option<([u8; N], u16)> {
    let (src, rest) = block.split_first_chunk::<N>()?;
    let (_dst, rest) = rest.split_first_chunk::<N>()?;
    let (port, _) = rest.split_first_chunk::<2>()?;
    Some((*src, u16::from_be_bytes(*port)))
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    // A shift by the full width is a mask of nothing: /0.
    bits & u32::MAX.checked_shl(32u32.saturating_sub(prefix.into())).unwrap_or(0)
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    bits & u128::MAX.checked_shl(128u32.saturating_sub(prefix.into())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test network")
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| cidr(s)).collect()
    }

    #[test]
    fn cidr_parses_and_displays() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::1/128").to_string(), "::1/128");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        // Host bits are masked.
        assert_eq!(cidr("10.1.2.3/8"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("2001:db8:ffff::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("255.255.255.255/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("10.0.0.1/31").to_string(), "10.0.0.0/31");
        let c = cidr("172.16.5.4/12");
        assert_eq!((c.addr(), c.prefix()), (ip("172.16.0.0"), 12));
        assert_eq!(Cidr::new(ip("10.0.0.1"), 33), None);
        assert_eq!(Cidr::new(ip("10.0.0.1"), 24), Some(cidr("10.0.0.0/24")));
    }

    #[test]
    fn cidr_errors() {
        for bad in ["", "/8", "10.0.0/8", "10.0.0.256", "host.example", "10.0.0.0 /8", " 10.0.0.0", "[::1]/128"] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::BadAddress(bad.to_owned())), "{bad}");
        }
        for bad in ["10.0.0.0/", "10.0.0.0/x", "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/8 ", "::/1.5", "::/8/8"] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::BadPrefix(bad.to_owned())), "{bad}");
        }
        for (bad, max) in [("10.0.0.0/33", 32), ("::/129", 128), ("::/99999999999999999999", 128), ("1.2.3.4/256", 32)]
        {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::PrefixTooLong { input: bad.to_owned(), max }), "{bad}");
        }
        let message = "10.0.0.0/33".parse::<Cidr>().map_err(|e| e.to_string());
        assert!(message.as_ref().is_err_and(|m| m.contains("10.0.0.0/33") && m.contains("32")), "{message:?}");
        let message = "nope/8".parse::<Cidr>().map_err(|e| e.to_string());
        assert!(message.as_ref().is_err_and(|m| m.contains("nope/8") && m.contains("address")), "{message:?}");
        let message = "::/x".parse::<Cidr>().map_err(|e| e.to_string());
        assert!(message.as_ref().is_err_and(|m| m.contains("prefix")), "{message:?}");
    }

    #[test]
    fn cidr_contains_v4() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!cidr("192.0.2.7/32").contains(ip("192.0.2.6")));
        assert!(cidr("192.0.2.6/31").contains(ip("192.0.2.7")));
    }

    #[test]
    fn cidr_contains_v6() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(ip("2001:db8::1")));
        assert!(net.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!net.contains(ip("2001:db9::")));
        assert!(!net.contains(ip("32.1.13.184")));
        assert!(cidr("::1/128").contains(ip("::1")));
        assert!(!cidr("::1/128").contains(ip("::2")));
        assert!(cidr("::/0").contains(ip("fe80::1")));
    }

    #[test]
    fn cidr_mapped_addresses() {
        // A v4 network matches mapped v6 peers; a v6 mapped network matches v4 peers.
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:11.1.2.3")));
        // Only the mapped form, not the deprecated compatible one or NAT64.
        assert!(!cidr("10.0.0.0/8").contains(ip("::10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("64:ff9b::10.1.2.3")));
        assert!(cidr("::ffff:0:0/96").contains(ip("198.51.100.1")));
        assert!(cidr("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        assert!(!cidr("::ffff:10.0.0.0/104").contains(ip("11.9.9.9")));
        assert!(!cidr("2001:db8::/32").contains(ip("10.0.0.1")));
        assert!(cidr("127.0.0.1").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn cidr_serde_round_trips_through_toml() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Conf {
            trusted: Vec<Cidr>,
        }
        let parsed: Result<Conf, _> = toml::from_str("trusted = [\"10.0.0.0/8\", \"::1\", \"2001:db8::/32\"]");
        let conf = Conf { trusted: nets(&["10.0.0.0/8", "::1/128", "2001:db8::/32"]) };
        assert_eq!(parsed.as_ref().ok(), Some(&conf));
        let text = toml::to_string(&conf).unwrap_or_default();
        assert!(text.contains("\"::1/128\""), "{text}");
        assert_eq!(toml::from_str::<Conf>(&text).ok(), Some(conf));
        let err = toml::from_str::<Conf>("trusted = [\"10.0.0.0/33\"]").map_err(|e| e.to_string());
        assert!(err.as_ref().is_err_and(|m| m.contains("10.0.0.0/33") && m.contains("32 bits")), "{err:?}");
        assert!(toml::from_str::<Conf>("trusted = [8]").is_err());
    }

    #[test]
    fn client_key_groups() {
        assert_eq!(client_key(ip("203.0.113.7"), 64), ip("203.0.113.7"));
        assert_eq!(client_key(ip("::ffff:203.0.113.7"), 64), ip("203.0.113.7"));
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:ffff::1"), 64), client_key(ip("2001:db8:1:2::9"), 64));
        assert_ne!(client_key(ip("2001:db8:1:2::1"), 64), client_key(ip("2001:db8:1:3::1"), 64));
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6"), 48), ip("2001:db8:1::"));
        assert_eq!(client_key(ip("2001:db8::6"), 128), ip("2001:db8::6"));
        assert_eq!(client_key(ip("2001:db8::6"), 200), ip("2001:db8::6"));
        assert_eq!(client_key(ip("2001:db8::6"), 0), ip("::"));
        // The mapped form is unwrapped before masking, so v4 clients are never grouped.
        assert_eq!(client_key(ip("::ffff:1.2.3.4"), 0), ip("1.2.3.4"));
    }

    const PEER: &str = "10.0.0.1";

    fn xff(trusted: &[&str], peer: &str, values: &[&str]) -> IpAddr {
        client_from_headers(&nets(trusted), ip(peer), [], values.iter().copied())
    }

    fn fwd(trusted: &[&str], peer: &str, values: &[&str]) -> IpAddr {
        client_from_headers(&nets(trusted), ip(peer), values.iter().copied(), [])
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        assert_eq!(xff(&["192.168.0.0/16"], PEER, &["203.0.113.7"]), ip(PEER));
        assert_eq!(xff(&[], PEER, &["203.0.113.7"]), ip(PEER));
        assert_eq!(fwd(&[], PEER, &["for=203.0.113.7"]), ip(PEER));
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7"]), ip("203.0.113.7"));
        // The client forged the first entry; the proxy appended the real one.
        assert_eq!(xff(&trusted, PEER, &["6.6.6.6, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(xff(&trusted, PEER, &["6.6.6.6, 203.0.113.7, 10.2.2.2"]), ip("203.0.113.7"));
        assert_eq!(xff(&trusted, PEER, &[" 203.0.113.7:5555 ,10.2.2.2 "]), ip("203.0.113.7"));
        assert_eq!(xff(&trusted, PEER, &["[2001:db8::1]:80"]), ip("2001:db8::1"));
        assert_eq!(xff(&trusted, PEER, &["2001:db8::1"]), ip("2001:db8::1"));
        assert_eq!(xff(&trusted, PEER, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(xff(&trusted, PEER, &["\t203.0.113.7\t"]), ip("203.0.113.7"));
        // Addresses come back as parsed, mapped form included.
        assert_eq!(xff(&trusted, PEER, &["::ffff:203.0.113.7"]), ip("::ffff:203.0.113.7"));
        // A mapped trusted proxy is still trusted.
        assert_eq!(xff(&trusted, "::ffff:10.0.0.1", &["203.0.113.7, ::ffff:10.3.3.3"]), ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(xff(&trusted, PEER, &["10.1.1.1, 10.2.2.2"]), ip("10.1.1.1"));
        assert_eq!(fwd(&trusted, PEER, &["for=10.1.1.1, for=10.2.2.2"]), ip("10.1.1.1"));
    }

    #[test]
    fn empty_chain_gives_peer() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(xff(&trusted, PEER, &[]), ip(PEER));
        assert_eq!(xff(&trusted, PEER, &["", " , ,"]), ip(PEER));
        assert_eq!(client_from_headers(&nets(&trusted), ip(PEER), [""], ["203.0.113.7"]), ip("203.0.113.7"));
    }

    #[test]
    fn bad_entry_stops_the_walk() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7, unknown"]), ip(PEER));
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7, garbage, 10.2.2.2"]), ip("10.2.2.2"));
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7, 10.2.2.2:99999"]), ip(PEER));
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7, 1.2.3.4:"]), ip(PEER));
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7, fe80::1%eth0"]), ip(PEER));
        // A bad entry left of the client does not matter.
        assert_eq!(xff(&trusted, PEER, &["unknown, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(fwd(&trusted, PEER, &["for=203.0.113.7, for=_hidden"]), ip(PEER));
        assert_eq!(fwd(&trusted, PEER, &["for=203.0.113.7, for=unknown, for=10.2.2.2"]), ip("10.2.2.2"));
        assert_eq!(fwd(&trusted, PEER, &["for=203.0.113.7, proto=https"]), ip(PEER));
        assert_eq!(fwd(&trusted, PEER, &["for=203.0.113.7, for=10.2.2.2;for=10.3.3.3"]), ip(PEER));
        assert_eq!(fwd(&trusted, PEER, &["for=203.0.113.7, for=\"10.2.2.2"]), ip(PEER));
    }

    #[test]
    fn forwarded_syntax() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(fwd(&trusted, PEER, &["for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
        assert_eq!(fwd(&trusted, PEER, &["for=192.0.2.43"]), ip("192.0.2.43"));
        assert_eq!(fwd(&trusted, PEER, &["for=\"192.0.2.43:80\""]), ip("192.0.2.43"));
        assert_eq!(fwd(&trusted, PEER, &["for=[::1]"]), ip("::1"));
        assert_eq!(fwd(&trusted, PEER, &["For=192.0.2.60;proto=http;by=203.0.113.43"]), ip("192.0.2.60"));
        assert_eq!(fwd(&trusted, PEER, &["proto=https; FOR=192.0.2.61 ; host=\"a;b,c\""]), ip("192.0.2.61"));
        assert_eq!(fwd(&trusted, PEER, &["for=\"[2001:db8::1]:_port\""]), ip("2001:db8::1"));
        assert_eq!(fwd(&trusted, PEER, &["for=\"\\[::2\\]\""]), ip("::2"));
        // A quoted comma does not split elements.
        assert_eq!(fwd(&trusted, PEER, &["for=192.0.2.1;ext=\"x, for=6.6.6.6\""]), ip("192.0.2.1"));
        assert_eq!(fwd(&trusted, PEER, &["for=192.0.2.43, for=198.51.100.17"]), ip("198.51.100.17"));
        assert_eq!(fwd(&trusted, PEER, &["for=192.0.2.43, for=10.9.9.9;by=10.0.0.1"]), ip("192.0.2.43"));
    }

    #[test]
    fn forwarded_preferred_over_xff() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_from_headers(&trusted, ip(PEER), ["for=192.0.2.1"], ["198.51.100.1"]);
        assert_eq!(got, ip("192.0.2.1"));
        let got = client_from_headers(&trusted, ip(PEER), [], ["198.51.100.1"]);
        assert_eq!(got, ip("198.51.100.1"));
    }

    #[test]
    fn multiple_header_lines_form_one_chain() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(xff(&trusted, PEER, &["6.6.6.6, 203.0.113.7", "10.2.2.2", "10.3.3.3"]), ip("203.0.113.7"));
        assert_eq!(xff(&trusted, PEER, &["203.0.113.7", "198.51.100.1, 10.3.3.3"]), ip("198.51.100.1"));
        assert_eq!(fwd(&trusted, PEER, &["for=6.6.6.6", "for=192.0.2.1", "for=10.2.2.2"]), ip("192.0.2.1"));
    }

    #[test]
    fn only_the_last_64_hops_count() {
        let trusted = ["10.0.0.0/8"];
        let hops = vec!["10.1.1.1"; 64].join(", ");
        let chain = format!("203.0.113.7, {hops}");
        // The untrusted client is the 65th entry from the right: out of reach.
        assert_eq!(xff(&trusted, PEER, &[&chain]), ip("10.1.1.1"));
        let hops = vec!["10.1.1.1"; 63].join(", ");
        let chain = format!("203.0.113.7, {hops}");
        assert_eq!(xff(&trusted, PEER, &[&chain]), ip("203.0.113.7"));
    }

    fn parsed(len: usize, source: Option<&str>) -> ProxyHeader {
        ProxyHeader::Parsed { len, source: source.map(|s| s.parse().expect("test socket address")) }
    }

    fn assert_prefixes_incomplete(header: &[u8]) {
        for cut in 0..header.len() {
            let prefix = header.get(..cut).unwrap_or_default();
            assert_eq!(parse_proxy_header(prefix), ProxyHeader::Incomplete, "{:?}", String::from_utf8_lossy(prefix));
        }
    }

    #[test]
    fn v1_vectors() {
        let tcp4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        assert_eq!(parse_proxy_header(tcp4), parsed(tcp4.len(), Some("192.0.2.1:56324")));
        let mut with_data = tcp4.to_vec();
        with_data.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse_proxy_header(&with_data), parsed(tcp4.len(), Some("192.0.2.1:56324")));
        let tcp6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n";
        assert_eq!(parse_proxy_header(tcp6), parsed(tcp6.len(), Some("[2001:db8::1]:0")));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse_proxy_header(unknown), parsed(unknown.len(), None));
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(parse_proxy_header(unknown), parsed(unknown.len(), None));
        for header in [&tcp4[..], tcp6, unknown] {
            assert_prefixes_incomplete(header);
        }
    }

    #[test]
    fn v1_longest_line_fits() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(longest.len(), 104);
        assert_eq!(
            parse_proxy_header(longest.as_bytes()),
            parsed(104, Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
        );
        let unknown = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX);
        assert_eq!(parse_proxy_header(unknown.as_bytes()), parsed(V1_MAX, None));
        assert_prefixes_incomplete(unknown.as_bytes());
    }

    #[test]
    fn v1_too_long() {
        let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX));
        let bytes = line.as_bytes();
        assert_eq!(parse_proxy_header(bytes), ProxyHeader::Invalid("PROXY v1 header too long"));
        assert_eq!(
            parse_proxy_header(bytes.get(..V1_MAX).unwrap_or_default()),
            ProxyHeader::Invalid("PROXY v1 header too long")
        );
        assert_eq!(parse_proxy_header(bytes.get(..V1_MAX - 1).unwrap_or_default()), ProxyHeader::Incomplete);
        // CRLF as bytes 107 and 108 is one byte too many.
        let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        assert_eq!(line.len(), V1_MAX + 1);
        assert_eq!(parse_proxy_header(line.as_bytes()), ProxyHeader::Invalid("PROXY v1 header too long"));
    }

    #[test]
    fn v1_invalid() {
        let cases: [&[u8]; 21] = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 7\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n",
            b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 443\r\n",
            b"PROXY  TCP4",
            b"PROXY TCP4 1.2.3.400",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999",
            b"PROXY TCP6 2001:db8::g",
        ];
        for case in cases {
            let got = parse_proxy_header(case);
            assert!(matches!(got, ProxyHeader::Invalid(_)), "{:?} gave {got:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn not_proxy_at_once() {
        for case in [&b"GET / HTTP/1.1\r\n"[..], b"G", b"PROXX", b"proxy ", b"\r\n\r\n\x01", b"\r\r", b"\x16\x03\x01"] {
            assert_eq!(parse_proxy_header(case), ProxyHeader::Invalid(NOT_PROXY), "{case:?}");
        }
        for case in [&b""[..], b"P", b"PRO", b"PROXY", b"PROXY ", b"\r", b"\r\n\r\n\0"] {
            assert_eq!(parse_proxy_header(case), ProxyHeader::Incomplete, "{case:?}");
        }
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn v4_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 2];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn v6_block() -> Vec<u8> {
        let mut b = ip_bytes("2001:db8::1");
        b.extend(ip_bytes("2001:db8::2"));
        b.extend_from_slice(&4711u16.to_be_bytes());
        b.extend_from_slice(&80u16.to_be_bytes());
        b
    }

    fn ip_bytes(s: &str) -> Vec<u8> {
        s.parse::<Ipv6Addr>().map(|a| a.octets().to_vec()).unwrap_or_default()
    }

    #[test]
    fn v2_vectors() {
        let tcp4 = v2(1, 0x11, &v4_block());
        assert_eq!(tcp4.len(), 28);
        assert_eq!(parse_proxy_header(&tcp4), parsed(28, Some("192.0.2.1:56324")));
        let udp4 = v2(1, 0x12, &v4_block());
        assert_eq!(parse_proxy_header(&udp4), parsed(28, Some("192.0.2.1:56324")));
        let tcp6 = v2(1, 0x21, &v6_block());
        assert_eq!(parse_proxy_header(&tcp6), parsed(52, Some("[2001:db8::1]:4711")));
        let udp6 = v2(1, 0x22, &v6_block());
        assert_eq!(parse_proxy_header(&udp6), parsed(52, Some("[2001:db8::1]:4711")));
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse_proxy_header(&local), parsed(16, None));
        // LOCAL ignores whatever addresses and family it carries.
        let local_tcp4 = v2(0, 0x11, &v4_block());
        assert_eq!(parse_proxy_header(&local_tcp4), parsed(28, None));
        let local_odd = v2(0, 0x77, &[1, 2, 3]);
        assert_eq!(parse_proxy_header(&local_odd), parsed(19, None));
        let unspec = v2(1, 0x00, &[]);
        assert_eq!(parse_proxy_header(&unspec), parsed(16, None));
        let unix = v2(1, 0x31, &[0; 216]);
        assert_eq!(parse_proxy_header(&unix), parsed(232, None));
        let unix_dgram = v2(1, 0x32, &[0; 216]);
        assert_eq!(parse_proxy_header(&unix_dgram), parsed(232, None));
        // TLVs after the addresses are skipped: PP2_TYPE_ALPN "h2", then a NOOP.
        let mut block = v4_block();
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
        let with_tlvs = v2(1, 0x11, &block);
        assert_eq!(parse_proxy_header(&with_tlvs), parsed(36, Some("192.0.2.1:56324")));
        let mut with_data = with_tlvs.clone();
        with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse_proxy_header(&with_data), parsed(36, Some("192.0.2.1:56324")));
        for header in [&tcp4, &tcp6, &local, &unix, &with_tlvs] {
            assert_prefixes_incomplete(header);
        }
    }

    #[test]
    fn v2_invalid() {
        let mut bad_version = v2(1, 0x11, &v4_block());
        if let Some(b) = bad_version.get_mut(12) {
            *b = 0x11;
        }
        assert_eq!(parse_proxy_header(&bad_version), ProxyHeader::Invalid("PROXY v2 version is not 2"));
        assert_eq!(
            parse_proxy_header(bad_version.get(..13).unwrap_or_default()),
            ProxyHeader::Invalid("PROXY v2 version is not 2")
        );
        let bad_command = v2(2, 0x11, &v4_block());
        assert!(matches!(parse_proxy_header(&bad_command), ProxyHeader::Invalid(r) if r.contains("command")));
        for family in [0x01, 0x10, 0x13, 0x23, 0x30, 0x41, 0xff] {
            let header = v2(1, family, &[0; 216]);
            assert!(
                matches!(parse_proxy_header(&header), ProxyHeader::Invalid(r) if r.contains("family")),
                "{family:#x}"
            );
            assert!(matches!(parse_proxy_header(header.get(..14).unwrap_or_default()), ProxyHeader::Invalid(_)));
        }
        let short4 = v2(1, 0x11, &[0; 11]);
        assert_eq!(parse_proxy_header(&short4), ProxyHeader::Invalid(V2_SHORT));
        let short6 = v2(1, 0x21, &[0; 35]);
        assert_eq!(parse_proxy_header(&short6), ProxyHeader::Invalid(V2_SHORT));
        let short_unix = v2(1, 0x31, &[0; 215]);
        assert_eq!(parse_proxy_header(&short_unix), ProxyHeader::Invalid(V2_SHORT));
        // Rejected from the length field alone, before the bytes arrive.
        let most = v2(1, 0x11, &[0; V2_MAX_PAYLOAD]);
        assert_eq!(parse_proxy_header(&most), parsed(16 + V2_MAX_PAYLOAD, Some("0.0.0.0:0")));
        let too_long = v2(1, 0x11, &[0; V2_MAX_PAYLOAD + 1]);
        assert_eq!(parse_proxy_header(too_long.get(..16).unwrap_or_default()), ProxyHeader::Invalid(V2_TOO_LONG));
        let way_too_long = v2(1, 0x11, &[0; 0x0900]);
        assert_eq!(parse_proxy_header(way_too_long.get(..15).unwrap_or_default()), ProxyHeader::Invalid(V2_TOO_LONG));
        assert_eq!(parse_proxy_header(most.get(..15).unwrap_or_default()), ProxyHeader::Incomplete);
    }

    /// A valid v1 or v2 header from generated parts, with the source it names.
    fn valid_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
        let v1 = (any::<bool>(), any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u16>(), any::<u16>()).prop_map(
            |(v6, src, dst, sport, dport)| {
                let (src, dst, proto): (IpAddr, IpAddr, _) = if v6 {
                    (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into(), "TCP6")
                } else {
                    let four = |b: [u8; 16]| IpAddr::from([b[0], b[1], b[2], b[3]]);
                    (four(src), four(dst), "TCP4")
                };
                let line = format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n");
                (line.into_bytes(), Some(SocketAddr::new(src, sport)))
            },
        );
        let v2s = (
            0u8..2,
            prop::sample::select(vec![0x00u8, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]),
            any::<[u8; 36]>(),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(command, family, addrs, tlvs)| {
                let mut block = match family {
                    0x11 | 0x12 => addrs.get(..12).unwrap_or_default().to_vec(),
                    0x21 | 0x22 => addrs.to_vec(),
                    0x31 | 0x32 => vec![0; 216],
                    _ => Vec::new(),
                };
                let source = match (command, family) {
                    (1, 0x11 | 0x12) => Some(SocketAddr::from((
                        [addrs[0], addrs[1], addrs[2], addrs[3]],
                        u16::from_be_bytes([addrs[8], addrs[9]]),
                    ))),
                    (1, 0x21 | 0x22) => {
                        let mut ip = [0; 16];
                        ip.copy_from_slice(&addrs[..16]);
                        Some(SocketAddr::from((ip, u16::from_be_bytes([addrs[32], addrs[33]]))))
                    }
                    _ => None,
                };
                block.extend_from_slice(&tlvs);
                (v2(command, family, &block), source)
            });
        prop_oneof![v1, v2s, Just((b"PROXY UNKNOWN\r\n".to_vec(), None))]
    }

    /// Checks the invariants every answer must keep, on `buf` and all its prefixes.
    fn check_consistent(buf: &[u8]) -> Result<(), TestCaseError> {
        let whole = parse_proxy_header(buf);
        if let ProxyHeader::Parsed { len, .. } = whole {
            prop_assert!(len <= buf.len());
            prop_assert_eq!(parse_proxy_header(buf.get(..len).unwrap_or_default()), whole);
        }
        for cut in 0..buf.len() {
            match parse_proxy_header(buf.get(..cut).unwrap_or_default()) {
                // A decision, once made, holds however many bytes follow.
                ProxyHeader::Invalid(reason) => prop_assert_eq!(whole, ProxyHeader::Invalid(reason)),
                parsed @ ProxyHeader::Parsed { .. } => prop_assert_eq!(whole, parsed),
                ProxyHeader::Incomplete => {}
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..300)) {
            check_consistent(&buf)?;
        }

        #[test]
        fn arbitrary_after_a_valid_start(
            prefix in prop_oneof![Just(V1_PREFIX.to_vec()), Just(V2_SIGNATURE.to_vec()), Just(b"PROXY TCP4 ".to_vec())],
            tail in prop::collection::vec(any::<u8>(), 0..200),
            text in "[0-9a-fA-F:. TCPUNKOWX46\r\n]{0,120}",
        ) {
            let mut buf = prefix.clone();
            buf.extend_from_slice(&tail);
            check_consistent(&buf)?;
            let mut buf = prefix;
            buf.extend_from_slice(text.as_bytes());
            check_consistent(&buf)?;
        }

        #[test]
        fn valid_headers_parse(
            (header, source) in valid_header(),
            tail in prop::collection::vec(any::<u8>(), 0..20),
            flip in any::<(usize, u8)>(),
        ) {
            let mut buf = header.clone();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(parse_proxy_header(&buf), ProxyHeader::Parsed { len: header.len(), source });
            for cut in 0..header.len() {
                prop_assert_eq!(parse_proxy_header(header.get(..cut).unwrap_or_default()), ProxyHeader::Incomplete);
            }
            check_consistent(&buf)?;
            // One corrupted byte may make it invalid, but never a panic or an inconsistency.
            if let Some(b) = buf.get_mut(flip.0 % header.len()) {
                *b ^= flip.1;
            }
            check_consistent(&buf)?;
        }

        #[test]
        fn header_functions_never_panic(
            values in prop::collection::vec("[ -~\t]{0,40}", 0..4),
            forwarded in prop::collection::vec("(for|For|by|proto)?=?\"?[\\[\\]0-9a-f:._,;\" \\\\]{0,30}", 0..4),
            text in "\\PC{0,40}",
            prefix in 0u8..=255,
        ) {
            let trusted = nets(&["10.0.0.0/8", "::1"]);
            let peer = ip("10.0.0.1");
            let got = client_from_headers(&trusted, peer, forwarded.iter().map(String::as_str), values.iter().map(String::as_str));
            let _ = client_key(got, prefix);
            let _ = client_from_headers(&trusted, peer, [text.as_str()], [text.as_str()]);
            let _ = client_from_headers(&trusted, peer, [], values.iter().map(String::as_str));
            if let Ok(net) = text.parse::<Cidr>() {
                prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
            }
            for value in &values {
                if let Ok(net) = value.parse::<Cidr>() {
                    prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
                }
            }
        }

        #[test]
        fn cidr_contains_its_members(addr in any::<u128>(), other in any::<u128>(), prefix in 0u8..=128) {
            let net = Cidr::new(IpAddr::V6(Ipv6Addr::from_bits(addr)), prefix);
            prop_assert!(net.is_some_and(|n| n.contains(IpAddr::V6(Ipv6Addr::from_bits(addr)))));
            let shared = mask_v6(addr ^ other, prefix) == 0;
            prop_assert_eq!(net.is_some_and(|n| n.contains(IpAddr::V6(Ipv6Addr::from_bits(other)))), shared);
            let v4 = (addr as u32, other as u32, prefix.min(32));
            let net4 = Cidr::new(IpAddr::V4(Ipv4Addr::from_bits(v4.0)), v4.2);
            let shared4 = mask_v4(v4.0 ^ v4.1, v4.2) == 0;
            prop_assert_eq!(net4.is_some_and(|n| n.contains(IpAddr::V4(Ipv4Addr::from_bits(v4.1)))), shared4);
            let mapped = IpAddr::V6(Ipv4Addr::from_bits(v4.1).to_ipv6_mapped());
            prop_assert_eq!(net4.is_some_and(|n| n.contains(mapped)), shared4);
        }
    }
}
