//! The backend stack: filters over a plugin, configured from `key=value` parameters, then opened
//! once per connection. Each layer's handle is wrapped in `Emulated` so that the layer above
//! (a filter, or the server itself) can call every operation whatever the layer implements, and so
//! that the layer's name is known to `nbdforge_api::debug!` while it runs.

use std::sync::Arc;

use nbdforge_api::context::enter_layer;
use nbdforge_api::{
    unknown_parameter, Backend, ClientInfo, Error, Export, Filter, Handle, LayerInfo, OpenArgs, Plugin, Registration,
    Result, ThreadModel,
};

use crate::emulate::Emulated;

/// A layer's name for the life of the process: layers are made a handful of times at start-up,
/// and `debug!` needs the name on every thread without a lock.
fn static_name(info: &LayerInfo) -> &'static str {
    // Interned: a name is leaked once, however often a layer is entered while configuring.
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = names.iter().find(|n| **n == info.name) {
        return name;
    }
    let name: &'static str = Box::leak(info.name.clone().into_boxed_str());
    names.push(name);
    name
}

/// Filters over a plugin, being configured.
pub struct Stack {
    plugin: (LayerInfo, Box<dyn Plugin>),
    filters: Vec<(LayerInfo, Box<dyn Filter>)>,
}

fn prefixed(layer: &LayerInfo, e: Error) -> Error {
    Error::new(e.errno, format!("{}: {}", layer.name, e.message))
}

impl Stack {
    /// A stack from registrations: the plugin's and the filters' in command-line order (client
    /// side first). Fails if `plugin` is a filter or a filter a plugin.
    pub fn from_registrations(plugin: &Registration, filters: &[&Registration]) -> std::result::Result<Self, String> {
        let p = plugin.new_plugin().ok_or_else(|| format!("{} is a filter, not a plugin", plugin.info.name))?;
        let mut fs = Vec::new();
        for f in filters {
            fs.push((
                f.info.clone(),
                f.new_filter().ok_or_else(|| format!("{} is a plugin, not a filter", f.info.name))?,
            ));
        }
        Ok(Stack { plugin: (plugin.info.clone(), p), filters: fs })
    }

    /// A stack from instances and their metadata (tests, embedding programs).
    pub fn new(plugin: (LayerInfo, Box<dyn Plugin>), filters: Vec<(LayerInfo, Box<dyn Filter>)>) -> Self {
        Stack { plugin, filters }
    }

    /// The plugin's magic key, for a bare first argument.
    pub fn magic_config_key(&self) -> Option<&str> {
        self.plugin.0.magic_config_key.as_deref()
    }

