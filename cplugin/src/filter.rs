//! A C filter as an SDK filter. nbdkit's filter ABI has no stability guarantee: a filter says
//! which nbdkit release it was built for (`_version`), and nbdkit only loads filters of its own
//! release. nbdforge mirrors the layout of nbdkit 1.32 (filter API 6) and loads filters built
//! for any 1.32.x.
//!
//! The filter reaches the layer below through what nbdforge hands it: `next_*` functions for
//! configuration and the handshake, and, for a connection, an `nbdkit_next *` that starts with
//! the `struct nbdkit_next_ops` table (`NextCtx`) over the SDK handle of the layer below.
//! The context functions (`nbdkit_next_context_open`, `nbdkit_context_set_next`, ...) and the
//! extents helpers of nbdkit-filter.h are in `exports`.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};

use nbdforge_api::{
    Backend, BlockSize, Capabilities, ClientInfo, Connection, Error, Export, Extents, Filter, Flags, Handle, Layer,
    LayerInfo, OpenArgs, Registration, Result, Support, ThreadModel,
};

use crate::abi::{self, CExports, CExtents, NbdkitFilter, NextOps};
use crate::context::{self, ConnContext};
use crate::plugin::{self, c_flags, count32, cstring, text, ExportsArg, ExtentsArg, RawHandle};

/// A loaded filter. Never unloaded from memory.
pub struct FilterLib {
    filter: NbdkitFilter,
    dl: usize,
    name: String,
    path: PathBuf,
    unloaded: AtomicBool,
}

/// Opens the filter at `path`, checks it was built for the ABI mirrored here, runs `load`.
pub fn open(path: &Path) -> std::result::Result<Arc<FilterLib>, String> {
    let fail = |why: String| format!("cannot open filter '{}': {why}", path.display());
    let (dl, init) = plugin::dl_open(path, c"filter_init").map_err(fail)?;
    // SAFETY: NBDKIT_REGISTER_FILTER defines filter_init as `struct nbdkit_filter *(void)`.
    let init: unsafe extern "C" fn() -> *const NbdkitFilter = unsafe { std::mem::transmute(init) };
    // SAFETY: the filter's registration function, called once after dlopen as nbdkit does.
    let raw = unsafe { init() };
    if raw.is_null() {
        return Err(fail("its registration function (filter_init) returned NULL".into()));
    }
    // SAFETY: the first two fields are the same in every filter API since version 6.
    let (api, version) = unsafe { ((*raw).api_version, text((*raw).version).unwrap_or_default()) };
    if api != abi::FILTER_API_VERSION || !version.starts_with(abi::FILTER_ABI_SERIES) {
        return Err(fail(format!(
            "it was built for nbdkit {version} (filter API {api}); nbdforge loads filters built for nbdkit \
             {}x only, whose layout it mirrors",
            abi::FILTER_ABI_SERIES
        )));
    }
    // SAFETY: built for 1.32, the struct has exactly our layout.
    let filter = unsafe { *raw };
    let name = text(filter.name).ok_or_else(|| fail("the filter has no name".into()))?;
    context::set_plugin_name(&name);
    let lib = FilterLib { filter, dl, name, path: path.to_path_buf(), unloaded: AtomicBool::new(false) };
    plugin::run_void(&lib.name, "load", lib.filter.load).map_err(fail)?;
    Ok(Arc::new(lib))
}

impl FilterLib {
    /// Who the filter says it is.
    pub fn info(&self) -> LayerInfo {
        let f = &self.filter;
        plugin::describe(&self.name, f.longname, f.description, f.version, f.config_help)
    }

    /// The table entry.
    pub fn registration(self: &Arc<Self>) -> Registration {
        let lib = Arc::clone(self);
        Registration::filter(self.info(), move || CFilter { lib: Arc::clone(&lib), below: OnceLock::new() })
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call<T>(
        &self,
        what: &str,
        conn: Option<Arc<ConnContext>>,
        run: impl FnOnce() -> T,
        failed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        plugin::guarded(&self.name, false, what, conn, run, failed)
    }

    fn int(&self, what: &str, conn: Option<Arc<ConnContext>>, run: impl FnOnce() -> c_int) -> Result<c_int> {
        self.call(what, conn, run, |&r| r == -1)
    }
}

/// What an `nbdkit_backend *` points at: the stack below the filter.
pub(crate) struct BackendRef(pub Arc<dyn Backend>);

/// One instance of a loaded C filter.
pub struct CFilter {
    lib: Arc<FilterLib>,
    below: OnceLock<Box<BackendRef>>,
}

/// Reports `e` to the C caller: the message for its error, the errno through `err`.
fn failed_below(e: Error, err: *mut c_int) -> c_int {
    context::report_error(e.message);
    if !err.is_null() {
        // SAFETY: the filter passes a pointer to its int for the errno.
        unsafe { err.write(e.errno) };
    }
    -1
}

fn done(r: Result<()>, err: *mut c_int) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => failed_below(e, err),
    }
}

