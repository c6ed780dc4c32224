//! HMAC-SHA256 in lowercase hex and its constant-time check, MD5 in hex, and the hex codec under
//! them: the primitives every Pusher signature is made of.

use md5::{Digest, Md5};
use ring::hmac;

/// Bytes in an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// Lowercase hex of HMAC-SHA256 under `secret` over the concatenation of `parts`.
pub(crate) fn sign_hex(secret: &str, parts: &[&[u8]]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    hex(context.sign().as_ref())
}

/// Why a hex signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagError {
    /// Not 64 hex digits: it cannot be an HMAC-SHA256 tag at all.
    Malformed,
    /// A well-formed tag of some other message or secret.
    Mismatch,
}

/// Checks that `given_hex` is the HMAC-SHA256 of `message` under `secret`, in constant time.
///
/// The one comparison every Pusher signature check goes through. The tag is compared by
/// `ring::hmac::verify`, whose comparison takes the same time wherever the first differing byte
/// is (ring's own `constant_time` module is deprecated for outside use; this is the supported
/// path). Decoding the hex first only looks at the caller's input, which is no secret. Either
/// case of hex digit is accepted.
pub(crate) fn verify_hex(secret: &str, message: &[u8], given_hex: &str) -> Result<(), TagError> {
    let tag = decode_tag(given_hex).ok_or(TagError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, message, &tag).map_err(|_| TagError::Mismatch)
}

/// Lowercase hex of the MD5 of `body`, as the HTTP API's `body_md5` carries it.
pub(crate) fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The 32 bytes that 64 hex digits (either case) spell, or `None` for anything else.
fn decode_tag(text: &str) -> Option<[u8; TAG_BYTES]> {
    let digits = text.as_bytes();
    if digits.len() != TAG_BYTES * 2 {
        return None;
    }
    let mut tag = [0u8; TAG_BYTES];
    for (byte, pair) in tag.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(tag)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign_hex("Jefe", &[b"what do ya want ", b"for nothing?"]), expected);
        assert_eq!(verify_hex("Jefe", b"what do ya want for nothing?", expected), Ok(()));
        assert_eq!(verify_hex("Jefe", b"what do ya want for nothing?", &expected.to_uppercase()), Ok(()));
        assert_eq!(verify_hex("Jefe", b"what do ya want for nothing!", expected), Err(TagError::Mismatch));
        assert_eq!(verify_hex("jefe", b"what do ya want for nothing?", expected), Err(TagError::Mismatch));
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn only_64_hex_digits_make_a_tag() {
        let good = "00".repeat(32);
        assert_eq!(decode_tag(&good), Some([0; 32]));
        assert_eq!(decode_tag(&"fF".repeat(32)), Some([0xff; 32]));
        for bad in [String::new(), "00".repeat(31), "00".repeat(33), format!("{}0g", "00".repeat(31)), "é".repeat(32)]
        {
            assert_eq!(decode_tag(&bad), None, "{bad:?}");
            assert_eq!(verify_hex("s", b"m", &bad), Err(TagError::Malformed), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(decode_tag(&hex(&bytes)), Some(bytes));
        }

        #[test]
        fn a_signature_verifies_and_a_changed_one_does_not(
            secret in ".{0,40}",
            message in ".{0,200}",
            flip in 0usize..64,
        ) {
            let signature = sign_hex(&secret, &[message.as_bytes()]);
            prop_assert_eq!(verify_hex(&secret, message.as_bytes(), &signature), Ok(()));
            let mut changed = signature.into_bytes();
            changed[flip] = if changed[flip] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(changed).unwrap_or_default();
            prop_assert_eq!(verify_hex(&secret, message.as_bytes(), &changed), Err(TagError::Mismatch));
        }

        #[test]
        fn any_text_as_a_signature_is_refused_without_panicking(given in ".{0,80}") {
            prop_assert!(verify_hex("secret", b"message", &given).is_err());
        }
    }
}
