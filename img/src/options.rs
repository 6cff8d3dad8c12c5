//! qemu-nbd's command line (qemu-nbd(8)), flag for flag, parsed with lexopt. Errors are worded as
//! qemu-nbd words them where that helps a user who knows it (`Invalid shared device number 'x'`).

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use nbdforge_img::image::Format;
use nbdforge_img::plugin::{parse_discard, DetectZeroes};
use nbdforge_img::snapshot::Selector;

/// Everything the command line says.
#[derive(Debug, Default)]
pub struct Options {
    pub help: bool,
    pub version: bool,
    pub list: bool,
    pub port: Option<String>,
    pub bind: Option<String>,
    pub socket: Option<PathBuf>,
    pub shared: usize,
    pub persistent: bool,
    pub verbose: u8,
    pub export_name: Option<String>,
    pub description: Option<String>,
    pub handshake_limit: Option<u64>,
    pub offset: u64,
    pub allocation_depth: bool,
    pub format: Option<Format>,
    pub readonly: bool,
    pub snapshot: bool,
    /// `-l`: the internal snapshot to serve (read-only).
    pub load_snapshot: Option<Selector>,
    /// `-B`: the persistent dirty bitmaps to offer, in order, each once.
    pub bitmaps: Vec<String>,
    pub nocache: bool,
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    pub fork: bool,
    pub pid_file: Option<PathBuf>,
    pub selinux_label: Option<String>,
    pub file: Option<PathBuf>,
    /// `--object`, in order.
    pub objects: Vec<String>,
    pub tls_creds: Option<String>,
    pub tls_authz: Option<String>,
    pub tls_hostname: Option<String>,
    /// `--image-opts`: FILE is qemu block options.
    pub image_opts: bool,
    /// `-c`: bind this kernel NBD device to the server.
    pub connect: Option<PathBuf>,
    /// `-d`: FILE is a kernel NBD device to disconnect.
    pub disconnect: bool,
}

/// A command-line error, printed as `nbdforge-img: MESSAGE`.
#[derive(Debug)]
pub struct Usage(pub String);

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Self {
        Usage(match e {
            lexopt::Error::UnexpectedOption(o) => format!("unrecognized option '{o}'"),
            lexopt::Error::MissingValue { option: Some(o) } => format!("option '{o}' requires an argument"),
            other => other.to_string(),
        })
    }
}

fn string(v: OsString) -> Result<String, Usage> {
    v.into_string().map_err(|v| Usage(format!("'{}' is not valid UTF-8", v.to_string_lossy())))
}

