//! Plugins and filters as the server loads them: configured once from `key=value` parameters, then
//! opened once per client connection.
//!
//! Life of a stack: each filter (client side first) and then the plugin is created; every parameter
//! from the command line is offered to the filters in order and the first that takes it keeps it,
//! otherwise the plugin gets it; `config_complete` runs on each; `get_ready` runs before the server
//! listens. Per connection the server calls `open` on the outermost layer, which opens the next layer
//! through the [`Backend`] it is given, and so on down to the plugin.

use crate::{Error, Export, Handle, Result, ThreadModel};

/// What the server knows about a connection when it opens the stack for it.
#[derive(Debug, Clone, Copy)]
pub struct OpenArgs<'a> {
    /// The export must be served read-only (`-r`, or a filter above asked for it).
    pub readonly: bool,
    /// The export name the client asked for (after default-export resolution by the server).
    pub export_name: &'a str,
    /// The connection is protected by TLS.
    pub tls: bool,
    /// Who the client is.
    pub client: &'a ClientInfo,
}

/// The client of a connection.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The peer's address as text (`127.0.0.1:41234`, a Unix socket path, or empty for stdin).
    pub peer: String,
    /// The identity proven during the TLS handshake: a PSK username, or the subject of the client
    /// certificate under `--tls-verify-peer`.
    pub tls_identity: Option<String>,
}

/// A plugin: the bottom of a stack, where the data lives.
///
/// Write the plugin as plain blocking Rust; the server owns the protocol, the threads, the locking
/// the [`ThreadModel`] calls for, and the emulation of what the plugin's [`Handle`] lacks.
pub trait Plugin: Send + Sync + 'static {
    /// Short name, as typed on the command line (`memory`).
    fn name(&self) -> &'static str;

    /// One line saying what the plugin is, printed by `--help` and `--dump-plugin`.
    fn description(&self) -> &'static str {
        ""
    }

    /// Version printed by `nbdforge PLUGIN --version`.
    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Help for the plugin's parameters, printed by `nbdforge PLUGIN --help`. One parameter per
    /// line: `size=<SIZE>  (required) Size of the RAM disk.`
    fn config_help(&self) -> &'static str {
        ""
    }

    /// Sets one of the plugin's debug flags from `-D NAME.FLAG=VALUE`, before any `config`.
    /// Returns false for a flag the plugin does not have. Flags only change what is logged at
    /// debug level (`-v`).
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        let _ = (flag, value);
        false
    }

    /// The key a bare first argument stands for (`nbdforge memory 1G` means `size=1G`).
    fn magic_config_key(&self) -> Option<&'static str> {
        None
    }

    /// Takes one `key=value` parameter. Errors should read `key=value: what is wrong`.
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let _ = value;
        Err(Error::invalid(format!("unknown parameter '{key}'")))
    }

    /// Called once every parameter is in: check required ones and cross-parameter rules.
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// Extra `key=value` lines for `--dump-plugin`.
    fn dump_plugin(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The concurrency the plugin's handles tolerate.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Last preparation before the server listens (open files, allocate, check access).
    fn get_ready(&mut self) -> Result<()> {
        Ok(())
    }

    /// The exports offered to `NBD_OPT_LIST`.
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        Ok(vec![Export::named(self.default_export(readonly, tls)?)])
    }

    /// The canonical name of the default export (what `""` means).
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let _ = (readonly, tls);
        Ok(String::new())
    }

    /// Opens a connection's handle.
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>>;
}

/// A filter: a layer between the client and the plugin that changes requests or replies.
///
/// Its handle owns the handle of the layer below (opened through `next.open`) and returns it from
/// [`Handle::next`]; whatever the handle does not override passes through.
pub trait Filter: Send + Sync + 'static {
    /// Short name, as given to `--filter=NAME`.
    fn name(&self) -> &'static str;

    /// One line saying what the filter does.
    fn description(&self) -> &'static str {
        ""
    }

    /// Version printed by `nbdforge --filter=NAME PLUGIN --version`.
    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Help for the filter's parameters.
    fn config_help(&self) -> &'static str {
        ""
    }

    /// Sets one of the filter's debug flags from `-D NAME.FLAG=VALUE`; see [`Plugin::debug_flag`].
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        let _ = (flag, value);
        false
    }

    /// Offered every parameter before layers below it. Returns `Ok(true)` if the filter took it,
    /// `Ok(false)` to pass it down.
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let _ = (key, value);
        Ok(false)
    }

    /// Called once every parameter is in.
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// The concurrency the filter's handles tolerate.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Last preparation before the server listens.
    fn get_ready(&mut self) -> Result<()> {
        Ok(())
    }

    /// The exports offered to `NBD_OPT_LIST`.
    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        next.list_exports(readonly, tls)
    }

    /// The canonical name of the default export.
    fn default_export(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<String> {
        next.default_export(readonly, tls)
    }

    /// Opens a connection's handle. The default opens the layer below and adds nothing.
    fn open(&self, next: &dyn Backend, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        next.open(args)
    }
}

/// A configured stack seen from above: a plugin, or a filter over the rest of the stack. The server
/// builds it; filters receive the part below them as `next`.
pub trait Backend: Send + Sync {
    /// The name of the top layer.
    fn name(&self) -> &str;
    /// The most restrictive thread model of this layer and everything below.
    fn thread_model(&self) -> ThreadModel;
    /// See [`Plugin::list_exports`].
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>>;
    /// See [`Plugin::default_export`].
    fn default_export(&self, readonly: bool, tls: bool) -> Result<String>;
    /// Opens this layer and everything below for one connection. The handle returned emulates
    /// what the layer lacks (zero, FUA, cache, extents), so a filter can call any method of it.
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>>;
}
