//! Fuzz target: request headers in the transmission phase, as the server reads them.
//!
//! Input: a negotiated state (size u64, transmission flags u16, a byte with bit 0 structured,
//! bit 1 extended, bit 2 base:allocation, then block sizes min, preferred, max as u32, all
//! big-endian), then requests: a 28-byte header (32 with extended headers) and any payload it
//! announces, until the input runs out or the stream is out of sync.
//!
//! Checks: `Request::parse` takes only the right magic and decodes the fields as sent; a
//! `Command` from `Session::check` lies inside the export, has a nonzero length, reads and writes
//! at most `MAX_REQUEST` (advertised block sizes are advice, not checked) and is allowed by the
//! export's flags; refusals carry a known errno and encode into a
//! well-formed error reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdforge_fuzz::{be, negotiated, Input};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::transmission::{block_status_payload, COMPACT_REQUEST_LEN, EXTENDED_REQUEST_LEN, MAX_REQUEST};
use nbdforge_protocol::{Command, Replies, Request, Session};

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(size), Some(flags), Some(bits)) = (input.u64(), input.u16(), input.u8()) else { return };
    let (Some(min), Some(pref), Some(max)) = (input.u32(), input.u32(), input.u32()) else { return };
    let n = negotiated(size, flags, (min, pref, max), bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
    let session = Session::new(&n);
    let replies = Replies { structured: n.structured, extended: n.extended };

    loop {
        let Some(header) = input.take(if n.extended { EXTENDED_REQUEST_LEN } else { COMPACT_REQUEST_LEN }) else {
            return;
        };
        check_parse(header);
        let Ok(mut req) = Request::parse(header, n.extended) else { return };

        let len = req.payload_len();
        // Without extended headers only WRITE carries a payload (PAYLOAD_LEN is not defined there),
        // else the server reads the next requests as a payload and the stream is out of sync.
        if !n.extended {
            assert_eq!(len, if req.kind == CMD_WRITE { req.length } else { 0 }, "compact {req:?} with a payload");
        }
        // The payload, read or drained as the server does.
        let limit = if req.kind == CMD_WRITE { session.max_payload() } else { 64 << 10 };
        if len > limit {
            input.skip(len);
            continue;
        }
        let Some(payload) = input.take(len as usize) else { return };
        if req.kind == CMD_BLOCK_STATUS && req.extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0 {
            match block_status_payload(payload) {
                Some((effect, _)) => {
                    req.length = effect;
                    req.flags &= !CMD_FLAG_PAYLOAD_LEN;
                }
                None => continue,
            }
        }

        match session.check(&req) {
            Ok(cmd) => {
                check_command(&session, &req, cmd);
                let ok = replies.ok(req.cookie, req.offset);
                let ok = ok.as_bytes();
                assert_eq!(ok.len(), if n.extended { 32 } else { 16 });
                assert_eq!(be(&ok[8..16]), req.cookie);
            }
            Err(r) => {
                assert!(matches!(r.errno, EINVAL | EPERM | ENOSPC | EOVERFLOW), "errno {}", r.errno);
                assert!(r.errno != ENOSPC || matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES));
                assert!(r.errno != EOVERFLOW || (req.kind == CMD_READ && n.structured));
                assert!(!r.message.is_empty());
                let mut out = Vec::new();
                replies.error(&mut out, req.cookie, req.offset, r.errno, &r.message);
                check_error_reply(&out, &replies, req.cookie, r.errno);
            }
        }
    }
});

/// `Request::parse` in both modes and on a short buffer: the magic decides, fields are as sent.
fn check_parse(buf: &[u8]) {
    for extended in [false, true] {
        let (magic, len) = if extended {
            (EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_LEN)
        } else {
            (REQUEST_MAGIC, COMPACT_REQUEST_LEN)
        };
        let good_magic = be(&buf[..4]) as u32 == magic;
        match Request::parse(buf, extended) {
            Ok(r) => {
                assert!(good_magic, "header with magic {:08x} accepted (extended: {extended})", be(&buf[..4]));
                assert!(buf.len() >= len);
                assert_eq!(r.flags, be(&buf[4..6]) as u16);
                assert_eq!(r.kind, be(&buf[6..8]) as u16);
                assert_eq!(r.cookie, be(&buf[8..16]));
                assert_eq!(r.offset, be(&buf[16..24]));
                assert_eq!(r.length, if extended { be(&buf[24..32]) } else { be(&buf[24..28]) });
                assert!(Request::parse(&buf[..len - 1], extended).is_err(), "short header accepted");
            }
            Err(_) => assert!(!good_magic || buf.len() < len, "good header refused"),
        }
    }
}

