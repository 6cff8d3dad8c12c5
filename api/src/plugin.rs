//! Plugins and filters as the server runs them: configured once from `key=value` parameters, then
//! opened once per client connection.
//!
//! Life of a stack (nbdkit's order):
//! 1. each layer is made from its [`Registration`](crate::Registration); every parameter from the
//!    command line is offered to the filters in order (client side first) and the first that
//!    takes it keeps it, otherwise the plugin gets it; `config_complete` runs on each;
//! 2. `get_ready` runs from the plugin upwards, each filter seeing the finished layer below;
//!    the server forks into the background if asked, then `after_fork` runs;
//! 3. per connection: `preconnect` before the handshake, with who the client is; `open` on the
//!    outermost layer, which opens the next through the [`Backend`] it is given, down to the
//!    plugin; each handle's `prepare` runs right after its open, the plugin's first; at the end
//!    `finalize` runs from the outermost down, then the handles are dropped (closed);
//! 4. `cleanup` on each layer when the server exits.

use std::sync::Arc;

use crate::{ClientInfo, Connection, Error, Export, Handle, Layer, Result, ThreadModel};

/// What a layer is told when it is opened for a connection. It is owned, so a filter can keep a
/// copy to reopen the layer below later.
#[derive(Debug, Clone)]
pub struct OpenArgs {
    /// The export must be served read-only (`-r`, or a filter above asked for it).
    pub readonly: bool,
    /// The export name the client asked for (`""` resolved to the default export by the server).
    pub export_name: String,
    /// The connection is protected by TLS.
    pub tls: bool,
    /// The connection: who the client is, its id, and requests to the server about it.
    pub conn: Arc<Connection>,
}

impl OpenArgs {
    /// Arguments for a connection that is not on the network (tests, tools).
    pub fn local(export_name: &str, readonly: bool) -> Self {
        OpenArgs { readonly, export_name: export_name.to_string(), tls: false, conn: Connection::detached() }
    }

    /// The same arguments, read-only (a filter reopening the layer below for reading only).
    pub fn read_only(&self) -> Self {
        OpenArgs { readonly: true, ..self.clone() }
    }
}

/// A plugin: the bottom of a stack, where the data lives.
///
/// Write the plugin as plain blocking Rust; the server owns the protocol, the threads, the locking
/// the [`ThreadModel`] calls for, and the emulation of what the plugin's [`Handle`] lacks.
pub trait Plugin: Layer {
    /// The concurrency the plugin's handles tolerate.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Last preparation before the server listens (open files, allocate, check access).
    fn get_ready(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called once the server is in the background (after the fork), before any connection:
    /// start threads here, not in `get_ready`, since threads do not survive a fork.
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }

    /// Called for every connection before the handshake. An error refuses the client.
    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        let _ = (client, readonly);
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
/// Its handle usually owns one handle of the layer below (from `next.open(args)`) and returns it
/// from [`Handle::next`], so whatever the handle does not override passes through. It may also
/// keep `next` (an `Arc`) and `args` to open the layer below again: a second context, a reopen
/// after a failure, a read-only reopen.
pub trait Filter: Layer {
    /// The concurrency the filter's handles tolerate, knowing the model of the layers below
    /// (`below`). The server takes the most restrictive of the answer and `below`.
    fn thread_model(&self, below: ThreadModel) -> ThreadModel {
        below
    }

    /// Last preparation before the server listens; the layers below are ready.
    fn get_ready(&mut self, next: &Arc<dyn Backend>) -> Result<()> {
        let _ = next;
        Ok(())
    }

    /// Called once the server is in the background, after the layers below ran theirs.
    fn after_fork(&self, next: &Arc<dyn Backend>) -> Result<()> {
        let _ = next;
        Ok(())
    }

    /// Called for every connection before the handshake; the default asks the layer below. An
    /// error refuses the client.
    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        next.preconnect(client, readonly)
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
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        next.open(args)
    }
}

/// A configured stack seen from above: a plugin, or a filter over the rest of the stack. The server
/// builds it; filters receive the part below them as `next`. A stand-in for the layers below in a
/// filter's unit tests implements `name` and `open`; the other methods default to what a plain
/// plugin does.
pub trait Backend: Send + Sync {
    /// The name of the top layer.
    fn name(&self) -> &str;
    /// The most restrictive thread model of this layer and everything below.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }
    /// Runs `after_fork` on this layer and everything below, the plugin first.
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }
    /// See [`Plugin::preconnect`]. The default lets every client in.
    fn preconnect(&self, _client: &ClientInfo, _readonly: bool) -> Result<()> {
        Ok(())
    }
    /// See [`Plugin::default_export`]. The default is `""`.
    fn default_export(&self, _readonly: bool, _tls: bool) -> Result<String> {
        Ok(String::new())
    }
    /// See [`Plugin::list_exports`]. The default lists the default export alone.
    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        Ok(vec![Export::named(self.default_export(readonly, tls)?)])
    }
    /// Opens (and prepares) this layer and everything below for one connection. The handle
    /// returned emulates what the layer lacks (zero, FUA, cache, extents), so a filter can call any
    /// method of it. Call [`Handle::finalize`] on it before dropping it when the data must be
    /// durable (the server does for the handles it opens).
    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>>;
    /// Runs `cleanup` on this layer and everything below, the outermost first.
    fn cleanup(&self) {}
}

/// An error for a parameter no layer took.
pub fn unknown_parameter(key: &str) -> Error {
    Error::invalid(format!("unknown parameter '{key}'"))
}
