//! `filtermechanisms` (client): offers the next hop only mechanisms it can use.
//!
//! **Request**: reads the next hop's [`ClientUrl`] from the context; a node-local URL (`unix://`,
//! `inode://`, `file://`) keeps only `LOCAL` mechanism preferences, a TCP URL only `REMOTE` ones. No URL
//! in the context is an internal error (`clienturl`, `discover`, `roundrobin` or `discoverforwarder` must
//! run first). **Close**: passes through. **State**: none.

use async_trait::async_trait;
use nsm_api::mechanisms::cls;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const NAME: &str = "filtermechanisms";

/// Keeps the mechanism class that fits the next hop's URL.
#[derive(Debug, Default)]
pub struct FilterMechanismsClient;

impl FilterMechanismsClient {
    /// A new filter.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl NetworkServiceServer for FilterMechanismsClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let url = ctx.get::<ClientUrl>().ok_or_else(|| {
            NsmError::internal(
                NAME,
                "no client URL in context to choose LOCAL or REMOTE by",
            )
        })?;
        let keep = if url.0.is_node_local() {
            cls::LOCAL
        } else {
            cls::REMOTE
        };
        request.mechanism_preferences.retain(|m| m.cls == keep);
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nsm_api::mechanisms::MechanismType;
    use nsm_api::url::NsmUrl;
    use tonic::Code;

    use super::*;
    use crate::discover::testing::{Probe, chain, ctx, request};

    async fn offered_for(url: &str) -> Vec<String> {
        let probe = Probe::ok();
        let c = chain(vec![Arc::new(FilterMechanismsClient::new()), probe.clone()]);
        let mut ctx = ctx();
        ctx.insert(ClientUrl(NsmUrl::parse(url).unwrap()));
        let mut req = request("1", "svc", &[]);
        req.mechanism_preferences = [
            MechanismType::Kernel,
            MechanismType::Vxlan,
            MechanismType::Memif,
            MechanismType::Wireguard,
        ]
        .into_iter()
        .map(MechanismType::mechanism)
        .collect();
        c.run_request(&mut ctx, req).await.unwrap();
        probe
            .last()
            .request
            .mechanism_preferences
            .into_iter()
            .map(|m| m.r#type)
            .collect()
    }

    #[tokio::test]
    async fn local_urls_keep_local_mechanisms() {
        assert_eq!(
            offered_for("unix:///run/nse.sock").await,
            ["KERNEL", "MEMIF"]
        );
        assert_eq!(offered_for("inode://4/12345").await, ["KERNEL", "MEMIF"]);
    }

    #[tokio::test]
    async fn tcp_urls_keep_remote_mechanisms() {
        assert_eq!(
            offered_for("tcp://10.0.0.2:5001").await,
            ["VXLAN", "WIREGUARD"]
        );
    }

    #[tokio::test]
    async fn missing_url_is_an_internal_error() {
        let c = chain(vec![Arc::new(FilterMechanismsClient::new())]);
        let err = c
            .run_request(&mut ctx(), request("1", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
}
