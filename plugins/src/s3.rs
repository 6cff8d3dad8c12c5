//! The `S3` plugin (nbdkit's name): a disk kept in an S3 bucket. With `size=` and
//! `object-size=`, the disk is cut into objects of `object-size` bytes named `KEY/%016x` (the
//! object's number in 16 hex digits, as nbdkit names them) and is writable; an object that does
//! not exist reads as zeroes and is a hole in block status. Without them, the single object `KEY`
//! is served read-only. Reads are ranged GETs, writes PUTs of whole objects (reading the rest of
//! a partly written object first, under a lock per object), trim and zero delete whole objects (trim those a listing
//! shows, zero every one by name).
//! A request covering several objects runs its parts in parallel, at most `connections=` HTTP
//! requests at a time over all clients. The HTTP and signing live in `s3/client.rs`, the
//! credential files in `s3/credentials.rs`; this file maps the disk onto objects.

mod client;
mod credentials;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{Client, Credentials, Location};
use nbdforge_api::extents::{DATA, HOLE};
use nbdforge_api::{
    debug, parse_delay, parse_int, parse_size, read_password, unknown_parameter, BlockSize, Capabilities, Error,
    Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result, Support,
};

/// Locks serialising the writers of one object (read-modify-write must not interleave); an
/// object's lock is `locks[number % LOCKS]`.
const LOCKS: usize = 256;

/// The plugin's parameters.
#[derive(Default)]
pub struct S3Plugin {
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    profile: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    bucket: Option<String>,
    key: Option<String>,
    size: Option<u64>,
    object_size: Option<u64>,
    connections: usize,
    timeout: Option<Duration>,
    store: Option<Arc<Store>>,
}

/// What every connection shares: the client and the disk's layout.
struct Store {
    client: Client,
    key: String,
    /// `Some((disk size, object size))` for a disk of objects, `None` for a single object.
    layout: Option<(u64, u64)>,
    locks: Vec<Mutex<()>>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("S3", "a disk kept in an S3 bucket, one object or many")
        .help(
            "bucket=<BUCKET>           (required) The bucket.\n\
             key=<KEY>                 (required) The object, or with size= the prefix of the objects.\n\
             size=<SIZE>               The disk's size: a writable disk of objects (needs object-size=).\n\
             object-size=<SIZE>        The size of each object (size= must be a multiple of it).\n\
             endpoint-url=<URL>        An S3-compatible store (Ceph, Swift, MinIO) instead of AWS.\n\
             access-key=<KEY>|+FILE|-|-FD  Credentials (default: environment or ~/.aws/credentials).\n\
             secret-key=<KEY>|+FILE|-|-FD\n\
             session-token=<TOKEN>|+FILE|-|-FD\n\
             profile=<NAME>            The profile in ~/.aws/credentials (default: $AWS_PROFILE or default).\n\
             region=<REGION>           The region signed for (default: $AWS_REGION or us-east-1).\n\
             connections=<N>           HTTP requests in flight at most (default 16).\n\
             timeout=<SECS>            Fail a request that receives nothing for this long (default 60s).",
        )
        .magic("key");
    Registration::plugin(info, || S3Plugin { connections: 16, ..S3Plugin::default() })
}

