//! The `linuxdisk` plugin: a disk with one GPT partition holding an ext2, ext3 or ext4 file system
//! made once at start-up from a directory (`dir=`, `label=`, `type=`, `size=`), served read-only
//! to every client, as nbdkit's plugin of that name does.
//!
//! The whole disk is made in one private temporary file: `sfdisk` writes the partition table
//! (the partition 1 MiB in, as nbdkit aligns it, and the backup table in the last 33 sectors),
//! then `mke2fs -d` fills the partition from the directory. Without `size=`, the file system is
//! sized from `du` of the directory, with nbdkit's margins.

use std::path::PathBuf;

use nbdforge_api::{
    parse_choice, parse_size, unknown_parameter, Error, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration,
    Result,
};

use crate::fs_image::{directory, run, ImageDir};

const SECTOR: u64 = 512;
/// Where the partition starts: 2048 sectors in.
const PARTITION_START: u64 = 1 << 20;
/// The backup partition table (32 sectors) and its header (1 sector) at the end of the disk.
const BACKUP_GPT: u64 = 33 * SECTOR;
/// The GPT type of a Linux file system.
const LINUX_FILESYSTEM: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// `size=`: the file system's size, or the free space wanted on top of what the files need.
#[derive(Debug, Clone, Copy)]
enum Size {
    Total(u64),
    Extra(u64),
}

/// The `linuxdisk` plugin. Configure with `dir=`, and optionally `label=`, `type=`, `size=`.
#[derive(Debug)]
pub struct LinuxdiskPlugin {
    dir: Option<PathBuf>,
    label: Option<String>,
    fs_type: &'static str,
    size: Option<Size>,
    /// `size=` as given, for messages.
    size_text: Option<String>,
    image: Option<ImageDir>,
}

impl Default for LinuxdiskPlugin {
    fn default() -> Self {
        LinuxdiskPlugin { dir: None, label: None, fs_type: "ext2", size: None, size_text: None, image: None }
    }
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("linuxdisk", "a partitioned disk with an ext2/3/4 file system made from a directory")
        .help(
            "[dir=]<DIRECTORY>   (required) The directory whose files the file system holds.\n\
             label=<LABEL>                 The file system's label.\n\
             type=ext2|ext3|ext4           The file system type (default ext2).\n\
             size=[+]<SIZE>                The file system's size, or with + the free space wanted\n\
             \x20                             (default: just enough for the files).",
        )
        .magic("dir");
    Registration::plugin(info, LinuxdiskPlugin::default)
}

impl LinuxdiskPlugin {
    /// The file system's size in bytes, a whole number of sectors.
    fn filesystem_size(&self, dir: &std::path::Path) -> Result<u64> {
        let size = match self.size {
            Some(Size::Total(size)) if size > 0 => size,
            wanted => {
                // What du says the files take, with a fifth more for the file system's own
                // structures, at least 1 MiB, and room for the journal of ext3 and ext4.
                let mut estimate = (du(dir)? * 6 / 5).max(1 << 20);
                if self.fs_type != "ext2" {
                    estimate += 32 << 20;
                }
                match wanted {
                    Some(Size::Extra(extra)) => estimate.saturating_add(extra),
                    _ => estimate,
                }
            }
        };
        size.checked_next_multiple_of(SECTOR)
            .filter(|s| *s <= nbdforge_api::MAX_SIZE - PARTITION_START - BACKUP_GPT)
            .ok_or_else(|| Error::invalid(format!("size: {size} bytes is too large")))
    }
}

/// The bytes the files under `dir` take, as `du` counts them.
fn du(dir: &std::path::Path) -> Result<u64> {
    let mut command = std::process::Command::new("du");
    command.args(["-c", "-k", "-s", "--"]).arg(dir);
    let out = run("du", &mut command, None, None)?;
    let text = String::from_utf8_lossy(&out);
    let total = text.lines().last().and_then(|line| line.split_whitespace().next());
    total
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| Error::io(format!("du: cannot read its total in '{}'", text.trim())))
}

