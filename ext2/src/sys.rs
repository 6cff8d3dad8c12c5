//! The binding to e2fsprogs' libext2fs: the only `unsafe` code of the filter.
//!
//! libext2fs reads and writes a filesystem through an "I/O manager", a table of C callbacks.
//! This module gives it one whose callbacks reach a [`Device`] (the layer below), and wraps the
//! few library calls the filter needs in [`Ext2`], one open filesystem and at most one open file
//! in it. libext2fs is not thread-safe: an [`Ext2`] is used by one thread at a time (the filter
//! keeps it behind a mutex).
//!
//! The library finds the device through the channel's `open` callback, which it calls from
//! inside `ext2fs_open2` on the same thread: the device is handed over in a thread-local slot
//! rather than encoded in the device name.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_ulonglong, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Mutex, Once};

use crate::device::Device;

type Errcode = c_long;
type Filsys = *mut c_void;
type FileHandle = *mut c_void;

// From <ext2fs/ext2_err.h> and <ext2fs/ext2fs.h> (libext2fs.so.2).
const EXT2_ET_MAGIC_IO_CHANNEL: Errcode = 2133571333;
const EXT2_ET_MAGIC_IO_MANAGER: Errcode = 2133571335;
const EXT2_ET_RO_FILSYS: Errcode = 2133571349;
const EXT2_ET_NO_MEMORY: Errcode = 2133571398;
/// The filesystem has features libext2fs can read but not write.
pub const EXT2_ET_RO_UNSUPP_FEATURE: Errcode = 2133571396;
const EXT2_ET_BLOCK_ALLOC_FAIL: Errcode = 2133571400;
const EXT2_ET_FILE_NOT_FOUND: Errcode = 2133571404;
const EXT2_ET_INVALID_ARGUMENT: Errcode = 2133571416;
const EXT2_FLAG_RW: c_int = 0x01;
const EXT2_FLAG_64BITS: c_int = 0x20000;
const EXT2_FILE_WRITE: c_int = 0x0001;
const EXT2_SEEK_SET: c_int = 0;
const BMAP_RET_UNINIT: c_int = 0x0001;
const EXT2_ROOT_INO: u32 = 2;
const EXT2_EXTENT_CURRENT: c_int = 0x0000;
const EXT2_EXTENT_FLAGS_UNINIT: u32 = 0x0002;

/// `struct struct_io_channel` (<ext2fs/ext2_io.h>).
#[repr(C)]
struct IoChannel {
    magic: Errcode,
    manager: *const IoManager,
    name: *mut c_char,
    block_size: c_int,
    read_error: *const c_void,
    write_error: *const c_void,
    refcount: c_int,
    flags: c_int,
    reserved: [c_long; 14],
    private_data: *mut c_void,
    app_data: *mut c_void,
    align: c_int,
}

type Chan = *mut IoChannel;

/// `struct struct_io_manager` (<ext2fs/ext2_io.h>); callbacks left `None` are optional.
#[repr(C)]
struct IoManager {
    magic: Errcode,
    name: *const c_char,
    open: Option<unsafe extern "C" fn(*const c_char, c_int, *mut Chan) -> Errcode>,
    close: Option<unsafe extern "C" fn(Chan) -> Errcode>,
    set_blksize: Option<unsafe extern "C" fn(Chan, c_int) -> Errcode>,
    read_blk: Option<unsafe extern "C" fn(Chan, c_ulong, c_int, *mut c_void) -> Errcode>,
    write_blk: Option<unsafe extern "C" fn(Chan, c_ulong, c_int, *const c_void) -> Errcode>,
    flush: Option<unsafe extern "C" fn(Chan) -> Errcode>,
    write_byte: Option<unsafe extern "C" fn(Chan, c_ulong, c_int, *const c_void) -> Errcode>,
    set_option: Option<unsafe extern "C" fn(Chan, *const c_char, *const c_char) -> Errcode>,
    get_stats: Option<unsafe extern "C" fn(Chan, *mut *mut c_void) -> Errcode>,
    read_blk64: Option<unsafe extern "C" fn(Chan, c_ulonglong, c_int, *mut c_void) -> Errcode>,
    write_blk64: Option<unsafe extern "C" fn(Chan, c_ulonglong, c_int, *const c_void) -> Errcode>,
    discard: Option<unsafe extern "C" fn(Chan, c_ulonglong, c_ulonglong) -> Errcode>,
    cache_readahead: Option<unsafe extern "C" fn(Chan, c_ulonglong, c_ulonglong) -> Errcode>,
    zeroout: Option<unsafe extern "C" fn(Chan, c_ulonglong, c_ulonglong) -> Errcode>,
    reserved: [c_long; 14],
}

