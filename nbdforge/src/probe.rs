//! Probing output, as nbdkit-probing(1) describes it: `--version`, `--dump-config`,
//! `PLUGIN --dump-plugin`, `PLUGIN --version`, `--filter=F null --version`, `PLUGIN --help`,
//! `--long-options` and `--short-options`. Everything here prints to stdout and touches nothing.
//!
//! Under the name `nbdkit` (a symlink or a copy named so), the binary reports itself as the nbdkit
//! release whose command line it implements, so that scripts testing
//! `nbdkit --dump-config | grep ^version_minor` for a minimum version accept it; nbdforge's own
//! version is then in `version_extra`.

use std::io::{self, Write};
use std::path::PathBuf;

use nbdforge_api::Registration;

use crate::options;

/// The nbdkit release whose command line and probing output this binary follows.
pub const NBDKIT_COMPAT_VERSION: &str = "1.46.0";

/// nbdforge's own version.
pub const OWN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How the binary was invoked: its name for messages, and whether it stands in for nbdkit.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The file name of `argv[0]` (`nbdforge`, `nbdkit`), used as the prefix of every message.
    pub prog: String,
    /// Invoked as `nbdkit`.
    pub as_nbdkit: bool,
}

impl Identity {
    pub fn from_argv0(argv0: Option<&std::ffi::OsStr>) -> Identity {
        let prog = argv0
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "nbdforge".to_string());
        let as_nbdkit = prog == "nbdkit";
        Identity { prog, as_nbdkit }
    }

    /// The program name reported by `--version` and `--dump-config`.
    pub fn name(&self) -> &'static str {
        if self.as_nbdkit {
            "nbdkit"
        } else {
            "nbdforge"
        }
    }

    /// The version reported by `--version` and `--dump-config`.
    pub fn version(&self) -> &'static str {
        if self.as_nbdkit {
            NBDKIT_COMPAT_VERSION
        } else {
            OWN_VERSION
        }
    }
}

/// `--version` with an optional stack: the server line, one per filter, then the plugin.
pub fn print_version(id: &Identity, filters: &[&Registration], plugin: Option<&Registration>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{} {}", id.name(), id.version())?;
    for f in filters {
        writeln!(out, "{} {}", f.info.name, f.info.version)?;
    }
    if let Some(p) = plugin {
        writeln!(out, "{} {}", p.info.name, p.info.version)?;
    }
    out.flush()
}

/// The names of the plugins (or filters) the binary knows, space-separated, for `--dump-config`.
fn layer_names(plugins: bool) -> String {
    let table = crate::registry::table();
    table.iter().filter(|r| r.is_plugin() == plugins).map(|r| r.info.name.as_str()).collect::<Vec<_>>().join(" ")
}

/// The installation layout, derived from where the binary is (`/usr/bin/nbdforge` gives the
/// prefix `/usr`), since nothing is fixed at build time.
struct Layout {
    binary: PathBuf,
    bindir: PathBuf,
    prefix: PathBuf,
}

impl Layout {
    fn find() -> Layout {
        let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nbdforge"));
        let bindir = binary.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let prefix = bindir.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        Layout { binary, bindir, prefix }
    }

    fn sysconfdir(&self) -> PathBuf {
        if self.prefix == std::path::Path::new("/usr") || self.prefix == std::path::Path::new("/") {
            PathBuf::from("/etc")
        } else {
            self.prefix.join("etc")
        }
    }
}

/// Where the server looks for system-wide TLS certificates when `--tls-certificates` is not given
/// (it looks in nbdkit's directory too).
fn root_tls_dir(id: &Identity) -> &'static str {
    if id.as_nbdkit {
        nbdforge_server::tls::NBDKIT_ROOT_CERTIFICATES_DIR
    } else {
        nbdforge_server::tls::ROOT_CERTIFICATES_DIR
    }
}

fn host_os() -> &'static str {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        "linux-gnu"
    } else if cfg!(all(target_os = "linux", target_env = "musl")) {
        "linux-musl"
    } else {
        std::env::consts::OS
    }
}

/// Our plugin directory (`plugindir`): where `nbdkit-NAME-plugin.so` is looked for first.
pub fn plugindir() -> PathBuf {
    Layout::find().prefix.join("lib").join("nbdforge").join("plugins")
}

