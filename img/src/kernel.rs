//! `-c`/`--connect=/dev/nbdX` and `-d`/`--disconnect`: the Linux kernel's NBD client bound to the
//! server, configured the way qemu-nbd (QEMU 10) configures it: with the `/dev/nbdX` ioctls
//! (`NBD_SET_SOCK`, `NBD_SET_BLKSIZE`, `NBD_SET_SIZE_BLOCKS`, `NBD_SET_FLAGS` or, on kernels
//! without it, `BLKROSET`; then `NBD_DO_IT`, which returns when the device is disconnected).
//! qemu-nbd does not use the generic-netlink `nbd` family, and neither does this: the ioctls are
//! the one interface.
//!
//! As in qemu-nbd, a thread of the server connects to the server's own socket, negotiates as the
//! kernel's client would (no structured replies: the kernel takes simple replies only), hands the
//! connected socket to the device and then sits in `NBD_DO_IT` until someone runs `-d` on the
//! device; the server stops then ([`Client`]). The steps are computed by [`plan`] (pure,
//! unit-tested) and carried out by [`configure`]; the `unsafe` ioctl calls are in the private
//! `sys` module.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nbdforge_process::daemon::Ready;
use nbdforge_protocol::client::{ClientConfig, ClientTls, Handshake, HandshakeEvent, ServerExport};
use nbdforge_protocol::consts::FLAG_READ_ONLY;
use nbdforge_server::ShutdownHandle;

/// The sector size the kernel is given (qemu-nbd's: 512, or the export's minimum block size if
/// larger).
pub const SECTOR_SIZE: u64 = 512;

/// Where `-c` listens when `-k` is not given, as qemu-nbd: `/var/lock/qemu-nbd-nbd0` for `/dev/nbd0`.
pub fn default_socket(device: &Path) -> PathBuf {
    let base = device.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
    PathBuf::from(format!("/var/lock/qemu-nbd-{base}"))
}

/// `-c`: what the thread binding the kernel's NBD device to the server needs.
pub struct Client {
    pub device: PathBuf,
    pub socket: PathBuf,
    pub export_name: String,
    /// FILE, for the message of `-v`.
    pub file: PathBuf,
    pub verbose: u8,
    pub fork: bool,
}

impl Client {
    /// Connects the device from a thread of its own, once the server runs; lets the parent go
    /// once the device is connected; stops the server when the device is disconnected (or could
    /// not be connected, with the error as the thread's result).
    pub fn spawn(self, ready: Option<Ready>, shutdown: ShutdownHandle) -> JoinHandle<Result<(), String>> {
        std::thread::spawn(move || {
            let result = self.serve(ready);
            shutdown.shutdown();
            result
        })
    }

    fn serve(&self, ready: Option<Ready>) -> Result<(), String> {
        let (stream, export) = negotiate(&self.socket, &self.export_name)?;
        let device = open(&self.device)?;
        configure(&device, &plan(stream.as_raw_fd(), &export)?)?;
        // Opening the device again makes the kernel read its partition table (when the module was
        // loaded with max_part); that open waits for NBD_DO_IT to be serving.
        let path = self.device.clone();
        std::thread::spawn(move || drop(std::fs::OpenOptions::new().read(true).write(true).open(path)));
        if self.verbose > 0 && !self.fork {
            eprintln!("NBD device {} is now connected to {}", self.device.display(), self.file.display());
        }
        if let Some(ready) = ready {
            ready.notify(self.verbose > 0).map_err(|e| e.to_string())?;
            if self.verbose == 0 {
                nbdforge_process::logging::set_destination(nbdforge_process::LogDest::Syslog);
            }
        }
        run(&device)
    }
}

/// Removes a socket at `path` that nobody listens on: qemu-nbd leaves its `-c` socket behind when
/// the image does not open, and would itself replace it.
pub fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && UnixStream::connect(path).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused) {
        let _ = std::fs::remove_file(path);
    }
}

