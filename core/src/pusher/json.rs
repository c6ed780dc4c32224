//! The JSON pieces both Pusher codecs share: picking the few fields of an object a message has
//! (the rest skipped, nothing copied), reading a field as a string, and writing strings escaped
//! exactly as `serde_json` escapes them, into a buffer sized beforehand.
//!
//! Work is linear in the input: `serde_json` skips values without recursion (its `ignore_value`
//! keeps its own stack), caps nesting elsewhere at 128, and keys are matched against the wanted
//! names without being copied.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest piece of client text quoted back in an error message, in bytes.
const MAX_QUOTED_BYTES: usize = 64;

/// Why a text is not the JSON object a message must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ObjectError {
    /// Not JSON at all: the parser's account of where and why.
    Syntax(String),
    /// Valid JSON of another type (array, string, number, …).
    NotAnObject,
    /// One of the wanted fields appears twice: which one counts is ambiguous.
    Duplicate(&'static str),
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "invalid JSON: {e}"),
            Self::NotAnObject => f.write_str("must be a JSON object"),
            Self::Duplicate(name) => write!(f, "field `{name}` appears more than once"),
        }
    }
}

/// The raw values of the fields `names` in the JSON object `text`, in the order of `names`
/// (`None` for an absent one). Other fields are skipped unread.
pub(super) fn pick<'a, const N: usize>(
    text: &'a str,
    names: [&'static str; N],
) -> Result<[Option<&'a RawValue>; N], ObjectError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let picked = de.deserialize_map(Picker { names }).and_then(|picked| de.end().map(|()| picked));
    match picked {
        Ok(Ok(values)) => Ok(values),
        Ok(Err(name)) => Err(ObjectError::Duplicate(name)),
        // Keys are matched as strings and values skipped as raw JSON, so a data error can
        // only mean the top-level value has the wrong type.
        Err(e) if e.is_data() => Err(ObjectError::NotAnObject),
        Err(e) => Err(ObjectError::Syntax(e.to_string())),
    }
}

/// The string a raw JSON value holds, or `None` when it is not a string.
pub(super) fn string(raw: &RawValue) -> Option<String> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// Whether a raw JSON value is `null`.
pub(super) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Appends `s` as a JSON string literal, escaped exactly as `serde_json` escapes it (`"`, `\`
/// and control characters; `\b \t \n \f \r` in short form, the rest as `\u00xx`).
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        // Every escaped byte is ASCII, so `start..i` lies on character boundaries.
        out.push_str(&s[start..i]);
        out.push('\\');
        out.push(char::from(short));
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Length of `s` as [`push_str`] writes it, quotes included.
pub(crate) fn quoted_len(s: &str) -> usize {
    let extra: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
            0x00..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + extra + 2
}

/// `s` as a JSON string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(quoted_len(s));
    push_str(&mut out, s);
    out
}

/// Client text cut to at most [`MAX_QUOTED_BYTES`] (on a character boundary, `…` marking the
/// cut), so an error message that quotes it stays small.
pub(crate) fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTED_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(out, "{n}");
}

/// Collects the wanted fields of one object; the first duplicate, if any, instead.
struct Picker<const N: usize> {
    names: [&'static str; N],
}

impl<'de, const N: usize> Visitor<'de> for Picker<N> {
    type Value = Result<[Option<&'de RawValue>; N], &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = [None; N];
        let mut duplicate = None;
        while let Some(key) = map.next_key_seed(Key { names: &self.names })? {
            match key {
                Some(i) => {
                    let raw: &'de RawValue = map.next_value()?;
                    if values[i].is_some() {
                        duplicate.get_or_insert(self.names[i]);
                    }
                    values[i] = Some(raw);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(duplicate.map_or(Ok(values), Err))
    }
}

/// A key, as its index in the wanted names (`None` for any other), read without copying.
struct Key<'n> {
    names: &'n [&'static str],
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|name| *name == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pick_takes_the_wanted_fields_and_skips_the_rest() {
        let text = r#"{"b":[1,{"x":2}],"a":"x","c\u0061":true,"z":{"deep":[[[]]]}}"#;
        let Ok([a, b, ca, missing]) = pick(text, ["a", "b", "ca", "missing"]) else { panic!("an object") };
        assert_eq!(a.map(RawValue::get), Some(r#""x""#));
        assert_eq!(b.map(RawValue::get), Some(r#"[1,{"x":2}]"#));
        // Keys are compared after unescaping.
        assert_eq!(ca.map(RawValue::get), Some("true"));
        assert!(missing.is_none());
    }

    #[test]
    fn pick_refuses_what_is_not_one_object() {
        for text in ["[1]", "\"a\"", "1", "null", "true"] {
            assert_eq!(pick(text, ["a"]).err(), Some(ObjectError::NotAnObject), "{text}");
        }
        for text in ["", "{", "{\"a\":}", "{\"a\":1}x", "{\"a\":1}{}", "{'a':1}", "{\"a\":1,}"] {
            assert!(matches!(pick(text, ["a"]), Err(ObjectError::Syntax(_))), "{text:?}");
        }
        assert_eq!(pick(r#"{"a":1,"b":2,"a":3}"#, ["a", "b"]).err(), Some(ObjectError::Duplicate("a")));
        // A field nobody asked for may repeat.
        assert!(pick(r#"{"x":1,"x":2}"#, ["a"]).is_ok());
        // Whitespace around the object is fine.
        assert!(pick(" \n{\"a\":1}\t ", ["a"]).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_or_skipped_without_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        // Skipped or refused: either way, no stack overflow.
        let _ = pick(&deep, ["a"]);
        let _ = pick(&deep, ["b"]);
    }

    #[test]
    fn string_reads_only_strings() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("valid JSON");
        assert_eq!(string(&raw(r#""a\nb""#)), Some("a\nb".to_owned()));
        assert_eq!(string(&raw("1")), None);
        assert_eq!(string(&raw("null")), None);
        assert_eq!(string(&raw("{}")), None);
        assert!(is_null(&raw("null")));
        assert!(!is_null(&raw("\"null\"")));
    }

    #[test]
    fn clip_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(40);
        let clipped = clip(&long);
        assert!(clipped.ends_with('…'));
        assert!(clipped.len() <= MAX_QUOTED_BYTES + '…'.len_utf8());
    }

    proptest! {
        #[test]
        fn push_str_escapes_as_serde_json_does(s in any::<String>()) {
            let mut out = String::new();
            push_str(&mut out, &s);
            prop_assert_eq!(&out, &serde_json::to_string(&s).unwrap_or_default());
            prop_assert_eq!(out.len(), quoted_len(&s));
        }

        #[test]
        fn pick_never_panics(text in ".{0,200}") {
            let _ = pick(&text, ["event", "channel", "data"]);
        }
    }
}
