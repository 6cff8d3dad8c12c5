//! The handshake rules of the spec, driven through the sans-io state machine with a fake backend.

use nbdforge_protocol::consts::*;
use nbdforge_protocol::*;

struct FakeExports {
    opened: Vec<(String, bool)>,
}

impl Exports for FakeExports {
    fn list(&mut self) -> Result<Vec<(String, Option<String>)>, OptionError> {
        Ok(vec![("a".into(), Some("first".into())), ("b".into(), None)])
    }
    fn open(&mut self, name: &str, keep: bool) -> Result<ExportInfo, OptionError> {
        if name == "missing" {
            return Err(OptionError::new(REP_ERR_UNKNOWN, "no such export"));
        }
        self.opened.push((name.into(), keep));
        Ok(ExportInfo {
            name: if name.is_empty() { "default".into() } else { name.into() },
            size: 1 << 20,
            flags: FLAG_HAS_FLAGS | FLAG_SEND_FLUSH,
            block_size: (1, 4096, 64 << 20),
            description: Some("a disk".into()),
        })
    }
    fn meta_contexts(&mut self, name: &str) -> Result<Vec<String>, OptionError> {
        self.open(name, false)?;
        let mut contexts = vec![BASE_ALLOCATION.to_string(), "qemu:allocation-depth".into()];
        contexts.extend(["qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"].map(String::from));
        Ok(contexts)
    }
}

fn header(option: u32, length: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    h[8..12].copy_from_slice(&option.to_be_bytes());
    h[12..].copy_from_slice(&length.to_be_bytes());
    h
}

