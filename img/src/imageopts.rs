//! `--image-opts`: FILE given as qemu block options instead of a file name, in the forms qemu-nbd
//! users write: `driver=raw|qcow2,file.driver=file,file.filename=PATH` (or `file=PATH`), with the
//! raw driver's `offset=` and `size=` (a window of the file), and `read-only=on`. Other qemu
//! options are refused by name rather than silently ignored.

use std::path::PathBuf;

use crate::image::Format;

/// What `--image-opts` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOpts {
    /// `driver=`; probed when absent, as without `-f`.
    pub format: Option<Format>,
    /// `file.filename=` or `file=`.
    pub filename: PathBuf,
    /// raw's `offset=`: the disk starts this far into the file.
    pub offset: u64,
    /// raw's `size=`: the disk is this long.
    pub size: Option<u64>,
    /// `read-only=on`.
    pub readonly: bool,
}

/// A qemu size: bytes, or a number with a suffix `k`, `M`, `G`, `T`, `P`, `E` (powers of 1024).
pub fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("--image-opts: {key}={v}: expected 'on' or 'off'")),
    }
}

/// Parses FILE under `--image-opts`. `,,` is a literal comma.
pub fn parse(value: &str) -> Result<ImageOpts, String> {
    let mut o = ImageOpts { format: None, filename: PathBuf::new(), offset: 0, size: None, readonly: false };
    let mut filename = None;
    let mut raw_window = false;
    for prop in crate::objects::split_properties(value) {
        let (k, v) = prop.split_once('=').ok_or_else(|| format!("--image-opts: '{prop}' is not key=value"))?;
        match k {
            "driver" => {
                o.format = Some(Format::parse(v).ok_or_else(|| format!("Unknown driver '{v}' (known: raw, qcow2)"))?)
            }
            "file.driver" if v == "file" => {}
            "file.driver" => return Err(format!("--image-opts: file.driver={v}: only 'file' is supported")),
            "file.filename" | "file" | "filename" => filename = Some(PathBuf::from(v)),
            "offset" => {
                o.offset = parse_size(v).ok_or_else(|| format!("--image-opts: offset={v}: not a size"))?;
                raw_window = true;
            }
            "size" => {
                o.size = Some(parse_size(v).ok_or_else(|| format!("--image-opts: size={v}: not a size"))?);
                raw_window = true;
            }
            "read-only" => o.readonly = on_off(k, v)?,
            // The I/O path is the same whatever these say, as for --aio and file locking.
            "file.aio" | "file.locking" | "aio" | "locking" => {}
            _ => return Err(format!("--image-opts: option '{k}' is not supported")),
        }
    }
    o.filename = filename.ok_or("--image-opts: file.filename= is required")?;
    if raw_window && o.format == Some(Format::Qcow2) {
        return Err("--image-opts: offset= and size= are options of the raw driver, not qcow2".into());
    }
    if raw_window && o.format.is_none() {
        o.format = Some(Format::Raw);
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_nbd_forms() {
        let o = parse("driver=raw,file.driver=file,file.filename=/d/disk,,1.img,offset=1M,size=512k").unwrap();
        assert_eq!(o.format, Some(Format::Raw));
        assert_eq!(o.filename, PathBuf::from("/d/disk,1.img"));
        assert_eq!((o.offset, o.size), (1 << 20, Some(512 << 10)));
        let o = parse("driver=qcow2,file.filename=a.qcow2,read-only=on").unwrap();
        assert_eq!((o.format, o.readonly), (Some(Format::Qcow2), true));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1Q"), None);
    }

    #[test]
    fn refused() {
        assert!(parse("driver=vmdk,file.filename=x").unwrap_err().contains("Unknown driver 'vmdk'"));
        assert_eq!(parse("driver=raw").unwrap_err(), "--image-opts: file.filename= is required");
        assert!(parse("driver=qcow2,file.filename=x,offset=1").unwrap_err().contains("raw driver"));
        assert!(parse("file.driver=nbd,file.filename=x").unwrap_err().contains("file.driver=nbd"));
        assert!(parse("file.filename=x,bogus=1").unwrap_err().contains("'bogus'"));
    }
}
