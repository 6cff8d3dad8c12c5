//! `nbdforge-img`: qemu-nbd's command line over the nbdforge server.
//!
//! [`options`] parses the command line; this file runs the server process in qemu-nbd's order:
//! socket activation is taken first, then the process goes into the background (`--fork`; the
//! parent exits once the child listens), the image is opened (errors exit 1 before anything
//! listens), the sockets are bound and the pid file written, and the server runs until a signal
//! or, without `-t`, until the last client has left.

mod options;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use nbdforge_api::LayerInfo;
use nbdforge_img::image::{Image, ImageOptions};
use nbdforge_img::plugin::{ImagePlugin, Settings};
use nbdforge_process::sockets::{self, ListenOn};
use nbdforge_process::{activation, daemon, logging, pidfile, Error, LogDest, Setting, Target};
use nbdforge_server::{Server, ServerConfig, Stack};

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
    if o.list {
        return Err("-L: listing another server's exports is not implemented yet".into());
    }
    let file = o.file.clone().expect("options::parse requires FILE");

    let inherited = activation::take_listen_fds().map_err(qemu_nbd_says)?;
    if inherited.is_some() && (o.socket.is_some() || o.port.is_some() || o.bind.is_some()) {
        return Err("socket activation cannot be combined with -k, -p or -b".into());
    }
    logging::init(PROG, LogDest::Stderr, o.verbose);
    let ready = if o.fork { Some(daemon::fork_into_background(PROG).map_err(qemu_nbd_says)?) } else { None };

    let image_opts = ImageOptions { format: o.format, writable: !o.readonly, snapshot: o.snapshot, direct: o.nocache };
    let image = Image::open(&file, &image_opts)?;
    let settings = Settings {
        name: file.display().to_string(),
        export_name: o.export_name.clone().unwrap_or_default(),
        description: o.description.clone(),
        offset: o.offset,
        discard_unmap: o.discard_unmap,
        detect_zeroes: o.detect_zeroes,
        allocation_depth: o.allocation_depth,
        readonly: o.readonly,
    };
    let plugin = ImagePlugin::new(image, settings)?;
    let info = LayerInfo::new("image", "a raw or qcow2 disk image");
    let backend = Stack::new((info, Box::new(plugin)), Vec::new()).finish().map_err(|e| e.message)?;

    let config = ServerConfig {
        readonly: o.readonly,
        handshake_timeout: Some(Duration::from_secs(o.handshake_limit.unwrap_or(10))).filter(|d| !d.is_zero()),
        max_clients: o.shared,
        exit_when_idle: !o.persistent,
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
    if let Some(ready) = ready {
        ready.notify(o.verbose > 0).map_err(qemu_nbd_says)?;
        if o.verbose == 0 {
            logging::set_destination(LogDest::Syslog);
        }
    }
    match target {
        Target::One(read, write) => server.serve_one(read, write),
        Target::Listen(bound) => {
            let sockets::Bound { listeners, private_dir, socket_file, .. } = bound;
            let served = server.serve(listeners);
            drop(socket_file);
            drop(private_dir);
            served
        }
    }
    .map_err(|e| format!("server: {e}"))
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
