//! The `floppy` plugin: a read-only disk holding a FAT32 file system made from a host directory
//! on the fly (nbdkit's nbdkit-floppy-plugin(1)): one MBR partition at 1 MiB, the directory
//! tree with long file names, and the files' data read from the host files when a client reads
//! it, never copied. The file system itself is laid out by `fat32`; this file holds the
//! parameters, the partition around it and the handle.

use std::path::PathBuf;
use std::sync::Arc;

use nbdforge_api::{
    parse_size, realpath, unknown_parameter, Capabilities, Error, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin,
    Registration, Result, Support,
};

use crate::fat32::{read_host_file, Fat32, HostFile, Tree};
use crate::virtual_disk::{boot_signature, mbr_entry, Content, Regions, SECTOR_SIZE};

/// The partition starts at 1 MiB, as nbdkit's does.
const PARTITION_START: u64 = 2048;
/// MBR type byte: FAT32 with LBA addressing.
const FAT32_LBA_ID: u8 = 0x0c;
/// Characters a volume label may not hold, besides lower ASCII controls and non-ASCII.
const LABEL_FORBIDDEN: &str = "\"*+,./:;<=>?[\\]|";

/// The `floppy` plugin. Configure with `dir=` and optionally `label=`, `size=`.
#[derive(Debug)]
pub struct FloppyPlugin {
    dir: Option<(String, PathBuf)>,
    label: String,
    size: Option<(String, u64)>,
    disk: Arc<Disk>,
}

impl Default for FloppyPlugin {
    fn default() -> Self {
        FloppyPlugin { dir: None, label: "NBDKITFLOPY".into(), size: None, disk: Arc::default() }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("floppy", "a FAT32 disk made from a directory, read-only")
        .help(
            "[dir=]<DIRECTORY>  (required) The directory to serve.\n\
             label=<LABEL>               The volume label (up to 11 ASCII characters).\n\
             size=<SIZE>                 The size of the whole disk (default: just enough).",
        )
        .magic("dir");
    Registration::plugin(info, FloppyPlugin::default)
}

impl Layer for FloppyPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "dir" if self.dir.is_some() => {
                return Err(Error::invalid(format!("{key}={value}: dir= may be given only once")))
            }
            "dir" => {
                let path = realpath(key, value)?;
                if !path.is_dir() {
                    return Err(Error::invalid(format!("{key}={value}: not a directory")));
                }
                self.dir = Some((value.to_string(), path));
            }
            "label" => {
                let bad = value.chars().find(|&c| !(' '..='~').contains(&c) || LABEL_FORBIDDEN.contains(c));
                if value.len() > 11 || bad.is_some() {
                    return Err(Error::invalid(format!(
                        "{key}={value}: a label is up to 11 ASCII letters, digits, spaces and !#$%&'()-@^_`{{}}~"
                    )));
                }
                self.label = value.to_string();
            }
            "size" => self.size = Some((value.to_string(), parse_size(key, value)?)),
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.dir.is_none() {
            return Err(Error::invalid("the dir=<DIRECTORY> parameter is required"));
        }
        Ok(())
    }
}

impl Plugin for FloppyPlugin {
    /// Scans the directory and lays out the disk, once: later changes to the directory are not
    /// seen, and files must keep their size.
    fn get_ready(&mut self) -> Result<()> {
        let (given, path) = self.dir.as_ref().expect("config_complete checked dir=");
        let tree = Tree::scan(path).map_err(|e| Error::new(e.errno, format!("dir={given}: {}", e.message)))?;
        let fs_sectors = match &self.size {
            None => None,
            Some((value, size)) => {
                Some((size / SECTOR_SIZE).checked_sub(PARTITION_START).filter(|&s| s > 0).ok_or_else(|| {
                    Error::invalid(format!("size={value}: smaller than the 1 MiB before the partition"))
                })?)
            }
        };
        let fat = Fat32::build(&tree, &self.label, fs_sectors).map_err(|e| match &self.size {
            Some((value, _)) => Error::new(e.errno, format!("size={value}: {}", e.message)),
            None => Error::new(e.errno, format!("dir={given}: {}", e.message)),
        })?;

        let mut regions = Regions::default();
        let mbr = regions.push(SECTOR_SIZE, Content::Bytes(vec![0; SECTOR_SIZE as usize]));
        regions.pad_to(PARTITION_START * SECTOR_SIZE);
        let fs_bytes = fat.regions.size();
        regions.append(fat.regions.clone());
        if let Some((_, size)) = self.size {
            regions.push(size - regions.size(), Content::Zero);
        }
        let sectors = u32::try_from(fs_bytes / SECTOR_SIZE)
            .map_err(|_| Error::invalid(format!("dir={given}: too large for an MBR partition (2 TiB)")))?;
        let table = regions.bytes_mut(mbr);
        mbr_entry(&mut table[0x1be..], false, FAT32_LBA_ID, PARTITION_START as u32, sectors);
        boot_signature(table);
        self.disk = Arc::new(Disk { regions, fat, files: tree.files });
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(FloppyHandle { disk: self.disk.clone() }))
    }
}

/// The disk, shared by every connection: its layout, the FAT to compute, the host files.
#[derive(Debug)]
struct Disk {
    regions: Regions,
    fat: Fat32,
    files: Vec<HostFile>,
}

impl Default for Disk {
    fn default() -> Self {
        Disk { regions: Regions::default(), fat: Fat32::empty(), files: Vec::new() }
    }
}

struct FloppyHandle {
    disk: Arc<Disk>,
}

impl Handle for FloppyHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.regions.size())
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { multi_conn: true, cache: Support::Emulate, ..Capabilities::READ_ONLY })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let disk = &self.disk;
        disk.regions.read(buf, offset, |n, out, at| match n {
            0 => {
                disk.fat.read_fat(out, at);
                Ok(())
            }
            n => read_host_file(&disk.files[n - 1], out, at)
                .map_err(|e| Error::new(e.errno, format!("floppy: {}", e.message))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_name_the_value() {
        let mut p = FloppyPlugin::default();
        for (key, value) in [
            ("label", "TWELVE CHARS"),
            ("label", "a/b"),
            ("label", "ÄÖ"),
            ("size", "1Q"),
            ("dir", "/nonexistent/dir"),
            ("dir", "/etc/passwd"),
        ] {
            let e = p.config(key, value).unwrap_err();
            assert!(e.message.contains(&format!("{key}={value}")), "{key}={value}: {}", e.message);
        }
        assert!(p.config_complete().unwrap_err().message.contains("dir="));
        p.config("label", "MY DISK").unwrap();
        p.config("label", "").unwrap();
    }
}