/// The manager is a constant table of function pointers and a static name.
struct Manager(IoManager);
// SAFETY: the table is never written after initialisation, and its pointers are to functions
// and to a static string, all valid from any thread.
unsafe impl Sync for Manager {}

const MANAGER_NAME: &CStr = c"nbdforge-ext2";

static MANAGER: Manager = Manager(IoManager {
    magic: EXT2_ET_MAGIC_IO_MANAGER,
    name: MANAGER_NAME.as_ptr(),
    open: Some(io_open),
    close: Some(io_close),
    set_blksize: Some(io_set_blksize),
    read_blk: Some(io_read_blk),
    write_blk: Some(io_write_blk),
    flush: Some(io_flush),
    write_byte: Some(io_write_byte),
    set_option: Some(io_set_option),
    get_stats: None,
    read_blk64: Some(io_read_blk64),
    write_blk64: Some(io_write_blk64),
    discard: None,
    cache_readahead: None,
    zeroout: None,
    reserved: [0; 14],
});

#[link(name = "ext2fs")]
extern "C" {
    fn ext2fs_open2(
        name: *const c_char,
        io_options: *const c_char,
        flags: c_int,
        superblock: c_int,
        block_size: c_uint,
        manager: *const IoManager,
        ret_fs: *mut Filsys,
    ) -> Errcode;
    fn ext2fs_close2(fs: Filsys, flags: c_int) -> Errcode;
    fn ext2fs_free(fs: Filsys);
    fn ext2fs_flush(fs: Filsys) -> Errcode;
    fn ext2fs_namei(fs: Filsys, root: u32, cwd: u32, name: *const c_char, inode: *mut u32) -> Errcode;
    fn ext2fs_read_inode(fs: Filsys, ino: u32, inode: *mut Inode) -> Errcode;
    fn ext2fs_bmap2(
        fs: Filsys,
        ino: u32,
        inode: *mut Inode,
        block_buf: *mut c_char,
        bmap_flags: c_int,
        block: u64,
        ret_flags: *mut c_int,
        phys_blk: *mut u64,
    ) -> Errcode;
    fn ext2fs_extent_open2(fs: Filsys, ino: u32, inode: *mut Inode, handle: *mut *mut c_void) -> Errcode;
    fn ext2fs_extent_goto2(handle: *mut c_void, leaf_level: c_int, block: u64) -> Errcode;
    fn ext2fs_extent_get(handle: *mut c_void, flags: c_int, extent: *mut Extent) -> Errcode;
    fn ext2fs_extent_free(handle: *mut c_void);
    fn ext2fs_read_bitmaps(fs: Filsys) -> Errcode;
    fn ext2fs_punch(fs: Filsys, ino: u32, inode: *mut Inode, block_buf: *mut c_char, start: u64, end: u64) -> Errcode;
    fn ext2fs_file_open2(fs: Filsys, ino: u32, inode: *mut Inode, flags: c_int, ret: *mut FileHandle) -> Errcode;
    fn ext2fs_file_close(file: FileHandle) -> Errcode;
    fn ext2fs_file_flush(file: FileHandle) -> Errcode;
    fn ext2fs_file_get_lsize(file: FileHandle, size: *mut u64) -> Errcode;
    fn ext2fs_file_llseek(file: FileHandle, offset: u64, whence: c_int, ret_pos: *mut u64) -> Errcode;
    fn ext2fs_file_read(file: FileHandle, buf: *mut c_void, wanted: c_uint, got: *mut c_uint) -> Errcode;
    fn ext2fs_file_write(file: FileHandle, buf: *const c_void, nbytes: c_uint, written: *mut c_uint) -> Errcode;
    fn initialize_ext2_error_table();
}

