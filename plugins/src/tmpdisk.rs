//! The `tmpdisk` plugin: every connection gets a disk of its own, made when it connects and
//! deleted when it leaves: an empty file system (`size=`, `type=`, `label=`), whatever a shell
//! `command=` makes, or a copy of a given image (`disk=`).
//!
//! The disk is made in a private temporary directory; once the connection has it open, the file
//! and the directory are removed, so nothing is left behind however the connection ends.
//! Parameters that are not the plugin's own become shell variables of the command, with `$disk`
//! (the file to make) and `$size` (in bytes), as in nbdkit.

use std::path::PathBuf;
use std::process::Command;

use nbdforge_api::{realpath, Error, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result};

use crate::fs_image::{run, DiskCommand, ImageDir, ImageHandle, Sharing};

/// The `tmpdisk` plugin. Configure with `size=`, and `type=`/`label=`, `command=` or `disk=`.
#[derive(Debug, Default)]
pub struct TmpdiskPlugin {
    /// `size=`, `command=` and the command's variables.
    making: DiskCommand,
    /// `disk=`: an image each connection gets a copy of.
    template: Option<PathBuf>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("tmpdisk", "a fresh temporary file system for each client")
        .help(
            "[size=]<SIZE>       (required) The size of each disk (only a hint to command=).\n\
             type=ext4|xfs|vfat|...        The file system type (default ext4).\n\
             label=<LABEL>                 The file system's label.\n\
             command=<COMMAND>             Shell command that makes \"$disk\" instead of mkfs.\n\
             disk=<IMAGE>                  Give each client a copy of IMAGE instead.\n\
             <VAR>=<VALUE>                 Other parameters are variables of the command.",
        )
        .magic("size");
    Registration::plugin(info, TmpdiskPlugin::default)
}

impl Layer for TmpdiskPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "disk" => self.template = Some(realpath(key, value)?),
            _ => self.making.config(key, value)?,
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        match (&self.template, &self.making.command, self.making.size) {
            (Some(template), Some(_), _) => Err(Error::invalid(format!(
                "disk={} and command= both say how to make the disk: give one",
                template.display()
            ))),
            (Some(template), None, _) if !template.is_file() => {
                Err(Error::invalid(format!("disk={}: not a regular file", template.display())))
            }
            (None, _, None) => Err(Error::invalid("size=<SIZE> is required")),
            _ => Ok(()),
        }
    }
}

impl TmpdiskPlugin {
    /// Makes a connection's disk at `disk`.
    fn make(&self, disk: &std::path::Path) -> Result<()> {
        let Some(template) = &self.template else { return self.making.make("tmpdisk", disk) };
        let mut cp = Command::new("cp");
        cp.args(["--reflink=auto", "--sparse=always", "--"]).arg(template).arg(disk);
        run(&format!("tmpdisk: disk={}: copying", template.display()), &mut cp, None, None).map(drop)
    }
}

impl Plugin for TmpdiskPlugin {
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let image = ImageDir::new("tmpdisk")?;
        let disk = image.disk();
        let name = format!("tmpdisk: disk of connection {}", args.conn.id());
        // Each client has its own disk, gone when it leaves: nothing to flush, no multi-conn.
        let opened =
            self.make(&disk).and_then(|()| ImageHandle::open(&disk, &name, args.readonly, Sharing::Throwaway, None));
        let handle = opened?;
        // The open handle keeps the data; the names go now.
        drop(image);
        Ok(Box::new(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Flags;

    #[test]
    fn parameters() {
        let mut p = TmpdiskPlugin::default();
        assert!(p.config_complete().unwrap_err().message.contains("size="));
        assert!(p.config("size", "1Q").unwrap_err().message.contains("1Q"));
        assert!(p.config("a-b", "x").unwrap_err().message.contains("a-b=x"));
        assert!(p.config("disk", "/nonexistent").unwrap_err().message.contains("disk=/nonexistent"));
        p.config("size", "1M").unwrap();
        p.config("os", "fedora").unwrap();
        p.config_complete().unwrap();
        p.config("disk", "/etc/hostname").unwrap();
        p.config("command", "true").unwrap();
        assert!(p.config_complete().is_err());
    }

    #[test]
    fn each_connection_has_its_own_disk() {
        let mut p = TmpdiskPlugin::default();
        p.config("size", "64K").unwrap();
        p.config("fill", "x").unwrap();
        p.config(
            "command",
            r#"truncate -s "$size" "$disk" && printf %s "$fill" | dd of="$disk" conv=notrunc 2>/dev/null"#,
        )
        .unwrap();
        p.config_complete().unwrap();
        let a = p.open(&OpenArgs::local("", false)).unwrap();
        let b = p.open(&OpenArgs::local("", false)).unwrap();
        assert_eq!(a.get_size().unwrap(), 65536);
        a.pwrite(b"A", 1, Flags::NONE).unwrap();
        let mut buf = [0u8; 2];
        b.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"x\0");
        a.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"xA");
        assert!(!a.capabilities().unwrap().multi_conn);
    }

    #[test]
    fn a_failing_command_fails_the_open() {
        let mut p = TmpdiskPlugin::default();
        p.config("size", "1M").unwrap();
        p.config("command", "echo no space >&2; exit 4").unwrap();
        let err = p.open(&OpenArgs::local("", false)).err().unwrap();
        assert_eq!(err.message, "tmpdisk: command: exited with status 4: no space");
    }
}
