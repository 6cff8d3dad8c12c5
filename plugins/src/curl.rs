//! The `curl` plugin: a disk image served by a web server (or anything libcurl reads: file://,
//! ftp://), as nbdkit's curl plugin. The size comes from a `HEAD` request (or, when a server
//! refuses `HEAD`, from the headers of a `GET` cut short); each NBD read is one ranged `GET`,
//! and a server that answers a range with the whole file is refused rather than downloaded.
//! Writes, when the export is not read-only and the URL is HTTP(S), are `PUT`s of the range with
//! a `Content-Range` header, which a server either honours or refuses.
//!
//! libcurl (through the `curl` crate, the library nbdkit uses) does the HTTP, TLS, HTTP/2,
//! proxies, redirects and authentication. Its blocking easy handles live in a pool shared
//! by every connection, at most `connections=` of them, so that many ranged requests run at
//! once on kept-alive connections while the plugin code stays plain blocking Rust.
//!
//! Every remote failure (no connection, reset, timeout, HTTP 4xx/5xx, a script that fails)
//! fails only that request, with `EIO` and a message naming the URL (without any user or
//! password in it) and the status. Secrets (passwords, cookies, header values) are never logged:
//! `-D curl.verbose=1` shows request lines and header names but only harmless header values.

mod pool;
mod scripts;
mod setopt;

use std::sync::Arc;
use std::time::Duration;

use curl::easy::{Easy, InfoType, IpResolve, List, SslVersion};
use nbdforge_api::{
    absolute_path, debug, parse_bool, parse_choice, parse_int, read_password, Capabilities, Error, Flags, Handle,
    Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
};

use pool::Pool;
use scripts::Script;

const HELP: &str = "\
[url=]URL                   (required) The disk image URL to serve.
cainfo=FILE                 Certificate authority bundle.
capath=DIR                  Directory of CA certificates.
connections=N               Requests in flight at once (default 16).
cookie=COOKIE|+FILE|-|-FD   Cookie sent with every request.
cookiefile=[FILE]           Enable cookie processing (from FILE).
cookiejar=FILE              Read cookies from and save them to FILE.
cookie-script=SCRIPT        Script printing the cookie.
cookie-script-renew=SECS    Run it again after SECS.
followlocation=false        Do not follow redirects.
header=HEADER               Header sent with every request (repeatable).
header-script=SCRIPT        Script printing the headers.
header-script-renew=SECS    Run it again after SECS.
http-version=none|1.0|1.1|2.0|2TLS|2-prior-knowledge|3|3only
ipresolve=any|v4|v6         Which addresses of a host name to use.
password=PASSWORD|+FILE|-|-FD  Password for user=.
protocols=PROTO,...         Protocols allowed in the URL and redirects.
proxy=PROXY                 Proxy URL.
proxy-user=USER             Proxy user name.
proxy-password=PASSWORD|+FILE|-|-FD  Proxy password.
resolve=HOST:PORT:ADDR      Use ADDR for HOST:PORT (repeatable).
sslverify=false             Do not verify the server's certificate.
ssl-cipher-list=C1:C2:...   TLS cipher suites.
ssl-version=VERSION         TLS version (tlsv1.2, max-tlsv1.3, ...).
tcp-keepalive=true          Enable TCP keepalives.
tcp-nodelay=false           Enable Nagle's algorithm.
timeout=SECS                Time limit of each request (0: libcurl's).
tls13-ciphers=C1:C2:...     TLS 1.3 cipher suites.
unix-socket-path=PATH       Connect to a Unix socket instead of TCP.
user=USER                   User name for the server.
user-agent=AGENT            User-Agent header.";

/// The `curl` plugin.
#[derive(Default)]
pub struct CurlPlugin {
    settings: Settings,
    remote: Option<Arc<Remote>>,
}

/// The parameters: how every easy handle is set up.
#[derive(Clone)]
struct Settings {
    url: String,
    cainfo: Option<String>,
    capath: Option<String>,
    connections: usize,
    cookie: Option<String>,
    cookiefile: Option<String>,
    cookiejar: Option<String>,
    cookie_script: Option<String>,
    cookie_script_renew: u64,
    followlocation: bool,
    headers: Vec<String>,
    header_script: Option<String>,
    header_script_renew: u64,
    /// CURLOPT_HTTP_VERSION's number (curl.h), 0 for libcurl's choice.
    http_version: libc::c_long,
    ipresolve: Option<IpResolve>,
    password: Option<String>,
    protocols: Option<String>,
    proxy: Option<String>,
    proxy_user: Option<String>,
    proxy_password: Option<String>,
    resolve: Vec<String>,
    sslverify: bool,
    ssl_cipher_list: Option<String>,
    ssl_version: Option<(SslVersion, SslVersion)>,
    tcp_keepalive: bool,
    tcp_nodelay: bool,
    timeout: u32,
    tls13_ciphers: Option<String>,
    unix_socket_path: Option<String>,
    user: Option<String>,
    user_agent: Option<String>,
    verbose: bool,
    debug_scripts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            cainfo: None,
            capath: None,
            connections: 16,
            cookie: None,
            cookiefile: None,
            cookiejar: None,
            cookie_script: None,
            cookie_script_renew: 0,
            followlocation: true,
            headers: Vec::new(),
            header_script: None,
            header_script_renew: 0,
            http_version: 0,
            ipresolve: None,
            password: None,
            protocols: None,
            proxy: None,
            proxy_user: None,
            proxy_password: None,
            resolve: Vec::new(),
            sslverify: true,
            ssl_cipher_list: None,
            ssl_version: None,
            tcp_keepalive: false,
            tcp_nodelay: true,
            timeout: 0,
            tls13_ciphers: None,
            unix_socket_path: None,
            user: None,
            user_agent: None,
            verbose: false,
            debug_scripts: false,
        }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    Registration::plugin(
        LayerInfo::new("curl", "a disk image served over HTTP(S), FTP or file:// by libcurl").help(HELP).magic("url"),
        CurlPlugin::default,
    )
}