pub(crate) fn flags_from_c(f: u32) -> Flags {
    let mut flags = Flags::NONE;
    for (theirs, ours) in [
        (abi::FLAG_FUA, Flags::FUA),
        (abi::FLAG_MAY_TRIM, Flags::MAY_TRIM),
        (abi::FLAG_REQ_ONE, Flags::REQ_ONE),
        (abi::FLAG_FAST_ZERO, Flags::FAST_ZERO),
    ] {
        if f & theirs != 0 {
            flags |= ours;
        }
    }
    flags
}

/// The parameter a filter's `config` passed on, if it did.
#[derive(Default)]
struct PassedOn(Option<(String, String)>);

unsafe extern "C" fn next_config(nx: abi::Backend, key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: `nx` is the PassedOn given to the filter's config for this call.
    let p = unsafe { &mut *(nx as *mut PassedOn) };
    p.0 = Some((text(key).unwrap_or_default(), text(value).unwrap_or_default()));
    0
}

unsafe extern "C" fn next_config_complete(_nx: abi::Backend) -> c_int {
    0
}

/// What the handshake callbacks' `next_*` functions reach: the stack below and the client.
struct Below<'a> {
    next: &'a dyn Backend,
    client: Option<&'a ClientInfo>,
    tls: bool,
}

unsafe extern "C" fn next_preconnect(nx: abi::Backend, readonly: c_int) -> c_int {
    // SAFETY: `nx` is the Below given to the filter's preconnect for this call.
    let b = unsafe { &*(nx as *const Below) };
    let client = b.client.cloned().unwrap_or_default();
    done(b.next.preconnect(&client, readonly != 0), std::ptr::null_mut())
}

unsafe extern "C" fn next_list_exports(nx: abi::Backend, readonly: c_int, exports: *mut CExports) -> c_int {
    // SAFETY: as above, for list_exports; `exports` is the list the filter was given or made.
    let b = unsafe { &*(nx as *const Below) };
    match b.next.list_exports(readonly != 0, b.tls) {
        Ok(list) => {
            // SAFETY: the list is an ExportsArg (ours, or the filter's from nbdkit_exports_new).
            let out = unsafe { &mut *(exports as *mut ExportsArg) };
            for e in list {
                let name = CString::new(e.name).ok();
                out.0.push((
                    name.or_else(|| Some(CString::default())),
                    e.description.and_then(|d| CString::new(d).ok()),
                ));
            }
            0
        }
        Err(e) => failed_below(e, std::ptr::null_mut()),
    }
}

unsafe extern "C" fn next_default_export(nx: abi::Backend, readonly: c_int) -> *const c_char {
    // SAFETY: as above, for default_export.
    let b = unsafe { &*(nx as *const Below) };
    match b.next.default_export(readonly != 0, b.tls) {
        Ok(name) => match CString::new(name) {
            Ok(c) => match context::current() {
                Some(ctx) => ctx.arena.keep(c),
                None => context::global_arena().keep(c),
            },
            Err(_) => std::ptr::null(),
        },
        Err(e) => {
            failed_below(e, std::ptr::null_mut());
            std::ptr::null()
        }
    }
}

/// An `nbdkit_context *`: where the filter's handle finds the layer below.
pub(crate) struct FilterContext {
    pub backend: Box<BackendRef>,
    pub args: OpenArgs,
    pub next: AtomicPtr<NextCtx>,
}

unsafe extern "C" fn next_open(cx: abi::Context, readonly: c_int, export: *const c_char) -> c_int {
    // SAFETY: `cx` is the FilterContext given to the filter's open for this call.
    let c = unsafe { &*(cx as *const FilterContext) };
    let args = OpenArgs { readonly: readonly != 0, export_name: text(export).unwrap_or_default(), ..c.args.clone() };
    match c.backend.0.open(&args) {
        Ok(h) => {
            let old = c.next.swap(NextCtx::boxed(h), Ordering::SeqCst);
            if !old.is_null() {
                // SAFETY: a NextCtx this function made earlier for the same context.
                drop(unsafe { Box::from_raw(old) });
            }
            0
        }
        Err(e) => failed_below(e, std::ptr::null_mut()),
    }
}

/// An `nbdkit_next *`: the next_ops table first, as C reads it, then the handle below.
#[repr(C)]
pub(crate) struct NextCtx {
    ops: NextOps,
    pub handle: Box<dyn Handle>,
    caps: OnceLock<Capabilities>,
}

