//! The image given as qemu block options instead of a file name: `--image-opts` (qemu's
//! `key=value,...` syntax, `,,` a literal comma) and a `json:{...}` FILE (the same options as a
//! JSON object), in the forms qemu-nbd users write:
//!
//! - `driver=raw|qcow2,file.driver=file,file.filename=PATH` (`driver` absent: probed, as without
//!   `-f`), or `driver=file,filename=PATH` (the file itself, raw);
//! - raw's `offset=` and `size=`: a window of the file;
//! - qcow2's `backing=` (empty or JSON `null`: no backing file) and `backing.*`: the backing image
//!   given instead of the one the header names, itself a node with its own `backing.*`;
//! - `read-only=`, `force-share=`, `cache.direct=`, `discard=`, `detect-zeroes=`, and options that
//!   change nothing here (`node-name=`, `file.aio=`, `file.locking=`, qcow2's cache sizes).
//!
//! Both syntaxes are flattened into dotted keys first, so they are interpreted by one function
//! per node. An option nbdforge-img does not know is an error worded as qemu words it (`Block
//! format 'raw' does not support the option 'bogus'`), never silently ignored. Opening the files
//! is left to [`crate::image`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::image::{Backing, Format};
use crate::objects::split_properties;
use crate::plugin::{parse_discard, qemu_bool, DetectZeroes};

/// One block node: an image file in a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `driver=`; `None`: probed from the file's first bytes.
    pub format: Option<Format>,
    /// `file.filename=` (or `filename=` under `driver=file`).
    pub filename: PathBuf,
    /// raw's `offset=`: the disk starts this far into the file.
    pub offset: u64,
    /// raw's `size=`: the disk is this long (default: to the end of the file).
    pub size: Option<u64>,
    /// qcow2's backing image.
    pub backing: Backing,
}

/// What the options say about the image as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOpts {
    pub node: Node,
    /// `read-only=on`.
    pub readonly: bool,
    /// `cache.direct=`: bypass the page cache (as `-n`).
    pub direct: Option<bool>,
    /// `discard=unmap|ignore`.
    pub discard_unmap: Option<bool>,
    /// `detect-zeroes=`.
    pub detect_zeroes: Option<DetectZeroes>,
}

/// A flattened option value: JSON's `null` is kept apart from strings (`backing: null`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Null,
}

/// The options as dotted keys; the last of repeated keys wins, as in qemu.
type Options = BTreeMap<String, Value>;

/// Parses `--image-opts`' FILE: `key=value,...`. As in qemu, a first property without `=` is the
/// `file` option and a later one is a short form of `key=on`.
pub fn parse(spec: &str) -> Result<ImageOpts, String> {
    let mut opts = Options::new();
    for (i, prop) in split_properties(spec).into_iter().enumerate() {
        let (k, v) = match prop.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => ("file".to_string(), prop),
            None => (prop, "on".to_string()),
        };
        opts.insert(k, Value::Str(v));
    }
    interpret(opts).map_err(|e| format!("--image-opts '{spec}': {e}"))
}

/// Whether FILE is a `json:` pseudo-file name (taken only without `--image-opts`, as qemu-nbd).
pub fn is_json(file: &str) -> bool {
    file.starts_with("json:")
}

/// Parses a `json:{...}` FILE.
pub fn parse_json(file: &str) -> Result<ImageOpts, String> {
    let text = file.strip_prefix("json:").unwrap_or(file);
    let fail = |e: String| format!("'{file}': {e}");
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(fail("Invalid JSON object given".into()));
    };
    let mut opts = Options::new();
    flatten("", &object, &mut opts).map_err(fail)?;
    interpret(opts).map_err(fail)
}

fn flatten(prefix: &str, object: &serde_json::Map<String, serde_json::Value>, out: &mut Options) -> Result<(), String> {
    for (k, v) in object {
        let key = format!("{prefix}{k}");
        let value = match v {
            serde_json::Value::Object(inner) => {
                flatten(&format!("{key}."), inner, out)?;
                continue;
            }
            serde_json::Value::Null => Value::Null,
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Bool(b) => Value::Str(if *b { "on" } else { "off" }.into()),
            serde_json::Value::Number(n) => Value::Str(n.to_string()),
            serde_json::Value::Array(_) => return Err(format!("Parameter '{key}': lists are not supported")),
        };
        out.insert(key, value);
    }
    Ok(())
}

