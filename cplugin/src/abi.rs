//! The layout of `struct nbdkit_plugin` as a C plugin built against nbdkit-plugin.h hands it
//! over from its `plugin_init`, and the constants of that header. Fields are in the header's
//! order; new fields only ever go at the end, and a plugin says how much of the struct it
//! knows in `_struct_size`, so a plugin built against an older header is read up to there and
//! the rest is left empty.
//!
//! The five data callbacks appear twice: API version 1 has `pread`, `pwrite`, `flush`, `trim`
//! and `zero` without flags where version 2 has them later in the struct with flags (version 2
//! plugins leave the early slots empty, version 1 plugins the late ones).

use std::ffi::{c_char, c_int, c_void};

/// Handle pointer the plugin returns from `open`.
pub type Handle = *mut c_void;

/// Opaque to C: the extents list `nbdkit_add_extent` appends to.
#[repr(C)]
pub struct CExtents {
    _private: [u8; 0],
}

/// Opaque to C: the export list `nbdkit_add_export` appends to.
#[repr(C)]
pub struct CExports {
    _private: [u8; 0],
}

/// `struct nbdkit_plugin`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NbdkitPlugin {
    pub struct_size: u64,
    pub api_version: c_int,
    pub thread_model: c_int,

    pub name: *const c_char,
    pub longname: *const c_char,
    pub version: *const c_char,
    pub description: *const c_char,

    pub load: Option<unsafe extern "C" fn()>,
    pub unload: Option<unsafe extern "C" fn()>,

    pub config: Option<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>,
    pub config_complete: Option<unsafe extern "C" fn() -> c_int>,
    pub config_help: *const c_char,

    pub open: Option<unsafe extern "C" fn(c_int) -> Handle>,
    pub close: Option<unsafe extern "C" fn(Handle)>,

    pub get_size: Option<unsafe extern "C" fn(Handle) -> i64>,

    pub can_write: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_flush: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub is_rotational: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_trim: Option<unsafe extern "C" fn(Handle) -> c_int>,

    // API version 1.
    pub pread_v1: Option<unsafe extern "C" fn(Handle, *mut c_void, u32, u64) -> c_int>,
    pub pwrite_v1: Option<unsafe extern "C" fn(Handle, *const c_void, u32, u64) -> c_int>,
    pub flush_v1: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub trim_v1: Option<unsafe extern "C" fn(Handle, u32, u64) -> c_int>,
    pub zero_v1: Option<unsafe extern "C" fn(Handle, u32, u64, c_int) -> c_int>,

    pub errno_is_preserved: c_int,

    pub dump_plugin: Option<unsafe extern "C" fn()>,

    pub can_zero: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_fua: Option<unsafe extern "C" fn(Handle) -> c_int>,

    // API version 2.
    pub pread: Option<unsafe extern "C" fn(Handle, *mut c_void, u32, u64, u32) -> c_int>,
    pub pwrite: Option<unsafe extern "C" fn(Handle, *const c_void, u32, u64, u32) -> c_int>,
    pub flush: Option<unsafe extern "C" fn(Handle, u32) -> c_int>,
    pub trim: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,
    pub zero: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,

    pub magic_config_key: *const c_char,

    pub can_multi_conn: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub can_extents: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub extents: Option<unsafe extern "C" fn(Handle, u32, u64, u32, *mut CExtents) -> c_int>,
    pub can_cache: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,

    pub thread_model_fn: Option<unsafe extern "C" fn() -> c_int>,

    pub can_fast_zero: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub preconnect: Option<unsafe extern "C" fn(c_int) -> c_int>,

    pub get_ready: Option<unsafe extern "C" fn() -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn() -> c_int>,

    pub list_exports: Option<unsafe extern "C" fn(c_int, c_int, *mut CExports) -> c_int>,
    pub default_export: Option<unsafe extern "C" fn(c_int, c_int) -> *const c_char>,
    pub export_description: Option<unsafe extern "C" fn(Handle) -> *const c_char>,

    pub cleanup: Option<unsafe extern "C" fn()>,

    pub block_size: Option<unsafe extern "C" fn(Handle, *mut u32, *mut u32, *mut u32) -> c_int>,
}

