//! The `error` filter: injects errors into requests at random, so that clients can be tested
//! against a failing server.
//!
//! Each kind of request (pread, pwrite, trim, zero, extents, cache) has its own settings: the
//! errno to return, the rate (a probability), and an optional trigger file that must exist for
//! errors to be injected. `error=`, `error-rate=` and `error-file=` set all six at once;
//! `error-pread=`, `error-pread-rate=`, `error-pread-file=` and the like set one. These are
//! nbdkit's parameters. nbdforge adds `error-flush*` for flush requests; the general parameters
//! leave flush alone, as nbdkit's do, so that an nbdkit command line behaves the same.
//!
//! The decision is made before the request reaches the layer below, which is not called when an
//! error is injected. Reads that pass keep the zero-copy paths of the layer below.

use std::path::PathBuf;
use std::sync::Arc;

use nbdforge_api::{
    absolute_path, parse_probability, Backend, BufferSink, Error, Extents, Filter, Flags, Handle, Layer, LayerInfo,
    OpenArgs, ReadSink, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("error", "injects errors at random, for testing clients").help(
        "error=EPERM|EIO|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN\n\
         \x20                              The error indication to return.\n\
         error-rate=0%..100%|0..1       Rate of errors to generate.\n\
         error-file=TRIGGER             Set trigger filename.\n\
         error-pread*, error-pwrite*, error-trim*, error-zero*, error-extents*, error-cache*,\n\
         error-flush*                   Apply settings only to read/write/etc",
    );
    Registration::filter(info, ErrorFilter::default)
}

/// The kinds of request the filter can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Pread,
    Pwrite,
    Trim,
    Zero,
    Extents,
    Cache,
    Flush,
}

impl Op {
    const ALL: [Op; 7] = [Op::Pread, Op::Pwrite, Op::Trim, Op::Zero, Op::Extents, Op::Cache, Op::Flush];
    /// What `error=`, `error-rate=` and `error-file=` apply to: nbdkit's six, not flush.
    const GENERAL: [Op; 6] = [Op::Pread, Op::Pwrite, Op::Trim, Op::Zero, Op::Extents, Op::Cache];

    fn name(self) -> &'static str {
        match self {
            Op::Pread => "pread",
            Op::Pwrite => "pwrite",
            Op::Trim => "trim",
            Op::Zero => "zero",
            Op::Extents => "extents",
            Op::Cache => "cache",
            Op::Flush => "flush",
        }
    }

    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// The errors the NBD protocol can carry, by the names the parameters use.
const ERRNOS: [(&str, i32); 6] = [
    ("EPERM", libc::EPERM),
    ("EIO", libc::EIO),
    ("ENOMEM", libc::ENOMEM),
    ("EINVAL", libc::EINVAL),
    ("ENOSPC", libc::ENOSPC),
    ("ESHUTDOWN", libc::ESHUTDOWN),
];

fn errno_name(errno: i32) -> &'static str {
    ERRNOS.iter().find(|(_, e)| *e == errno).map_or("EIO", |(name, _)| name)
}

/// How one kind of request fails.
#[derive(Debug, Clone)]
struct Injection {
    errno: i32,
    /// From 0 (never) to 1 (always).
    rate: f64,
    /// Errors are injected only while this file exists.
    trigger: Option<PathBuf>,
}

impl Default for Injection {
    fn default() -> Self {
        Injection { errno: libc::EIO, rate: 0.0, trigger: None }
    }
}

impl Injection {
    fn fails_now(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        if self.trigger.as_deref().is_some_and(|file| !file.exists()) {
            return false;
        }
        self.rate >= 1.0 || fastrand::f64() < self.rate
    }
}

/// The settings of every kind of request, indexed by [`Op`].
#[derive(Debug, Clone, Default)]
struct Settings([Injection; 7]);

impl Settings {
    fn of(&self, op: Op) -> &Injection {
        &self.0[op as usize]
    }

    /// `Ok(())` to let the request through, or the injected error.
    fn check(&self, op: Op) -> Result<()> {
        let injection = self.of(op);
        if !injection.fails_now() {
            return Ok(());
        }
        Err(Error::new(injection.errno, format!("injecting {} error into {}", errno_name(injection.errno), op.name())))
    }
}

/// The `error` filter.
#[derive(Debug, Default)]
pub struct ErrorFilter {
    settings: Arc<Settings>,
}

