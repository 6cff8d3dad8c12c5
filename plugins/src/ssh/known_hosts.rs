//! Which host key types the known hosts files record for a host, so the session asks the server
//! for one of those first, as ssh(1) and libssh do: otherwise libssh2 may negotiate a key type
//! the user never recorded and the check reports a mismatch for a host that is known. Plain and
//! hashed (`|1|salt|hash`, HMAC-SHA1) host names are understood; `@cert-authority` and
//! `@revoked` lines are skipped.

use base64::Engine;
use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};

use super::ssh_config::glob;

/// The key types (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, ...) recorded for `host` on
/// `port` in `text`, in the order they appear, each once.
pub fn recorded_key_types(text: &str, host: &str, port: u16) -> Vec<String> {
    let name = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    let mut types = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(key_type)) = (fields.next(), fields.next()) else { continue };
        if hosts.starts_with('#') || hosts.starts_with('@') {
            continue;
        }
        let matched = hosts.split(',').any(|pattern| match pattern.strip_prefix("|1|") {
            Some(hashed) => hashed_matches(hashed, &name),
            None => !pattern.starts_with('!') && glob(pattern, &name),
        });
        if matched && !types.iter().any(|t| t == key_type) {
            types.push(key_type.to_string());
        }
    }
    types
}

/// `salt|hash`, both base64: the hash is HMAC-SHA1 of the host name keyed by the salt.
fn hashed_matches(hashed: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else { return false };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
    let computed = PKey::hmac(&salt).and_then(|key| {
        let mut signer = Signer::new(MessageDigest::sha1(), &key)?;
        signer.update(name.as_bytes())?;
        signer.sign_to_vec()
    });
    computed.is_ok_and(|c| c == hash)
}

/// libssh2's host key algorithms for the recorded key types (an RSA key serves three).
pub fn algorithms_for(key_type: &str) -> &'static [&'static str] {
    match key_type {
        "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        "ssh-ed25519" => &["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
        "ssh-dss" => &["ssh-dss"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_hashed_and_ported_names() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222" with this salt.
        let salt = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdefghij");
        let key = PKey::hmac(b"0123456789abcdefghij").unwrap();
        let mut signer = Signer::new(MessageDigest::sha1(), &key).unwrap();
        signer.update(b"[127.0.0.1]:2222").unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().unwrap());
        let text = format!(
            "# comment\nother ssh-dss AAAA\n|1|{salt}|{hash} ecdsa-sha2-nistp256 AAAA\n\
             @revoked [127.0.0.1]:2222 ssh-dss AAAA\n[127.0.0.1]:2222,alias ssh-rsa AAAA\n\
             127.0.0.* ssh-ed25519 AAAA\n"
        );
        assert_eq!(recorded_key_types(&text, "127.0.0.1", 2222), ["ecdsa-sha2-nistp256", "ssh-rsa"]);
        assert_eq!(recorded_key_types(&text, "127.0.0.1", 22), ["ssh-ed25519"]);
        assert!(recorded_key_types(&text, "elsewhere", 22).is_empty());
    }
}