#[link(name = "com_err")]
extern "C" {
    fn error_message(code: Errcode) -> *const c_char;
}

/// `struct ext2_inode`: 128 bytes, of which the filter reads only the mode and the flags.
#[repr(C, align(4))]
struct Inode {
    mode: u16,
    before_flags: [u8; 30],
    flags: u32,
    rest: [u8; 92],
}

/// `EXT4_INLINE_DATA_FL`: the file's data is in the inode, not in blocks.
const EXT4_INLINE_DATA_FL: u32 = 0x10000000;
/// `EXT4_EXTENTS_FL`: the file's blocks are mapped by extents (else by indirect blocks).
const EXT4_EXTENTS_FL: u32 = 0x80000;

/// What the filter needs to know of an inode.
#[derive(Debug, Clone, Copy)]
pub struct InodeInfo {
    /// Type and permissions.
    pub mode: u16,
    /// The data is inline in the inode.
    pub inline: bool,
    /// The blocks are mapped by extents.
    pub extents: bool,
}

/// `struct ext2fs_extent`.
#[repr(C)]
#[derive(Default)]
struct Extent {
    pblk: u64,
    lblk: u64,
    len: u32,
    flags: u32,
}

/// An error from libext2fs: its code (an errno, or one of its own) and its message.
#[derive(Debug, Clone)]
pub struct Ext2Error {
    /// libext2fs's code: an errno below 4096, else one of its own.
    pub code: c_long,
    /// What the code means.
    pub message: String,
}

impl Ext2Error {
    fn new(code: Errcode) -> Self {
        Ext2Error { code, message: message(code) }
    }

    /// The errno a client should see.
    pub fn errno(&self) -> i32 {
        match self.code {
            EXT2_ET_FILE_NOT_FOUND => libc::ENOENT,
            EXT2_ET_RO_FILSYS => libc::EROFS,
            EXT2_ET_NO_MEMORY => libc::ENOMEM,
            EXT2_ET_BLOCK_ALLOC_FAIL => libc::ENOSPC,
            1..=4095 => self.code as i32,
            _ => libc::EIO,
        }
    }
}

/// libext2fs's message for an error code (errno values get strerror's).
fn message(code: Errcode) -> String {
    static TABLE: Once = Once::new();
    // error_message writes unknown codes into a static buffer: one caller at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    // SAFETY: registering the library's own error table; Once makes it happen once.
    TABLE.call_once(|| unsafe { initialize_ext2_error_table() });
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: error_message always returns a NUL-terminated string (static, or its buffer,
    // which the lock keeps ours until it is copied).
    unsafe { CStr::from_ptr(error_message(code)) }.to_string_lossy().into_owned()
}

fn check(code: Errcode) -> Result<(), Ext2Error> {
    if code == 0 {
        Ok(())
    } else {
        Err(Ext2Error::new(code))
    }
}

/// Where a block of a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: reads as zeroes.
    Hole,
    /// Allocated but not written yet (an unwritten extent): reads as zeroes.
    Unwritten,
    /// Data at this physical block.
    Data(u64),
}

/// One open filesystem, and the file served from it once [`Ext2::open_file`] has found it.
pub struct Ext2 {
    fs: Filsys,
    file: FileHandle,
    ino: u32,
    device: Arc<Device>,
}

// SAFETY: libext2fs keeps no thread-affine state; the filesystem and file handles are used by
// one thread at a time (every method takes &mut self or runs under the filter's mutex).
unsafe impl Send for Ext2 {}

thread_local! {
    /// The device for the `io_open` that `ext2fs_open2` is about to call on this thread.
    static PENDING: RefCell<Option<Arc<Device>>> = const { RefCell::new(None) };
}