impl Layer for ErrorFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(rest) = key.strip_prefix("error") else {
            return Ok(false);
        };
        // `error`, `error-rate`, `error-file`, or the same with an operation's name inserted.
        let (ops, setting): (Vec<Op>, &str) = match rest {
            "" => (Op::GENERAL.to_vec(), ""),
            "-rate" => (Op::GENERAL.to_vec(), "rate"),
            "-file" => (Op::GENERAL.to_vec(), "file"),
            _ => {
                let Some(rest) = rest.strip_prefix('-') else {
                    return Ok(false);
                };
                let (name, setting) = rest.split_once('-').unwrap_or((rest, ""));
                let Some(op) = Op::from_name(name) else {
                    return Ok(false);
                };
                (vec![op], setting)
            }
        };
        let settings = Arc::make_mut(&mut self.settings);
        match setting {
            "" => {
                let errno = ERRNOS.iter().find(|(name, _)| *name == value).map(|(_, e)| *e).ok_or_else(|| {
                    Error::invalid(format!(
                        "{key}={value}: unknown error name (use EPERM, EIO, ENOMEM, EINVAL, ENOSPC or ESHUTDOWN)"
                    ))
                })?;
                ops.iter().for_each(|op| settings.0[*op as usize].errno = errno);
            }
            "rate" => {
                let rate = parse_probability(key, value)?;
                if rate > 1.0 {
                    return Err(Error::invalid(format!(
                        "{key}={value}: rate out of range (use 0 to 1, or 0% to 100%)"
                    )));
                }
                ops.iter().for_each(|op| settings.0[*op as usize].rate = rate);
            }
            "file" => {
                // The trigger file usually does not exist yet: an absolute path, not a real one.
                let file = absolute_path(key, value)?;
                ops.iter().for_each(|op| settings.0[*op as usize].trigger = Some(file.clone()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for ErrorFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ErrorHandle { next: next.open(args)?, settings: Arc::clone(&self.settings) }))
    }
}

/// One connection through the filter.
struct ErrorHandle {
    next: Box<dyn Handle>,
    settings: Arc<Settings>,
}

impl Handle for ErrorHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    // Reads that are not failed go down with the same sink: the data is not touched here.
    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.settings.check(Op::Pread)?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.read(buf.len() as u64, offset, flags, &mut BufferSink(buf))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.settings.check(Op::Pwrite)?;
        self.next.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.settings.check(Op::Trim)?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.settings.check(Op::Zero)?;
        self.next.zero(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.settings.check(Op::Extents)?;
        self.next.extents(count, offset, flags, extents)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.settings.check(Op::Cache)?;
        self.next.cache(count, offset, flags)
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        self.settings.check(Op::Flush)?;
        self.next.flush(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::MemBackend;

    fn configured(params: &[(&str, &str)]) -> ErrorFilter {
        let mut filter = ErrorFilter::default();
        for (k, v) in params {
            assert!(filter.config(k, v).unwrap(), "{k} is the filter's");
        }
        filter
    }

    #[test]
    fn parameters_set_one_operation_or_all_but_flush() {
        let f = configured(&[("error", "ENOSPC"), ("error-pread", "EPERM"), ("error-rate", "1:4")]);
        assert_eq!(f.settings.of(Op::Pread).errno, libc::EPERM);
        assert_eq!(f.settings.of(Op::Cache).errno, libc::ENOSPC);
        assert_eq!(f.settings.of(Op::Flush).errno, libc::EIO);
        assert_eq!(f.settings.of(Op::Zero).rate, 0.25);
        assert_eq!(f.settings.of(Op::Flush).rate, 0.0);
        let f = configured(&[("error-flush-rate", "100%"), ("error-extents-file", "trigger")]);
        assert_eq!(f.settings.of(Op::Flush).rate, 1.0);
        assert!(f.settings.of(Op::Extents).trigger.as_ref().unwrap().is_absolute());
        assert!(f.settings.of(Op::Pread).trigger.is_none());
        let mut f = ErrorFilter::default();
        assert!(!f.config("size", "1M").unwrap());
        assert!(!f.config("error-bogus-rate", "1").unwrap());
        assert!(!f.config("error-pread-colour", "1").unwrap());
    }

    #[test]
    fn bad_values_name_the_parameter_and_the_value() {
        let mut f = ErrorFilter::default();
        assert!(f.config("error", "EFOO").unwrap_err().message.starts_with("error=EFOO: unknown error name"));
        assert!(f.config("error-trim-rate", "150%").unwrap_err().message.starts_with("error-trim-rate=150%: rate"));
        assert!(f.config("error-rate", "often").unwrap_err().message.starts_with("error-rate=often:"));
    }

    #[test]
    fn errors_follow_rate_and_trigger_file() {
        let dir = std::env::temp_dir().join(format!("nbdforge-error-{}", std::process::id()));
        let trigger = dir.to_str().unwrap().to_string();
        let f = configured(&[("error-pwrite-rate", "1"), ("error-pwrite-file", &trigger), ("error-pread-rate", "0.5")]);
        let h = f.open(&MemBackend::disk(4096), &OpenArgs::local("", false)).unwrap();
        h.pwrite(b"ok", 0, Flags::NONE).expect("no trigger file: no error");
        std::fs::write(&dir, "").unwrap();
        let e = h.pwrite(b"no", 0, Flags::NONE).unwrap_err();
        assert_eq!((e.errno, e.message.as_str()), (libc::EIO, "injecting EIO error into pwrite"));
        std::fs::remove_file(&dir).unwrap();
        let mut buf = [0u8; 2];
        let failed = (0..2000).filter(|_| h.pread(&mut buf, 0, Flags::NONE).is_err()).count();
        assert!((800..1200).contains(&failed), "{failed} of 2000 reads failed at rate 0.5");
        assert_eq!(&buf, b"ok");
        h.flush(Flags::NONE).unwrap();
    }
}
