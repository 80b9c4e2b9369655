//! The server element that runs a client chain towards the next hop.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Chain, Ctx, NetworkServiceServer, Next, Result};

/// Runs a client chain, then the rest of the server chain.
#[derive(Debug, Clone)]
pub struct ConnectServer {
    client: Chain,
}

impl ConnectServer {
    /// Connects through `client` (typically dial … connect).
    pub fn new(client: Chain) -> Self {
        Self { client }
    }
}

#[async_trait]
impl NetworkServiceServer for ConnectServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let entry = ctx.clone();
        let client_conn = self
            .client
            .run_request(&mut ctx.clone(), request.clone())
            .await?;
        request.connection = Some(client_conn.clone());
        let result = next.request(ctx, request).await;
        if let Err(e) = &result {
            // Undo the client side with fresh time: the caller's deadline may be what just failed.
            let mut close_ctx = entry.postpone();
            if let Err(ce) = self.client.run_close(&mut close_ctx, client_conn).await {
                tracing::debug!(error = %ce, cause = %e, "connect: closing the client side after a failure failed");
            }
        }
        result
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let client_result = self.client.run_close(&mut ctx.clone(), conn.clone()).await;
        let server_result = next.close(ctx, conn).await;
        if let (Err(ce), Err(_)) = (&client_result, &server_result) {
            tracing::debug!(error = %ce, "connect: client close failed too");
        }
        server_result.and(client_result)
    }

    fn name(&self) -> &'static str {
        "connect"
    }
}
