//! One client connection, from accept to close:
//!
//! - [`handshake`]: the negotiation under its deadline, and the exports as the backend sees them;
//! - [`transmission`]: the workers that read requests, run them against the backend and reply;
//! - [`reply`]: how a read's data and a block status become reply chunks, and reach the socket;
//! - [`budget`]: the bound on the memory clients can make the server hold for request data.
//!
//! Around them, this module runs the connection's life as layers see it: `preconnect` before the
//! handshake, `finalize` after the last request, and the [`Connection`] context throughout.

mod budget;
mod handshake;
mod reply;
mod transmission;

use std::sync::Arc;

use nbdforge_api::{ClientInfo, Connection};
use tracing::{debug, warn};

pub(crate) use budget::Budget;

use crate::server::Shared;
use crate::transport::Stream;

/// The largest request the server accepts: payloads up to this are served, larger ones drained and
/// refused. Advertised as the maximum block size.
pub(crate) const MAX_REQUEST: u32 = 64 << 20;

/// Serves one client to the end.
pub(crate) fn serve(shared: &Shared, stream: Stream, id: u64, client: ClientInfo) {
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
    let handle = handshake.handle;
    transmission::run(shared, &conn, handle.as_ref(), handshake.stream, &handshake.negotiated);
    handshake::finalize(handle.as_ref(), &conn);
    debug!("{peer}: connection closed");
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