impl Layer for CurlPlugin {
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        match flag {
            "verbose" => self.settings.verbose = value != 0,
            "scripts" => self.settings.debug_scripts = value != 0,
            _ => return false,
        }
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let s = &mut self.settings;
        let path = |v: &str| -> Result<String> {
            // An empty cainfo= means "no CA bundle at all", as in nbdkit: keep it empty.
            if v.is_empty() {
                return Ok(String::new());
            }
            Ok(absolute_path(key, v)?.to_string_lossy().into_owned())
        };
        match key {
            "url" => s.url = value.to_string(),
            "cainfo" => s.cainfo = Some(path(value)?),
            "capath" => s.capath = Some(path(value)?),
            "connections" => {
                let n: u32 = parse_int(key, value)?;
                if n == 0 {
                    return Err(Error::invalid(format!("{key}={value}: must be at least 1")));
                }
                s.connections = n as usize;
            }
            "cookie" => s.cookie = Some(read_password(key, value)?),
            "cookiefile" | "cookiejar" => {
                if value == "-" {
                    return Err(Error::invalid(format!("{key}={value}: standard input or output cannot hold cookies")));
                }
                let v = if value.is_empty() { String::new() } else { path(value)? };
                if key == "cookiefile" {
                    s.cookiefile = Some(v)
                } else if v.is_empty() {
                    return Err(Error::invalid(format!("{key}=: a file name is needed")));
                } else {
                    s.cookiejar = Some(v)
                }
            }
            "cookie-script" => s.cookie_script = Some(value.to_string()),
            "cookie-script-renew" => s.cookie_script_renew = parse_int(key, value)?,
            "followlocation" => s.followlocation = parse_bool(key, value)?,
            "header" => s.headers.push(value.to_string()),
            "header-script" => s.header_script = Some(value.to_string()),
            "header-script-renew" => s.header_script_renew = parse_int(key, value)?,
            "http-version" => {
                s.http_version = match parse_choice(
                    key,
                    value,
                    &["none", "1.0", "1.1", "2.0", "2TLS", "2-prior-knowledge", "3", "3only"],
                )? {
                    "none" => 0,
                    "1.0" => 1,
                    "1.1" => 2,
                    "2.0" => 3,
                    "2TLS" => 4,
                    "2-prior-knowledge" => 5,
                    "3" => 30,
                    _ => 31,
                }
            }
            "ipresolve" => {
                s.ipresolve = match parse_choice(key, value, &["any", "v4", "v6"])? {
                    "v4" => Some(IpResolve::V4),
                    "v6" => Some(IpResolve::V6),
                    _ => None,
                }
            }
            "password" => s.password = Some(read_password(key, value)?),
            "protocols" => {
                if value.split(',').any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric())) {
                    return Err(Error::invalid(format!("{key}={value}: a comma-separated list of protocol names")));
                }
                s.protocols = Some(value.to_ascii_lowercase())
            }
            "proxy" => s.proxy = Some(value.to_string()),
            "proxy-user" => s.proxy_user = Some(value.to_string()),
            "proxy-password" => s.proxy_password = Some(read_password(key, value)?),
            "resolve" => s.resolve.push(value.to_string()),
            "sslverify" => s.sslverify = parse_bool(key, value)?,
            "ssl-cipher-list" => s.ssl_cipher_list = Some(value.to_string()),
            "ssl-version" => s.ssl_version = Some(ssl_version(key, value)?),
            "tcp-keepalive" => s.tcp_keepalive = parse_bool(key, value)?,
            "tcp-nodelay" => s.tcp_nodelay = parse_bool(key, value)?,
            "timeout" => s.timeout = parse_int(key, value)?,
            "tls13-ciphers" => s.tls13_ciphers = Some(value.to_string()),
            "unix-socket-path" | "unix_socket_path" => s.unix_socket_path = Some(path(value)?),
            "user" => s.user = Some(value.to_string()),
            "user-agent" => s.user_agent = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let s = &self.settings;
        if s.url.is_empty() {
            return Err(Error::invalid("the url=URL parameter is required"));
        }
        for (a, b, both) in [
            ("header", "header-script", !s.headers.is_empty() && s.header_script.is_some()),
            ("cookie", "cookie-script", s.cookie.is_some() && s.cookie_script.is_some()),
        ] {
            if both {
                return Err(Error::invalid(format!("{a}= and {b}= cannot be used together")));
            }
        }
        if s.header_script.is_none() && s.header_script_renew > 0 {
            return Err(Error::invalid("header-script-renew= needs header-script="));
        }
        if s.cookie_script.is_none() && s.cookie_script_renew > 0 {
            return Err(Error::invalid("cookie-script-renew= needs cookie-script="));
        }
        // A handle made now catches what libcurl itself refuses (an unknown protocol name, an
        // HTTP version this libcurl lacks) before the server listens.
        make_easy(s).map_err(|e| Error::invalid(format!("url={}: {e}", shown_url(&s.url))))?;
        Ok(())
    }

    fn cleanup(&self) {
        if let Some(remote) = &self.remote {
            remote.pool.clear();
        }
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        let v = curl::Version::get();
        vec![
            ("curl_version".into(), v.version().to_string()),
            ("curl_ssl_version".into(), v.ssl_version().unwrap_or("").to_string()),
            ("curl_http2".into(), if v.feature_http2() { "yes" } else { "no" }.into()),
            ("curl_protocols".into(), v.protocols().collect::<Vec<_>>().join(",")),
        ]
    }
}