/// Our filter directory (`filterdir`).
pub fn filterdir() -> PathBuf {
    Layout::find().prefix.join("lib").join("nbdforge").join("filters")
}

/// The directories searched for C plugins or filters by name, colon-separated, in order.
fn search_path(kind: nbdforge_cplugin::Kind) -> String {
    crate::registry::search_dirs(kind).iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
}

/// The `key=value` lines of `--dump-config`, sorted by key as nbdkit prints them.
pub fn dump_config_lines(id: &Identity) -> Vec<(String, String)> {
    let l = Layout::find();
    let libdir = l.prefix.join("lib");
    let path = |p: &PathBuf| p.display().to_string();
    let version = id.version();
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or("0").to_string();
    let minor = parts.next().unwrap_or("0").to_string();
    let mut lines: Vec<(String, String)> = vec![
        ("binary".into(), path(&l.binary)),
        ("bindir".into(), path(&l.bindir)),
        ("exit_with_parent".into(), "yes".into()),
        ("filterdir".into(), path(&filterdir())),
        ("filter_search_path".into(), search_path(nbdforge_cplugin::Kind::Filter)),
        ("filters".into(), layer_names(false)),
        ("host_cpu".into(), std::env::consts::ARCH.into()),
        ("host_os".into(), host_os().into()),
        ("libdir".into(), path(&libdir)),
        ("mandir".into(), path(&l.prefix.join("share").join("man"))),
        ("name".into(), id.name().into()),
        ("plugindir".into(), path(&plugindir())),
        ("plugin_search_path".into(), search_path(nbdforge_cplugin::Kind::Plugin)),
        ("plugins".into(), layer_names(true)),
        ("root_tls_certificates_dir".into(), root_tls_dir(id).into()),
        // --run with neither -p nor -U listens on a private Unix socket, not on TCP port 10809.
        ("run_default_socket".into(), "unix".into()),
        ("sbindir".into(), path(&l.bindir)),
        // --selinux-label is supported (through /proc/thread-self/attr/sockcreate) where SELinux is.
        ("selinux".into(), "yes".into()),
        ("sysconfdir".into(), path(&l.sysconfdir())),
        ("tls".into(), "yes".into()),
        ("version".into(), version.into()),
        ("version_major".into(), major),
        ("version_minor".into(), minor),
    ];
    if id.as_nbdkit {
        lines.push(("version_extra".into(), format!("nbdforge-{OWN_VERSION}")));
    } else {
        lines.push(("version_extra".into(), String::new()));
    }
    lines.sort();
    lines
}

pub fn print_dump_config(id: &Identity) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for (k, v) in dump_config_lines(id) {
        writeln!(out, "{k}={v}")?;
    }
    out.flush()
}

/// `PLUGIN --dump-plugin`: what nbdkit prints that applies to a built-in plugin, then the
/// plugin's own lines, then each filter's (`qcow2dec_deflate=yes`), as nbdkit adds them.
pub fn print_dump_plugin(id: &Identity, entry: &Registration, filters: &[&Registration]) -> io::Result<()> {
    let Some(plugin) = entry.new_plugin() else {
        return Err(io::Error::other(format!("{} is a filter", entry.info.name)));
    };
    let info = &entry.info;
    let mut out = io::stdout().lock();
    let l = Layout::find();
    writeln!(out, "path={}", l.binary.display())?;
    writeln!(out, "name={}", info.name)?;
    writeln!(out, "version={}", info.version)?;
    writeln!(out, "api_version=2")?;
    writeln!(out, "max_thread_model={}", plugin.thread_model().as_str())?;
    writeln!(out, "thread_model={}", plugin.thread_model().as_str())?;
    writeln!(out, "errno_is_preserved=1")?;
    if let Some(key) = &info.magic_config_key {
        writeln!(out, "magic_config_key={key}")?;
    }
    if !info.description.is_empty() {
        writeln!(out, "description={}", info.description)?;
    }
    writeln!(out, "has_config=1")?;
    writeln!(out, "has_config_complete=1")?;
    if !info.config_help.is_empty() {
        writeln!(out, "has_config_help=1")?;
    }
    writeln!(out, "has_get_ready=1")?;
    writeln!(out, "has_open=1")?;
    let _ = id;
    let filters = filters.iter().filter_map(|f| f.new_filter()).map(|f| f.dump_plugin());
    for (k, v) in plugin.dump_plugin().into_iter().chain(filters.flatten()) {
        writeln!(out, "{k}={v}")?;
    }
    out.flush()
}