impl Ext2 {
    /// Opens the filesystem on `device`, for writing when `write`.
    pub fn open(device: Arc<Device>, write: bool) -> Result<Ext2, Ext2Error> {
        PENDING.with(|p| *p.borrow_mut() = Some(device.clone()));
        let mut fs: Filsys = ptr::null_mut();
        let flags = EXT2_FLAG_64BITS | if write { EXT2_FLAG_RW } else { 0 };
        // SAFETY: the name and manager are static and valid; fs is written only on success.
        let code = unsafe { ext2fs_open2(MANAGER_NAME.as_ptr(), ptr::null(), flags, 0, 0, &MANAGER.0, &mut fs) };
        PENDING.with(|p| p.borrow_mut().take());
        check(code)?;
        Ok(Ext2 { fs, file: ptr::null_mut(), ino: 0, device })
    }

    /// The device the filesystem is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The inode at `path` (absolute). Symbolic links are followed except in the last
    /// component, as nbdkit does.
    pub fn lookup(&mut self, path: &str) -> Result<u32, Ext2Error> {
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return Ok(EXT2_ROOT_INO);
        }
        let name = CString::new(relative).map_err(|_| Ext2Error::new(EXT2_ET_INVALID_ARGUMENT))?;
        let mut ino = 0u32;
        // SAFETY: fs is open, name is NUL-terminated, ino is a valid out-pointer.
        check(unsafe { ext2fs_namei(self.fs, EXT2_ROOT_INO, EXT2_ROOT_INO, name.as_ptr(), &mut ino) })?;
        Ok(ino)
    }

    /// What inode `ino` is.
    pub fn inode(&mut self, ino: u32) -> Result<InodeInfo, Ext2Error> {
        let mut inode = Inode { mode: 0, before_flags: [0; 30], flags: 0, rest: [0; 92] };
        // SAFETY: inode is a writable buffer of the size of struct ext2_inode.
        check(unsafe { ext2fs_read_inode(self.fs, ino, &mut inode) })?;
        Ok(InodeInfo {
            mode: inode.mode,
            inline: inode.flags & EXT4_INLINE_DATA_FL != 0,
            extents: inode.flags & EXT4_EXTENTS_FL != 0,
        })
    }

    /// Opens inode `ino` as the file to serve.
    pub fn open_file(&mut self, ino: u32, write: bool) -> Result<(), Ext2Error> {
        let mut file: FileHandle = ptr::null_mut();
        let flags = if write { EXT2_FILE_WRITE } else { 0 };
        // SAFETY: fs is open; a null inode asks the library to read it; file is an out-pointer.
        check(unsafe { ext2fs_file_open2(self.fs, ino, ptr::null_mut(), flags, &mut file) })?;
        self.file = file;
        self.ino = ino;
        Ok(())
    }

    fn file(&self) -> Result<FileHandle, Ext2Error> {
        if self.file.is_null() {
            return Err(Ext2Error::new(libc::EBADF as Errcode));
        }
        Ok(self.file)
    }

    /// The open file's size in bytes.
    pub fn size(&mut self) -> Result<u64, Ext2Error> {
        let mut size = 0u64;
        // SAFETY: the file is open; size is an out-pointer.
        check(unsafe { ext2fs_file_get_lsize(self.file()?, &mut size) })?;
        Ok(size)
    }

    /// Reads the open file at `offset` into `buf`; holes, and what lies past inline data, read
    /// as zeroes.
    pub fn read_at(&mut self, mut buf: &mut [u8], mut offset: u64) -> Result<(), Ext2Error> {
        let file = self.file()?;
        while !buf.is_empty() {
            let want = buf.len().min(1 << 30) as c_uint;
            let mut got: c_uint = 0;
            // SAFETY: the file is open; a null result pointer is allowed.
            check(unsafe { ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, ptr::null_mut()) })?;
            // SAFETY: the file is open; buf has at least `want` writable bytes; got is ours.
            check(unsafe { ext2fs_file_read(file, buf.as_mut_ptr().cast(), want, &mut got) })?;
            if got == 0 {
                buf.fill(0);
                break;
            }
            buf = &mut buf[got as usize..];
            offset += u64::from(got);
        }
        Ok(())
    }

    /// Writes `buf` into the open file at `offset`, allocating blocks for holes.
    pub fn write_at(&mut self, mut buf: &[u8], mut offset: u64) -> Result<(), Ext2Error> {
        let file = self.file()?;
        while !buf.is_empty() {
            let want = buf.len().min(1 << 30) as c_uint;
            let mut written: c_uint = 0;
            // SAFETY: the file is open; a null result pointer is allowed.
            check(unsafe { ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, ptr::null_mut()) })?;
            // SAFETY: the file is open for writing; buf has at least `want` readable bytes.
            check(unsafe { ext2fs_file_write(file, buf.as_ptr().cast(), want, &mut written) })?;
            if written == 0 {
                return Err(Ext2Error::new(libc::EIO as Errcode));
            }
            buf = &buf[written as usize..];
            offset += u64::from(written);
        }
        Ok(())
    }

    /// Writes the file's buffered block out.
    pub fn flush_file(&mut self) -> Result<(), Ext2Error> {
        // SAFETY: the file is open.
        check(unsafe { ext2fs_file_flush(self.file()?) })
    }

    /// Writes the filesystem's metadata out (superblock, group descriptors, bitmaps) and
    /// flushes the device.
    pub fn flush_fs(&mut self) -> Result<(), Ext2Error> {
        // SAFETY: fs is open.
        check(unsafe { ext2fs_flush(self.fs) })
    }

    /// Where logical block `block` of the open file is.
    pub fn map(&mut self, block: u64) -> Result<Mapping, Ext2Error> {
        let (mut flags, mut phys): (c_int, u64) = (0, 0);
        // SAFETY: fs is open; a null inode and block buffer ask the library to provide them.
        check(unsafe {
            ext2fs_bmap2(self.fs, self.ino, ptr::null_mut(), ptr::null_mut(), 0, block, &mut flags, &mut phys)
        })?;
        Ok(match (phys, flags & BMAP_RET_UNINIT != 0) {
            (0, _) => Mapping::Hole,
            (_, true) => Mapping::Unwritten,
            (p, false) => Mapping::Data(p),
        })
    }

    /// Where logical block `block` of the open file is, and for how many blocks from there the
    /// mapping goes on alike (contiguous data, or unwritten): the extent holding it for
    /// extent-mapped files, one block otherwise and in holes.
    pub fn map_run(&mut self, block: u64) -> Result<(Mapping, u64), Ext2Error> {
        if let Some(run) = self.extent_at(block) {
            return Ok(run);
        }
        Ok((self.map(block)?, 1))
    }

    /// The extent holding `block`, or `None` (not an extent-mapped file, a hole, an error).
    fn extent_at(&mut self, block: u64) -> Option<(Mapping, u64)> {
        let mut handle: *mut c_void = ptr::null_mut();
        // SAFETY: fs is open; a null inode asks the library to read it; handle is an out-pointer.
        if unsafe { ext2fs_extent_open2(self.fs, self.ino, ptr::null_mut(), &mut handle) } != 0 {
            return None;
        }
        let mut extent = Extent::default();
        // SAFETY: handle is open until freed below; extent is a valid out-pointer.
        let found = unsafe {
            ext2fs_extent_goto2(handle, 0, block) == 0
                && ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &mut extent) == 0
        };
        // SAFETY: handle was opened above and is freed once.
        unsafe { ext2fs_extent_free(handle) };
        let end = extent.lblk.checked_add(u64::from(extent.len))?;
        if !found || extent.lblk > block || block >= end || extent.pblk == 0 {
            return None;
        }
        let run = end - block;
        if extent.flags & EXT2_EXTENT_FLAGS_UNINIT != 0 {
            return Some((Mapping::Unwritten, run));
        }
        Some((Mapping::Data(extent.pblk.checked_add(block - extent.lblk)?), run))
    }

    /// Deallocates logical blocks `first..=last` of the open file (they read as zeroes after).
    /// The file is closed around the call: its handle keeps a copy of the inode, which the
    /// punch changes.
    pub fn punch(&mut self, first: u64, last: u64) -> Result<(), Ext2Error> {
        // Freeing blocks marks them in the block bitmap only if it is loaded (allocating
        // loads it; freeing does not).
        // SAFETY: fs is open.
        check(unsafe { ext2fs_read_bitmaps(self.fs) })?;
        let file = self.file()?;
        self.file = ptr::null_mut();
        // SAFETY: the file is open; it is closed once (the pointer was cleared).
        check(unsafe { ext2fs_file_close(file) })?;
        // SAFETY: fs is open; null inode and block buffer ask the library to provide them.
        let punched = check(unsafe { ext2fs_punch(self.fs, self.ino, ptr::null_mut(), ptr::null_mut(), first, last) });
        let reopened = self.open_file(self.ino, true);
        punched.and(reopened)
    }

    /// Closes the file and the filesystem, writing out what is dirty.
    pub fn close(mut self) -> Result<(), Ext2Error> {
        self.close_all()
    }

    fn close_all(&mut self) -> Result<(), Ext2Error> {
        let mut result = Ok(());
        if !self.file.is_null() {
            // SAFETY: the file is open; it is closed once (the pointer is cleared).
            result = check(unsafe { ext2fs_file_close(self.file) });
            self.file = ptr::null_mut();
        }
        if !self.fs.is_null() {
            // SAFETY: fs is open; it is closed once. ext2fs_close2 frees it on success only.
            let code = unsafe { ext2fs_close2(self.fs, 0) };
            if code != 0 {
                // SAFETY: after a failed close the handle is still ours to free.
                unsafe { ext2fs_free(self.fs) };
            }
            self.fs = ptr::null_mut();
            result = result.and(check(code));
        }
        result
    }
}

