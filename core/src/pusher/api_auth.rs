//! Verifying a request to the HTTP API (`/apps/{id}/…`), signed as the official server SDKs
//! sign it.
//!
//! Every request carries, in its query string, `auth_key` (the app's key), `auth_timestamp`
//! (Unix seconds), `auth_version=1.0`, `body_md5` (hex MD5 of the body; the SDKs send it
//! whenever the body is non-empty, and pusher-http-python on every request, a GET's being the
//! MD5 of nothing) and `auth_signature`: the hex HMAC-SHA256, under the app's secret, of
//!
//! ```text
//! METHOD \n PATH \n k1=v1&k2=v2…
//! ```
//!
//! where the pairs are every query parameter but `auth_signature`, keys lowercased, sorted by
//! key, keys and values as the SDK had them before URL-encoding. (pusher-http-node and
//! pusher-http-python both join the pairs without escaping anything, in the URL too; a client
//! that does escape them signs the unescaped text, so decoding first is right either way.)

use std::fmt;

use super::mac::{TagError, md5_hex, verify_hex};

/// How far `auth_timestamp` may be from the server's time, either way, in seconds.
pub(crate) const TIMESTAMP_WINDOW_SECS: u64 = 600;

/// The only `auth_version` there is.
const AUTH_VERSION: &str = "1.0";

/// Checks the signature of an HTTP API request for the app with `app_key` and `secret`, at
/// wall time `now_unix_secs`.
///
/// `method` is the request line's method and `path` its path before `?`, both exactly as
/// received (not percent-decoded). `query` holds every query parameter, percent-decoded, in any
/// order; `body` the raw body.
pub(crate) fn verify_api_request<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    query: &[(K, V)],
    body: &[u8],
    app_key: &str,
    secret: &str,
    now_unix_secs: u64,
) -> Result<(), ApiAuthError> {
    let params = Params::sorted(query)?;

    let key = params.get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    if key != app_key {
        return Err(ApiAuthError::WrongKey);
    }

    let text = params.get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let timestamp = text.parse::<u64>().map_err(|_| ApiAuthError::BadTimestamp(text.to_owned()))?;
    if timestamp.abs_diff(now_unix_secs) > TIMESTAMP_WINDOW_SECS {
        return Err(ApiAuthError::Expired { timestamp, now: now_unix_secs });
    }

    let version = params.get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    if version != AUTH_VERSION {
        return Err(ApiAuthError::UnsupportedVersion(version.to_owned()));
    }

    match params.get("body_md5") {
        Some(given) if !given.eq_ignore_ascii_case(&md5_hex(body)) => return Err(ApiAuthError::BodyMd5Mismatch),
        None if !body.is_empty() => return Err(ApiAuthError::BodyMd5Missing),
        _ => {}
    }

    let signature = params.get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let signed = params.string_to_sign(method, path);
    verify_hex(secret, signed.as_bytes(), signature).map_err(|e| match e {
        TagError::Malformed => ApiAuthError::MalformedSignature,
        TagError::Mismatch => ApiAuthError::InvalidSignature { string_to_sign: signed },
    })
}

/// Why an HTTP API request's authentication was refused. Each names the query parameter at
/// fault ([`ApiAuthError::field`]) and maps to a status ([`ApiAuthError::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ApiAuthError {
    /// A required parameter is absent.
    Missing(&'static str),
    /// A parameter appears twice (keys compared lowercased): which one is signed is ambiguous.
    Duplicate(String),
    /// `auth_key` is not the key of the app the path names.
    WrongKey,
    /// `auth_timestamp` is not a whole number of seconds.
    BadTimestamp(String),
    /// `auth_timestamp` is more than [`TIMESTAMP_WINDOW_SECS`] from the server's time.
    Expired {
        /// What the request said.
        timestamp: u64,
        /// The server's time.
        now: u64,
    },
    /// `auth_version` is not `1.0`.
    UnsupportedVersion(String),
    /// A non-empty body came without `body_md5`.
    BodyMd5Missing,
    /// `body_md5` is not the MD5 of the body.
    BodyMd5Mismatch,
    /// `auth_signature` is not 64 hex digits.
    MalformedSignature,
    /// `auth_signature` is well formed but signs something else, or with another secret.
    InvalidSignature {
        /// What a valid signature signs (no secret in it: it is the request itself).
        string_to_sign: String,
    },
}