impl Layer for LinuxdiskPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "dir" => self.dir = Some(directory(key, value)?),
            // ext2/3/4 keep 16 bytes of label; mke2fs would cut a longer one short.
            "label" if value.len() > 16 => {
                return Err(Error::invalid(format!("{key}={value}: longer than the 16 bytes an ext2/3/4 label holds")))
            }
            "label" => self.label = Some(value.to_string()),
            "type" => self.fs_type = parse_choice(key, value, &["ext2", "ext3", "ext4"])?,
            "size" => {
                self.size = Some(match value.strip_prefix('+') {
                    Some(extra) => Size::Extra(parse_size(key, extra)?),
                    None => Size::Total(parse_size(key, value)?),
                });
                self.size_text = Some(value.to_string());
            }
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.dir.is_none() {
            return Err(Error::invalid("you must give dir=<DIRECTORY> (or a bare DIRECTORY)"));
        }
        Ok(())
    }

    fn cleanup(&self) {
        self.image.iter().for_each(ImageDir::remove);
    }
}

impl Plugin for LinuxdiskPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let dir = self.dir.clone().ok_or_else(|| Error::invalid("dir= is required"))?;
        let fs_size = self.filesystem_size(&dir)?;
        let image = ImageDir::new("linuxdisk")?;
        let path = image.disk();
        let file = std::fs::File::create(&path).map_err(|e| Error::from_io(path.display(), &e))?;
        file.set_len(PARTITION_START + fs_size + BACKUP_GPT).map_err(|e| Error::from_io(path.display(), &e))?;
        drop(file);

        let table = format!(
            "label: gpt\nstart={}, size={}, type={LINUX_FILESYSTEM}, attrs=\"LegacyBIOSBootable\"\n",
            PARTITION_START / SECTOR,
            fs_size / SECTOR
        );
        let mut sfdisk = std::process::Command::new("sfdisk");
        sfdisk.args(["--quiet", "--no-reread", "--no-tell-kernel"]).arg(&path);
        run("sfdisk", &mut sfdisk, Some(table.as_bytes()), None)?;

        let mut mke2fs = std::process::Command::new("mke2fs");
        mke2fs.args(["-q", "-F", "-t", self.fs_type]);
        if let Some(label) = &self.label {
            mke2fs.arg("-L").arg(label);
        }
        mke2fs.arg("-E").arg(format!("offset={PARTITION_START}"));
        mke2fs.arg("-d").arg(&dir).arg(&path).arg(format!("{}k", fs_size / 1024));
        // Too small a size= is the usual reason for mke2fs to fail: say which.
        let what = self.size_text.as_ref().map_or_else(|| "mke2fs".to_string(), |v| format!("size={v}: mke2fs"));
        run(&what, &mut mke2fs, None, None)?;
        self.image = Some(image);
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let image = self.image.as_ref().ok_or_else(|| Error::invalid("linuxdisk: used before get_ready"))?;
        image.open_shared("linuxdisk: the disk image")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut p = LinuxdiskPlugin::default();
        assert!(p.config_complete().is_err());
        assert!(p.config("type", "xfs").unwrap_err().message.contains("xfs"));
        assert!(p.config("label", "a-label-of-17-byt").unwrap_err().message.contains("label=a-label-of-17-byt"));
        assert!(p.config("size", "+12Q").unwrap_err().message.contains("12Q"));
        p.config("size", "+1M").unwrap();
        assert!(matches!(p.size, Some(Size::Extra(1048576))));
        p.config("size", "100M").unwrap();
        p.config("type", "ext4").unwrap();
        assert_eq!(p.filesystem_size(std::path::Path::new("/nonexistent")).unwrap(), 100 << 20);
        p.config("dir", "/etc").unwrap();
        p.config_complete().unwrap();
    }

    #[test]
    fn estimates_add_margins() {
        let dir = std::env::temp_dir().join(format!("nbdforge-linuxdisk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = LinuxdiskPlugin::default();
        assert_eq!(p.filesystem_size(&dir).unwrap(), 1 << 20, "the minimum");
        p.fs_type = "ext3";
        assert_eq!(p.filesystem_size(&dir).unwrap(), 33 << 20, "the journal");
        p.size = Some(Size::Extra(1000));
        assert_eq!(p.filesystem_size(&dir).unwrap(), (33 << 20) + 1024, "rounded to sectors");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