impl Drop for Ext2 {
    fn drop(&mut self) {
        if let Err(e) = self.close_all() {
            tracing::error!("ext2: closing the filesystem: {}", e.message);
        }
    }
}

// ---- The I/O manager's callbacks. ----------------------------------------------------------

/// Runs a callback body, turning a panic into EIO: a panic must not unwind into C.
fn guarded(body: impl FnOnce() -> Errcode) -> Errcode {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(libc::EIO as Errcode)
}

/// Runs one device operation: its errno for the library, its message kept by the device.
fn status(dev: &Device, op: impl FnOnce(&Device) -> nbdforge_api::Result<()>) -> Errcode {
    match op(dev) {
        Ok(()) => 0,
        Err(e) => {
            let code = Errcode::from(e.errno.max(1));
            dev.remember(e);
            code
        }
    }
}

/// The device behind a channel.
///
/// # Safety
/// `chan` must be a channel made by `io_open` and not yet freed by `io_close`.
unsafe fn device<'a>(chan: Chan) -> &'a Device {
    // SAFETY: per the contract, private_data holds the Box<Arc<Device>> io_open made.
    unsafe { &*((*chan).private_data as *const Arc<Device>) }
}

/// The byte range of `count` blocks at `block` (a negative count is a byte count).
///
/// # Safety
/// As for [`device`].
unsafe fn range(chan: Chan, block: u64, count: c_int) -> Option<(u64, usize)> {
    // SAFETY: chan is live (the caller's contract).
    let bs = unsafe { (*chan).block_size } as u64;
    let len = if count < 0 { u64::from(count.unsigned_abs()) } else { count as u64 * bs };
    Some((block.checked_mul(bs)?, usize::try_from(len).ok()?))
}

