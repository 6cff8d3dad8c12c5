//! # nbdforge-python: the `python` plugin
//!
//! `nbdforge python SCRIPT.py [key=value]...` runs a plugin written in Python with nbdkit's
//! Python plugin API (nbdkit-python-plugin(3), `API_VERSION` 1 and 2), in an interpreter
//! embedded in the server: the same scripts run unchanged under nbdkit and nbdforge.
//!
//! This file is the policy: which script function answers which SDK call, with which arguments
//! in each API version, and what a script that leaves a function out gets (nbdkit's defaults:
//! `can_write` is "pwrite is defined", `can_fua` is "emulate if flush is defined", and so on).
//! Beside it: `script` (the interpreter, loading the script, calling it, exceptions to errors),
//! `module` (the `nbdkit` module scripts import) and `views` (`memoryview`s over the server's
//! buffers, the only `unsafe`).
//!
//! The plugin is a crate of its own rather than a file of `nbdforge-plugins` because pyo3 links
//! libpython3 and probes the interpreter at build time; the other plugins stay pure Rust.
//!
//! Concurrency is the script's choice (`thread_model()`, by default
//! `THREAD_MODEL_SERIALIZE_ALL_REQUESTS` as in nbdkit); the server enforces it. Under
//! `THREAD_MODEL_PARALLEL` several server threads call the script, each taking the GIL for the
//! call, so Python runs one at a time but a callback that blocks outside the GIL (I/O, sleeps)
//! lets the others run.

#![warn(missing_docs)]

mod module;
mod script;
mod views;

use std::sync::Arc;

use nbdforge_api::{
    BlockSize, Capabilities, ClientInfo, Error, Export, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin,
    Registration, Result, Support, ThreadModel,
};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use module::{flag, CallContext};
use script::Script;

/// The plugins this crate adds to the server's table.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// The `python` plugin's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("python", "a plugin written in Python, with nbdkit's Python plugin API")
        .help(
            "script=<FILENAME>     (required) The Python plugin to run.\n\
             [other arguments may be used by the plugin that you load]",
        )
        .magic("script");
    Registration::plugin(info, PythonPlugin::default)
}

/// The `python` plugin: `script=` first, then the script's own parameters.
#[derive(Default)]
pub struct PythonPlugin {
    script: Option<Arc<Script>>,
    thread_model: Option<ThreadModel>,
}

impl PythonPlugin {
    fn script(&self) -> Result<&Arc<Script>> {
        self.script.as_ref().ok_or_else(|| Error::invalid("the script parameter is required (script=<FILENAME>)"))
    }

    /// Calls a script function that returns nothing, if the script defines it.
    fn call_plain(&self, name: &str, args: impl for<'py> pyo3::call::PyCallArgs<'py>) -> Result<()> {
        let script = self.script()?;
        Python::attach(|py| script.call(py, name, args, |_| Ok(()))).map(|_| ())
    }
}

impl Layer for PythonPlugin {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(script) = &self.script else {
            if key != "script" {
                return Err(Error::invalid(format!(
                    "{key}={value}: the first parameter must be script=/path/to/python/script.py"
                )));
            }
            self.script = Some(Arc::new(Script::load(key, value)?));
            return Ok(true);
        };
        let _ctx = CallContext::enter(None);
        Python::attach(|py| script.call(py, "config", (key, value), |_| Ok(())))
            .map_err(|e| Error::new(e.errno, format!("{key}={value}: {}", e.message)))?
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{key}={value}: {}: this plugin does not need command line configuration",
                    script.name
                ))
            })?;
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let script = Arc::clone(self.script()?);
        Python::attach(|py| {
            script.call(py, "config_complete", (), |_| Ok(()))?;
            let model = script.call(py, "thread_model", (), |r| r.extract::<i64>())?;
            self.thread_model = Some(match model {
                None | Some(1) => ThreadModel::SerializeAllRequests,
                Some(0) => ThreadModel::SerializeConnections,
                Some(2) => ThreadModel::SerializeRequests,
                Some(3) => ThreadModel::Parallel,
                Some(n) => {
                    return Err(Error::invalid(format!(
                        "{}: thread_model returned {n}, not one of nbdkit.THREAD_MODEL_*",
                        script.name
                    )))
                }
            });
            script::flush_stdio(py);
            Ok(())
        })
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        script::start();
        Python::attach(|py| {
            let v = py.version_info();
            let lines = vec![
                ("python_version".to_string(), format!("{}.{}.{}", v.major, v.minor, v.patch)),
                ("python_pep_384_abi_version".to_string(), "3".to_string()),
                ("nbdkit_python_maximum_api_version".to_string(), script::MAX_API_VERSION.to_string()),
            ];
            if let Some(script) = &self.script {
                // The script prints its own lines; ours are printed after them.
                let _ = script.call(py, "dump_plugin", (), |_| Ok(()));
                script::flush_stdio(py);
            }
            lines
        })
    }

    fn cleanup(&self) {
        if let Some(script) = &self.script {
            if let Err(e) = self.call_plain("cleanup", ()) {
                tracing::error!("python: {}", e.message);
            }
            script.at_exit();
        }
    }
}

