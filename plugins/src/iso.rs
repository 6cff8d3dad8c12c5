//! The `iso` plugin: a CD-ROM image (ISO 9660) made once at start-up from one or more directories
//! (`dir=`, merged) by xorriso, genisoimage or mkisofs (`prog=`, with extra options in `params=`),
//! kept in a private temporary file until the server exits, and served read-only to every client.

use std::path::PathBuf;

use nbdforge_api::{unknown_parameter, Error, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result};

use crate::fs_image::{directory, run, shell, shell_quote, ImageDir};

/// The programs tried, in nbdkit's order of preference, when `prog=` is not given.
const PROGRAMS: [&str; 3] = ["xorriso", "genisoimage", "mkisofs"];

/// The `iso` plugin. Configure with `dir=` (one or more), and optionally `prog=` and `params=`.
#[derive(Debug, Default)]
pub struct IsoPlugin {
    dirs: Vec<PathBuf>,
    prog: Option<String>,
    params: Option<String>,
    image: Option<ImageDir>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("iso", "a CD-ROM (ISO 9660) image made from directories")
        .help(
            "[dir=]<DIRECTORY>   (required) A directory to put in the ISO; repeat to merge several.\n\
             params='<PARAMS>'             Extra options for the program, split by the shell (e.g. -JrT).\n\
             prog=<PROGRAM>                The program that makes the ISO (default: xorriso, else\n\
             \x20                             genisoimage, else mkisofs, whichever is installed).",
        )
        .magic("dir");
    Registration::plugin(info, IsoPlugin::default)
}

/// The first of `names` found as an executable file in `$PATH`.
fn find_in_path(names: &[&str]) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .any(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
            .then(|| name.to_string())
    })
}

impl Layer for IsoPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "dir" => self.dirs.push(directory(key, value)?),
            "prog" if value.is_empty() => return Err(Error::invalid("prog=: the program name is empty")),
            "prog" => self.prog = Some(value.to_string()),
            "params" => self.params = Some(value.to_string()),
            _ => return Err(unknown_parameter(key)),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.dirs.is_empty() {
            return Err(Error::invalid("you must give at least one dir=<DIRECTORY> (or a bare DIRECTORY)"));
        }
        Ok(())
    }

    /// The image goes when the server exits.
    fn cleanup(&self) {
        self.image.iter().for_each(ImageDir::remove);
    }
}

impl Plugin for IsoPlugin {
    /// Makes the ISO: the program writes it to standard output, which is the image file. Like
    /// nbdkit, `params` goes through the shell, so quoting in it works (`-V "My Disk"`).
    fn get_ready(&mut self) -> Result<()> {
        let prog = match &self.prog {
            Some(prog) => prog.clone(),
            None => find_in_path(&PROGRAMS).ok_or_else(|| {
                Error::invalid("none of xorriso, genisoimage or mkisofs is installed (install one, or give prog=)")
            })?,
        };
        let mut script = format!("exec {}", shell_quote(&prog));
        // xorriso takes mkisofs's options only in its mkisofs mode.
        if prog.rsplit('/').next() == Some("xorriso") {
            script.push_str(" -as mkisofs");
        }
        script.push_str(" -quiet");
        if let Some(params) = &self.params {
            script.push(' ');
            script.push_str(params);
        }
        for dir in &self.dirs {
            script.push(' ');
            script.push_str(&shell_quote(&dir.to_string_lossy()));
        }
        let image = ImageDir::new("iso")?;
        let path = image.disk();
        let file = std::fs::File::create(&path).map_err(|e| Error::from_io(format!("{}", path.display()), &e))?;
        let what = match &self.params {
            Some(params) => format!("prog={prog} params={params}"),
            None => format!("prog={prog}"),
        };
        run(&what, &mut shell(&script, &[]), None, Some(file))?;
        self.image = Some(image);
        Ok(())
    }

    fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let image = self.image.as_ref().ok_or_else(|| Error::invalid("iso: used before get_ready"))?;
        image.open_shared("iso: the ISO image")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut p = IsoPlugin::default();
        assert!(p.config_complete().is_err());
        assert!(p.config("dir", "/nonexistent/dir").unwrap_err().message.contains("dir=/nonexistent/dir"));
        assert!(p.config("dir", "/etc/hostname").is_err_and(|e| e.message.contains("not a directory")));
        assert!(p.config("colour", "red").is_err());
        p.config("dir", "/etc").unwrap();
        p.config_complete().unwrap();
        assert_eq!(find_in_path(&["sh"]).as_deref(), Some("sh"));
        assert_eq!(find_in_path(&["no-such-program-here"]), None);
    }
}
