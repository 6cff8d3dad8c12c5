//! The `blocksize-policy` filter: sets the block sizes the export advertises, and chooses what
//! happens to requests that ignore them (nbdkit-blocksize-policy-filter).
//!
//! `blocksize-minimum=`, `blocksize-preferred=` and `blocksize-maximum=` replace what the layer
//! below advertises, one by one; a layer that advertises nothing gets 1, 4096 and 4G - 1 for
//! what is not given, and the maximum is never over `blocksize-write-disconnect=`. Advertising
//! is advice: with `blocksize-error-policy=allow` (the default) every request goes on down;
//! with `error` a request not a multiple of the minimum in length or offset, or a read or write
//! longer than the maximum, fails with `EINVAL` here. `blocksize-write-disconnect=N` drops the
//! client that sends a write longer than N bytes, whatever the error policy, for clients that
//! cannot recover from a refused write.

use std::sync::Arc;

use nbdforge_api::{
    parse_choice, parse_size, Backend, BlockSize, Capabilities, Connection, Error, Extents, Filter, Flags, Handle,
    Layer, LayerInfo, OpenArgs, ReadSink, Registration, Result,
};

use crate::watch::see_every_request;

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info =
        LayerInfo::new("blocksize-policy", "set minimum, preferred and maximum block size, and apply error policy")
            .help(
                "blocksize-error-policy=allow|error  What to do with requests that ignore the block sizes.\n\
             blocksize-minimum=<SIZE>            Minimum block size to advertise (power of 2, <= 64K).\n\
             blocksize-preferred=<SIZE>          Preferred block size to advertise (power of 2, 512 to 32M).\n\
             blocksize-maximum=<SIZE>            Maximum block size to advertise.\n\
             blocksize-write-disconnect=<SIZE>   Drop clients that write more than SIZE at once.",
            );
    Registration::filter(info, PolicyFilter::default)
}

/// The `blocksize-policy` filter: the parameters as given (`None`: not given, or 0).
#[derive(Debug, Default, Clone)]
pub struct PolicyFilter {
    minimum: Option<u32>,
    preferred: Option<u32>,
    maximum: Option<u32>,
    write_disconnect: Option<u32>,
    refuse: bool,
}

impl Layer for PolicyFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key == "blocksize-error-policy" {
            self.refuse = parse_choice(key, value, &["allow", "error"])? == "error";
            return Ok(true);
        }
        let slot = match key {
            "blocksize-minimum" => &mut self.minimum,
            "blocksize-preferred" => &mut self.preferred,
            "blocksize-maximum" => &mut self.maximum,
            "blocksize-write-disconnect" => &mut self.write_disconnect,
            _ => return Ok(false),
        };
        let fail = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
        let n = u32::try_from(parse_size(key, value)?).map_err(|_| fail("must be at most 4G - 1"))?;
        // 0 is "not given", as in nbdkit.
        let bad = match key {
            "blocksize-minimum" => n != 0 && (!n.is_power_of_two() || n > 65536),
            "blocksize-preferred" => n != 0 && (!n.is_power_of_two() || !(512..=32 << 20).contains(&n)),
            _ => false,
        };
        if bad && key == "blocksize-minimum" {
            return Err(fail("must be a power of 2, at most 64K"));
        } else if bad {
            return Err(fail("must be a power of 2 between 512 and 32M"));
        }
        *slot = Some(n).filter(|&n| n > 0);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let fail = |key: &str, n: u32, why: String| Err(Error::invalid(format!("{key}={n}: {why}")));
        if let (Some(min), Some(max)) = (self.minimum, self.maximum) {
            if max != u32::MAX && !max.is_multiple_of(min) {
                return fail(
                    "blocksize-maximum",
                    max,
                    format!("must be 4294967295 or a multiple of blocksize-minimum ({min})"),
                );
            }
        }
        if let (Some(min), Some(pref)) = (self.minimum, self.preferred) {
            if min > pref {
                return fail("blocksize-minimum", min, format!("must be at most blocksize-preferred ({pref})"));
            }
        }
        if let (Some(pref), Some(max)) = (self.preferred, self.maximum) {
            if pref > max {
                return fail("blocksize-preferred", pref, format!("must be at most blocksize-maximum ({max})"));
            }
        }
        if let (Some(min), Some(n)) = (self.minimum, self.write_disconnect) {
            if n <= min {
                return fail("blocksize-write-disconnect", n, format!("must be larger than blocksize-minimum ({min})"));
            }
        }
        Ok(())
    }
}

impl PolicyFilter {
    /// The block sizes to advertise over what the layer below advertises (`None`: nothing is
    /// advertised, and nothing enforced). Without `blocksize-maximum`, the maximum is at most
    /// `blocksize-write-disconnect` (rounded down to the minimum), even when that is the only
    /// parameter or the layer below advertises a larger one, so that a client keeping to what
    /// is advertised is never dropped; nbdkit lowers it only for a layer advertising nothing,
    /// and only when another parameter is given.
    fn block_size(&self, below: Option<BlockSize>) -> Result<Option<BlockSize>> {
        let given = [self.minimum, self.preferred, self.maximum, self.write_disconnect];
        if given.iter().all(Option::is_none) {
            return Ok(below);
        }
        let minimum = self.minimum.or(below.map(|b| b.minimum)).unwrap_or(1);
        let preferred = self.preferred.or(below.map(|b| b.preferred)).unwrap_or(4096);
        let below_max = below.map_or(u32::MAX, |b| b.maximum);
        let maximum = self.maximum.unwrap_or(match self.write_disconnect {
            Some(n) => below_max.min(n - n % minimum),
            None => below_max,
        });
        if minimum > preferred || preferred > maximum {
            // A misconfiguration only a connection reveals: the log is where the user sees it.
            let message = format!(
                "blocksize-policy: the block sizes are invalid: minimum {minimum}, preferred {preferred}, \
                 maximum {maximum} (give the parameters that are left to the layer below or to the defaults)"
            );
            tracing::error!("{message}");
            return Err(Error::invalid(message));
        }
        Ok(Some(BlockSize { minimum, preferred, maximum }))
    }
}

