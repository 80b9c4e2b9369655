//! The client half of `recvfd`: files the next hop passed with its answer or its Close reply.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{AnswerNamedSentFile, CLOSE_HINT, ClosedWithSentFile, ELEMENT, ReceivedFiles};
use crate::fdpass::{claim, inode_key};
use crate::grpc::fdconn::FdTransceiver;
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
        let files = ReceivedFiles::of(ctx, Side::Client).ok();
        let named = conn
            .mechanism
            .as_ref()
            .and_then(|m| m.inode_url())
            .map(str::to_string);
        let result = next.close(ctx, conn).await;
        let sent = ctx.remove::<ClosedWithSentFile>();
        let claimed = match next_hop_fds(ctx) {
            Some(fds) => {
                let reply = CloseReply {
                    files: files.as_ref(),
                    sent,
                    named,
                    closed: result.is_ok(),
                };
                reply.claim(ctx, &fds).await
            }
            None => Ok(()),
        };
        if let Some(files) = files {
            files.close_all();
        }
        result.and(claimed)
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

/// What a Close went out with, to claim the file the server passes back with its reply.
struct CloseReply<'a> {
    files: Option<&'a ReceivedFiles>,
    /// The inode URL of the file `sendfd` passed with the Close.
    sent: Option<ClosedWithSentFile>,
    /// The `inodeURL` value of the closed connection's mechanism, as it reached us.
    named: Option<String>,
    /// The Close succeeded downstream.
    closed: bool,
}

impl CloseReply<'_> {
    /// A file `sendfd` passed with the Close comes back from a server that sends on Close (ours, or
    /// Go's) and not from one that does not: the copy is taken if it came with the reply, and not
    /// waited for. A connection naming an `inode://` URL itself (no file of ours under it) is Go's
    /// case for waiting: after a successful Close the fd is claimed, bounded by the call's deadline
    /// (or [`DEFAULT_WAIT`](crate::fdpass::DEFAULT_WAIT)), and its absence fails the Close
    /// (`DeadlineExceeded`, naming recvfd and the URL). Whatever is claimed is closed: the connection
    /// is gone.
    async fn claim(self, ctx: &Ctx, fds: &FdTransceiver) -> Result<()> {
        if let Some(ClosedWithSentFile(inode)) = self.sent {
            if let Some(key) = inode_key(&inode) {
                fds.discard(key);
            }
            return Ok(());
        }
        let Some(value) = self.named else {
            return Ok(());
        };
        let Some(key) = inode_key(&value) else {
            return Ok(());
        };
        let held = self.files.is_some_and(|f| f.local_url(&value).is_some());
        if !self.closed || held {
            fds.discard(key);
            return Ok(());
        }
        drop(claim(ctx, fds, key, &value, CLOSE_HINT).await?);
        Ok(())
    }
}
