//! What the plugins that make their disk with the system's tools share (`iso`, `linuxdisk`,
//! `tmpdisk`, `ondemand`): a private directory in `$TMPDIR` (or `/var/tmp`, where large files
//! belong) for the image, running a tool (a program, or a shell command given nbdkit's variables),
//! the default `mkfs` command, and the connection's handle on the finished image, which is the
//! `file` plugin's with the plugin's own multi-conn answer.
//!
//! The plugins themselves hold only their policy: which tool, with which arguments, when.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nbdforge_api::{Capabilities, Error, Flags, Handle, Result};

use crate::script::make_private_dir;

/// Where the images are made: `$TMPDIR`, or `/var/tmp` (nbdkit's choice: `/tmp` is often a small
/// RAM file system, and images can be large).
fn large_tmpdir() -> PathBuf {
    std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
}

/// A private directory holding one image file, `disk`, removed with everything in it when
/// dropped. The directory is only this user's, so nobody can replace the file between the tool
/// making it and the server opening it.
#[derive(Debug)]
pub(crate) struct ImageDir {
    dir: PathBuf,
}

impl ImageDir {
    /// A fresh directory for `plugin`'s image.
    pub(crate) fn new(plugin: &str) -> Result<Self> {
        Ok(ImageDir { dir: make_private_dir(&large_tmpdir(), plugin)? })
    }

    /// The image's path (the file is not made).
    pub(crate) fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// Removes the directory and the image (open handles keep their data until they close).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A connection's read-only handle on the image, which every client shares (so multi-conn
    /// is safe); `name` begins its messages.
    pub(crate) fn open_shared(&self, name: &str) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ImageHandle::open(&self.disk(), name, true, Sharing::Shared, None)?))
    }
}

/// A `dir=` parameter: the directory, resolved while configuring.
pub(crate) fn directory(key: &str, value: &str) -> Result<PathBuf> {
    let dir = nbdforge_api::realpath(key, value)?;
    if !dir.is_dir() {
        return Err(Error::invalid(format!("{key}={value}: not a directory")));
    }
    Ok(dir)
}

/// How `tmpdisk` and `ondemand` make a disk at `$disk`: a shell `command=`, or else mkfs
/// ([`DEFAULT_MKFS`]), given `$size` (from `size=`) and every parameter that is not the plugin's
/// own as a variable (`type=`, `label=`, or anything a command wants).
#[derive(Debug, Default)]
pub(crate) struct DiskCommand {
    pub(crate) size: Option<u64>,
    pub(crate) command: Option<String>,
    vars: Vec<(String, String)>,
}

impl DiskCommand {
    /// Takes `size=`, `command=`, and any other parameter as a variable if it can be one.
    pub(crate) fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => self.size = Some(nbdforge_api::parse_size(key, value)?),
            "command" => self.command = Some(value.to_string()),
            _ if is_shell_name(key) => self.vars.push((key.to_string(), value.to_string())),
            _ => {
                return Err(Error::invalid(format!(
                    "{key}={value}: '{key}' cannot be a variable of the command (letters, digits and _ only)"
                )))
            }
        }
        Ok(())
    }

    /// Makes the disk at `disk`; `what` begins the messages (`ondemand: export 'a'`).
    pub(crate) fn make(&self, what: &str, disk: &Path) -> Result<()> {
        let mut vars = vec![
            ("disk".to_string(), disk.to_string_lossy().into_owned()),
            ("size".to_string(), self.size.unwrap_or(0).to_string()),
        ];
        vars.extend(self.vars.iter().cloned());
        let (what, script) = match &self.command {
            Some(command) => (format!("{what}: command"), command.as_str()),
            None => (format!("{what}: mkfs"), DEFAULT_MKFS),
        };
        run(&what, &mut shell(script, &vars), None, None)?;
        if !disk.exists() {
            return Err(Error::io(format!("{what}: it succeeded but did not make \"$disk\"")));
        }
        Ok(())
    }
}

/// Also when the server stops on an error before `cleanup` could run. (A server going into the
/// background leaves its parent by `exit`, which drops nothing, so the image stays for the child.)
impl Drop for ImageDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `value` in single quotes for `/bin/sh`.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// True for a name `/bin/sh` takes as a variable (`[A-Za-z_][A-Za-z0-9_]*`): the parameters of
/// `tmpdisk` and `ondemand` that are not their own become variables of the command.
pub(crate) fn is_shell_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A `/bin/sh` command with `vars` set as shell variables before it, as nbdkit passes
/// parameters to a `command=` (plain shell variables, not exported).
pub(crate) fn shell(script: &str, vars: &[(String, String)]) -> Command {
    let mut text = String::new();
    for (key, value) in vars {
        text.push_str(&format!("{key}={}\n", shell_quote(value)));
    }
    text.push_str(script);
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(text);
    command
}

