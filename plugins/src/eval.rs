//! The `eval` plugin: a plugin written on the command line, one shell fragment per method
//! (`get_size='echo 1M'`, `pread='...'`), run with nbdkit's script calling convention (see the
//! `script` module and nbdkit-eval-plugin(1)). Unlike `sh`, a missing `can_*` method is answered
//! by whether the method it guards was given; `missing=` runs for every method not given.

use std::collections::BTreeMap;
use std::sync::Arc;

use nbdforge_api::{
    ClientInfo, Error, Export, Handle, Layer, LayerInfo, OpenArgs, Plugin, Registration, Result, ThreadModel,
};

use crate::script::{remove_tmpdir, Program, Script};

/// The methods a fragment may be given for; any other parameter goes to the `config` fragment.
const METHODS: &[&str] = &[
    "after_fork",
    "block_size",
    "cache",
    "can_cache",
    "can_extents",
    "can_fast_zero",
    "can_flush",
    "can_fua",
    "can_multi_conn",
    "can_trim",
    "can_write",
    "can_zero",
    "close",
    "config",
    "config_complete",
    "default_export",
    "dump_plugin",
    "export_description",
    "extents",
    "flush",
    "get_ready",
    "get_size",
    "is_rotational",
    "list_exports",
    "open",
    "pread",
    "preconnect",
    "pwrite",
    "thread_model",
    "trim",
    "unload",
    "zero",
];

/// The `eval` plugin. Every parameter is a method's fragment, `missing=`, or a parameter for
/// the `config` fragment.
#[derive(Debug, Default)]
pub struct EvalPlugin {
    script: Option<Arc<Script>>,
}

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("eval", "a plugin written as shell fragments on the command line").help(
        "METHOD=<SCRIPT>      The shell fragment run for METHOD (get_size, pread, pwrite, ...).\n\
         missing=<SCRIPT>     Run for every method not given (default: exit 2).",
    );
    Registration::plugin(info, EvalPlugin::default)
}

impl EvalPlugin {
    fn script(&self) -> Result<&Arc<Script>> {
        self.script.as_ref().ok_or_else(|| Error::invalid("no methods were given (get_size=... pread=...)"))
    }

    /// The script, made (with its private directory) on first use.
    fn script_mut(&mut self) -> Result<&mut Script> {
        if self.script.is_none() {
            let program = Program::Fragments { methods: BTreeMap::new(), missing: None };
            self.script = Some(Arc::new(Script::new("eval", program)?));
        }
        let arc = self.script.as_mut().ok_or_else(|| Error::invalid("eval: no script"))?;
        Arc::get_mut(arc).ok_or_else(|| Error::invalid("eval: a method was given after the server started"))
    }
}

impl Layer for EvalPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let script = self.script_mut()?;
        if let Program::Fragments { methods, missing } = &mut script.program {
            if key == "missing" {
                *missing = Some(value.to_string());
                return Ok(true);
            }
            if METHODS.contains(&key) {
                methods.insert(key.to_string(), value.to_string());
                return Ok(true);
            }
        }
        script.config(key, value)?;
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.script_mut()?;
        self.script()?.optional("config_complete", &[]).map(drop)
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("max_known_status".to_string(), "3".to_string())]
    }

    fn cleanup(&self) {
        if let Some(script) = &self.script {
            let _ = script.optional("unload", &[]);
            remove_tmpdir(&script.tmpdir);
        }
    }
}

impl Plugin for EvalPlugin {
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
