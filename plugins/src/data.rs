//! The `data` plugin: a RAM disk whose initial contents are given on the command line, as raw
//! text (`raw=`), base64 (`base64=`) or in a small language of bytes, strings, offsets, groups and
//! repeats (`data=`, see the `data_format` module). Writes are kept until the server exits, as in
//! the memory plugin, whose storage (and `allocator=` parameter) it shares.

use std::sync::Arc;

use base64::Engine as _;
use nbdforge_api::{debug, parse_size, Error, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result};

use crate::data_format::{self, Image};
use crate::memory::{parse_allocator, ram_disk, ram_disk_handle, Allocator, Storage};

/// Which parameter gave the contents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Raw(String),
    Base64(String),
    Data(String),
}

/// The `data` plugin. Configure with exactly one of `raw=`, `base64=` or `data=`, and
/// optionally `size=` and `allocator=`; any other parameter is a variable for `data=`.
pub struct DataPlugin {
    source: Option<Source>,
    size: Option<u64>,
    allocator: Allocator,
    /// Parameters that `$NAME` in `data=` refers to, in command line order.
    variables: Vec<(String, String)>,
    /// Made by `get_ready`: the disk and its final size.
    disk: Option<(Arc<Storage>, u64)>,
    /// `-D data.AST=1`: log the parsed `data=` text.
    debug_ast: bool,
}

impl Default for DataPlugin {
    fn default() -> Self {
        DataPlugin {
            source: None,
            size: None,
            allocator: Allocator::Sparse,
            variables: Vec::new(),
            disk: None,
            debug_ast: false,
        }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("data", "a RAM disk initialized with data from the command line")
        .help(
            "[data=]<DATA>|raw=<TEXT>|base64=<BASE64>  (required) Contents of the disk.\n\
             size=<SIZE>             Size of the disk (default: the size of the contents).\n\
             allocator=sparse|malloc[,mlock=true]    How data is stored (default: sparse).\n\
             NAME=<DATA>             A variable that data= refers to as $NAME.",
        )
        .magic("data");
    Registration::plugin(info, DataPlugin::default)
}

/// The value of a parameter as an error message shows it: short values whole, long ones cut.
fn shown(value: &str) -> String {
    let one_line = value.replace('\n', " ");
    if one_line.chars().count() <= 40 {
        one_line
    } else {
        format!("{}...", one_line.chars().take(37).collect::<String>())
    }
}

impl Layer for DataPlugin {
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        match flag {
            "AST" => self.debug_ast = value != 0,
            _ => return false,
        }
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let source = match key {
            "size" => {
                self.size = Some(parse_size(key, value)?);
                return Ok(true);
            }
            "allocator" => {
                self.allocator = parse_allocator(value)?;
                return Ok(true);
            }
            "raw" => Source::Raw(value.to_string()),
            "base64" => Source::Base64(value.to_string()),
            "data" => Source::Data(value.to_string()),
            _ => {
                self.variables.push((key.to_string(), value.to_string()));
                return Ok(true);
            }
        };
        if self.source.is_some() {
            return Err(Error::invalid(format!(
                "{key}={}: raw|base64|data parameter must be specified exactly once",
                shown(value)
            )));
        }
        self.source = Some(source);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        match &self.source {
            None => Err(Error::invalid("raw|base64|data parameter was not specified")),
            Some(Source::Data(_)) => Ok(()),
            Some(_) if !self.variables.is_empty() => Err(Error::invalid(format!(
                "{}={}: extra parameters passed and not using data='...'",
                self.variables[0].0,
                shown(&self.variables[0].1)
            ))),
            Some(_) => Ok(()),
        }
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("data_base64".into(), "yes".into()), ("mlock".into(), "yes".into()), ("zstd".into(), "no".into())]
    }
}

impl DataPlugin {
    /// The contents the parameters describe, and their size. `data=` runs here, so its files
    /// and scripts are read before the server listens.
    fn contents(&self) -> Result<(Image, u64)> {
        match &self.source {
            Some(Source::Raw(text)) => Ok((Image::from_bytes(text.as_bytes().to_vec()), text.len() as u64)),
            Some(Source::Base64(text)) => {
                // Line breaks and spaces, as base64 tools write them, are not part of the data.
                let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|e| Error::invalid(format!("base64={}: {e}", shown(text))))?;
                let size = bytes.len() as u64;
                Ok((Image::from_bytes(bytes), size))
            }
            Some(Source::Data(text)) => {
                let lookup = |name: &str| {
                    let given = self.variables.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    given.or_else(|| std::env::var(name).ok())
                };
                let fail = |e: Error| Error::new(e.errno, format!("data={}: {}", shown(text), e.message));
                let expr = data_format::parse(text, &lookup).map_err(fail)?;
                if self.debug_ast {
                    debug!("data= parsed as {expr:#?}");
                }
                let mut image = Image::default();
                let size = data_format::evaluate(&expr, &mut image).map_err(fail)?;
                Ok((image, size))
            }
            None => Err(Error::invalid("raw|base64|data parameter was not specified")),
        }
    }
}

