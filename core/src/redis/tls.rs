//! `rediss://`: the Redis connections' TLS, as a client. Like the listener's TLS it runs in
//! the core (rustls is sans-IO): the hub seals what a link queues and opens what the socket
//! brings, so the links and the map reader stay plaintext RESP and both shells get it free.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::config::ConfigError;
use crate::tls::WallClock;

/// How new Redis TLS sessions verify the server: the roots they trust, and the wall clock
/// certificates are checked against (the core reads no clock; the shell hands it in).
#[derive(Clone)]
pub(crate) struct RedisTls {
    config: Arc<ClientConfig>,
    clock: Arc<WallClock>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls").finish_non_exhaustive()
    }
}

impl RedisTls {
    /// Trusts the certificates of `ca_pem` (`broker.tls_ca`'s text) or, without one, the
    /// bundled Mozilla roots (webpki-roots), as managed Redis services' certificates need.
    pub(crate) fn new(ca_pem: Option<&[u8]>) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError { key: "broker.tls_ca".to_owned(), line: 0, column: 0, message };
        let mut roots = RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| error(format!("not a PEM certificate list: {e}")))?;
                if certs.is_empty() {
                    return Err(error("holds no PEM certificate (BEGIN CERTIFICATE)".to_owned()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let clock = Arc::new(WallClock::default());
        let config = ClientConfig::builder_with_details(
            Arc::new(ring::default_provider()),
            Arc::clone(&clock) as Arc<dyn rustls::time_provider::TimeProvider>,
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| error(format!("{e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self { config: Arc::new(config), clock })
    }

    /// A session to the server named `host` (a DNS name or an IP address, as in the URL or
    /// the cluster's slot map); `None` if it is neither.
    pub(crate) fn connect(&self, host: &str) -> Option<RedisSession> {
        let name = ServerName::try_from(host.to_owned()).ok()?;
        let mut session = ClientConnection::new(Arc::clone(&self.config), name).ok()?;
        // The link's own bounds apply (commands wait for replies); rustls need not add one.
        session.set_buffer_limit(None);
        Some(RedisSession { session, sealed: Vec::new() })
    }

    /// The wall clock reads `unix_ms` now.
    pub(crate) fn set_wall_clock(&self, unix_ms: u64) {
        self.clock.0.store(unix_ms, Ordering::Relaxed);
    }
}

/// One Redis connection's TLS session and the ciphertext waiting for the socket.
#[derive(Debug)]
pub(crate) struct RedisSession {
    session: ClientConnection,
    /// Sealed records (and handshake messages) not yet written.
    pub(crate) sealed: Vec<u8>,
}

impl RedisSession {
    /// Seals `plain` (queued by the link) and moves what rustls has to send into `sealed`.
    pub(crate) fn seal(&mut self, plain: &[u8]) -> bool {
        if !plain.is_empty() && self.session.writer().write_all(plain).is_err() {
            return false;
        }
        while self.session.wants_write() {
            if self.session.write_tls(&mut self.sealed).is_err() {
                return false;
            }
        }
        true
    }

    /// Opens `cipher` from the socket, appending the plaintext to `plain`; false when the
    /// session failed (a bad record, an alert, a certificate that does not verify).
    pub(crate) fn open(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) -> bool {
        while !cipher.is_empty() {
            if self.session.read_tls(&mut cipher).is_err() || self.session.process_new_packets().is_err() {
                return false;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.session.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
        }
        // Handshake replies, key updates: for the socket.
        self.seal(&[])
    }
}