fn ssl_version(key: &str, value: &str) -> Result<(SslVersion, SslVersion)> {
    use SslVersion::*;
    let choices = [
        "default",
        "tlsv1",
        "sslv2",
        "sslv3",
        "tlsv1.0",
        "tlsv1.1",
        "tlsv1.2",
        "tlsv1.3",
        "max-default",
        "max-tlsv1.0",
        "max-tlsv1.1",
        "max-tlsv1.2",
        "max-tlsv1.3",
    ];
    Ok(match parse_choice(key, value, &choices)? {
        "tlsv1" => (Tlsv1, Default),
        "sslv2" => (Sslv2, Default),
        "sslv3" => (Sslv3, Default),
        "tlsv1.0" => (Tlsv10, Default),
        "tlsv1.1" => (Tlsv11, Default),
        "tlsv1.2" => (Tlsv12, Default),
        "tlsv1.3" => (Tlsv13, Default),
        "max-tlsv1.0" => (Default, Tlsv10),
        "max-tlsv1.1" => (Default, Tlsv11),
        "max-tlsv1.2" => (Default, Tlsv12),
        "max-tlsv1.3" => (Default, Tlsv13),
        _ => (Default, Default),
    })
}

impl Plugin for CurlPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let s = Arc::new(self.settings.clone());
        let script = |name, command: &Option<String>, renew| {
            command.as_ref().map(|c| {
                let mut script = Script::new(name, c.clone(), renew, s.url.clone());
                script.debug = s.debug_scripts;
                script
            })
        };
        let header_script = script("header-script", &s.header_script, s.header_script_renew);
        let cookie_script = script("cookie-script", &s.cookie_script, s.cookie_script_renew);
        let made = s.clone();
        let pool = Pool::new(s.connections, move || make_easy(&made));
        self.remote = Some(Arc::new(Remote { settings: s, pool, header_script, cookie_script }));
        Ok(())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let remote = self.remote.clone().ok_or_else(|| Error::io("curl: opened before get_ready"))?;
        // Each connection asks again: the file may have changed, and a retry filter reopening
        // after a failure learns here whether the server is back.
        let (size, http) = remote.fetch_size()?;
        Ok(Box::new(CurlHandle { remote, size, http, readonly: args.readonly }))
    }
}

