//! A boolean parameter that can also be a file: `true`, `false`, or an absolute path meaning
//! "true while this file exists", so that a behaviour can be switched at run time. nbdkit's
//! `cow-on-read=` and `cache-on-read=` take this form.

use std::path::PathBuf;

use nbdforge_api::{parse_bool, Error, Result};

/// The value of such a parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Switch {
    /// `false` (the default).
    #[default]
    Off,
    /// `true`.
    On,
    /// An absolute path: on while the file exists.
    WhileExists(PathBuf),
}

impl Switch {
    /// Parses `true`, `false` (or any boolean nbdkit accepts) or an absolute path.
    pub fn parse(key: &str, value: &str) -> Result<Switch> {
        if value.starts_with('/') {
            return Ok(Switch::WhileExists(value.into()));
        }
        match parse_bool(key, value) {
            Ok(true) => Ok(Switch::On),
            Ok(false) => Ok(Switch::Off),
            Err(_) => Err(Error::invalid(format!("{key}={value}: use true, false or an absolute path"))),
        }
    }

    /// Whether the switch is on at this moment.
    pub fn is_on(&self) -> bool {
        match self {
            Switch::Off => false,
            Switch::On => true,
            Switch::WhileExists(path) => path.exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(Switch::parse("k", "yes").unwrap(), Switch::On);
        assert!(!Switch::parse("k", "0").unwrap().is_on());
        assert!(Switch::parse("k", "/").unwrap().is_on());
        assert!(!Switch::parse("k", "/nonexistent/switch").unwrap().is_on());
        assert!(Switch::parse("k", "maybe").unwrap_err().message.starts_with("k=maybe: "));
    }
}
