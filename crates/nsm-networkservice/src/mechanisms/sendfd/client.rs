//! The client half of `sendfd`: files the request names go to the next hop.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{ELEMENT, Sent};
use crate::dial::ClientConn;
use crate::grpc::fdconn::FdTransceiver;
use crate::mechanisms::recvfd::{AnswerNamedSentFile, ClosedWithSentFile};

/// Sends the request's files over the connection `dial` stored for this connection.
#[derive(Debug, Default)]
pub struct SendFdClient;

impl SendFdClient {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

/// The fd side channel of the call's next hop (none on TCP or before `dial`).
pub(crate) fn next_hop_fds(ctx: &Ctx) -> Option<FdTransceiver> {
    ctx.metadata()?.get::<ClientConn>(Side::Client)?.peer.fds()
}

#[async_trait]
impl NetworkServiceServer for SendFdClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(fds) = next_hop_fds(ctx) else {
            return next.request(ctx, request).await;
        };
        let mut sent = Sent::default();
        let current = request
            .connection
            .as_mut()
            .and_then(|c| c.mechanism.as_mut());
        for m in request.mechanism_preferences.iter_mut().chain(current) {
            if let Err(e) = sent.send_and_swap(ctx, None, &fds, m) {
                sent.withdraw(&fds);
                return Err(e);
            }
        }
        match next.request(ctx, request).await {
            Ok(mut conn) => {
                // The peer may have passed its own copy of that file with the answer: `recvfd`
                // (before us) claims it, which it cannot tell from our name alone.
                if let Some(inode) = sent.restore(conn.mechanism.as_mut()) {
                    ctx.insert(AnswerNamedSentFile(inode.to_string()));
                }
                Ok(conn)
            }
            Err(e) => {
                sent.withdraw(&fds);
                Err(e)
            }
        }
    }

    async fn close(&self, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
        let Some(fds) = next_hop_fds(ctx) else {
            return next.close(ctx, conn).await;
        };
        let mut sent = Sent::default();
        if let Some(m) = conn.mechanism.as_mut()
            && let Err(e) = sent.send_and_swap(ctx, None, &fds, m)
        {
            // Close anyway: the next hop releases what it can without the file.
            tracing::warn!(error = %e, id = %conn.id, "sendfd: closing without passing the file");
        }
        let result = next.close(ctx, conn).await;
        if result.is_err() {
            sent.withdraw(&fds);
        }
        // The server may pass that file back with its Close reply (Go's sendfd does, and so does
        // ours): `recvfd` (before us) claims it by this inode URL.
        if let Some((inode, _)) = sent.swaps.into_iter().next() {
            ctx.insert(ClosedWithSentFile(inode));
        }
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