impl Plugin for PythonPlugin {
    fn thread_model(&self) -> ThreadModel {
        self.thread_model.unwrap_or(ThreadModel::SerializeAllRequests)
    }

    fn get_ready(&mut self) -> Result<()> {
        self.call_plain("get_ready", ())
    }

    fn after_fork(&self) -> Result<()> {
        self.call_plain("after_fork", ())
    }

    fn preconnect(&self, _client: &ClientInfo, readonly: bool) -> Result<()> {
        let _ctx = CallContext::enter(None);
        self.call_plain("preconnect", (readonly,))
    }

    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let script = self.script()?;
        let _ctx = CallContext::enter(None);
        let listed = Python::attach(|py| {
            script.call(py, "list_exports", (readonly, tls), |r| {
                let mut exports = Vec::new();
                for item in r.try_iter()? {
                    let item = item?;
                    exports.push(match text(&item) {
                        Some(name) => Export::named(name),
                        None => {
                            let (name, description) = item.extract::<(Bound<PyAny>, Bound<PyAny>)>().map_err(|_| {
                                pyo3::exceptions::PyTypeError::new_err(
                                    "list_exports must return an iterable of names or (name, description) tuples",
                                )
                            })?;
                            let (Some(name), Some(description)) = (text(&name), text(&description)) else {
                                return Err(pyo3::exceptions::PyTypeError::new_err(
                                    "list_exports must return names and descriptions as strings",
                                ));
                            };
                            Export { name, description: Some(description) }
                        }
                    });
                }
                Ok(exports)
            })
        })?;
        match listed {
            Some(exports) => Ok(exports),
            None => Ok(vec![Export::named(self.default_export(readonly, tls)?)]),
        }
    }

    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let script = self.script()?;
        let _ctx = CallContext::enter(None);
        let name = Python::attach(|py| {
            script.call(py, "default_export", (readonly, tls), |r| {
                text(&r).ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("default_export must return a string"))
            })
        })?;
        Ok(name.unwrap_or_default())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let script = Arc::clone(self.script()?);
        let ctx = Arc::new(CallContext {
            conn: Arc::clone(&args.conn),
            export_name: args.export_name.clone(),
            tls: args.tls,
        });
        let _ctx = CallContext::enter(Some(&ctx));
        let h = Python::attach(|py| script.call(py, "open", (args.readonly,), |h| Ok(h.unbind())))?
            .ok_or_else(|| missing(&script, "open"))?;
        Ok(Box::new(PythonHandle { script, h: Some(h), ctx }))
    }
}

/// A string from a script: `str`, or `bytes` taken as UTF-8.
fn text(v: &Bound<'_, PyAny>) -> Option<String> {
    if let Ok(s) = v.cast::<PyString>() {
        return s.to_str().ok().map(str::to_string);
    }
    v.cast::<PyBytes>().ok().map(|b| String::from_utf8_lossy(b.as_bytes()).into_owned())
}

fn missing(script: &Script, name: &str) -> Error {
    Error::io(format!("{}: missing callback: {name}", script.name))
}

/// The SDK's request flags in nbdkit's encoding, which scripts test against `nbdkit.FLAG_*`.
fn nbdkit_flags(flags: Flags) -> u32 {
    [(Flags::MAY_TRIM, flag::MAY_TRIM), (Flags::FUA, flag::FUA), (Flags::REQ_ONE, flag::REQ_ONE)]
        .into_iter()
        .chain([(Flags::FAST_ZERO, flag::FAST_ZERO)])
        .filter(|(ours, _)| flags.contains(*ours))
        .fold(0, |bits, (_, theirs)| bits | theirs)
}