fn started(tls: TlsPolicy) -> Negotiation {
    let mut n = Negotiation::new(NegotiationConfig { tls, ..Default::default() });
    n.client_flags((FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).unwrap();
    n
}

fn send(n: &mut Negotiation, option: u32, data: &[u8]) -> Step {
    let h = n.option_header(&header(option, data.len() as u32)).unwrap();
    n.option(h, data, &mut FakeExports { opened: vec![] })
}

/// Splits option replies into (option, reply type, data).
fn replies(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert_eq!(u64::from_be_bytes(rest[..8].try_into().unwrap()), OPTION_REPLY_MAGIC);
        let opt = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(rest[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        out.push((opt, kind, rest[20..20 + len].to_vec()));
        rest = &rest[20 + len..];
    }
    out
}

fn reply_of(step: Step) -> Vec<(u32, u32, Vec<u8>)> {
    match step {
        Step::Reply(b) => replies(&b),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

#[test]
fn greeting_offers_fixed_newstyle_and_no_zeroes() {
    let g = Negotiation::new(NegotiationConfig::default()).greeting();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
}

#[test]
fn masked_handshake_flags_are_not_offered_and_not_accepted() {
    let mut n = Negotiation::new(NegotiationConfig { handshake_flags: FLAG_FIXED_NEWSTYLE, ..Default::default() });
    let g = n.greeting();
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), FLAG_FIXED_NEWSTYLE);
    assert!(n.client_flags((FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).is_err());
}

#[test]
fn unknown_client_flags_end_the_connection() {
    let mut n = Negotiation::new(NegotiationConfig::default());
    assert_eq!(n.client_flags((1u32 << 5 | 1).to_be_bytes()), Err(ProtocolError::UnknownClientFlags(0x21)));
}

#[test]
fn unknown_option_is_unsupported_and_the_session_goes_on() {
    let mut n = started(TlsPolicy::Off);
    let r = reply_of(send(&mut n, 0x7fff, b"some data"));
    assert_eq!(r[0].0, 0x7fff);
    assert_eq!(r[0].1, REP_ERR_UNSUP);
    let r = reply_of(send(&mut n, OPT_LIST, &[]));
    assert_eq!(r.iter().map(|r| r.1).collect::<Vec<_>>(), vec![REP_SERVER, REP_SERVER, REP_ACK]);
    assert_eq!(&r[0].2[4..], b"afirst");
}

#[test]
fn malformed_go_data_is_invalid() {
    let mut n = started(TlsPolicy::Off);
    // Name length says 100 but only 3 bytes follow.
    let mut d = 100u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"abc");
    assert_eq!(reply_of(send(&mut n, OPT_GO, &d))[0].1, REP_ERR_INVALID);
    // Trailing garbage after the info requests.
    let mut d = go_data("", &[]);
    d.push(0);
    assert_eq!(reply_of(send(&mut n, OPT_INFO, &d))[0].1, REP_ERR_INVALID);
}

#[test]
fn oversized_option_data_is_refused_without_being_kept() {
    let mut n = started(TlsPolicy::Off);
    let h = n.option_header(&header(OPT_LIST, 1 << 30)).unwrap();
    assert!(h.discard);
    let r = reply_of(n.option(h, &[], &mut FakeExports { opened: vec![] }));
    assert_eq!(r[0].1, REP_ERR_TOO_BIG);
}

#[test]
fn too_many_options_end_the_connection() {
    let mut n = Negotiation::new(NegotiationConfig { max_options: 3, ..Default::default() });
    n.client_flags(1u32.to_be_bytes()).unwrap();
    for _ in 0..3 {
        n.option_header(&header(OPT_LIST, 0)).unwrap();
    }
    assert_eq!(n.option_header(&header(OPT_LIST, 0)), Err(ProtocolError::TooManyOptions(3)));
}

#[test]
fn bad_option_magic_is_an_error() {
    let mut n = started(TlsPolicy::Off);
    let mut h = header(OPT_LIST, 0);
    h[0] = 0;
    assert!(matches!(n.option_header(&h), Err(ProtocolError::BadMagic { .. })));
}

#[test]
fn info_and_go_report_the_same_export() {
    let mut n = started(TlsPolicy::Off);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    let info = reply_of(send(&mut n, OPT_INFO, &go_data("", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE])));
    let go = match send(&mut n, OPT_GO, &go_data("", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE])) {
        Step::Transmission(b, negotiated) => {
            assert!(negotiated.structured);
            assert_eq!(negotiated.export.flags & FLAG_SEND_DF, FLAG_SEND_DF);
            replies(&b)
        }
        other => panic!("{other:?}"),
    };
    let strip = |r: Vec<(u32, u32, Vec<u8>)>| r.into_iter().map(|(_, k, d)| (k, d)).collect::<Vec<_>>();
    let (info, go) = (strip(info), strip(go));
    assert_eq!(info, go);
    assert_eq!(info.last().unwrap().0, REP_ACK);
    let export = &info[0].1;
    assert_eq!(u16::from_be_bytes([export[0], export[1]]), INFO_EXPORT);
    assert_eq!(u64::from_be_bytes(export[2..10].try_into().unwrap()), 1 << 20);
    assert!(info.iter().any(|(_, d)| d[..2] == INFO_NAME.to_be_bytes() && &d[2..] == b"default"));
}

#[test]
fn go_to_a_missing_export_is_an_error_and_the_session_goes_on() {
    let mut n = started(TlsPolicy::Off);
    assert_eq!(reply_of(send(&mut n, OPT_GO, &go_data("missing", &[])))[0].1, REP_ERR_UNKNOWN);
    assert!(matches!(send(&mut n, OPT_GO, &go_data("a", &[])), Step::Transmission(..)));
}

#[test]
fn export_name_skips_zeroes_when_the_client_asked() {
    let mut n = started(TlsPolicy::Off);
    match send(&mut n, OPT_EXPORT_NAME, b"a") {
        Step::Transmission(b, _) => assert_eq!(b.len(), 10),
        other => panic!("{other:?}"),
    }
    let mut n = Negotiation::new(NegotiationConfig::default());
    n.client_flags(FLAG_C_FIXED_NEWSTYLE.to_be_bytes()).unwrap();
    match send(&mut n, OPT_EXPORT_NAME, b"a") {
        Step::Transmission(b, _) => assert_eq!(b.len(), 134),
        other => panic!("{other:?}"),
    }
}

