//! A C plugin as an SDK plugin: the shared object is opened once, its `struct nbdkit_plugin`
//! read, and every callback mapped onto the `Plugin` and `Handle` traits, with nbdkit's
//! defaults for the callbacks a plugin leaves out (a plugin with `pwrite` and no `can_write`
//! is writable, one with `flush` and no `can_fua` gets emulated FUA, and so on). The server
//! enforces the plugin's thread model, as for any plugin.
//!
//! Every call into the plugin goes through `Library::call`, which sets the context the
//! `nbdkit_*` functions read (see `context`), and turns a failure into an `Error` carrying the
//! errno of `nbdkit_set_error`, or `errno` itself for plugins that say `errno_is_preserved`,
//! or `EIO`, with the message of the last `nbdkit_error`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use nbdforge_api::{
    BlockSize, Capabilities, ClientInfo, Error, Export, Extents, Flags, Handle, Layer, LayerInfo, OpenArgs, Plugin,
    Registration, Result, Support, ThreadModel,
};
use nix::errno::Errno;

use crate::abi::{self, CExports, CExtents, NbdkitPlugin};
use crate::context::{self, Call, ConnContext};

/// A loaded shared object and the plugin it registered. Never unloaded from memory: the
/// process ends soon after the plugin's `unload`.
pub struct Library {
    plugin: NbdkitPlugin,
    dl: usize,
    path: PathBuf,
    name: String,
    unloaded: AtomicBool,
}

/// What a `struct nbdkit_extents *` points at: the list of an `extents` call, or one the
/// plugin made itself with `nbdkit_extents_new`.
pub(crate) enum ExtentsArg<'a> {
    Call(&'a mut Extents),
    Owned(Extents),
}

impl ExtentsArg<'_> {
    pub(crate) fn list(&mut self) -> &mut Extents {
        match self {
            ExtentsArg::Call(e) => e,
            ExtentsArg::Owned(e) => e,
        }
    }
}

/// What a `struct nbdkit_exports *` points at: names and descriptions as C strings (so that
/// `nbdkit_get_export` can hand them out); a `None` name stands for the default export.
#[derive(Default)]
pub(crate) struct ExportsArg(pub Vec<(Option<CString>, Option<CString>)>);

pub(crate) fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null strings in the plugin struct and returned by callbacks are
    // NUL-terminated C strings the plugin keeps alive (static, or until the next call).
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

pub(crate) fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message owned by libc, read at once.
    text(unsafe { libc::dlerror() }).unwrap_or_else(|| "unknown error".into())
}

/// Opens the shared object at `path` (as nbdkit does: all symbols now, and global, so that
/// what an embedded interpreter loads later finds them) and looks up its registration function.
pub(crate) fn dl_open(path: &Path, init: &CStr) -> std::result::Result<(usize, *mut c_void), String> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "NUL in the path".to_string())?;
    // SAFETY: dlopen with a valid C string; the library's constructors run here, as under nbdkit.
    let dl = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if dl.is_null() {
        return Err(dlerror());
    }
    // SAFETY: looking a symbol up in the handle just opened.
    let f = unsafe { libc::dlsym(dl, init.as_ptr()) };
    if f.is_null() {
        return Err(format!("it has no {} function: is it built for nbdkit?", init.to_string_lossy()));
    }
    Ok((dl as usize, f))
}

/// `-D NAME.FLAG=N`, nbdkit's convention: sets the library's global `int NAME_debug_FLAG`.
pub(crate) fn set_debug_flag(dl: usize, name: &str, flag: &str, value: i32) -> bool {
    let symbol = format!("{name}_debug_{flag}").replace(['.', '-'], "_");
    let Ok(symbol) = CString::new(symbol) else { return false };
    // SAFETY: a lookup in the library, which stays open.
    let p = unsafe { libc::dlsym(dl as *mut c_void, symbol.as_ptr()) } as *mut c_int;
    if p.is_null() {
        return false;
    }
    // SAFETY: by the convention the symbol is an int the library reads; set before any
    // callback runs, on the only thread.
    unsafe { p.write(value) };
    true
}