unsafe extern "C" fn io_open(_name: *const c_char, _flags: c_int, out: *mut Chan) -> Errcode {
    guarded(|| {
        let Some(dev) = PENDING.with(|p| p.borrow_mut().take()) else {
            return EXT2_ET_INVALID_ARGUMENT;
        };
        dev.set_block_size(1024);
        let chan = Box::new(IoChannel {
            magic: EXT2_ET_MAGIC_IO_CHANNEL,
            manager: &MANAGER.0,
            name: CString::from(MANAGER_NAME).into_raw(),
            block_size: 1024,
            read_error: ptr::null(),
            write_error: ptr::null(),
            refcount: 1,
            flags: 0,
            reserved: [0; 14],
            private_data: Box::into_raw(Box::new(dev)).cast(),
            app_data: ptr::null_mut(),
            align: 0,
        });
        // SAFETY: out is the library's valid out-pointer.
        unsafe { *out = Box::into_raw(chan) };
        0
    })
}

unsafe extern "C" fn io_close(chan: Chan) -> Errcode {
    guarded(|| {
        // SAFETY: the library closes only channels io_open made, once per reference.
        unsafe {
            (*chan).refcount -= 1;
            if (*chan).refcount > 0 {
                return 0;
            }
            let chan = Box::from_raw(chan);
            drop(Box::from_raw(chan.private_data as *mut Arc<Device>));
            drop(CString::from_raw(chan.name));
        }
        0
    })
}

