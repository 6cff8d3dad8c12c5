//! Finding plugins and filters by the name given on the command line.
//!
//! Every plugin and filter is built into the binary. nbdkit also accepts the path of a plugin's
//! shared object (`nbdkit /usr/lib64/nbdkit/plugins/nbdkit-file-plugin.so`); such a path is mapped
//! to the built-in of the same name so that scripts written that way keep working.

use std::path::Path;

use nbdforge_api::{Filter, Plugin};

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
pub fn plugin(word: &str) -> Result<Box<dyn Plugin>, String> {
    short_name(word, "plugin")
        .and_then(nbdforge_plugins::lookup)
        .ok_or_else(|| {
            format!(
                "error: cannot open plugin '{word}': there is no such plugin built in (plugins: {})",
                nbdforge_plugins::NAMES.join(", ")
            )
        })
}

/// The filter named `word`, or an error listing the filters there are.
pub fn filter(word: &str) -> Result<Box<dyn Filter>, String> {
    short_name(word, "filter")
        .and_then(nbdforge_filters::lookup)
        .ok_or_else(|| {
            format!(
                "error: cannot open filter '{word}': there is no such filter built in (filters: {})",
                nbdforge_filters::NAMES.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn paths_map_to_builtins() {
        assert_eq!(short_name("memory", "plugin"), Some("memory"));
        assert_eq!(short_name("/usr/lib64/nbdkit/plugins/nbdkit-file-plugin.so", "plugin"), Some("file"));
        assert_eq!(short_name("./nbdkit-cow-filter.so", "filter"), Some("cow"));
        assert_eq!(short_name("/x/nbdkit-cow-filter.so", "plugin"), None);
        assert_eq!(short_name("/x/libfoo.so", "plugin"), None);
    }
}
