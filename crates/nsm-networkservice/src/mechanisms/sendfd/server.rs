//! The server half of `sendfd`: files the answer names go back to the caller.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{ELEMENT, Sent};
use crate::grpc::fdconn::IncomingFds;

/// Sends the file the returned connection's mechanism names to the caller.
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
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