/// What every connection shares: the settings, the handles and the scripts' output.
struct Remote {
    settings: Arc<Settings>,
    pool: Pool,
    header_script: Option<Script>,
    cookie_script: Option<Script>,
}

/// A connection to the remote file.
struct CurlHandle {
    remote: Arc<Remote>,
    size: u64,
    /// The URL is HTTP(S): statuses are checked and writes are possible.
    http: bool,
    readonly: bool,
}

/// What a request learnt from the response headers (of the last response, after redirects).
#[derive(Default)]
struct Reply {
    /// The last status line (`HTTP/1.1 206 Partial Content`), for messages.
    status_line: String,
    accept_ranges: bool,
}

impl Reply {
    fn take_header(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end();
        if line.starts_with("HTTP/") {
            *self = Reply { status_line: line.to_string(), ..Reply::default() };
        } else if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("accept-ranges") && value.trim().eq_ignore_ascii_case("bytes") {
                self.accept_ranges = true;
            }
        }
    }

    fn is_http(&self) -> bool {
        !self.status_line.is_empty()
    }
}

/// How a failed transfer is described: libcurl's error, or the HTTP status.
fn describe(result: std::result::Result<(), curl::Error>, reply: &Reply) -> String {
    match result {
        Err(e) => {
            let extra = e.extra_description().map(|d| format!(" ({d})")).unwrap_or_default();
            format!("{}{extra}", e.description())
        }
        Ok(()) => reply.status_line.clone(),
    }
}

impl Remote {
    /// The URL for messages.
    fn url(&self) -> String {
        shown_url(&self.settings.url)
    }

    fn fail(&self, what: &str, why: impl std::fmt::Display) -> Error {
        Error::io(format!("curl: {}: {what}: {why}", self.url()))
    }

