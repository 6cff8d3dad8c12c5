//! Fuzz target: `block_status_payload`, the payload of a BLOCK_STATUS sent with PAYLOAD_LEN.
//! Input: the payload bytes. Checks that it is accepted exactly when it is an 8-byte effect
//! length followed by whole 4-byte context ids, and that the values are those sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdforge_fuzz::be;
use nbdforge_protocol::transmission::block_status_payload;

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() >= 8 && (data.len() - 8) % 4 == 0;
    match block_status_payload(data) {
        Some((length, ids)) => {
            assert!(well_formed, "malformed payload of {} bytes accepted", data.len());
            assert_eq!(length, be(&data[..8]));
            assert_eq!(ids.len(), (data.len() - 8) / 4);
            for (id, chunk) in ids.iter().zip(data[8..].chunks(4)) {
                assert_eq!(u64::from(*id), be(chunk));
            }
        }
        None => assert!(!well_formed, "well-formed payload of {} bytes refused", data.len()),
    }
});
