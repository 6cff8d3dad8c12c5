//! The `sh` plugin: a plugin written as a script or any executable, run once per plugin method
//! with nbdkit's calling convention (see the `script` module and nbdkit-sh-plugin(3)). The first
//! parameter is the script (`-` reads it from standard input); the ones after it go to the
//! script's `config` method.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use nbdforge_api::{
    absolute_path, ClientInfo, Error, Export, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result,
    ThreadModel,
};

use crate::script::{remove_tmpdir, Program, Script};

/// The `sh` plugin. Configure with `script=` first, then the script's own parameters.
#[derive(Debug, Default)]
pub struct ShPlugin {
    script: Option<Arc<Script>>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("sh", "a plugin written as a shell script or any executable")
        .help(
            "[script=]<FILENAME>  (required) The script to run; '-' reads it from standard input.\n\
             [KEY=VALUE]...       Passed to the script's config method.",
        )
        .magic("script");
    Registration::plugin(info, ShPlugin::default)
}

impl ShPlugin {
    fn script(&self) -> Result<&Arc<Script>> {
        self.script.as_ref().ok_or_else(|| Error::invalid("the script parameter must come first (script=<FILENAME>)"))
    }

    /// The executable for `script=`: the path made absolute, or for `-` the text on standard
    /// input saved in the script's private directory.
    fn load(&mut self, key: &str, value: &str) -> Result<()> {
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
        self.script = Some(Arc::new(script));
        Ok(())
    }
}

impl Layer for ShPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if self.script.is_none() {
            if key != "script" {
                return Err(Error::invalid(format!(
                    "{key}={value}: the script parameter must come first (script=<FILENAME>)"
                )));
            }
            self.load(key, value)?;
        } else {
            self.script()?.config(key, value)?;
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.script()?.optional("config_complete", &[]).map(drop)
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        let mut lines = vec![("max_known_status".to_string(), "3".to_string())];
        if let Some(Ok(Some(out))) = self.script.as_ref().map(|s| s.optional("dump_plugin", &[])) {
            for line in String::from_utf8_lossy(&out).lines() {
                if let Some((k, v)) = line.split_once('=') {
                    lines.push((k.to_string(), v.to_string()));
                }
            }
        }
        lines
    }

    fn cleanup(&self) {
        if let Some(script) = &self.script {
            let _ = script.optional("unload", &[]);
            remove_tmpdir(&script.tmpdir);
        }
    }
}

impl Plugin for ShPlugin {
    fn thread_model(&self) -> ThreadModel {
        self.script.as_ref().map_or(ThreadModel::SerializeAllRequests, |s| s.thread_model())
    }

    fn get_ready(&mut self) -> Result<()> {
        self.script()?.optional("get_ready", &[]).map(drop)
    }

    fn after_fork(&self) -> Result<()> {
        self.script()?.optional("after_fork", &[]).map(drop)
    }

    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        self.script()?.preconnect(client, readonly)
    }

    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        match self.script()?.list_exports(readonly, tls)? {
            Some(list) => Ok(list),
            None => Ok(vec![Export::named(self.default_export(readonly, tls)?)]),
        }
    }

    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        self.script()?.default_export(readonly, tls)
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        self.script()?.open(args)
    }
}
