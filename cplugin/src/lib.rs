//! # nbdforge-cplugin: nbdkit's C plugins and filters, loaded unchanged
//!
//! A plugin written in C for nbdkit is a shared object exporting `plugin_init`, which returns
//! a `struct nbdkit_plugin` (nbdkit-plugin.h); the plugin in turn calls `nbdkit_*` functions
//! that the server exports. This crate is that ABI on top of the SDK:
//!
//! - `abi`: the struct's layout and the header's constants, `#[repr(C)]`;
//! - [`plugin`]: opening the `.so` and running it as an SDK `Plugin` with a `Handle` per
//!   connection, nbdkit's defaults for the callbacks left out;
//! - [`filter`]: the same for C filters built for nbdkit 1.32 (its filter ABI has no stability
//!   guarantee), with the layer below offered through `struct nbdkit_next_ops`;
//! - `exports`: the `nbdkit_*` functions, mapped onto the SDK, with `varargs.c` for the
//!   printf-style ones (stable Rust cannot define C variadic functions);
//! - `context`: the per-call state those functions read (connection, reported error);
//! - [`cc`]: the cc plugin, which compiles a C plugin at start-up and loads it the same way.
//!
//! A loaded plugin registers through the same `Registration` table as the built-in ones
//! ([`load`]). All of the crate's `unsafe` is about this one boundary (the C ABI).

mod abi;
pub mod cc;
mod context;
mod exports;
pub mod filter;
pub mod plugin;

use std::path::{Path, PathBuf};

use nbdforge_api::Registration;

pub use exports::exported;

/// Loads the C plugin at `path` and returns its table entry.
pub fn load(path: &Path) -> Result<Registration, String> {
    Ok(plugin::open(path)?.registration())
}

/// Loads the C filter at `path` (built for nbdkit 1.32) and returns its table entry.
pub fn load_filter(path: &Path) -> Result<Registration, String> {
    Ok(filter::open(path)?.registration())
}

/// What is loaded: nbdkit's names and directories for each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `nbdkit-NAME-plugin.so`.
    Plugin,
    /// `nbdkit-NAME-filter.so`.
    Filter,
}

impl Kind {
    /// `plugin` or `filter`.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Plugin => "plugin",
            Kind::Filter => "filter",
        }
    }

    /// Where nbdkit's own packages install them, tried after ours.
    pub fn nbdkit_dirs(self) -> &'static [&'static str] {
        match self {
            Kind::Plugin => NBDKIT_PLUGIN_DIRS,
            Kind::Filter => NBDKIT_FILTER_DIRS,
        }
    }

    /// Loads one and returns its table entry.
    pub fn load(self, path: &Path) -> Result<Registration, String> {
        match self {
            Kind::Plugin => load(path),
            Kind::Filter => load_filter(path),
        }
    }
}

/// Where nbdkit's own packages install their plugins.
pub const NBDKIT_PLUGIN_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/nbdkit/plugins", "/usr/lib64/nbdkit/plugins", "/usr/lib/nbdkit/plugins"];

/// Where nbdkit's own packages install their filters.
pub const NBDKIT_FILTER_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/nbdkit/filters", "/usr/lib64/nbdkit/filters", "/usr/lib/nbdkit/filters"];

/// The directories searched by name, in order: `ours`, then nbdkit's.
pub fn search_dirs(kind: Kind, ours: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![ours.to_path_buf()];
    dirs.extend(kind.nbdkit_dirs().iter().map(PathBuf::from));
    dirs
}

/// The first `nbdkit-NAME-KIND.so` in `dirs`.
pub fn find(kind: Kind, dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains(['/', '.']) {
        return None;
    }
    dirs.iter().map(|d| d.join(format!("nbdkit-{name}-{}.so", kind.word()))).find(|p| p.is_file())
}

/// The plugins this crate builds in: `cc`.
pub fn registrations() -> Vec<Registration> {
    vec![cc::registration()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plugins_by_name_in_order() {
        let dir = std::env::temp_dir().join(format!("nbdforge-cplugin-find-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("nbdkit-x-plugin.so"), "").unwrap();
        assert_eq!(find(Kind::Plugin, &[a.clone(), b.clone()], "x"), Some(b.join("nbdkit-x-plugin.so")));
        std::fs::write(a.join("nbdkit-x-plugin.so"), "").unwrap();
        assert_eq!(find(Kind::Plugin, &[a.clone(), b.clone()], "x"), Some(a.join("nbdkit-x-plugin.so")));
        assert_eq!(find(Kind::Filter, &[a.clone(), b.clone()], "x"), None);
        assert_eq!(find(Kind::Plugin, &[a, b], "../x"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_struct_has_the_headers_size() {
        // sizeof (struct nbdkit_plugin) with nbdkit 1.32's header on a 64-bit machine, as
        // Debian's plugins report it in _struct_size.
        assert_eq!(std::mem::size_of::<abi::NbdkitPlugin>(), 384);
    }

    #[test]
    fn a_file_that_is_not_a_plugin_is_refused_with_its_path() {
        let e = load(Path::new("/nonexistent/nbdkit-x-plugin.so")).unwrap_err();
        assert!(e.contains("/nonexistent/nbdkit-x-plugin.so"), "{e}");
    }
}