/// Runs one callback of a C layer (`name`); `failed` says from its result whether it failed.
/// The error is the errno of `nbdkit_set_error`, or `errno` itself when `preserved` (the
/// plugin's `errno_is_preserved`), or `EIO`, with the last `nbdkit_error` as its message.
pub(crate) fn guarded<T>(
    name: &str,
    preserved: bool,
    what: &str,
    conn: Option<Arc<ConnContext>>,
    run: impl FnOnce() -> T,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T> {
    let call = Call::begin(conn);
    Errno::clear();
    let r = run();
    let errno = Errno::last_raw();
    let reported = call.finish();
    if failed(&r) {
        let preserved = (preserved && errno != 0).then_some(errno);
        let errno = reported.errno.filter(|&e| e != 0).or(preserved).unwrap_or(libc::EIO);
        let message =
            reported.message.unwrap_or_else(|| format!("{what} failed: {}", std::io::Error::from_raw_os_error(errno)));
        return Err(Error::new(errno, message));
    }
    if let Some(m) = reported.message {
        tracing::error!("{name}: {m}");
    }
    Ok(r)
}

/// Opens `path`, runs its `plugin_init` and `load`, and checks what nbdkit checks.
pub fn open(path: &Path) -> std::result::Result<Arc<Library>, String> {
    let fail = |why: String| format!("cannot open plugin '{}': {why}", path.display());
    let (dl, init) = dl_open(path, c"plugin_init").map_err(fail)?;
    // SAFETY: NBDKIT_REGISTER_PLUGIN defines plugin_init as `struct nbdkit_plugin *(void)`.
    let init: unsafe extern "C" fn() -> *const NbdkitPlugin = unsafe { std::mem::transmute(init) };
    // SAFETY: calling the plugin's registration function, as nbdkit does once after dlopen.
    let raw = unsafe { init() };
    if raw.is_null() {
        return Err(fail("its registration function (plugin_init) returned NULL".into()));
    }
    // SAFETY: an all-zero struct is valid (null pointers, `None` callbacks, zero numbers); the
    // plugin's struct is read up to the size it says it has, never past ours, so a plugin built
    // against an older header leaves the newer fields empty.
    let plugin = unsafe {
        let mut p = MaybeUninit::<NbdkitPlugin>::zeroed();
        let size = ((*raw).struct_size as usize).min(std::mem::size_of::<NbdkitPlugin>());
        std::ptr::copy_nonoverlapping(raw as *const u8, p.as_mut_ptr() as *mut u8, size);
        p.assume_init()
    };
    if plugin.api_version != 1 && plugin.api_version != 2 {
        return Err(fail(format!("plugin API version {} is not 1 or 2", plugin.api_version)));
    }
    let name = text(plugin.name).ok_or_else(|| fail("the plugin has no name".into()))?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(fail(format!("plugin name '{name}' is not letters, digits, '-' and '_'")));
    }
    let pread = if plugin.api_version == 1 { plugin.pread_v1.is_some() } else { plugin.pread.is_some() };
    for (has, what) in [(plugin.open.is_some(), "open"), (plugin.get_size.is_some(), "get_size"), (pread, "pread")] {
        if !has {
            return Err(fail(format!("the plugin has no {what} callback")));
        }
    }
    context::set_plugin_name(&name);
    let lib = Library { plugin, dl, path: path.to_path_buf(), name, unloaded: AtomicBool::new(false) };
    run_void(&lib.name, "load", lib.plugin.load).map_err(fail)?;
    Ok(Arc::new(lib))
}

/// Runs a `void (*)(void)` callback of a C layer (`load`, `unload`), if it has one.
pub(crate) fn run_void(name: &str, what: &str, f: Option<unsafe extern "C" fn()>) -> std::result::Result<(), String> {
    match f {
        // SAFETY: a callback taking and returning nothing, called when nbdkit would call it.
        Some(f) => guarded(name, false, what, None, || unsafe { f() }, |_| false).map_err(|e| e.message),
        None => Ok(()),
    }
}

/// `unload`, once in the process's life.
pub(crate) fn unload_once(done: &AtomicBool, name: &str, f: Option<unsafe extern "C" fn()>) {
    if !done.swap(true, Ordering::SeqCst) {
        let _ = run_void(name, "unload", f);
    }
}

/// A C layer's identity from its strings: the long name, or the description's first line,
/// describes it.
pub(crate) fn describe(
    name: &str,
    longname: *const c_char,
    description: *const c_char,
    version: *const c_char,
    config_help: *const c_char,
) -> LayerInfo {
    LayerInfo {
        name: name.to_string(),
        description: text(longname).or_else(|| text(description).map(|d| first_line(&d))).unwrap_or_default(),
        version: text(version).unwrap_or_default(),
        config_help: text(config_help).unwrap_or_default(),
        magic_config_key: None,
    }
}

