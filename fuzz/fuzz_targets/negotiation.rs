//! Fuzz target: the handshake state machine, driven as the server drives it.
//!
//! Input: 3 bytes of configuration, then what a client sends: 4 bytes of client flags, then
//! options (16-byte header and its data), until the input runs out or the handshake ends.
//! Config byte 0: bits 0-1 TLS policy (0 off, 2 require, else on), bit 2 structured replies,
//! bit 3 meta contexts, bit 4 extended headers, bits 5-6 handshake flags offered, bit 7 LIST
//! fails. Byte 1: max options. Byte 2: picks the option data limit from LIMITS.
//!
//! Besides "no panic", it checks every reply is well-formed, that refused or over-limit options
//! never reach the backend or change state, and that the state entering transmission is exactly
//! what the client saw acknowledged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdforge_fuzz::{be, option_replies, FuzzExports, Input, CONTEXTS};
use nbdforge_protocol::consts::*;
use nbdforge_protocol::{MetaContext, Negotiated, Negotiation, NegotiationConfig, Session, Step, TlsPolicy};

const LIMITS: [u32; 8] = [0, 4, 16, 64, 4096, 65536, 1 << 24, u32::MAX];

/// What the client has seen acknowledged since the start or the last STARTTLS.
#[derive(Default)]
struct Acked {
    structured: bool,
    extended: bool,
    /// Export name and whether base:allocation was selected, after an acknowledged SET.
    meta: Option<(String, Vec<MetaContext>)>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(bits), Some(max_options), Some(limit)) = (input.u8(), input.u8(), input.u8()) else { return };
    let config = NegotiationConfig {
        tls: match bits & 3 {
            0 => TlsPolicy::Off,
            2 => TlsPolicy::Require,
            _ => TlsPolicy::On,
        },
        max_options: u32::from(max_options),
        max_option_len: LIMITS[usize::from(limit) % LIMITS.len()],
        structured_replies: bits & 4 != 0,
        meta_contexts: bits & 8 != 0,
        extended_headers: bits & 16 != 0,
        handshake_flags: u16::from(bits >> 5 & 3),
    };
    let mut exports = FuzzExports::new(bits & 0x80 != 0);
    let mut neg = Negotiation::new(config);

    let greeting = neg.greeting();
    assert_eq!(be(&greeting[..8]), NBDMAGIC);
    assert_eq!(be(&greeting[8..16]), IHAVEOPT);
    let offered = be(&greeting[16..]) as u32;
    assert_eq!(offered, u32::from(config.handshake_flags), "greeting offers other flags");

    let Some(flags) = input.array::<4>() else { return };
    let client = u32::from_be_bytes(flags);
    if neg.client_flags(flags).is_err() {
        assert_ne!(client & !offered, 0, "client flags 0x{client:x} refused");
        return;
    }
    assert_eq!(client & !offered, 0, "client flags 0x{client:x} accepted");
    let no_zeroes = client & FLAG_C_NO_ZEROES != 0;

    let mut acked = Acked::default();
    let mut headers = 0u32;
    loop {
        let Some(raw) = input.array::<16>() else { return };
        headers += 1;
        let header = match neg.option_header(&raw) {
            Ok(h) => h,
            Err(_) => {
                assert!(be(&raw[..8]) != IHAVEOPT || headers > config.max_options, "good header refused");
                return;
            }
        };
        assert_eq!(be(&raw[..8]), IHAVEOPT, "option header with a bad magic accepted");
        assert!(headers <= config.max_options, "option {headers} accepted over the limit");
        assert_eq!(header.option, be(&raw[8..12]) as u32);
        assert_eq!(header.length, be(&raw[12..16]) as u32);
        assert_eq!(header.discard, header.length > config.max_option_len, "discard flag vs limit");
        let payload = if header.discard {
            input.skip(u64::from(header.length));
            &[][..]
        } else {
            match input.take(header.length as usize) {
                Some(p) => p,
                None => return,
            }
        };

        let opt = header.option;
        let gated = config.tls == TlsPolicy::Require && !neg.tls_active() && !matches!(opt, OPT_STARTTLS | OPT_ABORT);
        let refused = gated || header.discard;
        let (calls, lists) = (exports.calls.len(), exports.lists);
        let step = neg.option(header, payload, &mut exports);
        let new_calls = &exports.calls[calls..];
        assert!(new_calls.len() <= 1, "several opens for one option");
        if refused {
            assert!(new_calls.is_empty() && exports.lists == lists, "refused option reached the backend");
        }
        for c in new_calls {
            assert_eq!(c.keep, matches!(opt, OPT_GO | OPT_EXPORT_NAME), "open(keep) for option {opt}");
            assert!(c.name.len() <= config.max_option_len as usize, "name over the option limit reached the backend");
        }

        match step {
            Step::Reply(bytes) => {
                let replies = option_replies(&bytes, opt);
                let last = replies.last().unwrap();
                if refused {
                    let want = if gated { REP_ERR_TLS_REQD } else { REP_ERR_TOO_BIG };
                    assert_eq!(replies.len(), 1);
                    assert_eq!(last.reply, want, "refused option {opt} answered {:x}", last.reply);
                    continue;
                }
                if last.reply != REP_ACK {
                    continue;
                }
                match opt {
                    OPT_STRUCTURED_REPLY => {
                        assert!(config.structured_replies && !acked.extended && payload.is_empty());
                        acked.structured = true;
                    }
                    OPT_EXTENDED_HEADERS => {
                        assert!(config.extended_headers && config.structured_replies && payload.is_empty());
                        acked.extended = true;
                        acked.structured = true;
                    }
                    OPT_LIST => {
                        assert!(payload.is_empty() && !exports.list_fails);
                        assert_eq!(replies.len(), 4, "LIST of 3 exports");
                        for r in &replies[..replies.len() - 1] {
                            assert_eq!(r.reply, REP_SERVER);
                            assert!(r.data.len() >= 4 && be(&r.data[..4]) as usize <= r.data.len() - 4);
                        }
                    }
                    OPT_INFO => check_info(&replies, &new_calls[0].name, &acked),
                    OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                        assert!(config.meta_contexts && acked.structured, "meta context ACK before structured replies");
                        let mut chosen: Vec<MetaContext> = Vec::new();
                        for r in &replies[..replies.len() - 1] {
                            assert_eq!(r.reply, REP_META_CONTEXT);
                            let id = be(&r.data[..4]) as u32;
                            assert!((1..=CONTEXTS.len() as u32).contains(&id), "context id {id} out of the table");
                            assert_eq!(&r.data[4..], CONTEXTS[id as usize - 1].as_bytes(), "id and name agree");
                            assert!(chosen.last().is_none_or(|c| c.id < id), "each context once, in table order");
                            chosen.push(MetaContext { id, name: CONTEXTS[id as usize - 1].into() });
                        }
                        if opt == OPT_SET_META_CONTEXT {
                            let n = be(&payload[..4]) as usize;
                            let name = std::str::from_utf8(&payload[4..4 + n]).expect("acked name is UTF-8");
                            acked.meta = Some((name.to_string(), chosen));
                        }
                    }
                    _ => panic!("option {opt} acknowledged by a plain reply"),
                }
            }
            Step::StartTls(bytes) => {
                assert!(opt == OPT_STARTTLS && !refused && payload.is_empty());
                assert!(config.tls != TlsPolicy::Off && !neg.tls_active(), "STARTTLS accepted twice or while off");
                let replies = option_replies(&bytes, opt);
                assert!(replies.len() == 1 && replies[0].reply == REP_ACK && replies[0].data.is_empty());
                neg.tls_started();
                assert!(neg.tls_active());
                acked = Acked::default();
            }
            Step::Close(bytes, _why) => {
                match opt {
                    OPT_ABORT => {
                        let replies = option_replies(&bytes, opt);
                        assert!(replies.len() == 1 && replies[0].reply == REP_ACK);
                    }
                    OPT_EXPORT_NAME => assert!(bytes.is_empty(), "EXPORT_NAME cannot be answered with an error"),
                    _ => panic!("option {opt} closed the connection"),
                }
                return;
            }
            Step::Transmission(bytes, n) => {
                assert!(matches!(opt, OPT_GO | OPT_EXPORT_NAME) && !refused, "option {opt} entered transmission");
                let call = new_calls.last().expect("transmission without opening an export");
                let info = call.result.as_ref().expect("transmission after a failed open");
                check_negotiated(&n, &call.name, &acked);
                assert_eq!(
                    (&n.export.name, n.export.size, n.export.block_size),
                    (&info.name, info.size, info.block_size)
                );
                if opt == OPT_EXPORT_NAME {
                    assert_eq!(bytes.len(), if no_zeroes { 10 } else { 134 });
                    assert_eq!(be(&bytes[..8]), n.export.size);
                    assert_eq!(be(&bytes[8..10]) as u16, n.export.flags);
                    assert!(bytes[10..].iter().all(|&b| b == 0));
                } else {
                    check_info(&option_replies(&bytes, opt), &call.name, &acked);
                }
                return;
            }
        }
    }
});

