//! The server variant of `begin`.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

use super::factory::Begin;

/// `begin` for server chains.
pub struct BeginServer(Begin);

impl BeginServer {
    /// A new, empty begin server.
    pub fn new() -> Self {
        Self(Begin::new(false))
    }

    /// Number of connections currently tracked (for leak checks in tests).
    pub fn len(&self) -> usize {
        self.0.slots.len()
    }

    /// True if no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored connection of `id` (tests of sharing).
    #[cfg(test)]
    pub(crate) fn stored_connection(
        &self,
        id: &str,
    ) -> Option<crate::encoded::Encoded<Connection>> {
        self.0.stored_connection(id)
    }
}

impl Default for BeginServer {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl NetworkServiceServer for BeginServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.0.request(ctx, request, next).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.0.close(ctx, conn, next).await
    }
    fn name(&self) -> &'static str {
        "begin"
    }
}