impl Library {
    /// Who the plugin says it is.
    pub fn info(&self) -> LayerInfo {
        let p = &self.plugin;
        LayerInfo {
            magic_config_key: text(p.magic_config_key),
            ..describe(&self.name, p.longname, p.description, p.version, p.config_help)
        }
    }

    /// The table entry: each instance shares the one loaded library.
    pub fn registration(self: &Arc<Self>) -> Registration {
        let lib = Arc::clone(self);
        Registration::plugin(self.info(), move || CPlugin::new(Arc::clone(&lib)))
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn v2(&self) -> bool {
        self.plugin.api_version == 2
    }

    /// Runs one callback; `failed` says from its result whether it failed.
    fn call<T>(
        &self,
        what: &str,
        conn: Option<Arc<ConnContext>>,
        run: impl FnOnce() -> T,
        failed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        guarded(&self.name, self.plugin.errno_is_preserved != 0, what, conn, run, failed)
    }

    /// A callback returning an int: -1 is failure.
    fn int(&self, what: &str, conn: Option<Arc<ConnContext>>, run: impl FnOnce() -> c_int) -> Result<c_int> {
        self.call(what, conn, run, |&r| r == -1)
    }
}

pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

pub(crate) fn cstring(key: &str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::invalid(format!("{key}: the value contains a NUL byte")))
}

pub(crate) fn model(m: c_int) -> ThreadModel {
    match m {
        abi::THREAD_MODEL_SERIALIZE_CONNECTIONS => ThreadModel::SerializeConnections,
        abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS => ThreadModel::SerializeAllRequests,
        abi::THREAD_MODEL_SERIALIZE_REQUESTS => ThreadModel::SerializeRequests,
        _ => ThreadModel::Parallel,
    }
}

/// The context of a call made during a client's handshake, before its connection is open
/// (`list_exports`, `default_export`): its own arena, so that strings interned there go with it.
fn handshake(tls: bool) -> Arc<ConnContext> {
    Arc::new(ConnContext { tls, ..Default::default() })
}

/// One instance of a loaded C plugin, as the stack configures it.
pub struct CPlugin {
    lib: Arc<Library>,
    thread_model: AtomicI32,
}

impl CPlugin {
    /// An instance of the plugin in `lib`.
    pub fn new(lib: Arc<Library>) -> CPlugin {
        let m = lib.plugin.thread_model;
        CPlugin { lib, thread_model: AtomicI32::new(m) }
    }