    /// A handle from the pool with this request's headers and cookie (scripts run as needed).
    fn easy(&self, extra_header: Option<String>) -> Result<pool::Lent<'_>> {
        let mut headers = self.settings.headers.clone();
        if let Some(script) = &self.header_script {
            headers.extend(scripts::header_lines(&script.output().map_err(|e| self.fail("header-script", e.message))?));
        }
        headers.extend(extra_header);
        let cookie = match &self.cookie_script {
            Some(script) => {
                Some(scripts::cookie_line(&script.output().map_err(|e| self.fail("cookie-script", e.message))?))
            }
            None => self.settings.cookie.clone(),
        };
        let mut easy = self.pool.get().map_err(|e| self.fail("setting up a request", e))?;
        let mut list = List::new();
        for h in &headers {
            list.append(h).map_err(|e| self.fail("header", e))?;
        }
        easy.http_headers(list).map_err(|e| self.fail("header", e))?;
        if let Some(c) = cookie {
            easy.cookie(&c).map_err(|e| self.fail("cookie", e))?;
        }
        Ok(easy)
    }

    /// The size of the remote file and whether it is HTTP. Asks with `HEAD`, or with a `GET`
    /// stopped after the headers when `HEAD` is refused or gives no length (some servers
    /// and signed URLs allow only `GET`).
    fn fetch_size(&self) -> Result<(u64, bool)> {
        let mut easy = self.easy(None)?;
        setopt::no_range(&easy).map_err(|e| self.fail("HEAD", e))?;
        easy.nobody(true).map_err(|e| self.fail("HEAD", e))?;
        let (result, reply) = transfer(&mut easy, |_| false, None);
        let length = |easy: &Easy| easy.content_length_download().ok().filter(|l| *l >= 0.0).map(|l| l as u64);
        let status = easy.response_code().unwrap_or(0);
        let mut answer = (result, reply, length(&easy), status);
        if answer.0.is_ok() && answer.1.is_http() && (!(200..300).contains(&status) || answer.2.is_none()) {
            debug!("HEAD gave {}: asking with GET", answer.1.status_line);
            easy.nobody(false).and_then(|_| easy.get(true)).map_err(|e| self.fail("GET", e))?;
            let (result, reply) = transfer(&mut easy, |_| false, None);
            // Stopping at the first byte of the body is how the GET is cut short.
            let result = match result {
                Err(e) if e.is_write_error() => Ok(()),
                other => other,
            };
            let status = easy.response_code().unwrap_or(0);
            answer = (result, reply, length(&easy), status);
        }
        let _ = easy.nobody(false).and_then(|_| easy.get(true));
        let (result, reply, length, status) = answer;
        let http = reply.is_http();
        if result.is_err() || (http && !(200..300).contains(&status)) {
            return Err(self.fail("getting the size", describe(result, &reply)));
        }
        let size = length.ok_or_else(|| self.fail("getting the size", "the server sent no Content-Length"))?;
        if http && !reply.accept_ranges {
            return Err(self.fail(
                "getting the size",
                "the server does not support byte ranges (no 'Accept-Ranges: bytes' in its reply)",
            ));
        }
        debug!("{}: size {size}", self.url());
        Ok((size, http))
    }
}

