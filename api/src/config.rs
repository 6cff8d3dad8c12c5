//! Parsing parameter values the way nbdkit does, with errors that name the parameter and the value:
//! sizes, booleans, integers of every width, probabilities, delays, one-of-a-set words; reading
//! passwords (`password=-`, `+FILE`, `-FD`); resolving paths before the server changes directory.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

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
        Some(_) => return Err(fail(&format!("unknown suffix '{suffix}' (use b, s, k, m, g, t, p or e)"))),
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
    choices
        .iter()
        .copied()
        .find(|c| *c == value)
        .ok_or_else(|| Error::invalid(format!("{key}={value}: must be one of {}", choices.join(", "))))
}

/// Parses an integer of the type the caller asks for, as C's `strtol` with base 0 reads it:
/// decimal, `0x` hexadecimal or `0` octal, with an optional sign; no spaces, no trailing text,
/// nothing out of the type's range, no sign on an unsigned type. nbdkit's
/// `nbdkit_parse_int8_t` ... `nbdkit_parse_uint64_t`: `parse_int::<u16>("port", "8080")`.
pub fn parse_int<T: TryFrom<i128>>(key: &str, value: &str) -> Result<T> {
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let (negative, body) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    let (radix, digits) = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        (16, hex)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(fail("could not parse number"));
    }
    let magnitude = i128::from_str_radix(digits, radix).map_err(|_| fail("number is out of range"))?;
    let number = if negative { -magnitude } else { magnitude };
    if negative && T::try_from(-1).is_err() {
        return Err(fail("negative numbers are not allowed"));
    }
    T::try_from(number).map_err(|_| fail("number is out of range"))
}

/// Parses a probability as `nbdkit_parse_probability` does: `0.1`, `1e-1`, `10%`, `1:10` and
/// `1/10` all mean one in ten. The result is finite and at least 0, and may be over 1 (`200%`).
pub fn parse_probability(key: &str, value: &str) -> Result<f64> {
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let number = |s: &str| s.parse::<f64>().map_err(|_| fail("could not parse probability"));
    let p = if let Some(percent) = value.strip_suffix('%') {
        number(percent)? / 100.0
    } else if let Some((a, b)) = value.split_once(':').or_else(|| value.split_once('/')) {
        let (a, b) = (number(a)?, number(b)?);
        if b == 0.0 {
            return Err(fail("division by zero"));
        }
        a / b
    } else {
        number(value)?
    };
    if !p.is_finite() || p < 0.0 {
        return Err(fail("probability must be a finite number, 0 or more"));
    }
    Ok(p)
}

/// Parses a delay as `nbdkit_parse_delay` does: seconds (`1`, `1.2`, `1.2s`), milliseconds
/// (`120ms`), microseconds (`1.2us`, `1.2μs`) or nanoseconds (`1ns`).
pub fn parse_delay(key: &str, value: &str) -> Result<Duration> {
    let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let units: [(&str, f64); 5] = [("ns", 1e-9), ("us", 1e-6), ("μs", 1e-6), ("ms", 1e-3), ("s", 1.0)];
    let (number, scale) = units
        .iter()
        .find_map(|(suffix, scale)| value.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((value, 1.0));
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(fail("could not parse delay (use seconds, or a number followed by s, ms, us or ns)"));
    }
    let n: f64 = number.parse().map_err(|_| fail("could not parse delay"))?;
    let seconds = n * scale;
    Duration::try_from_secs_f64(seconds).map_err(|_| fail("delay is out of range"))
}

