//! Compact JWS tokens (RFC 7515/7519): `header.payload.signature`, each base64url. The
//! signature is checked before the claims are read; the claims against the wall time given
//! (`exp` and `nbf`, with a leeway), and the configured audience and issuer.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::base64::{Alphabet, decode};
use super::keys::{Algorithm, KeySet};

/// Longest token read: anything longer is refused before any work.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a token says, once verified.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// `sub`: the user id (empty for an anonymous token).
    pub(crate) sub: String,
    /// `exp`: when it expires, in Unix seconds.
    pub(crate) exp: Option<u64>,
    /// `info`: shown with presence, raw JSON.
    pub(crate) info: Option<Box<RawValue>>,
    /// `channels`: subscriptions the server makes for the connection.
    pub(crate) channels: Vec<String>,
    /// `channel`: the channel a subscription token is for.
    pub(crate) channel: Option<String>,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rules<'a> {
    /// `aud` must name this (when set).
    pub(crate) audience: Option<&'a str>,
    /// `iss` must be this (when set).
    pub(crate) issuer: Option<&'a str>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub(crate) leeway_secs: u64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not three base64url segments of JSON, too long, or a claim of the wrong type.
    Malformed(String),
    /// `alg` is `none`: unsigned tokens are never accepted.
    Unsigned,
    /// An `alg` this server does not verify.
    UnsupportedAlgorithm(String),
    /// No configured key verifies this `alg`.
    NoKey(&'static str),
    /// The signature does not verify.
    BadSignature,
    /// A `crit` header: extensions this server does not understand.
    CriticalHeader,
    /// Past `exp`.
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Before `nbf`.
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
    },
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
}

impl TokenError {
    /// Whether a new token may fix it (expired, or not valid yet): the client should fetch
    /// one; for every other error it should not retry.
    pub(crate) fn is_temporary(&self) -> bool {
        matches!(self, Self::Expired { .. } | Self::NotYetValid { .. })
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed token: {what}"),
            Self::Unsigned => f.write_str("unsigned tokens (alg \"none\") are refused"),
            Self::UnsupportedAlgorithm(alg) => {
                write!(f, "alg {alg:?} is not supported (HS256, RS256, ES256 and EdDSA are)")
            }
            Self::NoKey(alg) => write!(f, "no key is configured for {alg}"),
            Self::BadSignature => f.write_str("the signature does not verify"),
            Self::CriticalHeader => f.write_str("the token has a crit header this server does not understand"),
            Self::Expired { exp, now } => write!(f, "the token expired at {exp} (now {now})"),
            Self::NotYetValid { nbf } => write!(f, "the token is not valid before {nbf}"),
            Self::WrongAudience => f.write_str("the token's aud does not name this server"),
            Self::WrongIssuer => f.write_str("the token's iss is not the expected issuer"),
        }
    }
}

impl std::error::Error for TokenError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
}

/// An HS256 token over `claims` (JSON text) signed with `secret`: what an application's backend
/// hands its clients as connection and subscription tokens (for tests, tools and embedders;
/// the server itself only verifies).
pub fn sign_hs256(secret: &str, claims: &str) -> String {
    let header = super::base64::encode_url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signing = format!("{header}.{}", super::base64::encode_url(claims.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = ring::hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", super::base64::encode_url(signature.as_ref()))
}

/// Checks `token` with `keys` and `rules` at `now_unix` (seconds).
pub(crate) fn verify(token: &str, keys: &KeySet, rules: &Rules<'_>, now_unix: u64) -> Result<Claims, TokenError> {
    let malformed = |what: &str| TokenError::Malformed(what.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("longer than 8 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated segments"));
    };
    let header_json = decode(header, Alphabet::UrlSafe).ok_or_else(|| malformed("the header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&header_json).map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Unsigned);
    }
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }
    let algorithm =
        Algorithm::from_name(&header.alg).ok_or_else(|| TokenError::UnsupportedAlgorithm(header.alg.clone()))?;
    if !keys.supports(algorithm) {
        return Err(TokenError::NoKey(match algorithm {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }));
    }
    let signature = decode(signature, Alphabet::UrlSafe).ok_or_else(|| malformed("the signature is not base64url"))?;
    let signed = &token[..header_len_with_payload(token)];
    if !keys.verify(algorithm, signed.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }
    let payload = decode(payload, Alphabet::UrlSafe).ok_or_else(|| malformed("the payload is not base64url"))?;
    let payload: Payload =
        serde_json::from_slice(&payload).map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    if let Some(exp) = payload.exp
        && now_unix >= exp.saturating_add(rules.leeway_secs)
    {
        return Err(TokenError::Expired { exp, now: now_unix });
    }
    if let Some(nbf) = payload.nbf
        && now_unix.saturating_add(rules.leeway_secs) < nbf
    {
        return Err(TokenError::NotYetValid { nbf });
    }
    if let Some(audience) = rules.audience {
        let named = match &payload.aud {
            Some(serde_json::Value::String(aud)) => aud == audience,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !named {
            return Err(TokenError::WrongAudience);
        }
    }
    if let Some(issuer) = rules.issuer
        && payload.iss.as_deref() != Some(issuer)
    {
        return Err(TokenError::WrongIssuer);
    }
    Ok(Claims {
        sub: payload.sub.unwrap_or_default(),
        exp: payload.exp,
        info: payload.info.filter(|raw| raw.get() != "null"),
        channels: payload.channels.unwrap_or_default(),
        channel: payload.channel,
    })
}

/// Length of `header.payload`, the signed part (the caller checked there are two dots).
fn header_len_with_payload(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

#[cfg(test)]
mod tests;