/// Runs one request on `easy`: `body` gets the response body (returning false stops the
/// transfer), `upload` is the request body.
fn transfer(
    easy: &mut Easy,
    mut body: impl FnMut(&[u8]) -> bool,
    upload: Option<&[u8]>,
) -> (std::result::Result<(), curl::Error>, Reply) {
    let mut reply = Reply::default();
    let mut rest = upload.unwrap_or(&[]);
    let result = (|| {
        let mut t = easy.transfer();
        t.header_function(|line| {
            reply.take_header(line);
            true
        })?;
        t.write_function(|data| Ok(if body(data) { data.len() } else { 0 }))?;
        if upload.is_some() {
            t.read_function(|into| {
                let n = into.len().min(rest.len());
                into[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                Ok(n)
            })?;
        }
        t.perform()
    })();
    (result, reply)
}

impl Handle for CurlHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        // Several connections may share a read-only export; HTTP has no flush, so writers may not.
        Ok(Capabilities { write: self.http && !self.readonly, multi_conn: self.readonly, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let remote = &*self.remote;
        let last = offset + buf.len() as u64 - 1;
        let what = format!("GET bytes {offset}-{last}");
        let mut easy = remote.easy(None)?;
        easy.get(true).and_then(|_| easy.range(&format!("{offset}-{last}"))).map_err(|e| remote.fail(&what, e))?;
        let (mut got, mut overflow) = (0usize, false);
        let (result, reply) = transfer(
            &mut easy,
            |data| {
                if got + data.len() > buf.len() {
                    overflow = true;
                    return false;
                }
                buf[got..got + data.len()].copy_from_slice(data);
                got += data.len();
                true
            },
            None,
        );
        let status = easy.response_code().unwrap_or(0);
        drop(easy);
        if reply.is_http() && status == 200 && (overflow || offset != 0 || got as u64 != self.size) {
            return Err(remote.fail(
                &what,
                "the server ignored the range and sent the whole file (HTTP 200): it cannot serve a disk",
            ));
        }
        if overflow {
            return Err(remote.fail(&what, format!("the server sent more than the {} bytes asked for", buf.len())));
        }
        if result.is_err() || (reply.is_http() && !(200..300).contains(&status)) {
            return Err(remote.fail(&what, describe(result, &reply)));
        }
        if got != buf.len() {
            return Err(remote.fail(&what, format!("short read: {got} of {} bytes", buf.len())));
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let remote = &*self.remote;
        let last = offset + buf.len() as u64 - 1;
        let what = format!("PUT bytes {offset}-{last}");
        let range = format!("Content-Range: bytes {offset}-{last}/{}", self.size);
        let mut easy = remote.easy(Some(range))?;
        setopt::no_range(&easy).map_err(|e| remote.fail(&what, e))?;
        easy.upload(true).and_then(|_| easy.in_filesize(buf.len() as u64)).map_err(|e| remote.fail(&what, e))?;
        let (result, reply) = transfer(&mut easy, |_| true, Some(buf));
        let status = easy.response_code().unwrap_or(0);
        let _ = easy.get(true);
        if result.is_err() || !(200..300).contains(&status) {
            return Err(remote.fail(&what, describe(result, &reply)));
        }
        Ok(())
    }
}

/// A new easy handle with every setting of the parameters; per-request headers come later.
fn make_easy(s: &Settings) -> std::result::Result<Easy, curl::Error> {
    let mut e = Easy::new();
    e.signal(false)?;
    e.url(&s.url)?;
    e.follow_location(s.followlocation)?;
    if let Some(p) = &s.protocols {
        setopt::protocols(&e, p)?;
    }
    if let Some(v) = &s.cainfo {
        e.cainfo(v)?;
    }
    if let Some(v) = &s.capath {
        e.capath(v)?;
    }
    if let Some(v) = &s.cookiefile {
        e.cookie_file(v)?;
    }
    if let Some(v) = &s.cookiejar {
        e.cookie_jar(v)?;
    }
    if let Some(v) = &s.user {
        e.username(v)?;
    }
    if let Some(v) = &s.password {
        e.password(v)?;
    }
    if let Some(v) = &s.proxy {
        e.proxy(v)?;
    }
    if let Some(v) = &s.proxy_user {
        e.proxy_username(v)?;
    }
    if let Some(v) = &s.proxy_password {
        e.proxy_password(v)?;
    }
    e.ssl_verify_peer(s.sslverify)?;
    e.ssl_verify_host(s.sslverify)?;
    if let Some(v) = &s.ssl_cipher_list {
        e.ssl_cipher_list(v)?;
    }
    if let Some((min, max)) = s.ssl_version {
        e.ssl_min_max_version(min, max)?;
    }
    if let Some(v) = &s.tls13_ciphers {
        setopt::tls13_ciphers(&e, v)?;
    }
    e.tcp_keepalive(s.tcp_keepalive)?;
    e.tcp_nodelay(s.tcp_nodelay)?;
    if s.timeout > 0 {
        e.timeout(Duration::from_secs(s.timeout.into()))?;
    }
    if let Some(v) = &s.unix_socket_path {
        e.unix_socket(v)?;
    }
    if let Some(v) = &s.user_agent {
        e.useragent(v)?;
    }
    if s.http_version != 0 {
        setopt::http_version(&e, s.http_version)?;
    }
    if let Some(v) = s.ipresolve {
        e.ip_resolve(v)?;
    }
    if !s.resolve.is_empty() {
        let mut list = List::new();
        for r in &s.resolve {
            list.append(r)?;
        }
        e.resolve(list)?;
    }
    if s.verbose {
        e.verbose(true)?;
        e.debug_function(log_curl)?;
    }
    Ok(e)
}

/// `-D curl.verbose=1`: libcurl's trace, with every header value hidden except a few that
/// cannot be secrets (the password, cookies and tokens travel in headers).
fn log_curl(kind: InfoType, data: &[u8]) {
    const SHOWN: &[&str] = &[
        "host",
        "date",
        "etag",
        "last-modified",
        "connection",
        "range",
        "content-range",
        "content-length",
        "content-type",
        "accept",
        "accept-ranges",
        "location",
        "server",
        "user-agent",
    ];
    let text = String::from_utf8_lossy(data);
    let arrow = match kind {
        InfoType::Text => "*",
        InfoType::HeaderIn => "<",
        InfoType::HeaderOut => ">",
        _ => return,
    };
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _))
                if !matches!(kind, InfoType::Text) && !SHOWN.contains(&name.trim().to_ascii_lowercase().as_str()) =>
            {
                debug!("{arrow} {name}: <hidden>")
            }
            _ => debug!("{arrow} {line}"),
        }
    }
}

