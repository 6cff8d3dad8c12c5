//! Parsing parameter values the way nbdkit does, with errors that name the parameter and the value.

use crate::{Error, Result};

/// The largest size a disk may have: 2^63 - 1 bytes, as in nbdkit.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Parses a size: a decimal number of bytes with an optional scale suffix, case-insensitive:
/// `b` (bytes), `s` (512-byte sectors), `k`, `m`, `g`, `t`, `p`, `e` (powers of 1024), optionally
/// followed by `iB` or `B` (`4KiB`, `4KB` and `4k` are all 4096). Fractions (`1.5M`), negative
/// numbers and values over [`MAX_SIZE`] are refused.
///
/// `key` is only used in the error message: `size=12Q: unknown suffix 'Q'`.
pub fn parse_size(key: &str, value: &str) -> Result<u64> {
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let text = value.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits_end == 0 {
        return Err(fail("a size must start with a decimal number (for example 512, 64M or 1G)"));
    }
    let (digits, suffix) = text.split_at(digits_end);
    if suffix.starts_with('.') || suffix.starts_with(',') {
        return Err(fail("fractional sizes are not supported: give a whole number of a smaller unit"));
    }
    let number: u64 = digits.parse().map_err(|_| fail("number is too large"))?;
    let mut chars = suffix.chars();
    let shift = match chars.next().map(|c| c.to_ascii_lowercase()) {
        None => 0,
        Some('b') if chars.as_str().is_empty() => 0,
        Some('s') if chars.as_str().is_empty() => 9,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        Some('e') => 60,
        Some(_) => {
            return Err(fail(&format!("unknown suffix '{suffix}' (use b, s, k, m, g, t, p or e)")))
        }
    };
    let rest = chars.as_str();
    if shift >= 10 && !(rest.is_empty() || rest == "B" || rest == "b" || rest.eq_ignore_ascii_case("ib")) {
        return Err(fail(&format!("unknown suffix '{suffix}' (use b, s, k, m, g, t, p or e)")));
    }
    let bytes = number.checked_mul(1u64 << shift).filter(|&b| b <= MAX_SIZE);
    bytes.ok_or_else(|| fail("size is larger than the maximum, 2^63-1 bytes (8E - 1)"))
}

/// Parses a boolean as nbdkit does: `1`, `true`, `t`, `yes`, `y`, `on` and `0`, `false`, `f`,
/// `no`, `n`, `off`, in any case.
pub fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(Error::invalid(format!("{key}={value}: not a boolean (use true or false)"))),
    }
}

/// Parses one of a fixed set of words (`cache=none`).
pub fn parse_choice<'a>(key: &str, value: &str, choices: &[&'a str]) -> Result<&'a str> {
    choices.iter().copied().find(|c| *c == value).ok_or_else(|| {
        Error::invalid(format!("{key}={value}: must be one of {}", choices.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("size", "512").unwrap(), 512);
        assert_eq!(parse_size("size", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("size", "1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("size", "4KiB").unwrap(), 4096);
        assert_eq!(parse_size("size", "2s").unwrap(), 1024);
        assert_eq!(parse_size("size", "4E").unwrap(), 1 << 62);
        assert_eq!(parse_size("size", "9223372036854775807").unwrap(), MAX_SIZE);
    }

    #[test]
    fn bad_sizes_name_key_and_value() {
        let e = parse_size("size", "12Q").unwrap_err();
        assert_eq!(e.message, "size=12Q: unknown suffix 'Q' (use b, s, k, m, g, t, p or e)");
        assert!(parse_size("size", "1.5M").unwrap_err().message.contains("fractional"));
        assert!(parse_size("size", "8E").unwrap_err().message.contains("maximum"));
        assert!(parse_size("size", "-1").is_err());
        assert!(parse_size("size", "").is_err());
        assert!(parse_size("size", "99999999999999999999").is_err());
    }

    #[test]
    fn bools() {
        assert!(parse_bool("x", "Yes").unwrap());
        assert!(!parse_bool("x", "off").unwrap());
        assert_eq!(parse_bool("x", "maybe").unwrap_err().message, "x=maybe: not a boolean (use true or false)");
    }
}
