//! Base64: decoding the standard alphabet with padding (PEM) and the URL-safe one without
//! (JWT); encoding the URL-safe one, for [`super::jwt::sign_hs256`].

/// Which alphabet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alphabet {
    /// `A–Z a–z 0–9 + /`, `=` padding optional; whitespace skipped (PEM bodies are wrapped).
    Standard,
    /// `A–Z a–z 0–9 - _`, no padding, no whitespace (JWT segments).
    UrlSafe,
}

/// `bytes` in the URL-safe alphabet, unpadded (a JWT segment).
pub(crate) fn encode_url(bytes: &[u8]) -> String {
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(URL[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The bytes `text` encodes, or `None` for a character outside the alphabet or a length no
/// encoder produces.
pub(crate) fn decode(text: &str, alphabet: Alphabet) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for byte in text.bytes() {
        let value = match (byte, alphabet) {
            (b'A'..=b'Z', _) => byte - b'A',
            (b'a'..=b'z', _) => byte - b'a' + 26,
            (b'0'..=b'9', _) => byte - b'0' + 52,
            (b'+', Alphabet::Standard) | (b'-', Alphabet::UrlSafe) => 62,
            (b'/', Alphabet::Standard) | (b'_', Alphabet::UrlSafe) => 63,
            (b'=', Alphabet::Standard) => {
                padding += 1;
                continue;
            }
            (b' ' | b'\t' | b'\r' | b'\n', Alphabet::Standard) => continue,
            _ => return None,
        };
        if padding > 0 {
            // Nothing may follow the padding.
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 leftover bits mean one character too many; leftover bits must be zero.
    if bits >= 6 || acc != 0 || padding > 2 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_alphabets_as_rfc_4648_says() {
        for (text, bytes) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode(text, Alphabet::Standard).as_deref(), Some(bytes.as_bytes()), "{text}");
            let bare = text.trim_end_matches('=');
            assert_eq!(decode(bare, Alphabet::UrlSafe).as_deref(), Some(bytes.as_bytes()), "{bare}");
        }
        assert_eq!(decode("-_8", Alphabet::UrlSafe), Some(vec![0xfb, 0xff]));
        assert_eq!(decode("+/8=", Alphabet::Standard), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn refuses_what_no_encoder_writes() {
        for bad in ["Z", "Zm9=v", "Zh==", "Zm9v\u{e9}", "a==="] {
            assert_eq!(decode(bad, Alphabet::Standard), None, "{bad}");
        }
        for bad in ["Zg==", "+/8", "Zm 9v"] {
            assert_eq!(decode(bad, Alphabet::UrlSafe), None, "{bad}");
        }
    }
}
