//! `nbdforge-img`: qemu-nbd's command line over the nbdforge server.
//!
//! [`options`] parses the command line; this file runs the server process in qemu-nbd's order:
//! socket activation is taken first, then the process goes into the background (`--fork`; the
//! parent exits once the child listens), the image is opened (errors exit 1 before anything
//! listens), the sockets are bound and the pid file written, and the server runs until a signal
//! or, without `-t`, until the last client has left. `-d` only disconnects a device; `-c` adds a
//! thread that binds the kernel's NBD device to the server (`nbdforge_img::kernel::Client`) and
//! releases the parent once the device is connected.

mod options;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nbdforge_api::LayerInfo;
use nbdforge_img::authz::Authz;
use nbdforge_img::bitmap::Bitmaps;
use nbdforge_img::image::{Backing, Image, ImageOptions};
use nbdforge_img::image_opts;
use nbdforge_img::kernel;
use nbdforge_img::list::{self, Address};
use nbdforge_img::objects::{Endpoint, Object, Objects};
use nbdforge_img::plugin::{ImagePlugin, Settings};
use nbdforge_process::sockets::{self, ListenOn};
use nbdforge_process::{activation, daemon, logging, pidfile, Error, LogDest, Setting, Target};
use nbdforge_server::tls::{TlsClient, TlsClientOptions, TlsContext};
use nbdforge_server::{Server, ServerConfig, Stack, TlsMode, TlsOptions};

const PROG: &str = "nbdforge-img";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            logging::fatal(&format!("{PROG}: {message}"));
            ExitCode::from(1)
        }
    }
}