/// Parses the arguments after the program name.
pub fn parse(args: Vec<OsString>) -> Result<Options, Usage> {
    let mut o = Options { shared: 1, ..Options::default() };
    let mut files: Vec<PathBuf> = Vec::new();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => o.help = true,
            Short('V') | Long("version") => o.version = true,
            Short('L') | Long("list") => o.list = true,
            Short('p') | Long("port") => o.port = Some(string(p.value()?)?),
            Short('b') | Long("bind") => o.bind = Some(string(p.value()?)?),
            Short('k') | Long("socket") => {
                let v = p.value()?;
                if v.is_empty() {
                    return Err(Usage("-k: the socket path is empty".into()));
                }
                o.socket = Some(v.into());
            }
            Short('e') | Long("shared") => {
                let v = string(p.value()?)?;
                o.shared = v.parse().map_err(|_| Usage(format!("Invalid shared device number '{v}'")))?;
            }
            Short('t') | Long("persistent") => o.persistent = true,
            Short('v') | Long("verbose") => o.verbose = o.verbose.saturating_add(1),
            Short('x') | Long("export-name") => {
                let v = string(p.value()?)?;
                if v.len() > 4096 {
                    return Err(Usage(format!("Export name '{v}' is too long (at most 4096 bytes)")));
                }
                o.export_name = Some(v);
            }
            Short('D') | Long("description") => {
                let v = string(p.value()?)?;
                if v.len() > 4096 {
                    return Err(Usage("Export description is too long (at most 4096 bytes)".into()));
                }
                o.description = Some(v);
            }
            Long("handshake-limit") => {
                let v = string(p.value()?)?;
                o.handshake_limit = Some(v.parse().map_err(|_| Usage(format!("Invalid handshake limit '{v}'")))?);
            }
            Short('o') | Long("offset") => {
                let v = string(p.value()?)?;
                o.offset = v.parse().map_err(|_| Usage(format!("Invalid offset '{v}'")))?;
            }
            Short('A') | Long("allocation-depth") => o.allocation_depth = true,
            Short('f') | Long("format") => {
                let v = string(p.value()?)?;
                o.format =
                    Some(Format::parse(&v).ok_or_else(|| Usage(format!("Unknown driver '{v}' (known: raw, qcow2)")))?);
            }
            Short('r') | Long("read-only") => o.readonly = true,
            Short('s') | Long("snapshot") => o.snapshot = true,
            Short('n') | Long("nocache") => o.nocache = true,
            Long("cache") => {
                let v = string(p.value()?)?;
                o.nocache = match v.as_str() {
                    "none" | "off" | "directsync" => true,
                    "writeback" | "writethrough" | "unsafe" => false,
                    _ => return Err(Usage(format!("Invalid cache mode `{v}'"))),
                };
            }
            // Accepted: the I/O path is the same whichever is asked for.
            Long("aio") => {
                let v = string(p.value()?)?;
                if !matches!(v.as_str(), "threads" | "native" | "io_uring") {
                    return Err(Usage(format!("Invalid aio mode '{v}'")));
                }
            }
            Long("discard") => {
                let v = string(p.value()?)?;
                o.discard_unmap = parse_discard(&v).ok_or_else(|| Usage(format!("Invalid discard mode `{v}'")))?;
            }
            Long("detect-zeroes") => {
                let v = string(p.value()?)?;
                o.detect_zeroes = DetectZeroes::parse(&v).ok_or_else(|| {
                    Usage(format!(
                        "Failed to parse detect_zeroes mode: invalid parameter value: {v} (off, on or unmap)"
                    ))
                })?;
            }
            Long("fork") => o.fork = true,
            Long("pid-file") => o.pid_file = Some(p.value()?.into()),
            Long("selinux-label") => o.selinux_label = Some(string(p.value()?)?),
            // Tracing goes through -v's log; the patterns are accepted and not used.
            Short('T') | Long("trace") => {
                p.value()?;
            }
            Long("object") => o.objects.push(string(p.value()?)?),
            Long("tls-creds") => o.tls_creds = Some(string(p.value()?)?),
            Long("tls-authz") => o.tls_authz = Some(string(p.value()?)?),
            Long("tls-hostname") => o.tls_hostname = Some(string(p.value()?)?),
            Short('c') | Long("connect") => o.connect = Some(p.value()?.into()),
            Short('d') | Long("disconnect") => o.disconnect = true,
            Short('l') | Long("load-snapshot") => {
                o.load_snapshot = Some(Selector::parse(&string(p.value()?)?).map_err(Usage)?);
            }
            Short('B') | Long("bitmap") => {
                let name = string(p.value()?)?;
                if !o.bitmaps.contains(&name) {
                    o.bitmaps.push(name);
                }
            }
            Long("image-opts") => o.image_opts = true,
            Value(v) => files.push(v.into()),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if o.help || o.version {
        return Ok(o);
    }
    if o.tls_authz.is_some() && o.tls_creds.is_none() {
        return Err(Usage("--tls-authz is not permitted without --tls-creds".into()));
    }
    if o.tls_hostname.is_some() && o.tls_creds.is_none() {
        return Err(Usage("--tls-hostname is not permitted without --tls-creds".into()));
    }
    if o.list {
        if o.connect.is_some() || o.disconnect {
            return Err(Usage("List mode is incompatible with per-device settings".into()));
        }
        if o.tls_authz.is_some() {
            return Err(Usage("--tls-authz is not permitted when using --list".into()));
        }
        if !files.is_empty() {
            return Err(Usage("Invalid number of arguments".into()));
        }
        return Ok(o);
    }
    if o.image_opts && o.format.is_some() {
        return Err(Usage("--image-opts and --format are mutually exclusive".into()));
    }
    if o.tls_hostname.is_some() {
        return Err(Usage("--tls-hostname is only permitted with --list".into()));
    }
    if files.len() != 1 {
        return Err(Usage("Invalid number of arguments".into()));
    }
    if o.tls_creds.is_some() && o.connect.is_some() {
        return Err(Usage("TLS is not supported with a host device".into()));
    }
    // With -k, -p and -b are ignored, as qemu-nbd does.
    o.file = files.pop();
    Ok(o)
}

/// `--help`.
pub const HELP: &str = "\
Usage: nbdforge-img [OPTIONS] FILE
  or:  nbdforge-img -L [OPTIONS]
Serve a disk image (raw or qcow2) over NBD, with qemu-nbd's options.

  -h, --help                 this help, then exit
  -V, --version              the version, then exit

Serving:
  -p, --port=PORT            TCP port (default 10809)
  -b, --bind=ADDRESS         address to listen on (default: every address)
  -k, --socket=PATH          listen on a Unix socket instead of TCP
  -e, --shared=N             at most N clients at once (default 1, 0: no limit)
  -t, --persistent           keep serving when the last client leaves
  -x, --export-name=NAME     the export's name (default: empty)
  -D, --description=TEXT     the export's description
      --handshake-limit=N    drop clients that have not finished the handshake in N s (default 10)
      --fork                 go into the background once the server is ready
      --pid-file=PATH        write the server's process id to PATH
      --selinux-label=LABEL  SELinux label of the listening socket
  -v, --verbose              debug messages on stderr
  -T, --trace=PATTERN        accepted for compatibility (use -v)