impl NextCtx {
    pub(crate) fn boxed(handle: Box<dyn Handle>) -> *mut NextCtx {
        Box::into_raw(Box::new(NextCtx { ops: NEXT_OPS, handle, caps: OnceLock::new() }))
    }

    fn caps(&self) -> Result<Capabilities> {
        if let Some(c) = self.caps.get() {
            return Ok(*c);
        }
        let c = self.handle.capabilities()?;
        Ok(*self.caps.get_or_init(|| c))
    }
}

/// The NextCtx behind an `nbdkit_next *`.
///
/// # Safety
/// `nx` must come from [`NextCtx::boxed`] and not be freed yet.
pub(crate) unsafe fn next_ctx<'a>(nx: abi::Next) -> &'a NextCtx {
    // SAFETY: the caller's promise.
    unsafe { &*(nx as *const NextCtx) }
}

fn support_int(s: Support) -> c_int {
    match s {
        Support::None => abi::SUPPORT_NONE,
        Support::Emulate => abi::SUPPORT_EMULATE,
        Support::Native => abi::SUPPORT_NATIVE,
    }
}

macro_rules! next_cap {
    ($name:ident, $pick:expr) => {
        unsafe extern "C" fn $name(nx: abi::Next) -> c_int {
            // SAFETY: the filter passes the nbdkit_next * it was given.
            let n = unsafe { next_ctx(nx) };
            match n.caps() {
                Ok(c) => $pick(c),
                Err(e) => failed_below(e, std::ptr::null_mut()),
            }
        }
    };
}

next_cap!(n_can_write, |c: Capabilities| c.write as c_int);
next_cap!(n_can_flush, |c: Capabilities| c.flush as c_int);
next_cap!(n_is_rotational, |c: Capabilities| c.rotational as c_int);
next_cap!(n_can_trim, |c: Capabilities| c.trim as c_int);
next_cap!(n_can_zero, |c: Capabilities| support_int(c.zero));
next_cap!(n_can_fast_zero, |c: Capabilities| c.fast_zero as c_int);
next_cap!(n_can_extents, |c: Capabilities| c.extents as c_int);
next_cap!(n_can_fua, |c: Capabilities| support_int(c.fua));
next_cap!(n_can_multi_conn, |c: Capabilities| c.multi_conn as c_int);
next_cap!(n_can_cache, |c: Capabilities| support_int(c.cache));

unsafe extern "C" fn n_prepare(_nx: abi::Next) -> c_int {
    0 // the layer below is prepared when it is opened
}

unsafe extern "C" fn n_finalize(nx: abi::Next) -> c_int {
    // SAFETY: as in next_cap.
    done(unsafe { next_ctx(nx) }.handle.finalize(), std::ptr::null_mut())
}

unsafe extern "C" fn n_get_size(nx: abi::Next) -> i64 {
    // SAFETY: as in next_cap.
    match unsafe { next_ctx(nx) }.handle.get_size() {
        Ok(s) => s as i64,
        Err(e) => failed_below(e, std::ptr::null_mut()) as i64,
    }
}

unsafe extern "C" fn n_export_description(nx: abi::Next) -> *const c_char {
    // SAFETY: as in next_cap.
    match unsafe { next_ctx(nx) }.handle.export_description() {
        Ok(Some(d)) => match (CString::new(d), context::current()) {
            (Ok(c), Some(ctx)) => ctx.arena.keep(c),
            (Ok(c), None) => context::global_arena().keep(c),
            _ => std::ptr::null(),
        },
        Ok(None) => std::ptr::null(),
        Err(e) => {
            failed_below(e, std::ptr::null_mut());
            std::ptr::null()
        }
    }
}

unsafe extern "C" fn n_block_size(nx: abi::Next, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    // SAFETY: as in next_cap; the three out pointers are the filter's.
    match unsafe { next_ctx(nx) }.handle.block_size() {
        Ok(b) => {
            let b = b.unwrap_or(BlockSize { minimum: 0, preferred: 0, maximum: 0 });
            // SAFETY: as above.
            unsafe {
                min.write(b.minimum);
                pref.write(b.preferred);
                max.write(b.maximum);
            }
            0
        }
        Err(e) => failed_below(e, std::ptr::null_mut()),
    }
}

unsafe extern "C" fn n_pread(
    nx: abi::Next,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    // SAFETY: as in next_cap; `buf` holds `count` bytes for this call.
    let (n, b) = unsafe { (next_ctx(nx), std::slice::from_raw_parts_mut(buf as *mut u8, count as usize)) };
    done(n.handle.pread(b, offset, flags_from_c(flags)), err)
}

