//! The `ondemand` plugin: one file system per export name, made the first time a client asks for
//! it and kept in `dir=` between connections and server restarts. A new export is made by mkfs
//! (`size=`, `type=`, `label=`) or by a shell `command=`, with the same variables as `tmpdisk`.
//!
//! An export is locked while a client uses it (an open file description lock, as nbdkit takes, so
//! two servers on one directory also keep out of each other's way): a second client is refused,
//! or waits with `wait=true`; `share=true` lets clients use an export together (a shared lock,
//! still refused while a client without `share` holds it). Read-only clients share too.
//!
//! Export names are file names in `dir=`: at most 255 bytes, without `.`, `/` or `:` (so the
//! directory's dot files are never exports); `""` is the file `default`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use nbdforge_api::{parse_bool, Error, Export, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result};

use crate::fs_image::{directory, DiskCommand, ImageHandle, Sharing};
use crate::sys::io_error;

/// The `ondemand` plugin. Configure with `dir=` and `size=`, and `type=`/`label=` or `command=`.
#[derive(Debug, Default)]
pub struct OndemandPlugin {
    dir: Option<PathBuf>,
    /// `size=`, `command=` and the command's variables.
    making: DiskCommand,
    wait: bool,
    share: bool,
    /// Held while an export is made, so two clients asking for a new name at once do not both
    /// format it.
    creating: Mutex<()>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ondemand", "a persistent file system for each export name, made on demand")
        .help(
            "dir=<EXPORTSDIR>    (required) Where the file systems are kept.\n\
             [size=]<SIZE>       (required) The size of each new file system (a hint to command=).\n\
             type=ext4|xfs|vfat|...        The file system type (default ext4).\n\
             label=<LABEL>                 The file system's label.\n\
             command=<COMMAND>             Shell command that makes \"$disk\" instead of mkfs.\n\
             wait=true                     A client waits for an export in use instead of being refused.\n\
             share=true                    Clients may use one export at the same time.\n\
             <VAR>=<VALUE>                 Other parameters are variables of the command.",
        )
        .magic("size");
    Registration::plugin(info, OndemandPlugin::default)
}

/// The default export's name, and the file it is kept in.
const DEFAULT: &str = "default";

/// The file an export name is kept in, or why the name is refused.
fn file_name(export: &str) -> Result<&str> {
    let name = if export.is_empty() { DEFAULT } else { export };
    if name.len() > 255 || name.contains(['.', '/', ':']) {
        return Err(Error::invalid(format!(
            "ondemand: export name '{}' refused: names are at most 255 bytes, without '.', '/' or ':'",
            name.escape_debug()
        )));
    }
    Ok(name)
}

impl OndemandPlugin {
    fn dir(&self) -> Result<&PathBuf> {
        self.dir.as_ref().ok_or_else(|| Error::invalid("ondemand: used before config_complete"))
    }

    /// Makes the export's file system at `disk` unless it is there already.
    fn make_if_missing(&self, disk: &std::path::Path, name: &str) -> Result<()> {
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if disk.exists() {
            return Ok(());
        }
        let made = self.making.make(&format!("ondemand: export '{name}'"), disk);
        if made.is_err() {
            // A half-made file system would be served next time as if it were whole.
            let _ = std::fs::remove_file(disk);
        }
        made
    }

    /// Takes the export's lock on a descriptor of its own, kept for the connection's life.
    fn lock(&self, disk: &std::path::Path, name: &str, readonly: bool) -> Result<std::fs::File> {
        let shared = readonly || self.share;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!shared)
            .open(disk)
            .map_err(|e| io_error(format!("ondemand: {}", disk.display()), &e))?;
        let lock = libc::flock {
            l_type: (if shared { libc::F_RDLCK } else { libc::F_WRLCK }) as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        use nix::fcntl::{fcntl, FcntlArg};
        let arg = if self.wait { FcntlArg::F_OFD_SETLKW(&lock) } else { FcntlArg::F_OFD_SETLK(&lock) };
        match fcntl(file.as_raw_fd(), arg) {
            Ok(_) => Ok(file),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Err(Error::new(
                libc::EBUSY,
                format!("ondemand: export '{name}': the file system is locked by another client"),
            )),
            Err(e) => Err(Error::new(e as i32, format!("ondemand: {}: locking: {}", disk.display(), e.desc()))),
        }
    }
}

