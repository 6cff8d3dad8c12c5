//! Finding plugins and filters by the name given on the command line, in one table of
//! registrations: the built-in layers, and C plugins loaded at run time, which register the
//! same way.
//!
//! A plugin word is looked up in this order:
//! - a path (it contains `/`, or ends in `.so`) to a file that exists: that shared object is
//!   loaded as an nbdkit C plugin, whatever its name. Someone who names a `.so` means that
//!   code, with its bugs and extensions, not ours;
//! - a path to a file that does not exist, named like nbdkit's plugins
//!   (`.../nbdkit-file-plugin.so`): the built-in of that name, so that scripts written for a
//!   machine with nbdkit installed work on one without it;
//! - a bare name: the built-in of that name; built-ins win, being what nbdforge is for;
//! - otherwise `nbdkit-NAME-plugin.so` in the plugin directories: ours, then nbdkit's
//!   (`--dump-config` prints them as `plugin_search_path`).
//!
//! Filters are found the same way (`nbdkit-NAME-filter.so`, `filter_search_path`); nbdkit's
//! filter ABI has no stability guarantee, so only filters built for nbdkit 1.32 load.

use std::path::{Path, PathBuf};

use nbdforge_api::Registration;
use nbdforge_cplugin::Kind;

/// Every layer the binary knows.
pub fn table() -> Vec<Registration> {
    // Refer to the exported nbdkit_* functions so that the linker keeps them for C plugins.
    std::hint::black_box(nbdforge_cplugin::exported());
    let mut table = nbdforge_plugins::registrations();
    table.extend(nbdforge_cplugin::registrations());
    table.extend(nbdforge_python::registrations());
    table.extend(nbdforge_filters::registrations());
    table.extend(nbdforge_decoders::registrations());
    table.extend(nbdforge_ext2::registrations());
    table.extend(nbdforge_examples::registrations());
    table
}

/// The directories searched for `nbdkit-NAME-plugin.so` (or `-filter.so`): ours (`plugindir`
/// or `filterdir`, next to the binary's prefix), then nbdkit's.
pub fn search_dirs(kind: Kind) -> Vec<PathBuf> {
    let ours = match kind {
        Kind::Plugin => crate::probe::plugindir(),
        Kind::Filter => crate::probe::filterdir(),
    };
    nbdforge_cplugin::search_dirs(kind, &ours)
}

fn names(table: &[Registration], plugins: bool) -> String {
    table.iter().filter(|r| r.is_plugin() == plugins).map(|r| r.info.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn is_path(word: &str) -> bool {
    word.contains('/') || word.ends_with(".so")
}

/// The built-in name a command-line word stands for: `memory` itself, or `memory` for
/// `.../nbdkit-memory-plugin.so` (and `nbdforge-memory-plugin`).
fn short_name<'a>(word: &'a str, kind: &str) -> Option<&'a str> {
    if !word.contains('/') && !word.contains('.') {
        return Some(word);
    }
    let file = Path::new(word).file_name()?.to_str()?;
    let stem = file.strip_suffix(".so").unwrap_or(file);
    let stem = stem.strip_prefix("nbdkit-").or_else(|| stem.strip_prefix("nbdforge-"))?;
    stem.strip_suffix(kind).and_then(|s| s.strip_suffix('-')).filter(|s| !s.is_empty())
}

/// The plugin named `word`, or an error listing the plugins there are.
pub fn plugin(table: &[Registration], word: &str) -> Result<Registration, String> {
    lookup(table, word, Kind::Plugin)
}

/// The filter named `word`, found as plugins are; only C filters built for nbdkit 1.32 load.
pub fn filter(table: &[Registration], word: &str) -> Result<Registration, String> {
    lookup(table, word, Kind::Filter)
}

fn lookup(table: &[Registration], word: &str, kind: Kind) -> Result<Registration, String> {
    if is_path(word) && Path::new(word).is_file() {
        return kind.load(Path::new(word)).map_err(|e| format!("error: {e}"));
    }
    let is_plugin = kind == Kind::Plugin;
    if let Some(r) = short_name(word, kind.word()).and_then(|name| nbdforge_api::find(table, name, is_plugin)) {
        return Ok(r.clone());
    }
    let dirs = search_dirs(kind);
    if !is_path(word) {
        if let Some(path) = nbdforge_cplugin::find(kind, &dirs, word) {
            return kind.load(&path).map_err(|e| format!("error: {e}"));
        }
    }
    let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let what = kind.word();
    Err(format!(
        "error: cannot open {what} '{word}': there is no such {what} built in ({what}s: {}), and no \
         nbdkit-{word}-{what}.so in {searched}",
        names(table, is_plugin)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_builtins() {
        assert_eq!(short_name("memory", "plugin"), Some("memory"));
        assert_eq!(short_name("/usr/lib64/nbdkit/plugins/nbdkit-file-plugin.so", "plugin"), Some("file"));
        assert_eq!(short_name("./nbdkit-cow-filter.so", "filter"), Some("cow"));
        assert_eq!(short_name("/x/nbdkit-cow-filter.so", "plugin"), None);
        assert_eq!(short_name("/x/libfoo.so", "plugin"), None);
    }

    #[test]
    fn a_missing_so_falls_back_to_the_builtin_and_an_unknown_name_lists_the_search_path() {
        let table = table();
        let r = plugin(&table, "/nonexistent/nbdkit-memory-plugin.so").unwrap();
        assert_eq!(r.info.name, "memory");
        let e = plugin(&table, "no-such-plugin-xyz").unwrap_err();
        assert!(e.contains("nbdkit-no-such-plugin-xyz-plugin.so"), "{e}");
        assert!(e.contains(nbdforge_cplugin::NBDKIT_PLUGIN_DIRS[0]), "{e}");
    }
}