fn run(args: Vec<OsString>) -> Result<(), String> {
    let o = options::parse(args).map_err(|e| format!("{}\nTry `{PROG} --help' for more information.", e.0))?;
    if o.help {
        print!("{}", options::HELP);
        return Ok(());
    }
    if o.version {
        println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let mut objects = Objects::default();
    for value in &o.objects {
        objects.add(value)?;
    }
    if o.list {
        return list(&o, &objects);
    }
    if o.disconnect {
        let device = o.file.as_deref().expect("options::parse requires FILE");
        kernel::disconnect(device)?;
        println!("{} disconnected", device.display());
        return Ok(());
    }
    let mut o = o;
    let (file, size, backing) = apply_image_opts(&mut o)?;

    let inherited = activation::take_listen_fds().map_err(qemu_nbd_says)?;
    if inherited.is_some() && o.connect.is_some() {
        return Err("NBD device can't be set when using socket activation".into());
    }
    if inherited.is_some() && (o.socket.is_some() || o.port.is_some() || o.bind.is_some()) {
        return Err("socket activation cannot be combined with -k, -p or -b".into());
    }
    // -c serves the kernel on a Unix socket (qemu-nbd's path unless -k), which others may use too.
    if let (Some(device), None) = (&o.connect, &o.socket) {
        let path = kernel::default_socket(device);
        kernel::remove_stale_socket(&path);
        o.socket = Some(path);
    }
    logging::init(PROG, LogDest::Stderr, o.verbose);
    // -c goes into the background too, unless -v keeps it in the foreground (as qemu-nbd).
    let background = o.fork || (o.connect.is_some() && o.verbose == 0);
    let mut ready = if background { Some(daemon::fork_into_background(PROG).map_err(qemu_nbd_says)?) } else { None };

    // -l serves the snapshot read-only, whether -r was given or not, as qemu-nbd does.
    let readonly = o.readonly || o.load_snapshot.is_some();
    let image_opts = ImageOptions {
        format: o.format,
        writable: !readonly,
        snapshot: o.snapshot,
        direct: o.nocache,
        load_snapshot: o.load_snapshot.clone(),
    };
    // Credentials are loaded before anything listens, so their errors exit 1 first.
    let tls = match &o.tls_creds {
        Some(id) => Some(std::sync::Arc::new(server_tls(&objects, id)?)),
        None => None,
    };
    let authz = o.tls_authz.as_deref().map(|id| Authz::load(&objects, id)).transpose()?;
    // Bitmaps are read first: opening the image for writing marks them inconsistent on disk.
    // With -s, writes go to the overlay and the image's bitmaps do not see them (as in qemu-nbd).
    let bitmaps = Bitmaps::load(&file, o.format, &o.bitmaps, !readonly && !o.snapshot)?;
    let image = Image::open_with_backing(&file, &image_opts, &backing)?;
    let settings = Settings {
        name: file.display().to_string(),
        export_name: o.export_name.clone().unwrap_or_default(),
        description: o.description.clone(),
        offset: o.offset,
        size,
        discard_unmap: o.discard_unmap,
        detect_zeroes: o.detect_zeroes,
        allocation_depth: o.allocation_depth,
        bitmaps,
        readonly,
        multi_conn: o.shared != 1,
        authz,
    };
    let plugin = ImagePlugin::new(image, settings)?;
    let info = LayerInfo::new("image", "a raw or qcow2 disk image");
    let backend = Stack::new((info, Box::new(plugin)), Vec::new()).finish().map_err(|e| e.message)?;

    let config = ServerConfig {
        readonly,
        handshake_timeout: Some(Duration::from_secs(o.handshake_limit.unwrap_or(10))).filter(|d| !d.is_zero()),
        max_clients: o.shared,
        exit_when_idle: !o.persistent,
        tls_mode: if tls.is_some() { TlsMode::Require } else { TlsMode::Off },
        tls,
        ..ServerConfig::default()
    };
    let target = match inherited {
        Some(fds) => activation::target(fds).map_err(qemu_nbd_says)?,
        None => {
            let on = match &o.socket {
                Some(path) => ListenOn::Unix(path.clone()),
                None => ListenOn::Tcp { host: o.bind.clone(), port: o.port.clone(), family: Default::default() },
            };
            Target::Listen(sockets::bind(&on, o.selinux_label.as_deref()).map_err(qemu_nbd_says)?)
        }
    };
    if let Some(path) = &o.pid_file {
        pidfile::write_pidfile(path).map_err(qemu_nbd_says)?;
    }
    let server = Server::new(backend, config);
    server.stop_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
    // With -c, the parent is let go once the device is connected.
    let kernel_client = o.connect.clone().map(|device| {
        let client = kernel::Client {
            device,
            socket: o.socket.clone().expect("set above for -c"),
            export_name: o.export_name.clone().unwrap_or_default(),
            file: file.clone(),
            verbose: o.verbose,
            fork: o.fork,
        };
        client.spawn(ready.take(), server.shutdown_handle())
    });
    if let Some(ready) = ready {
        ready.notify(o.verbose > 0).map_err(qemu_nbd_says)?;
        if o.verbose == 0 {
            logging::set_destination(LogDest::Syslog);
        }
    }
    let served = match target {
        Target::One(read, write) => server.serve_one(read, write),
        Target::Listen(bound) => {
            let sockets::Bound { listeners, private_dir, socket_file, .. } = bound;
            let served = server.serve(listeners);
            drop(socket_file);
            drop(private_dir);
            served
        }
    };
    if let Some(thread) = kernel_client {
        thread.join().map_err(|_| "the kernel client thread panicked".to_string())??;
    }
    served.map_err(|e| format!("server: {e}"))
}

/// FILE under `--image-opts`, or a `json:` FILE: the options' settings are put into `o` (`-o`
/// counts from the start of raw's `offset=` window); returns the image file, the disk's size when
/// `size=` bounds it, and the backing image.
fn apply_image_opts(o: &mut options::Options) -> Result<(PathBuf, Option<u64>, Backing), String> {
    let file = o.file.clone().expect("options::parse requires FILE");
    let spec = file.to_str();
    let given = if o.image_opts {
        Some(image_opts::parse(spec.ok_or("--image-opts: the options are not valid UTF-8")?)?)
    } else if let Some(json) = spec.filter(|s| image_opts::is_json(s)) {
        Some(image_opts::parse_json(json)?)
    } else {
        None
    };
    let Some(given) = given else { return Ok((file, None, Backing::Header)) };
    let node = given.node;
    if given.readonly && !o.readonly {
        return Err(format!("{}: read-only=on: Block node is read-only (give -r)", node.filename.display()));
    }
    o.format = node.format.or(o.format);
    o.nocache = given.direct.unwrap_or(o.nocache);
    o.discard_unmap = given.discard_unmap.unwrap_or(o.discard_unmap);
    o.detect_zeroes = given.detect_zeroes.unwrap_or(o.detect_zeroes);
    let size = match node.size {
        Some(window) => Some(
            window.checked_sub(o.offset).ok_or_else(|| format!("-o {}: past the window's size={window}", o.offset))?,
        ),
        None => None,
    };
    o.offset += node.offset;
    Ok((node.filename, size, node.backing))
}

/// The TLS credentials object `id`, which must be for the `want` side.
fn tls_object<'a>(objects: &'a Objects, id: &str, want: Endpoint) -> Result<&'a Object, String> {
    let object =
        objects.get(id).ok_or_else(|| format!("Failed to get TLS creds: No TLS credentials with id '{id}'"))?;
    let endpoint = match object {
        Object::TlsX509 { endpoint, .. } | Object::TlsPsk { endpoint, .. } => *endpoint,
        _ => return Err(format!("Failed to get TLS creds: Object with id '{id}' is not TLS credentials")),
    };
    if endpoint != want {
        let side = if want == Endpoint::Server { "server" } else { "client" };
        return Err(format!("Failed to get TLS creds: Expected TLS credentials for a {side} endpoint"));
    }
    Ok(object)
}