/// The command run when no `command=` is given: a sparse file of `$size` bytes, then
/// `mkfs -t $type` (ext4 by default) with `$label` if set, passing each mkfs the option that makes
/// it format a plain file without asking, and the label option it knows (`-n` for FAT).
pub(crate) const DEFAULT_MKFS: &str = r#"type="${type:-ext4}"
label_option=-L
case "$type" in
    ext[234]) force=-F ;;
    vfat|fat|msdos) force=-I; label_option=-n ;;
    ntfs) force='-Q -F' ;;
    xfs) force=-f ;;
    *) force= ;;
esac
truncate -s "$size" "$disk" || exit 1
if [ -n "$label" ]; then
    exec mkfs -t "$type" $force "$label_option" "$label" "$disk"
else
    exec mkfs -t "$type" $force "$disk"
fi
"#;

/// Runs a tool to completion with no terminal input, `input` on its standard input if given, and
/// its standard output into `output` if given (else returned). A tool that fails is an error
/// naming `what` and quoting what the tool said on standard error; when it succeeds, what it said
/// is logged at debug level.
pub(crate) fn run(what: &str, command: &mut Command, input: Option<&[u8]>, output: Option<File>) -> Result<Vec<u8>> {
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(output.map_or_else(Stdio::piped, Stdio::from));
    command.stderr(Stdio::piped());
    tracing::debug!("{what}: running {command:?}");
    let mut child = command.spawn().map_err(|e| Error::from_io(format!("{what}: could not run it"), &e))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small inputs (a partition table script): written before reading the answer.
        stdin.write_all(data).map_err(|e| Error::from_io(format!("{what}: writing its input"), &e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::from_io(format!("{what}: waiting for it"), &e))?;
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    if out.status.success() {
        if !said.is_empty() {
            tracing::debug!("{what}: {said}");
        }
        return Ok(out.stdout);
    }
    let how = match (out.status.code(), std::os::unix::process::ExitStatusExt::signal(&out.status)) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "failed".to_string(),
    };
    Err(Error::io(if said.is_empty() { format!("{what}: {how}") } else { format!("{what}: {how}: {said}") }))
}

/// How an image lives, which decides what a connection's handle promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// One image for every client (`iso`, `linuxdisk`): multi-conn is safe.
    Shared,
    /// An image kept after the connection (`ondemand`): flushes reach the disk.
    Kept,
    /// An image that dies with its connection (`tmpdisk`): flush and FUA have nothing to keep,
    /// so they return at once, as in nbdkit.
    Throwaway,
}

/// One connection's handle on an image: the `file` plugin's handle (reads with `sendfile`, holes,
/// trim, zeroing, flush) with the promises of its [`Sharing`], holding what must live as long as
/// the connection (`ondemand`'s lock).
pub(crate) struct ImageHandle {
    file: Box<dyn Handle>,
    sharing: Sharing,
    _held: Option<File>,
}

impl ImageHandle {
    /// Opens the image at `path` for one connection; `name` begins its messages.
    pub(crate) fn open(path: &Path, name: &str, readonly: bool, sharing: Sharing, held: Option<File>) -> Result<Self> {
        Ok(ImageHandle { file: crate::file::open_image(path, name, readonly)?, sharing, _held: held })
    }

    /// The flags passed on: without FUA for a throwaway disk.
    fn flags(&self, flags: Flags) -> Flags {
        match self.sharing {
            Sharing::Throwaway => flags.without(Flags::FUA),
            _ => flags,
        }
    }
}

impl Handle for ImageHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.file)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities { multi_conn: self.sharing == Sharing::Shared, ..self.file.capabilities()? })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.file.pwrite(buf, offset, self.flags(flags))
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        match self.sharing {
            Sharing::Throwaway => Ok(()),
            _ => self.file.flush(flags),
        }
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.file.trim(count, offset, self.flags(flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.file.zero(count, offset, self.flags(flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        let value = r#"it's "quoted" $HOME `x` \n"#;
        let out = run("echo", &mut shell(r#"printf %s "$v""#, &[("v".into(), value.into())]), None, None).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), value);
    }

    #[test]
    fn shell_names() {
        assert!(is_shell_name("type") && is_shell_name("_x1") && is_shell_name("OS"));
        assert!(!is_shell_name("") && !is_shell_name("1x") && !is_shell_name("a-b") && !is_shell_name("a.b"));
    }

    #[test]
    fn failures_quote_the_tool() {
        let err = run("test: cmd", &mut shell("echo broken >&2; exit 3", &[]), None, None).unwrap_err();
        assert_eq!(err.message, "test: cmd: exited with status 3: broken");
        let out = run("cat", &mut Command::new("cat"), Some(b"in"), None).unwrap();
        assert_eq!(out, b"in");
    }

    #[test]
    fn image_dir_goes_when_dropped() {
        let dir = ImageDir::new("test").unwrap();
        std::fs::write(dir.disk(), b"x").unwrap();
        let path = dir.disk();
        drop(dir);
        assert!(!path.exists() && !path.parent().unwrap().exists());
    }
}