/// The URL without any `user:password@` in it, for messages.
fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> Result<CurlPlugin> {
        let mut p = CurlPlugin::default();
        for (k, v) in params {
            assert!(p.config(k, v)?, "{k}");
        }
        p.config_complete()?;
        Ok(p)
    }

    #[test]
    fn parameters_are_checked() {
        let msg = |params: &[(&str, &str)]| configured(params).err().map(|e| e.message).unwrap_or_default();
        assert_eq!(msg(&[]), "the url=URL parameter is required");
        assert_eq!(msg(&[("url", "http://h/"), ("connections", "0")]), "connections=0: must be at least 1");
        assert!(msg(&[("url", "http://h/"), ("http-version", "4")]).starts_with("http-version=4"));
        assert_eq!(
            msg(&[("url", "http://h/"), ("header", "A: b"), ("header-script", "true")]),
            "header= and header-script= cannot be used together"
        );
        assert_eq!(
            msg(&[("url", "http://h/"), ("cookie-script-renew", "5")]),
            "cookie-script-renew= needs cookie-script="
        );
        assert!(msg(&[("url", "http://h/"), ("protocols", "http,nosuch")]).starts_with("url=http://h/:"));
        assert!(configured(&[("url", "http://h/"), ("protocols", "http,https"), ("ssl-version", "tlsv1.2")]).is_ok());
        assert!(!CurlPlugin::default().config("size", "1").unwrap());
    }

    #[test]
    fn urls_in_messages_carry_no_password() {
        assert_eq!(shown_url("http://bob:s3cret@example.com:8080/a@b"), "http://example.com:8080/a@b");
        assert_eq!(shown_url("https://example.com/disk.img"), "https://example.com/disk.img");
        assert_eq!(shown_url("file:///tmp/disk"), "file:///tmp/disk");
    }

    #[test]
    fn a_server_that_is_down_fails_open_with_the_url() {
        let mut p = configured(&[("url", "http://127.0.0.1:9/disk.img"), ("timeout", "5")]).unwrap();
        p.get_ready().unwrap();
        let e = p.open(&OpenArgs::local("", true)).err().unwrap();
        assert_eq!(e.errno, libc::EIO);
        assert!(e.message.starts_with("curl: http://127.0.0.1:9/disk.img: getting the size: "), "{}", e.message);
    }

    #[test]
    fn file_urls_read_by_range() {
        let dir = std::env::temp_dir().join(format!("nbdforge-curl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut p = configured(&[("url", &format!("file://{}", path.display()))]).unwrap();
        p.get_ready().unwrap();
        let h = p.open(&OpenArgs::local("", false)).unwrap();
        assert_eq!(h.get_size().unwrap(), 100_000);
        assert!(!h.capabilities().unwrap().write, "file:// is read-only");
        let mut buf = vec![0; 4096];
        h.pread(&mut buf, 12345, Flags::NONE).unwrap();
        assert_eq!(buf, data[12345..12345 + 4096]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