/// `--tls-creds` when serving: qemu's file names in `dir=` (server-cert.pem, server-key.pem,
/// ca-cert.pem; keys.psk), loaded by the server's TLS code.
fn server_tls(objects: &Objects, id: &str) -> Result<TlsContext, String> {
    let options = match tls_object(objects, id, Endpoint::Server)? {
        Object::TlsX509 { dir, verify_peer, .. } => TlsOptions {
            mode: TlsMode::Require,
            certificates: Some(dir.clone()),
            psk_file: None,
            verify_peer: *verify_peer,
        },
        Object::TlsPsk { dir, .. } => TlsOptions {
            mode: TlsMode::Require,
            certificates: None,
            psk_file: Some(dir.join("keys.psk")),
            verify_peer: false,
        },
        _ => unreachable!("tls_object returns credentials"),
    };
    TlsContext::new(&options).map_err(|e| format!("--tls-creds {id}: {e}"))
}

/// `-L`: list the exports of the server at `-k` or `-b`/`-p`, in qemu-nbd's layout.
fn list(o: &options::Options, objects: &Objects) -> Result<(), String> {
    let address = match &o.socket {
        Some(path) => Address::Unix(path.clone()),
        None => Address::Tcp(
            o.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
            o.port.clone().unwrap_or_else(|| "10809".into()),
        ),
    };
    let client = match &o.tls_creds {
        Some(id) => {
            let options = match tls_object(objects, id, Endpoint::Client)? {
                Object::TlsX509 { dir, verify_peer, .. } => {
                    TlsClientOptions { certificates: Some(dir.clone()), verify: *verify_peer, ..Default::default() }
                }
                Object::TlsPsk { dir, username, .. } => TlsClientOptions {
                    psk_file: Some(dir.join("keys.psk")),
                    // qemu's default PSK identity.
                    username: Some(username.clone().unwrap_or_else(|| "qemu".into())),
                    ..Default::default()
                },
                _ => unreachable!("tls_object returns credentials"),
            };
            Some(TlsClient::new(&options).map_err(|e| format!("--tls-creds {id}: {e}"))?)
        }
        None => None,
    };
    let hostname = o.tls_hostname.clone().or_else(|| match &address {
        Address::Tcp(host, _) => Some(host.clone()),
        Address::Unix(_) => None,
    });
    let exports = list::list(&address, client.as_ref().map(|c| (c, hostname.as_deref())))?;
    print!("{}", list::format(&exports));
    Ok(())
}

/// An error of the process library naming qemu-nbd's option.
fn qemu_nbd_says(e: Error) -> String {
    e.describe(|setting, value| {
        let option = match setting {
            Setting::Port => "-p",
            Setting::Address => "-b",
            Setting::UnixSocket | Setting::PrivateUnixSocket => "-k",
            Setting::SelinuxLabel => "--selinux-label",
            Setting::PidFile => "--pid-file",
            other => other.plain_name(),
        };
        match value {
            Some(v) if option.starts_with("--") => format!("{option}={v}"),
            Some(v) => format!("{option} {v}"),
            None => option.to_string(),
        }
    })
}