impl ApiAuthError {
    /// The HTTP status to answer with: 400 for an ambiguous request, 401 for the rest.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::Duplicate(_) => 400,
            _ => 401,
        }
    }

    /// The query parameter at fault.
    pub(crate) fn field(&self) -> &str {
        match self {
            Self::Missing(field) => field,
            Self::Duplicate(key) => key,
            Self::WrongKey => "auth_key",
            Self::BadTimestamp(_) | Self::Expired { .. } => "auth_timestamp",
            Self::UnsupportedVersion(_) => "auth_version",
            Self::BodyMd5Missing | Self::BodyMd5Mismatch => "body_md5",
            Self::MalformedSignature | Self::InvalidSignature { .. } => "auth_signature",
        }
    }
}

impl fmt::Display for ApiAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(field) => write!(f, "missing query parameter {field}"),
            Self::Duplicate(key) => write!(f, "query parameter {key} appears more than once"),
            Self::WrongKey => f.write_str("auth_key is not the key of this app"),
            Self::BadTimestamp(given) => write!(f, "auth_timestamp must be a Unix time in seconds, got {given:?}"),
            Self::Expired { timestamp, now } => write!(
                f,
                "auth_timestamp {timestamp} is more than {TIMESTAMP_WINDOW_SECS}s away from the server's time {now}"
            ),
            Self::UnsupportedVersion(given) => write!(f, "auth_version must be \"{AUTH_VERSION}\", got {given:?}"),
            Self::BodyMd5Missing => f.write_str("body_md5 is required with a non-empty body"),
            Self::BodyMd5Mismatch => f.write_str("body_md5 is not the MD5 of the body"),
            Self::MalformedSignature => f.write_str("auth_signature must be 64 hex digits (an HMAC-SHA256 hex digest)"),
            Self::InvalidSignature { string_to_sign } => write!(
                f,
                "invalid auth_signature: expected the HMAC-SHA256 hex digest of {string_to_sign:?} with the app's secret"
            ),
        }
    }
}

impl std::error::Error for ApiAuthError {}

/// The query parameters with lowercased keys, sorted by key, each key once.
struct Params<'a> {
    pairs: Vec<(String, &'a str)>,
}

