//! How failures are worded for users: the system's description of an errno, and OpenSSL's
//! reasons. Every other file in `tls` builds its messages ("tls-psk: FILE: ...", "TLS handshake
//! failed: ...") around these.

use std::io;

use nix::errno::Errno;
use openssl::error::ErrorStack;

/// "Permission denied", without Rust's "(os error 13)".
pub(super) fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// OpenSSL's reasons, e.g. "no shared cipher; certificate verify failed".
pub(super) fn reasons(stack: &ErrorStack) -> String {
    let mut out: Vec<String> = Vec::new();
    for e in stack.errors() {
        let reason = e.reason().map(str::to_string).unwrap_or_else(|| e.to_string());
        let reason = match e.data() {
            Some(data) if !data.is_empty() => format!("{reason} ({data})"),
            _ => reason,
        };
        if !out.contains(&reason) {
            out.push(reason);
        }
    }
    if out.is_empty() {
        "unknown OpenSSL error".into()
    } else {
        out.join("; ")
    }
}
