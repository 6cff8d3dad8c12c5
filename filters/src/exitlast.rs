//! The `exitlast` filter: shuts the server down when its last client leaves (not before the
//! first one came), as a signal would: it stops listening and exits with status 0.
//!
//! Useful under a superserver, or to be sure a server started for one client goes away.

use std::sync::Arc;

use nbdforge_api::{debug, server, Backend, Filter, Handle, Layer, LayerInfo, OpenArgs, Registration, Result};

use crate::counted::{when_connection_ends, AfterClose, Counted, OpenCount};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    Registration::filter(LayerInfo::new("exitlast", "exits when the last client disconnects"), ExitLastFilter::default)
}

/// The `exitlast` filter. It takes no parameters.
#[derive(Debug, Default)]
pub struct ExitLastFilter {
    open: Arc<OpenCount>,
}

impl Layer for ExitLastFilter {}

impl Filter for ExitLastFilter {
    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        let below = next.open(args)?;
        self.open.try_enter(None);
        let (conn, open) = (Arc::downgrade(&args.conn), Arc::clone(&self.open));
        let last_one_out: AfterClose = Box::new(move |left| {
            if left > 0 {
                return;
            }
            // A handle closed during the handshake is not the client leaving: decide once the
            // connection is over, if nobody came in meanwhile.
            let open = Arc::clone(&open);
            when_connection_ends(conn.clone(), move || {
                if open.get() == 0 {
                    debug!("last client disconnected: shutting down");
                    server::shutdown();
                }
            });
        });
        Ok(Counted::boxed(below, &self.open, Some(last_one_out)))
    }
}
