//! One client connection, and the bytes of a timed message.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use smol::Async;
use smol::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

pub(crate) type Ws = WebSocketStream<Stream>;

/// The environment variable naming the PEM certificate a `wss://` target is trusted by.
pub(crate) const CA_ENV: &str = "SWITCHBOARD_BENCH_CA";

/// A client's socket: plain TCP (`ws://`) or TLS over it (`wss://`).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The bare TCP socket, for the readers that walk frames on it; `None` under TLS.
    pub(crate) fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Self::Plain(stream) => Some(stream),
            Self::Tls(_) => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_close(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// What the bytes at the front of a read buffer hold, for readers that walk server frames in
/// place instead of building a `Message` per frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// A whole frame: its opcode and where its payload lies in the buffer.
    Frame { opcode: OpCode, start: usize, end: usize },
    /// The frame is not all here; it ends at `end` (unknown while its header is incomplete).
    Partial { end: Option<usize> },
    /// Not a frame these readers accept: a server frame is unmasked, and the hubs never split
    /// these small messages nor set extension bits (the clients offer none).
    Bad(String),
}

/// The frame starting at `pos` in `buf[..filled]`.
pub(crate) fn walk(buf: &[u8], pos: usize, filled: usize) -> Walk {
    let mut cursor = Cursor::new(&buf[pos..filled]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Walk::Partial { end: None },
        Err(e) => return Walk::Bad(format!("frame: {e}")),
    };
    let start = pos + cursor.position() as usize;
    let Some(end) = usize::try_from(len).ok().and_then(|len| start.checked_add(len)) else {
        return Walk::Bad(format!("frame of {len} bytes"));
    };
    if end > filled {
        return Walk::Partial { end: Some(end) };
    }
    if header.mask.is_some() || header.rsv1 || header.rsv2 || header.rsv3 || !header.is_final {
        return Walk::Bad("frame: masked, fragmented or with RSV bits".into());
    }
    Walk::Frame { opcode: header.opcode, start, end }
}

/// Where the clients connect: the URL for the upgrade, the socket address behind it, and for
/// `wss://` the TLS client (trusting the certificate `SWITCHBOARD_BENCH_CA` names).
#[derive(Clone)]
pub(crate) struct Target {
    url: String,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, None),
            (_, Some(rest)) => (rest, Some(tls_connector()?)),
            _ => return Err(format!("--url {url}: must start with ws:// or wss://")),
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        // An IP, not a name: resolving 20,000 times would measure the resolver.
        let addr = authority.parse().map_err(|e| format!("--url {url}: {authority}: {e} (give IP:PORT)"))?;
        Ok(Self { url: url.to_owned(), addr, tls })
    }

    /// True for a `wss://` target.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A TLS client trusting only the certificate in the file `SWITCHBOARD_BENCH_CA` names (it
