//! # nbdforge-cplugin: nbdkit's C plugins, loaded unchanged
//!
//! A plugin written in C for nbdkit is a shared object exporting `plugin_init`, which returns
//! a `struct nbdkit_plugin` (nbdkit-plugin.h); the plugin in turn calls `nbdkit_*` functions
//! that the server exports. This crate is that ABI on top of the SDK:
//!
//! - `abi`: the struct's layout and the header's constants, `#[repr(C)]`;
//! - [`plugin`]: opening the `.so` and running it as an SDK `Plugin` with a `Handle` per
//!   connection, nbdkit's defaults for the callbacks left out;
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
pub mod plugin;

use std::path::{Path, PathBuf};

use nbdforge_api::Registration;

pub use exports::exported;

/// Loads the C plugin at `path` and returns its table entry.
pub fn load(path: &Path) -> Result<Registration, String> {
    Ok(plugin::open(path)?.registration())
}

/// Where nbdkit's own packages install their plugins, tried after ours.
pub const NBDKIT_PLUGIN_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/nbdkit/plugins", "/usr/lib64/nbdkit/plugins", "/usr/lib/nbdkit/plugins"];

/// The directories searched for `nbdkit-NAME-plugin.so`, in order: `ours`, then nbdkit's.
pub fn plugin_dirs(ours: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![ours.to_path_buf()];
    dirs.extend(NBDKIT_PLUGIN_DIRS.iter().map(PathBuf::from));
    dirs
}

/// The first `nbdkit-NAME-plugin.so` in `dirs`.
pub fn find(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains(['/', '.']) {
        return None;
    }
    dirs.iter().map(|d| d.join(format!("nbdkit-{name}-plugin.so"))).find(|p| p.is_file())
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
        assert_eq!(find(&[a.clone(), b.clone()], "x"), Some(b.join("nbdkit-x-plugin.so")));
        std::fs::write(a.join("nbdkit-x-plugin.so"), "").unwrap();
        assert_eq!(find(&[a.clone(), b.clone()], "x"), Some(a.join("nbdkit-x-plugin.so")));
        assert_eq!(find(&[a, b], "../x"), None);
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
