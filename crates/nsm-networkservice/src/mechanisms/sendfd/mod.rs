//! `mechanisms/sendfd`: passes the files mechanisms name (`inodeURL`: a network namespace, a memif
//! socket) to the next hop as fds over the unix-socket connection (Go's grpcfd, see
//! [`fdconn`](crate::grpc::fdconn)), so a peer in another PID namespace or container can open them.
//!
//! A `file://` value is opened (`O_PATH`), queued on the connection's fd side channel and replaced
//! with `inode://<st_dev>/<st_ino>`; the peer's `recvfd` claims the fd by that URL.
//!
//! - [`SendFdClient`] — **Request**: for each mechanism preference and the connection's mechanism,
//!   sends and swaps; the returned connection gets the original `file://` values back. Where it
//!   swaps the answer's value back, it tells `recvfd` (before it in the chain) which inode URL the
//!   answer named, for the copy of that file the peer may have passed with it (a Go peer sends back
//!   whatever its answer names; an endpoint in our network namespace passes its own copy of it).
//!   On error the fds that have not left yet are withdrawn. **Close**: sends the connection
//!   mechanism's file the same way (the peer may need it to undo its work) and leaves its inode URL
//!   in the call's context, so that `recvfd` claims the copy the server passes back with its reply.
//!   A file that cannot be sent is logged and the Close goes on (Go fails the Close before it
//!   reaches the next hop).
//! - [`SendFdServer`] — **Request**: after the rest of the chain, sends the file the *returned*
//!   connection's mechanism names back to the caller (an endpoint's own network namespace) and
//!   swaps it in the answer. **Close**: as Go does, once the rest of the chain has closed
//!   successfully, sends the file the closed connection's mechanism names back with the Close
//!   reply — also one its own `recvfd` received from the caller (the caller's `recvfd` claims it).
//!   A file that cannot be sent is logged; the Close still succeeds (Go fails it).
//!
//! On Request the server half does not send back a file its own `recvfd` received from the caller:
//! it renames it to the inode URL it came under, which the caller's `sendfd` turns back into its own
//! name (Go sends it again, and a Go client never claims it). The client half always sends, as Go
//! does: a server's `recvfd` waits for every `inode://` value it does not hold. Without a
//! unix-socket connection (TCP) both pass through unchanged.
//! **State**: none.

mod client;
mod server;

pub use client::SendFdClient;
pub(crate) use client::next_hop_fds;
pub use server::SendFdServer;

use nsm_api::Mechanism;
use nsm_api::mechanisms::common;
use nsm_api::url::NsmUrl;
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NsmError, Result};

use crate::grpc::fdconn::{FdError, FdTransceiver, Ticket};
use crate::mechanisms::recvfd::received_as;

const ELEMENT: &str = "sendfd";

/// What one call sent: the swaps to undo in the answer and the fds to withdraw on failure.
#[derive(Debug, Default)]
struct Sent {
    /// `(inode URL, original file URL)`.
    swaps: Vec<(String, String)>,
    tickets: Vec<Ticket>,
}

impl Sent {
    /// Sends the file `m`'s `inodeURL` names, if it is a `file://` URL, and swaps in its inode URL. A
    /// file that came from the peer (received by `recvfd` on side `from_peer`, if given) is only
    /// renamed back.
    fn send_and_swap(
        &mut self,
        ctx: &Ctx,
        from_peer: Option<Side>,
        fds: &FdTransceiver,
        m: &mut Mechanism,
    ) -> Result<()> {
        let Some(value) = m.inode_url() else {
            return Ok(());
        };
        if let Some(inode) = from_peer.and_then(|side| received_as(ctx, side, value)) {
            self.swaps.push((inode.clone(), value.to_string()));
            m.set_param(common::INODE_URL, inode);
            return Ok(());
        }
        let Ok(NsmUrl::File(path)) = NsmUrl::parse(value) else {
            return Ok(());
        };
        let original = value.to_string();
        let (inode, ticket) = fds.send_path(&path).map_err(|e| match e {
            FdError::Closed => NsmError::unavailable(
                ELEMENT,
                format!("cannot pass {original}: the connection to the next hop is closed"),
            ),
            other => NsmError::invalid(
                ELEMENT,
                format!(
                    "cannot pass {original} (the {} mechanism's network namespace or socket file): {other}",
                    m.r#type
                ),
            ),
        })?;
        let inode = inode.to_string();
        m.set_param(common::INODE_URL, inode.clone());
        self.swaps.push((inode, original));
        self.tickets.push(ticket);
        Ok(())
    }

    /// Puts the original `file://` value back where the answer carries one of our inode URLs;
    /// returns that inode URL.
    fn restore(&self, m: Option<&mut Mechanism>) -> Option<&str> {
        let m = m?;
        let value = m.inode_url()?;
        let (inode, original) = self.swaps.iter().find(|(inode, _)| inode == value)?;
        m.set_param(common::INODE_URL, original.clone());
        Some(inode)
    }

    /// Drops the fds that have not left yet.
    fn withdraw(&self, fds: &FdTransceiver) {
        for t in &self.tickets {
            fds.withdraw(*t);
        }
    }
}

#[cfg(test)]
mod tests;
