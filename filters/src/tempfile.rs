//! Temporary files for the filters that keep data of their own (`cow`'s overlay, `cache`'s
//! blocks): created in `$TMPDIR` (by default `/var/tmp`, which survives reboots less often than it
//! is large) and unlinked at once, so that the space comes back when the server exits, however it
//! exits, and nothing is left behind for others to read.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use nbdforge_api::{Error, Result};

/// A new, empty, already unlinked file for reading and writing; `what` names it in errors.
pub fn unlinked(what: &str) -> Result<File> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let name = format!("nbdforge-{what}-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::from_io(format!("creating the {what} file {}", path.display()), &e))?;
    std::fs::remove_file(&path).map_err(|e| Error::from_io(format!("unlinking {}", path.display()), &e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_file_works_and_has_no_name() {
        let f = unlinked("test").unwrap();
        f.write_all_at(b"kept", 100).unwrap();
        let mut back = [0u8; 4];
        f.read_exact_at(&mut back, 100).unwrap();
        assert_eq!(&back, b"kept");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(target.to_string_lossy().ends_with("(deleted)"), "{}", target.display());
    }
}