/// The (id, name) pairs of the META_CONTEXT replies in `replies`.
fn contexts_of(replies: &[(u32, u32, Vec<u8>)]) -> Vec<(u32, String)> {
    replies
        .iter()
        .filter(|r| r.1 == REP_META_CONTEXT)
        .map(|r| (u32::from_be_bytes(r.2[..4].try_into().unwrap()), String::from_utf8(r.2[4..].to_vec()).unwrap()))
        .collect()
}

#[test]
fn meta_contexts_need_structured_replies_and_select_base_allocation() {
    let mut n = started(TlsPolicy::Off);
    assert_eq!(reply_of(send(&mut n, OPT_SET_META_CONTEXT, &meta_data("", &[BASE_ALLOCATION])))[0].1, REP_ERR_INVALID);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    // "base:" matches base:allocation alone.
    let r = reply_of(send(&mut n, OPT_LIST_META_CONTEXT, &meta_data("", &["base:"])));
    assert_eq!(contexts_of(&r), [(BASE_ALLOCATION_ID, BASE_ALLOCATION.to_string())]);
    assert_eq!(r.last().unwrap().1, REP_ACK);
    let r = reply_of(send(&mut n, OPT_SET_META_CONTEXT, &meta_data("", &["qemu:nosuch", BASE_ALLOCATION])));
    assert_eq!(r.len(), 2);
    assert_eq!(u32::from_be_bytes(r[0].2[..4].try_into().unwrap()), BASE_ALLOCATION_ID);
    match send(&mut n, OPT_GO, &go_data("", &[])) {
        Step::Transmission(_, negotiated) => {
            assert_eq!(negotiated.contexts, [MetaContext { id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION.into() }])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn meta_contexts_are_a_table_queried_by_name_and_namespace() {
    let mut n = started(TlsPolicy::Off);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    let names = |r: &[(u32, u32, Vec<u8>)]| contexts_of(r).into_iter().map(|c| c.1).collect::<Vec<_>>();
    // LIST with no query: everything, with ids by position.
    let all = contexts_of(&reply_of(send(&mut n, OPT_LIST_META_CONTEXT, &meta_data("", &[]))));
    assert_eq!(all.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let qemu = reply_of(send(&mut n, OPT_LIST_META_CONTEXT, &meta_data("", &["qemu:"])));
    assert_eq!(names(&qemu), ["qemu:allocation-depth", "qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"]);
    let bitmaps = reply_of(send(&mut n, OPT_LIST_META_CONTEXT, &meta_data("", &["qemu:dirty-bitmap:"])));
    assert_eq!(names(&bitmaps), ["qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"]);
    // SET with no query selects nothing; with two names, exactly those, with their ids.
    assert!(contexts_of(&reply_of(send(&mut n, OPT_SET_META_CONTEXT, &meta_data("", &[])))).is_empty());
    let set = reply_of(send(&mut n, OPT_SET_META_CONTEXT, &meta_data("", &["qemu:dirty-bitmap:b", BASE_ALLOCATION])));
    assert_eq!(contexts_of(&set), [(1, BASE_ALLOCATION.to_string()), (4, "qemu:dirty-bitmap:b".to_string())]);
    match send(&mut n, OPT_GO, &go_data("", &[])) {
        Step::Transmission(_, negotiated) => assert_eq!(negotiated.contexts.len(), 2),
        other => panic!("{other:?}"),
    }
    // An unknown export refuses the query.
    let mut n = started(TlsPolicy::Off);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(reply_of(send(&mut n, OPT_LIST_META_CONTEXT, &meta_data("missing", &[])))[0].1, REP_ERR_UNKNOWN);
}

#[test]
fn meta_context_set_for_another_export_does_not_carry_over() {
    let mut n = started(TlsPolicy::Off);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    send(&mut n, OPT_SET_META_CONTEXT, &meta_data("a", &[BASE_ALLOCATION]));
    match send(&mut n, OPT_GO, &go_data("b", &[])) {
        Step::Transmission(_, negotiated) => assert!(negotiated.contexts.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn extended_headers_imply_structured_replies_and_refuse_a_later_structured_reply() {
    let mut n = started(TlsPolicy::Off);
    assert_eq!(reply_of(send(&mut n, OPT_EXTENDED_HEADERS, &[]))[0].1, REP_ACK);
    assert_eq!(reply_of(send(&mut n, OPT_STRUCTURED_REPLY, &[]))[0].1, REP_ERR_EXT_HEADER_REQD);
    match send(&mut n, OPT_GO, &go_data("", &[])) {
        Step::Transmission(_, negotiated) => {
            assert!(negotiated.extended && negotiated.structured);
            assert_ne!(negotiated.export.flags & FLAG_BLOCK_STAT_PAYLOAD, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn starttls_is_refused_by_policy_when_tls_is_off() {
    let mut n = started(TlsPolicy::Off);
    assert_eq!(reply_of(send(&mut n, OPT_STARTTLS, &[]))[0].1, REP_ERR_POLICY);
}

#[test]
fn require_refuses_everything_but_starttls_and_abort_before_tls() {
    let mut n = started(TlsPolicy::Require);
    for opt in [OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, 0x7fff] {
        assert_eq!(reply_of(send(&mut n, opt, &[]))[0].1, REP_ERR_TLS_REQD, "option {opt}");
    }
    assert!(matches!(send(&mut n, OPT_EXPORT_NAME, b""), Step::Close(..)));
    let mut n = started(TlsPolicy::Require);
    assert!(matches!(send(&mut n, OPT_ABORT, &[]), Step::Close(..)));
}

#[test]
fn oversized_starttls_is_refused_not_acknowledged() {
    for tls in [TlsPolicy::Require, TlsPolicy::On] {
        let mut n = started(tls);
        let h = n.option_header(&header(OPT_STARTTLS, 1 << 20)).unwrap();
        assert!(h.discard);
        let r = reply_of(n.option(h, &[], &mut FakeExports { opened: vec![] }));
        assert_eq!(r[0].1, REP_ERR_TOO_BIG, "{tls:?}");
        assert!(!n.tls_active());
    }
}

#[test]
fn starttls_rules_and_state_reset() {
    let mut n = started(TlsPolicy::On);
    send(&mut n, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(reply_of(send(&mut n, OPT_STARTTLS, b"x"))[0].1, REP_ERR_INVALID);
    let Step::StartTls(ack) = send(&mut n, OPT_STARTTLS, &[]) else { panic!() };
    assert_eq!(replies(&ack)[0].1, REP_ACK);
    n.tls_started();
    assert!(n.tls_active());
    assert_eq!(reply_of(send(&mut n, OPT_STARTTLS, &[]))[0].1, REP_ERR_INVALID);
    // Structured replies negotiated in clear are forgotten.
    match send(&mut n, OPT_GO, &go_data("", &[])) {
        Step::Transmission(_, negotiated) => assert!(!negotiated.structured),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tls_on_serves_plain_clients_too() {
    let mut n = started(TlsPolicy::On);
    assert!(matches!(send(&mut n, OPT_GO, &go_data("", &[])), Step::Transmission(..)));
}

#[test]
fn oldstyle_greeting_layout() {
    let g = oldstyle_greeting(4096, 3);
    assert_eq!(g.len(), 152);
    assert_eq!(u64::from_be_bytes(g[8..16].try_into().unwrap()), OLDSTYLE_MAGIC);
    assert_eq!(u64::from_be_bytes(g[16..24].try_into().unwrap()), 4096);
}