impl Plugin for DataPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let (image, implied) = self.contents()?;
        let size = self.size.unwrap_or(implied);
        let storage = ram_disk(self.allocator, size)?;
        let writer = ram_disk_handle(storage.clone(), size);
        for (offset, bytes) in image.chunks() {
            // What lies past size= is cut off.
            let keep = size.saturating_sub(offset).min(bytes.len() as u64) as usize;
            if keep > 0 {
                writer.pwrite(&bytes[..keep], offset, Flags::NONE)?;
            }
        }
        self.disk = Some((storage, size));
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let (storage, size) = self.disk.clone().ok_or_else(|| Error::invalid("opened before get_ready"))?;
        Ok(ram_disk_handle(storage, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Capabilities;

    fn configured(params: &[(&str, &str)]) -> Result<DataPlugin> {
        let mut plugin = DataPlugin::default();
        for (k, v) in params {
            plugin.config(k, v)?;
        }
        plugin.config_complete()?;
        plugin.get_ready()?;
        Ok(plugin)
    }

    fn contents(params: &[(&str, &str)]) -> Vec<u8> {
        let plugin = configured(params).unwrap();
        let h = plugin.open(&OpenArgs::local("", false)).unwrap();
        let mut buf = vec![0u8; h.get_size().unwrap() as usize];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        buf
    }

    #[test]
    fn raw_base64_and_data() {
        assert_eq!(contents(&[("raw", "Hello, world!")]), b"Hello, world!");
        assert_eq!(contents(&[("base64", "MTIz")]), b"123");
        assert_eq!(contents(&[("data", "( 0x55 0xAA )*2")]), [0x55, 0xaa, 0x55, 0xaa]);
        assert_eq!(contents(&[("data", "")]), b"");
    }

    #[test]
    fn size_cuts_or_extends() {
        assert_eq!(contents(&[("data", r#"( "Hello" )*2000"#), ("size", "8")]), b"HelloHel");
        let padded = contents(&[("base64", "MTIz"), ("size", "1K")]);
        assert_eq!(padded.len(), 1024);
        assert_eq!(&padded[..4], b"123\0");
        assert_eq!(contents(&[("raw", "abc"), ("allocator", "malloc"), ("size", "5")]), b"abc\0\0");
    }

    #[test]
    fn variables_come_from_parameters() {
        assert_eq!(contents(&[("data", "$pattern*2"), ("pattern", "0x55 0xAA")]), [0x55, 0xaa, 0x55, 0xaa]);
        // A variable is text in the same language, not bytes: a path is not valid data.
        assert!(configured(&[("data", "$dir"), ("dir", "/tmp")]).err().unwrap().message.contains("in $dir"));
    }

    #[test]
    fn a_ram_disk_like_memory() {
        let plugin = configured(&[("data", "1 2 3"), ("size", "1M")]).unwrap();
        let (a, b) =
            (plugin.open(&OpenArgs::local("", false)).unwrap(), plugin.open(&OpenArgs::local("", false)).unwrap());
        assert_eq!(a.capabilities().unwrap(), Capabilities::ALL);
        a.pwrite(b"xyz", 1, Flags::NONE).unwrap();
        let mut back = [0u8; 4];
        b.pread(&mut back, 0, Flags::NONE).unwrap();
        assert_eq!(&back, b"\x01xyz");
    }

    #[test]
    fn parameter_errors() {
        let err = |params: &[(&str, &str)]| configured(params).err().unwrap().message;
        assert_eq!(err(&[]), "raw|base64|data parameter was not specified");
        assert!(err(&[("raw", "a"), ("data", "1")]).starts_with("data=1: raw|base64|data parameter must be specified"));
        assert!(err(&[("raw", "a"), ("colour", "blue")]).starts_with("colour=blue: extra parameters"));
        assert!(err(&[("base64", "!!")]).starts_with("base64=!!:"));
        assert!(err(&[("data", "1 2 x")]).starts_with("data=1 2 x: parsing error (at offset 4, near 'x')"));
        assert!(err(&[("data", "$missing")]).contains("$missing: variable not found"));
        assert!(err(&[("allocator", "zstd"), ("raw", "a")]).starts_with("allocator=zstd"));
    }
}
