//! The S3 plugin's client: the few S3 calls it makes (ranged GET, PUT, DELETE, HEAD and
//! ListObjectsV2), signed with AWS Signature Version 4, over a bounded pool of libcurl handles
//! shared by every connection. libcurl (the `curl` crate, as the curl plugin uses) does the
//! HTTP/1.1, keep-alive and TLS; openssl, already the project's TLS library, the SHA-256 and
//! HMAC of the signature. Larger S3 SDKs bring an async runtime and dozens of crates for these
//! five calls.
//!
//! Every failure is an `EIO` whose message names the bucket, the object, the call and what the
//! store answered (HTTP status and S3 error code, or the transport error). Secrets never reach a
//! message: only the access key id is ever printed.

use std::cell::{Cell, RefCell};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use curl::easy::{Easy, List};
use nbdforge_api::{debug, Error, Result};
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// What signs requests: from parameters, the environment or a credentials file.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, secret hidden)", self.access_key)
    }
}

/// Where the bucket lives: `scheme://host[:port]` and the path before the object key.
#[derive(Debug, Clone)]
pub struct Location {
    /// `http://127.0.0.1:8080` or `https://bucket.s3.us-east-1.amazonaws.com`.
    pub origin: String,
    /// `host[:port]` as sent in the Host header (and signed).
    pub host: String,
    /// The path up to the key, starting and ending with `/`: `/bucket/` (path style) or `/`.
    pub prefix: String,
}

impl Location {
    /// The bucket at a custom endpoint (`endpoint-url=`), addressed path-style as S3-compatible
    /// stores (Ceph, Swift, MinIO) expect; or at AWS, addressed virtual-host style.
    pub fn new(endpoint: Option<&str>, bucket: &str, region: &str) -> std::result::Result<Location, String> {
        let Some(endpoint) = endpoint else {
            let host = format!("{bucket}.s3.{region}.amazonaws.com");
            return Ok(Location { origin: format!("https://{host}"), host, prefix: "/".into() });
        };
        let (scheme, rest) = endpoint.split_once("://").ok_or("not a URL (http://HOST[:PORT] or https://...)")?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported scheme '{scheme}' (http or https)"));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains('@') || path.contains(['?', '#']) {
            return Err("expected http[s]://HOST[:PORT][/PATH] without user, query or fragment".into());
        }
        let path = path.trim_end_matches('/');
        Ok(Location {
            origin: format!("{scheme}://{host}"),
            host: host.to_string(),
            prefix: format!("{path}/{}/", uri_encode(bucket, false)),
        })
    }
}

/// One S3 client: a bucket, its credentials and a pool of at most `connections` HTTP handles.
pub struct Client {
    bucket: String,
    region: String,
    location: Location,
    credentials: Credentials,
    timeout: Duration,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<Easy>,
    /// Handles in existence, idle or lent out.
    made: usize,
    limit: usize,
}

/// The parts of a response the calls look at.
struct Response {
    status: u32,
    /// The body, unless it went straight into the caller's buffer.
    body: Vec<u8>,
    content_length: Option<u64>,
    /// Bytes written into the caller's buffer.
    filled: usize,
}

/// A request to send.
struct Request<'a> {
    method: &'a str,
    key: &'a str,
    query: &'a [(&'a str, String)],
    range: Option<(u64, u64)>,
    body: &'a [u8],
}

