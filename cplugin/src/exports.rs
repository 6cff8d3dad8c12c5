//! The `nbdkit_*` functions a C plugin calls, exported from the binary with C linkage so that
//! a dlopen'ed plugin resolves them (`nbdforge/build.rs` puts them in the dynamic symbol
//! table, listed in `cplugin/nbdkit-symbols.list`). Each maps onto the SDK: parsing onto
//! `nbdforge_api::parse_*`, the peer onto the connection's `ClientInfo`, sleeping and
//! disconnecting onto `Connection`, shutting down onto `server::shutdown`.
//!
//! nbdkit's conventions: a function that fails calls `nbdkit_error` (so the message reaches
//! the failing callback's error) and returns -1 or NULL; strings returned for the plugin to
//! free are allocated with `malloc`. The printf-style functions are in `varargs.c`, which
//! formats and calls [`nbdforge_cplugin_error`], [`nbdforge_cplugin_debug`] and
//! [`nbdforge_cplugin_intern`].

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::time::Duration;

use nbdforge_api::{server, Error, Peer};

use crate::abi::{self, CExports, CExtents};
use crate::context::{self, global_arena};
use crate::filter;
use crate::plugin::{ExportsArg, ExtentsArg};

/// Reads a C string argument; `None` for NULL or invalid UTF-8 (reported as an error).
fn arg<'a>(what: &str, p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        fail(Error::invalid(format!("{what}: NULL string")));
        return None;
    }
    // SAFETY: the plugin passes a NUL-terminated string valid for the call.
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Some(s),
        Err(_) => {
            fail(Error::invalid(format!("{what}: the string is not valid UTF-8")));
            None
        }
    }
}

/// Reports `e` as nbdkit_error would, with its errno.
fn fail(e: Error) {
    context::report_error(e.message);
    context::set_errno(e.errno);
    nix::errno::Errno::set_raw(e.errno);
}

/// A copy of `s` allocated with malloc, for the plugin to free.
fn malloc_string(s: &str) -> *mut c_char {
    let Ok(c) = CString::new(s) else { return std::ptr::null_mut() };
    // SAFETY: strdup of a valid C string; the caller owns and frees the result.
    unsafe { libc::strdup(c.as_ptr()) }
}

/// Called by `nbdkit_error` and `nbdkit_verror` (varargs.c) with the formatted message.
#[no_mangle]
pub extern "C" fn nbdforge_cplugin_error(msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: varargs.c passes the NUL-terminated message it formatted.
    let m = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    context::report_error(m);
}

/// Called by `nbdkit_debug` and `nbdkit_vdebug` (varargs.c) with the formatted message.
#[no_mangle]
pub extern "C" fn nbdforge_cplugin_debug(msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: as above.
    let m = unsafe { CStr::from_ptr(msg) };
    tracing::debug!("{}: {}", context::plugin_name(), m.to_string_lossy());
}