impl Layer for S3Plugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        // nbdkit's S3 plugin also takes the underscore spellings.
        match key.replace('_', "-").as_str() {
            "access-key" => self.access_key = Some(read_password(key, value)?),
            "secret-key" => self.secret_key = Some(read_password(key, value)?),
            "session-token" => self.session_token = Some(read_password(key, value)?),
            "profile" => self.profile = Some(value.to_string()),
            "region" => self.region = Some(value.to_string()),
            "endpoint-url" => self.endpoint_url = Some(value.to_string()),
            "bucket" => self.bucket = Some(value.to_string()),
            "key" => self.key = Some(value.to_string()),
            "size" => self.size = Some(parse_size(key, value)?),
            "object-size" => self.object_size = Some(parse_size(key, value)?),
            "connections" => {
                self.connections = parse_int::<usize>(key, value)?;
                if !(1..=1024).contains(&self.connections) {
                    return Err(Error::invalid(format!("{key}={value}: must be from 1 to 1024")));
                }
            }
            "timeout" => {
                let t = parse_delay(key, value)?;
                if t.is_zero() {
                    return Err(Error::invalid(format!("{key}={value}: must be more than 0")));
                }
                self.timeout = Some(t);
            }
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let bucket = self.bucket.clone().ok_or_else(|| Error::invalid("bucket=<BUCKET> parameter is required"))?;
        let key = self.key.clone().ok_or_else(|| Error::invalid("key=<KEY> parameter is required"))?;
        let layout = match (self.size, self.object_size) {
            (None, None) => None,
            (Some(size), Some(object)) => {
                if object == 0 || object > 1 << 30 {
                    return Err(Error::invalid(format!("object-size={object}: must be from 1 byte to 1G")));
                }
                if size % object != 0 {
                    return Err(Error::invalid(format!("size={size}: must be a multiple of object-size={object}")));
                }
                Some((size, object))
            }
            _ => return Err(Error::invalid("size= and object-size= must be given together")),
        };
        let found = credentials::find(self.profile.as_deref());
        let region = self.region.clone().or(found.region).unwrap_or_else(|| "us-east-1".into());
        let endpoint = self.endpoint_url.clone().or(found.endpoint_url);
        let location = Location::new(endpoint.as_deref(), &bucket, &region)
            .map_err(|e| Error::invalid(format!("endpoint-url={}: {e}", endpoint.as_deref().unwrap_or(""))))?;
        let credentials = match (self.access_key.clone(), self.secret_key.clone()) {
            (Some(access_key), Some(secret_key)) => {
                Credentials { access_key, secret_key, session_token: self.session_token.clone() }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::invalid("access-key= and secret-key= must be given together"))
            }
            (None, None) => match (found.access_key, found.secret_key) {
                (Some(access_key), Some(secret_key)) => {
                    debug!("credentials from {}", found.source);
                    Credentials { access_key, secret_key, session_token: found.session_token }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "no credentials: give access-key= and secret-key=, set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or put profile [{}] in ~/.aws/credentials",
                        self.profile.as_deref().unwrap_or("default")
                    )))
                }
            },
        };
        let timeout = self.timeout.unwrap_or(Duration::from_secs(60));
        let client = Client::new(&bucket, &region, location, credentials, self.connections, timeout);
        let locks = (0..LOCKS).map(|_| Mutex::new(())).collect();
        self.store = Some(Arc::new(Store { client, key, layout, locks }));
        Ok(())
    }
}

impl Plugin for S3Plugin {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let store = Arc::clone(self.store.as_ref().ok_or_else(|| Error::io("S3: not configured"))?);
        let size = match store.layout {
            Some((size, _)) => size,
            None => store.client.head(&store.key)?.ok_or_else(|| {
                Error::new(
                    libc::ENOENT,
                    format!("S3: bucket {}: object {} does not exist", store.client.bucket(), store.key),
                )
            })?,
        };
        Ok(Box::new(S3Handle { store, size, readonly: args.readonly }))
    }
}

/// One connection: the shared store and the disk's size.
struct S3Handle {
    store: Arc<Store>,
    size: u64,
    readonly: bool,
}

/// One object's part of a request: the object's number, the offset in it, and the range of the
/// request's buffer (or of the request, for trim and zero) it covers.
#[derive(Debug, Clone)]
struct Part {
    number: u64,
    offset: u64,
    range: std::ops::Range<usize>,
}

impl Store {
    fn object_name(&self, number: u64) -> String {
        format!("{}/{number:016x}", self.key)
    }

    fn object_size(&self) -> u64 {
        self.layout.map_or(u64::MAX, |(_, o)| o)
    }

    /// The parts of `count` bytes at `offset`, object by object.
    fn parts(&self, count: u64, offset: u64) -> Vec<Part> {
        let object = self.object_size();
        let mut parts = Vec::new();
        let mut at = offset;
        while at < offset + count {
            let (number, within) = (at / object, at % object);
            let n = (object - within).min(offset + count - at);
            let done = (at - offset) as usize;
            parts.push(Part { number, offset: within, range: done..done + n as usize });
            at += n;
        }
        parts
    }

