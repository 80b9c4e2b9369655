//! The client half of `recvfd`: files the next hop passed with its answer.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{AnswerNamedSentFile, ELEMENT, ReceivedFiles};
use crate::mechanisms::sendfd::next_hop_fds;

/// Receives the file the answer's mechanism names.
#[derive(Debug, Default)]
pub struct RecvFdClient;

impl RecvFdClient {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl NetworkServiceServer for RecvFdClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let files = ReceivedFiles::of(ctx, Side::Client)?;
        let mut conn = next.clone().request(ctx, request).await?;
        let sent = ctx.remove::<AnswerNamedSentFile>();
        let fds = next_hop_fds(ctx);
        let Some(m) = conn.mechanism.as_mut() else {
            return Ok(conn);
        };
        if let (Some(fds), Some(AnswerNamedSentFile(inode))) = (&fds, &sent) {
            files.adopt_copy(fds, inode, m);
        }
        if let Err(e) = files.resolve(ctx, fds.as_ref(), m).await {
            // Established downstream, unusable here: release it before failing.
            let mut close_ctx = ctx.postpone();
            if let Err(ce) = next.close(&mut close_ctx, conn).await {
                tracing::debug!(error = %ce, "recvfd: closing downstream after a missing fd failed");
            }
            return Err(e);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let result = next.close(ctx, conn).await;
        if let Ok(files) = ReceivedFiles::of(ctx, Side::Client) {
            files.close_all();
        }
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