impl Client {
    pub fn new(
        bucket: &str,
        region: &str,
        location: Location,
        credentials: Credentials,
        connections: usize,
        timeout: Duration,
    ) -> Client {
        Client {
            bucket: bucket.to_string(),
            region: region.to_string(),
            location,
            credentials,
            timeout,
            pool: Mutex::new(Pool { idle: Vec::new(), made: 0, limit: connections.max(1) }),
            returned: Condvar::new(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// How many requests may be in flight at once.
    pub fn connections(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).limit
    }

    /// The object's size (HEAD), or `None` when it does not exist.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        let r = self.send(&Request { method: "HEAD", key, query: &[], range: None, body: &[] }, None)?;
        match r.status {
            200 => Ok(Some(r.content_length.ok_or_else(|| self.failed("HEAD", key, &r, "no Content-Length"))?)),
            404 => Ok(None),
            _ => Err(self.failed("HEAD", key, &r, "")),
        }
    }

    /// Reads `buf.len()` bytes of the object from `offset` into `buf` (a ranged GET). Returns
    /// false, leaving `buf` alone, when the object does not exist.
    pub fn get(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<bool> {
        if buf.is_empty() {
            return Ok(true);
        }
        let range = Some((offset, offset + buf.len() as u64 - 1));
        let r = self.send(&Request { method: "GET", key, query: &[], range, body: &[] }, Some(&mut *buf))?;
        match r.status {
            200 | 206 if r.filled == buf.len() => Ok(true),
            200 | 206 => Err(self.failed("GET", key, &r, &format!("{} bytes of {} came", r.filled, buf.len()))),
            404 if s3_code(&r.body) != Some("NoSuchBucket") => Ok(false),
            416 => Err(self.failed("GET", key, &r, "the object is shorter than the disk expects")),
            _ => Err(self.failed("GET", key, &r, "")),
        }
    }

    /// Writes the whole object (PUT).
    pub fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let r = self.send(&Request { method: "PUT", key, query: &[], range: None, body: data }, None)?;
        match r.status {
            200 | 201 | 204 => Ok(()),
            _ => Err(self.failed("PUT", key, &r, "")),
        }
    }

    /// Deletes the object; one that is already gone is no error.
    pub fn delete(&self, key: &str) -> Result<()> {
        let r = self.send(&Request { method: "DELETE", key, query: &[], range: None, body: &[] }, None)?;
        match r.status {
            200 | 204 | 404 if s3_code(&r.body) != Some("NoSuchBucket") => Ok(()),
            _ => Err(self.failed("DELETE", key, &r, "")),
        }
    }

    /// One page (up to 1000) of the keys under `prefix` after `start_after`, in order, and
    /// whether more follow (ListObjectsV2).
    pub fn list(&self, prefix: &str, start_after: &str) -> Result<(Vec<String>, bool)> {
        let query = [
            ("list-type", "2".to_string()),
            ("max-keys", "1000".to_string()),
            ("prefix", prefix.to_string()),
            ("start-after", start_after.to_string()),
        ];
        let r = self.send(&Request { method: "GET", key: "", query: &query, range: None, body: &[] }, None)?;
        if r.status != 200 {
            return Err(self.failed("LIST", prefix, &r, ""));
        }
        let text = String::from_utf8_lossy(&r.body);
        let keys = xml_values(&text, "Key").into_iter().map(|k| xml_unescape(&k)).collect();
        let truncated = xml_values(&text, "IsTruncated").first().is_some_and(|v| v == "true");
        Ok((keys, truncated))
    }

    /// An `EIO` naming the bucket, the object, the call and what the store said.
    fn failed(&self, call: &str, key: &str, r: &Response, why: &str) -> Error {
        let mut m = format!("S3: bucket {}: {call} {key}: HTTP {}", self.bucket, r.status);
        if let Some(code) = s3_code(&r.body) {
            m += &format!(" {code}");
        }
        if let Some(text) = xml_values(&String::from_utf8_lossy(&r.body), "Message").first() {
            m += &format!(": {}", xml_unescape(text));
        }
        if !why.is_empty() {
            m += &format!(" ({why})");
        }
        Error::io(m)
    }

    /// Sends one signed request on a handle from the pool. The body of a successful GET goes
    /// into `into`, everything else into the response's `body`.
    fn send(&self, req: &Request, into: Option<&mut [u8]>) -> Result<Response> {
        let mut easy = self.take();
        let result = self.perform(&mut easy, req, into);
        self.give_back(easy);
        result.map_err(|e| {
            let what = if req.key.is_empty() { "the bucket" } else { req.key };
            Error::io(format!("S3: bucket {}: {} {what}: {e}", self.bucket, req.method))
        })
    }

    fn perform(
        &self,
        easy: &mut Easy,
        req: &Request,
        mut into: Option<&mut [u8]>,
    ) -> std::result::Result<Response, curl::Error> {
        easy.reset();
        let path = format!("{}{}", self.location.prefix, uri_encode(req.key, false));
        let mut query: Vec<(String, String)> =
            req.query.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
        query.sort();
        let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let url = if query.is_empty() {
            format!("{}{path}", self.location.origin)
        } else {
            format!("{}{path}?{query}", self.location.origin)
        };
        let headers = self.sign(req.method, &path, &query, req.body, SystemTime::now());
        let mut list = List::new();
        for (name, value) in &headers {
            list.append(&format!("{name}: {value}"))?;
        }
        if let Some((first, last)) = req.range {
            list.append(&format!("Range: bytes={first}-{last}"))?;
        }
        // No "Expect: 100-continue" round trip before a PUT's body.
        list.append("Expect:")?;
        easy.url(&url)?;
        easy.http_headers(list)?;
        easy.connect_timeout(Duration::from_secs(10))?;
        // A store that stops sending for this long has failed the request.
        easy.low_speed_limit(1)?;
        easy.low_speed_time(self.timeout)?;
        easy.signal(false)?;
        match req.method {
            "GET" => easy.get(true)?,
            "HEAD" => easy.nobody(true)?,
            "PUT" => {
                easy.upload(true)?;
                easy.in_filesize(req.body.len() as u64)?;
            }
            other => easy.custom_request(other)?,
        }
        let status = Cell::new(0u32);
        let content_length = Cell::new(None);
        let body = RefCell::new(Vec::new());
        let filled = Cell::new(0usize);
        let mut sent = 0usize;
        {
            let mut t = easy.transfer();
            t.header_function(|line| {
                let line = String::from_utf8_lossy(line);
                if let Some(rest) = line.strip_prefix("HTTP/") {
                    status.set(rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0));
                    content_length.set(None);
                } else if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        content_length.set(value.trim().parse().ok());
                    }
                }
                true
            })?;
            t.write_function(|data| {
                let ok = matches!(status.get(), 200 | 206);
                match into.as_deref_mut() {
                    Some(buf) if ok => {
                        let at = filled.get();
                        let n = data.len().min(buf.len() - at);
                        buf[at..at + n].copy_from_slice(&data[..n]);
                        filled.set(at + n);
                        if n < data.len() {
                            return Ok(0); // more than asked for: stop (reported as short)
                        }
                    }
                    _ => {
                        let mut body = body.borrow_mut();
                        if body.len() < 64 * 1024 {
                            body.extend_from_slice(data);
                        }
                    }
                }
                Ok(data.len())
            })?;
            t.read_function(|out| {
                let n = out.len().min(req.body.len() - sent);
                out[..n].copy_from_slice(&req.body[sent..sent + n]);
                sent += n;
                Ok(n)
            })?;
            if let Err(e) = t.perform() {
                // A write callback that stopped early: the store sent more than the range.
                if !(e.is_write_error() && filled.get() > 0) {
                    return Err(e);
                }
            }
        }
        let (status, content_length, filled, body) =
            (status.get(), content_length.get(), filled.get(), body.into_inner());
        Ok(Response { status, body, content_length, filled })
    }

    /// The headers of a Signature Version 4 request: Host, X-Amz-Date, X-Amz-Content-Sha256,
    /// X-Amz-Security-Token when there is a session token, and Authorization.
    fn sign(&self, method: &str, path: &str, query: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        let (date, time) = utc(now);
        let stamp = format!("{date}T{time}Z");
        let payload = hex(&sha256(body));
        let mut headers = vec![
            ("host".to_string(), self.location.host.clone()),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), stamp.clone()),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        let signed = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
        let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{}\n", v.trim())).collect();
        let canonical = format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload}");
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!("AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}", hex(&sha256(canonical.as_bytes())));
        let mut key = hmac(format!("AWS4{}", self.credentials.secret_key).as_bytes(), date.as_bytes());
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        headers.push((
            "authorization".to_string(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
                self.credentials.access_key
            ),
        ));
        headers
    }

    /// A handle from the pool, waiting while `limit` are lent out.
    fn take(&self) -> Easy {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(easy) = pool.idle.pop() {
                return easy;
            }
            if pool.made < pool.limit {
                pool.made += 1;
                debug!("opening HTTP handle {} of {}", pool.made, pool.limit);
                return Easy::new();
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, easy: Easy) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).idle.push(easy);
        self.returned.notify_one();
    }
}