    /// Runs `each` on every job, up to `connections` at once; the first error wins.
    fn parallel<T: Send>(&self, jobs: Vec<T>, each: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
        if jobs.len() <= 1 {
            return jobs.into_iter().try_for_each(each);
        }
        let workers = jobs.len().min(self.client.connections());
        let queue = Mutex::new(jobs.into_iter());
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        break;
                    }
                    let Some(job) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                    if let Err(e) = each(job) {
                        failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn lock(&self, number: u64) -> std::sync::MutexGuard<'_, ()> {
        self.locks[(number % LOCKS as u64) as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `data` at `offset` in object `number`: the whole object by one PUT, or else the
    /// object read, patched and written back. With `data` all zero and the object missing,
    /// nothing needs doing.
    fn write_part(&self, number: u64, offset: u64, data: &[u8]) -> Result<()> {
        let name = self.object_name(number);
        let object = self.object_size() as usize;
        let _guard = self.lock(number);
        if offset == 0 && data.len() == object {
            return self.client.put(&name, data);
        }
        let mut whole = vec![0u8; object];
        let exists = self.client.get(&name, 0, &mut whole)?;
        if !exists && data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        debug!("{name}: rewriting for {} bytes at {offset}", data.len());
        whole[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        self.client.put(&name, &whole)
    }

    /// The numbers of the objects that exist from `first` up to (not including) `end`.
    fn existing(&self, first: u64, end: u64) -> Result<Vec<u64>> {
        let prefix = format!("{}/", self.key);
        let mut after = if first == 0 { String::new() } else { self.object_name(first - 1) };
        let mut found = Vec::new();
        loop {
            let (keys, more) = self.client.list(&prefix, &after)?;
            for k in &keys {
                let Some(number) =
                    k.strip_prefix(&prefix).filter(|n| n.len() == 16).and_then(|n| u64::from_str_radix(n, 16).ok())
                else {
                    continue; // not one of ours
                };
                if number >= end {
                    return Ok(found);
                }
                if number >= first {
                    found.push(number);
                }
            }
            match keys.last() {
                Some(last) if more => after = last.clone(),
                _ => return Ok(found),
            }
        }
    }

    /// Deletes the objects that exist from `first` up to (not including) `end`.
    fn delete_objects(&self, first: u64, end: u64) -> Result<()> {
        if first >= end {
            return Ok(());
        }
        let numbers = self.existing(first, end)?;
        debug!("deleting {} objects from {first} to {end}", numbers.len());
        self.parallel(numbers, |n| {
            let _guard = self.lock(n);
            self.client.delete(&self.object_name(n))
        })
    }
}

impl Handle for S3Handle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        if self.store.layout.is_none() {
            return Ok(Capabilities { multi_conn: true, ..Capabilities::READ_ONLY });
        }
        // Every PUT and DELETE is durable when it returns: flush and FUA have nothing to do.
        Ok(Capabilities { write: !self.readonly, cache: Support::None, ..Capabilities::ALL })
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        // Requests of whole objects avoid read-modify-write; smaller ones still work.
        Ok(self.store.layout.map(|(_, object)| {
            let preferred = if object.is_power_of_two() { object.clamp(512, 32 << 20) as u32 } else { 4096 };
            BlockSize { minimum: 1, preferred, maximum: 0xffff_ffff }
        }))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let store = &*self.store;
        if store.layout.is_none() {
            if !store.client.get(&store.key, offset, buf)? {
                return Err(Error::io(format!("S3: {}: the object has gone", store.key)));
            }
            return Ok(());
        }
        let parts = store.parts(buf.len() as u64, offset);
        // Each part gets its own slice of the buffer.
        let mut jobs = Vec::with_capacity(parts.len());
        let mut rest = buf;
        for p in parts {
            let (mine, tail) = rest.split_at_mut(p.range.len());
            rest = tail;
            jobs.push((p, mine));
        }
        store.parallel(jobs, |(p, slice)| {
            if !store.client.get(&store.object_name(p.number), p.offset, slice)? {
                slice.fill(0); // never written: a hole
            }
            Ok(())
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let store = &*self.store;
        let parts = store.parts(buf.len() as u64, offset);
        store.parallel(parts, |p| store.write_part(p.number, p.offset, &buf[p.range.clone()]))
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        // Only whole objects go; a trim of part of one is advice that can be ignored.
        let object = self.store.object_size();
        self.store.delete_objects(offset.div_ceil(object), (offset + count) / object)
    }

    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let store = &*self.store;
        let object = store.object_size();
        let (whole_first, whole_end) = (offset.div_ceil(object), (offset + count) / object);
        let partial: Vec<Part> = store
            .parts(count, offset)
            .into_iter()
            .filter(|p| p.offset != 0 || (p.range.len() as u64) != object)
            .collect();
        let zeroes = vec![0u8; partial.iter().map(|p| p.range.len()).max().unwrap_or(0)];
        store.parallel(partial, |p| store.write_part(p.number, p.offset, &zeroes[..p.range.len()]))?;
        // Every whole object is deleted by name, not from a listing: a store whose listings lag
        // behind its writes (Swift's are eventually consistent) must not keep old data here.
        store.parallel((whole_first..whole_end).collect(), |n| {
            let _guard = store.lock(n);
            store.client.delete(&store.object_name(n))
        })
    }

    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        // Objects missing from the listing are holes, but not promised to read as zeroes: a
        // listing may lag behind writes (Swift's container listings are eventually consistent),
        // and a client that skipped reading "zero" ranges would lose data. Reads of them are
        // still zeroes when the object really is missing.
        let store = &*self.store;
        let object = store.object_size();
        let (first, end) = (offset / object, (offset + count).div_ceil(object));
        let existing = store.existing(first, end)?;
        let mut at = first;
        for n in existing.into_iter().chain(std::iter::once(end)) {
            if n > at {
                extents.add(at * object, (n - at) * object, HOLE)?;
            }
            if n < end {
                extents.add(n * object, object, DATA)?;
            }
            at = n + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(size: u64, object: u64) -> Store {
        let location = Location::new(Some("http://127.0.0.1:1"), "b", "us-east-1").unwrap();
        let credentials = Credentials { access_key: "a".into(), secret_key: "s".into(), session_token: None };
        Store {
            client: Client::new("b", "us-east-1", location, credentials, 4, Duration::from_secs(1)),
            key: "disk".into(),
            layout: Some((size, object)),
            locks: (0..LOCKS).map(|_| Mutex::new(())).collect(),
        }
    }

    #[test]
    fn requests_map_onto_objects() {
        let s = store(1 << 20, 4096);
        assert_eq!(s.object_name(10), "disk/000000000000000a");
        let parts = s.parts(8192, 2048);
        let got: Vec<_> = parts.iter().map(|p| (p.number, p.offset, p.range.clone())).collect();
        assert_eq!(got, [(0, 2048, 0..2048), (1, 0, 2048..6144), (2, 0, 6144..8192)]);
        assert_eq!(s.parts(4096, 4096).len(), 1);
    }

    #[test]
    fn parameters_are_checked() {
        let mut p = S3Plugin { connections: 16, ..S3Plugin::default() };
        assert!(p.config("connections", "0").is_err());
        assert!(p.config("colour", "red").is_err());
        p.config("bucket", "b").unwrap();
        p.config("key", "k").unwrap();
        p.config("size", "1M").unwrap();
        assert!(p.config_complete().unwrap_err().message.contains("together"));
        p.config("object-size", "3000").unwrap();
        assert!(p.config_complete().unwrap_err().message.contains("multiple"));
    }

    #[test]
    fn a_dead_store_is_an_eio_naming_bucket_and_object() {
        let s = store(1 << 20, 4096);
        let mut buf = [0u8; 10];
        let e = s.client.get("disk/0000000000000000", 0, &mut buf).unwrap_err();
        assert_eq!(e.errno, libc::EIO);
        assert!(e.message.contains("bucket b") && e.message.contains("disk/0000000000000000"), "{}", e.message);
    }
}
