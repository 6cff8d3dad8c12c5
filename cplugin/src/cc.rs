//! The cc plugin (nbdkit-cc-plugin(3)): `nbdforge cc plugin.c [CC=] [CFLAGS=] [EXTRA_CFLAGS=]
//! [key=value]...` compiles a C plugin when the server starts and then runs it through the same
//! ABI as a `.so` given on the command line. `-` reads the source from standard input.
//!
//! Policy only: the parameters are collected first (so `CC=` may come after the source), the
//! compile runs in `config_complete`, and the compiled plugin then gets the other parameters
//! and its own `config_complete`. The shared object is deleted once loaded (it stays mapped).

use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nbdforge_api::{
    ClientInfo, Error, Export, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result, ThreadModel,
};

use crate::plugin::{self, CPlugin};

/// The compiler and flags used when the command line says nothing.
pub const DEFAULT_CC: &str = "cc";
pub const DEFAULT_CFLAGS: &str = "-g -O2 -fPIC -shared";

/// The cc plugin's table entry.
pub fn registration() -> Registration {
    let info = LayerInfo::new("cc", "compile and run a C plugin written for nbdkit")
        .help(
            "script=<FILENAME>     (required) The C source of the plugin, or - for stdin.\n\
             CC=<CC>               C compiler (default: cc).\n\
             CFLAGS=<CFLAGS>       Compiler flags, replacing the default -g -O2 -fPIC -shared.\n\
             EXTRA_CFLAGS=<FLAGS>  Flags added to the default ones.\n\
             Other parameters are passed to the compiled plugin.",
        )
        .magic("script");
    Registration::plugin(info, Cc::default)
}

/// Where the source comes from.
enum Source {
    File(PathBuf),
    Stdin(String),
}

#[derive(Default)]
pub struct Cc {
    cc: Option<String>,
    cflags: Option<String>,
    extra_cflags: Option<String>,
    source: Option<Source>,
    params: Vec<(String, String)>,
    inner: Option<CPlugin>,
}

impl Cc {
    fn inner(&self) -> Result<&CPlugin> {
        self.inner.as_ref().ok_or_else(|| Error::invalid("the C plugin is not compiled yet"))
    }

    /// Compiles the source into a fresh private directory and loads the result.
    fn compile(&self) -> Result<CPlugin> {
        let source = self.source.as_ref().ok_or_else(|| Error::invalid("script=<FILENAME> (or -) is required"))?;
        let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("nbdforge-cc-XXXXXX"))
            .map_err(|e| Error::new(e as i32, format!("creating a temporary directory: {e}")))?;
        let result = self.compile_in(&dir, source);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn compile_in(&self, dir: &std::path::Path, source: &Source) -> Result<CPlugin> {
        let src = match source {
            Source::File(p) => p.clone(),
            Source::Stdin(text) => {
                let p = dir.join("plugin.c");
                std::fs::write(&p, text).map_err(|e| Error::from_io(format!("{}", p.display()), &e))?;
                p
            }
        };
        let so = dir.join("plugin.so");
        let cc = self.cc.as_deref().unwrap_or(DEFAULT_CC);
        let cflags = self.cflags.as_deref().unwrap_or(DEFAULT_CFLAGS);
        let extra = self.extra_cflags.as_deref().unwrap_or("");
        // The words of CC and the flags are split by the shell, as nbdkit does; the file names
        // are passed as arguments, never spliced into the command.
        let command = format!("{cc} {cflags} {extra}").trim().to_string();
        let script = format!("{command} \"$1\" -o \"$2\"");
        tracing::debug!("cc: {script} (with $1={}, $2={})", src.display(), so.display());
        // Compiler chatter goes to stderr: stdout may be the NBD stream (-s).
        let stderr = std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| Error::from_io("stderr", &e))?;
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(&src)
            .arg(&so)
            .stdin(Stdio::null())
            .stdout(stderr)
            .status()
            .map_err(|e| Error::from_io("running /bin/sh for the compiler", &e))?;
        if !status.success() {
            return Err(Error::invalid(format!(
                "compiling {} with '{command}' failed ({status})",
                match source {
                    Source::File(p) => p.display().to_string(),
                    Source::Stdin(_) => "the source from stdin".into(),
                }
            )));
        }
        let lib = plugin::open(&so).map_err(Error::invalid)?;
        Ok(CPlugin::new(lib))
    }
}

impl Layer for Cc {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if let Some(inner) = &mut self.inner {
            return inner.config(key, value);
        }
        match key {
            "script" if self.source.is_none() => {
                self.source = Some(if value == "-" {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| Error::from_io("script=-: reading the source from stdin", &e))?;
                    Source::Stdin(text)
                } else {
                    Source::File(nbdforge_api::realpath(key, value)?)
                });
            }
            "CC" => self.cc = Some(value.to_string()),
            "CFLAGS" => self.cflags = Some(value.to_string()),
            "EXTRA_CFLAGS" => self.extra_cflags = Some(value.to_string()),
            _ => self.params.push((key.to_string(), value.to_string())),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let mut inner = self.compile()?;
        let name = inner.library().info().name;
        for (k, v) in std::mem::take(&mut self.params) {
            inner.config(&k, &v).map_err(|e| Error::new(e.errno, format!("{name}: {}", e.message)))?;
        }
        inner.config_complete().map_err(|e| Error::new(e.errno, format!("{name}: {}", e.message)))?;
        self.inner = Some(inner);
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("CC".into(), DEFAULT_CC.into()), ("CFLAGS".into(), DEFAULT_CFLAGS.into())]
    }

    fn cleanup(&self) {
        if let Some(inner) = &self.inner {
            inner.cleanup();
        }
    }
}

impl Plugin for Cc {
    fn thread_model(&self) -> ThreadModel {
        self.inner.as_ref().map_or(ThreadModel::Parallel, |p| p.thread_model())
    }

    fn get_ready(&mut self) -> Result<()> {
        self.inner.as_mut().map_or(Ok(()), |p| p.get_ready())
    }

    fn after_fork(&self) -> Result<()> {
        self.inner()?.after_fork()
    }

    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        self.inner()?.preconnect(client, readonly)
    }

    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        self.inner()?.list_exports(readonly, tls)
    }

    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        self.inner()?.default_export(readonly, tls)
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        self.inner()?.open(args)
    }
}
