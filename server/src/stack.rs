//! placeholder
use std::sync::Arc;

use nbdforge_api::{Backend, Filter, Plugin, Result};

/// Filters over a plugin, being configured.
pub struct Stack {
    _plugin: Box<dyn Plugin>,
    _filters: Vec<Box<dyn Filter>>,
}

impl Stack {
    /// `filters` in command-line order (client side first).
    pub fn new(plugin: Box<dyn Plugin>, filters: Vec<Box<dyn Filter>>) -> Self {
        Stack { _plugin: plugin, _filters: filters }
    }

    /// The plugin's magic key, for a bare first argument.
    pub fn magic_config_key(&self) -> Option<&'static str> {
        todo!()
    }

    /// Offers `key=value` to the filters in order, then the plugin. Errors are prefixed with the
    /// name of the layer that refused it (`memory: size=12Q: unknown suffix ...`).
    pub fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let _ = (key, value);
        todo!()
    }

    /// `config_complete` and `get_ready` on every layer, then the finished stack.
    pub fn finish(self) -> Result<Arc<dyn Backend>> {
        todo!()
    }

    /// The plugin.
    pub fn plugin(&self) -> &dyn Plugin {
        todo!()
    }

    /// The filters, client side first.
    pub fn filters(&self) -> &[Box<dyn Filter>] {
        todo!()
    }
}