// SAFETY (for the compiler, no block here): the struct is plain data the plugin never changes
// after `plugin_init`; its pointers are to the plugin's static strings and functions, which
// stay loaded for the life of the process.
unsafe impl Send for NbdkitPlugin {}
unsafe impl Sync for NbdkitPlugin {}

/// Thread models (`NBDKIT_THREAD_MODEL_*`).
pub const THREAD_MODEL_SERIALIZE_CONNECTIONS: c_int = 0;
pub const THREAD_MODEL_SERIALIZE_ALL_REQUESTS: c_int = 1;
pub const THREAD_MODEL_SERIALIZE_REQUESTS: c_int = 2;
#[allow(dead_code)]
pub const THREAD_MODEL_PARALLEL: c_int = 3;

/// Request flags (`NBDKIT_FLAG_*`): not the SDK's bit values.
pub const FLAG_MAY_TRIM: u32 = 1;
pub const FLAG_FUA: u32 = 2;
pub const FLAG_REQ_ONE: u32 = 4;
pub const FLAG_FAST_ZERO: u32 = 8;

/// `can_fua` and `can_cache` answers (`NBDKIT_FUA_*`, `NBDKIT_CACHE_*`).
pub const SUPPORT_NONE: c_int = 0;
pub const SUPPORT_EMULATE: c_int = 1;
pub const SUPPORT_NATIVE: c_int = 2;

/// `nbdkit_backend *`, `nbdkit_context *` and `nbdkit_next *` of nbdkit-filter.h: opaque to C
/// (an `nbdkit_next *` starts with [`NextOps`], which the filter calls through).
pub type Backend = *mut c_void;
pub type Context = *mut c_void;
pub type Next = *mut c_void;

pub type NextConfig = unsafe extern "C" fn(Backend, *const c_char, *const c_char) -> c_int;
pub type NextConfigComplete = unsafe extern "C" fn(Backend) -> c_int;
pub type NextPreconnect = unsafe extern "C" fn(Backend, c_int) -> c_int;
pub type NextListExports = unsafe extern "C" fn(Backend, c_int, *mut CExports) -> c_int;
pub type NextDefaultExport = unsafe extern "C" fn(Backend, c_int) -> *const c_char;
pub type NextOpen = unsafe extern "C" fn(Context, c_int, *const c_char) -> c_int;

/// `struct nbdkit_next_ops`: the layer below as a filter's handle callbacks see it.
#[repr(C)]
pub struct NextOps {
    pub prepare: unsafe extern "C" fn(Next) -> c_int,
    pub finalize: unsafe extern "C" fn(Next) -> c_int,
    pub get_size: unsafe extern "C" fn(Next) -> i64,
    pub export_description: unsafe extern "C" fn(Next) -> *const c_char,
    pub block_size: unsafe extern "C" fn(Next, *mut u32, *mut u32, *mut u32) -> c_int,
    pub can_write: unsafe extern "C" fn(Next) -> c_int,
    pub can_flush: unsafe extern "C" fn(Next) -> c_int,
    pub is_rotational: unsafe extern "C" fn(Next) -> c_int,
    pub can_trim: unsafe extern "C" fn(Next) -> c_int,
    pub can_zero: unsafe extern "C" fn(Next) -> c_int,
    pub can_fast_zero: unsafe extern "C" fn(Next) -> c_int,
    pub can_extents: unsafe extern "C" fn(Next) -> c_int,
    pub can_fua: unsafe extern "C" fn(Next) -> c_int,
    pub can_multi_conn: unsafe extern "C" fn(Next) -> c_int,
    pub can_cache: unsafe extern "C" fn(Next) -> c_int,
    pub pread: unsafe extern "C" fn(Next, *mut c_void, u32, u64, u32, *mut c_int) -> c_int,
    pub pwrite: unsafe extern "C" fn(Next, *const c_void, u32, u64, u32, *mut c_int) -> c_int,
    pub flush: unsafe extern "C" fn(Next, u32, *mut c_int) -> c_int,
    pub trim: unsafe extern "C" fn(Next, u32, u64, u32, *mut c_int) -> c_int,
    pub zero: unsafe extern "C" fn(Next, u32, u64, u32, *mut c_int) -> c_int,
    pub extents: unsafe extern "C" fn(Next, u32, u64, u32, *mut CExtents, *mut c_int) -> c_int,
    pub cache: unsafe extern "C" fn(Next, u32, u64, u32, *mut c_int) -> c_int,
}