/// An accepted command is what the client asked for and fits the export.
fn check_command(s: &Session, req: &Request, cmd: Command) {
    let has = |flag: u16| s.flags & flag != 0;
    // The advertised block sizes are advice; only the server's own bound holds.
    let max = MAX_REQUEST;
    let inside = |offset: u64, length: u64| {
        assert_eq!((offset, length), (req.offset, req.length));
        assert!(length > 0, "zero-length {cmd:?}");
        assert!(offset.checked_add(length).is_some_and(|end| end <= s.size), "{cmd:?} outside {} bytes", s.size);
    };
    assert!(req.flags & CMD_FLAG_PAYLOAD_LEN == 0 || s.extended, "PAYLOAD_LEN without extended headers");
    assert!(req.flags & CMD_FLAG_DF == 0 || has(FLAG_SEND_DF), "DF not offered");
    let writes = matches!(cmd, Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. });
    assert!(!writes || !has(FLAG_READ_ONLY), "{cmd:?} on a read-only export");
    let kind = match cmd {
        Command::Disconnect => CMD_DISC,
        Command::Flush => {
            assert!(has(FLAG_SEND_FLUSH));
            CMD_FLUSH
        }
        Command::Read { offset, length, df } => {
            inside(offset, u64::from(length));
            assert!(length <= max && df == (req.flags & CMD_FLAG_DF != 0));
            CMD_READ
        }
        Command::Write { offset, length, fua } => {
            inside(offset, u64::from(length));
            assert!(length <= max && u64::from(length) == req.payload_len());
            assert!(!fua || has(FLAG_SEND_FUA));
            CMD_WRITE
        }
        Command::Trim { offset, length, fua } => {
            inside(offset, length);
            assert!(has(FLAG_SEND_TRIM) && (!fua || has(FLAG_SEND_FUA)));
            CMD_TRIM
        }
        Command::Cache { offset, length } => {
            inside(offset, length);
            assert!(has(FLAG_SEND_CACHE));
            CMD_CACHE
        }
        Command::WriteZeroes { offset, length, fua, may_trim, fast } => {
            inside(offset, length);
            assert!(has(FLAG_SEND_WRITE_ZEROES) && (!fua || has(FLAG_SEND_FUA)));
            assert!(!fast || has(FLAG_SEND_FAST_ZERO));
            assert_eq!(may_trim, req.flags & CMD_FLAG_NO_HOLE == 0);
            CMD_WRITE_ZEROES
        }
        Command::BlockStatus { offset, length, req_one } => {
            inside(offset, length);
            assert!(!s.contexts.is_empty(), "block status without a meta context");
            assert_eq!(req_one, req.flags & CMD_FLAG_REQ_ONE != 0);
            CMD_BLOCK_STATUS
        }
    };
    assert_eq!(kind, req.kind, "{cmd:?} from command type {}", req.kind);
}

/// An error reply: simple, or one structured chunk whose length field matches what follows.
fn check_error_reply(out: &[u8], replies: &Replies, cookie: u64, errno: u32) {
    if !replies.structured {
        assert_eq!(out.len(), 16);
        assert_eq!(be(&out[..4]) as u32, SIMPLE_REPLY_MAGIC);
        assert_eq!((be(&out[4..8]) as u32, be(&out[8..16])), (errno, cookie));
        return;
    }
    let (magic, head, len) = if replies.extended {
        (EXTENDED_REPLY_MAGIC, 32, be(&out[24..32]))
    } else {
        (STRUCTURED_REPLY_MAGIC, 20, be(&out[16..20]))
    };
    assert_eq!(be(&out[..4]) as u32, magic);
    assert_eq!(be(&out[4..6]) as u16, REPLY_FLAG_DONE);
    assert_eq!(be(&out[6..8]) as u16, REPLY_TYPE_ERROR);
    assert_eq!(be(&out[8..16]), cookie);
    assert_eq!(len, (out.len() - head) as u64, "error chunk length field");
    let body = &out[head..];
    assert_eq!(be(&body[..4]) as u32, errno);
    let msg = be(&body[4..6]) as usize;
    assert!(msg <= 4096 && msg == body.len() - 6, "error message length field");
}
