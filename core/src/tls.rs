//! TLS as the hub speaks it: the server's certificate and key, parsed into a rustls
//! `ServerConfig` ([`TlsKeys`]), and one connection's record layer ([`Tls`]) between the
//! socket's ciphertext and the HTTP / WebSocket plaintext.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::time_provider::TimeProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{Error, ServerConfig, ServerConnection, SupportedProtocolVersion};

use crate::config::{ConfigError, TlsConfig, TlsVersion};

/// The protocol ALPN offers: WebSocket upgrades and the HTTP endpoints are HTTP/1.1.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The server's certificate chain and private key, parsed and checked against each other:
/// what new handshakes present. Cheap to clone; a node's hubs share one.
#[derive(Clone)]
pub struct TlsKeys {
    config: Arc<ServerConfig>,
    clock: Arc<WallClock>,
}

impl TlsKeys {
    /// Parses `cert` (the PEM certificate chain, leaf first) and `key` (a PEM private key:
    /// PKCS#8, PKCS#1 or SEC1), the text of the files `tls.cert` and `tls.key` name. The error
    /// names `tls.cert` or `tls.key` and never shows key material.
    pub fn from_pem(tls: &TlsConfig, cert: &[u8], key: &[u8]) -> Result<Self, ConfigError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error("tls.cert", format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(error("tls.cert", "holds no PEM certificate (BEGIN CERTIFICATE)".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| error("tls.key", format!("holds no PEM private key: {e}")))?;
        let versions: &[&SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&TLS13, &TLS12],
            TlsVersion::V1_3 => &[&TLS13],
        };
        let clock = Arc::new(WallClock::default());
        let mut config = ServerConfig::builder_with_details(Arc::new(ring::default_provider()), clock.clone())
            .with_protocol_versions(versions)
            .map_err(|e| error("tls.min_version", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                Error::InconsistentKeys(_) => error("tls.key", "does not match the certificate of tls.cert".to_owned()),
                Error::InvalidCertificate(e) => error("tls.cert", format!("unusable certificate: {e}")),
                e => error("tls.key", format!("unusable private key: {e}")),
            })?;
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        // No resumption: a session cache is shared state and memory for little gain on
        // long-lived WebSocket connections, and tickets would need a key rotated by a clock.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self { config: Arc::new(config), clock })
    }

    /// A new connection's record layer, in its handshake.
    pub(crate) fn accept(&self) -> Option<Tls> {
        let mut session = ServerConnection::new(Arc::clone(&self.config)).ok()?;
        // The hub drains what rustls seals at once, so its buffer needs no bound of its own:
        // `send_queue_bytes` bounds the ciphertext once it is queued.
        session.set_buffer_limit(None);
        Some(Tls { session, failed: false, pending: Vec::new() })
    }

    /// The wall clock reads `unix_ms` now (rustls checks a resumption offer's age against it).
    pub(crate) fn set_wall_clock(&self, unix_ms: u64) {
        self.clock.0.store(unix_ms, Ordering::Relaxed);
    }
}

/// Written by hand: nothing of the key may reach a log.
impl std::fmt::Debug for TlsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKeys").field("alpn", &"http/1.1").finish_non_exhaustive()
    }
}

fn error(key: &str, message: String) -> ConfigError {
    ConfigError { key: key.to_owned(), line: 0, column: 0, message }
}

/// The time as the hub was last told it: rustls asks for one, and the core reads no clock.
#[derive(Debug, Default)]
pub(crate) struct WallClock(pub(crate) AtomicU64);

impl TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_millis(self.0.load(Ordering::Relaxed))))
    }
}

/// One connection's TLS record layer, and the plaintext waiting to be sealed.
#[derive(Debug)]
pub(crate) struct Tls {
    pub(crate) session: ServerConnection,
    /// A fatal error or alert ended the session: what the hub still queues is dropped.
    pub(crate) failed: bool,
    /// What the layer above queued since the last seal. Sealed together (`seal_pending`) when
    /// the hub's outputs are polled: the messages of one turn become one run of full records,
    /// not a record each (a fan-out burst of 64-byte messages costs one AES-GCM pass, not 64).
    pub(crate) pending: Vec<u8>,
}

impl Tls {
    /// Holds `plain` for the next seal; false when it is dropped: the session failed, or its
    /// handshake is not done (rustls would hold it unbounded, as the hub lifts its limit, for
    /// a client that may never finish).
    pub(crate) fn queue(&mut self, plain: &[u8]) -> bool {
        if self.failed || self.session.is_handshaking() {
            return false;
        }
        self.pending.extend_from_slice(plain);
        true
    }

    /// The pending plaintext's length and the records it was sealed into (`None` if rustls
    /// refused it, which its unlimited send buffer should never do: it is then dropped). The
    /// buffer is released, so an idle connection holds none.
    pub(crate) fn seal_pending(&mut self) -> (usize, Option<Bytes>) {
        let plain = std::mem::take(&mut self.pending);
        if plain.is_empty() || self.session.writer().write_all(&plain).is_err() {
            return (plain.len(), None);
        }
        (plain.len(), self.take_sealed())
    }

    /// What rustls has to send (handshake messages, an alert, sealed records), if anything.
    pub(crate) fn take_sealed(&mut self) -> Option<Bytes> {
        if !self.session.wants_write() {
            return None;
        }
        let mut sealed = Vec::new();
        while self.session.wants_write() {
            // Writing to a `Vec` cannot fail; stop rather than spin if rustls ever says it did.
            if self.session.write_tls(&mut sealed).is_err() {
                break;
            }
        }
        Some(Bytes::from(sealed))
    }
}
