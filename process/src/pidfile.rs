//! The pid file (nbdkit's `-P FILE`, qemu-nbd's `--pid-file`), written once the server listens,
//! so that whoever waits for the file can connect as soon as it appears.

use std::path::Path;

use crate::{Error, Setting};

/// Writes our pid, replacing the file atomically so a reader never sees it empty.
pub fn write_pidfile(path: &Path) -> Result<(), Error> {
    let text = format!("{}\n", std::process::id());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let renamed = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
        std::fs::write(path, &text).map_err(|e| Error::with_value(Setting::PidFile, path.display(), e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_pid_and_names_the_file_it_cannot_write() {
        let dir = std::env::temp_dir().join(format!("nbdforge-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("server.pid");
        write_pidfile(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();

        let e = write_pidfile(&dir.join("server.pid")).unwrap_err();
        assert_eq!(e.setting, Some(Setting::PidFile));
        assert_eq!(e.value, Some(dir.join("server.pid").display().to_string()));
        assert_eq!(e.message, "No such file or directory (os error 2)");
    }
}