/// One ioctl on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `NBD_SET_SOCK`: the connected socket.
    SetSock(RawFd),
    /// `NBD_SET_BLKSIZE`: bytes per sector.
    SetBlockSize(u64),
    /// `NBD_SET_SIZE_BLOCKS`: the size in sectors.
    SetSizeBlocks(u64),
    /// `NBD_SET_FLAGS`: the transmission flags (the kernel then knows flush, trim, read-only...).
    SetFlags(u16),
}

impl Step {
    /// The ioctl request number.
    pub fn request(self) -> u64 {
        match self {
            Step::SetSock(_) => sys::NBD_SET_SOCK,
            Step::SetBlockSize(_) => sys::NBD_SET_BLKSIZE,
            Step::SetSizeBlocks(_) => sys::NBD_SET_SIZE_BLOCKS,
            Step::SetFlags(_) => sys::NBD_SET_FLAGS,
        }
    }

    /// What failed, in qemu-nbd's words.
    fn failure(self) -> &'static str {
        match self {
            Step::SetSock(_) => "Failed to set NBD socket",
            Step::SetBlockSize(_) => "Failed setting NBD block size",
            Step::SetSizeBlocks(_) => "Failed setting size (in blocks)",
            Step::SetFlags(_) => "Failed setting flags",
        }
    }
}

/// The ioctls that hand the export to the device, in order.
pub fn plan(sock: RawFd, export: &ServerExport) -> Result<Vec<Step>, String> {
    let min_block = export.block_size.map_or(0, |(min, _, _)| u64::from(min));
    let sector = SECTOR_SIZE.max(min_block);
    let sectors = export.size / sector;
    // The kernel takes an unsigned long.
    if libc::c_ulong::try_from(sectors).is_err() {
        return Err(format!("Export size {} too large for 32-bit kernel", export.size));
    }
    Ok(vec![
        Step::SetSock(sock),
        Step::SetBlockSize(sector),
        Step::SetSizeBlocks(sectors),
        Step::SetFlags(export.flags),
    ])
}

/// Carries out [`plan`]'s steps on the device. A kernel without `NBD_SET_FLAGS` (`ENOTTY`) is
/// told only whether the export is read-only, with `BLKROSET`.
pub fn configure(device: &File, steps: &[Step]) -> Result<(), String> {
    let fd = device.as_raw_fd();
    for &step in steps {
        let result = match step {
            Step::SetSock(sock) => sys::set_sock(fd, sock),
            Step::SetBlockSize(n) => sys::set_blksize(fd, n),
            Step::SetSizeBlocks(n) => sys::set_size_blocks(fd, n),
            Step::SetFlags(flags) => sys::set_flags(fd, flags),
        };
        match (step, result) {
            (_, Ok(())) => {}
            (Step::SetFlags(flags), Err(nix::errno::Errno::ENOTTY)) => {
                sys::set_read_only(fd, flags & FLAG_READ_ONLY != 0)
                    .map_err(|e| format!("Failed setting read-only attribute: {}", strerror(e as i32)))?
            }
            (step, Err(e)) => return Err(format!("{}: {}", step.failure(), strerror(e as i32))),
        }
    }
    Ok(())
}

/// Serves the device until it is disconnected (`NBD_DO_IT`), then clears its queue and socket.
/// A disconnect requested with `-d` ends `NBD_DO_IT` with `EPIPE`: that is success.
pub fn run(device: &File) -> Result<(), String> {
    let fd = device.as_raw_fd();
    let result = match sys::do_it(fd) {
        Ok(()) | Err(nix::errno::Errno::EPIPE) => Ok(()),
        Err(e) => Err(format!("NBD_DO_IT: {}", strerror(e as i32))),
    };
    let _ = sys::clear_que(fd);
    let _ = sys::clear_sock(fd);
    result
}

/// `-d`: asks the device to disconnect. As qemu-nbd, only opening the device can fail: a device
/// that is not connected (or not an NBD device at all) refuses the ioctls, which is not an error.
pub fn disconnect(device: &Path) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format!("Cannot open {}: {}", device.display(), plain(&e)))?;
    let fd = file.as_raw_fd();
    let _ = sys::clear_que(fd);
    let _ = sys::disconnect(fd);
    let _ = sys::clear_sock(fd);
    Ok(())
}

/// Opens the device for [`configure`] and [`run`].
pub fn open(device: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format!("Failed to open {}: {}", device.display(), plain(&e)))
}

