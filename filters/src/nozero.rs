//! The `nozero` filter: changes or removes the export's zeroing (`NBD_CMD_WRITE_ZEROES`), to
//! measure what efficient zeroing is worth or test a client's fallbacks (nbdkit-nozero-filter).
//!
//! `zeromode=` says who zeroes: nobody (`none`, the default: the client must write zeroes), this
//! filter by writing zeroes (`emulate`), or the layer below, without the permission to punch
//! holes (`notrim`) or unchanged (`plugin`). `fastzeromode=` says how fast-zero requests are
//! answered: not advertised (`none`), refused at once (`slow`), treated as ordinary zeroes
//! (`ignore`), or `default`: refused when emulating, left to the layer below otherwise.

use std::sync::Arc;

use nbdforge_api::{
    parse_choice, Backend, Capabilities, Error, Filter, Flags, Handle, Layer, LayerInfo, OpenArgs, Registration,
    Result, Support, ZEROES,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("nozero", "change or disable zeroing").help(
        "zeromode=<MODE>      One of 'none' (default), 'emulate', 'notrim', 'plugin'.\n\
         fastzeromode=<MODE>  One of 'default', 'none', 'slow', 'ignore'.",
    );
    Registration::filter(info, NozeroFilter::default)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ZeroMode {
    #[default]
    None,
    Emulate,
    NoTrim,
    Plugin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum FastZeroMode {
    #[default]
    Default,
    None,
    Slow,
    Ignore,
}

/// The `nozero` filter.
#[derive(Debug, Default)]
pub struct NozeroFilter {
    zero: ZeroMode,
    fast: FastZeroMode,
}

impl Layer for NozeroFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "zeromode" => {
                self.zero = match parse_choice(key, value, &["none", "emulate", "notrim", "plugin"])? {
                    "none" => ZeroMode::None,
                    "emulate" => ZeroMode::Emulate,
                    "notrim" => ZeroMode::NoTrim,
                    _ => ZeroMode::Plugin,
                }
            }
            "fastzeromode" => {
                self.fast = match parse_choice(key, value, &["default", "none", "slow", "ignore"])? {
                    "default" => FastZeroMode::Default,
                    "none" => FastZeroMode::None,
                    "slow" => FastZeroMode::Slow,
                    _ => FastZeroMode::Ignore,
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for NozeroFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let caps = below.capabilities()?;
        let passes_down = matches!(self.zero, ZeroMode::NoTrim | ZeroMode::Plugin);
        if passes_down && caps.write && caps.zero == Support::None {
            let mode = if self.zero == ZeroMode::NoTrim { "notrim" } else { "plugin" };
            return Err(Error::new(libc::EINVAL, format!("zeromode={mode}: the layer below cannot zero")));
        }
        Ok(Box::new(NozeroHandle { next: below, zero: self.zero, fast: self.fast }))
    }
}

/// One connection, with the filter's modes.
struct NozeroHandle {
    next: Box<dyn Handle>,
    zero: ZeroMode,
    fast: FastZeroMode,
}

impl Handle for NozeroHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn reads_unchanged(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Result<Capabilities> {
        let below = self.next.capabilities()?;
        let (zero, fast_zero) = match (self.zero, self.fast) {
            (ZeroMode::None, _) => (Support::None, false),
            (_, FastZeroMode::None) => (Support::Native, false),
            (ZeroMode::Emulate, _) | (_, FastZeroMode::Slow | FastZeroMode::Ignore) => (Support::Native, true),
            (_, FastZeroMode::Default) => (Support::Native, below.fast_zero),
        };
        Ok(Capabilities { zero, fast_zero, ..below })
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let mut flags = flags;
        if flags.contains(Flags::FAST_ZERO) {
            match (self.zero, self.fast) {
                (_, FastZeroMode::Ignore) => flags = flags.without(Flags::FAST_ZERO),
                (_, FastZeroMode::Slow) | (ZeroMode::Emulate, _) => {
                    return Err(Error::new(libc::ENOTSUP, "fast zero requests are refused (nozero filter)"))
                }
                _ => {}
            }
        }
        match self.zero {
            ZeroMode::Emulate => {
                // Written as data, FUA on the last piece only.
                let mut done = 0;
                while done < count {
                    let n = (count - done).min(ZEROES.len() as u64);
                    let last = done + n == count;
                    let piece_flags = if last && flags.contains(Flags::FUA) { Flags::FUA } else { Flags::NONE };
                    self.next.pwrite(&ZEROES[..n as usize], offset + done, piece_flags)?;
                    done += n;
                }
                Ok(())
            }
            ZeroMode::NoTrim => self.next.zero(count, offset, flags.without(Flags::MAY_TRIM)),
            _ => self.next.zero(count, offset, flags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_disk::{open_over, MemDisk};

    fn filter(params: &[(&str, &str)], disk: &MemDisk) -> Box<dyn Handle> {
        open_over(NozeroFilter::default(), params, disk).unwrap()
    }

    #[test]
    fn modes() {
        let disk = MemDisk::new(4 << 20);
        assert_eq!(filter(&[], &disk).capabilities().unwrap().zero, Support::None);

        let h = filter(&[("zeromode", "emulate")], &disk);
        assert!(h.capabilities().unwrap().fast_zero);
        assert_eq!(h.zero(4096, 0, Flags::FAST_ZERO).unwrap_err().errno, libc::ENOTSUP);
        // Written from the SDK's shared ZEROES, 1 MiB at a time, FUA on the last piece only.
        h.zero(1_572_864, 0, Flags::MAY_TRIM | Flags::FUA).unwrap();
        assert_eq!(disk.take_log(), ["pwrite 0+1048576 0", "pwrite 1048576+524288 1"]);

        filter(&[("zeromode", "notrim")], &disk).zero(512, 0, Flags::MAY_TRIM).unwrap();
        assert_eq!(disk.take_log(), ["zero 0+512 0"]);

        let h = filter(&[("zeromode", "plugin"), ("fastzeromode", "ignore")], &disk);
        h.zero(512, 0, Flags::FAST_ZERO | Flags::MAY_TRIM).unwrap();
        assert_eq!(disk.take_log(), ["zero 0+512 2"]);
        let h = filter(&[("zeromode", "plugin"), ("fastzeromode", "none")], &disk);
        assert!(!h.capabilities().unwrap().fast_zero);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = NozeroFilter::default().config("zeromode", "sometimes").unwrap_err();
        assert!(e.message.starts_with("zeromode=sometimes: "), "{}", e.message);
        let disk = MemDisk { caps: Capabilities { zero: Support::None, ..Capabilities::ALL }, ..MemDisk::new(512) };
        assert!(open_over(NozeroFilter::default(), &[("zeromode", "notrim")], &disk).is_err());
    }
}