unsafe extern "C" fn n_pwrite(
    nx: abi::Next,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    // SAFETY: as in n_pread.
    let (n, b) = unsafe { (next_ctx(nx), std::slice::from_raw_parts(buf as *const u8, count as usize)) };
    done(n.handle.pwrite(b, offset, flags_from_c(flags)), err)
}

unsafe extern "C" fn n_flush(nx: abi::Next, flags: u32, err: *mut c_int) -> c_int {
    // SAFETY: as in next_cap.
    done(unsafe { next_ctx(nx) }.handle.flush(flags_from_c(flags)), err)
}

unsafe extern "C" fn n_trim(nx: abi::Next, count: u32, offset: u64, flags: u32, err: *mut c_int) -> c_int {
    // SAFETY: as in next_cap.
    done(unsafe { next_ctx(nx) }.handle.trim(count.into(), offset, flags_from_c(flags)), err)
}

unsafe extern "C" fn n_zero(nx: abi::Next, count: u32, offset: u64, flags: u32, err: *mut c_int) -> c_int {
    // SAFETY: as in next_cap.
    done(unsafe { next_ctx(nx) }.handle.zero(count.into(), offset, flags_from_c(flags)), err)
}

unsafe extern "C" fn n_cache(nx: abi::Next, count: u32, offset: u64, flags: u32, err: *mut c_int) -> c_int {
    // SAFETY: as in next_cap.
    done(unsafe { next_ctx(nx) }.handle.cache(count.into(), offset, flags_from_c(flags)), err)
}

unsafe extern "C" fn n_extents(
    nx: abi::Next,
    count: u32,
    offset: u64,
    flags: u32,
    e: *mut CExtents,
    err: *mut c_int,
) -> c_int {
    // SAFETY: as in next_cap; `e` is an ExtentsArg the filter was given or made.
    let (n, list) = unsafe { (next_ctx(nx), &mut *(e as *mut ExtentsArg)) };
    done(n.handle.extents(count.into(), offset, flags_from_c(flags), list.list()), err)
}

const NEXT_OPS: NextOps = NextOps {
    prepare: n_prepare,
    finalize: n_finalize,
    get_size: n_get_size,
    export_description: n_export_description,
    block_size: n_block_size,
    can_write: n_can_write,
    can_flush: n_can_flush,
    is_rotational: n_is_rotational,
    can_trim: n_can_trim,
    can_zero: n_can_zero,
    can_fast_zero: n_can_fast_zero,
    can_extents: n_can_extents,
    can_fua: n_can_fua,
    can_multi_conn: n_can_multi_conn,
    can_cache: n_can_cache,
    pread: n_pread,
    pwrite: n_pwrite,
    flush: n_flush,
    trim: n_trim,
    zero: n_zero,
    extents: n_extents,
    cache: n_cache,
};

impl CFilter {
    fn backend_ptr(&self) -> abi::Backend {
        self.below.get().map_or(std::ptr::null_mut(), |b| &**b as *const BackendRef as abi::Backend)
    }
}

impl Layer for CFilter {
    fn debug_flag(&mut self, flag: &str, value: i32) -> bool {
        plugin::set_debug_flag(self.lib.dl, &self.lib.name, flag, value)
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(f) = self.lib.filter.config else { return Ok(false) };
        let k = context::global_arena().keep(cstring(key, key)?);
        let v = context::global_arena().keep(cstring(key, value)?);
        let mut passed = PassedOn::default();
        let nx = &mut passed as *mut PassedOn as abi::Backend;
        // SAFETY: the filter's config with our next_config and a pointer to `passed`, which
        // outlives the call; the strings are never freed.
        self.lib.int("config", None, || unsafe { f(next_config, nx, k, v) })?;
        match passed.0 {
            None => Ok(true),
            Some((k2, v2)) if k2 == key && v2 == value => Ok(false),
            Some((k2, v2)) => Err(Error::invalid(format!(
                "{key}={value}: the filter passes it on as {k2}={v2}, which nbdforge cannot do"
            ))),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(f) = self.lib.filter.config_complete else { return Ok(()) };
        // SAFETY: the filter's config_complete; its next does nothing (the stack completes
        // every layer itself).
        self.lib.int("config_complete", None, || unsafe { f(next_config_complete, std::ptr::null_mut()) }).map(|_| ())
    }

    fn cleanup(&self) {
        if let Some(f) = self.lib.filter.cleanup {
            let b = self.backend_ptr();
            // SAFETY: the filter's cleanup, once, with the stack below.
            let _ = self.lib.call("cleanup", None, || unsafe { f(b) }, |_| false);
        }
        plugin::unload_once(&self.lib.unloaded, &self.lib.name, self.lib.filter.unload);
    }
}

fn model_int(m: ThreadModel) -> c_int {
    match m {
        ThreadModel::SerializeConnections => abi::THREAD_MODEL_SERIALIZE_CONNECTIONS,
        ThreadModel::SerializeAllRequests => abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
        ThreadModel::SerializeRequests => abi::THREAD_MODEL_SERIALIZE_REQUESTS,
        ThreadModel::Parallel => abi::THREAD_MODEL_PARALLEL,
    }
}

impl Filter for CFilter {
    fn thread_model(&self, below: ThreadModel) -> ThreadModel {
        let Some(f) = self.lib.filter.thread_model else { return below };
        // SAFETY: the filter's thread_model callback.
        match self.lib.int("thread_model", None, || unsafe { f() }) {
            Ok(m) => plugin::model(m).min(below),
            Err(e) => {
                tracing::error!("{}: {}", self.lib.name, e.message);
                ThreadModel::SerializeConnections
            }
        }
    }

