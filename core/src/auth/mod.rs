//! Authentication of the native protocol: JSON Web Tokens (connection and subscription
//! tokens) checked against keys the configuration gives, at the wall time the shell hands in.
//!
//! - `jwt`: parsing a compact JWS, its signature (HS256, RS256, ES256, EdDSA) and its claims.
//! - `keys`: the verification keys, from an HMAC secret and PEM public keys (SubjectPublicKeyInfo).
//! - `base64`: the two alphabets the formats use.

pub(crate) mod base64;
pub(crate) mod jwt;
pub(crate) mod keys;
