use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

use super::*;
use crate::auth::keys::KeyError;

/// A token signed by `openssl dgst -sha256 -sign` with a 2048-bit RSA key made for this test
/// (only its public half is kept): `{"sub":"alice","exp":2000000000,"info":{"name":"Alice"},
/// "channels":["news"]}`.
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiaW5mbyI6eyJuYW1lIjoiQWxpY2UifSwiY2hhbm5lbHMiOlsibmV3cyJdfQ.fJnDliw1B4_7aGaF8YB_RnPeNaZmv-A5lOT3-lOzip9zdNNGJOPYgaD_QxSqbwprUPGjJ4V-eOp0nRTWj1ZT7K1EhOoY3BQ3-GW73QYjne0kCJeg-TgS88awswNfZ058zylhfDr6ApCO6pI3eA7VqBGtOCaPeHhqDW_nXOHmUu5VLMmpiJOo5vheW0lv1RSEKeDmKtiMcHqgPWAyXS1afsGAje5ra24Szm6yjOVxYQKeTs4PgrpnabnM-WwueG_OmaqVhJdBhuTgztMv961AySHsPNptIuJV7YeRbhjVBqp0dAvcy2zYM6hH9doLb4IHR3T-jU7cE7f8GD3Yo-AdHQ";

const RS256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvsi+1TkJ/3QSz5Lafzx+
i+sCU/9kF+3v+zS1dhlN+kW25GLZ21wPdPGQPBrbnJ0rRL1Hkd+xaJOau5BIaONy
Z+Q1YUB4sRBQNtkA8N4YPNWlgFpNCISTg6/cAERYERmLi+1zY8Am+6ZQMBOr/0yd
RSM3yD8QHydyM8TanXkFol9wLImawGhR4rRRhFxYsnZlG9EKco3OgyL6g8sbsLmk
QOyTBHeBCSMBAn5tyF+XH9NvggYnwMiAXtZTTn6K4bpw3RtcB+/ad4+aYTqmWGrF
YjJNUYy+jnUAyldRqiPw8WcWnkgeZ92I1XOe9oecSDYOwTRVqQPY5V6OmdjVLnUC
iQIDAQAB
-----END PUBLIC KEY-----
";

const NOW: u64 = 1_800_000_000;