    /// The library, for the cc plugin's messages.
    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    fn unit(&self, what: &str, f: Option<unsafe extern "C" fn() -> c_int>) -> Result<()> {
        match f {
            // SAFETY: a configuration-time callback of the plugin, taking nothing.
            Some(f) => self.lib.int(what, None, || unsafe { f() }).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Layer for CPlugin {
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        set_debug_flag(self.lib.dl, &self.lib.name, flag, value)
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(config) = self.lib.plugin.config else {
            return Err(Error::invalid(format!("{key}={value}: this plugin takes no parameters")));
        };
        // Under nbdkit the strings are argv's, and plugins keep the pointers (`dir = value;`):
        // they must live as long as the process.
        let k = context::global_arena().keep(cstring(key, key)?);
        let v = context::global_arena().keep(cstring(key, value)?);
        // SAFETY: the plugin's config callback with two valid C strings that are never freed.
        self.lib.int("config", None, || unsafe { config(k, v) })?;
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.unit("config_complete", self.lib.plugin.config_complete)?;
        if let Some(f) = self.lib.plugin.thread_model_fn {
            // SAFETY: the plugin's thread_model callback, asked after configuration as nbdkit does.
            let m = self.lib.int("thread_model", None, || unsafe { f() })?;
            self.thread_model.fetch_min(m, Ordering::Relaxed);
        }
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<(String, String)> {
        let p = &self.lib.plugin;
        let mut lines = vec![
            ("so".to_string(), self.lib.path.display().to_string()),
            ("so_api_version".into(), p.api_version.to_string()),
            ("struct_size".into(), p.struct_size.to_string()),
        ];
        // nbdkit's has_CALLBACK lines for what the server's own lines do not already say.
        let v2 = p.api_version == 2;
        let callbacks = [
            ("load", p.load.is_some()),
            ("unload", p.unload.is_some()),
            ("dump_plugin", p.dump_plugin.is_some()),
            ("thread_model", p.thread_model_fn.is_some()),
            ("preconnect", p.preconnect.is_some()),
            ("after_fork", p.after_fork.is_some()),
            ("list_exports", p.list_exports.is_some()),
            ("default_export", p.default_export.is_some()),
            ("cleanup", p.cleanup.is_some()),
            ("close", p.close.is_some()),
            ("get_size", p.get_size.is_some()),
            ("export_description", p.export_description.is_some()),
            ("block_size", p.block_size.is_some()),
            ("can_write", p.can_write.is_some()),
            ("can_flush", p.can_flush.is_some()),
            ("is_rotational", p.is_rotational.is_some()),
            ("can_trim", p.can_trim.is_some()),
            ("can_zero", p.can_zero.is_some()),
            ("can_fast_zero", p.can_fast_zero.is_some()),
            ("can_fua", p.can_fua.is_some()),
            ("can_multi_conn", p.can_multi_conn.is_some()),
            ("can_extents", p.can_extents.is_some()),
            ("can_cache", p.can_cache.is_some()),
            ("pread", if v2 { p.pread.is_some() } else { p.pread_v1.is_some() }),
            ("pwrite", if v2 { p.pwrite.is_some() } else { p.pwrite_v1.is_some() }),
            ("flush", if v2 { p.flush.is_some() } else { p.flush_v1.is_some() }),
            ("trim", if v2 { p.trim.is_some() } else { p.trim_v1.is_some() }),
            ("zero", if v2 { p.zero.is_some() } else { p.zero_v1.is_some() }),
            ("extents", p.extents.is_some()),
            ("cache", p.cache.is_some()),
        ];
        lines.extend(callbacks.iter().filter(|(_, has)| *has).map(|(name, _)| (format!("has_{name}"), "1".into())));
        if let Some(f) = self.lib.plugin.dump_plugin {
            // The plugin prints with C's stdio after our lines, so they are printed first.
            use std::io::Write;
            let mut out = std::io::stdout();
            for (k, v) in lines.drain(..) {
                let _ = writeln!(out, "{k}={v}");
            }
            let _ = out.flush();
            // SAFETY: the plugin's dump_plugin callback, then a flush of C's stdout so that its
            // lines come before anything printed later.
            let _ = self.lib.call("dump_plugin", None, || unsafe { f() }, |_| false);
            // SAFETY: fflush(NULL) flushes every C stream.
            unsafe { libc::fflush(std::ptr::null_mut()) };
        }
        lines
    }

    fn cleanup(&self) {
        if let Some(f) = self.lib.plugin.cleanup {
            // SAFETY: the plugin's cleanup callback, once, when the server exits.
            let _ = self.lib.call("cleanup", None, || unsafe { f() }, |_| false);
        }
        unload_once(&self.lib.unloaded, &self.lib.name, self.lib.plugin.unload);
    }
}

impl Plugin for CPlugin {
    fn thread_model(&self) -> ThreadModel {
        model(self.thread_model.load(Ordering::Relaxed))
    }

    fn get_ready(&mut self) -> Result<()> {
        self.unit("get_ready", self.lib.plugin.get_ready)
    }

    fn after_fork(&self) -> Result<()> {
        self.unit("after_fork", self.lib.plugin.after_fork)
    }

    fn preconnect(&self, client: &ClientInfo, readonly: bool) -> Result<()> {
        let Some(f) = self.lib.plugin.preconnect else { return Ok(()) };
        let tls = client.tls.is_some();
        let ctx = Arc::new(ConnContext { client: Some(client.clone()), tls, ..Default::default() });
        // SAFETY: the plugin's preconnect callback; nbdkit_peer_* read the client from `ctx`.
        self.lib.int("preconnect", Some(ctx), || unsafe { f(readonly as c_int) }).map(|_| ())
    }

    fn list_exports(&self, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let Some(f) = self.lib.plugin.list_exports else {
            return Ok(vec![Export::named(self.default_export(readonly, tls)?)]);
        };
        let mut list = ExportsArg::default();
        let p = &mut list as *mut ExportsArg as *mut CExports;
        // SAFETY: the plugin's list_exports callback with a pointer to `list`, which outlives
        // the call; nbdkit_add_export casts it back.
        self.lib.int("list_exports", Some(handshake(tls)), || unsafe { f(readonly as c_int, tls as c_int, p) })?;
        let mut out = Vec::with_capacity(list.0.len());
        for (name, description) in list.0 {
            let name = match name {
                Some(n) => n.to_string_lossy().into_owned(),
                None => self.default_export(readonly, tls)?,
            };
            out.push(Export { name, description: description.map(|d| d.to_string_lossy().into_owned()) });
        }
        Ok(out)
    }

    fn default_export(&self, readonly: bool, tls: bool) -> Result<String> {
        let Some(f) = self.lib.plugin.default_export else { return Ok(String::new()) };
        // SAFETY: the plugin's default_export callback; the string it returns (often interned
        // in the call's arena, dropped after this function) is read at once.
        let ctx = Some(handshake(tls));
        let name =
            self.lib.call("default_export", ctx, || unsafe { f(readonly as c_int, tls as c_int) }, |p| p.is_null())?;
        Ok(text(name).unwrap_or_default())
    }

    fn open(&self, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let ctx = Arc::new(ConnContext {
            conn: Some(Arc::clone(&args.conn)),
            client: None,
            export_name: Some(cstring("export name", &args.export_name)?),
            tls: args.tls,
            arena: Default::default(),
        });
        let open = self.lib.plugin.open.expect("checked at load");
        // SAFETY: the plugin's open callback; the handle it returns is passed back to its other
        // callbacks and to close, exactly once, when the connection ends.
        let h = self.lib.call(
            "open",
            Some(Arc::clone(&ctx)),
            || unsafe { open(args.readonly as c_int) },
            |h| h.is_null(),
        )?;
        Ok(Box::new(CHandle { lib: Arc::clone(&self.lib), raw: RawHandle(h), ctx, readonly: args.readonly }))
    }
}

/// A C plugin's or filter's handle pointer.
pub(crate) struct RawHandle(pub abi::Handle);

// SAFETY: the pointer is the plugin's (or filter's); the server calls it from several threads
// only as far as its thread model allows, which is nbdkit's contract with C layers.
unsafe impl Send for RawHandle {}
unsafe impl Sync for RawHandle {}

struct CHandle {
    lib: Arc<Library>,
    raw: RawHandle,
    ctx: Arc<ConnContext>,
    readonly: bool,
}

pub(crate) fn c_flags(flags: Flags) -> u32 {
    let mut f = 0;
    for (ours, theirs) in [
        (Flags::FUA, abi::FLAG_FUA),
        (Flags::MAY_TRIM, abi::FLAG_MAY_TRIM),
        (Flags::REQ_ONE, abi::FLAG_REQ_ONE),
        (Flags::FAST_ZERO, abi::FLAG_FAST_ZERO),
    ] {
        if flags.contains(ours) {
            f |= theirs;
        }
    }
    f
}

pub(crate) fn count32(count: u64) -> Result<u32> {
    u32::try_from(count).map_err(|_| Error::invalid(format!("request of {count} bytes is too large for a C plugin")))
}

pub(crate) fn support(what: &str, answer: c_int) -> Result<Support> {
    match answer {
        abi::SUPPORT_NONE => Ok(Support::None),
        abi::SUPPORT_EMULATE => Ok(Support::Emulate),
        abi::SUPPORT_NATIVE => Ok(Support::Native),
        n => Err(Error::invalid(format!("{what} returned {n}, not 0, 1 or 2"))),
    }
}

impl CHandle {
    fn ctx(&self) -> Option<Arc<ConnContext>> {
        Some(Arc::clone(&self.ctx))
    }

    fn h(&self) -> abi::Handle {
        self.raw.0
    }

    /// Runs an int callback on the handle; -1 is failure.
    fn int(&self, what: &str, run: impl FnOnce(abi::Handle) -> c_int) -> Result<c_int> {
        let h = self.h();
        self.lib.int(what, self.ctx(), || run(h))
    }

    /// A `can_*` answer: the callback's, or `default` without one.
    fn ask(&self, what: &str, f: Option<unsafe extern "C" fn(abi::Handle) -> c_int>, default: bool) -> Result<bool> {
        match f {
            // SAFETY: a can_* callback of the plugin with its own handle.
            Some(f) => Ok(self.int(what, |h| unsafe { f(h) })? != 0),
            None => Ok(default),
        }
    }

    fn level(&self, what: &str, f: Option<unsafe extern "C" fn(abi::Handle) -> c_int>) -> Result<Option<Support>> {
        match f {
            // SAFETY: as in `ask`.
            Some(f) => Ok(Some(support(what, self.int(what, |h| unsafe { f(h) })?)?)),
            None => Ok(None),
        }
    }
}

impl Drop for CHandle {
    fn drop(&mut self) {
        if let Some(close) = self.lib.plugin.close {
            let h = self.h();
            // SAFETY: the plugin's close callback, once, with the handle its open returned.
            let _ = self.lib.call("close", self.ctx(), || unsafe { close(h) }, |_| false);
        }
    }
}

impl Handle for CHandle {
    fn get_size(&self) -> Result<u64> {
        let f = self.lib.plugin.get_size.expect("checked at load");
        let h = self.h();
        // SAFETY: the plugin's get_size callback with its own handle.
        let size = self.lib.call("get_size", self.ctx(), || unsafe { f(h) }, |&s| s == -1)?;
        u64::try_from(size).map_err(|_| Error::io(format!("get_size returned {size}")))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let Some(f) = self.lib.plugin.block_size else { return Ok(None) };
        let (mut minimum, mut preferred, mut maximum) = (0u32, 0u32, 0u32);
        let (a, b, c) = (&mut minimum as *mut u32, &mut preferred as *mut u32, &mut maximum as *mut u32);
        // SAFETY: the plugin's block_size callback with three valid out pointers.
        self.int("block_size", |h| unsafe { f(h, a, b, c) })?;
        if minimum == 0 && preferred == 0 && maximum == 0 {
            return Ok(None);
        }
        // nbdkit's rules for what a plugin may answer.
        let valid = minimum.is_power_of_two()
            && minimum <= 65536
            && preferred.is_power_of_two()
            && (512..=32 << 20).contains(&preferred)
            && preferred >= minimum
            && (maximum == u32::MAX || (maximum >= preferred && maximum % minimum == 0));
        if !valid {
            return Err(Error::invalid(format!(
                "block_size: minimum={minimum}, preferred={preferred}, maximum={maximum} are not valid constraints"
            )));
        }
        Ok(Some(BlockSize { minimum, preferred, maximum }))
    }

    fn export_description(&self) -> Result<Option<String>> {
        let Some(f) = self.lib.plugin.export_description else { return Ok(None) };
        let h = self.h();
        // SAFETY: the plugin's export_description callback; the string is copied at once. NULL
        // is no description (with an error message when there was an error), as under nbdkit.
        let d = self.lib.call("export_description", self.ctx(), || unsafe { f(h) }, |_| false)?;
        Ok(text(d))
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let p = &self.lib.plugin;
        let v2 = self.lib.v2();
        let (has_pwrite, has_flush, has_trim, has_zero) = if v2 {
            (p.pwrite.is_some(), p.flush.is_some(), p.trim.is_some(), p.zero.is_some())
        } else {
            (p.pwrite_v1.is_some(), p.flush_v1.is_some(), p.trim_v1.is_some(), p.zero_v1.is_some())
        };
        let write = !self.readonly && has_pwrite && self.ask("can_write", p.can_write, true)?;
        let flush = has_flush && self.ask("can_flush", p.can_flush, true)?;
        let rotational = self.ask("is_rotational", p.is_rotational, false)?;
        let trim = write && has_trim && self.ask("can_trim", p.can_trim, true)?;
        let zero = match write {
            false => Support::None,
            true if has_zero && self.ask("can_zero", p.can_zero, true)? => Support::Native,
            true => Support::Emulate,
        };
        // Without a way to zero fast, nbdkit advertises fast zero and fails such requests at
        // once: so does the server for an emulated zero, and `zero` below for a version 1 one.
        let fast_zero = write
            && match p.can_fast_zero {
                Some(_) => self.ask("can_fast_zero", p.can_fast_zero, false)?,
                None => !v2 || zero != Support::Native,
            };
        let fua = match write {
            false => Support::None,
            true => match self.level("can_fua", p.can_fua)? {
                Some(Support::Native) if !v2 => Support::Emulate,
                Some(Support::Emulate) if !flush => Support::None,
                Some(s) => s,
                None if flush => Support::Emulate,
                None => Support::None,
            },
        };
        let multi_conn = self.ask("can_multi_conn", p.can_multi_conn, false)?;
        let extents = p.extents.is_some() && self.ask("can_extents", p.can_extents, true)?;
        let cache = match self.level("can_cache", p.can_cache)? {
            Some(Support::Native) if p.cache.is_none() => Support::Emulate,
            Some(s) => s,
            None if p.cache.is_some() => Support::Native,
            None => Support::None,
        };
        Ok(Capabilities { write, flush, rotational, trim, zero, fast_zero, fua, multi_conn, extents, cache })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let count = count32(buf.len() as u64)?;
        let b = buf.as_mut_ptr() as *mut c_void;
        let p = &self.lib.plugin;
        // SAFETY: the plugin's pread into `buf`, exactly `count` bytes long, for this call only.
        match (self.lib.v2(), p.pread, p.pread_v1) {
            (true, Some(f), _) => self.int("pread", |h| unsafe { f(h, b, count, offset, c_flags(flags)) }),
            (false, _, Some(f)) => self.int("pread", |h| unsafe { f(h, b, count, offset) }),
            _ => Err(Error::unsupported("pread")),
        }
        .map(|_| ())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = count32(buf.len() as u64)?;
        let b = buf.as_ptr() as *const c_void;
        let p = &self.lib.plugin;
        // SAFETY: the plugin's pwrite from `buf`, exactly `count` bytes long, for this call only.
        match (self.lib.v2(), p.pwrite, p.pwrite_v1) {
            (true, Some(f), _) => self.int("pwrite", |h| unsafe { f(h, b, count, offset, c_flags(flags)) }),
            (false, _, Some(f)) => self.int("pwrite", |h| unsafe { f(h, b, count, offset) }),
            _ => Err(Error::unsupported("pwrite")),
        }
        .map(|_| ())
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        let p = &self.lib.plugin;
        // SAFETY: the plugin's flush with its own handle.
        match (self.lib.v2(), p.flush, p.flush_v1) {
            (true, Some(f), _) => self.int("flush", |h| unsafe { f(h, c_flags(flags)) }),
            (false, _, Some(f)) => self.int("flush", |h| unsafe { f(h) }),
            _ => Err(Error::unsupported("flush")),
        }
        .map(|_| ())
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let count = count32(count)?;
        let p = &self.lib.plugin;
        // SAFETY: the plugin's trim with its own handle.
        match (self.lib.v2(), p.trim, p.trim_v1) {
            (true, Some(f), _) => self.int("trim", |h| unsafe { f(h, count, offset, c_flags(flags)) }),
            (false, _, Some(f)) => self.int("trim", |h| unsafe { f(h, count, offset) }),
            _ => Err(Error::unsupported("trim")),
        }
        .map(|_| ())
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let count = count32(count)?;
        let p = &self.lib.plugin;
        // SAFETY: the plugin's zero with its own handle.
        match (self.lib.v2(), p.zero, p.zero_v1) {
            (true, Some(f), _) => self.int("zero", |h| unsafe { f(h, count, offset, c_flags(flags)) }),
            (false, _, Some(_)) if flags.contains(Flags::FAST_ZERO) => {
                Err(Error::new(libc::ENOTSUP, "a version 1 plugin cannot zero fast"))
            }
            (false, _, Some(f)) => {
                let may_trim = flags.contains(Flags::MAY_TRIM) as c_int;
                self.int("zero", |h| unsafe { f(h, count, offset, may_trim) })
            }
            _ => Err(Error::unsupported("zero")),
        }
        .map(|_| ())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let Some(f) = self.lib.plugin.extents else { return Err(Error::unsupported("extents")) };
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let mut arg = ExtentsArg::Call(extents);
        let e = &mut arg as *mut ExtentsArg as *mut CExtents;
        // SAFETY: the plugin's extents with a pointer to `arg`, which outlives the call;
        // nbdkit_add_extent casts it back.
        self.int("extents", |h| unsafe { f(h, count, offset, c_flags(flags), e) })?;
        if arg.list().as_slice().is_empty() {
            return Err(Error::io("extents: the plugin described no extent"));
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.plugin.cache else { return Err(Error::unsupported("cache")) };
        let count = count32(count)?;
        // SAFETY: the plugin's cache with its own handle.
        self.int("cache", |h| unsafe { f(h, count, offset, c_flags(flags)) }).map(|_| ())
    }
}