/// Takes `key` out of the options as a string.
fn take(opts: &mut Options, key: &str) -> Result<Option<String>, String> {
    match opts.remove(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(Value::Null) => Err(format!("Invalid parameter type for '{key}', expected: string")),
    }
}

/// qemu's boolean values.
fn take_bool(opts: &mut Options, key: &str) -> Result<Option<bool>, String> {
    match take(opts, key)? {
        None => Ok(None),
        Some(v) => qemu_bool(&v).map(Some).ok_or_else(|| format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// A qemu size: bytes, or a number with a suffix `k`, `M`, `G`, `T`, `P`, `E` (powers of 1024).
fn take_size(opts: &mut Options, key: &str) -> Result<Option<u64>, String> {
    let Some(v) = take(opts, key)? else { return Ok(None) };
    if v.starts_with('-') {
        return Err(format!("Value '{v}' is out of range for parameter '{key}'"));
    }
    parse_size(&v).map(Some).ok_or_else(|| {
        format!("Parameter '{key}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)")
    })
}

pub fn parse_size(v: &str) -> Option<u64> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, suffix) = v.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Takes `key` and checks it is one of `allowed` (options that change nothing here).
fn take_choice(opts: &mut Options, key: &str, allowed: &[&str]) -> Result<(), String> {
    match take(opts, key)? {
        Some(v) if !allowed.contains(&v.as_str()) => Err(format!("{key}={v}: invalid parameter value: {v}")),
        _ => Ok(()),
    }
}

fn interpret(mut opts: Options) -> Result<ImageOpts, String> {
    let readonly = take_bool(&mut opts, "read-only")?.unwrap_or(false);
    let force_share = take_bool(&mut opts, "force-share")?.unwrap_or(false);
    if force_share && !readonly {
        return Err("force-share=on can only be used with read-only images".into());
    }
    let direct = take_bool(&mut opts, "cache.direct")?;
    take_bool(&mut opts, "cache.no-flush")?;
    take_bool(&mut opts, "auto-read-only")?;
    let discard_unmap = match take(&mut opts, "discard")? {
        None => None,
        Some(v) => Some(parse_discard(&v).ok_or_else(|| format!("discard={v}: Invalid discard option"))?),
    };
    let detect_zeroes = match take(&mut opts, "detect-zeroes")? {
        None => None,
        Some(v) => {
            Some(DetectZeroes::parse(&v).ok_or_else(|| format!("detect-zeroes={v}: invalid parameter value: {v}"))?)
        }
    };
    let node = node(&mut opts, "")?;
    Ok(ImageOpts { node, readonly, direct, discard_unmap, detect_zeroes })
}

/// The node whose options start with `prefix` (`""`, `backing.`, `backing.backing.`...).
fn node(opts: &mut Options, prefix: &str) -> Result<Node, String> {
    let key = |k: &str| format!("{prefix}{k}");
    take(opts, &key("node-name"))?;
    let driver = take(opts, &key("driver"))?;
    if driver.as_deref() == Some("file") {
        // The protocol node alone: the file is the disk.
        let filename = take(opts, &key("filename"))?.ok_or("The 'file' block driver requires a file name")?;
        protocol_options(opts, prefix)?;
        leftover(opts, prefix, "Block protocol 'file' doesn't support the option")?;
        return Ok(Node {
            format: Some(Format::Raw),
            filename: filename.into(),
            offset: 0,
            size: None,
            backing: Backing::Header,
        });
    }
    let format = match driver.as_deref() {
        None => None,
        Some(d) => Some(Format::parse(d).ok_or_else(|| format!("Unknown driver '{d}' (known: raw, qcow2, file)"))?),
    };
    if let Some(reference) = take(opts, &key("file"))? {
        return Err(format!("Cannot find device='{reference}' nor node-name='{reference}'"));
    }
    match take(opts, &key("file.driver"))?.as_deref() {
        None | Some("file") => {}
        Some(d) => return Err(format!("{prefix}file.driver={d}: only the 'file' protocol is supported")),
    }
    let filename = take(opts, &key("file.filename"))?;
    protocol_options(opts, &key("file."))?;
    leftover(opts, &key("file."), "Block protocol 'file' doesn't support the option")?;
    let filename = match (filename, &driver) {
        (Some(f), _) => PathBuf::from(f),
        (None, None) => return Err("Must specify either driver or file".into()),
        (None, Some(_)) => return Err(format!("A block device must be specified for \"{prefix}file\"")),
    };
    let (mut offset, mut size) = (0, None);
    if format != Some(Format::Qcow2) {
        offset = take_size(opts, &key("offset"))?.unwrap_or(0);
        size = take_size(opts, &key("size"))?;
        if size.is_some_and(|s| s % 512 != 0) {
            return Err(format!("{prefix}size={}: Specified size is not multiple of 512", size.unwrap_or(0)));
        }
        if (offset != 0 || size.is_some()) && !prefix.is_empty() {
            return Err(format!("{prefix}offset=, {prefix}size=: a window of a backing file is not supported"));
        }
    } else {
        for tuning in ["lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other"] {
            take_bool(opts, &key(tuning))?;
        }
        for tuning in ["cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size"] {
            take_size(opts, &key(tuning))?;
        }
        take_size(opts, &key("cache-clean-interval"))?;
    }
    let backing = match opts.remove(&key("backing")) {
        Some(Value::Null) => Backing::None,
        Some(Value::Str(s)) if s.is_empty() => Backing::None,
        Some(Value::Str(s)) => {
            return Err(format!("Could not open backing file: Cannot find device='{s}' nor node-name='{s}'"))
        }
        // raw has no backing file: its backing.* are left over below.
        None if format != Some(Format::Raw) && opts.keys().any(|k| k.starts_with(&key("backing."))) => {
            let inner = node(opts, &key("backing.")).map_err(|e| format!("Could not open backing file: {e}"))?;
            Backing::Image { path: inner.filename, format: inner.format, backing: Box::new(inner.backing) }
        }
        None => Backing::Header,
    };
    let name = driver.as_deref().unwrap_or("(probed)");
    leftover(opts, prefix, &format!("Block format '{name}' does not support the option"))?;
    Ok(Node { format, filename, offset, size, backing })
}

/// The file protocol's options that change nothing here, checked as qemu checks them.
fn protocol_options(opts: &mut Options, prefix: &str) -> Result<(), String> {
    take_choice(opts, &format!("{prefix}aio"), &["threads", "native", "io_uring"])?;
    take_choice(opts, &format!("{prefix}locking"), &["on", "off", "auto"])?;
    Ok(())
}

/// Fails on the first option left under `prefix`: nobody took it.
fn leftover(opts: &Options, prefix: &str, what: &str) -> Result<(), String> {
    match opts.keys().find(|k| k.starts_with(prefix)) {
        Some(k) => Err(format!("{what} '{}'", &k[prefix.len()..])),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_nbd_forms() {
        let o = parse("driver=raw,file.driver=file,file.filename=/d/disk,,1.img,offset=1M,size=512k").unwrap();
        assert_eq!(o.node.format, Some(Format::Raw));
        assert_eq!(o.node.filename, PathBuf::from("/d/disk,1.img"));
        assert_eq!((o.node.offset, o.node.size), (1 << 20, Some(512 << 10)));
        let o = parse("driver=qcow2,file.filename=a.qcow2,read-only=on,cache.direct=on").unwrap();
        assert_eq!((o.node.format, o.readonly, o.direct), (Some(Format::Qcow2), true, Some(true)));
        assert_eq!(o.node.backing, Backing::Header);
        let o = parse("driver=file,filename=x.raw").unwrap();
        assert_eq!((o.node.format, o.node.filename), (Some(Format::Raw), PathBuf::from("x.raw")));
        let o = parse("file.filename=x").unwrap();
        assert_eq!(o.node.format, None);
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1Q"), None);
    }

    #[test]
    fn backing_chains() {
        let o = parse("driver=qcow2,file.filename=top,backing=").unwrap();
        assert_eq!(o.node.backing, Backing::None);
        let o = parse(
            "driver=qcow2,file.driver=file,file.filename=top,backing.driver=qcow2,backing.file.filename=mid,\
             backing.backing.driver=raw,backing.backing.file.filename=base",
        )
        .unwrap();
        let base =
            Backing::Image { path: "base".into(), format: Some(Format::Raw), backing: Box::new(Backing::Header) };
        assert_eq!(
            o.node.backing,
            Backing::Image { path: "mid".into(), format: Some(Format::Qcow2), backing: Box::new(base) }
        );
        let e = parse("driver=qcow2,file.filename=top,backing.file.filename=b,backing.bogus=1").unwrap_err();
        assert!(e.ends_with("Could not open backing file: Block format '(probed)' does not support the option 'bogus'"));
        let o =
            parse_json(r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"t"},"backing":null}"#).unwrap();
        assert_eq!(o.node.backing, Backing::None);
    }

    #[test]
    fn json() {
        let o = parse_json(r#"json:{"driver":"raw","file":{"filename":"w"},"offset":"1M","size":1048576}"#).unwrap();
        assert_eq!((o.node.offset, o.node.size), (1 << 20, Some(1 << 20)));
        let o = parse_json(r#"json:{"driver":"raw","file.filename":"w","read-only":true}"#).unwrap();
        assert!(o.readonly);
        assert!(parse_json("json:[1]").unwrap_err().ends_with("Invalid JSON object given"));
        assert!(parse_json("json:{").unwrap_err().contains("invalid JSON"));
        assert!(is_json("json:{}") && !is_json("disk.json"));
    }

    #[test]
    fn refused_as_qemu_refuses() {
        let e = |s: &str| parse(s).unwrap_err();
        assert!(e("driver=vmdk,file.filename=x").contains("Unknown driver 'vmdk'"));
        assert!(e("driver=raw").ends_with("A block device must be specified for \"file\""));
        assert!(e("filename=x").ends_with("Must specify either driver or file"));
        assert!(e("x.raw").ends_with("Cannot find device='x.raw' nor node-name='x.raw'"));
        assert!(e("driver=qcow2,file.filename=x,offset=1").ends_with("'qcow2' does not support the option 'offset'"));
        assert!(e("file.driver=nbd,file.filename=x").contains("file.driver=nbd"));
        assert!(e("driver=raw,file.filename=x,bogus=1").ends_with("'raw' does not support the option 'bogus'"));
        assert!(e("driver=raw,file.filename=x,foo").ends_with("'raw' does not support the option 'foo'"));
        assert!(e("driver=raw,file.filename=x,file.bogus=1").ends_with("doesn't support the option 'bogus'"));
        assert!(e("driver=file,filename=x,offset=1").ends_with("doesn't support the option 'offset'"));
        assert!(e("driver=raw,file.filename=x,size=1000").ends_with("Specified size is not multiple of 512"));
        assert!(e("driver=raw,file.filename=x,offset=-1").contains("out of range for parameter 'offset'"));
        assert!(e("driver=raw,file.filename=x,offset=1x").contains("Parameter 'offset' expects"));
        assert!(e("driver=raw,file.filename=x,read-only=maybe").contains("'read-only' expects 'on' or 'off'"));
        assert!(e("driver=raw,file.filename=x,force-share=on").contains("only be used with read-only"));
        assert!(e("driver=raw,file.filename=x,file.aio=bad").contains("invalid parameter value: bad"));
        assert!(e("driver=raw,file.filename=x,discard=bad").contains("Invalid discard option"));
        assert!(e("driver=qcow2,file.filename=x,backing=n").contains("Cannot find device='n'"));
        assert!(e("driver=raw,file.filename=x,backing.driver=raw").ends_with("option 'backing.driver'"));
        assert!(e("driver=raw,bogus=1").starts_with("--image-opts 'driver=raw,bogus=1': "));
    }
}
