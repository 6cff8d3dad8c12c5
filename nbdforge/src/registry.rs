//! Finding plugins and filters by the name given on the command line, in one table of
//! registrations (built-in layers now; layers loaded at run time register the same way).
//!
//! nbdkit also accepts the path of a plugin's shared object
//! (`nbdkit /usr/lib64/nbdkit/plugins/nbdkit-file-plugin.so`); such a path is mapped to the
//! built-in of the same name so that scripts written that way keep working.

use std::path::Path;

use nbdforge_api::Registration;

/// Every layer the binary knows.
pub fn table() -> Vec<Registration> {
    let mut table = nbdforge_plugins::registrations();
    table.extend(nbdforge_filters::registrations());
    table.extend(nbdforge_examples::registrations());
    table
}

fn names(table: &[Registration], plugins: bool) -> String {
    table.iter().filter(|r| r.is_plugin() == plugins).map(|r| r.info.name.as_str()).collect::<Vec<_>>().join(", ")
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
pub fn plugin<'a>(table: &'a [Registration], word: &str) -> Result<&'a Registration, String> {
    short_name(word, "plugin").and_then(|name| nbdforge_api::find(table, name, true)).ok_or_else(|| {
        format!(
            "error: cannot open plugin '{word}': there is no such plugin built in (plugins: {})",
            names(table, true)
        )
    })
}

/// The filter named `word`, or an error listing the filters there are.
pub fn filter<'a>(table: &'a [Registration], word: &str) -> Result<&'a Registration, String> {
    short_name(word, "filter").and_then(|name| nbdforge_api::find(table, name, false)).ok_or_else(|| {
        format!(
            "error: cannot open filter '{word}': there is no such filter built in (filters: {})",
            names(table, false)
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
