//! `nbdforge`: nbdkit's command line over the nbdforge server.
//!
//! This file only dispatches: [`options`] turns the command line into options, [`probe`] answers
//! the questions that print something and exit (`--help`, `--version`, `--dump-*`), [`registry`]
//! finds the plugin and filters, and [`lifecycle`] runs the server process (with the
//! `nbdforge-process` library). Every fatal error is printed as `PROG: message` on stderr (or the
//! log, once in the background) with exit status 1.

mod lifecycle;
mod options;
mod probe;
mod registry;

use std::ffi::OsString;
use std::process::ExitCode;

use nbdforge_process::logging;
use probe::Identity;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let id = Identity::from_argv0(args.first().map(|a| a.as_os_str()));
    let rest = if args.is_empty() { Vec::new() } else { args.split_off(1) };
    match run(&id, rest) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            logging::fatal(&format!("{}: {message}", id.prog));
            ExitCode::from(1)
        }
    }
}

fn run(id: &Identity, args: Vec<OsString>) -> Result<u8, String> {
    let hint = format!("Use '{} --help' or read the nbdforge(1) manual page for documentation.", id.prog);
    let o = options::parse(args).map_err(|e| format!("{e}\n{hint}"))?;
    let stdout = |r: std::io::Result<()>| r.map(|_| 0).map_err(|e| format!("stdout: {e}"));

    // Answered at once, whatever else is on the command line (as nbdkit does).
    if o.dump_config {
        return stdout(probe::print_dump_config(id));
    }
    if o.long_options {
        return stdout(probe::print_long_options());
    }
    if o.short_options {
        return stdout(probe::print_short_options());
    }

    let table = registry::table();
    let filters = o.filters.iter().map(|f| registry::filter(&table, f)).collect::<Result<Vec<_>, _>>()?;
    let filters: Vec<&nbdforge_api::Registration> = filters.iter().collect();
    let plugin = match &o.plugin {
        Some(name) => Some(registry::plugin(&table, name)?),
        None => None,
    };
    let plugin = plugin.as_ref();
    if o.help {
        return stdout(probe::print_help(id, &table, &filters, plugin));
    }
    if o.version {
        return stdout(probe::print_version(id, &filters, plugin));
    }
    if o.dump_plugin {
        // nbdkit refuses -s here (stdout is the dump), and lets the other ways to serve pass.
        if o.single {
            return Err("--dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination".into());
        }
        let Some(plugin) = plugin else {
            return Err(format!(
                "use '{0} PLUGIN --dump-plugin' to find out about a plugin, or '{0} --dump-config' about the server",
                id.prog
            ));
        };
        return stdout(probe::print_dump_plugin(id, plugin, &filters));
    }
    let Some(plugin) = plugin else {
        return Err(format!("no plugins given on the command line.\n{hint}"));
    };
    let stack = nbdforge_server::Stack::from_registrations(plugin, &filters)?;
    lifecycle::run(id, o, stack)
}