impl Filter for PolicyFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        let limits = self.block_size(below.block_size()?)?;
        Ok(Box::new(PolicyHandle {
            next: below,
            limits,
            enforce: self.refuse,
            write_disconnect: self.write_disconnect,
            conn: Arc::clone(&args.conn),
        }))
    }
}

/// One connection through the filter, with the block sizes computed at open.
struct PolicyHandle {
    next: Box<dyn Handle>,
    limits: Option<BlockSize>,
    enforce: bool,
    write_disconnect: Option<u32>,
    conn: Arc<Connection>,
}

impl PolicyHandle {
    /// Under the error policy, refuses what breaks the advertised block sizes; `data` for reads
    /// and writes, the only requests the maximum bounds.
    fn check(&self, what: &str, count: u64, offset: u64, data: bool) -> Result<()> {
        match self.limits {
            Some(limits) if self.enforce => limits.check(what, count, offset, data),
            _ => Ok(()),
        }
    }
}

impl Handle for PolicyHandle {
    fn next(&self) -> Option<&dyn Handle> {
        Some(&*self.next)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(self.limits)
    }

    fn capabilities(&self) -> Result<Capabilities> {
        // A zero must be checked as a zero, not as the writes the server would emulate it with.
        Ok(see_every_request(self.next.capabilities()?))
    }

    fn read(&self, count: u64, offset: u64, flags: Flags, sink: &mut dyn ReadSink) -> Result<()> {
        self.check("read", count, offset, true)?;
        self.next.read(count, offset, flags, sink)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.check("read", buf.len() as u64, offset, true)?;
        self.next.pread(buf, offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        if let Some(n) = self.write_disconnect.filter(|&n| count > u64::from(n)) {
            self.conn.disconnect(true);
            return Err(Error::new(
                libc::ESHUTDOWN,
                format!("write of {count} bytes is over blocksize-write-disconnect={n}: disconnecting the client"),
            ));
        }
        self.check("write", count, offset, true)?;
        self.next.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check("trim", count, offset, false)?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check("zero", count, offset, false)?;
        self.next.zero(count, offset, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check("cache", count, offset, false)?;
        self.next.cache(count, offset, flags)
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.check("block status", count, offset, false)?;
        self.next.extents(count, offset, flags, extents)
    }

    fn block_status(&self, context: &str, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        self.check("block status", count, offset, false)?;
        self.next.block_status(context, count, offset, flags, extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> Result<PolicyFilter> {
        let mut f = PolicyFilter::default();
        for (k, v) in params {
            assert!(f.config(k, v)?);
        }
        f.config_complete()?;
        Ok(f)
    }

    fn sizes(b: Option<BlockSize>) -> Option<(u32, u32, u32)> {
        b.map(|b| (b.minimum, b.preferred, b.maximum))
    }

    #[test]
    fn each_parameter_replaces_what_the_layer_below_advertises() {
        let below = Some(BlockSize { minimum: 512, preferred: 4096, maximum: 1 << 20 });
        let f = configured(&[]).unwrap();
        assert_eq!(sizes(f.block_size(below).unwrap()), Some((512, 4096, 1 << 20)));
        assert_eq!(sizes(f.block_size(None).unwrap()), None, "nothing given, nothing below: nothing");
        let f = configured(&[("blocksize-preferred", "64K")]).unwrap();
        assert_eq!(sizes(f.block_size(below).unwrap()), Some((512, 65536, 1 << 20)));
        assert_eq!(sizes(f.block_size(None).unwrap()), Some((1, 65536, u32::MAX)));
        let f = configured(&[("blocksize-minimum", "4K"), ("blocksize-write-disconnect", "100000")]).unwrap();
        assert_eq!(sizes(f.block_size(below).unwrap()), Some((4096, 4096, 98304)), "capped by the disconnect size");
        let f = configured(&[("blocksize-maximum", "1000")]).unwrap();
        assert_eq!(f.block_size(None).unwrap_err().errno, libc::EINVAL, "preferred 4096 over the maximum");
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (params, words) in [
            (&[("blocksize-minimum", "3")][..], "blocksize-minimum=3"),
            (&[("blocksize-preferred", "256")][..], "blocksize-preferred=256"),
            (&[("blocksize-maximum", "8G")][..], "blocksize-maximum=8G"),
            (&[("blocksize-error-policy", "maybe")][..], "blocksize-error-policy=maybe"),
            (&[("blocksize-minimum", "512"), ("blocksize-maximum", "1000")][..], "blocksize-maximum=1000"),
        ] {
            let e = configured(params).unwrap_err();
            assert!(e.message.contains(words), "{}", e.message);
        }
        assert!(configured(&[("blocksize-minimum", "0")]).unwrap().minimum.is_none(), "0 is not given");
    }
}