The disk:
  -f, --format=FORMAT        raw or qcow2 (default: probed; a probed raw image refuses
                             writes that would make it look like another format)
  -o, --offset=OFFSET        the disk starts OFFSET bytes into the image
  -r, --read-only            serve read-only
  -s, --snapshot             writes go to a temporary overlay; FILE is not changed
  -A, --allocation-depth     offer the qemu:allocation-depth meta context
  -B, --bitmap=NAME          offer the image's persistent dirty bitmap NAME as the
                             qemu:dirty-bitmap:NAME meta context (repeatable)
  -l, --load-snapshot=SNAPSHOT  serve an internal snapshot, read-only: ID or NAME,
                             snapshot.id=ID, snapshot.name=NAME, or both
  -n, --nocache              bypass the host's page cache (--cache=none)
      --cache=MODE           none, writeback (default), writethrough, directsync, unsafe
      --aio=MODE             threads, native or io_uring (accepted)
      --discard=MODE         ignore (default) or unmap
      --detect-zeroes=MODE   off (default), on or unmap
      --image-opts           FILE is qemu block options: driver=raw|qcow2,
                             file.driver=file,file.filename=PATH[,offset=,size=][,backing.*]
                             (a FILE json:{...} is the same options as JSON)

TLS and objects:
      --object TYPE,id=ID,...  define an object: secret, tls-creds-x509, tls-creds-psk,
                             authz-simple, authz-list-file
      --tls-creds=ID         require TLS with the credentials of object ID
      --tls-authz=ID         allow only the TLS clients authz object ID accepts
      --tls-hostname=NAME    with -L: the name the server's certificate must carry

As a client:
  -L, --list                 list the exports of the server at -b/-p or -k, then exit

Kernel NBD client (Linux):
  -c, --connect=DEV          serve FILE to the kernel's NBD device DEV (/dev/nbdN); the
                             server stays until the device is disconnected
  -d, --disconnect           FILE is an NBD device: disconnect it, then exit
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn qemu_nbd_command_lines() {
        let o = parse(args(&["-t", "-e", "0", "-f", "qcow2", "-k", "/s", "disk.qcow2"])).unwrap();
        assert!(o.persistent);
        assert_eq!(o.shared, 0);
        assert_eq!(o.format, Some(Format::Qcow2));
        assert_eq!(o.file, Some(PathBuf::from("disk.qcow2")));
        let o = parse(args(&["--discard=unmap", "--detect-zeroes=unmap", "--cache=none", "x"])).unwrap();
        assert!(o.discard_unmap && o.nocache);
        assert_eq!(o.detect_zeroes, DetectZeroes::Unmap);
        assert_eq!(parse(args(&["x"])).unwrap().shared, 1);
    }

    #[test]
    fn bad_arguments() {
        let e = |v: &[&str]| parse(args(v)).unwrap_err().0;
        assert_eq!(e(&["-e", "x", "f"]), "Invalid shared device number 'x'");
        assert_eq!(e(&[]), "Invalid number of arguments");
        assert_eq!(e(&["a", "b"]), "Invalid number of arguments");
        assert_eq!(e(&["--discard=bad", "f"]), "Invalid discard mode `bad'");
        assert_eq!(e(&["--cache=x", "f"]), "Invalid cache mode `x'");
        assert_eq!(e(&["--aio=x", "f"]), "Invalid aio mode 'x'");
        assert_eq!(e(&["--bogus"]), "unrecognized option '--bogus'");
        assert!(e(&["-f", "vmdk", "f"]).starts_with("Unknown driver 'vmdk'"));
        assert_eq!(e(&["--tls-authz", "a", "f"]), "--tls-authz is not permitted without --tls-creds");
        assert_eq!(e(&["--tls-hostname", "h", "f"]), "--tls-hostname is not permitted without --tls-creds");
        assert_eq!(
            e(&["--tls-creds", "t", "--tls-hostname", "h", "f"]),
            "--tls-hostname is only permitted with --list"
        );
        assert_eq!(e(&["-L", "f"]), "Invalid number of arguments");
        assert_eq!(e(&["-L", "-c", "/dev/nbd0"]), "List mode is incompatible with per-device settings");
        assert_eq!(e(&["-L", "-d"]), "List mode is incompatible with per-device settings");
        assert_eq!(e(&["-c", "/dev/nbd0", "--tls-creds", "t", "f"]), "TLS is not supported with a host device");
        assert_eq!(e(&["-c", "/dev/nbd0"]), "Invalid number of arguments");
        assert_eq!(e(&["-d"]), "Invalid number of arguments");
        let o = parse(args(&["-c", "/dev/nbd1", "-d", "/dev/nbd0"])).unwrap();
        assert_eq!((o.connect, o.disconnect, o.file), (Some("/dev/nbd1".into()), true, Some("/dev/nbd0".into())));
        assert!(e(&["-l", "snapshot.idx=1", "f"]).contains("Invalid parameter 'snapshot.idx'"));
    }

    #[test]
    fn snapshots_and_bitmaps() {
        let o = parse(args(&["-l", "snapshot.name=s1", "-B", "b0", "--bitmap=b1", "-B", "b0", "f"])).unwrap();
        assert_eq!(o.load_snapshot, Some(Selector::Fields { id: None, name: Some("s1".into()) }));
        assert_eq!(o.bitmaps, ["b0", "b1"]);
        assert_eq!(
            parse(args(&["--load-snapshot=2", "f"])).unwrap().load_snapshot,
            Some(Selector::IdOrName("2".into()))
        );
    }
}
