//! The backend stack: filters over a plugin, configured from `key=value` parameters, then opened
//! once per connection. Each layer's handle is wrapped in [`Emulated`] so that the layer above
//! (a filter, or the server itself) can call every operation whatever the layer implements.

use std::sync::Arc;

use nbdforge_api::{Backend, Error, Export, Filter, Handle, OpenArgs, Plugin, Result, ThreadModel};

use crate::emulate::Emulated;

/// Filters over a plugin, being configured.
pub struct Stack {
    plugin: Box<dyn Plugin>,
    filters: Vec<Box<dyn Filter>>,
}

fn prefixed(layer: &str, e: Error) -> Error {
    Error::new(e.errno, format!("{layer}: {}", e.message))
}

impl Stack {
    /// `filters` in command-line order (client side first).
    pub fn new(plugin: Box<dyn Plugin>, filters: Vec<Box<dyn Filter>>) -> Self {
        Stack { plugin, filters }
    }

    /// The plugin's magic key, for a bare first argument.
    pub fn magic_config_key(&self) -> Option<&'static str> {
        self.plugin.magic_config_key()
    }

    /// `-D LAYER.FLAG=VALUE`: sets a debug flag of the filter or plugin called `layer`. Returns
    /// false when no layer has that name, and an error when the layer has no such flag.
    pub fn debug_flag(&mut self, layer: &str, flag: &str, value: i32) -> std::result::Result<bool, String> {
        let known = if let Some(f) = self.filters.iter_mut().find(|f| f.name() == layer) {
            f.debug_flag(flag, value)
        } else if self.plugin.name() == layer {
            self.plugin.debug_flag(flag, value)
        } else {
            return Ok(false);
        };
        if known {
            Ok(true)
        } else {
            Err(format!("-D {layer}.{flag}={value}: {layer} has no debug flag called {flag}"))
        }
    }

    /// Offers `key=value` to the filters in order, then the plugin. Errors are prefixed with the
    /// name of the layer that refused it (`memory: size=12Q: unknown suffix ...`).
    pub fn config(&mut self, key: &str, value: &str) -> Result<()> {
        for f in &mut self.filters {
            if f.config(key, value).map_err(|e| prefixed(f.name(), e))? {
                return Ok(());
            }
        }
        self.plugin.config(key, value).map_err(|e| prefixed(self.plugin.name(), e))
    }

    /// `config_complete` and `get_ready` on every layer, then the finished stack.
    pub fn finish(mut self) -> Result<Arc<dyn Backend>> {
        for f in &mut self.filters {
            f.config_complete().map_err(|e| prefixed(f.name(), e))?;
        }
        self.plugin.config_complete().map_err(|e| prefixed(self.plugin.name(), e))?;
        for f in &mut self.filters {
            f.get_ready().map_err(|e| prefixed(f.name(), e))?;
        }
        self.plugin.get_ready().map_err(|e| prefixed(self.plugin.name(), e))?;
        let mut backend: Arc<dyn Backend> = Arc::new(PluginLayer { plugin: self.plugin });
        for filter in self.filters.into_iter().rev() {
            backend = Arc::new(FilterLayer { filter, next: backend });
        }
        Ok(backend)
    }

    /// The plugin.
    pub fn plugin(&self) -> &dyn Plugin {
        self.plugin.as_ref()
    }

    /// The filters, client side first.
    pub fn filters(&self) -> &[Box<dyn Filter>] {
        &self.filters
    }

    /// The most restrictive thread model of the plugin and every filter.
    pub fn thread_model(&self) -> ThreadModel {
        self.filters.iter().map(|f| f.thread_model()).fold(self.plugin.thread_model(), Ord::min)
    }
}

struct PluginLayer {
    plugin: Box<dyn Plugin>,
}

impl Backend for PluginLayer {
    fn name(&self) -> &str {
        self.plugin.name()
    }
    fn thread_model(&self) -> ThreadModel {
        self.plugin.thread_model()
    }
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        self.plugin.list_exports(readonly, tls)
    }
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        self.plugin.default_export(readonly, tls)
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Emulated::open(self.plugin.open(args)?)
    }
}

struct FilterLayer {
    filter: Box<dyn Filter>,
    next: Arc<dyn Backend>,
}

impl Backend for FilterLayer {
    fn name(&self) -> &str {
        self.filter.name()
    }
    fn thread_model(&self) -> ThreadModel {
        self.filter.thread_model().min(self.next.thread_model())
    }
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        self.filter.list_exports(self.next.as_ref(), readonly, tls)
    }
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        self.filter.default_export(self.next.as_ref(), readonly, tls)
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Emulated::open(self.filter.open(self.next.as_ref(), args)?)
    }
}