/// Reads a password or other secret given as a parameter, as `nbdkit_read_password` does:
/// - `-`: asked for on the terminal (standard input must be one; the echo is turned off);
/// - `-FD`: read from the inherited file descriptor FD (not 0, 1 or 2), which is closed after;
/// - `+FILE`: read from FILE;
/// - anything else is the password itself.
///
/// One trailing newline is removed from what is read.
pub fn read_password(key: &str, value: &str) -> Result<String> {
    let fail = |why: String| Error::invalid(format!("{key}={value}: {why}"));
    let mut text = if value == "-" {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() || !crate::server::stdio_safe() {
            return Err(fail("password=- can only be used when standard input is a terminal".into()));
        }
        eprint!("{key}: ");
        let echo = crate::sys::Echo::off(&stdin);
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        drop(echo);
        eprintln!();
        read.map_err(|e| fail(format!("reading the terminal: {e}")))?;
        line
    } else if let Some(fd) = value.strip_prefix('-') {
        let fd: i32 = parse_int(key, fd).map_err(|_| fail("not a file descriptor number".into()))?;
        if fd <= 2 {
            return Err(fail("cannot read a password from standard input, output or error".into()));
        }
        let owned =
            crate::sys::take_inherited_fd(fd).ok_or_else(|| fail(format!("file descriptor {fd} is not open")))?;
        let mut text = String::new();
        std::fs::File::from(owned).read_to_string(&mut text).map_err(|e| fail(format!("reading: {e}")))?;
        text
    } else if let Some(path) = value.strip_prefix('+') {
        std::fs::read_to_string(path).map_err(|e| fail(format!("{path}: {e}")))?
    } else {
        return Ok(value.to_string());
    };
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// The absolute, symlink-free path of an existing file (`nbdkit_realpath`): parameters naming
/// files are resolved while configuring, before the server may change directory.
pub fn realpath(key: &str, value: &str) -> Result<PathBuf> {
    std::fs::canonicalize(value).map_err(|e| Error::from_io(format!("{key}={value}"), &e))
}

/// The absolute form of a path that need not exist yet (`nbdkit_absolute_path`).
pub fn absolute_path(key: &str, value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{key}=: the path is empty")));
    }
    std::path::absolute(value).map_err(|e| Error::from_io(format!("{key}={value}"), &e))
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

    #[test]
    fn integers_of_every_width() {
        assert_eq!(parse_int::<u16>("port", "8080").unwrap(), 8080);
        assert_eq!(parse_int::<i8>("n", "-128").unwrap(), -128);
        assert_eq!(parse_int::<u8>("n", "0xff").unwrap(), 255);
        assert_eq!(parse_int::<u32>("n", "010").unwrap(), 8);
        assert_eq!(parse_int::<i64>("n", "0").unwrap(), 0);
        assert_eq!(parse_int::<u64>("n", "18446744073709551615").unwrap(), u64::MAX);
        assert_eq!(parse_int::<u8>("n", "256").unwrap_err().message, "n=256: number is out of range");
        assert_eq!(parse_int::<u32>("n", "-1").unwrap_err().message, "n=-1: negative numbers are not allowed");
        for bad in ["", " 1", "1 ", "12abc", "0x", "08", "1.5"] {
            assert!(parse_int::<i32>("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn probabilities() {
        for one_in_ten in ["0.1", "1e-1", "10%", "1:10", "1/10"] {
            assert!((parse_probability("p", one_in_ten).unwrap() - 0.1).abs() < 1e-12, "{one_in_ten}");
        }
        assert_eq!(parse_probability("p", "200%").unwrap(), 2.0);
        assert!(parse_probability("p", "-0.5").is_err());
        assert!(parse_probability("p", "1/0").is_err());
        assert!(parse_probability("p", "often").unwrap_err().message.starts_with("p=often:"));
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("d", "1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_delay("d", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_delay("d", "120ms").unwrap(), Duration::from_millis(120));
        assert_eq!(parse_delay("d", "1.2us").unwrap(), Duration::from_nanos(1200));
        assert_eq!(parse_delay("d", "3μs").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_delay("d", "1ns").unwrap(), Duration::from_nanos(1));
        for bad in ["", "ms", "-1", "1h", "1 s"] {
            assert!(parse_delay("d", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_from_the_value_a_file_and_a_descriptor() {
        assert_eq!(read_password("password", "secret").unwrap(), "secret");
        let path = std::env::temp_dir().join(format!("nbdforge-pw-{}", std::process::id()));
        std::fs::write(&path, "from file\n").unwrap();
        assert_eq!(read_password("password", &format!("+{}", path.display())).unwrap(), "from file");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(std::fs::File::open(&path).unwrap());
        assert_eq!(read_password("password", &format!("-{fd}")).unwrap(), "from file");
        assert!(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err(), "the descriptor is closed after");
        std::fs::remove_file(&path).unwrap();
        assert!(read_password("password", "+/nonexistent/pw").unwrap_err().message.contains("/nonexistent/pw"));
        assert!(read_password("password", "-1").is_err());
        assert!(read_password("password", "-x").is_err());
    }

    #[test]
    fn paths() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(realpath("dir", ".").unwrap(), std::fs::canonicalize(&here).unwrap());
        assert!(realpath("file", "/nonexistent/x").unwrap_err().message.starts_with("file=/nonexistent/x:"));
        assert_eq!(absolute_path("f", "new.img").unwrap(), here.join("new.img"));
        assert!(absolute_path("f", "").is_err());
    }
}
