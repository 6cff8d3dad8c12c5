//! The part of ssh_config(5) the ssh plugin honours, as libssh does for nbdkit: `Host` blocks
//! (patterns with `*`, `?` and `!`), `HostName`, `Port`, `User`, `IdentityFile`,
//! `UserKnownHostsFile`, `GlobalKnownHostsFile`, `Compression` and `ConnectTimeout`. The first
//! value found for a keyword wins, and values from the command line win over the file; other
//! keywords (and `Match` blocks) are ignored. Also the `%`-sequences of paths (`%d %u %l %h %r %p
//! %%`, and `~/`).

use std::path::Path;

/// What the configuration files said for one host; `None` or empty where they said nothing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub identities: Vec<String>,
    pub user_known_hosts: Vec<String>,
    pub global_known_hosts: Vec<String>,
    pub compression: Option<bool>,
    pub connect_timeout: Option<String>,
}

impl HostConfig {
    /// Reads `file` for `host` into what is not yet set; a missing or unreadable file adds nothing.
    pub fn read_file(&mut self, file: &Path, host: &str) {
        if let Ok(text) = std::fs::read_to_string(file) {
            self.read_str(&text, host);
        }
    }

    /// Reads configuration text for `host`: lines before the first `Host` apply to every host.
    pub fn read_str(&mut self, text: &str, host: &str) {
        let mut applies = true;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, value) = match line.find(|c: char| c.is_whitespace() || c == '=') {
                Some(at) => (&line[..at], line[at..].trim_start_matches(|c: char| c.is_whitespace() || c == '=')),
                None => (line, ""),
            };
            let words: Vec<String> = value.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            let first = words.first().cloned();
            match keyword.to_ascii_lowercase().as_str() {
                "host" => applies = host_matches(&words, host),
                "match" => applies = words.first().is_some_and(|w| w.eq_ignore_ascii_case("all")),
                _ if !applies => {}
                "hostname" => set(&mut self.hostname, first),
                "port" => set(&mut self.port, first),
                "user" => set(&mut self.user, first),
                "identityfile" => self.identities.extend(first),
                "userknownhostsfile" if self.user_known_hosts.is_empty() => self.user_known_hosts = words,
                "globalknownhostsfile" if self.global_known_hosts.is_empty() => self.global_known_hosts = words,
                "compression" => set(&mut self.compression, first.map(|w| w.eq_ignore_ascii_case("yes"))),
                "connecttimeout" => set(&mut self.connect_timeout, first),
                _ => {}
            }
        }
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// A `Host` line matches when one pattern matches and no negated one does.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(negated) if glob(negated, host) => return false,
            Some(_) => {}
            None => matched |= glob(p, host),
        }
    }
    matched
}

/// ssh_config's patterns: `*` any run of characters, `?` one character, case-insensitive.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) =
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What the `%`-sequences of a path stand for.
pub struct Expansions<'a> {
    pub home: &'a str,
    pub local_user: &'a str,
    pub local_host: &'a str,
    pub host: &'a str,
    pub user: &'a str,
    pub port: u16,
}

impl Expansions<'_> {
    /// Expands `~/` and the `%`-sequences; an unknown sequence is an error.
    pub fn expand(&self, path: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = path;
        if let Some(after) = path.strip_prefix("~/") {
            out.push_str(self.home);
            out.push('/');
            rest = after;
        }
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&format!("{}/.ssh", self.home)),
                Some('u') => out.push_str(self.local_user),
                Some('l') => out.push_str(self.local_host),
                Some('h') => out.push_str(self.host),
                Some('r') => out.push_str(self.user),
                Some('p') => out.push_str(&self.port.to_string()),
                Some('%') => out.push('%'),
                Some(other) => return Err(format!("unknown sequence '%{other}'")),
                None => return Err("'%' at the end".into()),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_blocks_first_value_wins() {
        let mut c = HostConfig::default();
        c.read_str(
            "Port 2200\nHost other\n  User nobody\nHost *.example.com !bad.example.com\n  User=alice\n  \
             IdentityFile ~/.ssh/a\n  IdentityFile %d/b\nHost *\n  User bob\n  Compression yes\n  \
             UserKnownHostsFile /k1 /k2\n",
            "Disk.Example.com",
        );
        assert_eq!(c.port.as_deref(), Some("2200"));
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.identities, ["~/.ssh/a", "%d/b"]);
        assert_eq!(c.compression, Some(true));
        assert_eq!(c.user_known_hosts, ["/k1", "/k2"]);
        let mut c = HostConfig::default();
        c.read_str("Host *.example.com !bad.example.com\n User alice\n", "bad.example.com");
        assert_eq!(c.user, None);
    }

    #[test]
    fn globs() {
        assert!(glob("*", "x"));
        assert!(glob("10.0.?.*", "10.0.1.25"));
        assert!(!glob("10.0.?.*", "10.0.12.25"));
        assert!(glob("a*b*c", "aXbYbc"));
    }

    #[test]
    fn percent_sequences() {
        let e = Expansions { home: "/root", local_user: "root", local_host: "box", host: "h", user: "bob", port: 22 };
        assert_eq!(e.expand("%d/known_%h_%p_%r_%u@%l%%").unwrap(), "/root/.ssh/known_h_22_bob_root@box%");
        assert_eq!(e.expand("~/id").unwrap(), "/root/id");
        assert!(e.expand("%q").is_err());
    }
}
