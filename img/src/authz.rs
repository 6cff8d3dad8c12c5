//! `--tls-authz ID`: which TLS clients may use the export, from an `authz-simple` object (one
//! identity) or an `authz-list-file` object (qemu's JSON rules, read at startup and, with
//! `refresh=on`, again at each check so that edits apply to the next client).
//!
//! The identity checked is the PSK user name, or the client certificate's subject DN in the form
//! qemu (GnuTLS) prints it: its attributes in certificate order, `O=Example,CN=laptop.example.com`,
//! the reverse of RFC 4514's order in which the server reports it. A client refused here gets an
//! error to NBD_OPT_GO (qemu drops it during the TLS handshake instead).

use std::path::{Path, PathBuf};

use crate::objects::{Object, Objects};

/// One rule of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pattern: String,
    glob: bool,
    allow: bool,
}

/// qemu's list file: the first rule matching decides; otherwise the default policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    rules: Vec<Rule>,
    allow_by_default: bool,
}

/// A loaded `--tls-authz`.
#[derive(Debug)]
pub enum Authz {
    Simple(String),
    ListFile { list: List, path: PathBuf, refresh: bool, id: String },
}

impl Authz {
    /// The authz object `id`. Errors name the object and, for a list file, the file.
    pub fn load(objects: &Objects, id: &str) -> Result<Authz, String> {
        match objects.get(id) {
            Some(Object::AuthzSimple { identity }) => Ok(Authz::Simple(identity.clone())),
            Some(Object::AuthzListFile { filename, refresh }) => Ok(Authz::ListFile {
                list: read_list(id, filename)?,
                path: filename.clone(),
                refresh: *refresh,
                id: id.to_string(),
            }),
            Some(_) => Err(format!("--tls-authz {id}: the object is not authz-simple or authz-list-file")),
            None => Err(format!("--tls-authz {id}: no object with this id (use --object authz-simple,id={id},...)")),
        }
    }

    /// Whether `identity` may connect (None: the client proved nothing, and may not).
    pub fn allows(&self, identity: Option<&str>) -> Result<bool, String> {
        let Some(identity) = identity else { return Ok(false) };
        match self {
            Authz::Simple(allowed) => Ok(allowed == identity),
            Authz::ListFile { list, path, refresh, id } => {
                let reread;
                let list = if *refresh {
                    reread = read_list(id, path)?;
                    &reread
                } else {
                    list
                };
                for rule in &list.rules {
                    let matched = if rule.glob { glob(&rule.pattern, identity) } else { rule.pattern == identity };
                    if matched {
                        return Ok(rule.allow);
                    }
                }
                Ok(list.allow_by_default)
            }
        }
    }
}

/// A DN in RFC 4514 order (`CN=a,O=b`) in the order qemu compares (`O=b,CN=a`). Escaped commas
/// (`\,`) stay inside their attribute.
pub fn qemu_dn(rfc4514: &str) -> String {
    let mut parts: Vec<String> = vec![String::new()];
    let mut escaped = false;
    for c in rfc4514.chars() {
        if c == ',' && !escaped {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
        escaped = c == '\\' && !escaped;
    }
    parts.reverse();
    parts.join(",")
}

fn read_list(id: &str, path: &Path) -> Result<List, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("authz-list-file {id}: {}: {e}", path.display()))?;
    parse_list(&text).map_err(|e| format!("authz-list-file {id}: {}: {e}", path.display()))
}

fn policy(v: Option<&serde_json::Value>) -> Result<bool, String> {
    match v.map(|v| v.as_str()) {
        None => Ok(false),
        Some(Some("allow")) => Ok(true),
        Some(Some("deny")) => Ok(false),
        Some(other) => Err(format!("policy {other:?}: expected \"allow\" or \"deny\"")),
    }
}

fn parse_list(text: &str) -> Result<List, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let allow_by_default = policy(v.get("policy"))?;
    let mut rules = Vec::new();
    if let Some(list) = v.get("rules") {
        let list = list.as_array().ok_or("\"rules\" is not a list")?;
        for r in list {
            let pattern = r.get("match").and_then(|m| m.as_str()).ok_or("a rule without a \"match\" string")?;
            let glob = match r.get("format").map(|f| f.as_str()) {
                None | Some(Some("exact")) => false,
                Some(Some("glob")) => true,
                Some(other) => return Err(format!("format {other:?}: expected \"exact\" or \"glob\"")),
            };
            rules.push(Rule { pattern: pattern.to_string(), glob, allow: policy(r.get("policy"))? });
        }
    }
    Ok(List { rules, allow_by_default })
}

/// Shell-style matching of `*` (any run) and `?` (one character), as fnmatch without flags.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_file_rules() {
        let list = parse_list(
            r#"{ "rules": [ { "match": "fred", "policy": "allow", "format": "exact" },
                            { "match": "danb", "policy": "deny", "format": "glob" },
                            { "match": "dan*", "policy": "allow", "format": "glob" },
                            { "match": "CN=*.example.com,O=Example", "policy": "allow", "format": "glob" } ],
                 "policy": "deny" }"#,
        )
        .unwrap();
        let a = Authz::ListFile { list, path: PathBuf::new(), refresh: false, id: "a".into() };
        assert!(a.allows(Some("fred")).unwrap());
        assert!(!a.allows(Some("danb")).unwrap());
        assert!(a.allows(Some("dan")).unwrap());
        assert!(a.allows(Some("CN=laptop.example.com,O=Example")).unwrap());
        assert!(!a.allows(Some("bob")).unwrap());
        assert!(!a.allows(None).unwrap());
        assert!(parse_list(r#"{"policy": "maybe"}"#).is_err());
        assert!(Authz::Simple("alice".into()).allows(Some("alice")).unwrap());
    }

    #[test]
    fn dn_order() {
        assert_eq!(qemu_dn("CN=alice.example.com,O=Example\\, Inc"), "O=Example\\, Inc,CN=alice.example.com");
        assert_eq!(qemu_dn("CN=a"), "CN=a");
    }

    #[test]
    fn globbing() {
        assert!(glob("a*c", "abbbc") && glob("a?c", "abc") && glob("*", "") && !glob("a*d", "abc"));
    }
}
