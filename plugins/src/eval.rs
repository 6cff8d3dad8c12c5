//! The `eval` plugin: a plugin written on the command line, one shell fragment per method
//! (`get_size='echo 1M'`, `pread='...'`), run with nbdkit's script calling convention (see the
//! `script` module and nbdkit-eval-plugin(1)). Unlike `sh`, a missing `can_*` method is answered
//! by whether the method it guards was given; `missing=` runs for every method not given.

use std::collections::BTreeMap;
use std::sync::Arc;

use nbdforge_api::{Error, LayerInfo, Registration, Result};

use crate::script::{Program, Script};
use crate::script_plugin::{Flavour, ScriptPlugin};

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
pub type EvalPlugin = ScriptPlugin<Eval>;

/// How `eval` makes its script: a fragment per method parameter.
#[derive(Debug, Default)]
pub struct Eval;

/// The plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("eval", "a plugin written as shell fragments on the command line").help(
        "METHOD=<SCRIPT>      The shell fragment run for METHOD (get_size, pread, pwrite, ...).\n\
         missing=<SCRIPT>     Run for every method not given (default: exit 2).\n\
         script-timeout=<SECS> Kill a method run for a client after this long (default 60, 0 never).",
    );
    Registration::plugin(info, EvalPlugin::default)
}

impl Flavour for Eval {
    fn config(&mut self, script: &mut Option<Arc<Script>>, key: &str, value: &str) -> Result<()> {
        if script.is_none() {
            *script = Some(Arc::new(self.no_script()?));
        }
        let arc = script.as_mut().ok_or_else(|| Error::invalid("eval: no script"))?;
        let script =
            Arc::get_mut(arc).ok_or_else(|| Error::invalid("eval: a method was given after the server started"))?;
        if let Program::Fragments { methods, missing } = &mut script.program {
            if key == "missing" {
                *missing = Some(value.to_string());
                return Ok(());
            }
            if METHODS.contains(&key) {
                methods.insert(key.to_string(), value.to_string());
                return Ok(());
            }
        }
        script.config(key, value)
    }

    fn no_script(&self) -> Result<Script> {
        Script::new("eval", Program::Fragments { methods: BTreeMap::new(), missing: None })
    }
}
