//! `roundrobin` (server, after `discover`): spreads connections over the candidate endpoints.
//!
//! **Request**: if a next-hop URL is already in the context (the connection named its endpoint),
//! passes through. Otherwise tries the [`Candidates`] `discover` left in the context, starting at a
//! per-network-service counter that advances with every try; each try runs the rest of the chain with
//! its own copy of the context (next-hop URL = the endpoint's URL) and of the request
//! (`network_service_endpoint_name` = the endpoint). The first success wins; if all fail, the error
//! lists every endpoint and why. No candidates → `NotFound` naming the service.
//!
//! **Close**: passes through (`discover` already resolved the endpoint's URL by name).
//! **State**: the counter per network service name.

use std::collections::HashMap;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::error::CandidateFailure;
use nsm_core::values::{Candidates, ClientUrl};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

use crate::discover::endpoint_url;

const NAME: &str = "roundrobin";

/// Picks endpoints in turn.
#[derive(Debug, Default)]
pub struct RoundRobinServer {
    counters: Mutex<HashMap<String, usize>>,
}

impl RoundRobinServer {
    /// A selector with all counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index to try next among `n` endpoints of `service`; advances the counter.
    fn next_index(&self, service: &str, n: usize) -> usize {
        let mut counters = self.counters.lock();
        let c = counters.entry(service.to_string()).or_default();
        let i = *c % n;
        *c = c.wrapping_add(1);
        i
    }
}

#[async_trait]
impl NetworkServiceServer for RoundRobinServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if ctx.get::<ClientUrl>().is_some() {
            return next.request(ctx, request).await;
        }
        let Some(candidates) = ctx.get::<Candidates>().cloned() else {
            return Err(NsmError::internal(
                NAME,
                "no candidates in context (discover must run before roundrobin)",
            ));
        };
        let service = candidates.network_service.name;
        let endpoints = candidates.endpoints;
        if endpoints.is_empty() {
            return Err(NsmError::not_found(
                NAME,
                format!("no endpoint for service {service}"),
            ));
        }
        let mut failures = Vec::new();
        for _ in 0..endpoints.len() {
            let nse = &endpoints[self.next_index(&service, endpoints.len())];
            let attempt = async {
                let mut ctx = ctx.clone();
                ctx.insert(ClientUrl(endpoint_url(NAME, nse)?));
                let mut req = request.clone();
                req.connection
                    .get_or_insert_default()
                    .network_service_endpoint_name = nse.name.clone();
                next.clone().request(&mut ctx, req).await
            };
            match attempt.await {
                Ok(conn) => return Ok(conn),
                Err(e) => failures.push(CandidateFailure {
                    name: nse.name.clone(),
                    error: Box::new(e),
                }),
            }
        }
        Err(NsmError::AllCandidatesFailed {
            element: NAME,
            what: format!("endpoint for network service {service}"),
            candidates: failures,
        })
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

    use tonic::Code;

    use super::*;
    use crate::discover::DiscoverServer;
    use crate::discover::testing::{FakeRegistry, Probe, chain, ctx, ns, nse, request};

    fn endpoints() -> Vec<nsm_api::registry::NetworkServiceEndpoint> {
        vec![
            nse("nse-a", "unix:///a.sock", &["icmp"], &[]),
            nse("nse-b", "unix:///b.sock", &["icmp"], &[]),
            nse("nse-c", "unix:///c.sock", &["icmp"], &[]),
        ]
    }

    fn with_discover(probe: Arc<Probe>) -> nsm_core::Chain {
        let (_, ns_reg) = FakeRegistry::chain(vec![ns("icmp")]);
        let (_, nse_reg) = FakeRegistry::chain(endpoints());
        chain(vec![
            Arc::new(DiscoverServer::new(ns_reg, nse_reg)),
            Arc::new(RoundRobinServer::new()),
            probe,
        ])
    }

    #[tokio::test]
    async fn connections_rotate_over_endpoints() {
        let probe = Probe::ok();
        let c = with_discover(probe.clone());
        let mut names = Vec::new();
        for i in 0..4 {
            let conn = c
                .run_request(&mut ctx(), request(&format!("c{i}"), "icmp", &[]))
                .await
                .unwrap();
            names.push(conn.network_service_endpoint_name);
        }
        assert_eq!(names, ["nse-a", "nse-b", "nse-c", "nse-a"]);
        assert_eq!(
            probe.urls(),
            [
                "unix:///a.sock",
                "unix:///b.sock",
                "unix:///c.sock",
                "unix:///a.sock"
            ]
        );
    }

    #[tokio::test]
    async fn failed_endpoints_are_skipped_and_all_failures_listed() {
        let probe = Probe::failing_urls(&["unix:///a.sock"]);
        let c = with_discover(probe.clone());
        let conn = c
            .run_request(&mut ctx(), request("c", "icmp", &[]))
            .await
            .unwrap();
        assert_eq!(conn.network_service_endpoint_name, "nse-b");

        let probe = Probe::failing(|_| Some(NsmError::unavailable("connect", "refused")));
        let c = with_discover(probe);
        let err = c
            .run_request(&mut ctx(), request("c", "icmp", &[]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "roundrobin: all 3 candidates failed for endpoint for network service icmp"
            ),
            "{msg}"
        );
        for n in ["nse-a", "nse-b", "nse-c"] {
            assert!(
                msg.contains(&format!("{n} (connect: unavailable: refused)")),
                "{msg}"
            );
        }
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn no_candidates_names_the_service() {
        let mut ctx = ctx();
        ctx.insert(Candidates {
            network_service: ns("icmp"),
            endpoints: vec![],
        });
        let err = chain(vec![Arc::new(RoundRobinServer::new())])
            .run_request(&mut ctx, request("c", "icmp", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.to_string().contains("no endpoint for service icmp"),
            "{err}"
        );
    }
}
