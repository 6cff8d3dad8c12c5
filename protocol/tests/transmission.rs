//! Request parsing, the checks of every command, and reply layouts.

use nbdforge_protocol::consts::*;
use nbdforge_protocol::transmission::{block_status_payload, MAX_REQUEST};
use nbdforge_protocol::*;

fn session(flags: u16) -> Session {
    let contexts = vec![MetaContext { id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION.into() }];
    Session { size: 1 << 20, flags, structured: true, extended: false, contexts, block_size: (1, 4096, 64 << 20) }
}

const RW: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_SEND_FAST_ZERO
    | FLAG_SEND_CACHE
    | FLAG_SEND_DF;

fn req(kind: u16, flags: u16, offset: u64, length: u64) -> Request {
    Request { flags, kind, cookie: 7, offset, length, extended: false }
}

fn errno(s: &Session, r: Request) -> u32 {
    s.check(&r).unwrap_err().errno
}

#[test]
fn parses_compact_and_extended_headers() {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&CMD_FLAG_FUA.to_be_bytes());
    b.extend_from_slice(&CMD_WRITE.to_be_bytes());
    b.extend_from_slice(&9u64.to_be_bytes());
    b.extend_from_slice(&512u64.to_be_bytes());
    b.extend_from_slice(&4096u32.to_be_bytes());
    let r = Request::parse(&b, false).unwrap();
    assert_eq!(
        r,
        Request { flags: CMD_FLAG_FUA, kind: CMD_WRITE, cookie: 9, offset: 512, length: 4096, extended: false }
    );
    assert_eq!(r.payload_len(), 4096);
    assert!(matches!(Request::parse(&b, true), Err(ProtocolError::BadMagic { .. })));

    let mut e = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
    e.extend_from_slice(&0u16.to_be_bytes());
    e.extend_from_slice(&CMD_BLOCK_STATUS.to_be_bytes());
    e.extend_from_slice(&1u64.to_be_bytes());
    e.extend_from_slice(&0u64.to_be_bytes());
    e.extend_from_slice(&(8u64 << 30).to_be_bytes());
    let r = Request::parse(&e, true).unwrap();
    assert_eq!(r.length, 8 << 30);
    assert_eq!(r.payload_len(), 0);
}

#[test]
fn errors_as_the_spec_says() {
    let s = session(RW);
    assert_eq!(errno(&s, req(CMD_READ, 0, 1 << 20, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_TRIM, 0, (1 << 20) - 1, 2)), EINVAL);
    assert_eq!(errno(&s, req(CMD_CACHE, 0, 1 << 20, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_BLOCK_STATUS, 0, 1 << 20, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_WRITE, 0, 1 << 20, 1)), ENOSPC);
    assert_eq!(errno(&s, req(CMD_WRITE_ZEROES, 0, u64::MAX, 2)), ENOSPC);
    assert_eq!(errno(&s, req(99, 0, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_READ, CMD_FLAG_REQ_ONE, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_READ, 1 << 10, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 1)), EINVAL, "PAYLOAD_LEN without extended headers");
    let big = Session { size: 1 << 30, ..session(RW) };
    assert_eq!(errno(&big, req(CMD_READ, 0, 0, (64 << 20) + 1)), EOVERFLOW);
    assert_eq!(errno(&Session { structured: false, ..big.clone() }, req(CMD_READ, 0, 0, (64 << 20) + 1)), EINVAL);
    assert!(s.check(&req(CMD_READ, CMD_FLAG_DF, 0, 4096)).is_ok());
}

#[test]
fn read_only_exports_refuse_writes_with_eperm() {
    let s = session(FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH);
    for kind in [CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM] {
        assert_eq!(errno(&s, req(kind, 0, 0, 1)), EPERM);
        assert_eq!(errno(&s, req(kind, CMD_FLAG_FUA, 1 << 20, 1)), EPERM, "even past the end, even with FUA");
    }
    assert!(s.check(&req(CMD_READ, 0, 0, 1)).is_ok());
    assert_eq!(s.check(&req(CMD_FLUSH, 0, 0, 0)), Ok(Command::Flush));
}

#[test]
fn unadvertised_features_are_refused() {
    let s = session(FLAG_HAS_FLAGS);
    assert_eq!(errno(&s, req(CMD_TRIM, 0, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_FLUSH, 0, 0, 0)), EINVAL);
    assert_eq!(errno(&s, req(CMD_CACHE, 0, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_WRITE, CMD_FLAG_FUA, 0, 1)), EINVAL);
    assert_eq!(errno(&s, req(CMD_READ, CMD_FLAG_DF, 0, 1)), EINVAL);
    let mut s = session(RW);
    s.contexts.clear();
    assert_eq!(errno(&s, req(CMD_BLOCK_STATUS, 0, 0, 1)), EINVAL);
}

