//! The `nbdkit` module a script imports (nbdkit-python-plugin(3)): the server's functions and the
//! constants of the callbacks' arguments and results, with nbdkit's values.
//!
//! The functions that concern "the current connection" (`export_name`, `is_tls`, `disconnect`)
//! and the errno set by `set_error` are per thread, as in nbdkit: the plugin marks the connection
//! a callback runs for with [`CallContext::enter`] and reads the errno with [`take_errno`].

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use nbdforge_api::Connection;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// nbdkit's values of the request flags (`NBDKIT_FLAG_*`), which differ from the SDK's.
pub mod flag {
    pub const MAY_TRIM: u32 = 1 << 0;
    pub const FUA: u32 = 1 << 1;
    pub const REQ_ONE: u32 = 1 << 2;
    pub const FAST_ZERO: u32 = 1 << 3;
}

/// The connection a callback runs for, as `export_name`, `is_tls` and `disconnect` see it.
#[derive(Debug)]
pub struct CallContext {
    pub conn: Arc<Connection>,
    pub export_name: String,
    pub tls: bool,
}

thread_local! {
    static CONTEXT: RefCell<Option<Arc<CallContext>>> = const { RefCell::new(None) };
    static ERRNO: Cell<i32> = const { Cell::new(0) };
}

/// Restores the previous context when dropped.
pub struct Entered(Option<Arc<CallContext>>);

impl CallContext {
    /// Makes `ctx` (or no connection) the current one on this thread until the guard drops.
    pub fn enter(ctx: Option<&Arc<CallContext>>) -> Entered {
        Entered(CONTEXT.with(|c| c.replace(ctx.cloned())))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        CONTEXT.with(|c| *c.borrow_mut() = self.0.take());
    }
}

fn current() -> Option<Arc<CallContext>> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// Forgets the errno of an earlier callback (before each call).
pub fn clear_errno() {
    ERRNO.with(|e| e.set(0));
}

/// The errno the script gave `set_error` during the last call, if any, left in place.
pub fn errno() -> Option<i32> {
    Some(ERRNO.with(Cell::get)).filter(|&e| e != 0)
}

/// The errno the script gave `set_error` during the last call, if any.
pub fn take_errno() -> Option<i32> {
    Some(ERRNO.with(|e| e.replace(0))).filter(|&e| e != 0)
}

#[pymodule]
#[pyo3(name = "nbdkit")]
pub mod nbdkit {
    use super::*;

    #[pymodule_export]
    const THREAD_MODEL_SERIALIZE_CONNECTIONS: i32 = 0;
    #[pymodule_export]
    const THREAD_MODEL_SERIALIZE_ALL_REQUESTS: i32 = 1;
    #[pymodule_export]
    const THREAD_MODEL_SERIALIZE_REQUESTS: i32 = 2;
    #[pymodule_export]
    const THREAD_MODEL_PARALLEL: i32 = 3;

    #[pymodule_export]
    const FLAG_MAY_TRIM: u32 = flag::MAY_TRIM;
    #[pymodule_export]
    const FLAG_FUA: u32 = flag::FUA;
    #[pymodule_export]
    const FLAG_REQ_ONE: u32 = flag::REQ_ONE;
    #[pymodule_export]
    const FLAG_FAST_ZERO: u32 = flag::FAST_ZERO;

    #[pymodule_export]
    const FUA_NONE: i32 = 0;
    #[pymodule_export]
    const FUA_EMULATE: i32 = 1;
    #[pymodule_export]
    const FUA_NATIVE: i32 = 2;

    #[pymodule_export]
    const CACHE_NONE: i32 = 0;
    #[pymodule_export]
    const CACHE_EMULATE: i32 = 1;
    #[pymodule_export]
    const CACHE_NATIVE: i32 = 2;

    #[pymodule_export]
    const EXTENT_HOLE: u32 = nbdforge_api::extents::HOLE;
    #[pymodule_export]
    const EXTENT_ZERO: u32 = nbdforge_api::extents::ZERO;

    /// Logs a debug message (shown with -v).
    #[pyfunction]
    fn debug(msg: &str) {
        nbdforge_api::debug!("{msg}");
    }

    /// Records the errno the client gets for the exception the script is about to raise.
    #[pyfunction]
    fn set_error(err: i32) {
        ERRNO.with(|e| e.set(err));
    }

    /// The export name the client asked for.
    #[pyfunction]
    fn export_name() -> PyResult<String> {
        current()
            .map(|c| c.export_name.clone())
            .ok_or_else(|| PyRuntimeError::new_err("nbdkit.export_name: no connection in this callback"))
    }

    /// Whether the connection is protected by TLS.
    #[pyfunction]
    fn is_tls() -> PyResult<bool> {
        current()
            .map(|c| c.tls || c.conn.is_tls())
            .ok_or_else(|| PyRuntimeError::new_err("nbdkit.is_tls: no connection in this callback"))
    }

    /// Asks the server to shut down, as a signal would.
    #[pyfunction]
    fn shutdown() {
        nbdforge_api::server::shutdown();
    }

    /// Asks the server to drop the current client: at once with `force`, otherwise after the
    /// requests in flight.
    #[pyfunction]
    fn disconnect(force: bool) {
        match current() {
            Some(c) => c.conn.disconnect(force),
            None => nbdforge_api::debug!("nbdkit.disconnect: no connection in this callback"),
        }
    }

    /// Parses a size with nbdkit's suffixes (`100M`, `1G`, `2s`).
    #[pyfunction]
    fn parse_size(s: &str) -> PyResult<u64> {
        nbdforge_api::parse_size("size", s).map_err(|e| PyValueError::new_err(e.message))
    }

    /// Parses a probability (`0.1`, `10%`, `1:10`, `1/10`); `what` names it in the error.
    #[pyfunction]
    fn parse_probability(what: &str, s: &str) -> PyResult<f64> {
        nbdforge_api::parse_probability(what, s).map_err(|e| PyValueError::new_err(e.message))
    }
}