/// `PLUGIN --help`: the synopsis, then each filter's and the plugin's parameters; `--help`
/// alone: the synopsis and the names of every plugin and filter there is.
pub fn print_help(
    id: &Identity,
    table: &[Registration],
    filters: &[&Registration],
    plugin: Option<&Registration>,
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    write!(out, "{}", options::usage(&id.prog))?;
    if plugin.is_none() && filters.is_empty() {
        for (kind, plugins) in [("Plugins", true), ("Filters", false)] {
            let names: Vec<&str> =
                table.iter().filter(|r| r.is_plugin() == plugins).map(|r| r.info.name.as_str()).collect();
            writeln!(out, "\n{kind}:")?;
            let mut line = String::new();
            for name in names {
                if !line.is_empty() && line.len() + name.len() + 2 > 96 {
                    writeln!(out, "  {line}")?;
                    line.clear();
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(name);
            }
            writeln!(out, "  {line}")?;
        }
        writeln!(out, "\n{} PLUGIN --help shows a plugin's parameters.", id.prog)?;
    }
    let section = |out: &mut io::StdoutLock, kind: &str, name: &str, desc: &str, help: &str| -> io::Result<()> {
        writeln!(out)?;
        if desc.is_empty() {
            writeln!(out, "{kind}: {name}")?;
        } else {
            writeln!(out, "{kind}: {name} ({desc})")?;
        }
        let help = help.trim_end();
        if !help.is_empty() {
            writeln!(out, "{help}")?;
        }
        Ok(())
    };
    for f in filters {
        section(&mut out, "filter", &f.info.name, &f.info.description, &f.info.config_help)?;
    }
    if let Some(p) = plugin {
        let i = &p.info;
        section(&mut out, "plugin", &i.name, &i.description, &i.config_help)?;
        if let Some(key) = &i.magic_config_key {
            writeln!(out, "(an argument without KEY= is taken as {key}=ARGUMENT)")?;
        }
    }
    out.flush()
}

/// `--long-options`: every long option, one per line, then the short ones (as nbdkit does).
pub fn print_long_options() -> io::Result<()> {
    let mut out = io::stdout().lock();
    for name in options::long_option_names() {
        writeln!(out, "{name}")?;
    }
    print_short_options_to(&mut out)?;
    out.flush()
}

/// `--short-options`: every short option, one per line.
pub fn print_short_options() -> io::Result<()> {
    let mut out = io::stdout().lock();
    print_short_options_to(&mut out)?;
    out.flush()
}

fn print_short_options_to(out: &mut impl Write) -> io::Result<()> {
    for c in options::SHORT_OPTIONS {
        writeln!(out, "-{c}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_argv0() {
        let id = Identity::from_argv0(Some("/usr/local/bin/nbdkit".as_ref()));
        assert!(id.as_nbdkit);
        assert_eq!(id.version(), NBDKIT_COMPAT_VERSION);
        let id = Identity::from_argv0(Some("target/release/nbdforge".as_ref()));
        assert!(!id.as_nbdkit);
        assert_eq!(id.prog, "nbdforge");
    }

    #[test]
    fn dump_config_has_the_probed_keys() {
        let id = Identity { prog: "nbdkit".into(), as_nbdkit: true };
        let lines = dump_config_lines(&id);
        let get = |k: &str| lines.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("name").as_deref(), Some("nbdkit"));
        assert_eq!(get("version").as_deref(), Some("1.46.0"));
        assert_eq!(get("version_major").as_deref(), Some("1"));
        assert_eq!(get("version_minor").as_deref(), Some("46"));
        assert!(get("version_extra").unwrap().contains(OWN_VERSION));
        for k in [
            "binary",
            "bindir",
            "exit_with_parent",
            "host_cpu",
            "host_os",
            "libdir",
            "mandir",
            "plugindir",
            "plugin_search_path",
            "filterdir",
            "root_tls_certificates_dir",
            "sbindir",
            "selinux",
            "sysconfdir",
            "tls",
            "run_default_socket",
        ] {
            assert!(get(k).is_some(), "missing {k}");
        }
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(sorted, lines);
    }
}
