//! Units a configuration is written in: byte sizes (`"64KiB"`) and durations (`"25s"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A byte count; reads an integer or a string like `"64KiB"`, `"1MiB"`, `"2KB"`, writes an integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// One mebibyte.
    pub const MIB: Self = Self(1024 * 1024);

    /// Parses `"512"`, `"512B"`, `"2KB"` (1000-based), `"64KiB"` (1024-based), `"1.5MiB"`, up to `TiB`.
    pub fn parse(s: &str) -> Option<Self> {
        let (number, unit) = split_number(s.trim())?;
        let mult: u128 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1 << 10,
            "mb" => 1_000_000,
            "mib" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return None,
        };
        scale(number, mult).and_then(|n| u64::try_from(n).ok()).map(Self)
    }

    /// The size as `usize`, saturating on narrow targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // TOML integers are i64; larger sizes use the string form so output stays valid.
        match i64::try_from(self.0) {
            Ok(n) => serializer.serialize_i64(n),
            Err(_) => serializer.serialize_str(&format!("{}B", self.0)),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count like 65536 or \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).ok_or_else(|| {
                    E::custom(format!("invalid size {v:?} (use e.g. 65536, \"512B\", \"64KiB\", \"1MiB\", \"2KB\")"))
                })
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// The longest duration a setting may hold.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `"25s"`, `"100ms"`, `"5m"`, `"1h"`, `"1.5s"`, `"0"` (units: ns, us, ms, s, m, h).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = split_number(s.trim())?;
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        // A bare zero is unambiguous, any other unitless number is not.
        "" if number.bytes().all(|b| b == b'0' || b == b'.') => 1,
        _ => return None,
    };
    let nanos = scale(number, unit_ns)?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// Formats a duration in the largest unit that represents it exactly, e.g. `"25s"`, `"100ms"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let units: [(u128, &str); 5] =
        [(3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")];
    for (size, name) in units {
        if nanos.is_multiple_of(size) {
            return format!("{}{name}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// Splits `"1.5MiB"` into `("1.5", "MiB")`, allowing spaces between.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let has_digit = number.bytes().any(|b| b.is_ascii_digit());
    (has_digit && number.matches('.').count() <= 1).then_some((number, unit.trim_start()))
}

/// `number * unit`, exactly for integers and truncating sub-unit fractions.
fn scale(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut total = if int.is_empty() { 0 } else { int.parse::<u128>().ok()?.checked_mul(unit)? };
    // Beyond 18 digits the fraction is below a nanosecond even for hours; ignore the rest.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits = frac.parse::<u128>().ok()?;
        let denom = 10u128.pow(u32::try_from(frac.len()).ok()?);
        total = total.checked_add(digits.checked_mul(unit)? / denom)?;
    }
    Some(total)
}

/// `#[serde(with)]` for durations written as `"25s"`, within [`MAX_DURATION`].
pub(super) mod duration_serde {
    use super::{format_duration, parse_duration};
    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;
    use std::time::Duration;

    pub(in crate::config) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*d))
    }

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"25s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                let parsed = parse_duration(v)
                    .ok_or_else(|| E::custom(format!("invalid duration {v:?} (use e.g. \"25s\", \"100ms\")")))?;
                // Timers are instants plus these: an absurd value must not overflow a clock.
                if parsed > super::MAX_DURATION {
                    return Err(E::custom(format!("duration {v:?} is too long (at most 365 days)")));
                }
                Ok(parsed)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}
