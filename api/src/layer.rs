//! What plugins and filters have in common: their metadata, their configuration life, and the
//! one table the server finds them in.
//!
//! A layer's identity (name, description, help) is data in its [`Registration`], not methods of
//! the layer, so that layers loaded at run time (a C `.so`, a script) register exactly as the
//! built-in ones do. The configuration life (parameters, `config_complete`, debug flags, what
//! `--dump-plugin` prints, cleanup) is the [`Layer`] trait that [`Plugin`] and [`Filter`] extend.

use std::sync::Arc;

use crate::{Filter, Plugin, Result};

/// Who a layer is, as `--help`, `--version` and `--dump-plugin` print it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerInfo {
    /// Short name, as typed on the command line (`memory`, `--filter=cow`).
    pub name: String,
    /// One line saying what the layer is.
    pub description: String,
    /// Version printed by `--version` and `--dump-plugin`.
    pub version: String,
    /// Help for the parameters, one per line: `size=<SIZE>  (required) Size of the RAM disk.`
    pub config_help: String,
    /// The key a bare first argument stands for (`nbdforge memory 1G` means `size=1G`). Plugins
    /// only.
    pub magic_config_key: Option<String>,
}

impl LayerInfo {
    /// Metadata with a name and a description; the version is the SDK's.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        LayerInfo {
            name: name.into(),
            description: description.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    /// Sets the parameter help.
    pub fn help(mut self, config_help: impl Into<String>) -> Self {
        self.config_help = config_help.into();
        self
    }

    /// Sets the magic config key.
    pub fn magic(mut self, key: impl Into<String>) -> Self {
        self.magic_config_key = Some(key.into());
        self
    }
}

/// The configuration life every plugin and filter shares. Every method has a default, so a
/// layer without parameters implements nothing here.
pub trait Layer: Send + Sync + 'static {
    /// Sets one of the layer's debug flags from `-D NAME.FLAG=VALUE`, before any `config`.
    /// Returns false for a flag the layer does not have.
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        let _ = (flag, value);
        false
    }

    /// Takes one `key=value` parameter: `Ok(true)` when it is the layer's, `Ok(false)` when it is
    /// not (a filter passes it down; for a plugin the server reports an unknown parameter).
    /// Errors should read `key=value: what is wrong`; the server prefixes the layer's name.
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let _ = (key, value);
        Ok(false)
    }

    /// Called once every parameter is in: check required ones and cross-parameter rules.
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// Extra `key=value` lines for `--dump-plugin`.
    fn dump_plugin(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Called once when the server is about to exit, after the last connection closed.
    fn cleanup(&self) {}
}

/// How to make a fresh, unconfigured instance of a layer.
#[derive(Clone)]
pub enum Constructor {
    /// A plugin.
    Plugin(Arc<dyn Fn() -> Box<dyn Plugin> + Send + Sync>),
    /// A filter.
    Filter(Arc<dyn Fn() -> Box<dyn Filter> + Send + Sync>),
}

/// One entry of the table of layers the server knows: metadata and a constructor.
#[derive(Clone)]
pub struct Registration {
    /// Who the layer is.
    pub info: LayerInfo,
    /// How to make one.
    pub new: Constructor,
}

impl Registration {
    /// A plugin made by `new`.
    pub fn plugin<P: Plugin>(info: LayerInfo, new: impl Fn() -> P + Send + Sync + 'static) -> Self {
        Registration { info, new: Constructor::Plugin(Arc::new(move || Box::new(new()))) }
    }

    /// A filter made by `new`.
    pub fn filter<F: Filter>(info: LayerInfo, new: impl Fn() -> F + Send + Sync + 'static) -> Self {
        Registration { info, new: Constructor::Filter(Arc::new(move || Box::new(new()))) }
    }

    /// Whether this is a plugin (rather than a filter).
    pub fn is_plugin(&self) -> bool {
        matches!(self.new, Constructor::Plugin(_))
    }

    /// A new instance, if this is a plugin.
    pub fn new_plugin(&self) -> Option<Box<dyn Plugin>> {
        match &self.new {
            Constructor::Plugin(f) => Some(f()),
            Constructor::Filter(_) => None,
        }
    }

    /// A new instance, if this is a filter.
    pub fn new_filter(&self) -> Option<Box<dyn Filter>> {
        match &self.new {
            Constructor::Filter(f) => Some(f()),
            Constructor::Plugin(_) => None,
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_plugin() { "plugin" } else { "filter" };
        f.debug_struct("Registration").field("info", &self.info).field("kind", &kind).finish()
    }
}

/// A table of registrations, looked up by name.
pub fn find<'a>(table: &'a [Registration], name: &str, plugin: bool) -> Option<&'a Registration> {
    table.iter().find(|r| r.info.name == name && r.is_plugin() == plugin)
}