/// The S3 error code (`NoSuchKey`, `AccessDenied`, ...) in an error response's XML.
fn s3_code(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The text of every `<tag>...</tag>` in `xml`, in order (S3's responses are flat enough).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// Percent-encoding as SigV4 wants it: unreserved characters kept, `/` kept in paths.
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out += &format!("%{b:02X}"),
        }
    }
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    hash(MessageDigest::sha256(), data).map(|d| d.to_vec()).unwrap_or_default()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let sign = || -> std::result::Result<Vec<u8>, openssl::error::ErrorStack> {
        let key = PKey::hmac(key)?;
        let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
        signer.update(data)?;
        signer.sign_to_vec()
    };
    sign().unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(YYYYMMDD, HHMMSS)` in UTC.
fn utc(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc(UNIX_EPOCH), ("19700101".into(), "000000".into()));
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600 + 3661); // 2013-05-24 01:01:01
        assert_eq!(utc(t), ("20130524".into(), "010101".into()));
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap).0, "20000229");
    }

    /// The "GET Bucket Lifecycle" example of Amazon's Signature Version 4 documentation for S3:
    /// its example keys (not secrets), request and published signature.
    #[test]
    fn signs_amazons_example_request() {
        let location = Location {
            origin: "https://examplebucket.s3.amazonaws.com".into(),
            host: "examplebucket.s3.amazonaws.com".into(),
            prefix: "/".into(),
        };
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let client = Client::new("examplebucket", "us-east-1", location, credentials, 1, Duration::from_secs(1));
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 20130524T000000Z
        let headers = client.sign("GET", "/", "lifecycle=", b"", t);
        let auth = &headers.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn hmac_and_sha256_match_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn uri_encoding_and_locations() {
        assert_eq!(uri_encode("disk/000a b", false), "disk/000a%20b");
        assert_eq!(uri_encode("disk/", true), "disk%2F");
        let l = Location::new(Some("http://127.0.0.1:8080/"), "b", "r").unwrap();
        assert_eq!(
            (l.origin.as_str(), l.host.as_str(), l.prefix.as_str()),
            ("http://127.0.0.1:8080", "127.0.0.1:8080", "/b/")
        );
        let l = Location::new(None, "b", "eu-west-1").unwrap();
        assert_eq!(l.origin, "https://b.s3.eu-west-1.amazonaws.com");
        assert!(Location::new(Some("ftp://x"), "b", "r").is_err());
        assert!(Location::new(Some("127.0.0.1"), "b", "r").is_err());
    }

    #[test]
    fn listing_xml() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>d/0&amp;1</Key></Contents>\
                   <Contents><Key>d/02</Key></Contents></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), ["d/0&amp;1", "d/02"]);
        assert_eq!(xml_unescape("d/0&amp;1"), "d/0&1");
        assert_eq!(s3_code(b"<Error><Code>NoSuchKey</Code></Error>"), Some("NoSuchKey"));
    }
}