    fn get_ready(&mut self, next: &Arc<dyn Backend>) -> Result<()> {
        let _ = self.below.set(Box::new(BackendRef(Arc::clone(next))));
        let Some(f) = self.lib.filter.get_ready else { return Ok(()) };
        let m = model_int(self.thread_model(next.thread_model()));
        // SAFETY: the filter's get_ready with the stack's thread model.
        self.lib.int("get_ready", None, || unsafe { f(m) }).map(|_| ())
    }

    fn after_fork(&self, _next: &Arc<dyn Backend>) -> Result<()> {
        let Some(f) = self.lib.filter.after_fork else { return Ok(()) };
        let b = self.backend_ptr();
        // SAFETY: the filter's after_fork with the stack below.
        self.lib.int("after_fork", None, || unsafe { f(b) }).map(|_| ())
    }

    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        let Some(f) = self.lib.filter.preconnect else { return next.preconnect(client, readonly) };
        let below = Below { next, client: Some(client), tls: client.tls.is_some() };
        let nx = &below as *const Below as abi::Backend;
        let ctx = Arc::new(ConnContext { client: Some(client.clone()), tls: below.tls, ..Default::default() });
        // SAFETY: the filter's preconnect with our next_preconnect and `below`, which outlives it.
        self.lib.int("preconnect", Some(ctx), || unsafe { f(next_preconnect, nx, readonly as c_int) }).map(|_| ())
    }

    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let Some(f) = self.lib.filter.list_exports else { return next.list_exports(readonly, tls) };
        let below = Below { next, client: None, tls };
        let nx = &below as *const Below as abi::Backend;
        let mut list = ExportsArg::default();
        let p = &mut list as *mut ExportsArg as *mut CExports;
        let ctx = Arc::new(ConnContext { tls, ..Default::default() });
        // SAFETY: the filter's list_exports with pointers to `below` and `list`, which outlive it.
        self.lib.int("list_exports", Some(ctx), || unsafe {
            f(next_list_exports, nx, readonly as c_int, tls as c_int, p)
        })?;
        let mut out = Vec::with_capacity(list.0.len());
        for (name, description) in list.0 {
            let name = match name {
                Some(n) => n.to_string_lossy().into_owned(),
                None => self.default_export(next, readonly, tls)?,
            };
            out.push(Export { name, description: description.map(|d| d.to_string_lossy().into_owned()) });
        }
        Ok(out)
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<String> {
        let Some(f) = self.lib.filter.default_export else { return next.default_export(readonly, tls) };
        let below = Below { next, client: None, tls };
        let nx = &below as *const Below as abi::Backend;
        let ctx = Arc::new(ConnContext { tls, ..Default::default() });
        // SAFETY: the filter's default_export with a pointer to `below`; the answer is copied at
        // once, before the call's arena goes.
        let p = self.lib.call(
            "default_export",
            Some(ctx),
            || unsafe { f(next_default_export, nx, readonly as c_int, tls as c_int) },
            |p| p.is_null(),
        )?;
        Ok(text(p).unwrap_or_default())
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let ctx = Arc::new(ConnContext {
            conn: Some(Arc::clone(&args.conn)),
            client: None,
            export_name: Some(cstring("export name", &args.export_name)?),
            tls: args.tls,
            arena: Default::default(),
        });
        let context = Box::new(FilterContext {
            backend: Box::new(BackendRef(Arc::clone(next))),
            args: args.clone(),
            next: AtomicPtr::new(std::ptr::null_mut()),
        });
        let cx = &*context as *const FilterContext as abi::Context;
        let raw = match self.lib.filter.open {
            Some(f) => {
                let name = ctx.export_name.clone().unwrap_or_default();
                let n = name.as_ptr();
                // SAFETY: the filter's open with our next_open and its context, which lives as
                // long as the handle; the export name outlives the call.
                self.lib.call(
                    "open",
                    Some(Arc::clone(&ctx)),
                    || unsafe { f(next_open, cx, args.readonly as c_int, n, args.tls as c_int) },
                    |h| h.is_null(),
                )?
            }
            None => {
                let name = ctx.export_name.clone().unwrap_or_default();
                // SAFETY: our own next_open with the context made above.
                let r = self.lib.int("open", Some(Arc::clone(&ctx)), || unsafe {
                    next_open(cx, args.readonly as c_int, name.as_ptr())
                });
                r?;
                std::ptr::NonNull::<c_void>::dangling().as_ptr()
            }
        };
        let h = FilterHandle { lib: Arc::clone(&self.lib), raw: RawHandle(raw), ctx, context };
        if h.context.next.load(Ordering::SeqCst).is_null() {
            return Err(Error::io("open: the filter did not open the layer below"));
        }
        Ok(Box::new(h))
    }
}

