//! `header-script=` and `cookie-script=`: a shell fragment whose output is the headers (one a
//! line) or the cookie of every request, run the first time one is needed and again when its
//! `*-script-renew=` seconds have passed. All connections share one result, as nbdkit does: a
//! token fetched once serves every request until it is renewed.
//!
//! The script sees `$iteration` (0 the first time) and `$url`. What it prints is a secret (a
//! bearer token, a session cookie): it is never logged, only the header names are.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nbdforge_api::{debug, Error, Result};

/// One script and what it printed last.
pub struct Script {
    /// `header-script` or `cookie-script`, for messages.
    name: &'static str,
    command: String,
    renew: Option<Duration>,
    url: String,
    /// Log the header names (or that a cookie was made) each time it runs (`-D curl.scripts=1`).
    pub debug: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    output: Option<String>,
    ran_at: Option<Instant>,
    iteration: u64,
}

impl Script {
    pub fn new(name: &'static str, command: String, renew_seconds: u64, url: String) -> Self {
        let renew = (renew_seconds > 0).then(|| Duration::from_secs(renew_seconds));
        Script { name, command, renew, url, debug: false, state: Mutex::new(State::default()) }
    }

    /// What the script printed, running it first when there is no output yet or it is too old.
    /// Requests wait for a renewal in progress rather than send an expired token.
    pub fn output(&self) -> Result<String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match (state.ran_at, self.renew) {
            (None, _) => true,
            (Some(at), Some(renew)) => at.elapsed() >= renew,
            (Some(_), None) => false,
        };
        if stale || state.output.is_none() {
            let output = self.run(state.iteration)?;
            state.iteration += 1;
            state.ran_at = Some(Instant::now());
            state.output = Some(output);
        }
        Ok(state.output.clone().unwrap_or_default())
    }

    fn run(&self, iteration: u64) -> Result<String> {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .env("iteration", iteration.to_string())
            .env("url", &self.url)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::io(format!("{}: cannot run /bin/sh: {e}", self.name)))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Error::io(format!("{} failed ({}): {}", self.name, out.status, stderr.trim_end())));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if self.debug {
            // Header names, or the cookies' names: never their values.
            let names: Vec<String> = if self.name == "cookie-script" {
                cookie_line(&text).split(';').map(|c| c.split('=').next().unwrap_or("").trim().to_string()).collect()
            } else {
                header_lines(&text).iter().map(|l| l.split([':', ';']).next().unwrap_or("").to_string()).collect()
            };
            debug!("{} run {iteration}: {} (values not shown)", self.name, names.join(", "));
        }
        Ok(text)
    }
}

/// The header lines a header script printed, blank lines dropped.
pub fn header_lines(output: &str) -> Vec<String> {
    output.lines().map(str::trim_end).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// The cookie a cookie script printed: its first line.
pub fn cookie_line(output: &str) -> String {
    output.lines().next().unwrap_or("").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_once_without_renew_and_sees_its_variables() {
        let s = Script::new(
            "header-script",
            r#"echo "X-Iter: $iteration"; echo "X-Url: $url""#.into(),
            0,
            "http://h/d".into(),
        );
        assert_eq!(header_lines(&s.output().unwrap()), ["X-Iter: 0", "X-Url: http://h/d"]);
        assert_eq!(header_lines(&s.output().unwrap()), ["X-Iter: 0", "X-Url: http://h/d"]);
    }

    #[test]
    fn a_failing_script_is_an_error_with_its_stderr() {
        let s = Script::new("cookie-script", "echo nope >&2; exit 3".into(), 0, String::new());
        let e = s.output().unwrap_err();
        assert!(e.message.starts_with("cookie-script failed") && e.message.ends_with("nope"), "{}", e.message);
        assert_eq!(cookie_line("a=b; c=d\nignored\n"), "a=b; c=d");
    }
}