/// Connects to the server at `socket` and negotiates `export` as the kernel's client: simple
/// replies, no meta contexts.
pub fn negotiate(socket: &Path, export: &str) -> Result<(UnixStream, ServerExport), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("Failed to connect to '{}': {}", socket.display(), plain(&e)))?;
    let config = ClientConfig {
        export: export.to_string(),
        tls: ClientTls::Off,
        extended_headers: false,
        structured_replies: false,
        base_allocation: false,
        list: false,
    };
    let mut handshake = Handshake::new(config);
    loop {
        let out = handshake.output();
        stream.write_all(&out).map_err(|e| format!("negotiating with the server: {}", plain(&e)))?;
        let mut buf = vec![0u8; handshake.wants()];
        stream.read_exact(&mut buf).map_err(|e| format!("negotiating with the server: {}", plain(&e)))?;
        match handshake.feed(&buf).map_err(|e| e.0)? {
            HandshakeEvent::Continue => {}
            HandshakeEvent::Done(export) => {
                let out = handshake.output();
                stream.write_all(&out).map_err(|e| format!("negotiating with the server: {}", plain(&e)))?;
                return Ok((stream, export));
            }
            HandshakeEvent::StartTls | HandshakeEvent::Listed(_) => {
                return Err("negotiating with the server: unexpected step".into())
            }
        }
    }
}

/// A system error as `strerror` words it (the C library's words, as qemu-nbd prints them).
fn plain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => strerror(code),
        None => e.to_string(),
    }
}