unsafe extern "C" fn io_set_blksize(chan: Chan, size: c_int) -> Errcode {
    guarded(|| {
        if size <= 0 {
            return EXT2_ET_INVALID_ARGUMENT;
        }
        // SAFETY: chan is live; the library calls this between requests.
        unsafe {
            (*chan).block_size = size;
            device(chan).set_block_size(size as usize);
        }
        0
    })
}

unsafe extern "C" fn io_read_blk64(chan: Chan, block: c_ulonglong, count: c_int, data: *mut c_void) -> Errcode {
    guarded(|| {
        // SAFETY: chan is live; data has room for the range, as the I/O manager contract says.
        unsafe {
            let Some((offset, len)) = range(chan, block, count) else {
                return EXT2_ET_INVALID_ARGUMENT;
            };
            let buf = std::slice::from_raw_parts_mut(data.cast::<u8>(), len);
            status(device(chan), |d| d.read(offset, buf, count == 1))
        }
    })
}

// c_ulong is 64 bits on 64-bit Linux, 32 elsewhere.
#[allow(clippy::useless_conversion)]
unsafe extern "C" fn io_read_blk(chan: Chan, block: c_ulong, count: c_int, data: *mut c_void) -> Errcode {
    // SAFETY: the same contract as the 64-bit form.
    unsafe { io_read_blk64(chan, c_ulonglong::from(block), count, data) }
}

unsafe extern "C" fn io_write_blk64(chan: Chan, block: c_ulonglong, count: c_int, data: *const c_void) -> Errcode {
    guarded(|| {
        // SAFETY: chan is live; data holds the range, as the I/O manager contract says.
        unsafe {
            let Some((offset, len)) = range(chan, block, count) else {
                return EXT2_ET_INVALID_ARGUMENT;
            };
            let buf = std::slice::from_raw_parts(data.cast::<u8>(), len);
            status(device(chan), |d| d.write(offset, buf))
        }
    })
}

// c_ulong is 64 bits on 64-bit Linux, 32 elsewhere.
#[allow(clippy::useless_conversion)]
unsafe extern "C" fn io_write_blk(chan: Chan, block: c_ulong, count: c_int, data: *const c_void) -> Errcode {
    // SAFETY: the same contract as the 64-bit form.
    unsafe { io_write_blk64(chan, c_ulonglong::from(block), count, data) }
}

// c_ulong is 64 bits on 64-bit Linux, 32 elsewhere.
#[allow(clippy::useless_conversion)]
unsafe extern "C" fn io_write_byte(chan: Chan, offset: c_ulong, count: c_int, data: *const c_void) -> Errcode {
    guarded(|| {
        let Ok(len) = usize::try_from(count) else {
            return EXT2_ET_INVALID_ARGUMENT;
        };
        // SAFETY: chan is live; data holds `count` bytes.
        unsafe {
            let buf = std::slice::from_raw_parts(data.cast::<u8>(), len);
            status(device(chan), |d| d.write(u64::from(offset), buf))
        }
    })
}

unsafe extern "C" fn io_flush(chan: Chan) -> Errcode {
    // SAFETY: chan is live.
    guarded(|| status(unsafe { device(chan) }, Device::flush))
}

unsafe extern "C" fn io_set_option(_chan: Chan, _option: *const c_char, _arg: *const c_char) -> Errcode {
    EXT2_ET_INVALID_ARGUMENT
}
