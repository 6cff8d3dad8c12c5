//! Fuzz target: the client's `Handshake`, fed what a hostile server below might send during
//! negotiation. Input: one byte choosing the client's settings (TLS policy, listing, extended
//! headers), then the server's bytes. Checks that nothing panics, that the client never asks
//! for more than an option reply's limit, and that what it concludes is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdforge_protocol::client::{ClientConfig, ClientTls, Handshake, HandshakeEvent, MAX_OPTION_REPLY};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut input)) = data.split_first() else { return };
    let config = ClientConfig {
        tls: [ClientTls::Off, ClientTls::On, ClientTls::Require][usize::from(mode % 3)],
        list: mode & 4 != 0,
        extended_headers: mode & 8 == 0,
        ..ClientConfig::new(if mode & 16 != 0 { "disk" } else { "" })
    };
    let require_tls = config.tls == ClientTls::Require;
    let mut hs = Handshake::new(config);
    let mut tls = false;
    loop {
        assert!(hs.output().len() < 1 << 16, "oversized client output");
        let n = hs.wants();
        assert!(n > 0 && n <= MAX_OPTION_REPLY as usize, "handshake asked for {n} bytes");
        if input.len() < n {
            return;
        }
        let (head, rest) = input.split_at(n);
        input = rest;
        match hs.feed(head) {
            Err(_) => return,
            Ok(HandshakeEvent::Continue) => {}
            Ok(HandshakeEvent::StartTls) => {
                assert!(!tls, "STARTTLS twice");
                tls = true;
                hs.tls_started();
            }
            Ok(HandshakeEvent::Listed(list)) => {
                assert!(list.len() <= nbdforge_protocol::client::MAX_LISTED_EXPORTS);
                assert!(tls || !require_tls, "listed without the TLS that was required");
                return;
            }
            Ok(HandshakeEvent::Done(export)) => {
                assert_eq!(export.tls, tls);
                assert!(tls || !require_tls, "finished without the TLS that was required");
                assert!(export.structured || !export.extended);
                return;
            }
        }
    }
});
