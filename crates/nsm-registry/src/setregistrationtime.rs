//! `setregistrationtime` (endpoints): Register stamps `initial_registration_time` with the clock's now
//! when the endpoint has none, so refreshes (which send the registered endpoint back) keep the first
//! time (Go `registry/common/setregistrationtime`). Find and Unregister pass through.

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};

/// Sets the initial registration time once.
#[derive(Debug, Clone, Default)]
pub struct SetRegistrationTimeServer;

impl SetRegistrationTimeServer {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl RegistryServer<NetworkServiceEndpoint> for SetRegistrationTimeServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        mut nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<NetworkServiceEndpoint> {
        if nse.initial_registration_time.is_none() {
            nse.initial_registration_time = Some(ctx.clock().now_timestamp());
        }
        next.register(ctx, nse).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkServiceEndpoint>,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<FindStream<NetworkServiceEndpoint>> {
        next.find(ctx, query).await
    }

    async fn unregister(
        &self,
        ctx: &mut Ctx,
        nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<()> {
        next.unregister(ctx, nse).await
    }

    fn name(&self) -> &'static str {
        "setregistrationtime"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[tokio::test(start_paused = true)]
    async fn set_once_and_kept_across_refreshes() {
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1000));
        let chain = RegistryChain::new("t", vec![Arc::new(SetRegistrationTimeServer::new())]);
        let mut ctx = Ctx::new(clock);
        let first = chain
            .run_register(&mut ctx, NetworkServiceEndpoint::default())
            .await
            .unwrap();
        assert_eq!(
            first.initial_registration_time.as_ref().unwrap().seconds,
            1000
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        let again = chain.run_register(&mut ctx, first.clone()).await.unwrap();
        assert_eq!(
            again.initial_registration_time,
            first.initial_registration_time
        );
    }
}
