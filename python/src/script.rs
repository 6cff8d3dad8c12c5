//! The embedded interpreter and the script it runs: starting CPython once per process with the
//! `nbdkit` module importable, running the script as `__main__`, finding its callbacks by name
//! and calling them, and turning a Python exception into the errno and message the client and
//! the log get (nbdkit-python-plugin(3): `EIO` unless the script called `nbdkit.set_error`;
//! the whole traceback goes to the log).

use std::path::{Path, PathBuf};
use std::sync::Once;

use nbdforge_api::{absolute_path, Error, Result};
use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyModule, PyString};

use crate::module;

/// The API versions a script may ask for with `API_VERSION`.
pub const MAX_API_VERSION: i64 = 2;

/// Starts the interpreter, once per process. Its signal handlers stay off: the server owns
/// signals. The GIL is released afterwards; every call takes it with `Python::attach`.
pub fn start() {
    static START: Once = Once::new();
    START.call_once(|| {
        use module::nbdkit;
        pyo3::append_to_inittab!(nbdkit);
        Python::initialize();
    });
}

/// A loaded script: its `__main__` module and the API version it declared.
pub struct Script {
    /// The file, as the user named it (for messages).
    pub name: String,
    main: Py<PyModule>,
    /// 1 or 2: how `pread`, `pwrite`, `flush`, `trim` and `zero` are called.
    pub api_version: i64,
}

impl Script {
    /// Runs the file `value` (parameter `key`) as `__main__` and checks that it is a plugin.
    pub fn load(key: &str, value: &str) -> Result<Script> {
        let path: PathBuf = absolute_path(key, value)?;
        let source =
            std::fs::read(&path).map_err(|e| Error::from_io(format!("{key}={value}: cannot open file"), &e))?;
        start();
        Python::attach(|py| {
            let main = run_as_main(py, &path, source).map_err(|e| {
                log_traceback(py, value, "load", &e);
                Error::invalid(format!("{key}={value}: error running this script: {e}"))
            })?;
            let script = Script { name: value.to_string(), main: main.unbind(), api_version: 1 };
            if ["open", "get_size", "pread"].iter().any(|name| script.callback(py, name).is_none()) {
                return Err(Error::invalid(format!(
                    "{value}: one of the required callbacks 'open', 'get_size' or 'pread' is not defined by this \
                     Python script"
                )));
            }
            let api_version = script.api_version(py)?;
            nbdforge_api::debug!("{value}: API_VERSION {api_version}");
            Ok(Script { api_version, ..script })
        })
    }

    fn api_version(&self, py: Python<'_>) -> Result<i64> {
        let main = self.main.bind(py);
        let value = match main.getattr_opt(pyo3::intern!(py, "API_VERSION")) {
            Ok(Some(v)) => v,
            _ => return Ok(1),
        };
        match value.extract::<i64>() {
            Ok(v) if (1..=MAX_API_VERSION).contains(&v) => Ok(v),
            _ => Err(Error::invalid(format!(
                "{}: API_VERSION={value}: this plugin supports API versions 1 to {MAX_API_VERSION}",
                self.name
            ))),
        }
    }

    /// The script's function `name`, if it defines one (something not callable does not count).
    pub fn callback<'py>(&self, py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
        let f = self.main.bind(py).getattr_opt(PyString::intern(py, name)).ok().flatten()?;
        if f.is_callable() {
            Some(f)
        } else {
            nbdforge_api::debug!("{}: {name} is not callable", self.name);
            None
        }
    }

    /// Calls the script's `name(*args)` and converts what it returns with `convert`, if the
    /// script defines it: `Ok(None)` when it does not. A Python exception (from the call or the
    /// conversion) becomes an [`Error`].
    pub fn call<'py, R>(
        &self,
        py: Python<'py>,
        name: &str,
        args: impl PyCallArgs<'py>,
        convert: impl FnOnce(Bound<'py, PyAny>) -> PyResult<R>,
    ) -> Result<Option<R>> {
        match self.try_call(py, name, args) {
            None => Ok(None),
            Some(r) => r.and_then(convert).map(Some).map_err(|e| self.failure(py, name, &e)),
        }
    }

    /// Calls the script's `name(*args)` if it defines it, with the errno of `set_error` cleared
    /// first; the exception, if any, is the caller's to handle.
    pub fn try_call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: impl PyCallArgs<'py>,
    ) -> Option<PyResult<Bound<'py, PyAny>>> {
        let f = self.callback(py, name)?;
        module::clear_errno();
        Some(f.call1(args))
    }

    /// The error for an exception raised by (or while handling the result of) `callback`: the
    /// errno the script set, else `EIO`; the traceback is logged.
    pub fn failure(&self, py: Python<'_>, callback: &str, e: &PyErr) -> Error {
        let errno = module::take_errno().unwrap_or(libc::EIO);
        log_traceback(py, &self.name, callback, e);
        Error::new(errno, format!("{}: {callback}: {e}", self.name))
    }

    /// Runs what a script left for the end of the process: its `atexit` handlers, and the output
    /// Python still buffers (the interpreter is never finalized, which would do both).
    pub fn at_exit(&self) {
        Python::attach(|py| {
            if let Err(e) = PyModule::import(py, "atexit").and_then(|m| m.call_method0("_run_exitfuncs")) {
                log_traceback(py, &self.name, "atexit", &e);
            }
            flush_stdio(py);
        });
    }
}

/// Runs the file as the `__main__` module, as `python3 FILE` would (the source is compiled from
/// bytes, so a coding declaration in it is honoured).
fn run_as_main<'py>(py: Python<'py>, path: &Path, source: Vec<u8>) -> PyResult<Bound<'py, PyModule>> {
    let main = PyModule::import(py, "__main__")?;
    let globals = main.dict();
    let file = path.to_string_lossy();
    globals.set_item("__file__", &*file)?;
    let builtins = PyModule::import(py, "builtins")?;
    let code = builtins.call_method1("compile", (PyBytes::new(py, &source), &*file, "exec"))?;
    let ran = builtins.call_method1("exec", (code, globals));
    flush_stdio(py);
    ran?;
    Ok(main)
}

/// Writes out what the script printed so far (Python buffers standard output when it is not a
/// terminal, and nothing else would flush it).
pub fn flush_stdio(py: Python<'_>) {
    if let Ok(sys) = PyModule::import(py, "sys") {
        for name in ["stdout", "stderr"] {
            if let Ok(Some(f)) = sys.getattr_opt(name) {
                let _ = f.call_method0("flush");
            }
        }
    }
}

/// Logs the whole traceback of `e`, as nbdkit does: `SCRIPT: CALLBACK: error: Traceback ...`.
fn log_traceback(py: Python<'_>, script: &str, callback: &str, e: &PyErr) {
    let formatted = PyModule::import(py, "traceback")
        .and_then(|tb| tb.call_method1("format_exception", (e.get_type(py), e.value(py), e.traceback(py))))
        .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)))
        .and_then(|s| s.extract::<String>());
    let text = formatted.unwrap_or_else(|_| e.to_string());
    tracing::error!("python: {script}: {callback}: error: {}", text.trim_end());
}