impl<'a> Params<'a> {
    fn sorted<K: AsRef<str>, V: AsRef<str>>(query: &'a [(K, V)]) -> Result<Self, ApiAuthError> {
        let mut pairs: Vec<(String, &str)> =
            query.iter().map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.as_ref())).collect();
        // By bytes: the same order as the SDKs' sort for every key that is not beyond U+FFFF.
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(twice) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ApiAuthError::Duplicate(twice[0].0.clone()));
        }
        Ok(Self { pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| self.pairs[i].1)
    }

    /// `METHOD\nPATH\nk=v&…` over every parameter but `auth_signature`.
    fn string_to_sign(&self, method: &str, path: &str) -> String {
        let mut out = format!("{method}\n{path}\n");
        let mut first = true;
        for (key, value) in self.pairs.iter().filter(|(k, _)| k != "auth_signature") {
            if !first {
                out.push('&');
            }
            first = false;
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::mac::sign_hex;
    use proptest::prelude::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    /// The worked example of Pusher's HTTP API reference (`http_api.adoc`, "Worked
    /// authentication example"): its body, body_md5 and signature are all published there.
    const DOC_BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const DOC_QUERY: [(&str, &str); 5] = [
        ("auth_key", KEY),
        ("auth_timestamp", "1353088179"),
        ("auth_version", "1.0"),
        ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ("auth_signature", "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"),
    ];
    const DOC_TIME: u64 = 1_353_088_179;

    fn doc_request(query: &[(&str, &str)], body: &str, now: u64) -> Result<(), ApiAuthError> {
        verify_api_request("POST", "/apps/3/events", query, body.as_bytes(), KEY, SECRET, now)
    }

    /// `DOC_QUERY` with `key` set to `value` (or removed, for `None`).
    fn doc_query_with(key: &'static str, value: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
        let mut query: Vec<_> = DOC_QUERY.iter().copied().filter(|(k, _)| *k != key).collect();
        query.extend(value.map(|value| (key, value)));
        query
    }

    #[test]
    fn the_http_api_reference_example_verifies() {
        assert_eq!(md5_hex(DOC_BODY.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        assert_eq!(doc_request(&DOC_QUERY, DOC_BODY, DOC_TIME), Ok(()));
        // Any order of parameters, owned or borrowed strings.
        let mut reversed: Vec<(String, String)> =
            DOC_QUERY.iter().rev().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(
            verify_api_request("POST", "/apps/3/events", &reversed, DOC_BODY.as_bytes(), KEY, SECRET, DOC_TIME),
            Ok(())
        );
        // Keys are compared lowercased, and the signature's hex in either case.
        reversed[0].0 = "AUTH_Signature".to_owned();
        reversed[0].1 = reversed[0].1.to_uppercase();
        assert_eq!(
            verify_api_request("POST", "/apps/3/events", &reversed, DOC_BODY.as_bytes(), KEY, SECRET, DOC_TIME),
            Ok(())
        );
    }

    #[test]
    fn pusher_http_python_test_vectors_verify() {
        // pusher-http-python's own tests (pusher_tests/test_request.py): key "key", secret
        // "secret", time 1000. Its GET carries body_md5 of the empty body.
        let get = [
            ("auth_key", "key"),
            ("auth_signature", "5c49f04a95eedc9028b1e0e8de7c2c7ad63504a0e3b5c145d2accaef6c14dbac"),
            ("auth_timestamp", "1000"),
            ("auth_version", "1.0"),
            ("body_md5", "d41d8cd98f00b204e9800998ecf8427e"),
            ("foo", "bar"),
        ];
        assert_eq!(verify_api_request("GET", "/some/obscure/api", &get, b"", "key", "secret", 1000), Ok(()));
        let post = [
            ("auth_key", "key"),
            ("auth_signature", "e05fa4cafee86311746ee3981d5581a5e4e87c27bbab0aeb1059e2df5c90258b"),
            ("auth_timestamp", "1000"),
            ("auth_version", "1.0"),
            ("body_md5", "94232c5b8fc9272f6f73a1e36eb68fcf"),
        ];
        let body = br#"{"foo": "bar"}"#;
        assert_eq!(verify_api_request("POST", "/some/obscure/api", &post, body, "key", "secret", 1000), Ok(()));
    }

    #[test]
    fn keys_are_lowercased_and_values_signed_unescaped() {
        // The rule of the HTTP API reference ("given the keys auth_key: foo, Name: Something
        // else, you get auth_key=foo&name=Something else"), on a channels query. The signature
        // was computed independently with Python's hmac/hashlib over the string below.
        let query = [
            ("info", "user_count,subscription_count"),
            ("Name", "Something else"),
            ("filter_by_prefix", "presence-"),
            ("auth_version", "1.0"),
            ("auth_timestamp", "1353088179"),
            ("auth_key", KEY),
            ("auth_signature", "4f275e1518da15877c6212161bcea579faaf4db9f158912ded0c003d1175ae2a"),
        ];
        assert_eq!(verify_api_request("GET", "/apps/3/channels", &query, b"", KEY, SECRET, DOC_TIME), Ok(()));
        let Ok(params) = Params::sorted(&query) else { panic!("no duplicates") };
        assert_eq!(
            params.string_to_sign("GET", "/apps/3/channels"),
            "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &filter_by_prefix=presence-&info=user_count,subscription_count&name=Something else"
        );
    }

    #[test]
    fn the_timestamp_window_is_600s_either_way() {
        for now in [DOC_TIME - 600, DOC_TIME + 600] {
            assert_eq!(doc_request(&DOC_QUERY, DOC_BODY, now), Ok(()), "now {now}");
        }
        for now in [DOC_TIME - 601, DOC_TIME + 601, 0, u64::MAX] {
            let refused = doc_request(&DOC_QUERY, DOC_BODY, now);
            assert_eq!(refused, Err(ApiAuthError::Expired { timestamp: DOC_TIME, now }), "now {now}");
        }
        let e = ApiAuthError::Expired { timestamp: 1, now: 1000 };
        assert_eq!(e.to_string(), "auth_timestamp 1 is more than 600s away from the server's time 1000");
    }

    #[test]
    fn every_refusal_names_its_field() {
        /// A query, a body, and how they are refused.
        type Case = (Vec<(&'static str, &'static str)>, &'static str, ApiAuthError);
        let cases: Vec<Case> = vec![
            (doc_query_with("auth_key", None), DOC_BODY, ApiAuthError::Missing("auth_key")),
            (doc_query_with("auth_key", Some("another")), DOC_BODY, ApiAuthError::WrongKey),
            (doc_query_with("auth_timestamp", None), DOC_BODY, ApiAuthError::Missing("auth_timestamp")),
            (doc_query_with("auth_timestamp", Some("soon")), DOC_BODY, ApiAuthError::BadTimestamp("soon".to_owned())),
            (doc_query_with("auth_timestamp", Some("-1")), DOC_BODY, ApiAuthError::BadTimestamp("-1".to_owned())),
            (
                doc_query_with("auth_timestamp", Some("1353088179.5")),
                DOC_BODY,
                ApiAuthError::BadTimestamp("1353088179.5".to_owned()),
            ),
            (doc_query_with("auth_version", None), DOC_BODY, ApiAuthError::Missing("auth_version")),
            (doc_query_with("auth_version", Some("2.0")), DOC_BODY, ApiAuthError::UnsupportedVersion("2.0".to_owned())),
            (doc_query_with("body_md5", None), DOC_BODY, ApiAuthError::BodyMd5Missing),
            (
                doc_query_with("body_md5", Some("d41d8cd98f00b204e9800998ecf8427e")),
                DOC_BODY,
                ApiAuthError::BodyMd5Mismatch,
            ),
            (DOC_QUERY.to_vec(), "{}", ApiAuthError::BodyMd5Mismatch),
            (doc_query_with("auth_signature", None), DOC_BODY, ApiAuthError::Missing("auth_signature")),
            (doc_query_with("auth_signature", Some("da45")), DOC_BODY, ApiAuthError::MalformedSignature),
        ];
        for (query, body, expected) in cases {
            let field = expected.field().to_owned();
            let got = doc_request(&query, body, DOC_TIME);
            assert_eq!(got.as_ref(), Err(&expected), "{query:?}");
            assert_eq!(expected.status(), 401);
            assert!(expected.to_string().contains(&field), "{expected} does not name {field}");
        }
    }

    #[test]
    fn a_signature_of_anything_else_is_invalid() {
        let string_to_sign = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
                              &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        let invalid = |signed: &str| Err(ApiAuthError::InvalidSignature { string_to_sign: signed.to_owned() });
        // Another method, another path, another secret, an extra parameter.
        let other_method =
            verify_api_request("GET", "/apps/3/events", &DOC_QUERY, DOC_BODY.as_bytes(), KEY, SECRET, DOC_TIME);
        assert_eq!(other_method, invalid(&string_to_sign.replacen("POST", "GET", 1)));
        let other_path =
            verify_api_request("POST", "/apps/4/events", &DOC_QUERY, DOC_BODY.as_bytes(), KEY, SECRET, DOC_TIME);
        assert_eq!(other_path, invalid(&string_to_sign.replacen("/3/", "/4/", 1)));
        let other_secret =
            verify_api_request("POST", "/apps/3/events", &DOC_QUERY, DOC_BODY.as_bytes(), KEY, "x", DOC_TIME);
        assert_eq!(other_secret, invalid(string_to_sign));
        let mut extra = DOC_QUERY.to_vec();
        extra.push(("socket_id", "1.1"));
        assert_eq!(doc_request(&extra, DOC_BODY, DOC_TIME), invalid(&format!("{string_to_sign}&socket_id=1.1")));
        let message = other_secret.map_err(|e| e.to_string()).expect_err("refused");
        assert!(
            message.starts_with(
                "invalid auth_signature: expected the HMAC-SHA256 hex digest of \"POST\\n/apps/3/events\\n"
            ),
            "{message}"
        );
        assert!(!message.contains(SECRET));
    }

    #[test]
    fn a_parameter_twice_is_a_bad_request() {
        let mut twice = DOC_QUERY.to_vec();
        twice.push(("Auth_Key", KEY));
        let e = doc_request(&twice, DOC_BODY, DOC_TIME).expect_err("ambiguous");
        assert_eq!(e, ApiAuthError::Duplicate("auth_key".to_owned()));
        assert_eq!((e.status(), e.field()), (400, "auth_key"));
        assert_eq!(e.to_string(), "query parameter auth_key appears more than once");
    }

    #[test]
    fn an_empty_body_needs_no_body_md5_but_a_sent_one_must_match() {
        let mut query = vec![("auth_key", KEY), ("auth_timestamp", "1353088179"), ("auth_version", "1.0")];
        let sign = |query: &[(&str, &str)]| {
            let Ok(params) = Params::sorted(query) else { panic!("no duplicates") };
            sign_hex(SECRET, &[params.string_to_sign("GET", "/apps/3/channels").as_bytes()])
        };
        let signature = sign(&query);
        let mut signed = query.clone();
        signed.push(("auth_signature", &signature));
        assert_eq!(verify_api_request("GET", "/apps/3/channels", &signed, b"", KEY, SECRET, DOC_TIME), Ok(()));
        // pusher-http-python's way: the MD5 of the empty body, signed like any parameter.
        query.push(("body_md5", "D41D8CD98F00B204E9800998ECF8427E"));
        let signature = sign(&query);
        query.push(("auth_signature", &signature));
        assert_eq!(verify_api_request("GET", "/apps/3/channels", &query, b"", KEY, SECRET, DOC_TIME), Ok(()));
        let refused = verify_api_request("GET", "/apps/3/channels", &query, b"x", KEY, SECRET, DOC_TIME);
        assert_eq!(refused, Err(ApiAuthError::BodyMd5Mismatch));
    }

    /// The signing rule written out once more, plainly: the reference model for the proptests.
    fn sign_like_an_sdk(method: &str, path: &str, params: &[(String, String)], secret: &str) -> String {
        let mut lowered: Vec<(String, &str)> = params.iter().map(|(k, v)| (k.to_lowercase(), v.as_str())).collect();
        lowered.sort();
        let joined: Vec<String> = lowered.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sign_hex(secret, &[format!("{method}\n{path}\n{}", joined.join("&")).as_bytes()])
    }

    proptest! {
        #[test]
        fn what_an_sdk_signs_verifies(
            method in "GET|POST",
            path in "/[a-z0-9/_.-]{0,40}",
            extra in proptest::collection::btree_map("[a-zA-Z_]{1,12}", ".{0,30}", 0..6),
            body in ".{0,100}",
            timestamp in 0u64..4_000_000_000,
            skew in -600i64..=600,
            secret in ".{0,30}",
        ) {
            let mut params: Vec<(String, String)> = extra
                .into_iter()
                .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("auth_") && !k.eq_ignore_ascii_case("body_md5"))
                .collect();
            // Drop keys that collide once lowercased: such a request is refused as ambiguous.
            params.sort_by_key(|(k, _)| k.to_ascii_lowercase());
            params.dedup_by_key(|(k, _)| k.to_ascii_lowercase());
            params.push(("auth_key".to_owned(), KEY.to_owned()));
            params.push(("auth_timestamp".to_owned(), timestamp.to_string()));
            params.push(("auth_version".to_owned(), "1.0".to_owned()));
            if !body.is_empty() {
                params.push(("body_md5".to_owned(), md5_hex(body.as_bytes())));
            }
            let signature = sign_like_an_sdk(&method, &path, &params, &secret);
            params.push(("auth_signature".to_owned(), signature));
            let now = timestamp.saturating_add_signed(skew);
            prop_assert_eq!(verify_api_request(&method, &path, &params, body.as_bytes(), KEY, &secret, now), Ok(()));
            // The body is covered too, through body_md5.
            if !body.is_empty() {
                let tampered = format!("{body}!");
                let refused = verify_api_request(&method, &path, &params, tampered.as_bytes(), KEY, &secret, now);
                prop_assert_eq!(refused, Err(ApiAuthError::BodyMd5Mismatch));
            }
        }

        #[test]
        fn any_query_is_answered_without_panicking(
            method in ".{0,8}",
            path in ".{0,40}",
            query in proptest::collection::vec(("(auth_key|auth_timestamp|auth_version|auth_signature|body_md5|.{0,10})", ".{0,70}"), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            let verdict = verify_api_request(&method, &path, &query, &body, KEY, SECRET, now);
            if let Err(e) = verdict {
                prop_assert!([400, 401].contains(&e.status()));
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