/// Transmission flags the client must be told for `name`, given what it negotiated.
fn expected_flags(name: &str, acked: &Acked) -> u16 {
    let mut flags = FuzzExports::lookup(name).unwrap().flags;
    if acked.structured {
        flags |= FLAG_SEND_DF;
    }
    if acked.extended {
        flags |= FLAG_BLOCK_STAT_PAYLOAD;
    }
    flags
}

/// An INFO or GO answer: INFO_EXPORT first with the right size and flags, block sizes, an ACK.
fn check_info(replies: &[nbdforge_fuzz::OptReply<'_>], name: &str, acked: &Acked) {
    let export = FuzzExports::lookup(name).expect("INFO/GO acked for an unknown export");
    assert!(replies.len() >= 3);
    let first = &replies[0];
    assert_eq!((first.reply, first.data.len()), (REP_INFO, 12));
    assert_eq!(be(&first.data[..2]) as u16, INFO_EXPORT);
    assert_eq!(be(&first.data[2..10]), export.size);
    assert_eq!(be(&first.data[10..12]) as u16, expected_flags(name, acked));
    for r in &replies[..replies.len() - 1] {
        assert_eq!(r.reply, REP_INFO);
        assert!(r.data.len() >= 2);
        match be(&r.data[..2]) as u16 {
            INFO_NAME => assert_eq!(&r.data[2..], export.name.as_bytes()),
            INFO_BLOCK_SIZE => assert_eq!(r.data.len(), 14),
            INFO_EXPORT | INFO_DESCRIPTION => {}
            other => panic!("unknown info type {other}"),
        }
    }
}

/// The state entering transmission is what was acknowledged, no more and no less.
fn check_negotiated(n: &Negotiated, requested: &str, acked: &Acked) {
    assert_eq!(n.structured, acked.structured, "structured replies");
    assert_eq!(n.extended, acked.extended, "extended headers");
    assert!(!n.extended || n.structured);
    let contexts = match &acked.meta {
        Some((m, chosen)) if m == requested || *m == n.export.name => chosen.clone(),
        _ => Vec::new(),
    };
    assert_eq!(n.contexts, contexts, "meta contexts");
    assert_eq!(n.export.flags, expected_flags(requested, acked), "transmission flags");
    let s = Session::new(n);
    assert_eq!((s.size, s.flags, s.structured, s.extended), (n.export.size, n.export.flags, n.structured, n.extended));
    assert_eq!((&s.contexts, s.block_size), (&n.contexts, n.export.block_size));
}
