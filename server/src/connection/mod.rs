//! One client connection, from accept to close:
//!
//! - [`handshake`]: the negotiation under its deadline, and the exports as the backend sees them;
//! - [`transmission`]: the workers that read requests, run them against the backend and reply;
//! - [`reply`]: how a read's data and a block status become reply chunks, and reach the socket;
//! - [`splice`]: large reads from a backend's pages sent by reference, without a copy;
//! - [`budget`]: the bound on the memory clients can make the server hold for request data;
//! - [`parking`]: where idle connections wait without a thread;
//! - [`pacing`]: reading later from a client that is behind on its replies, so requests batch.
//!
//! Around them, this module runs the connection's life as layers see it: `preconnect` before the
//! handshake, `finalize` after the last request, and the [`Connection`] context throughout.

mod budget;
mod handshake;
mod pacing;
mod parking;
mod reply;
mod splice;
mod transmission;

use std::sync::Arc;

use nbdforge_api::{ClientInfo, Connection};
use tracing::{debug, warn};

pub(crate) use budget::Budget;
pub(crate) use parking::Parking;

use crate::server::{LiveGuard, Shared};
use crate::transport::Stream;

/// The largest request the server accepts: payloads up to this are served, larger ones drained and
/// refused. Advertised as the maximum block size when no layer advertises one.
pub(crate) use nbdforge_protocol::transmission::MAX_REQUEST;

/// Serves one client: the handshake on this thread, then the transmission phase until the client
/// leaves or goes idle (then its connection lives on in the poller). `live` counts the connection
/// for the server as long as it exists.
pub(crate) fn serve(shared: &Arc<Shared>, stream: Stream, id: u64, client: ClientInfo, live: LiveGuard) {
    let conn = Connection::new(id, client);
    let peer = conn.client().peer_name();
    if let Err(e) = shared.backend.preconnect(conn.client(), shared.config.readonly) {
        warn!("{peer}: connection refused: {}", e.message);
        return;
    }
    let handshake = match handshake::negotiate(shared, stream, &conn) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => return debug!("{peer}: handshake ended: {e}"),
    };
    transmission::run(shared, &conn, handshake.handle, handshake.stream, &handshake.negotiated, live);
}

/// What a connection sends on the wire for an errno from a backend.
pub(crate) fn wire_errno(errno: i32) -> u32 {
    use nbdforge_protocol::consts::*;
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => EPERM,
        libc::EIO => EIO,
        libc::ENOMEM => ENOMEM,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => ENOSPC,
        libc::EOVERFLOW => EOVERFLOW,
        libc::ENOTSUP => ENOTSUP,
        libc::ESHUTDOWN => ESHUTDOWN,
        _ => EINVAL,
    }
}

/// The budget shared by all connections of a server.
pub(crate) fn total_budget() -> Arc<Budget> {
    Arc::new(Budget::new(budget::TOTAL))
}