    /// `-D LAYER.FLAG=VALUE`: sets a debug flag of the filter or plugin called `layer`. Returns
    /// false when no layer has that name, and an error when the layer has no such flag.
    pub fn debug_flag(&mut self, layer: &str, flag: &str, value: i32) -> std::result::Result<bool, String> {
        let known = if let Some((i, f)) = self.filters.iter_mut().find(|(i, _)| i.name == layer) {
            let _layer = enter_layer(static_name(i));
            f.debug_flag(flag, value)
        } else if self.plugin.0.name == layer {
            let _layer = enter_layer(static_name(&self.plugin.0));
            self.plugin.1.debug_flag(flag, value)
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
        for (info, f) in &mut self.filters {
            let _layer = enter_layer(static_name(info));
            if f.config(key, value).map_err(|e| prefixed(info, e))? {
                return Ok(());
            }
        }
        let (info, plugin) = &mut self.plugin;
        let _layer = enter_layer(static_name(info));
        match plugin.config(key, value).map_err(|e| prefixed(info, e))? {
            true => Ok(()),
            false => Err(prefixed(info, unknown_parameter(key))),
        }
    }

    /// `config_complete` on every layer, then `get_ready` from the plugin up, each filter seeing
    /// the finished layers below it; returns the finished stack.
    pub fn finish(mut self) -> Result<Arc<dyn Backend>> {
        for (info, f) in &mut self.filters {
            let _layer = enter_layer(static_name(info));
            f.config_complete().map_err(|e| prefixed(info, e))?;
        }
        let (info, mut plugin) = self.plugin;
        let name = static_name(&info);
        {
            let _layer = enter_layer(name);
            plugin.config_complete().map_err(|e| prefixed(&info, e))?;
            plugin.get_ready().map_err(|e| prefixed(&info, e))?;
        }
        let mut backend: Arc<dyn Backend> = Arc::new(PluginLayer { name, plugin });
        for (info, mut filter) in self.filters.into_iter().rev() {
            let _layer = enter_layer(static_name(&info));
            filter.get_ready(&backend).map_err(|e| prefixed(&info, e))?;
            backend = Arc::new(FilterLayer { name: static_name(&info), filter, next: backend });
        }
        Ok(backend)
    }

    /// The plugin and its metadata.
    pub fn plugin(&self) -> (&LayerInfo, &dyn Plugin) {
        (&self.plugin.0, self.plugin.1.as_ref())
    }

    /// The filters and their metadata, client side first.
    pub fn filters(&self) -> impl Iterator<Item = (&LayerInfo, &dyn Filter)> {
        self.filters.iter().map(|(i, f)| (i, f.as_ref()))
    }

    /// The thread model the finished stack will have: the plugin's, then each filter's answer
    /// knowing the model below it, the most restrictive winning.
    pub fn thread_model(&self) -> ThreadModel {
        self.filters.iter().rev().fold(self.plugin.1.thread_model(), |below, (_, f)| f.thread_model(below).min(below))
    }
}

/// Opens, prepares and wraps a layer's handle, with the layer's name set for its calls.
fn open_layer(
    name: &'static str,
    args: &OpenArgs,
    open: impl FnOnce() -> Result<Box<dyn Handle>>,
) -> Result<Box<dyn Handle>> {
    let _layer = enter_layer(name);
    let handle = open()?;
    handle.prepare(args.readonly)?;
    Emulated::open(handle, name)
}

struct PluginLayer {
    name: &'static str,
    plugin: Box<dyn Plugin>,
}

impl Backend for PluginLayer {
    fn name(&self) -> &str {
        self.name
    }
    fn thread_model(&self) -> ThreadModel {
        self.plugin.thread_model()
    }
    fn after_fork(&self) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.plugin.after_fork().map_err(|e| Error::new(e.errno, format!("{}: {}", self.name, e.message)))
    }
    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.plugin.preconnect(client, readonly)
    }
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let _layer = enter_layer(self.name);
        self.plugin.list_exports(readonly, tls)
    }
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let _layer = enter_layer(self.name);
        self.plugin.default_export(readonly, tls)
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        open_layer(self.name, args, || self.plugin.open(args))
    }
    fn cleanup(&self) {
        let _layer = enter_layer(self.name);
        self.plugin.cleanup();
    }
}

struct FilterLayer {
    name: &'static str,
    filter: Box<dyn Filter>,
    next: Arc<dyn Backend>,
}

