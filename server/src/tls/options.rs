//! The TLS settings from the command line ([`TlsOptions`], [`TlsMode`]) and the directories
//! searched for certificates when `--tls-certificates` is not given. `context` turns these into a
//! [`TlsContext`](super::TlsContext); `x509` searches the default directories.

use std::path::PathBuf;
use std::str::FromStr;

/// `--tls=off|on|require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// STARTTLS is refused.
    #[default]
    Off,
    /// Clients may use TLS or not.
    On,
    /// Clients must use TLS before anything else.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;

    /// Accepts what nbdkit accepts: `require` (or `required`, `force`), or a boolean (`on`, `yes`,
    /// `true`, `1`, ... / `off`, `no`, `false`, `0`, ...), in any case.
    fn from_str(value: &str) -> Result<TlsMode, String> {
        match value.to_ascii_lowercase().as_str() {
            "require" | "required" | "force" => Ok(TlsMode::Require),
            "on" | "yes" | "y" | "true" | "t" | "1" => Ok(TlsMode::On),
            "off" | "no" | "n" | "false" | "f" | "0" => Ok(TlsMode::Off),
            _ => Err(format!("--tls={value}: expected off, on or require")),
        }
    }
}

/// The TLS options from the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `--tls`.
    pub mode: TlsMode,
    /// `--tls-certificates DIR`.
    pub certificates: Option<PathBuf>,
    /// `--tls-psk FILE`.
    pub psk_file: Option<PathBuf>,
    /// `--tls-verify-peer`.
    pub verify_peer: bool,
}

/// The system-wide certificate directory, searched when running as root.
pub const ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdforge";
/// nbdkit's system-wide directory, searched after ours so an nbdkit setup keeps working.
pub const NBDKIT_ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdkit";

/// The per-user certificate directory, `$HOME/.pki/nbdforge` (None without `$HOME`).
pub fn user_certificates_dir() -> Option<PathBuf> {
    home_dir().map(|home| home.join(".pki/nbdforge"))
}

/// Where certificates are looked for without `--tls-certificates`, in search order. Like nbdkit, a
/// non-root user's own directories are searched and root's system directory is searched by root;
/// nbdforge's name comes first and nbdkit's follows.
pub fn default_certificate_dirs() -> Vec<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return vec![PathBuf::from(ROOT_CERTIFICATES_DIR), PathBuf::from(NBDKIT_ROOT_CERTIFICATES_DIR)];
    }
    let Some(home) = home_dir() else { return Vec::new() };
    ["nbdforge", "nbdkit"]
        .iter()
        .flat_map(|name| [home.join(".pki").join(name), home.join(".config/pki").join(name)])
        .collect()
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|home| !home.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_mode_parses_like_nbdkit() {
        assert_eq!("require".parse::<TlsMode>(), Ok(TlsMode::Require));
        assert_eq!("Force".parse::<TlsMode>(), Ok(TlsMode::Require));
        assert_eq!("ON".parse::<TlsMode>(), Ok(TlsMode::On));
        assert_eq!("yes".parse::<TlsMode>(), Ok(TlsMode::On));
        assert_eq!("0".parse::<TlsMode>(), Ok(TlsMode::Off));
        assert_eq!("maybe".parse::<TlsMode>(), Err("--tls=maybe: expected off, on or require".to_string()));
    }

    #[test]
    fn default_dirs_put_ours_before_nbdkits() {
        let dirs = default_certificate_dirs();
        let as_strings: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(as_strings, ["/etc/pki/nbdforge", "/etc/pki/nbdkit"]);
        } else if let Some(home) = home_dir() {
            assert_eq!(dirs[0], home.join(".pki/nbdforge"));
            assert_eq!(dirs.last().unwrap(), &home.join(".config/pki/nbdkit"));
            assert_eq!(dirs.len(), 4);
            assert_eq!(user_certificates_dir(), Some(home.join(".pki/nbdforge")));
        }
    }
}