/// Keeps `n` bytes at `s` (or up to a NUL before) until the end of the connection, or of the
/// process outside one: `nbdkit_strndup_intern` and, through varargs.c, the printf ones.
#[no_mangle]
pub extern "C" fn nbdforge_cplugin_intern(s: *const c_char, n: usize) -> *const c_char {
    if s.is_null() {
        fail(Error::invalid("intern: NULL string"));
        return std::ptr::null();
    }
    // SAFETY: strnlen reads at most `n` bytes of the plugin's buffer, which holds `n` bytes or a
    // NUL before them.
    let len = unsafe { libc::strnlen(s, n) };
    // SAFETY: `len` bytes at `s` are readable (just measured), and none is NUL.
    let bytes = unsafe { std::slice::from_raw_parts(s as *const u8, len) }.to_vec();
    let c = CString::new(bytes).expect("no NUL before len");
    match context::current() {
        Some(conn) => conn.arena.keep(c),
        None => global_arena().keep(c),
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char {
    nbdforge_cplugin_intern(s, usize::MAX)
}

#[no_mangle]
pub extern "C" fn nbdkit_strndup_intern(s: *const c_char, n: usize) -> *const c_char {
    nbdforge_cplugin_intern(s, n)
}

#[no_mangle]
pub extern "C" fn nbdkit_set_error(err: c_int) {
    context::set_errno(err);
}

// --- Parsing ------------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nbdkit_parse_size(s: *const c_char) -> i64 {
    let Some(s) = arg("nbdkit_parse_size", s) else { return -1 };
    match nbdforge_api::parse_size("size", s) {
        Ok(n) => n as i64,
        Err(e) => {
            fail(e);
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_parse_bool(s: *const c_char) -> c_int {
    let Some(s) = arg("nbdkit_parse_bool", s) else { return -1 };
    match nbdforge_api::parse_bool("value", s) {
        Ok(b) => b as c_int,
        Err(e) => {
            fail(e);
            -1
        }
    }
}

/// Parses into `*r` with the SDK's parser; on failure `*r` is left alone.
fn parse_into<T: TryFrom<i128>>(what: *const c_char, s: *const c_char, r: *mut T) -> c_int {
    let what = if what.is_null() { "value" } else { arg("what", what).unwrap_or("value") };
    let Some(s) = arg(what, s) else { return -1 };
    match nbdforge_api::parse_int::<T>(what, s) {
        Ok(n) => {
            if !r.is_null() {
                // SAFETY: the plugin passes a pointer to a T (or NULL, only to check the string).
                unsafe { r.write(n) };
            }
            0
        }
        Err(e) => {
            fail(e);
            -1
        }
    }
}

macro_rules! parse_int_fns {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        #[no_mangle]
        pub extern "C" fn $name(what: *const c_char, s: *const c_char, r: *mut $t) -> c_int {
            parse_into(what, s, r)
        }
    )*};
}

parse_int_fns! {
    nbdkit_parse_int: c_int,
    nbdkit_parse_unsigned: c_uint,
    nbdkit_parse_int8_t: i8,
    nbdkit_parse_uint8_t: u8,
    nbdkit_parse_int16_t: i16,
    nbdkit_parse_uint16_t: u16,
    nbdkit_parse_int32_t: i32,
    nbdkit_parse_uint32_t: u32,
    nbdkit_parse_int64_t: i64,
    nbdkit_parse_uint64_t: u64,
}

#[no_mangle]
pub extern "C" fn nbdkit_parse_probability(what: *const c_char, s: *const c_char, r: *mut f64) -> c_int {
    let what = arg("what", what).unwrap_or("probability");
    let Some(s) = arg(what, s) else { return -1 };
    match nbdforge_api::parse_probability(what, s) {
        Ok(p) => {
            if !r.is_null() {
                // SAFETY: the plugin passes a pointer to a double.
                unsafe { r.write(p) };
            }
            0
        }
        Err(e) => {
            fail(e);
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_parse_delay(
    what: *const c_char,
    s: *const c_char,
    sec: *mut c_uint,
    nsec: *mut c_uint,
) -> c_int {
    let what = arg("what", what).unwrap_or("delay");
    let Some(s) = arg(what, s) else { return -1 };
    let d = match nbdforge_api::parse_delay(what, s) {
        Ok(d) => d,
        Err(e) => {
            fail(e);
            return -1;
        }
    };
    let Ok(secs) = c_uint::try_from(d.as_secs()) else {
        fail(Error::invalid(format!("{what}={s}: delay is out of range")));
        return -1;
    };
    if !sec.is_null() && !nsec.is_null() {
        // SAFETY: the plugin passes two pointers to unsigned ints.
        unsafe {
            sec.write(secs);
            nsec.write(d.subsec_nanos());
        }
    }
    0
}

#[no_mangle]
pub extern "C" fn nbdkit_read_password(value: *const c_char, password: *mut *mut c_char) -> c_int {
    let Some(v) = arg("password", value) else { return -1 };
    if password.is_null() {
        fail(Error::invalid("nbdkit_read_password: NULL result pointer"));
        return -1;
    }
    match nbdforge_api::read_password("password", v) {
        Ok(p) => {
            // SAFETY: the plugin passes a pointer to a char * to fill; it frees the result.
            unsafe { password.write(malloc_string(&p)) };
            0
        }
        Err(e) => {
            // SAFETY: as above; nbdkit sets it to NULL on failure.
            unsafe { password.write(std::ptr::null_mut()) };
            fail(e);
            -1
        }
    }
}

fn path_fn(p: *const c_char, resolve: fn(&str, &str) -> nbdforge_api::Result<std::path::PathBuf>) -> *mut c_char {
    let Some(p) = arg("path", p) else { return std::ptr::null_mut() };
    match resolve("path", p) {
        Ok(path) => malloc_string(&path.to_string_lossy()),
        Err(e) => {
            fail(e);
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_realpath(p: *const c_char) -> *mut c_char {
    path_fn(p, nbdforge_api::realpath)
}

#[no_mangle]
pub extern "C" fn nbdkit_absolute_path(p: *const c_char) -> *mut c_char {
    path_fn(p, nbdforge_api::absolute_path)
}

// --- The server and the connection ---------------------------------------------------------

#[no_mangle]
pub extern "C" fn nbdkit_stdio_safe() -> c_int {
    server::stdio_safe() as c_int
}

#[no_mangle]
pub extern "C" fn nbdkit_shutdown() {
    server::shutdown();
}

#[no_mangle]
pub extern "C" fn nbdkit_disconnect(force: c_int) {
    match context::current().and_then(|c| c.conn.clone()) {
        Some(conn) => conn.disconnect(force != 0),
        None => tracing::debug!("{}: nbdkit_disconnect outside a connection: ignored", context::plugin_name()),
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_nanosleep(sec: c_uint, nsec: c_uint) -> c_int {
    let d = Duration::new(u64::from(sec), 0) + Duration::from_nanos(u64::from(nsec));
    let r = match context::current().and_then(|c| c.conn.clone()) {
        Some(conn) => conn.sleep(d),
        None => server::sleep(d),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            fail(e);
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_export_name() -> *const c_char {
    match context::current().and_then(|c| c.export_name.as_ref().map(|n| n.as_ptr())) {
        Some(p) => p,
        None => {
            fail(Error::invalid("no connection in this context"));
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_is_tls() -> c_int {
    match context::current() {
        Some(c) => c.tls as c_int,
        None => {
            fail(Error::invalid("no connection in this context"));
            -1
        }
    }
}

/// The client of the calling callback, or an error for calls outside a connection.
fn client() -> Option<nbdforge_api::ClientInfo> {
    let c = context::current().and_then(|c| c.client().cloned());
    if c.is_none() {
        fail(Error::invalid("no connection in this context"));
    }
    c
}

fn id_or_fail(r: nbdforge_api::Result<i64>) -> i64 {
    r.unwrap_or_else(|e| {
        fail(e);
        -1
    })
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_pid() -> i64 {
    client().map_or(-1, |c| id_or_fail(c.pid().map(i64::from)))
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_uid() -> i64 {
    client().map_or(-1, |c| id_or_fail(c.uid().map(i64::from)))
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_gid() -> i64 {
    client().map_or(-1, |c| id_or_fail(c.gid().map(i64::from)))
}

/// nbdkit_peer_tls_dn and _issuer_dn: an empty string when there is no certificate.
fn tls_string(pick: fn(&nbdforge_api::ClientInfo) -> Option<&str>) -> *mut c_char {
    match client() {
        Some(c) => malloc_string(pick(&c).unwrap_or("")),
        None => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_tls_dn() -> *mut c_char {
    tls_string(|c| c.tls_dn())
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_tls_issuer_dn() -> *mut c_char {
    tls_string(|c| c.tls_issuer_dn())
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_security_context() -> *mut c_char {
    if client().is_some() {
        fail(Error::new(libc::ENOTSUP, "the peer's security context is not known to this server"));
    }
    std::ptr::null_mut()
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_name(addr: *mut libc::sockaddr, addrlen: *mut libc::socklen_t) -> c_int {
    let Some(c) = client() else { return -1 };
    let raw = match c.peer {
        Peer::Tcp(a) => socket2::SockAddr::from(a),
        Peer::Vsock { cid, port } => socket2::SockAddr::vsock(cid, port),
        Peer::Unix { .. } => match socket2::SockAddr::unix("") {
            Ok(a) => a,
            Err(e) => {
                fail(Error::from_io("peer name", &e));
                return -1;
            }
        },
        Peer::Local => {
            fail(Error::new(libc::ENOTSOCK, "the client is not on a socket"));
            return -1;
        }
    };
    if addr.is_null() || addrlen.is_null() {
        fail(Error::invalid("nbdkit_peer_name: NULL address"));
        return -1;
    }
    // SAFETY: `addrlen` points at the size of the plugin's buffer `addr`; at most that many
    // bytes are copied into it, and the full length is reported back, as getpeername does.
    unsafe {
        let room = *addrlen as usize;
        let n = (raw.len() as usize).min(room);
        std::ptr::copy_nonoverlapping(raw.as_ptr() as *const u8, addr as *mut u8, n);
        *addrlen = raw.len();
    }
    0
}

// --- Extents and exports ------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nbdkit_add_extent(e: *mut CExtents, offset: u64, length: u64, kind: u32) -> c_int {
    if e.is_null() {
        fail(Error::invalid("nbdkit_add_extent: NULL extents"));
        return -1;
    }
    // SAFETY: a `struct nbdkit_extents *` is the one the plugin's extents callback was called
    // with, pointing at a live ExtentsArg for that call, or one from nbdkit_extents_new.
    let e = unsafe { &mut *(e as *mut ExtentsArg) };
    match e.list().add(offset, length, kind & 3) {
        Ok(()) => 0,
        Err(err) => {
            fail(err);
            -1
        }
    }
}

/// nbdkit's limits on what list_exports may return.
const MAX_EXPORTS: usize = 10_000;
const MAX_NAME: usize = 4096;

fn exports<'a>(e: *mut CExports) -> Option<&'a mut ExportsArg> {
    if e.is_null() {
        fail(Error::invalid("NULL exports list"));
        return None;
    }
    // SAFETY: a `struct nbdkit_exports *` is the one the plugin's list_exports callback was
    // called with, pointing at a live ExportsArg for that call, or one from nbdkit_exports_new.
    let list = unsafe { &mut *(e as *mut ExportsArg) };
    if list.0.len() >= MAX_EXPORTS {
        fail(Error::new(libc::ENOMEM, format!("too many exports (the limit is {MAX_EXPORTS})")));
        return None;
    }
    Some(list)
}

#[no_mangle]
pub extern "C" fn nbdkit_add_export(e: *mut CExports, name: *const c_char, description: *const c_char) -> c_int {
    let Some(list) = exports(e) else { return -1 };
    let Some(name) = arg("export name", name) else { return -1 };
    if name.len() > MAX_NAME {
        fail(Error::invalid(format!("export name longer than {MAX_NAME} bytes")));
        return -1;
    }
    let description = if description.is_null() {
        None
    } else {
        let Some(d) = arg("export description", description) else { return -1 };
        Some(d)
    };
    let description = description.map(|d| CString::new(d).expect("from a C string"));
    list.0.push((Some(CString::new(name).expect("from a C string")), description));
    0
}

#[no_mangle]
pub extern "C" fn nbdkit_use_default_export(e: *mut CExports) -> c_int {
    let Some(list) = exports(e) else { return -1 };
    list.0.push((None, None));
    0
}

/// `struct nbdkit_extent`, returned by value.
#[repr(C)]
pub struct CExtent {
    offset: u64,
    length: u64,
    kind: u32,
}

/// `struct nbdkit_export`, returned by value; the strings belong to the list.
#[repr(C)]
pub struct CExport {
    name: *const c_char,
    description: *const c_char,
}

// The list functions of nbdkit-filter.h. Plugins built from nbdkit's tree link them too (its
// cleanup helpers refer to nbdkit_extents_free and nbdkit_exports_free), so a plugin does
// not even load without them.

#[no_mangle]
pub extern "C" fn nbdkit_extents_new(start: u64, end: u64) -> *mut CExtents {
    if start > end || end > nbdforge_api::MAX_SIZE {
        fail(Error::invalid(format!("nbdkit_extents_new: bad range [{start}, {end})")));
        return std::ptr::null_mut();
    }
    Box::into_raw(Box::new(ExtentsArg::Owned(nbdforge_api::Extents::new(start, end)))) as *mut CExtents
}

#[no_mangle]
pub extern "C" fn nbdkit_extents_free(e: *mut CExtents) {
    if !e.is_null() {
        // SAFETY: a list the plugin made with nbdkit_extents_new (the only ones it may free),
        // freed once.
        drop(unsafe { Box::from_raw(e as *mut ExtentsArg<'static>) });
    }
}

/// The runs of a list the plugin holds.
fn runs<'a>(e: *const CExtents) -> &'a [nbdforge_api::Extent] {
    if e.is_null() {
        return &[];
    }
    // SAFETY: as in nbdkit_add_extent; only read here.
    unsafe { &mut *(e as *mut ExtentsArg) }.list().as_slice()
}

#[no_mangle]
pub extern "C" fn nbdkit_extents_count(e: *const CExtents) -> usize {
    runs(e).len()
}

#[no_mangle]
pub extern "C" fn nbdkit_get_extent(e: *const CExtents, i: usize) -> CExtent {
    let r = runs(e).get(i).copied().unwrap_or(nbdforge_api::Extent { offset: 0, length: 0, flags: 0 });
    CExtent { offset: r.offset, length: r.length, kind: r.flags }
}

#[no_mangle]
pub extern "C" fn nbdkit_exports_new() -> *mut CExports {
    Box::into_raw(Box::<ExportsArg>::default()) as *mut CExports
}

#[no_mangle]
pub extern "C" fn nbdkit_exports_free(e: *mut CExports) {
    if !e.is_null() {
        // SAFETY: a list the plugin made with nbdkit_exports_new, freed once.
        drop(unsafe { Box::from_raw(e as *mut ExportsArg) });
    }
}

fn export_list<'a>(e: *const CExports) -> &'a [(Option<CString>, Option<CString>)] {
    if e.is_null() {
        return &[];
    }
    // SAFETY: as in nbdkit_add_export; only read here.
    &unsafe { &*(e as *const ExportsArg) }.0
}

#[no_mangle]
pub extern "C" fn nbdkit_exports_count(e: *const CExports) -> usize {
    export_list(e).len()
}

#[no_mangle]
pub extern "C" fn nbdkit_get_export(e: *const CExports, i: usize) -> CExport {
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    match export_list(e).get(i) {
        Some((name, description)) => {
            CExport { name: name.as_ref().map_or(c"".as_ptr(), |n| n.as_ptr()), description: ptr(description) }
        }
        None => CExport { name: std::ptr::null(), description: std::ptr::null() },
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_debug_hexdump(buf: *const c_void, len: usize, prefix: *const c_char, start: u64) {
    if buf.is_null() && len > 0 {
        return;
    }
    let prefix = if prefix.is_null() { "" } else { arg("prefix", prefix).unwrap_or("") };
    // SAFETY: the plugin passes `len` readable bytes at `buf`.
    let bytes = if len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(buf as *const u8, len) } };
    let name = context::plugin_name();
    for (i, row) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            row.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        tracing::debug!("{name}: {prefix}{:08x}: {:<47} |{ascii}|", start + 16 * i as u64, hex.join(" "));
    }
}

// --- The filter's contexts and extents helpers (nbdkit-filter.h) ---------------------------

#[no_mangle]
pub extern "C" fn nbdkit_context_get_backend(cx: abi::Context) -> abi::Backend {
    if cx.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the context a filter's open was called with, alive while its handle is.
    let c = unsafe { filter::context_of(cx) };
    &*c.backend as *const filter::BackendRef as abi::Backend
}

#[no_mangle]
pub extern "C" fn nbdkit_next_context_open(
    backend: abi::Backend,
    readonly: c_int,
    export: *const c_char,
    _shared: c_int,
) -> abi::Next {
    let export = if export.is_null() { "" } else { arg("export name", export).unwrap_or("") };
    match filter::open_below(backend, readonly != 0, export) {
        Ok(n) => n as abi::Next,
        Err(e) => {
            fail(e);
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_next_context_close(next: abi::Next) {
    if next.is_null() {
        return;
    }
    // SAFETY: an nbdkit_next * the filter got from nbdkit_next_context_open (or took back with
    // nbdkit_context_set_next), closed once.
    let n = unsafe { Box::from_raw(next as *mut filter::NextCtx) };
    if let Err(e) = n.handle.finalize() {
        tracing::error!("{}: {}", context::plugin_name(), e.message);
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_context_set_next(cx: abi::Context, next: abi::Next) -> abi::Next {
    if cx.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: as in nbdkit_context_get_backend.
    let c = unsafe { filter::context_of(cx) };
    c.next.swap(next as *mut filter::NextCtx, std::sync::atomic::Ordering::SeqCst) as abi::Next
}

#[no_mangle]
pub extern "C" fn nbdkit_extents_full(
    next: abi::Next,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> *mut CExtents {
    if next.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the nbdkit_next * a filter callback was given.
    let n = unsafe { filter::next_ctx(next) };
    match filter::extents_full(n, count.into(), offset, filter::flags_from_c(flags)) {
        Ok(e) => Box::into_raw(Box::new(ExtentsArg::Owned(e))) as *mut CExtents,
        Err(e) => {
            if !err.is_null() {
                // SAFETY: the filter's errno out pointer.
                unsafe { err.write(e.errno) };
            }
            fail(e);
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_extents_aligned(
    next: abi::Next,
    count: u32,
    offset: u64,
    flags: u32,
    align: u32,
    extents: *mut CExtents,
    err: *mut c_int,
) -> c_int {
    if next.is_null() || extents.is_null() || align == 0 || !align.is_power_of_two() {
        fail(Error::invalid("nbdkit_extents_aligned: bad arguments"));
        return -1;
    }
    // SAFETY: the nbdkit_next * a filter callback was given, and an extents list of ours.
    let (n, out) = unsafe { (filter::next_ctx(next), &mut *(extents as *mut ExtentsArg)) };
    let align = u64::from(align);
    let end = (offset + u64::from(count)).div_ceil(align) * align;
    let size = n.handle.get_size().unwrap_or(end);
    let r = filter::extents_full(n, end.min(size).saturating_sub(offset).max(1), offset, filter::flags_from_c(flags));
    match r {
        Ok(e) => {
            for (o, l, t) in filter::aligned(e.as_slice(), align) {
                if let Err(x) = out.list().add(o, l, t) {
                    fail(x);
                    return -1;
                }
            }
            0
        }
        Err(e) => {
            if !err.is_null() {
                // SAFETY: the filter's errno out pointer.
                unsafe { err.write(e.errno) };
            }
            fail(e);
            -1
        }
    }
}

extern "C" {
    fn nbdkit_error(fmt: *const c_char, ...);
    fn nbdkit_verror(fmt: *const c_char, args: *mut c_void);
    fn nbdkit_debug(fmt: *const c_char, ...);
    fn nbdkit_vdebug(fmt: *const c_char, args: *mut c_void);
    fn nbdkit_printf_intern(fmt: *const c_char, ...) -> *const c_char;
    fn nbdkit_vprintf_intern(fmt: *const c_char, args: *mut c_void) -> *const c_char;
}

/// Every exported function, referenced so that the linker keeps them all (the C ones live in a
/// static archive, whose objects are only linked when something refers to them).
#[used]
static EXPORTED: Table = Table([
    nbdkit_error as *const c_void,
    nbdkit_verror as *const c_void,
    nbdkit_debug as *const c_void,
    nbdkit_vdebug as *const c_void,
    nbdkit_printf_intern as *const c_void,
    nbdkit_vprintf_intern as *const c_void,
    nbdkit_strdup_intern as *const c_void,
    nbdkit_strndup_intern as *const c_void,
    nbdkit_set_error as *const c_void,
    nbdkit_parse_size as *const c_void,
    nbdkit_parse_bool as *const c_void,
    nbdkit_parse_int as *const c_void,
    nbdkit_parse_unsigned as *const c_void,
    nbdkit_parse_int8_t as *const c_void,
    nbdkit_parse_uint8_t as *const c_void,
    nbdkit_parse_int16_t as *const c_void,
    nbdkit_parse_uint16_t as *const c_void,
    nbdkit_parse_int32_t as *const c_void,
    nbdkit_parse_uint32_t as *const c_void,
    nbdkit_parse_int64_t as *const c_void,
    nbdkit_parse_uint64_t as *const c_void,
    nbdkit_parse_probability as *const c_void,
    nbdkit_parse_delay as *const c_void,
    nbdkit_read_password as *const c_void,
    nbdkit_realpath as *const c_void,
    nbdkit_absolute_path as *const c_void,
    nbdkit_stdio_safe as *const c_void,
    nbdkit_shutdown as *const c_void,
    nbdkit_disconnect as *const c_void,
    nbdkit_nanosleep as *const c_void,
    nbdkit_export_name as *const c_void,
    nbdkit_is_tls as *const c_void,
    nbdkit_peer_pid as *const c_void,
    nbdkit_peer_uid as *const c_void,
    nbdkit_peer_gid as *const c_void,
    nbdkit_peer_tls_dn as *const c_void,
    nbdkit_peer_tls_issuer_dn as *const c_void,
    nbdkit_peer_security_context as *const c_void,
    nbdkit_peer_name as *const c_void,
    nbdkit_add_extent as *const c_void,
    nbdkit_add_export as *const c_void,
    nbdkit_use_default_export as *const c_void,
    nbdkit_debug_hexdump as *const c_void,
    nbdkit_extents_new as *const c_void,
    nbdkit_extents_free as *const c_void,
    nbdkit_extents_count as *const c_void,
    nbdkit_get_extent as *const c_void,
    nbdkit_exports_new as *const c_void,
    nbdkit_exports_free as *const c_void,
    nbdkit_exports_count as *const c_void,
    nbdkit_get_export as *const c_void,
    nbdkit_context_get_backend as *const c_void,
    nbdkit_next_context_open as *const c_void,
    nbdkit_next_context_close as *const c_void,
    nbdkit_context_set_next as *const c_void,
    nbdkit_extents_full as *const c_void,
    nbdkit_extents_aligned as *const c_void,
    nbdforge_cplugin_error as *const c_void,
    nbdforge_cplugin_debug as *const c_void,
]);

struct Table([*const c_void; 59]);

// SAFETY (for the compiler, no block here): the table holds function addresses, never
// dereferenced by Rust, and is never written.
unsafe impl Sync for Table {}

/// The table of addresses, for the binary to refer to (so that it is linked at all).
pub fn exported() -> usize {
    std::hint::black_box(EXPORTED.0.as_ptr()) as usize
}
