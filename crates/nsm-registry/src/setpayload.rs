//! `setpayload` (network services): Register gives a service without a payload the default payload
//! (`IP`), so Finds by payload see it (Go `registry/common/setpayload`). Find and Unregister pass through.

use async_trait::async_trait;
use nsm_api::payload;
use nsm_api::registry::NetworkService;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};

/// Fills in a default payload on Register.
#[derive(Debug, Clone)]
pub struct SetPayloadServer {
    default_payload: String,
}

impl Default for SetPayloadServer {
    fn default() -> Self {
        Self::new()
    }
}

impl SetPayloadServer {
    /// Defaults to `IP`.
    pub fn new() -> Self {
        Self {
            default_payload: payload::IP.to_string(),
        }
    }

    /// Uses `payload` as the default instead.
    pub fn with_default_payload(mut self, payload: impl Into<String>) -> Self {
        self.default_payload = payload.into();
        self
    }
}

#[async_trait]
impl RegistryServer<NetworkService> for SetPayloadServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        mut ns: NetworkService,
        next: RegistryNext<NetworkService>,
    ) -> Result<NetworkService> {
        if ns.payload.is_empty() {
            ns.payload.clone_from(&self.default_payload);
        }
        next.register(ctx, ns).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkService>,
        next: RegistryNext<NetworkService>,
    ) -> Result<FindStream<NetworkService>> {
        next.find(ctx, query).await
    }

    async fn unregister(
        &self,
        ctx: &mut Ctx,
        ns: NetworkService,
        next: RegistryNext<NetworkService>,
    ) -> Result<()> {
        next.unregister(ctx, ns).await
    }

    fn name(&self) -> &'static str {
        "setpayload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::sync::Arc;

    async fn register(server: SetPayloadServer, payload: &str) -> String {
        let chain = RegistryChain::new("t", vec![Arc::new(server)]);
        let ns = NetworkService {
            name: "ns".into(),
            payload: payload.into(),
            ..Default::default()
        };
        let mut ctx = Ctx::new(Clock::system());
        chain.run_register(&mut ctx, ns).await.unwrap().payload
    }

    #[tokio::test]
    async fn empty_payload_becomes_ip_and_others_are_kept() {
        assert_eq!(register(SetPayloadServer::new(), "").await, "IP");
        assert_eq!(
            register(SetPayloadServer::new(), "ETHERNET").await,
            "ETHERNET"
        );
        let custom = SetPayloadServer::new().with_default_payload("ETHERNET");
        assert_eq!(register(custom, "").await, "ETHERNET");
    }
}