fn strerror(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The ioctls, the only `unsafe` code of the kernel client. They are called through `libc`
/// rather than nix's ioctl macros: the NBD requests are `_IO` (no direction, no size) yet take an
/// `unsigned long` argument, which nix's `_bad` integer macros would narrow to an `int` (a size
/// in sectors over 2^31 would be cut).
mod sys {
    use std::os::fd::RawFd;

    use nix::errno::Errno;

    /// `_IO(0xab, n)`: the NBD ioctls carry their argument in the request's integer.
    const fn nbd(n: u64) -> u64 {
        0xab << 8 | n
    }

    pub const NBD_SET_SOCK: u64 = nbd(0);
    pub const NBD_SET_BLKSIZE: u64 = nbd(1);
    pub const NBD_DO_IT: u64 = nbd(3);
    pub const NBD_CLEAR_SOCK: u64 = nbd(4);
    pub const NBD_CLEAR_QUE: u64 = nbd(5);
    pub const NBD_SET_SIZE_BLOCKS: u64 = nbd(7);
    pub const NBD_DISCONNECT: u64 = nbd(8);
    pub const NBD_SET_FLAGS: u64 = nbd(10);
    /// `_IO(0x12, 93)`, from linux/fs.h.
    pub const BLKROSET: u64 = 0x12 << 8 | 93;

    /// An ioctl whose argument is an integer.
    fn int(fd: RawFd, request: u64, arg: libc::c_ulong) -> Result<(), Errno> {
        // SAFETY: every request passed here takes its argument by value (an fd or a count), so
        // the kernel reads no memory of ours; `fd` is open for as long as the caller's File.
        let r = unsafe { libc::ioctl(fd, request as _, arg) };
        Errno::result(r).map(drop)
    }

    pub fn set_sock(fd: RawFd, sock: RawFd) -> Result<(), Errno> {
        int(fd, NBD_SET_SOCK, sock as libc::c_ulong)
    }
    pub fn set_blksize(fd: RawFd, n: u64) -> Result<(), Errno> {
        int(fd, NBD_SET_BLKSIZE, n as libc::c_ulong)
    }
    pub fn set_size_blocks(fd: RawFd, n: u64) -> Result<(), Errno> {
        int(fd, NBD_SET_SIZE_BLOCKS, n as libc::c_ulong)
    }
    pub fn set_flags(fd: RawFd, flags: u16) -> Result<(), Errno> {
        int(fd, NBD_SET_FLAGS, libc::c_ulong::from(flags))
    }
    pub fn do_it(fd: RawFd) -> Result<(), Errno> {
        int(fd, NBD_DO_IT, 0)
    }
    pub fn clear_sock(fd: RawFd) -> Result<(), Errno> {
        int(fd, NBD_CLEAR_SOCK, 0)
    }
    pub fn clear_que(fd: RawFd) -> Result<(), Errno> {
        int(fd, NBD_CLEAR_QUE, 0)
    }
    pub fn disconnect(fd: RawFd) -> Result<(), Errno> {
        int(fd, NBD_DISCONNECT, 0)
    }

    /// `BLKROSET` takes a pointer to an int.
    pub fn set_read_only(fd: RawFd, read_only: bool) -> Result<(), Errno> {
        let value: libc::c_int = read_only.into();
        // SAFETY: BLKROSET reads one int through the pointer, which points at `value`, alive
        // until the call returns.
        let r = unsafe { libc::ioctl(fd, BLKROSET as _, &value as *const libc::c_int) };
        Errno::result(r).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_protocol::consts::{FLAG_HAS_FLAGS, FLAG_SEND_FLUSH};

    fn export(size: u64, flags: u16, block_size: Option<(u32, u32, u32)>) -> ServerExport {
        ServerExport {
            size,
            flags,
            structured: false,
            extended: false,
            base_allocation: None,
            block_size,
            description: None,
            tls: false,
            oldstyle: false,
        }
    }

    #[test]
    fn request_numbers_are_the_kernels() {
        // linux/nbd.h: _IO(0xab, 0..10); linux/fs.h: BLKROSET _IO(0x12, 93).
        assert_eq!(sys::NBD_SET_SOCK, 0xab00);
        assert_eq!(sys::NBD_SET_BLKSIZE, 0xab01);
        assert_eq!(sys::NBD_DO_IT, 0xab03);
        assert_eq!(sys::NBD_CLEAR_SOCK, 0xab04);
        assert_eq!(sys::NBD_CLEAR_QUE, 0xab05);
        assert_eq!(sys::NBD_SET_SIZE_BLOCKS, 0xab07);
        assert_eq!(sys::NBD_DISCONNECT, 0xab08);
        assert_eq!(sys::NBD_SET_FLAGS, 0xab0a);
        assert_eq!(sys::BLKROSET, 0x125d);
        assert_eq!(Step::SetFlags(0).request(), 0xab0a);
    }

    #[test]
    fn the_plan_is_qemu_nbds() {
        let flags = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH;
        let steps = plan(7, &export(4 << 20, flags, None)).unwrap();
        assert_eq!(
            steps,
            vec![Step::SetSock(7), Step::SetBlockSize(512), Step::SetSizeBlocks(8192), Step::SetFlags(flags)]
        );
        // A trailing partial sector is not exposed; a larger minimum block size is the sector.
        let steps = plan(7, &export(1000, 1, Some((4096, 4096, 1 << 25)))).unwrap();
        assert_eq!(steps[1..3], [Step::SetBlockSize(4096), Step::SetSizeBlocks(0)]);
        let steps = plan(7, &export(1000, 1, Some((1, 4096, 1 << 25)))).unwrap();
        assert_eq!(steps[1..3], [Step::SetBlockSize(512), Step::SetSizeBlocks(1)]);
    }

    #[test]
    fn not_a_device() {
        // A regular file refuses the first ioctl, with qemu-nbd's message.
        let path = std::env::temp_dir().join(format!("nbdforge-kernel-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let file = open(&path).unwrap();
        let e = configure(&file, &plan(0, &export(512, 1, None)).unwrap()).unwrap_err();
        assert_eq!(e, "Failed to set NBD socket: Inappropriate ioctl for device");
        disconnect(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let e = disconnect(Path::new("/nonexistent/nbd0")).unwrap_err();
        assert_eq!(e, "Cannot open /nonexistent/nbd0: No such file or directory");
        assert_eq!(
            open(Path::new("/nonexistent/nbd0")).unwrap_err(),
            "Failed to open /nonexistent/nbd0: No such file or directory"
        );
        assert_eq!(default_socket(Path::new("/dev/nbd3")), PathBuf::from("/var/lock/qemu-nbd-nbd3"));
    }
}