impl OndemandPlugin {
    fn open_export(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let name = file_name(&args.export_name)?;
        let disk = self.dir()?.join(name);
        self.make_if_missing(&disk, name)?;
        let lock = self.lock(&disk, name, args.readonly)?;
        let label = format!("ondemand: export '{name}'");
        // Clients of one export are not told that they see each other's writes.
        Ok(Box::new(ImageHandle::open(&disk, &label, args.readonly, Sharing::Kept, Some(lock))?))
    }
}

impl Layer for OndemandPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "dir" => self.dir = Some(directory(key, value)?),
            "wait" => self.wait = parse_bool(key, value)?,
            "share" => self.share = parse_bool(key, value)?,
            // $disk is the plugin's to set, from the export name.
            "disk" => {
                return Err(Error::invalid(format!("{key}={value}: 'disk' is set by the plugin, not a parameter")))
            }
            _ => self.making.config(key, value)?,
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        match (&self.dir, self.making.size) {
            (Some(_), Some(_)) => Ok(()),
            (None, _) => Err(Error::invalid("dir=<EXPORTSDIR> is required")),
            (_, None) => Err(Error::invalid("size=<SIZE> is required")),
        }
    }
}

impl Plugin for OndemandPlugin {
    fn get_ready(&mut self) -> Result<()> {
        let dir = self.dir()?;
        std::fs::read_dir(dir).map(drop).map_err(|e| io_error(format!("dir={}", dir.display()), &e))
    }

    /// The default export first, then every file in the directory that an export name could
    /// name, in the directory's order.
    fn list_exports(&self, _readonly: bool, _tls: bool) -> Result<Vec<Export>> {
        let dir = self.dir()?;
        let fail = |e: std::io::Error| io_error(format!("ondemand: dir={}", dir.display()), &e);
        let mut exports = vec![Export::named(DEFAULT)];
        for entry in std::fs::read_dir(dir).map_err(fail)? {
            let Ok(name) = entry.map_err(fail)?.file_name().into_string() else { continue };
            if name != DEFAULT && file_name(&name).is_ok() {
                exports.push(Export::named(name));
            }
        }
        Ok(exports)
    }

    /// `""` is the export kept in the file `default`, and is listed under that name.
    fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
        Ok(DEFAULT.to_string())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        self.open_export(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Flags;

    fn plugin(dir: &std::path::Path, extra: &[(&str, &str)]) -> OndemandPlugin {
        let mut p = OndemandPlugin::default();
        p.config("dir", dir.to_str().unwrap()).unwrap();
        p.config("size", "64K").unwrap();
        p.config("command", r#"truncate -s "$size" "$disk""#).unwrap();
        for (k, v) in extra {
            p.config(k, v).unwrap();
        }
        p.config_complete().unwrap();
        p.get_ready().unwrap();
        p
    }

    #[test]
    fn export_names() {
        assert_eq!(file_name("").unwrap(), "default");
        assert_eq!(file_name("a-b_c").unwrap(), "a-b_c");
        for bad in ["a.b", "../x", "a/b", "a:b", &"x".repeat(256)] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exports_persist_and_lock() {
        let dir = std::env::temp_dir().join(format!("nbdforge-ondemand-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = plugin(&dir, &[]);
        let a = p.open(&OpenArgs::local("a", false)).unwrap();
        a.pwrite(b"kept", 0, Flags::NONE).unwrap();
        let err = p.open(&OpenArgs::local("a", false)).err().unwrap();
        assert_eq!(err.errno, libc::EBUSY, "{err}");
        assert!(p.open(&OpenArgs::local("a", true)).is_err(), "a reader waits for the writer too");
        let b = p.open(&OpenArgs::local("b", false)).unwrap();
        drop((a, b));
        let a = p.open(&OpenArgs::local("a", false)).unwrap();
        let mut buf = [0u8; 4];
        a.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"kept");
        drop(a);
        let names: Vec<String> = p.list_exports(false, false).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names[0], "default");
        assert_eq!(names.len(), 3);
        let shared = plugin(&dir, &[("share", "true")]);
        let one = shared.open(&OpenArgs::local("a", false)).unwrap();
        let two = shared.open(&OpenArgs::local("a", false)).unwrap();
        assert!(p.open(&OpenArgs::local("a", false)).is_err(), "shared clients keep out a writer");
        drop((one, two));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
