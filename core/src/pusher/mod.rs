//! The Pusher Channels protocol (v7): the pure pieces the wire protocol is built from.
//!
//! - `names`: a channel's type from its name (public, `private-`, `private-encrypted-`,
//!   `presence-`, the `cache-` variants, `#server-to-user-{id}`), channel and event name rules,
//!   client events, socket ids.
//! - `sign`: what clients present on the WebSocket: channel authorizations and user sign-ins
//!   (`"key:hex"`), and the server's webhook signature.
//! - `api_auth`: the signature, key, timestamp window and `body_md5` of an HTTP API request.
//! - `mac`: HMAC-SHA256 in hex and its constant-time check (the one comparison every signature
//!   check above goes through), MD5 in hex.
//! - `protocol`: the WebSocket messages: parsing what clients send, encoding what the server
//!   sends, presence `channel_data`, the connect URL and the close codes.
//! - `http_api`: the HTTP API's routes, query strings and trigger bodies, and its answers.
//! - `json`: what those two share: picking an object's fields, escaping strings.
//! - `directory`: every hub's share of every channel's subscriptions and members, kept in step
//!   across the cluster, so counts and presence are the cluster's.
//! - `webhooks`: the webhook queues: what each receiver gets, in which requests, and retries.
//!
//! The limits and apps are configured in [`crate::config::PusherConfig`]. Nothing here reads a
//! clock: the HTTP API's timestamp window takes the wall time as an argument.

pub(crate) mod api_auth;
pub(crate) mod directory;
pub(crate) mod http_api;
pub(crate) mod json;
pub(crate) mod mac;
pub(crate) mod names;
pub(crate) mod protocol;
pub(crate) mod sign;
pub(crate) mod webhooks;
