//! The server half of `recvfd`: files the caller passed with its request.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::{ELEMENT, ReceivedFiles};
use crate::fdpass::incoming;

/// Receives the files the incoming call's mechanisms name.
#[derive(Debug, Default)]
pub struct RecvFdServer;

impl RecvFdServer {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl NetworkServiceServer for RecvFdServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(fds) = incoming(ctx) else {
            return next.request(ctx, request).await;
        };
        let files = ReceivedFiles::of(ctx, Side::Server)?;
        let current = request
            .connection
            .as_mut()
            .and_then(|c| c.mechanism.as_mut());
        for m in request.mechanism_preferences.iter_mut().chain(current) {
            files.resolve(ctx, Some(&fds), m).await?;
        }
        let mut conn = next.request(ctx, request).await?;
        // Files the selected mechanism does not name (other preferences; a file an endpoint replaced
        // with its own) are not needed any more.
        match files.restore(conn.mechanism.as_mut()) {
            Some(selected) => files.keep_only(&selected),
            None => files.close_all(),
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
        let files = ReceivedFiles::of(ctx, Side::Server)?;
        let fds = incoming(ctx);
        if let Some(m) = conn.mechanism.as_mut()
            && let Err(e) = files.resolve(ctx, fds.as_ref(), m).await
        {
            // Close anyway: the next hops release what they can without the file.
            tracing::warn!(error = %e, id = %conn.id, "recvfd: closing without the passed file");
        }
        let result = next.close(ctx, conn).await;
        files.close_all();
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
