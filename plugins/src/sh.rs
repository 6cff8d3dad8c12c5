//! The `sh` plugin: a plugin written as a script or any executable, run once per plugin method
//! with nbdkit's calling convention (see the `script` module and nbdkit-sh-plugin(3)). The first
//! parameter is the script (`-` reads it from standard input); the ones after it go to the
//! script's `config` method.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use nbdforge_api::{absolute_path, Error, LayerInfo, Registration, Result};

use crate::script::{Program, Script};
use crate::script_plugin::{Flavour, ScriptPlugin};

/// The `sh` plugin. Configure with `script=` first, then the script's own parameters.
pub type ShPlugin = ScriptPlugin<Sh>;

/// How `sh` makes its script: from the file (or standard input) named first.
#[derive(Debug, Default)]
pub struct Sh;

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("sh", "a plugin written as a shell script or any executable")
        .help(
            "[script=]<FILENAME>  (required) The script to run; '-' reads it from standard input.\n\
             [KEY=VALUE]...       Passed to the script's config method.\n\
             script-timeout=<SECS> Kill a method run for a client after this long (default 60, 0 never).",
        )
        .magic("script");
    Registration::plugin(info, ShPlugin::default)
}

impl Sh {
    /// The executable for `script=`: the path made absolute, or for `-` the text on standard
    /// input saved in the script's private directory.
    fn load(key: &str, value: &str) -> Result<Script> {
        let script = if value == "-" {
            if !nbdforge_api::server::stdio_safe() {
                return Err(Error::invalid("script=-: standard input is in use by the protocol (-s)"));
            }
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::from_io("script=-: reading standard input", &e))?;
            let mut script = Script::new("sh", Program::Executable(Default::default()))?;
            let path = script.tmpdir.join("inline-script.sh");
            // A script without #! runs under /bin/sh, as nbdkit runs it.
            if !text.starts_with(b"#!") {
                let mut with_interpreter = b"#!/bin/sh\n".to_vec();
                with_interpreter.extend_from_slice(&text);
                text = with_interpreter;
            }
            std::fs::write(&path, &text).map_err(|e| Error::from_io(format!("script=-: {}", path.display()), &e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::from_io(format!("script=-: {}", path.display()), &e))?;
            script.program = Program::Executable(path);
            script
        } else {
            let path = absolute_path(key, value)?;
            if !path.is_file() {
                return Err(Error::invalid(format!("{key}={value}: not a file")));
            }
            Script::new("sh", Program::Executable(path))?
        };
        script.optional("load", &[])?;
        Ok(script)
    }
}

impl Flavour for Sh {
    fn config(&mut self, script: &mut Option<Arc<Script>>, key: &str, value: &str) -> Result<()> {
        match script {
            Some(script) => script.config(key, value),
            None if key == "script" => {
                *script = Some(Arc::new(Sh::load(key, value)?));
                Ok(())
            }
            None => {
                Err(Error::invalid(format!("{key}={value}: the script parameter must come first (script=<FILENAME>)")))
            }
        }
    }

    fn no_script(&self) -> Result<Script> {
        Err(Error::invalid("the script parameter is required (script=<FILENAME>)"))
    }
}
