//! The plugin that `sh` and `eval` both are. Once configured, everything goes to the script
//! (see the `script` module), so the two differ only in their `Flavour`: how their
//! parameters make the script. `script-timeout=` is taken here, for both.

use std::sync::Arc;
use std::time::Duration;

use nbdforge_api::{ClientInfo, Error, Export, Handle, Layer, OpenArgs, Plugin, Result, ThreadModel};

use crate::script::{remove_tmpdir, Script};

/// How a script plugin's parameters make its script.
pub(crate) trait Flavour: Default + std::fmt::Debug + Send + Sync + 'static {
    /// Takes one parameter: the one that makes the script, a part of it, or (passed on with
    /// [`Script::config`]) one of the script's own.
    fn config(&mut self, script: &mut Option<Arc<Script>>, key: &str, value: &str) -> Result<()>;

    /// The script when the command line made none, or why there must be one.
    fn no_script(&self) -> Result<Script>;
}

/// A plugin written as a script: `sh` and `eval`.
#[derive(Debug, Default)]
pub struct ScriptPlugin<F> {
    script: Option<Arc<Script>>,
    /// `script-timeout=`, when given; it applies once the script exists.
    timeout: Option<Option<Duration>>,
    flavour: F,
}

impl<F> ScriptPlugin<F> {
    fn script(&self) -> Result<&Arc<Script>> {
        self.script.as_ref().ok_or_else(|| Error::invalid("the plugin was not configured"))
    }
}

impl<F: Flavour> Layer for ScriptPlugin<F> {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key == "script-timeout" {
            let seconds: f64 = value
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| Error::invalid(format!("{key}={value}: expected a number of seconds")))?;
            self.timeout = Some((seconds > 0.0).then(|| Duration::from_secs_f64(seconds)));
            return Ok(true);
        }
        self.flavour.config(&mut self.script, key, value)?;
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.script.is_none() {
            self.script = Some(Arc::new(self.flavour.no_script()?));
        }
        if let (Some(timeout), Some(script)) = (self.timeout, self.script.as_mut().and_then(Arc::get_mut)) {
            script.timeout = timeout;
        }
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

impl<F: Flavour> Plugin for ScriptPlugin<F> {
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
