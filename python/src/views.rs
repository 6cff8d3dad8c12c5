//! Python `memoryview`s over the server's own buffers, so that `pread` fills the reply buffer and
//! `pwrite` reads the request buffer without a copy in between. The one place of the plugin
//! that needs `unsafe`: CPython's `PyMemoryView_FromMemory` makes a view of raw memory.
//!
//! A view must not outlive the call it is made for; [`with_view`] releases it when the callback
//! returns, so a script that keeps the object it was given finds it released (`ValueError` on
//! use) rather than pointing at memory the server reused. A script that makes its own view of
//! the view (a slice, `numpy.frombuffer`) and keeps that past the call is wrong, as under nbdkit.

use pyo3::ffi;
use pyo3::prelude::*;

/// Runs `f` with a writable `memoryview` of `buf`, released afterwards.
pub fn with_writable<'py, R>(py: Python<'py>, buf: &mut [u8], f: impl FnOnce(&Bound<'py, PyAny>) -> R) -> PyResult<R> {
    // SAFETY: the view covers exactly `buf`, which is exclusively borrowed for the whole call and
    // so stays valid and unaliased while the script may write through it; `with_view` releases
    // the view before the borrow ends.
    let view = unsafe { from_memory(py, buf.as_mut_ptr(), buf.len(), ffi::PyBUF_WRITE) }?;
    with_view(view, f)
}

/// Runs `f` with a read-only `memoryview` of `buf`, released afterwards.
pub fn with_readonly<'py, R>(py: Python<'py>, buf: &[u8], f: impl FnOnce(&Bound<'py, PyAny>) -> R) -> PyResult<R> {
    // SAFETY: the view covers exactly `buf`, borrowed for the whole call; PyBUF_READ makes the
    // view refuse writes, so the pointer's mutability is never used; `with_view` releases the
    // view before the borrow ends.
    let view = unsafe { from_memory(py, buf.as_ptr().cast_mut(), buf.len(), ffi::PyBUF_READ) }?;
    with_view(view, f)
}

fn with_view<'py, R>(view: Bound<'py, PyAny>, f: impl FnOnce(&Bound<'py, PyAny>) -> R) -> PyResult<R> {
    let result = f(&view);
    // Fails only while something still holds an export of the view (a buffer kept by a C
    // extension); nothing more can be done about that one.
    if let Err(e) = view.call_method0(pyo3::intern!(view.py(), "release")) {
        nbdforge_api::debug!("python: the buffer passed to the script is still in use: {e}");
    }
    Ok(result)
}

/// # Safety
/// `ptr` must be valid for reads (and, with `PyBUF_WRITE`, writes) of `len` bytes until the
/// view is released.
unsafe fn from_memory(py: Python<'_>, ptr: *mut u8, len: usize, flags: i32) -> PyResult<Bound<'_, PyAny>> {
    let len = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("buffer too large for a memoryview"))?;
    // SAFETY: the caller guarantees the memory; the call needs the GIL, which `py` proves, and
    // returns a new reference or NULL with an exception set, which from_owned_ptr_or_err takes.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyMemoryView_FromMemory(ptr.cast(), len, flags)) }
}
