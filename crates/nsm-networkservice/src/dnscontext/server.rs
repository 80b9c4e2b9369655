//! `dnscontext` server: **Request** appends the configured DNS configs to the connection's
//! `dns_context` (a config already present is not added twice, so refreshes do not grow the list).
//! **Close**: passes through. **State**: none.

use async_trait::async_trait;
use nsm_api::connectioncontext::DnsConfig;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

/// Adds fixed DNS configs to every connection.
pub struct DnsContextServer {
    configs: Vec<DnsConfig>,
}

impl DnsContextServer {
    /// Adds `configs` to each connection's DNS context.
    pub fn new(configs: Vec<DnsConfig>) -> Self {
        Self { configs }
    }
}

#[async_trait]
impl NetworkServiceServer for DnsContextServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let dns = request
            .connection
            .get_or_insert_default()
            .context
            .get_or_insert_default()
            .dns_context
            .get_or_insert_default();
        for c in &self.configs {
            if !dns.configs.contains(c) {
                dns.configs.push(c.clone());
            }
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "dnscontext"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::discover::testing::{chain, ctx, request};

    #[tokio::test]
    async fn adds_configs_once() {
        let cfg = DnsConfig {
            dns_server_ips: vec!["8.8.8.8".into()],
            search_domains: vec!["my.domain1".into()],
        };
        let c = chain(vec![Arc::new(DnsContextServer::new(vec![cfg.clone()]))]);
        let conn = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let again = c
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(conn),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(again.context.unwrap().dns_context.unwrap().configs, [cfg]);
    }
}