/// The block sizes nbdkit accepts from a plugin: a minimum that is a power of two up to 64 KiB,
/// a preferred size that is a power of two from 512 bytes to 32 MiB, a maximum that is a
/// multiple of the minimum (or 0xffffffff, no limit), in that order.
fn check_block_size((minimum, preferred, maximum): (u32, u32, u32)) -> std::result::Result<BlockSize, &'static str> {
    if !minimum.is_power_of_two() || minimum > 65536 {
        return Err("the minimum must be a power of two between 1 and 64K");
    }
    if !preferred.is_power_of_two() || !(512..=32 << 20).contains(&preferred) {
        return Err("the preferred size must be a power of two between 512 and 32M");
    }
    if maximum != u32::MAX && maximum % minimum != 0 {
        return Err("the maximum must be a multiple of the minimum, or 0xffffffff");
    }
    if minimum > preferred || preferred > maximum {
        return Err("they must be minimum <= preferred <= maximum");
    }
    Ok(BlockSize { minimum, preferred, maximum })
}

/// One connection: the object the script's `open` returned, passed to every other call.
struct PythonHandle {
    script: Arc<Script>,
    /// Taken when the handle closes, so that the script's object goes with the GIL held.
    h: Option<Py<PyAny>>,
    ctx: Arc<CallContext>,
}

impl PythonHandle {
    /// Runs `f` with the GIL, the script's handle object, and this connection as the current one.
    fn with<R>(&self, f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> Result<R>) -> Result<R> {
        let _ctx = CallContext::enter(Some(&self.ctx));
        Python::attach(|py| match &self.h {
            Some(h) => f(py, h.bind(py)),
            None => Err(Error::io("the handle is closed")),
        })
    }

    /// A boolean capability: the script's `can_fn` if defined, else whether it defines
    /// `plain_fn` (`can_write` is "pwrite is defined"), else false.
    fn boolean(&self, py: Python<'_>, h: &Bound<'_, PyAny>, can_fn: &str, plain_fn: Option<&str>) -> Result<bool> {
        match self.script.call(py, can_fn, (h,), |r| r.is_truthy())? {
            Some(b) => Ok(b),
            None => Ok(plain_fn.is_some_and(|f| self.script.callback(py, f).is_some())),
        }
    }

    /// A three-level capability (`can_fua`, `can_cache`): the script's answer, or `default`.
    fn level(&self, py: Python<'_>, h: &Bound<'_, PyAny>, can_fn: &str, default: Support) -> Result<Support> {
        match self.script.call(py, can_fn, (h,), |r| r.extract::<i64>())? {
            None => Ok(default),
            Some(0) => Ok(Support::None),
            Some(1) => Ok(Support::Emulate),
            Some(2) => Ok(Support::Native),
            Some(n) => Err(Error::io(format!("{}: {can_fn} returned {n}, which is not 0, 1 or 2", self.script.name))),
        }
    }

    /// Calls a data callback that returns nothing; the script must define it.
    fn required<'py>(&self, py: Python<'py>, name: &str, args: impl pyo3::call::PyCallArgs<'py>) -> Result<()> {
        self.script.call(py, name, args, |_| Ok(()))?.ok_or_else(|| missing(&self.script, name))
    }
}

impl Handle for PythonHandle {
    fn get_size(&self) -> Result<u64> {
        self.with(|py, h| {
            self.script
                .call(py, "get_size", (h,), |r| r.extract::<u64>())?
                .ok_or_else(|| missing(&self.script, "get_size"))
        })
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.with(|py, h| {
            let sizes = self.script.call(py, "block_size", (h,), |r| r.extract::<(u32, u32, u32)>())?;
            match sizes.filter(|&s| s != (0, 0, 0)) {
                None => Ok(None),
                Some(s) => check_block_size(s).map(Some).map_err(|e| {
                    // Logged as nbdkit does: the client only learns that the export cannot open.
                    let e = format!("{}: block_size returned {s:?}: {e}", self.script.name);
                    tracing::error!("python: {e}");
                    Error::io(e)
                }),
            }
        })
    }