impl Backend for FilterLayer {
    fn name(&self) -> &str {
        self.name
    }
    fn thread_model(&self) -> ThreadModel {
        let below = self.next.thread_model();
        self.filter.thread_model(below).min(below)
    }
    fn after_fork(&self) -> Result<()> {
        self.next.after_fork()?;
        let _layer = enter_layer(self.name);
        self.filter.after_fork(&self.next).map_err(|e| Error::new(e.errno, format!("{}: {}", self.name, e.message)))
    }
    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        let _layer = enter_layer(self.name);
        self.filter.preconnect(self.next.as_ref(), client, readonly)
    }
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let _layer = enter_layer(self.name);
        self.filter.list_exports(self.next.as_ref(), readonly, tls)
    }
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let _layer = enter_layer(self.name);
        self.filter.default_export(self.next.as_ref(), readonly, tls)
    }
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        open_layer(self.name, args, || self.filter.open(&self.next, args))
    }
    fn cleanup(&self) {
        {
            let _layer = enter_layer(self.name);
            self.filter.cleanup();
        }
        self.next.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use nbdforge_api::{Backend, Export, Filter, Handle, Layer, LayerInfo, OpenArgs, Plugin, Result, ThreadModel};

    use super::Stack;

    type Log = Arc<Mutex<Vec<String>>>;

    struct P(Log);
    impl Layer for P {
        fn cleanup(&self) {
            self.0.lock().unwrap().push("plugin cleanup".into());
        }
    }
    impl Plugin for P {
        fn thread_model(&self) -> ThreadModel {
            ThreadModel::SerializeRequests
        }
        fn get_ready(&mut self) -> Result<()> {
            self.0.lock().unwrap().push("plugin get_ready".into());
            Ok(())
        }
        fn after_fork(&self) -> Result<()> {
            self.0.lock().unwrap().push("plugin after_fork".into());
            Ok(())
        }
        fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
            Ok("disk".into())
        }
        fn open(&self, _args: &OpenArgs) -> Result<Box<dyn Handle>> {
            unreachable!("not opened in these tests")
        }
    }

    struct F(Log, &'static str);
    impl Layer for F {
        fn cleanup(&self) {
            self.0.lock().unwrap().push(format!("{} cleanup", self.1));
        }
    }
    impl Filter for F {
        fn thread_model(&self, below: ThreadModel) -> ThreadModel {
            self.0.lock().unwrap().push(format!("{} thread_model below {}", self.1, below.as_str()));
            ThreadModel::Parallel
        }
        fn get_ready(&mut self, next: &Arc<dyn Backend>) -> Result<()> {
            let below = next.default_export(false, false)?;
            self.0.lock().unwrap().push(format!("{} get_ready, below serves '{below}'", self.1));
            Ok(())
        }
        fn after_fork(&self, next: &Arc<dyn Backend>) -> Result<()> {
            self.0.lock().unwrap().push(format!("{} after_fork over {}", self.1, next.name()));
            Ok(())
        }
        fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
            next.list_exports(readonly, tls)
        }
    }

    #[test]
    fn start_up_runs_from_the_plugin_up_and_cleanup_from_the_top_down() {
        let log = Log::default();
        let filters: Vec<(LayerInfo, Box<dyn Filter>)> = vec![
            (LayerInfo::new("outer", ""), Box::new(F(Arc::clone(&log), "outer"))),
            (LayerInfo::new("inner", ""), Box::new(F(Arc::clone(&log), "inner"))),
        ];
        let stack = Stack::new((LayerInfo::new("p", ""), Box::new(P(Arc::clone(&log)))), filters);
        assert_eq!(stack.thread_model(), ThreadModel::SerializeRequests, "a filter cannot loosen the model below");
        let backend = stack.finish().unwrap();
        assert_eq!(backend.name(), "outer");
        assert_eq!(backend.thread_model(), ThreadModel::SerializeRequests);
        backend.after_fork().unwrap();
        backend.cleanup();
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "inner thread_model below serialize_requests",
                "outer thread_model below serialize_requests",
                "plugin get_ready",
                "inner get_ready, below serves 'disk'",
                "outer get_ready, below serves 'disk'",
                "inner thread_model below serialize_requests",
                "outer thread_model below serialize_requests",
                "plugin after_fork",
                "inner after_fork over p",
                "outer after_fork over inner",
                "outer cleanup",
                "inner cleanup",
                "plugin cleanup",
            ]
        );
    }

    #[test]
    fn a_parameter_no_layer_takes_names_the_plugin() {
        let mut stack = Stack::new((LayerInfo::new("p", ""), Box::new(P(Log::default()))), Vec::new());
        assert_eq!(stack.config("colour", "red").unwrap_err().message, "p: unknown parameter 'colour'");
    }
}
