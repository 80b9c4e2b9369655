//! The server half of `sendfd`: files the answer (Request) or the closed connection (Close) names go
//! back to the caller.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{ELEMENT, Sent};
use crate::fdpass::incoming;
use crate::grpc::fdconn::IncomingFds;

/// Sends the file the returned (Request) or closed (Close) connection's mechanism names to the caller.
#[derive(Debug, Default)]
pub struct SendFdServer;

impl SendFdServer {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl NetworkServiceServer for SendFdServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let mut conn = next.request(ctx, request).await?;
        let Some(IncomingFds(fds)) = ctx.get::<IncomingFds>() else {
            return Ok(conn);
        };
        if let Some(m) = conn.mechanism.as_mut() {
            // The connection is established downstream; an answer we cannot send the file with is
            // still better than none (the caller's recvfd reports the missing fd).
            if let Err(e) = Sent::default().send_and_swap(ctx, Some(Side::Server), fds, m) {
                tracing::warn!(error = %e, id = %conn.id, "sendfd: answering without the file");
            }
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let Some(fds) = incoming(ctx) else {
            return next.close(ctx, conn).await;
        };
        let mechanism = conn.mechanism.clone();
        let id = conn.id.clone();
        next.close(ctx, conn).await?;
        // As Go does, once the rest of the chain has closed: the file goes back with the Close reply,
        // also one our recvfd received from the caller (the caller's recvfd claims it by the inode
        // URL its Close carried). The connection is gone downstream either way, so a file we cannot
        // send does not fail the Close.
        if let Some(mut m) = mechanism
            && let Err(e) = Sent::default().send_and_swap(ctx, None, &fds, &mut m)
        {
            tracing::warn!(error = %e, id = %id, "sendfd: Close answered without the file");
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