fn b64url(bytes: &[u8]) -> String {
    b64(bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", false)
}

fn b64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// A PEM block of a SubjectPublicKeyInfo made of `prefix` (its DER up to the key bits) and `key`.
fn pem(prefix: &[u8], key: &[u8]) -> String {
    let der = [prefix, key].concat();
    let body = b64(&der, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true);
    format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
}

fn unsigned(alg: &str, claims: &str) -> String {
    format!("{}.{}", b64url(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").as_bytes()), b64url(claims.as_bytes()))
}

fn hs256(secret: &str, claims: &str) -> String {
    let signed = unsigned("HS256", claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, signed.as_bytes());
    format!("{signed}.{}", b64url(tag.as_ref()))
}

fn keys(secret: &str, pems: &[&str]) -> KeySet {
    KeySet::new(secret, pems).expect("test keys parse")
}

fn check(token: &str, keys: &KeySet) -> Result<Claims, TokenError> {
    verify(token, keys, &Rules::default(), NOW)
}

#[test]
fn hs256_tokens_verify_and_their_claims_are_read() {
    let token = hs256("s3cret", r#"{"sub":"alice","exp":1800000100,"info":{"n":1},"channels":["a","b"]}"#);
    let claims = check(&token, &keys("s3cret", &[])).expect("valid");
    assert_eq!((claims.sub.as_str(), claims.exp), ("alice", Some(1_800_000_100)));
    assert_eq!(claims.info.map(|i| i.get().to_owned()).as_deref(), Some(r#"{"n":1}"#));
    assert_eq!(claims.channels, ["a", "b"]);
    assert_eq!(check(&token, &keys("other", &[])).err(), Some(TokenError::BadSignature), "wrong key");
    let subscription = hs256("s3cret", r#"{"sub":"alice","channel":"chat:room","exp":1800000100}"#);
    let claims = check(&subscription, &keys("s3cret", &[])).expect("a subscription token");
    assert_eq!(claims.channel.as_deref(), Some("chat:room"));
    assert!(claims.info.is_none() && claims.channels.is_empty());
}

#[test]
fn expiry_and_not_before_count_with_the_leeway() {
    let keys = keys("k", &[]);
    let expired = hs256("k", r#"{"sub":"a","exp":1799999999}"#);
    let error = check(&expired, &keys).expect_err("expired");
    assert!(error.is_temporary(), "{error}");
    let rules = Rules { leeway_secs: 5, ..Rules::default() };
    assert!(verify(&expired, &keys, &rules, NOW).is_ok(), "within the leeway");
    let early = hs256("k", r#"{"nbf":1800000010}"#);
    assert_eq!(check(&early, &keys).err(), Some(TokenError::NotYetValid { nbf: 1_800_000_010 }));
}

#[test]
fn unsigned_unknown_and_tampered_tokens_are_refused_for_good() {
    let keys = keys("k", &[]);
    let none = format!("{}.", unsigned("none", r#"{"sub":"root"}"#));
    assert_eq!(check(&none, &keys).err(), Some(TokenError::Unsigned));
    let none_upper = format!("{}.", unsigned("NONE", r#"{"sub":"root"}"#));
    assert_eq!(check(&none_upper, &keys).err(), Some(TokenError::Unsigned));
    let hs512 = format!("{}.AAAA", unsigned("HS512", "{}"));
    assert_eq!(check(&hs512, &keys).err(), Some(TokenError::UnsupportedAlgorithm("HS512".to_owned())));
    let good = hs256("k", r#"{"sub":"alice"}"#);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64url(br#"{"sub":"admin"}"#);
    parts[1] = &forged;
    let error = check(&parts.join("."), &keys).expect_err("tampered");
    assert_eq!(error, TokenError::BadSignature);
    assert!(!error.is_temporary());
    for junk in ["", "a.b", "a.b.c.d", "!!.e30.AAAA", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
        assert!(matches!(check(junk, &keys), Err(TokenError::Malformed(_))), "{junk:.20}");
    }
    let crit = format!("{}.{}", b64url(br#"{"alg":"HS256","crit":["exp"]}"#), b64url(b"{}"));
    assert_eq!(check(&format!("{crit}.AAAA"), &keys).err(), Some(TokenError::CriticalHeader));
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let keys = keys("k", &[]);
    let token = hs256("k", r#"{"aud":["web","api"],"iss":"auth.example"}"#);
    let rules = Rules { audience: Some("api"), issuer: Some("auth.example"), leeway_secs: 0 };
    assert!(verify(&token, &keys, &rules, NOW).is_ok());
    let wrong = Rules { audience: Some("admin"), ..rules };
    assert_eq!(verify(&token, &keys, &wrong, NOW).err(), Some(TokenError::WrongAudience));
    let wrong = Rules { issuer: Some("evil"), ..rules };
    assert_eq!(verify(&token, &keys, &wrong, NOW).err(), Some(TokenError::WrongIssuer));
}

#[test]
fn an_rs256_token_signed_by_openssl_verifies_with_its_public_pem() {
    let keys = keys("", &[RS256_PUBLIC]);
    let claims = check(RS256_TOKEN, &keys).expect("the openssl vector verifies");
    assert_eq!((claims.sub.as_str(), claims.channels.as_slice()), ("alice", ["news".to_owned()].as_slice()));
    // The classic confusion: HS256 "signed" with the public key's text. With no HMAC secret
    // configured there is no key for it; the PEM is never used as one.
    let confused = hs256(RS256_PUBLIC, r#"{"sub":"admin"}"#);
    assert_eq!(check(&confused, &keys).err(), Some(TokenError::NoKey("HS256")));
    let mut tampered = RS256_TOKEN.to_owned();
    tampered.pop();
    tampered.push('A');
    assert_eq!(check(&tampered, &keys).err(), Some(TokenError::BadSignature));
}

#[test]
fn es256_and_eddsa_tokens_verify_with_their_public_keys() {
    let rng = SystemRandom::new();
    let p256 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let p256 = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p256.as_ref(), &rng).expect("key");
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let ed = Ed25519KeyPair::from_pkcs8(ed.as_ref()).expect("key");
    let p256_prefix: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let ed_prefix: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let pems = [pem(p256_prefix, p256.public_key().as_ref()), pem(ed_prefix, ed.public_key().as_ref())];
    let keys = keys("", &[&pems[0], &pems[1]]);

    let signed = unsigned("ES256", r#"{"sub":"ec"}"#);
    let signature = p256.sign(&rng, signed.as_bytes()).expect("sign");
    let token = format!("{signed}.{}", b64url(signature.as_ref()));
    assert_eq!(check(&token, &keys).expect("ES256").sub, "ec");

    let signed = unsigned("EdDSA", r#"{"sub":"ed"}"#);
    let token = format!("{signed}.{}", b64url(ed.sign(signed.as_bytes()).as_ref()));
    assert_eq!(check(&token, &keys).expect("EdDSA").sub, "ed");
    // Signed by one key, claimed as the other algorithm: refused.
    let swapped = format!("{}.{}", unsigned("ES256", r#"{"sub":"ed"}"#), b64url(ed.sign(b"x").as_ref()));
    assert_eq!(check(&swapped, &keys).err(), Some(TokenError::BadSignature));
}

#[test]
fn keys_that_are_not_usable_are_named() {
    assert_eq!(KeySet::new("", &["hello"]).err(), Some(KeyError::NotPem));
    let broken = "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----";
    assert!(matches!(KeySet::new("", &[broken]), Err(KeyError::Malformed(_))));
    // An EC key on P-384.
    let p384_prefix: &[u8] = &[
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
        0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    let p384 = pem(p384_prefix, &[4; 97]);
    assert!(matches!(KeySet::new("", &[&p384]), Err(KeyError::Unsupported(_))));
    assert!(!format!("{:?}", KeySet::new("secret-value", &[]).expect("ok")).contains("secret-value"));
}
