//! Fuzz target: the client's `ReplyDecoder`, fed what a hostile server below might send.
//! Input: one byte choosing simple, structured or extended replies, then the reply stream. Three
//! requests are in flight (a read, a block status, a write). Checks that nothing panics, that the
//! decoder never asks for more than a chunk's bounded fixed payload, and that read data and holes
//! stay inside the read they answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdforge_protocol::client::{InFlight, ReplyBody, ReplyDecoder, MAX_REPLY_EXTENTS};
use nbdforge_protocol::consts::*;

const READ: InFlight = InFlight { kind: CMD_READ, offset: 4096, length: 65536 };
const STATUS: InFlight = InFlight { kind: CMD_BLOCK_STATUS, offset: 0, length: 1 << 30 };
const WRITE: InFlight = InFlight { kind: CMD_WRITE, offset: 0, length: 512 };

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut input)) = data.split_first() else { return };
    let mut dec = ReplyDecoder::new(mode % 3 != 0, mode % 3 == 2);
    let lookup = |cookie| match cookie {
        1 => Some(READ),
        2 => Some(STATUS),
        3 => Some(WRITE),
        _ => None,
    };
    loop {
        let n = dec.wants();
        assert!(n as u64 <= 8 + 16 * MAX_REPLY_EXTENTS, "decoder asked for {n} bytes");
        if input.len() < n {
            return;
        }
        let (head, rest) = input.split_at(n);
        input = rest;
        let Ok(reply) = dec.feed(head, &lookup) else { return };
        let Some(reply) = reply else { continue };
        match reply.body {
            ReplyBody::Data { at, len } | ReplyBody::Hole { at, len } => {
                assert_eq!(reply.cookie, 1, "read data for a request that is not a read");
                assert!(len > 0 && at + len <= READ.length, "chunk at {at} length {len} outside the read");
                if matches!(reply.body, ReplyBody::Data { .. }) {
                    input = &input[(len as usize).min(input.len())..];
                }
            }
            ReplyBody::Extents { runs, .. } => {
                assert_eq!(reply.cookie, 2);
                assert!(!runs.is_empty() && runs.len() as u64 <= MAX_REPLY_EXTENTS);
            }
            ReplyBody::Error { errno, .. } => assert_ne!(errno, 0),
            ReplyBody::Ok => {}
        }
    }
});