    fn export_description(&self) -> Result<Option<String>> {
        self.with(|py, h| {
            self.script.call(py, "export_description", (h,), |r| {
                text(&r)
                    .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("export_description must return a string"))
            })
        })
    }

    fn capabilities(&self) -> Result<Capabilities> {
        self.with(|py, h| {
            let zero = self.boolean(py, h, "can_zero", Some("zero"))?;
            let fast_zero = match self.script.callback(py, "can_fast_zero") {
                Some(_) => self.boolean(py, h, "can_fast_zero", None)?,
                // nbdkit's default: a zero that is only emulated can fail fast.
                None => !zero,
            };
            let has = |name| self.script.callback(py, name).is_some();
            Ok(Capabilities {
                write: self.boolean(py, h, "can_write", Some("pwrite"))?,
                flush: self.boolean(py, h, "can_flush", Some("flush"))?,
                rotational: self.boolean(py, h, "is_rotational", None)?,
                trim: self.boolean(py, h, "can_trim", Some("trim"))?,
                zero: if zero { Support::Native } else { Support::Emulate },
                fast_zero,
                fua: self.level(py, h, "can_fua", if has("flush") { Support::Emulate } else { Support::None })?,
                multi_conn: self.boolean(py, h, "can_multi_conn", None)?,
                extents: self.boolean(py, h, "can_extents", Some("extents"))?,
                cache: self.level(py, h, "can_cache", if has("cache") { Support::Native } else { Support::None })?,
            })
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len();
        self.with(|py, h| {
            if self.script.api_version >= 2 {
                // The script fills the server's buffer through a writable memoryview.
                let flags = nbdkit_flags(flags);
                let called = views::with_writable(py, buf, |view| self.required(py, "pread", (h, view, offset, flags)));
                return called.map_err(|e| self.script.failure(py, "pread", &e))?;
            }
            // API 1: pread(h, count, offset) returns an object with the buffer protocol.
            let data = self
                .script
                .call(py, "pread", (h, count, offset), |r| {
                    let data = PyBuffer::<u8>::get(&r)?;
                    if data.item_count() < count {
                        return Err(pyo3::exceptions::PyValueError::new_err(format!(
                            "buffer returned from pread is too small: {} bytes where {count} were asked for",
                            data.item_count()
                        )));
                    }
                    data.to_vec(py)
                })?
                .ok_or_else(|| missing(&self.script, "pread"))?;
            buf.copy_from_slice(&data[..count]);
            Ok(())
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.with(|py, h| {
            let v2 = self.script.api_version >= 2;
            let flags = nbdkit_flags(flags);
            let called = views::with_readonly(py, buf, |view| {
                if v2 {
                    self.required(py, "pwrite", (h, view, offset, flags))
                } else {
                    self.required(py, "pwrite", (h, view, offset))
                }
            });
            called.map_err(|e| self.script.failure(py, "pwrite", &e))?
        })
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.with(|py, h| {
            if self.script.api_version >= 2 {
                self.required(py, "flush", (h, nbdkit_flags(flags)))
            } else {
                self.required(py, "flush", (h,))
            }
        })
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.with(|py, h| {
            if self.script.api_version >= 2 {
                self.required(py, "trim", (h, count, offset, nbdkit_flags(flags)))
            } else {
                self.required(py, "trim", (h, count, offset))
            }
        })
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.with(|py, h| {
            let called = if self.script.api_version >= 2 {
                self.script.try_call(py, "zero", (h, count, offset, nbdkit_flags(flags)))
            } else {
                self.script.try_call(py, "zero", (h, count, offset, flags.contains(Flags::MAY_TRIM)))
            };
            let Some(called) = called else {
                return Err(Error::unsupported("zero"));
            };
            // nbdkit.set_error(errno.EOPNOTSUPP), with or without an exception, asks the server
            // to write zeroes instead: not an error worth a traceback.
            // (ENOTSUP is the same number as EOPNOTSUPP on Linux.)
            if let Some(errno @ libc::EOPNOTSUPP) = module::errno() {
                module::clear_errno();
                nbdforge_api::debug!("zero: the script asked for the fallback to pwrite");
                return Err(Error::new(errno, "zero: the script asked for the fallback to pwrite"));
            }
            called.map(|_| ()).map_err(|e| self.script.failure(py, "zero", &e))
        })
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.with(|py, h| self.required(py, "cache", (h, count, offset, nbdkit_flags(flags))))
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.with(|py, h| {
            let mut added = 0;
            let mut refused = None;
            self.script
                .call(py, "extents", (h, count, offset, nbdkit_flags(flags)), |r| {
                    for item in r.try_iter()? {
                        let t = item?;
                        let (start, length, kind) = t.extract::<(u64, u64, u32)>().map_err(|_| {
                            pyo3::exceptions::PyTypeError::new_err(
                                "extents must return an iterable of (offset, length, type) tuples",
                            )
                        })?;
                        added += 1;
                        if let Err(e) = extents.add(start, length, kind) {
                            refused = Some(e);
                            break;
                        }
                    }
                    Ok(())
                })?
                .ok_or_else(|| missing(&self.script, "extents"))?;
            if let Some(e) = refused {
                return Err(Error::new(e.errno, format!("{}: extents: {}", self.script.name, e.message)));
            }
            if added == 0 {
                return Err(Error::io(format!("{}: extents: the script returned no extents", self.script.name)));
            }
            Ok(())
        })
    }
}

impl Drop for PythonHandle {
    fn drop(&mut self) {
        let _ctx = CallContext::enter(Some(&self.ctx));
        Python::attach(|py| {
            let Some(h) = self.h.take() else { return };
            // An error is logged by the call; the client is gone by now.
            let _ = self.script.call(py, "close", (h.bind(py),), |_| Ok(()));
            drop(h);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, as one process has one interpreter and one `__main__` for the script.
    #[test]
    fn defaults_and_calls_follow_nbdkit() {
        let path = std::env::temp_dir().join(format!("nbdforge-python-{}.py", std::process::id()));
        std::fs::write(
            &path,
            "import nbdkit\n\
             API_VERSION = 2\n\
             disk = bytearray(4096)\n\
             def open(readonly): return {'ro': readonly, 'name': nbdkit.export_name()}\n\
             def get_size(h): return len(disk)\n\
             def pread(h, buf, offset, flags): buf[:] = disk[offset:offset + len(buf)]\n\
             def pwrite(h, buf, offset, flags): disk[offset:offset + len(buf)] = buf\n\
             def flush(h, flags): pass\n\
             def export_description(h): return h['name'] + (' ro' if h['ro'] else '')\n",
        )
        .unwrap();
        let mut plugin = PythonPlugin::default();
        assert!(plugin.config_complete().is_err(), "no script");
        assert!(plugin.config("colour", "blue").is_err(), "script= comes first");
        plugin.config("script", path.to_str().unwrap()).unwrap();
        assert!(plugin.config("colour", "blue").unwrap_err().message.contains("does not need"));
        plugin.config_complete().unwrap();
        assert_eq!(Plugin::thread_model(&plugin), ThreadModel::SerializeAllRequests);
        assert_eq!(plugin.list_exports(false, false).unwrap(), vec![Export::named("")]);

        let h = plugin.open(&OpenArgs::local("disk", false)).unwrap();
        assert_eq!(h.get_size().unwrap(), 4096);
        assert_eq!(h.export_description().unwrap().as_deref(), Some("disk"));
        let caps = h.capabilities().unwrap();
        assert!(caps.write && caps.flush && !caps.trim && !caps.extents && !caps.multi_conn);
        assert_eq!((caps.zero, caps.fast_zero), (Support::Emulate, true));
        assert_eq!((caps.fua, caps.cache), (Support::Emulate, Support::None));
        h.pwrite(b"hello", 100, Flags::NONE).unwrap();
        let mut buf = [0u8; 5];
        h.pread(&mut buf, 100, Flags::NONE).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(h.zero(5, 100, Flags::NONE).unwrap_err().errno, libc::EOPNOTSUPP, "falls back");
        assert!(h.block_size().unwrap().is_none());
        assert!(check_block_size((1, 512 << 10, u32::MAX)).is_ok());
        assert!(check_block_size((1 << 20, 1 << 20, 1 << 20)).is_err(), "minimum over 64K");
        assert!(check_block_size((512, 4096, 1000)).is_err());
        drop(h);
        let h = plugin.open(&OpenArgs::local("other", true)).unwrap();
        assert_eq!(h.export_description().unwrap().as_deref(), Some("other ro"));
        assert_eq!(nbdkit_flags(Flags::FUA | Flags::MAY_TRIM | Flags::FAST_ZERO), 11);
        std::fs::remove_file(&path).unwrap();
    }
}