struct FilterHandle {
    lib: Arc<FilterLib>,
    raw: RawHandle,
    ctx: Arc<ConnContext>,
    context: Box<FilterContext>,
}

// SAFETY: the context's raw pointer is to a NextCtx owned by this handle (or the filter's,
// through nbdkit_context_set_next), used under the stack's thread model.
unsafe impl Send for FilterHandle {}
unsafe impl Sync for FilterHandle {}

impl FilterHandle {
    fn nx(&self) -> abi::Next {
        self.context.next.load(Ordering::SeqCst) as abi::Next
    }

    fn below(&self) -> Result<&dyn Handle> {
        self.next().ok_or_else(|| Error::io("the filter has no layer below open"))
    }

    /// Runs a data callback taking `int *err`: -1 fails with that errno (or EIO).
    fn op(&self, what: &str, run: impl FnOnce(abi::Next, abi::Handle, *mut c_int) -> c_int) -> Result<()> {
        let (nx, h) = (self.nx(), self.raw.0);
        let mut err: c_int = 0;
        let e = &mut err as *mut c_int;
        match self.lib.int(what, Some(Arc::clone(&self.ctx)), || run(nx, h, e)) {
            Ok(_) => Ok(()),
            Err(mut x) => {
                if err != 0 {
                    x.errno = err;
                }
                Err(x)
            }
        }
    }

    fn int(&self, what: &str, run: impl FnOnce(abi::Next, abi::Handle) -> c_int) -> Result<c_int> {
        let (nx, h) = (self.nx(), self.raw.0);
        self.lib.int(what, Some(Arc::clone(&self.ctx)), || run(nx, h))
    }

    fn flag(
        &self,
        what: &str,
        f: Option<unsafe extern "C" fn(abi::Next, abi::Handle) -> c_int>,
        below: bool,
    ) -> Result<bool> {
        match f {
            // SAFETY: a can_* callback of the filter with its handle and the layer below.
            Some(f) => Ok(self.int(what, |n, h| unsafe { f(n, h) })? != 0),
            None => Ok(below),
        }
    }

    fn level(
        &self,
        what: &str,
        f: Option<unsafe extern "C" fn(abi::Next, abi::Handle) -> c_int>,
        below: Support,
    ) -> Result<Support> {
        match f {
            // SAFETY: as in `flag`.
            Some(f) => plugin::support(what, self.int(what, |n, h| unsafe { f(n, h) })?),
            None => Ok(below),
        }
    }
}

impl Drop for FilterHandle {
    fn drop(&mut self) {
        if let Some(close) = self.lib.filter.close {
            let h = self.raw.0;
            // SAFETY: the filter's close, once, with the handle its open returned.
            let _ = self.lib.call("close", Some(Arc::clone(&self.ctx)), || unsafe { close(h) }, |_| false);
        }
        let next = self.context.next.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !next.is_null() {
            // SAFETY: the NextCtx this context holds, made by NextCtx::boxed, freed once.
            drop(unsafe { Box::from_raw(next) });
        }
    }
}

impl Handle for FilterHandle {
    fn next(&self) -> Option<&dyn Handle> {
        let p = self.context.next.load(Ordering::SeqCst);
        // SAFETY: a NextCtx owned by this context until it is replaced or the handle drops.
        (!p.is_null()).then(|| unsafe { &*(*p).handle })
    }

    fn prepare(&self, readonly: bool) -> Result<()> {
        let Some(f) = self.lib.filter.prepare else { return Ok(()) };
        // SAFETY: the filter's prepare with its handle and the layer below.
        self.int("prepare", |n, h| unsafe { f(n, h, readonly as c_int) }).map(|_| ())
    }

