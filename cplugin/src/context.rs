//! What the `nbdkit_*` functions a C plugin calls need to know about the call they are made
//! from: the connection (for `nbdkit_export_name`, `nbdkit_peer_*`, `nbdkit_disconnect`), the
//! error the plugin reported (`nbdkit_error`, `nbdkit_set_error`), and where interned strings
//! live. nbdkit keeps this in thread-locals around each callback; so do we. Safe code only.

use std::cell::RefCell;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock};

use nbdforge_api::{ClientInfo, Connection};

/// Strings handed out by `nbdkit_strdup_intern` and friends, kept until the connection (or,
/// outside one, the process) ends. A `CString`'s bytes do not move when the vector grows.
#[derive(Default)]
pub(crate) struct Arena(Mutex<Vec<CString>>);

impl Arena {
    /// Keeps `s` and returns the address of its bytes, valid as long as the arena.
    pub(crate) fn keep(&self, s: CString) -> *const std::ffi::c_char {
        let p = s.as_ptr();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        p
    }
}

/// The arena of calls made outside any connection (configuration, `get_ready`).
pub(crate) fn global_arena() -> &'static Arena {
    static GLOBAL: OnceLock<Arena> = OnceLock::new();
    GLOBAL.get_or_init(Arena::default)
}

/// A connection as the plugin's callbacks see it.
#[derive(Default)]
pub(crate) struct ConnContext {
    pub conn: Option<Arc<Connection>>,
    /// Who the client is, when there is no connection object yet (`preconnect`).
    pub client: Option<ClientInfo>,
    pub export_name: Option<CString>,
    pub tls: bool,
    pub arena: Arena,
}

impl ConnContext {
    pub(crate) fn client(&self) -> Option<&ClientInfo> {
        self.client.as_ref().or_else(|| self.conn.as_ref().map(|c| c.client()))
    }
}

#[derive(Default)]
struct State {
    conn: Option<Arc<ConnContext>>,
    error: Option<String>,
    errno: Option<i32>,
    in_call: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// One callback into the plugin: the context is set for its duration and what it reported is
/// collected at the end.
pub(crate) struct Call {
    saved: Option<Arc<ConnContext>>,
    was_in_call: bool,
}

/// What a callback reported through `nbdkit_error` and `nbdkit_set_error`.
pub(crate) struct Reported {
    pub message: Option<String>,
    pub errno: Option<i32>,
}

impl Call {
    pub(crate) fn begin(conn: Option<Arc<ConnContext>>) -> Call {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.error = None;
            s.errno = None;
            let was_in_call = std::mem::replace(&mut s.in_call, true);
            let saved = std::mem::replace(&mut s.conn, conn);
            Call { saved, was_in_call }
        })
    }

    pub(crate) fn finish(self) -> Reported {
        let r = STATE.with(|s| {
            let mut s = s.borrow_mut();
            Reported { message: s.error.take(), errno: s.errno.take() }
        });
        drop(self);
        r
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let saved = self.saved.take();
        let was = self.was_in_call;
        let _ = STATE.try_with(|s| {
            let mut s = s.borrow_mut();
            s.conn = saved;
            s.in_call = was;
        });
    }
}

/// The connection of the callback running on this thread.
pub(crate) fn current() -> Option<Arc<ConnContext>> {
    STATE.with(|s| s.borrow().conn.clone())
}

/// `nbdkit_error`: kept for the failing callback's error, or logged at once outside a callback
/// (a plugin's own thread).
pub(crate) fn report_error(message: String) {
    let logged = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.in_call {
            // Several errors in one call: the last is the one that explains the failure; the
            // earlier ones are still worth a line in the log.
            if let Some(old) = s.error.replace(message) {
                return Some(old);
            }
            None
        } else {
            Some(message)
        }
    });
    if let Some(m) = logged {
        tracing::error!("{}: {m}", plugin_name());
    }
}

/// `nbdkit_set_error`.
pub(crate) fn set_errno(errno: i32) {
    STATE.with(|s| s.borrow_mut().errno = Some(errno));
}

/// The name messages are prefixed with: the layer running, or the C plugin loaded.
pub(crate) fn plugin_name() -> String {
    let layer = nbdforge_api::context::current_layer();
    if !layer.is_empty() {
        return layer.to_string();
    }
    LOADED.get().cloned().unwrap_or_else(|| "plugin".into())
}

static LOADED: OnceLock<String> = OnceLock::new();

/// Remembers the name of the first C plugin loaded, for messages outside any layer's call.
pub(crate) fn set_plugin_name(name: &str) {
    let _ = LOADED.set(name.to_string());
}
