//! The `exportname` filter: changes the list of exports clients see, which export the empty name
//! means, which names clients may ask for, and the exports' descriptions
//! (nbdkit-exportname-filter).
//!
//! Its policy is all in the handshake: [`Filter::list_exports`], [`Filter::default_export`] and
//! [`Filter::open`] (strict names); the handle only answers `export_description`.

use std::sync::Arc;

use nbdforge_api::{
    parse_bool, parse_choice, Backend, Error, Export, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("exportname", "adjust export names between client and plugin").help(
        "default-export=<NAME>     Canonical name for the \"\" default export.\n\
         exportname-list=<MODE>    'keep' (default), 'error', 'empty', 'defaultonly', 'explicit'.\n\
         exportname-strict=<BOOL>  Limit clients to the names given by exportname= (default false).\n\
         exportname=<NAME>         Add an explicit export name (may be repeated).\n\
         exportdesc=<MODE>         'keep' (default), 'none', 'fixed:STRING', 'script:SCRIPT'.",
    );
    Registration::filter(info, ExportnameFilter::default)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ListMode {
    #[default]
    Keep,
    Error,
    Empty,
    DefaultOnly,
    Explicit,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Description {
    #[default]
    Keep,
    None,
    Fixed(String),
    /// A shell command run with `$name` set to the export's name; its output is the description.
    Script(String),
}

/// The `exportname` filter.
#[derive(Debug, Default)]
pub struct ExportnameFilter {
    default_name: Option<String>,
    list: ListMode,
    strict: bool,
    names: Vec<String>,
    description: Description,
}

impl ExportnameFilter {
    /// The description of `name`, given the one the layer below has (`below`).
    fn describe(&self, name: &str, below: Option<String>) -> Result<Option<String>> {
        Ok(match &self.description {
            Description::Keep => below,
            Description::None => None,
            Description::Fixed(text) => Some(text.clone()),
            Description::Script(script) => {
                let out = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(script)
                    .env("name", name)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| Error::from_io(format!("exportdesc=script:{script}"), &e))?;
                if !out.status.success() {
                    return Err(Error::io(format!(
                        "exportdesc=script:{script}: failed ({}) for export '{name}'",
                        out.status
                    )));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                Some(text.strip_suffix('\n').unwrap_or(&text).to_string())
            }
        })
    }
}

impl Layer for ExportnameFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "default-export" => self.default_name = Some(value.to_string()).filter(|v| !v.is_empty()),
            "exportname-list" => {
                self.list = match parse_choice(key, value, &["keep", "error", "empty", "defaultonly", "explicit"])? {
                    "keep" => ListMode::Keep,
                    "error" => ListMode::Error,
                    "empty" => ListMode::Empty,
                    "defaultonly" => ListMode::DefaultOnly,
                    _ => ListMode::Explicit,
                }
            }
            "exportname-strict" => self.strict = parse_bool(key, value)?,
            "exportname" => self.names.push(value.to_string()),
            "exportdesc" => {
                self.description = match value {
                    "keep" => Description::Keep,
                    "none" => Description::None,
                    _ => match (value.strip_prefix("fixed:"), value.strip_prefix("script:")) {
                        (Some(text), _) => Description::Fixed(text.to_string()),
                        (_, Some(script)) => Description::Script(script.to_string()),
                        _ => {
                            return Err(Error::invalid(format!(
                                "{key}={value}: use keep, none, fixed:STRING or script:SCRIPT"
                            )))
                        }
                    },
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for ExportnameFilter {
    fn list_exports(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<Vec<Export>> {
        let exports = match self.list {
            ListMode::Keep => next.list_exports(readonly, tls)?,
            ListMode::Error => return Err(Error::new(libc::EPERM, "listing exports is not allowed")),
            ListMode::Empty => Vec::new(),
            ListMode::DefaultOnly => vec![Export::named(self.default_export(next, readonly, tls)?)],
            ListMode::Explicit => self.names.iter().map(Export::named).collect(),
        };
        exports
            .into_iter()
            .map(|e| Ok(Export { description: self.describe(&e.name, e.description.clone())?, name: e.name }))
            .collect()
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, tls: bool) -> Result<String> {
        match &self.default_name {
            Some(name) => Ok(name.clone()),
            None => next.default_export(readonly, tls),
        }
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        if self.strict && !self.names.contains(&args.export_name) {
            return Err(Error::new(
                libc::ENOENT,
                format!("export '{}' is not one of the exportname= list", args.export_name),
            ));
        }
        let below = next.open(args)?;
        let description = self.describe(&args.export_name, below.export_description()?)?;
        Ok(Box::new(ExportnameHandle { next: below, description }))
    }
}

struct ExportnameHandle {
    next: Box<dyn Handle>,
    description: Option<String>,
}

impl Handle for ExportnameHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self.description.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{MemBackend, MemDisk};

    fn configured(params: &[(&str, &str)]) -> ExportnameFilter {
        let mut f = ExportnameFilter::default();
        for (k, v) in params {
            assert!(f.config(k, v).unwrap());
        }
        f
    }

    #[test]
    fn lists_defaults_and_descriptions() {
        let next = MemBackend::new(MemDisk::new(512));
        let f = configured(&[
            ("exportname-list", "explicit"),
            ("exportname", "a"),
            ("exportname", "b"),
            ("exportdesc", "fixed:hi"),
        ]);
        let list = f.list_exports(&next, false, false).unwrap();
        assert_eq!(list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(list[0].description.as_deref(), Some("hi"));
        let f = configured(&[("exportname-list", "defaultonly"), ("default-export", "disk2")]);
        assert_eq!(f.list_exports(&next, false, false).unwrap(), [Export::named("disk2")]);
        assert_eq!(f.default_export(&next, false, false).unwrap(), "disk2");
        let f = configured(&[("exportdesc", "script:echo \"about $name\"")]);
        assert_eq!(f.describe("x", None).unwrap().as_deref(), Some("about x"));
        assert_eq!(
            configured(&[("exportname-list", "error")]).list_exports(&next, false, false).unwrap_err().errno,
            libc::EPERM
        );
    }

    #[test]
    fn strict_names() {
        let next: Arc<dyn Backend> = Arc::new(MemBackend::new(MemDisk::new(512)));
        let f = configured(&[("exportname-strict", "true"), ("exportname", "good")]);
        assert!(f.open(&next, &OpenArgs::local("good", false)).is_ok());
        assert_eq!(f.open(&next, &OpenArgs::local("bad", false)).err().unwrap().errno, libc::ENOENT);
        assert!(ExportnameFilter::default()
            .config("exportdesc", "loud")
            .unwrap_err()
            .message
            .starts_with("exportdesc=loud: "));
    }
}