type FOp<R> = Option<unsafe extern "C" fn(Next, Handle) -> R>;

/// `struct nbdkit_filter` of nbdkit 1.32 (filter API version 6). Unlike the plugin struct it
/// has no ABI guarantee beyond `_api_version` and `_version`: it is only read from filters
/// built for the nbdkit release whose layout this is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NbdkitFilter {
    pub api_version: c_int,
    pub version: *const c_char,

    pub name: *const c_char,
    pub longname: *const c_char,
    pub description: *const c_char,

    pub load: Option<unsafe extern "C" fn()>,
    pub unload: Option<unsafe extern "C" fn()>,

    pub config: Option<unsafe extern "C" fn(NextConfig, Backend, *const c_char, *const c_char) -> c_int>,
    pub config_complete: Option<unsafe extern "C" fn(NextConfigComplete, Backend) -> c_int>,
    pub config_help: *const c_char,
    pub thread_model: Option<unsafe extern "C" fn() -> c_int>,
    pub get_ready: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn(Backend) -> c_int>,
    pub cleanup: Option<unsafe extern "C" fn(Backend)>,

    pub preconnect: Option<unsafe extern "C" fn(NextPreconnect, Backend, c_int) -> c_int>,
    pub list_exports: Option<unsafe extern "C" fn(NextListExports, Backend, c_int, c_int, *mut CExports) -> c_int>,
    pub default_export: Option<unsafe extern "C" fn(NextDefaultExport, Backend, c_int, c_int) -> *const c_char>,
    pub open: Option<unsafe extern "C" fn(NextOpen, Context, c_int, *const c_char, c_int) -> Handle>,
    pub close: Option<unsafe extern "C" fn(Handle)>,

    pub prepare: Option<unsafe extern "C" fn(Next, Handle, c_int) -> c_int>,
    pub finalize: FOp<c_int>,
    pub get_size: FOp<i64>,
    pub export_description: FOp<*const c_char>,
    pub block_size: Option<unsafe extern "C" fn(Next, Handle, *mut u32, *mut u32, *mut u32) -> c_int>,
    pub can_write: FOp<c_int>,
    pub can_flush: FOp<c_int>,
    pub is_rotational: FOp<c_int>,
    pub can_trim: FOp<c_int>,
    pub can_zero: FOp<c_int>,
    pub can_fast_zero: FOp<c_int>,
    pub can_extents: FOp<c_int>,
    pub can_fua: FOp<c_int>,
    pub can_multi_conn: FOp<c_int>,
    pub can_cache: FOp<c_int>,

    pub pread: Option<unsafe extern "C" fn(Next, Handle, *mut c_void, u32, u64, u32, *mut c_int) -> c_int>,
    pub pwrite: Option<unsafe extern "C" fn(Next, Handle, *const c_void, u32, u64, u32, *mut c_int) -> c_int>,
    pub flush: Option<unsafe extern "C" fn(Next, Handle, u32, *mut c_int) -> c_int>,
    pub trim: Option<unsafe extern "C" fn(Next, Handle, u32, u64, u32, *mut c_int) -> c_int>,
    pub zero: Option<unsafe extern "C" fn(Next, Handle, u32, u64, u32, *mut c_int) -> c_int>,
    pub extents: Option<unsafe extern "C" fn(Next, Handle, u32, u64, u32, *mut CExtents, *mut c_int) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(Next, Handle, u32, u64, u32, *mut c_int) -> c_int>,
}

// SAFETY (for the compiler, no block here): as for NbdkitPlugin.
unsafe impl Send for NbdkitFilter {}
unsafe impl Sync for NbdkitFilter {}

/// The filter API version whose layout [`NbdkitFilter`] is, and the nbdkit release series.
pub const FILTER_API_VERSION: c_int = 6;
pub const FILTER_ABI_SERIES: &str = "1.32.";