    fn finalize(&self) -> Result<()> {
        let Some(f) = self.lib.filter.finalize else { return Ok(()) };
        // SAFETY: the filter's finalize with its handle and the layer below.
        self.int("finalize", |n, h| unsafe { f(n, h) }).map(|_| ())
    }

    fn get_size(&self) -> Result<u64> {
        let Some(f) = self.lib.filter.get_size else { return self.below()?.get_size() };
        let (nx, h) = (self.nx(), self.raw.0);
        // SAFETY: the filter's get_size.
        let s = self.lib.call("get_size", Some(Arc::clone(&self.ctx)), || unsafe { f(nx, h) }, |&s| s == -1)?;
        u64::try_from(s).map_err(|_| Error::io(format!("get_size returned {s}")))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let Some(f) = self.lib.filter.block_size else { return self.below()?.block_size() };
        let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
        let (pa, pb, pc) = (&mut a as *mut u32, &mut b as *mut u32, &mut c as *mut u32);
        // SAFETY: the filter's block_size with three out pointers.
        self.int("block_size", |n, h| unsafe { f(n, h, pa, pb, pc) })?;
        Ok((a != 0).then_some(BlockSize { minimum: a, preferred: b, maximum: c }))
    }

    fn export_description(&self) -> Result<Option<String>> {
        let Some(f) = self.lib.filter.export_description else { return self.below()?.export_description() };
        let (nx, h) = (self.nx(), self.raw.0);
        // SAFETY: the filter's export_description; the string is copied at once.
        let d = self.lib.call("export_description", Some(Arc::clone(&self.ctx)), || unsafe { f(nx, h) }, |_| false)?;
        Ok(text(d))
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let f = &self.lib.filter;
        let below = self.below()?.capabilities()?;
        let write = self.flag("can_write", f.can_write, below.write)?;
        Ok(Capabilities {
            write,
            flush: self.flag("can_flush", f.can_flush, below.flush)?,
            rotational: self.flag("is_rotational", f.is_rotational, below.rotational)?,
            trim: write && self.flag("can_trim", f.can_trim, below.trim)?,
            zero: if write { self.level("can_zero", f.can_zero, below.zero)? } else { Support::None },
            fast_zero: write && self.flag("can_fast_zero", f.can_fast_zero, below.fast_zero)?,
            fua: if write { self.level("can_fua", f.can_fua, below.fua)? } else { Support::None },
            multi_conn: self.flag("can_multi_conn", f.can_multi_conn, below.multi_conn)?,
            extents: self.flag("can_extents", f.can_extents, below.extents)?,
            cache: self.level("can_cache", f.can_cache, below.cache)?,
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.pread else { return self.below()?.pread(buf, offset, flags) };
        let count = count32(buf.len() as u64)?;
        let b = buf.as_mut_ptr() as *mut c_void;
        // SAFETY: the filter's pread into `buf`, `count` bytes, for this call.
        self.op("pread", |n, h, e| unsafe { f(n, h, b, count, offset, c_flags(flags), e) })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.pwrite else { return self.below()?.pwrite(buf, offset, flags) };
        let count = count32(buf.len() as u64)?;
        let b = buf.as_ptr() as *const c_void;
        // SAFETY: the filter's pwrite from `buf`, `count` bytes, for this call.
        self.op("pwrite", |n, h, e| unsafe { f(n, h, b, count, offset, c_flags(flags), e) })
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.flush else { return self.below()?.flush(flags) };
        // SAFETY: the filter's flush.
        self.op("flush", |n, h, e| unsafe { f(n, h, c_flags(flags), e) })
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.trim else { return self.below()?.trim(count, offset, flags) };
        let count = count32(count)?;
        // SAFETY: the filter's trim.
        self.op("trim", |n, h, e| unsafe { f(n, h, count, offset, c_flags(flags), e) })
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.zero else { return self.below()?.zero(count, offset, flags) };
        let count = count32(count)?;
        // SAFETY: the filter's zero.
        self.op("zero", |n, h, e| unsafe { f(n, h, count, offset, c_flags(flags), e) })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let Some(f) = self.lib.filter.extents else { return self.below()?.extents(count, offset, flags, extents) };
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let mut arg = ExtentsArg::Call(extents);
        let p = &mut arg as *mut ExtentsArg as *mut CExtents;
        // SAFETY: the filter's extents with a pointer to `arg`, which outlives the call.
        self.op("extents", |n, h, e| unsafe { f(n, h, count, offset, c_flags(flags), p, e) })
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.lib.filter.cache else { return self.below()?.cache(count, offset, flags) };
        let count = count32(count)?;
        // SAFETY: the filter's cache.
        self.op("cache", |n, h, e| unsafe { f(n, h, count, offset, c_flags(flags), e) })
    }
}

/// For `nbdkit_next_context_open`: opens the stack behind an `nbdkit_backend *` for the
/// connection of the calling callback (or none, from a filter's own thread).
pub(crate) fn open_below(backend: abi::Backend, readonly: bool, export: &str) -> Result<*mut NextCtx> {
    if backend.is_null() {
        return Err(Error::invalid("nbdkit_next_context_open: NULL backend"));
    }
    // SAFETY: an `nbdkit_backend *` is always a BackendRef of ours (from get_ready, after_fork,
    // cleanup or nbdkit_context_get_backend), alive as long as the filter.
    let b = unsafe { &*(backend as *const BackendRef) };
    let cur = context::current();
    let conn = cur.as_ref().and_then(|c| c.conn.clone()).unwrap_or_else(Connection::detached);
    let tls = cur.as_ref().is_some_and(|c| c.tls);
    let args = OpenArgs { readonly, export_name: export.to_string(), tls, conn };
    Ok(NextCtx::boxed(b.0.open(&args)?))
}

/// For `nbdkit_extents_full`: the layer below's extents from `offset` for `count` bytes, asked
/// as often as it takes to describe them all.
pub(crate) fn extents_full(n: &NextCtx, count: u64, offset: u64, flags: Flags) -> Result<Extents> {
    let end = offset + count;
    let mut e = Extents::new(offset, end);
    let flags = flags.without(Flags::REQ_ONE);
    while !e.is_full() {
        let at = e.next_offset();
        n.handle.extents(end - at, at, flags, &mut e)?;
        if e.next_offset() == at {
            return Err(Error::io("extents: the layer below described nothing"));
        }
    }
    Ok(e)
}

/// For `nbdkit_extents_aligned`: extents whose runs start and end on multiples of `align`
/// (but at the end of the range): a block shared by several runs becomes one run with the
/// flags they all have (hole only if all are holes, zero only if all read as zeroes).
pub(crate) fn aligned(runs: &[nbdforge_api::Extent], align: u64) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    let mut push = |s: u64, e: u64, t: u32| match out.last_mut() {
        Some(last) if last.2 == t && last.0 + last.1 == s => last.1 += e - s,
        _ => out.push((s, e - s, t)),
    };
    // A partial block being merged: its start, how far it is described, its flags so far.
    let mut pending: Option<(u64, u64, u32)> = None;
    for r in runs {
        let (mut at, end) = (r.offset, r.offset + r.length);
        if let Some((bs, _, t)) = pending {
            let block_end = bs + align;
            let upto = end.min(block_end);
            let t = t & r.flags;
            if upto < block_end {
                pending = Some((bs, upto, t));
                continue;
            }
            push(bs, block_end, t);
            pending = None;
            at = block_end;
        } else if at % align != 0 {
            pending = Some((at - at % align, at, r.flags));
            let block_end = at - at % align + align;
            if end < block_end {
                pending = Some((at - at % align, end, r.flags));
                continue;
            }
            let (bs, _, t) = pending.take().expect("just set");
            push(bs.max(r.offset), block_end, t);
            at = block_end;
        }
        if at >= end {
            continue;
        }
        let whole_end = end - end % align;
        if whole_end > at {
            push(at, whole_end, r.flags);
            at = whole_end;
        }
        if at < end {
            pending = Some((at, end, r.flags));
        }
    }
    if let Some((bs, upto, t)) = pending {
        push(bs, upto, t);
    }
    out
}

/// The `nbdkit_context *` C holds, as ours.
///
/// # Safety
/// `cx` must be the context a filter's open was called with, for as long as its handle lives.
pub(crate) unsafe fn context_of<'a>(cx: abi::Context) -> &'a FilterContext {
    // SAFETY: the caller's promise.
    unsafe { &*(cx as *const FilterContext) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::Extent;

    fn runs(v: &[(u64, u64, u32)]) -> Vec<Extent> {
        v.iter().map(|&(offset, length, flags)| Extent { offset, length, flags }).collect()
    }

    #[test]
    fn alignment_merges_shared_blocks_conservatively() {
        // data 0..100, hole+zero 100..1000: the first 512-byte block is data.
        let got = aligned(&runs(&[(0, 100, 0), (100, 900, 3)]), 512);
        assert_eq!(got, vec![(0, 512, 0), (512, 488, 3)]);
        // Aligned runs are unchanged.
        let got = aligned(&runs(&[(0, 512, 3), (512, 1024, 0)]), 512);
        assert_eq!(got, vec![(0, 512, 3), (512, 1024, 0)]);
        // Zero in one half, hole+zero in the other: zero.
        let got = aligned(&runs(&[(0, 256, 2), (256, 256, 3)]), 512);
        assert_eq!(got, vec![(0, 512, 2)]);
    }
}