#[test]
fn write_zeroes_flags_map_to_the_command() {
    let s = session(RW);
    assert_eq!(
        s.check(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA, 0, 10)),
        Ok(Command::WriteZeroes { offset: 0, length: 10, fua: true, may_trim: false, fast: true })
    );
}

#[test]
fn reply_layouts() {
    let compact = Replies { structured: true, extended: false };
    let h = compact.read_hole(7, 0, 4096, 512, true);
    assert_eq!(h.as_bytes().len(), 20 + 12);
    assert_eq!(&h.as_bytes()[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    let extended = Replies { structured: true, extended: true };
    let h = extended.read_hole(7, 100, 4096, 512, true);
    assert_eq!(h.as_bytes().len(), 32 + 12);
    assert_eq!(&h.as_bytes()[16..24], &100u64.to_be_bytes(), "extended headers echo the request offset");
    assert_eq!(extended.ok(7, 0).as_bytes().len(), 32);
    assert_eq!(Replies { structured: false, extended: false }.ok(7, 0).as_bytes().len(), 16);

    let mut out = Vec::new();
    compact.error(&mut out, 7, 0, EINVAL, "bad");
    assert_eq!(out.len(), 20 + 6 + 3);
    assert_eq!(&out[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
    assert_eq!(&out[26..], b"bad");

    let mut out = Vec::new();
    extended.block_status(&mut out, 7, 0, 1, &[(8 << 30, STATE_HOLE | STATE_ZERO)], true);
    assert_eq!(out.len(), 32 + 8 + 16);
    assert_eq!(&out[6..8], &REPLY_TYPE_BLOCK_STATUS_EXT.to_be_bytes());
    assert_eq!(&out[40..48], &(8u64 << 30).to_be_bytes());

    // Compact: a run over 32 bits is clipped and ends the list; a chunk that is not the last has
    // no DONE flag.
    let mut out = Vec::new();
    compact.block_status(&mut out, 7, 0, 2, &[(8 << 30, STATE_HOLE), (512, 0)], false);
    assert_eq!(out.len(), 20 + 4 + 8);
    assert_eq!(&out[4..6], &0u16.to_be_bytes());
    assert_eq!(&out[24..28], &u32::MAX.to_be_bytes());
}

#[test]
fn payload_len_means_a_payload_only_in_extended_headers() {
    let compact = Request {
        flags: CMD_FLAG_PAYLOAD_LEN,
        kind: CMD_BLOCK_STATUS,
        cookie: 1,
        offset: 0,
        length: 4096,
        extended: false,
    };
    assert_eq!(compact.payload_len(), 0, "a compact header never announces a payload but for WRITE");
    assert_eq!(errno(&session(RW), compact), EINVAL);
    let extended = Request { extended: true, ..compact };
    assert_eq!(extended.payload_len(), 4096);
}

#[test]
fn data_lengths_are_32_bits_and_capped() {
    let mut s = session(RW);
    s.extended = true;
    assert_eq!(errno(&s, req(CMD_READ, 0, 0, (1 << 32) + 1)), EINVAL);
    assert_eq!(s.check(&req(CMD_READ, 0, 0, 4096)), Ok(Command::Read { offset: 0, length: 4096, df: false }));
}

#[test]
fn block_status_payload_parses_effect_length_and_ids() {
    let mut p = (1u64 << 33).to_be_bytes().to_vec();
    p.extend_from_slice(&1u32.to_be_bytes());
    assert_eq!(block_status_payload(&p), Some((1 << 33, vec![1])));
    p.push(0);
    assert_eq!(block_status_payload(&p), None);
}

#[test]
fn advertised_block_sizes_are_advice_the_server_bound_is_not() {
    // Alignment and the advertised maximum are for the layers to enforce, as in nbdkit.
    let s = Session { size: 1 << 30, block_size: (512, 4096, 1 << 20), ..session(RW) };
    assert!(s.check(&req(CMD_READ, 0, 3, 1)).is_ok(), "misaligned read");
    assert!(s.check(&req(CMD_WRITE, 0, 5, 3)).is_ok(), "misaligned write");
    assert!(s.check(&req(CMD_READ, 0, 0, 2 << 20)).is_ok(), "read over the advertised maximum");
    let wide = Session { block_size: (1, 4096, u32::MAX), ..s };
    assert_eq!(wide.max_payload(), u64::from(MAX_REQUEST));
    assert_eq!(errno(&wide, req(CMD_WRITE, 0, 0, u64::from(MAX_REQUEST) + 1)), EINVAL, "over the server's own bound");
}
