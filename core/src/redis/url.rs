//! The broker URL: `redis://host[:port][/db]` or `rediss://…` (TLS), and why any other form is
//! refused.

use std::fmt;

/// Why the broker URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlError {
    /// The URL as configured.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker.url {:?}: {}", self.url, self.reason)
    }
}

impl std::error::Error for UrlError {}

/// Splits a `redis://host[:port][/db]` (or `rediss://`, over TLS) URL into `host:port` and
/// the database number.
pub(crate) fn parse_url(url: &str) -> Result<(String, u32), UrlError> {
    let error = |reason| UrlError { url: url.to_owned(), reason };
    let Some(rest) = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")) else {
        return Err(error(if url.starts_with("unix://") || url.starts_with("redis+unix://") {
            "unix sockets are not supported; use redis://host:port"
        } else {
            "must start with redis:// (or rediss:// for TLS)"
        }));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(error("credentials in the URL are not supported"));
    }
    if path.contains(['?', '#']) || authority.contains(['?', '#']) {
        return Err(error("query parameters are not supported"));
    }
    let db = if path.is_empty() { Ok(0) } else { path.parse::<u32>().map_err(|_| error("database must be a number")) }?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else { return Err(error("unclosed [ in the host")) };
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => 6379,
        Some(port) => port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| error("port must be 1..=65535"))?,
    };
    if host.is_empty() || host == "[]" {
        return Err(error("missing host"));
    }
    Ok((format!("{host}:{port}"), db))
}

/// Whether `url` asks for TLS (`rediss://`).
pub(crate) fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The host of `addr` (`host:port` or `[v6]:port`), as a TLS server name.
pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}