/// must carry the target's IP among its names).
fn tls_connector() -> Result<TlsConnector, String> {
    let path = std::env::var(CA_ENV).map_err(|_| format!("wss:// needs {CA_ENV}=<PEM certificate to trust>"))?;
    let cert = CertificateDer::from_pem_file(&path).map_err(|e| format!("{CA_ENV}={path}: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots.add(cert).map_err(|e| format!("{CA_ENV}={path}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: a resumed one would measure a different thing, and
    // not every server offers it.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Socket options a client wants before its upgrade.
#[derive(Clone, Copy)]
pub(crate) struct Options {
    /// tungstenite allocates this much per connection up front, so idle runs keep it small.
    pub(crate) read_buffer: usize,
    /// `SO_RCVBUF`; a stalled reader gets a small one so the server feels it within seconds.
    pub(crate) receive_buffer: Option<usize>,
}

pub(crate) async fn connect(target: &Target, options: Options) -> Result<Ws, String> {
    let tcp = open(target, options).await?;
    let stream = match &target.tls {
        None => Stream::Plain(tcp),
        Some(connector) => {
            let name = ServerName::IpAddress(target.addr.ip().into());
            Stream::Tls(Box::new(connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?))
        }
    };
    // write_buffer_size 0: a frame goes out when sent, so its timestamp is its send time.
    let config = WebSocketConfig::default().read_buffer_size(options.read_buffer).write_buffer_size(0);
    let (ws, _) = async_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

/// Source addresses for loopback targets: 127.0.0.1 to 127.0.0.SOURCES, in turn.
///
/// With 19,500 connections from one address to one port, the kernel's search for a free
/// ephemeral port walks past every port that 4-tuple already holds: a profile of the connect
/// storm showed 73% of the generator's time in `__inet_hash_connect` and
/// `__inet_check_established`, which made the storm measure the generator's kernel. Spread
/// over 16 source addresses, each search walks a sixteenth as far.
const SOURCES: u8 = 16;

async fn open(target: &Target, options: Options) -> Result<TcpStream, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let socket = Socket::new(Domain::for_address(target.addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("socket", e))?;
    socket.set_nonblocking(true).map_err(|e| fail("nonblocking", e))?;
    // Publishers send one small frame at a time; Nagle would hold each until the last is acked.
    socket.set_tcp_nodelay(true).map_err(|e| fail("nodelay", e))?;
    // Closing with a reset leaves no TIME_WAIT behind; a full run opens and drops 20,000
    // connections a minute, which TIME_WAIT would pile up in the ephemeral port range.
    socket.set_linger(Some(Duration::ZERO)).map_err(|e| fail("linger", e))?;
    if let Some(bytes) = options.receive_buffer {
        socket.set_recv_buffer_size(bytes).map_err(|e| fail("SO_RCVBUF", e))?;
    }
    if let IpAddr::V4(ip) = target.addr.ip()
        && ip.is_loopback()
    {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let source = Ipv4Addr::new(127, 0, 0, 1 + NEXT.fetch_add(1, Ordering::Relaxed) % SOURCES);
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::from((source, 0)).into()).map_err(|e| fail("bind", e))?;
    }
    match socket.connect(&target.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(fail("connect", e)),
    }
    let stream = Async::new(std::net::TcpStream::from(socket)).map_err(|e| fail("register", e))?;
    stream.writable().await.map_err(|e| fail("connect", e))?;
    if let Some(e) = stream.get_ref().take_error().map_err(|e| fail("connect", e))? {
        return Err(fail("connect", e));
    }
    Ok(TcpStream::from(stream))
}

/// `IP_BIND_ADDRESS_NO_PORT`: the bind fixes only the address; the port is chosen at connect,
/// where the kernel can reuse a port that is free for this particular destination.
fn bind_address_no_port(socket: &Socket) -> Result<(), String> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for the life of `socket`; the option takes a `c_int`,
    // which `on` is, and `on` lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(format!("IP_BIND_ADDRESS_NO_PORT: {}", std::io::Error::last_os_error())) }
}

/// Nanoseconds since this process first asked; every client shares the one clock, so a
/// receive time minus a send time is a latency without any clock sync.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a timed message carries in its first bytes; the rest is padding up to `--size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) publisher: u32,
    pub(crate) seq: u64,
    pub(crate) sent_ns: u64,
}

impl Stamp {
    pub(crate) const LEN: usize = 20;

    pub(crate) fn encode(self, size: usize) -> Vec<u8> {
        let mut bytes = vec![0; size.max(Self::LEN)];
        bytes[..4].copy_from_slice(&self.publisher.to_le_bytes());
        bytes[4..12].copy_from_slice(&self.seq.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.sent_ns.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let publisher = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        let seq = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
        let sent_ns = u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?);
        Some(Self { publisher, seq, sent_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads() {
        let stamp = Stamp { publisher: 3, seq: 1 << 40, sent_ns: 123_456_789 };
        let bytes = stamp.encode(64);
        assert_eq!(bytes.len(), 64);
        assert_eq!(Stamp::decode(&bytes), Some(stamp));
        assert_eq!(Stamp::decode(&bytes[..19]), None);
    }

    #[test]
    fn walk_finds_whole_partial_and_bad_frames() {
        use async_tungstenite::tungstenite::protocol::frame::coding::Data;
        // Two unmasked text frames, "hi" and "abc", then the first byte of a third.
        let buf = [0x81, 2, b'h', b'i', 0x81, 3, b'a', b'b', b'c', 0x81];
        assert_eq!(walk(&buf, 0, buf.len()), Walk::Frame { opcode: OpCode::Data(Data::Text), start: 2, end: 4 });
        assert_eq!(walk(&buf, 4, buf.len()), Walk::Frame { opcode: OpCode::Data(Data::Text), start: 6, end: 9 });
        assert_eq!(walk(&buf, 9, buf.len()), Walk::Partial { end: None });
        assert_eq!(walk(&buf, 4, 7), Walk::Partial { end: Some(9) });
        let masked = [0x81, 0x80 | 1, 1, 2, 3, 4, b'x'];
        assert!(matches!(walk(&masked, 0, masked.len()), Walk::Bad(_)));
    }

    #[test]
    fn target_wants_an_ip() {
        assert!(Target::parse("ws://127.0.0.1:9/chat").is_ok());
        assert!(Target::parse("ws://localhost:9/chat").is_err());
        assert!(Target::parse("http://127.0.0.1:9/chat").is_err());
    }
}
